"""NAS-Bench-Macro: 8 searchable layers x 3 choices (6,561 CIFAR-10 networks) with a full
accuracy table, so a search under a latency budget can be scored against the true optimum.

Structure (from the benchmark's description): stem 3x3 conv 3->32 + BN + ReLU; stages of 2, 3, 3
layers at 32->64->128->256 channels, the first layer of each stage with stride 2; choice 0 is
identity (a 1x1 conv + BN where stride or channels change), 1 is MBConv e3 k3, 2 is MBConv e6 k5;
head 1x1 conv 256->1280 + BN + ReLU, global average pool, linear 1280->10.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latbench.bench.ops import OpSpec
from latbench.bench.spaces.base import Arch, SearchSpace, register_space
from latbench.errors import DatasetError, SearchError

STAGES = ((2, 64), (3, 128), (3, 256))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
CHOICES = ("identity", "mbconv_e3_k3", "mbconv_e6_k5")
_MBCONV = {1: (3, 3), 2: (6, 5)}  # choice -> (expansion, kernel)
PUBLIC_SOURCE = "https://github.com/xiusu/NAS-Bench-Macro (data/nas-bench-macro_cifar10.json)"


@dataclass(frozen=True)
class MacroLayer:
    cin: int
    cout: int
    stride: int
    size: int  # input height = width


@register_space("nasbench-macro")
class NasBenchMacro(SearchSpace):
    name = "nasbench-macro"

    def __init__(self, resolution: int = 32, num_classes: int = 10) -> None:
        if resolution % 8:
            raise SearchError("nasbench-macro resolution must be a multiple of 8, "
                              f"got {resolution}")
        self.resolution = resolution
        self.num_classes = num_classes
        self.input_shape = (1, 3, resolution, resolution)
        self.layers: list[MacroLayer] = []
        cin, size = STEM_CHANNELS, resolution
        for depth, cout in STAGES:
            for j in range(depth):
                stride = 2 if j == 0 else 1
                self.layers.append(MacroLayer(cin, cout, stride, size))
                cin, size = cout, size // stride

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def candidate_names(self, layer: int) -> list[str]:
        return list(CHOICES)

    def candidates(self, layer: int) -> list[list[OpSpec]]:
        spec = self.layers[layer]
        shape = {"h": spec.size, "w": spec.size, "cin": spec.cin}
        if spec.stride == 1 and spec.cin == spec.cout:
            identity: list[OpSpec] = []
        else:
            identity = [OpSpec("conv", **shape, cout=spec.cout, kernel=1, stride=spec.stride)]
        mbconvs = [[OpSpec("mbconv", **shape, cout=spec.cout, kernel=k, stride=spec.stride,
                           expand=e, act="relu")] for e, k in (_MBCONV[1], _MBCONV[2])]
        return [identity, *mbconvs]

    def fixed_ops(self) -> tuple[list[OpSpec], list[OpSpec]]:
        r = self.resolution
        last = self.layers[-1]
        size = last.size // last.stride
        stem = [OpSpec("conv", h=r, w=r, cin=3, cout=STEM_CHANNELS, kernel=3, act="relu")]
        head = [OpSpec("conv", h=size, w=size, cin=last.cout, cout=HEAD_CHANNELS, kernel=1,
                       act="relu"),
                OpSpec("pool", h=size, w=size, cin=HEAD_CHANNELS, pool="gavg"),
                OpSpec("linear", cin=HEAD_CHANNELS, cout=self.num_classes)]
        return stem, head

    def encode(self, arch: Arch) -> str:
        return "".join(str(c) for c in self.check(arch).choices)

    def decode(self, text: str) -> Arch:
        if len(text) != self.n_layers or any(ch not in "012" for ch in text):
            raise SearchError(f"nasbench-macro architecture must be {self.n_layers} characters "
                              f"of 0/1/2, got {text!r}")
        return Arch(self.name, tuple(int(ch) for ch in text))

    def to_torch(self, arch: Arch, num_classes: int | None = None) -> Any:
        from latbench.bench.spaces.chain_torch import chain_module

        space = self if num_classes in (None, self.num_classes) else \
            NasBenchMacro(self.resolution, num_classes)
        return chain_module(space.ops(arch))

    def accuracy_table(self, data_dir: Path) -> dict[str, float]:
        """The benchmark's CIFAR-10 accuracy table (see `load_accuracy_table`)."""
        return load_accuracy_table(data_dir)


def accuracy_table_path(data_dir: Path) -> Path:
    return Path(data_dir) / "nas-bench-macro" / "nas-bench-macro_cifar10.json"


def load_accuracy_table(path: Path) -> dict[str, float]:
    """Mean CIFAR-10 test accuracy (%) of every NAS-Bench-Macro architecture, keyed by its code."""
    path = Path(path)
    if path.is_dir():
        path = accuracy_table_path(path)
    if not path.is_file():
        raise DatasetError(f"NAS-Bench-Macro table not found at {path}; get it from "
                           f"{PUBLIC_SOURCE} and pass its folder with --data-dir")
    try:
        raw = json.loads(path.read_text())
        table = {code: float(entry["mean_acc"]) for code, entry in raw.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path} is not a NAS-Bench-Macro accuracy table: {exc}") from exc
    if len(table) != 3 ** 8:
        raise DatasetError(f"{path} holds {len(table)} architectures, expected 6561")
    return table
