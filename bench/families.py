"""Hand-built network families for held-out evaluation of whole-network latency estimates.

Each family samples small-to-medium image classifiers with random variations (width, depth,
kernel sizes, expansions, resolution) from an `np.random.Generator`, as `NetworkDef`s: a unique
name that encodes the choices, the input shape, a frozen config and a weight seed, so the torch
module can be rebuilt identically anywhere. Every conv is followed by BatchNorm (with non-trivial
statistics), so exporters and the kernel parser must fold it.

Families: "mobilenetv2" (inverted residuals, ReLU6), "resnet" (BasicBlocks, ReLU),
"efficientnet" (MBConv + squeeze-excite, SiLU), "mobilenetv3" (h-swish/ReLU, SE with a
hard-sigmoid gate; SE as 1x1 convs or as Linear layers).

Sampling needs no torch; the modules are built by bench/families_torch.py, imported when a
network is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from latbench.errors import ConfigError
from latbench.registry import Registry

RESOLUTIONS = (96, 128, 160, 192, 224)
NUM_CLASSES = 1000


# --- configs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockConfig:
    """One inverted-residual (MBConv) block: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1."""

    cin: int
    cout: int
    kernel: int
    stride: int
    mid: int
    act: str
    se_mid: int = 0  # squeezed channels of the SE; 0 = no SE


@dataclass(frozen=True)
class MobileNetConfig:
    """MobileNetV2 / EfficientNet / MobileNetV3 style: stem, blocks, 1x1 head conv, classifier."""

    resolution: int
    stem: int
    stem_act: str
    blocks: tuple[BlockConfig, ...]
    head: int
    head_act: str
    se_act: str = "relu"
    se_gate: str = "sigmoid"
    se_fc: bool = False  # SE as Linear layers (else 1x1 convs)
    hidden: int = 0  # a hidden Linear layer in the classifier (MobileNetV3); 0 = none
    hidden_act: str = "none"
    classes: int = NUM_CLASSES


@dataclass(frozen=True)
class ResNetConfig:
    """BasicBlock ResNet: 7x7 stem + max pool, one width and depth per stage."""

    resolution: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    classes: int = NUM_CLASSES


@dataclass(frozen=True)
class NetworkDef:
    """One sampled network: rebuild it with `build()` (deterministic in `seed`)."""

    name: str
    family: str
    input_shape: tuple[int, int, int, int]
    config: Any
    seed: int = 0

    def build(self) -> Any:
        """The torch module in eval mode; weights and BatchNorm statistics drawn from `seed`."""
        from latbench.bench.families_torch import build

        return build(self)

    def to_onnx(self, *, dynamo: bool = False, opset: int = 17) -> bytes:
        """ONNX bytes of the built module (see `bench.export.from_torch.torch_to_onnx`)."""
        from latbench.bench.export.from_torch import torch_to_onnx

        return torch_to_onnx(self.build(), self.input_shape, dynamo=dynamo, opset=opset)


# --- registry -------------------------------------------------------------------------------
class NetworkFamily(Protocol):
    def sample(self, rng: np.random.Generator) -> tuple[str, Any]:
        """A name encoding the sampled choices, and the config."""

    def build(self, config: Any) -> Any:
        """The torch module for a config (weights from torch's current seed)."""


FAMILIES: Registry[NetworkFamily] = Registry("network family")


def register_family(name: str) -> Callable[[type], type]:
    """Class decorator: register an instance of the class as family `name` (no duplicates)."""

    def decorate(cls: type) -> type:
        FAMILIES.add(name, cls())
        return cls

    return decorate


def list_families() -> list[str]:
    return sorted(FAMILIES)


def sample_networks(family: str, n: int, rng: np.random.Generator) -> list[NetworkDef]:
    """`n` networks of `family` with distinct names (so distinct architectures)."""
    sampler = FAMILIES.lookup(family)
    if n < 0:
        raise ConfigError(f"cannot sample {n} networks of family {family!r}")
    nets: dict[str, NetworkDef] = {}
    attempts = 0
    while len(nets) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise ConfigError(f"family {family!r} gave only {len(nets)} distinct networks "
                              f"in {attempts - 1} draws; asked for {n}")
        name, config = sampler.sample(rng)
        if name in nets:
            continue
        seed = int(rng.integers(0, 2**31 - 1))
        shape = (1, 3, config.resolution, config.resolution)
        nets[name] = NetworkDef(name=name, family=family, input_shape=shape, config=config,
                                seed=seed)
    return list(nets.values())


# --- sampling helpers -----------------------------------------------------------------------
def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _pick(rng: np.random.Generator, options: tuple) -> Any:
    return options[int(rng.integers(len(options)))]


def _depth(rng: np.random.Generator, n: int) -> int:
    """Stage depth: the reference depth or one less (at least 1)."""
    return int(rng.integers(max(1, n - 1), n + 1))


def _blocks_code(blocks: tuple[BlockConfig, ...], stage_starts: set[int]) -> str:
    """Per block expansion and kernel digits ("63" = expand 6, kernel 3), '.' between stages;
    an 's' marks a block with squeeze-excite."""
    parts = []
    for i, block in enumerate(blocks):
        if i in stage_starts and i:
            parts.append(".")
        expand = round(block.mid / block.cin)
        parts.append(f"{expand}{block.kernel}{'s' if block.se_mid else ''}")
    return "".join(parts)


def _mbconv_blocks(rng: np.random.Generator, stages: list[tuple], cin: int, width: float,
                   expands: tuple[int, ...], kernels: tuple[int, ...],
                   se: Callable[[int, int, int], int]) -> tuple[tuple[BlockConfig, ...], set[int]]:
    """Blocks for stages (expand, kernel or 0 = sample, stride, channels, depth, act, se?).

    `se(block_cin, mid, flag)` gives the squeezed channels (0 = no SE)."""
    blocks: list[BlockConfig] = []
    starts: set[int] = set()
    for expand, kernel, stride, channels, depth, act, has_se in stages:
        cout = make_divisible(channels * width)
        starts.add(len(blocks))
        for i in range(_depth(rng, depth)):
            e = expand if expand else _pick(rng, expands)
            k = kernel if kernel else _pick(rng, kernels)
            mid = cin * e
            blocks.append(BlockConfig(cin=cin, cout=cout, kernel=k, stride=stride if i == 0 else 1,
                                      mid=mid, act=act, se_mid=se(cin, mid, has_se)))
            cin = cout
    return tuple(blocks), starts


# --- families -------------------------------------------------------------------------------
@register_family("mobilenetv2")
class MobileNetV2Family:
    """MobileNetV2: 3x3 stem, inverted residuals (ReLU6), 1x1 head conv, linear classifier."""

    # expand (0 = sample 3|6), kernel (0 = sample 3|5|7), stride, channels, depth
    STAGES = ((1, 3, 1, 16, 1), (0, 0, 2, 24, 2), (0, 0, 2, 32, 3), (0, 0, 2, 64, 4),
              (0, 0, 1, 96, 3), (0, 0, 2, 160, 3), (0, 0, 1, 320, 1))

    def sample(self, rng: np.random.Generator) -> tuple[str, MobileNetConfig]:
        width = _pick(rng, (0.35, 0.5, 0.75, 1.0))
        resolution = _pick(rng, RESOLUTIONS)
        stem = make_divisible(32 * width)
        stages = [(*stage, "relu6", False) for stage in self.STAGES]
        blocks, starts = _mbconv_blocks(rng, stages, stem, width, (3, 6), (3, 5, 7),
                                        lambda cin, mid, flag: 0)
        config = MobileNetConfig(resolution=resolution, stem=stem, stem_act="relu6",
                                 blocks=blocks, head=make_divisible(1280 * max(1.0, width)),
                                 head_act="relu6")
        return f"mobilenetv2_r{resolution}_w{width:g}_{_blocks_code(blocks, starts)}", config

    def build(self, config: MobileNetConfig) -> Any:
        from latbench.bench.families_torch import MobileNet

        return MobileNet(config)


@register_family("efficientnet")
class EfficientNetFamily:
    """EfficientNet-B0-like: MBConv with squeeze-excite (sigmoid gate), SiLU everywhere."""

    # expand (0 = sample 3|6), kernel (0 = sample 3|5), stride, channels, depth
    STAGES = ((1, 3, 1, 16, 1), (0, 0, 2, 24, 2), (0, 0, 2, 40, 2), (0, 0, 2, 80, 3),
              (0, 0, 1, 112, 3), (0, 0, 2, 192, 4), (0, 0, 1, 320, 1))

    def sample(self, rng: np.random.Generator) -> tuple[str, MobileNetConfig]:
        width = _pick(rng, (0.5, 0.75, 1.0))
        resolution = _pick(rng, RESOLUTIONS)
        stem = make_divisible(32 * width)
        stages = [(*stage, "swish", True) for stage in self.STAGES]
        blocks, starts = _mbconv_blocks(rng, stages, stem, width, (3, 6), (3, 5),
                                        lambda cin, mid, flag: max(1, int(cin * 0.25)))
        config = MobileNetConfig(resolution=resolution, stem=stem, stem_act="swish",
                                 blocks=blocks, head=make_divisible(1280 * max(1.0, width)),
                                 head_act="swish", se_act="swish", se_gate="sigmoid")
        return f"efficientnet_r{resolution}_w{width:g}_{_blocks_code(blocks, starts)}", config

    def build(self, config: MobileNetConfig) -> Any:
        from latbench.bench.families_torch import MobileNet

        return MobileNet(config)


@register_family("mobilenetv3")
class MobileNetV3Family:
    """MobileNetV3-Large-like: ReLU then h-swish stages, SE with a hard-sigmoid gate on some
    stages (as 1x1 convs or Linear layers), hidden h-swish Linear in the classifier."""

    # expand (0 = sample 3|4|6), kernel (0 = sample 3|5), stride, channels, depth, act, SE
    STAGES = ((1, 3, 1, 16, 1, "relu", False), (0, 0, 2, 24, 2, "relu", False),
              (0, 0, 2, 40, 3, "relu", True), (0, 0, 2, 80, 4, "hswish", False),
              (0, 0, 1, 112, 2, "hswish", True), (0, 0, 2, 160, 3, "hswish", True))

    def sample(self, rng: np.random.Generator) -> tuple[str, MobileNetConfig]:
        width = _pick(rng, (0.5, 0.75, 1.0))
        resolution = _pick(rng, RESOLUTIONS)
        se_fc = bool(rng.integers(2))
        stem = make_divisible(16 * width)
        blocks, starts = _mbconv_blocks(
            rng, list(self.STAGES), stem, width, (3, 4, 6), (3, 5),
            lambda cin, mid, flag: make_divisible(mid // 4) if flag else 0)
        config = MobileNetConfig(resolution=resolution, stem=stem, stem_act="hswish",
                                 blocks=blocks, head=6 * blocks[-1].cout, head_act="hswish",
                                 se_act="relu", se_gate="hsigmoid", se_fc=se_fc, hidden=1280,
                                 hidden_act="hswish")
        se = "f" if se_fc else "c"
        name = f"mobilenetv3_r{resolution}_w{width:g}_se{se}_{_blocks_code(blocks, starts)}"
        return name, config

    def build(self, config: MobileNetConfig) -> Any:
        from latbench.bench.families_torch import MobileNet

        return MobileNet(config)


@register_family("resnet")
class ResNetFamily:
    """BasicBlock ResNet: 7x7 stem + max pool, four stages of 1-2 blocks, widths doubling."""

    def sample(self, rng: np.random.Generator) -> tuple[str, ResNetConfig]:
        base = _pick(rng, (16, 24, 32, 40))
        resolution = _pick(rng, RESOLUTIONS)
        depths = tuple(int(rng.integers(1, 3)) for _ in range(4))
        widths = tuple(base * 2**i for i in range(4))
        config = ResNetConfig(resolution=resolution, widths=widths, depths=depths)
        return f"resnet_r{resolution}_b{base}_d{''.join(map(str, depths))}", config

    def build(self, config: ResNetConfig) -> Any:
        from latbench.bench.families_torch import ResNet

        return ResNet(config)
