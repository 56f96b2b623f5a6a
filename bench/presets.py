"""The plan presets and the random entries they are made of, as plain data (importing this
module costs nothing: the command line lists the presets in its help texts).

`bench.plans` loads a preset by name (`load_plan`) and re-exports these names.
"""

from __future__ import annotations

from typing import Any

_WIDE_RANDOM = (
    {"kind": "conv", "count": 60, "h": [4, 8, 16, 32, 56], "cin": {"min": 3, "max": 320},
     "cout": {"min": 8, "max": 320}, "kernel": [1, 3, 5], "stride": [1, 2],
     "act": ["none", "relu", "relu6"]},
    {"kind": "dwconv", "count": 40, "h": [4, 8, 16, 32, 56], "cin": {"min": 8, "max": 960},
     "kernel": [3, 5, 7], "stride": [1, 2], "act": ["none", "relu", "relu6"]},
    {"kind": "mbconv", "count": 40, "h": [4, 8, 16, 32], "cin": {"min": 16, "max": 256},
     "cout": {"min": 16, "max": 256}, "kernel": [3, 5, 7], "stride": [1, 2],
     "expand": [1, 3, 4, 6], "act": ["relu", "relu6"]},
    {"kind": "add", "count": 15, "h": [4, 8, 16, 32], "cin": {"min": 8, "max": 512}},
    {"kind": "pool", "count": 15, "h": [4, 8, 16, 32], "cin": {"min": 8, "max": 1280},
     "pool": ["gavg", "avg", "max"], "kernel": [2, 3], "stride": [1, 2]},
    {"kind": "linear", "count": 15, "cin": {"min": 16, "max": 2048},
     "cout": {"min": 10, "max": 1000}},
)

# ViT / DeiT-style transformer kernels: tokens 49-1024, width 64-768, heads 1-12, MLP ratio 2-4
# (hidden width up to 3072); attention matmuls at head sizes 16-96 (QK^T reduces over the head
# size, AV over the tokens); token tensors [N, T, C] for the elementwise kinds are h = T, w = 1.
_TOKENS = {"min": 49, "max": 1024}
_WIDTH = {"min": 64, "max": 768}
_HEADS = [1, 2, 3, 4, 6, 8, 12]
_HEAD_DIMS = [16, 24, 32, 48, 64, 96]
TRANSFORMER_RANDOM = (
    {"kind": "tlinear", "count": 60, "tokens": _TOKENS, "cin": {"min": 64, "max": 3072},
     "cout": {"min": 64, "max": 3072}, "act": ["none", "gelu"]},
    {"kind": "bmm", "count": 25, "heads": _HEADS, "tokens": _TOKENS, "cin": _HEAD_DIMS,
     "cout": _TOKENS},
    {"kind": "bmm", "count": 25, "heads": _HEADS, "tokens": _TOKENS, "cin": _TOKENS,
     "cout": _HEAD_DIMS},
    {"kind": "softmax", "count": 25, "heads": _HEADS, "tokens": _TOKENS, "cin": _TOKENS},
    {"kind": "layernorm", "count": 25, "tokens": _TOKENS, "cin": _WIDTH},
    {"kind": "transpose", "count": 25, "cin": _TOKENS, "h": _HEADS, "w": _HEAD_DIMS,
     "axes": ["0213", "0132"]},
    {"kind": "act", "count": 15, "h": _TOKENS, "w": [1], "cin": {"min": 128, "max": 3072},
     "act": ["gelu", "gelu_tanh"]},
    {"kind": "add", "count": 15, "h": _TOKENS, "w": [1], "cin": _WIDTH},
    {"kind": "clstoken", "count": 10, "tokens": _TOKENS, "cin": _WIDTH},
    {"kind": "gather", "count": 10, "tokens": _TOKENS, "cin": _WIDTH},
    {"kind": "posembed", "count": 10, "tokens": _TOKENS, "cin": _WIDTH},
    # The MLP's other GELU (`families.VIT_ACTIVATIONS`): measured only in the family kernels, at
    # 32-130 tokens, a tanh-GELU layer at 197 tokens was priced from there, and ViTs with it ran
    # 15-28% over their price at 2 threads. Last, so that every kernel drawn before is the same.
    {"kind": "tlinear", "count": 20, "tokens": _TOKENS, "cin": {"min": 64, "max": 3072},
     "cout": {"min": 64, "max": 3072}, "act": ["gelu_tanh"]},
)

# The rest of the common op set at CNN sizes (segmentation decoders, ShuffleNet, GAN-style
# blocks): dilated and non-square convolutions, upsampling, padding, slicing, normalization,
# reductions, shuffles, concatenation along any axis and the other activations.
_SIZES = [7, 14, 16, 28, 32, 56]
_CHANNELS = {"min": 8, "max": 512}
COMMON_OPS_RANDOM = (
    {"kind": "conv", "count": 20, "h": _SIZES, "cin": _CHANNELS, "cout": _CHANNELS,
     "kernel": [3], "dilation": [2, 4, 6, 12], "act": ["none", "relu"]},
    {"kind": "conv", "count": 10, "h": _SIZES, "cin": _CHANNELS, "cout": _CHANNELS,
     "kernel": [1], "kernel_w": [3, 5, 7], "act": ["none", "relu"]},
    {"kind": "conv", "count": 10, "h": _SIZES, "cin": _CHANNELS, "cout": _CHANNELS,
     "kernel": [3, 5, 7], "kernel_w": [1], "act": ["none", "relu"]},
    {"kind": "dwconv", "count": 15, "h": _SIZES, "cin": {"min": 8, "max": 960},
     "kernel": [3, 5], "dilation": [1, 2, 4], "act": ["none", "relu"]},
    {"kind": "convt", "count": 20, "h": [4, 7, 8, 14, 16, 28], "cin": _CHANNELS,
     "cout": _CHANNELS, "kernel": [2, 3, 4], "stride": [2], "pad": [0, 1], "out_pad": [0, 1],
     "act": ["none", "relu"]},
    {"kind": "resize", "count": 15, "h": _SIZES, "cin": _CHANNELS, "scale": [2, 4],
     "mode": ["nearest", "bilinear"]},
    {"kind": "pad", "count": 10, "h": _SIZES, "cin": _CHANNELS, "pad": [1, 2, 3],
     "mode": ["constant", "reflect"]},
    {"kind": "slice", "count": 10, "h": _SIZES, "cin": {"min": 16, "max": 512},
     "cout": {"min": 8, "max": 256}},
    {"kind": "instnorm", "count": 10, "h": _SIZES, "cin": _CHANNELS},
    {"kind": "reduce", "count": 10, "h": _SIZES, "cin": _CHANNELS, "axes": ["23", "1"]},
    {"kind": "shuffle", "count": 10, "h": _SIZES, "cin": {"min": 16, "max": 512},
     "groups": [2, 4]},
    {"kind": "concat", "count": 10, "h": [8, 14, 16, 28, 32], "cin": {"min": 16, "max": 512},
     "groups": [2], "axes": ["1", "2", "3"]},
    {"kind": "act", "count": 20, "h": _SIZES, "cin": _CHANNELS,
     "act": ["leakyrelu", "prelu", "tanh", "mish", "gelu"]},
)

# Patch embeddings: a conv over an RGB image with kernel = stride = the patch (8, 14, 16).
PATCH_EMBED_RANDOM = tuple(
    {"kind": "conv", "count": 6, "h": sizes, "cin": [3], "cout": _WIDTH, "kernel": [patch],
     "stride": [patch], "pad": [0]}
    for patch, sizes in ((8, [96, 112, 128, 160, 192, 224]), (14, [112, 168, 224]),
                         (16, [96, 112, 128, 160, 192, 224])))

# The presets' family kernel sets are drawn with this seed and their calibration networks with
# the plan's seed (0): draw held-out networks with other seeds and leave out
# `bench.plans.kernel_set_networks(plan)` (a family with few architectures, such as MobileViT,
# draws some again under another seed), so that none is a network whose kernels the plan took.
PRESET_FAMILY_SEED = 1414


def _grouped_convs() -> list[str]:
    """Grouped 3x3 convs as ResNeXt / RegNet blocks have them (as many output as input
    channels, 8-64 channels per group, 7-112 px, stride 1 and 2), two channel counts per case:
    their time follows the group width, which random convs with groups rarely sample."""
    caps = {7: 1024, 14: 1024, 28: 512, 56: 256, 112: 128}  # channels, by map size
    keys, turn = [], 0
    for width in (8, 16, 24, 32, 48, 64):
        for h, cap in caps.items():
            options = [g for g in (2, 4, 6, 8, 12, 16, 24, 32) if 16 <= g * width <= cap]
            for stride in (1, 2):
                for groups in sorted({options[turn % len(options)],
                                      options[(turn + 3) % len(options)]} if options else ()):
                    c = groups * width
                    keys.append(f"conv:n=1,h={h},w={h},cin={c},cout={c},k=3,s={stride},p=1,"
                                f"g={groups},act=relu,dtype=float32")
                turn += 1
    return keys


# The MobileNetV2 family's depthwise convolutions (bench/families.py: 5 resolutions, widths
# 0.35-1, expansion 3 or 6): per input map size, the expanded channels its blocks reach at
# stride 1 and at stride 2 (the first block's 3x3 at half the resolution included).
_MOBILENET_DW_CHANNELS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    112: ((16, 24, 32), (24, 48, 96)), 96: ((16, 24, 32), (24, 48, 96)),
    80: ((16, 24, 32), (24, 48, 96)), 64: ((16, 24, 32), (24, 48, 96)),
    56: ((24, 48, 72, 96, 144), (24, 48, 72, 96, 144)),
    48: ((16, 24, 32, 48, 72, 96, 144), (24, 48, 72, 96, 144)),
    40: ((24, 48, 72, 96, 144), (24, 48, 72, 96, 144)),
    32: ((24, 48, 72, 96, 144), (24, 48, 72, 96, 144)),
    28: ((48, 72, 96, 144, 192), (48, 72, 96, 144, 192)),
    24: ((24, 48, 72, 96, 144, 192), (24, 48, 72, 96, 144, 192)),
    20: ((48, 72, 96, 144, 192), (48, 72, 96, 144, 192)),
    16: ((48, 72, 96, 144, 192), (48, 72, 96, 144, 192)),
    14: ((72, 96, 144, 192, 288, 432, 576), (96, 144, 192, 288, 432, 576)),
    12: ((48, 96, 144, 192, 288, 432, 576), (48, 96, 144, 192, 288, 432, 576)),
    10: ((72, 96, 144, 192, 288, 432, 576), (96, 144, 192, 288, 432, 576)),
    8: ((72, 96, 144, 192, 288, 432, 576), (96, 144, 192, 288, 432, 576)),
    7: ((168, 240, 336, 480, 720, 960), ()), 6: ((72, 144, 240, 360, 576, 960),
                                                (96, 144, 216, 288, 432, 576)),
    5: ((168, 240, 336, 480, 720, 960), ()), 4: ((168, 240, 336, 480, 720, 960), ()),
    3: ((168, 240, 336, 480, 720, 960), ()),
}


def _mobilenet_depthwise_convs() -> list[str]:
    """Depthwise convs over the MobileNetV2 family's shapes: every map size and stride it has,
    3x3, 5x5 and 7x7 each at the least and the most channels the family reaches there, 7x7
    also at one in between. XNNPACK's 7x7 depthwise kernel runs at a few GFLOPS and its time
    jumps between neighbouring shapes: priced from the few 7x7 kernels of four sampled
    networks, a MobileNetV2 full of them came out 30% fast on LiteRT."""
    keys, turn = [], 0
    for h, by_stride in _MOBILENET_DW_CHANNELS.items():
        for stride, options in zip((1, 2), by_stride, strict=True):
            if not options:
                continue
            for kernel in (3, 5, 7):
                chosen = {options[0], options[-1]}
                if kernel == 7:
                    chosen.add(options[turn % len(options)])
                    turn += 1
                keys += [f"dwconv:n=1,h={h},w={h},cin={c},k={kernel},s={stride},"
                         f"p={kernel // 2},act=relu6,dtype=float32" for c in sorted(chosen)]
    return keys


def _families(**counts: int) -> list[str]:
    """"family:NAME:COUNT:SEED" kernel sets of the presets."""
    return [f"family:{name}:{count}:{PRESET_FAMILY_SEED}" for name, count in counts.items()]


PRESETS: dict[str, dict[str, Any]] = {
    # Real NAS-Bench-Macro kernels, their primitives and a few neighbours, and 30 networks to
    # calibrate how kernels compose: enough for the demo. With the kernels of a few ResNets and
    # ViTs and two of each to calibrate them (a composition fitted on NAS-Bench-Macro alone
    # mis-prices a ResNet's 3x3 convolutions), so that the demo can price the CNN and the
    # vision transformer a user brings (latbench/user_models.py).
    "quick": {"spaces": ["nasbench-macro", *_families(resnet=4, vit=4)], "primitives": True,
              "around": 2, "networks": ["nasbench-macro:30", "resnet:2", "vit:2"]},
    # `quick` with calibration networks that span network sizes, from 32-px chains to
    # ResNet-50 and MobileNetV2 at 224 px, and those families' kernels: a runtime whose
    # networks run slower than their kernels by an amount that grows with the network (LiteRT
    # with XNNPACK) fits its composition on networks as large as the ones it prices. The
    # transformer kernels at random span the ViT family's 49-785 tokens: four sampled ViTs
    # reached 290, and the attention matmuls and softmax of a 785-token ViT, priced from
    # there, came out at half their time. The plan of the platform matrix
    # (benchmarks/platform_matrix.py).
    "platforms": {"spaces": ["nasbench-macro", *_families(resnet=4, vit=4, mobilenetv2=4,
                                                          resnet50=3)],
                  "primitives": True, "around": 2, "random": list(TRANSFORMER_RANDOM),
                  "specs": _mobilenet_depthwise_convs(),
                  "networks": ["nasbench-macro:30", "resnet:3", "vit:4", "mobilenetv2:4",
                               "resnet50:3"]},
    # NAS-Bench-201's kernels (its cells' convs, average pools and adds at every stage), their
    # neighbours, and calibration networks: the plan of a kernel predictor that prices
    # NAS-Bench-201, e.g. as a few-shot reference device (`predictor fewshot
    # --reference-predictor`); `quick` and `platforms` measure no 3x3 average pool.
    "nasbench201": {"spaces": ["nasbench201"], "primitives": True, "around": 4,
                    "networks": ["nasbench201:30"]},
    # The same, denser around the space, plus wide random kernels for networks outside it.
    "nasbench-macro": {"spaces": ["nasbench-macro"], "primitives": True, "around": 6,
                       "random": list(_WIDE_RANDOM), "networks": ["nasbench-macro:60"]},
    # MobileNetV2 / ProxylessNAS-style layers at 224x224.
    "mobilenetv2": {"spaces": ["proxyless"], "primitives": True, "around": 2,
                    "networks": ["proxyless:20"]},
    # Kernels of every kind at random, for predictors that must generalise.
    "random": {"random": list(_WIDE_RANDOM)},
    # ViT / DeiT-style transformers: the kernels of sampled ViT and DeiT networks as their ONNX
    # export splits them and two neighbours of each (other tokens and widths), transformer
    # kernels at random over the ViT/DeiT ranges, patch embeddings, and calibration networks.
    "transformer": {"spaces": _families(vit=16, deit=8), "primitives": True, "around": 2,
                    "random": [*TRANSFORMER_RANDOM, *PATCH_EMBED_RANDOM],
                    "networks": ["vit:8", "deit:4"]},
    # CNNs, transformers and hybrids: the kernels of sampled MobileNetV3, EfficientNet, RegNet,
    # ResNet-50, ConvNeXt, MobileViT, ViT and DeiT networks and a neighbour of each, kernels of
    # every kind at random (CNN, transformer and the rest of the common op set), and
    # calibration networks of every family, and RegNet-style grouped convs: about 5100
    # kernels and 50 networks, sized for a
    # campaign within an hour on a 2-core CPU with ONNX Runtime and the default stopping rule.
    "vision": {"spaces": _families(mobilenetv3=8, efficientnet=8, regnet=8, resnet50=6,
                                   convnext=8, mobilevit=8, vit=16, deit=8),
               "primitives": True, "around": 1,
               "random": [*_WIDE_RANDOM, *TRANSFORMER_RANDOM, *PATCH_EMBED_RANDOM,
                          *COMMON_OPS_RANDOM],
               "specs": _grouped_convs(),
               "networks": ["vit:8", "deit:4", "convnext:8", "mobilevit:8", "regnet:6",
                            "resnet50:4", "mobilenetv3:6", "efficientnet:6"]},
    # NAS-Bench-Macro plus the hand-built families (MobileNetV2, ResNet, EfficientNet): the
    # kernels of 30 sampled networks of each family as their ONNX export splits them
    # ("family:NAME:COUNT" spaces, resolved in bench/network_sets.py), a neighbour of each, and
    # calibration networks of every family.
    "families": {"spaces": ["nasbench-macro", "family:mobilenetv2:30", "family:resnet:30",
                            "family:efficientnet:30"],
                 "primitives": True, "around": 1,
                 "networks": ["nasbench-macro:30", "mobilenetv2:40", "resnet:40",
                              "efficientnet:40"]},
}


def preset_names() -> str:
    """The presets, comma-separated, for help texts and messages."""
    return ", ".join(PRESETS)
