"""Network families (sampling, deterministic builds, structure) and torch -> ONNX export."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import onnx
import pytest

from latbench.bench.export.from_torch import torch_to_onnx
from latbench.bench.families import (
    FAMILIES,
    MAX_TRANSFORMER_MACS,
    NetworkDef,
    list_families,
    make_divisible,
    register_family,
    regnet_stages,
    sample_networks,
    vit_macs,
)
from latbench.errors import ConfigError, ExportError, UnsupportedModelError

EXPECTED_FAMILIES = ["convnext", "deit", "efficientnet", "mobilenetv2", "mobilenetv3",
                     "mobilevit", "regnet", "resnet", "resnet50", "vit"]
# Which normalisation layers each family has (every one must get non-trivial parameters).
NORMS = {"convnext": {"layer"}, "vit": {"layer"}, "deit": {"layer"},
         "mobilevit": {"batch", "layer"}}
# Families whose exports the ONNX kernel parser splits: every one, transformers included.
PARSEABLE = {"convnext", "deit", "efficientnet", "mobilenetv2", "mobilenetv3", "mobilevit",
             "regnet", "resnet", "resnet50", "vit"}


def _size(net: NetworkDef) -> tuple:
    """Blocks, then resolution: a small network of a family is quick to export."""
    c = net.config
    blocks = getattr(c, "depth", 0) or sum(getattr(c, "depths", ())) or len(c.blocks)
    return blocks, c.resolution, net.name


def _small(family: str, n: int = 6, seed: int = 7, **want) -> NetworkDef:
    """The smallest of the first `n` sampled networks of `family` whose config has `want`."""
    drawn = sample_networks(family, 100 if want else n, np.random.default_rng(seed))
    nets = [net for net in drawn if all(getattr(net.config, k) == v for k, v in want.items())]
    return min(nets[:n], key=_size)


def _tiny(net: NetworkDef) -> NetworkDef:
    """`net` cut to one block per stage (one transformer block), every kind of layer kept:
    quick to export."""
    c = net.config
    changes: dict = {"depth": 1} if hasattr(c, "depth") else {}
    if hasattr(c, "depths"):
        changes["depths"] = tuple(1 for _ in c.depths)
    return dataclasses.replace(net, config=dataclasses.replace(c, **changes))


def test_families_are_registered_and_duplicates_refused():
    assert list_families() == EXPECTED_FAMILIES
    with pytest.raises(ConfigError, match="resnet"):
        register_family("resnet")(type("Again", (), {}))
    assert list_families() == EXPECTED_FAMILIES


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        sample_networks("vgg", 2, np.random.default_rng(0))
    assert "vgg" in str(info.value)
    for name in EXPECTED_FAMILIES:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="unknown network family"):
        NetworkDef("x", "vgg", (1, 3, 8, 8), None).build()


@pytest.mark.parametrize("family", EXPECTED_FAMILIES)
def test_sampling_is_seeded_unique_and_varied(family):
    nets = sample_networks(family, 12, np.random.default_rng(1))
    again = sample_networks(family, 12, np.random.default_rng(1))
    other = sample_networks(family, 12, np.random.default_rng(2))
    assert nets == again
    assert [n.name for n in nets] != [n.name for n in other]
    names = [n.name for n in nets]
    assert len(set(names)) == 12 and all(n.startswith(family + "_") for n in names)
    assert len({n.config.resolution for n in nets}) > 1
    for net in nets:
        r = net.config.resolution
        assert net.input_shape == (1, 3, r, r) and 96 <= r <= 224 and net.family == family
        assert f"_r{r}_" in net.name
    hash(nets[0])  # frozen and hashable all the way down


def test_sample_zero_and_negative():
    assert sample_networks("resnet", 0, np.random.default_rng(0)) == []
    with pytest.raises(ConfigError):
        sample_networks("resnet", -1, np.random.default_rng(0))


def test_mbconv_choices_follow_the_family():
    rng = np.random.default_rng(3)
    for net in sample_networks("mobilenetv2", 8, rng):
        blocks = net.config.blocks
        assert {b.act for b in blocks} == {"relu6"} and not any(b.se_mid for b in blocks)
        assert {b.kernel for b in blocks} <= {3, 5, 7}
        assert {b.mid // b.cin for b in blocks[1:]} <= {3, 6} and blocks[0].mid == blocks[0].cin
        for prev, block in zip(blocks, blocks[1:], strict=False):
            assert block.cin == prev.cout
    for net in sample_networks("efficientnet", 8, rng):
        assert all(b.se_mid == max(1, int(b.cin * 0.25)) for b in net.config.blocks)
        assert {b.act for b in net.config.blocks} == {"swish"}
        assert net.config.se_gate == "sigmoid"
    nets = sample_networks("mobilenetv3", 8, rng)
    assert {n.config.se_fc for n in nets} == {True, False}
    for net in nets:
        assert {b.act for b in net.config.blocks} == {"relu", "hswish"}
        assert net.config.se_gate == "hsigmoid" and any(b.se_mid for b in net.config.blocks)


@pytest.mark.parametrize("family", EXPECTED_FAMILIES)
def test_build_is_deterministic_with_real_batchnorm(family):
    import torch

    net = min(sample_networks(family, 4, np.random.default_rng(5)), key=_size)
    state = torch.random.get_rng_state()
    a, b = net.build(), net.build()
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert not a.training
    x = torch.randn(net.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == (1, net.config.classes) and torch.equal(ya, yb)
    norms = NORMS.get(family, {"batch"})
    bns = [m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if "batch" in norms:
        assert bns and not torch.allclose(bns[0].running_var,
                                          torch.ones_like(bns[0].running_var))
    else:
        assert not bns
    lns = [m for m in a.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert bool(lns) == ("layer" in norms)
    for ln in lns:  # every LayerNorm scales and shifts, differently per channel
        assert ln.weight.min() >= 0.5 and ln.weight.std() > 0.05 and ln.bias.abs().max() > 0
    other = NetworkDef(net.name, net.family, net.input_shape, net.config, seed=net.seed + 1)
    with torch.no_grad():
        assert not torch.equal(other.build()(x), ya)


def test_resnet_structure_matches_config():
    import torch

    net = sample_networks("resnet", 1, np.random.default_rng(11))[0]
    module = net.build()
    blocks = [m for m in module.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == sum(net.config.depths)
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    shortcuts = [b for b in blocks if isinstance(b.shortcut, torch.nn.Sequential)]
    assert len(convs) == 1 + 2 * len(blocks) + len(shortcuts)
    assert len(shortcuts) == 3  # one per downsampling stage
    assert module.classifier[-1].in_features == net.config.widths[-1]


def test_make_divisible():
    assert make_divisible(32 * 0.35) == 16  # 11.2 -> 8 is more than 10% low
    assert make_divisible(24 * 0.5) == 16
    assert make_divisible(1280) == 1280 and make_divisible(3) == 8


# --- torch -> ONNX -----------------------------------------------------------------------------
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_export_runs_in_onnxruntime_like_torch(dynamo):
    import onnxruntime as ort
    import torch

    net = min(sample_networks("mobilenetv3", 4, np.random.default_rng(5)),
              key=lambda n: n.config.resolution)
    module = net.build()
    data = torch_to_onnx(module, net.input_shape, dynamo=dynamo)
    model = onnx.load_from_string(data)
    assert model.graph.initializer and all(  # one self-contained file
        t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}
    x = np.random.default_rng(0).standard_normal(net.input_shape).astype(np.float32)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_export_without_optimisation_keeps_batchnorm():
    net = sample_networks("resnet", 1, np.random.default_rng(0))[0]
    model = onnx.load_from_string(torch_to_onnx(net.build(), net.input_shape, optimize=False))
    assert "BatchNormalization" in {n.op_type for n in model.graph.node}
    assert model.opset_import[0].version == 17


def test_export_failure_names_the_module():
    import torch

    class Broken(torch.nn.Module):
        def forward(self, x):
            return x.view(7, -1, 5)  # 1*3*4*4 = 48 elements cannot be viewed so

    with pytest.raises(ExportError, match="Broken"):
        torch_to_onnx(Broken(), (1, 3, 4, 4))
    with pytest.raises(ExportError, match="Broken"):
        torch_to_onnx(Broken(), (1, 0, 4))


def test_family_registry_is_a_plain_dict():
    assert isinstance(FAMILIES, dict) and sorted(FAMILIES) == EXPECTED_FAMILIES


@pytest.mark.parametrize("family", [
    f if f in PARSEABLE else pytest.param(f, marks=pytest.mark.xfail(
        raises=UnsupportedModelError, reason="transformer ops not yet in the ONNX parser"))
    for f in list_families()])
def test_every_family_builds_exports_and_parses(family):
    """Every registered family: sample, build, export to ONNX, and the kernel parser reads the
    export (convolutions and the classifier included). A family outside PARSEABLE would be
    expected to be refused for ops the parser does not know."""
    import torch

    from latbench.bench.kernels import onnx_to_kernels

    net = min(sample_networks(family, 3, np.random.default_rng(7)), key=_size)
    module = net.build()
    with torch.no_grad():
        y = module(torch.zeros(net.input_shape))
    assert tuple(y.shape) == (1, net.config.classes)
    kinds = Counter(k.kind for k in onnx_to_kernels(net.to_onnx()))
    # every conv and linear layer is one kernel, except those inside a squeeze-excite block,
    # which is one "se" kernel of its own
    se_blocks = [m for m in module.modules() if type(m).__name__ == "SqueezeExcite"]
    in_se = [layer for block in se_blocks for layer in block.modules()]

    def outside_se(kind: type) -> int:
        return sum(isinstance(m, kind) for m in module.modules()) - \
            sum(isinstance(m, kind) for m in in_se)

    assert kinds["conv"] + kinds["dwconv"] == outside_se(torch.nn.Conv2d) > 0
    # on tokens a Linear layer is a "tlinear" kernel; nn.MultiheadAttention's packed input
    # projection is one too, though it is no Linear module
    packed = sum(isinstance(m, torch.nn.MultiheadAttention) for m in module.modules())
    assert kinds["linear"] + kinds["tlinear"] == outside_se(torch.nn.Linear) + packed >= 1
    assert kinds["se"] == len(se_blocks)


def test_parseable_families_are_registered():
    assert PARSEABLE <= set(list_families())


# --- both exporters, every family --------------------------------------------------------------
def _export_matches_torch(net: NetworkDef, dynamo: bool) -> Counter:
    """Export `net`, run it in onnxruntime on random input, compare with torch; the ONNX op
    counts."""
    import onnxruntime as ort
    import torch

    module = net.build()
    data = net.to_onnx(dynamo=dynamo)
    model = onnx.load_from_string(data)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    x = np.random.default_rng(1).standard_normal(net.input_shape).astype(np.float32)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (1, net.config.classes)
    # relative 1e-4, or float32 rounding on the scale of the logits
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    return Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("family", list_families())
def test_every_family_exports_with_both_exporters_like_torch(family, dynamo):
    ops = _export_matches_torch(_tiny(_small(family)), dynamo)
    assert "BatchNormalization" not in ops  # folded by the exporter
    if family in NORMS and "layer" in NORMS[family]:
        assert ops["LayerNormalization"] > 0


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize(("family", "want", "ops"), [
    ("vit", {"attention": "timm", "act": "gelu"}, {"Softmax", "Erf"}),
    ("vit", {"attention": "sdpa", "act": "gelu_tanh"}, {"Softmax", "Tanh"}),
    ("vit", {"attention": "mha"}, {"Softmax"}),
    ("convnext", {"norm2d": "permute"}, {"Transpose", "Erf"}),
    ("convnext", {"norm2d": "decomposed"}, {"Sqrt", "ReduceMean", "Erf"}),
    ("mobilevit", {"resolution": 160}, {"Resize", "Softmax"}),
], ids=["vit-timm", "vit-sdpa-gelu-tanh", "vit-mha", "convnext-permute", "convnext-decomposed",
        "mobilevit-resized"])
def test_variants_export_with_both_exporters_like_torch(family, want, ops, dynamo):
    """Each way a family writes a layer exports with both exporters and runs like torch."""
    net = _tiny(_small(family, **want))
    got = _export_matches_torch(net, dynamo)
    assert ops <= set(got)
    if family == "convnext":  # one per block and the head's; stem and downsampling: 4 more
        permuted = 4 if net.config.norm2d == "permute" else 0  # or stay decomposed
        assert got["LayerNormalization"] == sum(net.config.depths) + 1 + permuted


# --- structure of the new families -------------------------------------------------------------
def test_regnet_widths_follow_the_design_space():
    # the published RegNetX-200MF, RegNetY-400MF, RegNetX-800MF parameters
    assert regnet_stages(24, 36.44, 2.49, 13, 8) == ((24, 56, 152, 368), (1, 1, 4, 7))
    assert regnet_stages(48, 27.89, 2.09, 16, 8) == ((48, 104, 208, 440), (1, 3, 6, 6))
    assert regnet_stages(56, 35.73, 2.28, 16, 16) == ((64, 128, 288, 672), (1, 3, 7, 5))


def test_regnet_structure_matches_config():
    import torch

    nets = sample_networks("regnet", 8, np.random.default_rng(2))
    assert {n.config.se_ratio for n in nets} == {0.0, 0.25}
    for net in nets[:3]:
        c = net.config
        assert len(c.widths) == len(c.depths) == 4 and all(w % c.group_width == 0
                                                             for w in c.widths)
        blocks = [m for m in net.build().modules() if type(m).__name__ == "Bottleneck"]
        assert len(blocks) == sum(c.depths)
        for block in blocks:
            grouped = block.body[1][0]
            assert isinstance(grouped, torch.nn.Conv2d) and grouped.kernel_size == (3, 3)
            assert grouped.in_channels // grouped.groups == c.group_width
            has_se = any(type(m).__name__ == "SqueezeExcite" for m in block.body)
            assert has_se == (c.se_ratio > 0) == ("_y_" in net.name)


def test_resnet50_structure_matches_config():
    import torch

    net = sample_networks("resnet50", 1, np.random.default_rng(11))[0]
    module = net.build()
    blocks = [m for m in module.modules() if type(m).__name__ == "Bottleneck"]
    assert len(blocks) == sum(net.config.depths) and net.config.expansion == 4
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    shortcuts = [b for b in blocks if isinstance(b.shortcut, torch.nn.Sequential)]
    assert len(shortcuts) == 4  # the first block widens 4x, then one per downsampling stage
    assert len(convs) == 1 + 3 * len(blocks) + len(shortcuts)
    strided = [b.body[1][0] for b in blocks if b.body[1][0].stride == (2, 2)]
    assert len(strided) == 3 and all(c.kernel_size == (3, 3) for c in strided)  # v1.5
    assert module.classifier[-1].in_features == 4 * net.config.widths[-1]


def test_convnext_structure_matches_config():
    import torch

    nets = sample_networks("convnext", 8, np.random.default_rng(4))
    assert {n.config.norm2d for n in nets} == {"permute", "decomposed"}
    net = min(nets, key=_size)
    module = net.build()
    blocks = [m for m in module.modules() if type(m).__name__ == "ConvNeXtBlock"]
    assert len(blocks) == sum(net.config.depths)
    assert [b.dwconv.in_channels for b in blocks] == [
        d for d, n in zip(net.config.dims, net.config.depths, strict=True) for _ in range(n)]
    assert all(b.dwconv.kernel_size == (7, 7)
               and b.pwconv1.out_features == 4 * b.pwconv1.in_features for b in blocks)
    assert all(b.gamma.std() > 0.05 for b in blocks)  # layer scale is not a constant
    assert sum(type(m).__name__ == "LayerNorm2d" for m in module.modules()) == 4
    assert isinstance(blocks[0].act, torch.nn.GELU)


@pytest.mark.parametrize("family", ["vit", "deit"])
def test_vision_transformers_match_config_and_budget(family):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    nets = sample_networks(family, 40, np.random.default_rng(6))
    configs = [n.config for n in nets]
    assert all(vit_macs(c) <= MAX_TRANSFORMER_MACS for c in configs)
    patches = [(c.resolution // c.patch) ** 2 for c in configs]
    assert min(patches) >= 49 and max(patches) > 196
    assert all(1 <= c.heads <= 12 and c.dim % c.heads == 0 for c in configs)
    assert {c.distilled for c in configs} == {family == "deit"}
    assert len({c.dim for c in configs}) >= 3 and len({c.depth for c in configs}) >= 3
    if family == "vit":
        assert {c.attention for c in configs} == {"timm", "sdpa", "mha"}
        assert {c.mlp_ratio for c in configs} == {2.0, 3.0, 4.0}
    net = min((n for n in nets if n.config.attention == "timm"), key=_size)
    c = net.config
    module = net.build()
    assert module.pos_embed.shape == (1, c.tokens, c.dim)
    assert module.cls_token.shape == (1, 1, c.dim)
    assert (module.dist_token is not None) == (module.head_dist is not None) == c.distilled
    assert len(module.blocks) == c.depth and module.blocks[0].attn.heads == c.heads
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(net.input_shape))
    assert counter.get_total_flops() == 2 * vit_macs(c)  # the budget counts what runs


def test_mobilevit_structure_matches_config():
    net = _small("mobilevit")
    module = net.build()
    vit_blocks = [m for m in module.modules() if type(m).__name__ == "MobileViTBlock"]
    assert [len(b.transformer) for b in vit_blocks] == list(net.config.depths)
    assert [b.conv_1x1.out_channels for b in vit_blocks] == list(net.config.dims)
    assert [b.conv_fusion[0].in_channels for b in vit_blocks] == [
        2 * c for c in net.config.channels[3:]]
    assert module.classifier[-1].in_features == net.config.head
