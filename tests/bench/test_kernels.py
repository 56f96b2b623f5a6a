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


# --- fused blocks: a space's export parses into the space's own kernels ------------------------
def _space_archs() -> list[tuple[str, str]]:
    """(space, encoded architecture): a seeded sample of each registered space plus the edge
    cases - every layer at its first candidate (NAS-Bench-Macro: identity layers, 1x1 convs at
    the stride-2 stage starts), every layer at its last (ProxylessNAS: skipped layers), and
    alternating. Every chain space has stride-2 layers at fixed places; ProxylessNAS's first
    block is an expand-1 MBConv in every architecture."""
    from latbench.bench.spaces import SPACES, Arch, get_space

    cases = []
    for name in sorted(SPACES):
        space = get_space(name)
        counts = space.candidate_counts()
        rng = np.random.default_rng(0)
        archs = [space.sample(rng) for _ in range(4)]
        archs += [Arch(name, tuple(0 for _ in counts)), Arch(name, tuple(n - 1 for n in counts)),
                  Arch(name, tuple((n - 1) * (i % 2) for i, n in enumerate(counts)))]
        cases += [(name, space.encode(a)) for a in archs]
    return cases


ALL_POOLS = ("|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|"
             "avg_pool_3x3~2|")
# NAS-Bench-201 cells computing something twice, which the exporter merges (common
# subexpressions): node 3 summing the same skips / pools of nodes 0 and 1 as node 2, pools of
# one tensor (node 1 a skip of node 0), or no repeat at all.
REPEATS = [ALL_POOLS,
           "|nor_conv_3x3~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|"
           "nor_conv_1x1~2|",
           "|skip_connect~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|nor_conv_1x1~0|none~1|"
           "avg_pool_3x3~2|",
           "|avg_pool_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|avg_pool_3x3~0|avg_pool_3x3~1|"
           "nor_conv_3x3~2|",
           "|nor_conv_1x1~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_1x1~1|"
           "skip_connect~2|"]


@pytest.mark.parametrize(("name", "code"), _space_archs())
def test_space_export_parses_into_the_space_kernels(name, code):
    from latbench.bench.spaces import get_space

    space = get_space(name)
    arch = space.decode(code)
    model = space.to_onnx(arch)
    grouped = [k.key() for k in onnx_to_kernels(model, group=True)]
    expected = [k.key() for k in space.ops(arch)]
    primitives = [k.key() for k in onnx_to_kernels(model)]
    if space.is_chain:
        assert grouped == expected
    else:  # a cell's DAG comes out in the exporter's topological order
        assert Counter(grouped) == Counter(expected)
    # without `group` the split stays the primitives a runtime executes
    assert Counter(primitives) == Counter(k.key() for s in space.ops(arch) for k in decompose(s))
    if any(s.kind == "mbconv" for s in space.ops(arch)):
        assert "mbconv:" not in " ".join(primitives) and grouped != primitives


@pytest.mark.parametrize("code", REPEATS)
def test_nasbench201_counts_each_repeated_computation_once(code):
    from latbench.bench.spaces import get_space

    space = get_space("nasbench201", resolution=8, channels=4, cells=1)
    arch = space.decode(code)
    expected = Counter(k.key() for k in space.ops(arch))
    assert Counter(k.key() for k in onnx_to_kernels(space.to_onnx(arch))) == expected
    adds = [s for s in space.cell_ops(arch, 8, 4) if s.kind == "add"]
    if code in REPEATS[:2]:  # node 3's first sum is node 2's: one add per cell fewer
        assert len(adds) == 2
    if code == REPEATS[2]:  # node 2 pools node 0 twice (node 1 is node 0): one pool
        assert [s.kind for s in space.cell_ops(arch, 8, 4)].count("pool") == 2


@pytest.mark.parametrize("name", ["nasbench-macro", "proxyless"])
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo-default", "legacy"])
def test_user_exports_of_a_space_parse_into_the_space_kernels(tmp_path, name, dynamo):
    """torch.onnx.export as a user calls it: the default (dynamo) exporter, and the legacy one."""
    import torch

    from latbench.bench.spaces import get_space

    space = get_space(name)
    arch = space.sample(np.random.default_rng(3))
    path = tmp_path / "user.onnx"
    options = {} if dynamo else {"dynamo": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(space.to_torch(arch).eval(), (torch.zeros(space.input_shape),),
                          str(path), external_data=False, **options)
    assert [k.key() for k in onnx_to_kernels(path, group=True)] == \
        [k.key() for k in space.ops(arch)]


def test_group_predicate_chooses_which_blocks_stay_whole():
    specs = [OpSpec("mbconv", h=8, w=8, cin=16, cout=16, kernel=3, expand=3, act="relu"),
             OpSpec("mbconv", h=8, w=8, cin=16, cout=24, kernel=5, stride=2, expand=6,
                    act="relu6", se=True)]
    model = to_onnx(chain_graph(specs, seed=1))
    whole = specs[1].key()
    got = onnx_to_kernels(model, group=lambda spec: spec.key() == whole)
    assert [k.key() for k in got] == [k.key() for k in decompose(specs[0])] + [whole]
    assert onnx_to_kernels(model, group=False) == onnx_to_kernels(model)


def test_blocks_that_differ_from_an_mbconv_stay_primitives():
    """A project conv with an activation, an unpadded depthwise conv, an SE whose squeeze or
    gate is not the block's: the primitives, never a wrong mbconv."""
    base = dict(h=8, w=8, cin=16)
    chains = [
        [OpSpec("conv", **base, cout=48, kernel=1, act="relu"),
         OpSpec("dwconv", h=8, w=8, cin=48, kernel=3, act="relu"),
         OpSpec("conv", h=8, w=8, cin=48, cout=16, kernel=1, act="relu")],
        [OpSpec("conv", **base, cout=48, kernel=1, act="relu"),
         OpSpec("dwconv", h=8, w=8, cin=48, kernel=3, pad=0, act="relu"),
         OpSpec("conv", h=6, w=6, cin=48, cout=16, kernel=1)],
        [OpSpec("conv", **base, cout=48, kernel=1, act="relu"),
         OpSpec("dwconv", h=8, w=8, cin=48, kernel=3, act="relu"),
         OpSpec("se", h=8, w=8, cin=48, expand=0.5),
         OpSpec("conv", h=8, w=8, cin=48, cout=16, kernel=1)],
        [OpSpec("conv", **base, cout=48, kernel=1, act="hswish"),
         OpSpec("dwconv", h=8, w=8, cin=48, kernel=3, act="hswish"),
         OpSpec("se", h=8, w=8, cin=48, expand=0.25, act="sigmoid"),
         OpSpec("conv", h=8, w=8, cin=48, cout=16, kernel=1)],
    ]
    for chain in chains:
        got = onnx_to_kernels(to_onnx(chain_graph(chain, seed=2)), group=True)
        assert [k.key() for k in got] == [k.key() for k in chain]
    # an expand act unlike the depthwise act: the block is the expand-1 one starting there
    chain = [OpSpec("conv", **base, cout=48, kernel=1, act="relu6"),
             OpSpec("dwconv", h=8, w=8, cin=48, kernel=3, act="relu"),
             OpSpec("conv", h=8, w=8, cin=48, cout=16, kernel=1)]
    got = onnx_to_kernels(to_onnx(chain_graph(chain, seed=2)), group=True)
    assert got == [chain[0], OpSpec("mbconv", h=8, w=8, cin=48, cout=16, kernel=3, act="relu")]


def test_residual_followed_by_an_activation_is_its_own_add():
    import torch
    from torch import nn

    from latbench.bench.spaces.chain_torch import MBConv

    spec = OpSpec("mbconv", h=8, w=8, cin=16, cout=16, kernel=3, expand=3, act="relu")

    class PostActivated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = MBConv(spec.with_(residual=False))

        def forward(self, x):
            return torch.relu(x + self.block(x))

    got = onnx_to_kernels(torch_to_onnx(PostActivated(), spec.input_shape), group=True)
    assert [k.key() for k in got] == [spec.with_(residual=False).key(),
                                      OpSpec("add", h=8, w=8, cin=16, act="relu").key()]


@pytest.mark.parametrize(("mid", "cin", "ratio"), [(96, 32, 3.0), (16, 16, 1.0), (100, 24, 4.16667),
                                                   (12, 8, 1.5), (5, 3, 1.66667)])
def test_expand_ratio_reproduces_the_middle_channels(mid, cin, ratio):
    from latbench.bench.kernels import _expand_ratio

    assert _expand_ratio(mid, cin) == ratio
    assert OpSpec("mbconv", cin=cin, expand=ratio).mid == mid


# --- symbolic input dimensions -----------------------------------------------------------------
def _dynamic_export(tmp_path, dynamo: bool):
    """A NAS-Bench-Macro network exported with symbolic batch, height and width."""
    import torch

    from latbench.bench.spaces import get_space

    space = get_space("nasbench-macro")
    arch = space.decode("12120022")
    module = space.to_torch(arch).eval()
    path = tmp_path / f"dynamic-{dynamo}.onnx"
    example = (torch.zeros(space.input_shape),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dim = torch.export.Dim.DYNAMIC
            torch.onnx.export(module, example, str(path), external_data=False,
                              dynamic_shapes=({0: dim, 2: dim, 3: dim},))
        else:
            torch.onnx.export(module, example, str(path), dynamo=False, input_names=["input"],
                              dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}})
    return path, space.ops(arch)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_symbolic_height_and_width_need_the_input_shape(tmp_path, dynamo):
    path, expected = _dynamic_export(tmp_path, dynamo)
    (name,) = [i.name for i in onnx.load(str(path)).graph.input]
    dims = [d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert all(dims[i] for i in (0, 2, 3)), dims
    with pytest.raises(UnsupportedModelError) as info:
        onnx_to_kernels(path)
    message = str(info.value)
    assert f"input {name!r} has symbolic dims {dims[2]} (axis 2), {dims[3]} (axis 3)" in message
    assert str(path) in message and f"--input-shape {name}=1x3x<{dims[2]}>x<{dims[3]}>" in message
    keys = [k.key() for k in expected]
    for shape in ((1, 3, 32, 32), (3, 32, 32)):  # with or without the batch
        got = onnx_to_kernels(path, group=True, input_shapes={name: shape})
        assert [k.key() for k in got] == keys
    batched = onnx_to_kernels(path, group=True, input_shapes={name: (4, 3, 32, 32)})
    assert [k.key() for k in batched] == [k.with_(batch=4).key() for k in expected]
    larger = onnx_to_kernels(path, input_shapes={name: (1, 3, 64, 64)})
    assert larger[0] == OpSpec("conv", h=64, w=64, cin=3, cout=32, kernel=3, act="relu")


def test_bad_input_shapes_are_refused_naming_the_input():
    from latbench.errors import ConfigError

    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])]
    model = _model(nodes, [_vi("x", [1, 3, "H", 8])], [_vi("y", [1, 4, "H", 8])],
                   [_init("w", (4, 3, 1, 1))])
    with pytest.raises(ConfigError, match="has no input 'image'; its inputs: x"):
        onnx_to_kernels(model, input_shapes={"image": (1, 3, 8, 8)})
    with pytest.raises(ConfigError, match=r"input 'x' has 4 dims \(1x3xHx8\)"):
        onnx_to_kernels(model, input_shapes={"x": (8, 8)})
    with pytest.raises(ConfigError, match=r"fixed at 1x3xHx8.*1x3x8x9 \(axis 3 differs\)"):
        onnx_to_kernels(model, input_shapes={"x": (1, 3, 8, 9)})
    with pytest.raises(ConfigError, match="below 1"):
        onnx_to_kernels(model, input_shapes={"x": (1, 3, 0, 8)})
    assert onnx_to_kernels(model, input_shapes={"x": (3, 5, 8)}) == [
        OpSpec("conv", h=5, w=8, cin=3, cout=4, kernel=1)]


# --- partial models ------------------------------------------------------------------------------
def _partly_supported() -> bytes:
    """An unsupported op (Erf), a supported op used as no kernel describes (softmax over the
    channels of an image) and a conv padded unevenly between two priced kernels."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Softmax", ["c"], ["s"], axis=1),
             helper.make_node("Erf", ["s"], ["e"]),
             helper.make_node("Softmax", ["e"], ["s2"], axis=1),
             helper.make_node("Conv", ["s2", "w2"], ["d"], name="uneven", kernel_shape=[3, 3],
                              pads=[0, 0, 2, 2]),
             helper.make_node("Relu", ["d"], ["y"])]
    return _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 8, 8])],
                  [_init("w", (4, 3, 1, 1)), _init("w2", (4, 4, 3, 3))])


def test_allow_partial_prices_the_rest_and_counts_what_it_left_out():
    from latbench.bench.kernels import parse_onnx

    model = _partly_supported()
    with pytest.raises(UnsupportedModelError, match=r"Erf \(1 node\), Softmax \(2 nodes\)"):
        parse_onnx(model)
    parsed = parse_onnx(model, allow_partial=True)
    assert parsed.partial and parsed.skipped == {"Conv": 1, "Erf": 1, "Softmax": 2}
    assert len(parsed.problems) == 3 and "asymmetric pads" in parsed.problems[2]
    assert all("normalises axis 1 of a 1x4x8x8 tensor" in p for p in parsed.problems[:2])
    assert list(parsed.kernels) == [OpSpec("conv", h=8, w=8, cin=3, cout=4, kernel=1),
                                    OpSpec("act", h=8, w=8, cin=4, act="relu")]
    complete = parse_onnx(to_onnx(chain_graph(CHAIN[:2])), allow_partial=True)
    assert not complete.partial and complete.skipped == {}


def test_allow_partial_still_refuses_a_model_with_nothing_to_price():
    from latbench.bench.kernels import parse_onnx

    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=0)]
    model = _model(nodes, [_vi("x", [1, 8])], [_vi("y", [1, 8])])
    with pytest.raises(UnsupportedModelError, match="Softmax.*nothing else is left"):
        parse_onnx(model, allow_partial=True)


# --- files that are not (readable) ONNX ----------------------------------------------------------
def test_versions_outside_what_onnx_reads_are_refused():
    from latbench.bench.kernels import MIN_OPSET
    from latbench.errors import LatbenchError

    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    newest = onnx.defs.onnx_opset_version()
    for opset, needle in ((newest + 1, f"opset {newest + 1}"),
                          (MIN_OPSET - 1, f"opset {MIN_OPSET - 1}")):
        with pytest.raises(UnsupportedModelError, match=f"{needle}; latbench reads opsets"):
            onnx_to_kernels(_model(nodes, [_vi("x", [1, 4])], [_vi("y", [1, 4])], opset=opset))
    model = onnx.load_from_string(_model(nodes, [_vi("x", [1, 4])], [_vi("y", [1, 4])]))
    model.ir_version = onnx.IR_VERSION + 1
    with pytest.raises(ParseError, match=f"IR version {onnx.IR_VERSION + 1}"):
        onnx_to_kernels(model.SerializeToString())
    assert issubclass(UnsupportedModelError, LatbenchError)


def test_truncated_exports_are_refused_never_half_read(tmp_path):
    from latbench.bench.spaces import get_space

    space = get_space("proxyless", resolution=32, width_mult=0.35)
    data = space.to_onnx(space.sample(np.random.default_rng(0)))
    for cut in (16, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(ParseError, match=f"cut{cut}.onnx"):
            onnx_to_kernels(path)


def test_model_files_dispatch_on_the_format(tmp_path):
    from latbench.bench.model_files import model_format, model_kernels, parse_input_shapes
    from latbench.errors import ConfigError

    data = to_onnx(chain_graph(CHAIN[:2]))
    for name in ("m.onnx", "m.ONNX", "model"):
        (tmp_path / name).write_bytes(data)
        assert model_format(tmp_path / name) == "onnx"
        assert list(model_kernels(tmp_path / name).kernels) == onnx_to_kernels(data)
    assert model_format(data) == "onnx"
    (tmp_path / "m.pb").write_bytes(data)
    with pytest.raises(UnsupportedModelError, match=r"m.pb: no reader for '.pb' model files"):
        model_kernels(tmp_path / "m.pb")
    assert parse_input_shapes(["input=1x3x224x224", "a=b=3X8"]) == {
        "input": (1, 3, 224, 224), "a=b": (3, 8)}
    for bad in ("input", "=1x3", "x=1x0", "x=1xa", "x="):
        with pytest.raises(ConfigError, match="must be NAME=DIMS"):
            parse_input_shapes([bad])
    with pytest.raises(ConfigError, match="gives input 'x' twice"):
        parse_input_shapes(["x=1", "x=2"])
