"""ONNX -> kernels: torch-exported network families (both exporters, BN folded by the exporter or
not), round trips through latbench's own exporter, fusion rules as data, and refusals."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from latbench.bench.export.from_torch import torch_to_onnx
from latbench.bench.export.graph import chain_graph, spec_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.families import sample_networks
from latbench.bench.kernels import DEFAULT_ATTACH, onnx_to_kernels, se_ratio
from latbench.bench.ops import ACTIVATIONS, OpSpec, decompose
from latbench.errors import ParseError, UnsupportedModelError

FAMILIES = ("mobilenetv2", "resnet", "efficientnet", "mobilenetv3")


# --- torch network families ------------------------------------------------------------------
def _small_net(family: str, se_fc: bool | None = None):
    """A deterministic, small sample of a family (lowest resolution among a few draws)."""
    nets = sample_networks(family, 6, np.random.default_rng(7))
    if se_fc is not None:
        nets = [n for n in nets if n.config.se_fc == se_fc]
    return min(nets, key=lambda n: (n.config.resolution, n.name))


def _expected(module, input_shape):
    """What the parser must find, read off the torch module with forward hooks."""
    import torch
    from torch import nn

    se_modules = [m for m in module.modules() if type(m).__name__ == "SqueezeExcite"]
    inside_se = {id(sub) for se in se_modules for sub in se.modules()}
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d) and id(m) not in inside_se]
    seen: dict[str, list] = {"conv": [], "se": []}

    def conv_hook(block, args, _out):
        conv = block[0]
        seen["conv"].append((args[0].shape[2], args[0].shape[3], conv.in_channels,
                             conv.out_channels, conv.kernel_size[0], conv.stride[0],
                             conv.groups, block.act_name))

    def se_hook(se, args, _out):
        seen["se"].append((args[0].shape[2], se.channels, se.mid, type(se.gate).__name__))

    hooks = [m.register_forward_hook(conv_hook) for m in module.modules()
             if type(m).__name__ == "ConvBNAct"]
    hooks += [se.register_forward_hook(se_hook) for se in se_modules]
    with torch.no_grad():
        module(torch.zeros(input_shape))
    for hook in hooks:
        hook.remove()
    residual = sum(1 for m in module.modules()
                   if type(m).__name__ == "BasicBlock" or getattr(m, "residual", False))
    linears = [m for m in module.modules() if isinstance(m, nn.Linear) and id(m) not in inside_se]
    return {"n_convs": len(convs), "convs": seen["conv"], "se": seen["se"],
            "residual": residual, "linears": linears}


def _check_family(family: str, kernels: list[OpSpec], expected: dict) -> None:
    convs = [k for k in kernels if k.kind in ("conv", "dwconv")]
    assert len(convs) == expected["n_convs"]
    got = Counter((k.h, k.w, k.cin, k.cout, k.kernel, k.stride, k.groups, k.act) for k in convs)
    assert got == Counter(expected["convs"])
    for k in convs:  # depthwise convs are recognised as such
        assert (k.kind == "dwconv") == (k.groups == k.cin == k.cout)
    # BN folded, activations attached, SE fused: nothing is left as a lone mul or act kernel
    assert not [k for k in kernels if k.kind in ("mul", "act")]
    gates = {"Sigmoid": "sigmoid", "Hardsigmoid": "hsigmoid"}
    ses = [(k.h, k.cin, k.mid, k.act) for k in kernels if k.kind == "se"]
    assert ses == [(h, c, mid, gates[gate]) for h, c, mid, gate in expected["se"]]
    adds = [k for k in kernels if k.kind == "add"]
    assert len(adds) == expected["residual"]
    assert {k.act for k in adds} <= ({"relu"} if family == "resnet" else {"none"})
    linears = [k for k in kernels if k.kind == "linear"]
    assert [(k.cin, k.cout) for k in linears] == [(m.in_features, m.out_features)
                                                  for m in expected["linears"]]
    assert kernels[-1].kind == "linear" and kernels[-1].act == "none"
    assert kernels[-1].cout == expected["linears"][-1].out_features
    first_linear = kernels.index(linears[0])
    pool = kernels[first_linear - 1]
    assert pool.kind == "pool" and pool.pool == "gavg" and pool.cin == linears[0].cin
    if family == "mobilenetv3":
        assert linears[0].act == "hswish"
    if family == "mobilenetv2":
        assert {k.act for k in convs} == {"relu6", "none"}
    if family == "efficientnet":
        assert {k.act for k in convs} == {"swish", "none"} and ses
    assert {k.batch for k in kernels} == {1}


@pytest.fixture(scope="module")
def built():
    cache: dict = {}

    def get(family: str, se_fc: bool | None = None):
        key = (family, se_fc)
        if key not in cache:
            net = _small_net(family, se_fc)
            module = net.build()
            cache[key] = (net, module, _expected(module, net.input_shape))
        return cache[key]

    return get


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_exports_parse_into_matching_kernels(built, family, dynamo):
    net, module, expected = built(family)
    model = torch_to_onnx(module, net.input_shape, dynamo=dynamo)
    _check_family(family, onnx_to_kernels(model), expected)


@pytest.mark.parametrize(("family", "se_fc", "dynamo"), [
    ("efficientnet", None, False), ("mobilenetv3", False, True), ("mobilenetv3", True, False),
    ("resnet", None, True)])
def test_unfolded_batchnorm_is_folded_by_the_parser(built, family, se_fc, dynamo):
    net, module, expected = built(family, se_fc)
    model = torch_to_onnx(module, net.input_shape, dynamo=dynamo, optimize=False)
    ops = Counter(n.op_type for n in onnx.load_from_string(model).graph.node)
    assert ops["BatchNormalization"] == expected["n_convs"]  # the exporter kept every BN
    _check_family(family, onnx_to_kernels(model), expected)


def test_se_as_linear_layers_is_one_se_kernel(built):
    net, module, expected = built("mobilenetv3", True)
    assert expected["se"], "sample has SE blocks"
    model = onnx.load_from_string(torch_to_onnx(module, net.input_shape))
    assert "Gemm" in Counter(n.op_type for n in model.graph.node)
    _check_family("mobilenetv3", onnx_to_kernels(model), expected)


def test_symbolic_batch_is_one_and_gives_the_same_kernels(tmp_path):
    import torch

    net = _small_net("mobilenetv3", se_fc=True)  # x.shape[0] in SE: Shape/Gather chains
    module = net.build()
    path = tmp_path / "dyn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(module, (torch.zeros(net.input_shape),), str(path), dynamo=False,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    kernels = onnx_to_kernels(path)
    static = onnx_to_kernels(torch_to_onnx(module, net.input_shape))
    assert [k.key() for k in kernels] == [k.key() for k in static]
    assert {k.batch for k in kernels} == {1}


# --- round trips through latbench's own exporter ---------------------------------------------
CHAIN = [
    OpSpec("conv", h=32, w=32, cin=3, cout=16, kernel=3, stride=2, act="relu6"),
    OpSpec("dwconv", h=16, w=16, cin=16, kernel=5, act="hswish"),
    OpSpec("mbconv", h=16, w=16, cin=16, cout=16, kernel=3, expand=6, act="swish", se=True),
    OpSpec("mbconv", h=16, w=16, cin=16, cout=24, kernel=5, stride=2, expand=3, act="relu6"),
    OpSpec("mbconv", h=8, w=8, cin=24, cout=24, kernel=3, expand=1.0, act="hswish", se=True),
    OpSpec("mbconv", h=8, w=8, cin=24, cout=24, kernel=7, expand=5, act="relu", se=True),
    OpSpec("mbconv", h=8, w=8, cin=24, cout=24, kernel=3, expand=2, act="relu6",
           residual=False),
    OpSpec("add", h=8, w=8, cin=24, act="relu"),
    OpSpec("mul", h=8, w=8, cin=24),
    OpSpec("act", h=8, w=8, cin=24, act="sigmoid"),
    OpSpec("act", h=8, w=8, cin=24, act="swish"),
    OpSpec("se", h=8, w=8, cin=24, expand=0.25, act="hsigmoid"),
    OpSpec("pool", h=8, w=8, cin=24, pool="max", kernel=3, stride=2, pad=1),
    OpSpec("pool", h=4, w=4, cin=24, pool="avg", kernel=2, stride=2),
    OpSpec("conv", h=2, w=2, cin=24, cout=32, kernel=1, groups=4, act="hsigmoid"),
    OpSpec("pool", h=2, w=2, cin=32, pool="gavg"),
    OpSpec("linear", cin=32, cout=10, act="relu"),
    OpSpec("linear", cin=10, cout=5),
]


def test_chain_round_trip_equals_decomposed_specs():
    expected = [k.key() for spec in CHAIN for k in decompose(spec)]
    got = [k.key() for k in onnx_to_kernels(to_onnx(chain_graph(CHAIN, seed=3)))]
    assert got == expected


def test_chain_round_trip_with_batch():
    specs = [s.with_(batch=3) for s in CHAIN]
    got = onnx_to_kernels(to_onnx(chain_graph(specs)))
    assert [k.key() for k in got] == [k.key() for s in specs for k in decompose(s)]


def _single_specs() -> list[OpSpec]:
    s = OpSpec
    cases = [
        s("conv", h=7, w=9, cin=4, cout=6, kernel=3, stride=2, act="relu6"),
        s("conv", h=6, w=6, cin=4, cout=4, kernel=3, pad=0),
        s("conv", h=6, w=6, cin=4, cout=4, kernel=3, pad=2),
        s("conv", h=8, w=8, cin=8, cout=12, kernel=3, stride=2, groups=4, act="swish"),
        s("conv", h=6, w=6, cin=4, cout=8, kernel=3, groups=4),  # depthwise x2: stays conv
        s("dwconv", h=10, w=10, cin=4, kernel=5, stride=2, act="relu"),
        s("mbconv", h=7, w=7, cin=8, cout=16, kernel=3, stride=2, expand=6, se=True,
          act="hswish"),
        s("linear", cin=12, cout=5, act="relu", batch=2),
        s("pool", h=8, w=8, cin=4, pool="avg", kernel=3, stride=2, pad=1),
        s("pool", h=6, w=5, cin=6, pool="gavg", batch=2),
        s("add", h=5, w=5, cin=8, act="hswish"),
        s("mul", h=5, w=5, cin=8, batch=2),
        s("se", h=6, w=6, cin=16, expand=0.5, act="hsigmoid"),
        s("se", h=6, w=6, cin=30, expand=0.25),  # round(7.5) squeezed channels
        s("concat", h=5, w=5, cin=12, groups=3),
    ]
    cases += [s("act", h=5, w=5, cin=6, act=a) for a in ACTIVATIONS if a != "none"]
    cases += [s("conv", h=6, w=6, cin=4, cout=6, kernel=3, act=a) for a in ACTIVATIONS]
    return cases


@pytest.mark.parametrize("spec", _single_specs(), ids=lambda s: s.key())
def test_single_spec_round_trip(spec):
    got = onnx_to_kernels(to_onnx(spec_graph(spec)))
    assert [k.key() for k in got] == [k.key() for k in decompose(spec)]


def test_model_sources_bytes_path_and_proto(tmp_path):
    data = to_onnx(chain_graph(CHAIN[:3]))
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    expected = onnx_to_kernels(data)
    assert onnx_to_kernels(path) == expected
    assert onnx_to_kernels(str(path)) == expected
    assert onnx_to_kernels(onnx.load_from_string(data)) == expected


# --- fusion rules are data ---------------------------------------------------------------------
def test_no_attach_rules_leave_bn_and_activations_as_kernels(built):
    net, module, expected = built("resnet")
    model = torch_to_onnx(module, net.input_shape, optimize=False)
    kernels = onnx_to_kernels(model, attach=frozenset())
    kinds = Counter(k.kind for k in kernels)
    assert kinds["mul"] == expected["n_convs"]  # every BN is a per-channel affine kernel
    assert {k.act for k in kernels if k.kind in ("conv", "add")} == {"none"}
    n_relu = sum(1 for c in expected["convs"] if c[-1] == "relu") + expected["residual"]
    assert [k.act for k in kernels if k.kind == "act"] == ["relu"] * n_relu


def test_custom_attach_rules_replace_the_default(built):
    net, module, expected = built("resnet")
    model = torch_to_onnx(module, net.input_shape)
    rules = DEFAULT_ATTACH - {("add", "relu")}
    kernels = onnx_to_kernels(model, attach=rules)
    adds = [i for i, k in enumerate(kernels) if k.kind == "add"]
    assert len(adds) == expected["residual"]
    for i in adds:  # each add is now followed by its own relu kernel
        assert kernels[i].act == "none"
        assert kernels[i + 1].kind == "act" and kernels[i + 1].act == "relu"
        assert kernels[i + 1].h == kernels[i].h and kernels[i + 1].cin == kernels[i].cin


# --- other torch shapes: standalone BN, concat, MatMul linear -----------------------------------
def test_bn_not_after_conv_is_a_mul_and_concat_counts_inputs():
    import torch
    from torch import nn

    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 4, 1)
            self.c = nn.Conv2d(3, 4, 1, bias=False)
            self.pool = nn.MaxPool2d(2)
            self.bn = nn.BatchNorm2d(16)

        def forward(self, x):
            y = torch.cat([torch.relu(self.a(x)), self.b(x), self.c(x)], dim=1)
            return self.bn(self.pool(y))

    module = Branches()
    with torch.no_grad():
        module.bn.running_var.fill_(2.0)
    kernels = onnx_to_kernels(torch_to_onnx(module, (1, 3, 8, 8)))
    assert [k.key() for k in kernels] == [
        OpSpec("conv", h=8, w=8, cin=3, cout=8, kernel=3, act="relu").key(),
        OpSpec("conv", h=8, w=8, cin=3, cout=4, kernel=1).key(),
        OpSpec("conv", h=8, w=8, cin=3, cout=4, kernel=1).key(),
        OpSpec("concat", h=8, w=8, cin=16, groups=3).key(),
        OpSpec("pool", h=8, w=8, cin=16, pool="max", kernel=2, stride=2).key(),
        OpSpec("mul", h=4, w=4, cin=16).key(),
    ]


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> bytes:
    graph = helper.make_graph(nodes, "t", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _init(name, shape, seed=0):
    value = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(value, name)


def test_matmul_plus_bias_is_one_linear_with_its_activation():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("HardSigmoid", ["a"], ["y"], alpha=1 / 6)]
    model = _model(nodes, [_vi("x", ["N", 16])], [_vi("y", ["N", 8])],
                   [_init("w", (16, 8)), _init("b", (8,))])
    assert onnx_to_kernels(model) == [OpSpec("linear", cin=16, cout=8, act="hsigmoid")]


def test_clip_attributes_reduce_mean_attribute_axes_opset_11():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Clip", ["c"], ["r"], min=0.0, max=6.0),
             helper.make_node("ReduceMean", ["r"], ["y"], axes=[-2, -1], keepdims=1)]
    model = _model(nodes, [_vi("x", [1, 4, 6, 6])], [_vi("y", [1, 8, 1, 1])],
                   [_init("w", (8, 4, 3, 3))], opset=10)
    assert onnx_to_kernels(model) == [
        OpSpec("conv", h=6, w=6, cin=4, cout=8, kernel=3, act="relu6"),
        OpSpec("pool", h=6, w=6, cin=8, pool="gavg")]


# --- refusals ----------------------------------------------------------------------------------
def test_unsupported_ops_are_all_named_at_once():
    hidden = 5
    k = numpy_helper.from_array(np.array([3], np.int64), "k")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Softmax", ["c"], ["s"], axis=1),
        helper.make_node("Softmax", ["s"], ["s2"], axis=1),
        helper.make_node("Flatten", ["s2"], ["f"]),
        helper.make_node("TopK", ["f", "k"], ["values", "indices"]),
        helper.make_node("LSTM", ["seq", "W", "R"], ["Y"], hidden_size=hidden),
    ]
    model = _model(nodes, [_vi("x", [1, 3, 4, 4]), _vi("seq", [7, 1, 4])],
                   [_vi("values", [1, 3]), _vi("Y", [7, 1, 1, hidden])],
                   [_init("w", (2, 3, 1, 1)), k, _init("W", (1, 4 * hidden, 4)),
                    _init("R", (1, 4 * hidden, hidden))])
    with pytest.raises(UnsupportedModelError) as info:
        onnx_to_kernels(model)
    message = str(info.value)
    assert "LSTM (1 node)" in message and "TopK (1 node)" in message
    assert "Softmax (2 nodes)" in message and "supported: " in message and "Conv" in message


def test_asymmetric_pads_name_the_node():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="odd_conv", kernel_shape=[3, 3],
                              strides=[2, 2], pads=[0, 0, 1, 1])]
    model = _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 4, 4])],
                   [_init("w", (4, 3, 3, 3))])
    with pytest.raises(UnsupportedModelError, match="odd_conv.*asymmetric pads"):
        onnx_to_kernels(model)


def test_ceil_mode_pool_is_refused():
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], name="ceil_pool", kernel_shape=[3, 3],
                              strides=[2, 2], ceil_mode=1)]
    model = _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 3, 4, 4])])
    with pytest.raises(UnsupportedModelError, match="ceil_pool.*ceil_mode"):
        onnx_to_kernels(model)


def test_garbage_bytes_and_missing_files_are_parse_errors(tmp_path):
    with pytest.raises(ParseError, match="ONNX bytes"):
        onnx_to_kernels(b"\x08\x07this is not an onnx model \xff\xfe")
    with pytest.raises(ParseError, match="ONNX"):
        onnx_to_kernels(b"")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(ParseError, match="bad.onnx"):
        onnx_to_kernels(bad)
    with pytest.raises(ParseError, match="missing.onnx"):
        onnx_to_kernels(tmp_path / "missing.onnx")


@pytest.mark.parametrize(("mid", "channels", "ratio"), [(24, 96, 0.25), (8, 30, 0.25),
                                                        (4, 16, 0.25), (8, 16, 0.5)])
def test_se_ratio_prefers_simple_fractions(mid, channels, ratio):
    assert se_ratio(mid, channels) == ratio


def test_se_ratio_always_reproduces_the_squeezed_channels():
    for channels in range(1, 200):
        for mid in range(1, channels + 1):
            ratio = se_ratio(mid, channels)
            assert OpSpec("se", cin=channels, expand=ratio).mid == mid
