"""Network families (sampling, deterministic builds, structure) and torch -> ONNX export."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from latbench.bench.export.from_torch import torch_to_onnx
from latbench.bench.families import (
    FAMILIES,
    NetworkDef,
    list_families,
    make_divisible,
    register_family,
    sample_networks,
)
from latbench.errors import ConfigError, ExportError

EXPECTED_FAMILIES = ["efficientnet", "mobilenetv2", "mobilenetv3", "resnet"]


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

    net = min(sample_networks(family, 4, np.random.default_rng(5)),
              key=lambda n: n.config.resolution)
    state = torch.random.get_rng_state()
    a, b = net.build(), net.build()
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert not a.training
    x = torch.randn(net.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == (1, net.config.classes) and torch.equal(ya, yb)
    bns = [m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not torch.allclose(bns[0].running_var, torch.ones_like(bns[0].running_var))
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


@pytest.mark.parametrize("family", list_families())
def test_every_family_builds_exports_and_parses(family):
    """Every registered family: sample, build, export to ONNX, and the kernel parser reads the
    export (convolutions and the classifier included)."""
    import torch

    from latbench.bench.kernels import onnx_to_kernels

    net = min(sample_networks(family, 3, np.random.default_rng(7)),
              key=lambda n: n.config.resolution)
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
    assert kinds["linear"] == outside_se(torch.nn.Linear) >= 1
    assert kinds["se"] == len(se_blocks)
