"""ProxylessNAS / MobileNetV2 mobile space: per layer MBConv kernel 3/5/7 x expansion 3/6, plus
skip where shapes allow (not on the first layer of a stage). Stages, width, input resolution and
the kernel / expansion options are options, so the same space fits a phone at 224x224 or a
small CPU at 96x96.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from latbench.bench.ops import OpSpec
from latbench.bench.spaces.base import Arch, SearchSpace, register_space
from latbench.errors import SearchError

# (output channels, layers, stride of the first layer) as in ProxylessNAS (mobile).
DEFAULT_STAGES = ((24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1))
KERNELS = (3, 5, 7)
EXPANSIONS = (3, 6)


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class MBLayer:
    cin: int
    cout: int
    stride: int
    size: int
    skippable: bool


@register_space("proxyless")
class ProxylessSpace(SearchSpace):
    name = "proxyless"
    training_defaults = {"resolution": 32, "width_mult": 0.35}

    def __init__(self, resolution: int = 224, width_mult: float = 1.0,
                 stages: Sequence[Sequence[int]] = DEFAULT_STAGES, num_classes: int = 1000,
                 act: str = "relu6", kernels: Sequence[int] = KERNELS,
                 expansions: Sequence[float] = EXPANSIONS) -> None:
        if resolution < 32 or resolution % 32:
            raise SearchError(f"proxyless resolution must be a multiple of 32, got {resolution}")
        if not kernels or not expansions or any(k < 1 or k % 2 == 0 for k in kernels):
            raise SearchError(f"proxyless needs odd kernel sizes and expansions, got {kernels} "
                              f"and {expansions}")
        self.resolution = resolution
        self.num_classes = num_classes
        self.act = act
        self.input_shape = (1, 3, resolution, resolution)
        self.stem_channels = _make_divisible(32 * width_mult)
        self.first_channels = _make_divisible(16 * width_mult)
        self.head_channels = 1280 if width_mult <= 1.0 else _make_divisible(1280 * width_mult)
        self.options = [(int(k), e) for k in kernels for e in expansions]
        self.layers: list[MBLayer] = []
        size = resolution // 2
        cin = self.first_channels
        for width, depth, stride in stages:
            cout = _make_divisible(width * width_mult)
            for j in range(int(depth)):
                s = int(stride) if j == 0 else 1
                self.layers.append(MBLayer(cin, cout, s, size, skippable=(j > 0)))
                cin, size = cout, size // s
        self.final_size = size

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def candidate_names(self, layer: int) -> list[str]:
        names = [f"k{k}_e{e}" for k, e in self.options]
        return names + (["skip"] if self.layers[layer].skippable else [])

    def candidates(self, layer: int) -> list[list[OpSpec]]:
        spec = self.layers[layer]
        out = [[OpSpec("mbconv", h=spec.size, w=spec.size, cin=spec.cin, cout=spec.cout,
                       kernel=k, stride=spec.stride, expand=e, act=self.act)]
               for k, e in self.options]
        return out + ([[]] if spec.skippable else [])

    def fixed_ops(self) -> tuple[list[OpSpec], list[OpSpec]]:
        r, half = self.resolution, self.resolution // 2
        stem = [OpSpec("conv", h=r, w=r, cin=3, cout=self.stem_channels, kernel=3, stride=2,
                       act=self.act),
                OpSpec("mbconv", h=half, w=half, cin=self.stem_channels,
                       cout=self.first_channels, kernel=3, expand=1, act=self.act)]
        last, size = self.layers[-1].cout, self.final_size
        head = [OpSpec("conv", h=size, w=size, cin=last, cout=self.head_channels, kernel=1,
                       act=self.act),
                OpSpec("pool", h=size, w=size, cin=self.head_channels, pool="gavg"),
                OpSpec("linear", cin=self.head_channels, cout=self.num_classes)]
        return stem, head

    def encode(self, arch: Arch) -> str:
        self.check(arch)
        return "-".join(self.candidate_names(i)[c] for i, c in enumerate(arch.choices))

    def decode(self, text: str) -> Arch:
        parts = text.split("-")
        if len(parts) != self.n_layers:
            raise SearchError(f"proxyless architecture needs {self.n_layers} '-'-separated "
                              f"layer choices, got {len(parts)}")
        choices = []
        for i, part in enumerate(parts):
            names = self.candidate_names(i)
            if part not in names:
                raise SearchError(f"proxyless layer {i} has no choice {part!r}; "
                                  f"choices: {', '.join(names)}")
            choices.append(names.index(part))
        return Arch(self.name, tuple(choices))

    def to_torch(self, arch: Arch, num_classes: int | None = None) -> Any:
        from latbench.bench.spaces.chain_torch import chain_module

        if num_classes not in (None, self.num_classes):
            raise SearchError("build the proxyless space with num_classes= to change the head")
        return chain_module(self.ops(arch))
