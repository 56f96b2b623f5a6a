"""Hand-built network families for held-out evaluation of whole-network latency estimates.

Each family samples small-to-medium image classifiers with random variations (width, depth,
kernel sizes, expansions, resolution) from an `np.random.Generator`, as `NetworkDef`s: a unique
name that encodes the choices, the input shape, a frozen config and a weight seed, so the torch
module can be rebuilt identically anywhere. Every normalisation layer gets non-trivial statistics
and affine parameters (BatchNorm after every conv, LayerNorm in transformers), so exporters and
the kernel parser must fold or run them.

CNN families: "mobilenetv2" (inverted residuals, ReLU6), "resnet" (BasicBlocks, ReLU),
"resnet50" (bottleneck blocks), "efficientnet" (MBConv + squeeze-excite, SiLU), "mobilenetv3"
(h-swish/ReLU, SE with a hard-sigmoid gate; SE as 1x1 convs or as Linear layers), "regnet"
(RegNetX/Y: group-conv bottlenecks, SE in Y), "convnext" (7x7 depthwise, channels-last LayerNorm,
GELU MLP, layer scale). Transformer families: "vit" (patch embedding, class token, pre-norm
blocks; attention hand-written as in timm, through `scaled_dot_product_attention`, or
`nn.MultiheadAttention`), "deit" (DeiT-Tiny/Small-like, with a distillation token and two
heads), "mobilevit" (MobileNetV2 blocks and MobileViT blocks: unfold into patches, transformer,
fold).

Sampling needs no torch; the modules are built by bench/families_torch.py, imported when a
network is built.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
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
    """ResNet: 7x7 stem + max pool, one width and depth per stage. `expansion` 1 = BasicBlocks
    (two 3x3 convs), 4 = bottlenecks (1x1, 3x3 with the stride, 1x1 to 4 x width)."""

    resolution: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    classes: int = NUM_CLASSES
    expansion: int = 1


@dataclass(frozen=True)
class RegNetConfig:
    """RegNetX/Y: 3x3 stem, stages of bottlenecks (ratio 1) whose 3x3 conv has groups of
    `group_width` channels; RegNetY adds squeeze-excite on the middle channels."""

    resolution: int
    stem: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    group_width: int
    se_ratio: float = 0.0  # squeezed channels = round(ratio * block input channels); 0 = X
    classes: int = NUM_CLASSES


@dataclass(frozen=True)
class ConvNeXtConfig:
    """ConvNeXt: 4x4/4 stem, stages of (7x7 depthwise, LayerNorm, Linear 4x, GELU, Linear,
    layer scale, residual), LayerNorm + 2x2/2 conv between stages. `norm2d` is how the
    channels-first LayerNorms are written: "permute" (timm) or "decomposed" (the reference
    code's mean/variance arithmetic)."""

    resolution: int
    dims: tuple[int, ...]
    depths: tuple[int, ...]
    norm2d: str = "permute"
    classes: int = NUM_CLASSES


@dataclass(frozen=True)
class ViTConfig:
    """Vision transformer: patch embedding conv, class token (+ distillation token for DeiT),
    position embedding, pre-norm blocks (LayerNorm, attention, LayerNorm, MLP), final norm, head
    (two heads averaged when distilled). `attention`: "timm" (qkv Linear, reshape, matmuls,
    softmax), "sdpa" (qkv Linear, `scaled_dot_product_attention`), "mha"
    (`nn.MultiheadAttention`). `act`: "gelu" (exact, erf) or "gelu_tanh"."""

    resolution: int
    patch: int
    dim: int
    depth: int
    heads: int
    mlp_ratio: float
    attention: str = "timm"
    act: str = "gelu"
    distilled: bool = False
    classes: int = NUM_CLASSES

    @property
    def tokens(self) -> int:
        """Sequence length: patches plus class (and distillation) token."""
        return (self.resolution // self.patch) ** 2 + 1 + int(self.distilled)


@dataclass(frozen=True)
class MobileViTConfig:
    """MobileViT (v1): 3x3 stem, MobileNetV2 blocks (SiLU), then three stages of a strided
    MobileNetV2 block and a MobileViT block (3x3 conv, 1x1 to `dims[i]`, unfold into 2x2
    patches, `depths[i]` transformer blocks with SiLU MLPs, fold, 1x1 back, 3x3 fusion of the
    concatenation with the block input), 1x1 head conv, classifier.

    `channels`: stem, then the outputs of the five stages."""

    resolution: int
    channels: tuple[int, ...]
    dims: tuple[int, ...]
    depths: tuple[int, ...]
    expansion: int
    head: int
    heads: int = 4
    mlp_ratio: float = 2.0
    patch: int = 2
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

    def to_onnx(self, *, dynamo: bool = True, opset: int = 17) -> bytes:
        """ONNX bytes of the built module (see `bench.export.from_torch.torch_to_onnx`): by
        default with torch's default (dynamo) exporter, as users export their models;
        `dynamo=False` uses the legacy exporter, several times faster."""
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


def sample_networks(family: str, n: int, rng: np.random.Generator,
                    skip: Collection[str] = ()) -> list[NetworkDef]:
    """`n` networks of `family` with distinct names (so distinct architectures), none named in
    `skip` (drawn past, as a held-out set draws past the calibration networks)."""
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
        if name in nets or name in skip:
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


@register_family("resnet50")
class ResNet50Family:
    """Bottleneck ResNet in the ResNet-50 layout (v1.5: the stride on the 3x3 conv): base width
    16-64, stage depths between half and all of ResNet-50's 3, 4, 6, 3."""

    DEPTHS = (3, 4, 6, 3)

    def sample(self, rng: np.random.Generator) -> tuple[str, ResNetConfig]:
        base = _pick(rng, (16, 24, 32, 48, 64))
        resolution = _pick(rng, RESOLUTIONS)
        depths = tuple(int(rng.integers((n + 1) // 2, n + 1)) for n in self.DEPTHS)
        widths = tuple(base * 2**i for i in range(4))
        config = ResNetConfig(resolution=resolution, widths=widths, depths=depths, expansion=4)
        return f"resnet50_r{resolution}_b{base}_d{''.join(map(str, depths))}", config

    def build(self, config: ResNetConfig) -> Any:
        from latbench.bench.families_torch import ResNet

        return ResNet(config)


def regnet_stages(w0: int, wa: float, wm: float, depth: int, group_width: int,
                  quantum: int = 8) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Stage widths and depths of a RegNet (Radosavovic et al. 2020): block j gets the linear
    width w0 + wa * j, snapped to w0 * wm^k and to a multiple of `quantum`; runs of equal widths
    form the stages; widths are then rounded to a multiple of the group width."""
    linear = w0 + wa * np.arange(depth)
    exponents = np.round(np.log(linear / w0) / np.log(wm))
    snapped = (np.round(w0 * np.power(wm, exponents) / quantum) * quantum).astype(int)
    widths, depths = np.unique(snapped, return_counts=True)  # ascending, as the blocks are
    widths = [max(group_width, int(round(w / group_width)) * group_width) for w in widths]
    return tuple(widths), tuple(int(d) for d in depths)


@register_family("regnet")
class RegNetFamily:
    """RegNetX/Y from the RegNet design space: 3x3 stem (32), four stages of group-conv
    bottlenecks whose widths follow a quantised linear rule (w0, wa, wm, depth), group width
    8-32, squeeze-excite (ratio 0.25 of the block input) for RegNetY; the 200MF-1.6GF range."""

    def sample(self, rng: np.random.Generator) -> tuple[str, RegNetConfig]:
        resolution = _pick(rng, RESOLUTIONS)
        se = bool(rng.integers(2))
        while True:  # the rule can give other than four stages; keep four, as RegNets have
            w0 = _pick(rng, (16, 24, 32, 48, 64))
            group = _pick(rng, tuple(g for g in (8, 16, 24, 32) if g <= w0))
            widths, depths = regnet_stages(w0, float(rng.uniform(8.0, 48.0)),
                                           _pick(rng, (2.0, 2.25, 2.5, 2.75)),
                                           int(rng.integers(7, 17)), group)
            if len(widths) == 4:
                break
        config = RegNetConfig(resolution=resolution, stem=32, widths=widths, depths=depths,
                              group_width=group, se_ratio=0.25 if se else 0.0)
        name = (f"regnet_r{resolution}_{'y' if se else 'x'}_g{group}"
                f"_d{'.'.join(map(str, depths))}_w{'.'.join(map(str, widths))}")
        return name, config

    def build(self, config: RegNetConfig) -> Any:
        from latbench.bench.families_torch import RegNet

        return RegNet(config)


@register_family("convnext")
class ConvNeXtFamily:
    """ConvNeXt from Atto to Tiny widths (stage dims C, 2C, 4C, 8C with C 32-96), stage depths
    1-3, 1-3, 2-9, 1-3; channels-first LayerNorms permuted (timm) or decomposed (reference)."""

    def sample(self, rng: np.random.Generator) -> tuple[str, ConvNeXtConfig]:
        base = _pick(rng, (32, 40, 48, 64, 80, 96))
        resolution = _pick(rng, RESOLUTIONS)
        depths = (int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(2, 10)),
                  int(rng.integers(1, 4)))
        norm2d = _pick(rng, ("permute", "decomposed"))
        config = ConvNeXtConfig(resolution=resolution, dims=tuple(base * 2**i for i in range(4)),
                                depths=depths, norm2d=norm2d)
        name = f"convnext_r{resolution}_c{base}_d{''.join(map(str, depths))}_ln{norm2d[0]}"
        return name, config

    def build(self, config: ConvNeXtConfig) -> Any:
        from latbench.bench.families_torch import ConvNeXt

        return ConvNeXt(config)


# --- transformers ---------------------------------------------------------------------------
VIT_RESOLUTIONS = (96, 112, 128, 160, 192, 224)
MIN_PATCHES = 49
# A vision transformer's multiply-accumulates stay under this, so that a sampled network runs
# well under a second on a small CPU (DeiT-Tiny at 224 px is 1.3e9).
MAX_TRANSFORMER_MACS = 2.5e9
# embedding dim -> head counts sampled with it (head dims 32-96, as ViT/DeiT models use)
VIT_HEADS = {64: (1, 2), 96: (2, 3), 128: (2, 4), 192: (3, 6), 256: (4, 8), 384: (6, 12),
             512: (8,), 768: (12,)}
# The MLP's GELU: exact (erf) or tanh-approximated, as timm's `gelu_tanh` configs use.
VIT_ACTIVATIONS = ("gelu", "gelu_tanh")


def vit_macs(config: ViTConfig) -> float:
    """Multiply-accumulates of a vision transformer: patch embedding, per block the qkv,
    projection and MLP linears over all tokens and the two attention matmuls, the head(s)."""
    n, d = config.tokens, config.dim
    patches = (config.resolution // config.patch) ** 2
    block = n * d * d * (4 + 2 * config.mlp_ratio) + 2 * n * n * d
    heads = 1 + int(config.distilled)
    return patches * 3 * config.patch**2 * d + config.depth * block + heads * d * config.classes


def _patching(rng: np.random.Generator, patches: tuple[int, ...]) -> tuple[int, int]:
    """A resolution and a patch size dividing it with at least MIN_PATCHES patches."""
    resolution = _pick(rng, VIT_RESOLUTIONS)
    fits = tuple(p for p in patches
                 if resolution % p == 0 and (resolution // p) ** 2 >= MIN_PATCHES)
    return resolution, _pick(rng, fits)


def _vit_name(family: str, c: ViTConfig) -> str:
    return (f"{family}_r{c.resolution}_p{c.patch}_d{c.dim}_h{c.heads}_l{c.depth}"
            f"_m{c.mlp_ratio:g}_{c.attention}_{c.act}")


def _sample_vit(rng: np.random.Generator, draw: Callable[[np.random.Generator], ViTConfig]
                ) -> ViTConfig:
    """Draw configs until one fits MAX_TRANSFORMER_MACS."""
    while True:
        config = draw(rng)
        if vit_macs(config) <= MAX_TRANSFORMER_MACS:
            return config


@register_family("vit")
class ViTFamily:
    """ViT: 49-784 patches (96-224 px, patch 8, 14 or 16), dim 64-768 with 1-12 heads, depth
    2-12, MLP ratio 2-4, exact or tanh GELU, attention written as timm does, through
    `scaled_dot_product_attention`, or `nn.MultiheadAttention` (as torchvision does)."""

    @staticmethod
    def _draw(rng: np.random.Generator) -> ViTConfig:
        resolution, patch = _patching(rng, (8, 14, 16))
        dim = _pick(rng, tuple(VIT_HEADS))
        return ViTConfig(resolution=resolution, patch=patch, dim=dim,
                         heads=_pick(rng, VIT_HEADS[dim]), depth=int(rng.integers(2, 13)),
                         mlp_ratio=float(_pick(rng, (2, 3, 4))),
                         attention=_pick(rng, ("timm", "sdpa", "mha")),
                         act=_pick(rng, VIT_ACTIVATIONS))

    def sample(self, rng: np.random.Generator) -> tuple[str, ViTConfig]:
        config = _sample_vit(rng, self._draw)
        return _vit_name("vit", config), config

    def build(self, config: ViTConfig) -> Any:
        from latbench.bench.families_torch import VisionTransformer

        return VisionTransformer(config)


@register_family("deit")
class DeiTFamily:
    """DeiT-Tiny/Small-like: dim 128-384 with 64-channel heads, depth 4-12, MLP ratio 4, patch
    16 (or 8), class and distillation tokens with two heads averaged, timm attention (explicit
    or `scaled_dot_product_attention`)."""

    @staticmethod
    def _draw(rng: np.random.Generator) -> ViTConfig:
        resolution, patch = _patching(rng, (8, 16))
        dim = _pick(rng, (128, 192, 256, 384))
        return ViTConfig(resolution=resolution, patch=patch, dim=dim, heads=dim // 64,
                         depth=int(rng.integers(4, 13)), mlp_ratio=4.0,
                         attention=_pick(rng, ("timm", "sdpa")), distilled=True)

    def sample(self, rng: np.random.Generator) -> tuple[str, ViTConfig]:
        config = _sample_vit(rng, self._draw)
        return _vit_name("deit", config), config

    def build(self, config: ViTConfig) -> Any:
        from latbench.bench.families_torch import VisionTransformer

        return VisionTransformer(config)


@register_family("mobilevit")
class MobileViTFamily:
    """MobileViT at the XXS, XS and S widths of the paper, transformer depths 1-2, 2-4, 2-3
    (the paper's 2, 4, 3); resolutions whose feature maps are not a multiple of the patch are
    resized around the unfold, as the reference code does."""

    # channels (stem, five stages), transformer dims, MobileNetV2 expansion, head conv
    SIZES = {"xxs": ((16, 16, 24, 48, 64, 80), (64, 80, 96), 2, 320),
             "xs": ((16, 32, 48, 64, 80, 96), (96, 120, 144), 4, 384),
             "s": ((16, 32, 64, 96, 128, 160), (144, 192, 240), 4, 640)}

    def sample(self, rng: np.random.Generator) -> tuple[str, MobileViTConfig]:
        size = _pick(rng, tuple(self.SIZES))
        channels, dims, expansion, head = self.SIZES[size]
        resolution = _pick(rng, RESOLUTIONS)
        depths = (int(rng.integers(1, 3)), int(rng.integers(2, 5)), int(rng.integers(2, 4)))
        config = MobileViTConfig(resolution=resolution, channels=channels, dims=dims,
                                 depths=depths, expansion=expansion, head=head)
        return f"mobilevit_r{resolution}_{size}_l{''.join(map(str, depths))}", config

    def build(self, config: MobileViTConfig) -> Any:
        from latbench.bench.families_torch import MobileViT

        return MobileViT(config)
