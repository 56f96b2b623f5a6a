"""ONNX -> kernels for transformers and the rest of the common op set: torch exports of the
transformer families with both exporters (the same kernels from each, counted against the torch
module), latbench's own export of every new kind, activations in every form an exporter writes,
layout-only ops, and the refusals."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from latbench.bench.export.from_torch import torch_to_onnx
from latbench.bench.export.graph import chain_graph, spec_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.families import ConvNeXtConfig, MobileViTConfig, NetworkDef, ViTConfig
from latbench.bench.fusion import apply_attach, default_pairs
from latbench.bench.kernel_forms import (
    ACTIVATION_FUNCTIONS,
    PROBE,
    elementwise_dims,
    identify_activation,
    part_spec,
    resize_spec,
    transpose_spec,
)
from latbench.bench.kernels import DEFAULT_ATTACH, onnx_to_kernels, parse_onnx
from latbench.bench.ops import ALL_ACTIVATIONS, OpSpec, decompose
from latbench.errors import UnsupportedModelError

S = OpSpec


# --- latbench's own exporter: every new kind reads back as itself -----------------------------
def _new_kinds() -> list[OpSpec]:
    acts = [a for a in ALL_ACTIVATIONS if a != "none"]
    return [
        S("tlinear", tokens=7, cin=8, cout=12),
        *[S("tlinear", tokens=7, cin=8, cout=12, act=a) for a in acts],
        S("tlinear", tokens=7, cin=8, cout=12, act="leakyrelu", alpha=0.2),
        S("tlinear", batch=2, tokens=5, cin=8, cout=4, act="gelu"),
        S("bmm", heads=2, tokens=5, cin=8, cout=5),
        S("bmm", batch=2, heads=3, tokens=6, cin=6, cout=4),
        S("softmax", heads=2, tokens=5, cin=5),
        S("softmax", batch=2, tokens=3, cin=7),
        S("layernorm", tokens=5, cin=8),
        S("layernorm", batch=3, tokens=4, cin=6),
        S("transpose", h=2, w=4, cin=5, axes="0213"),
        S("transpose", h=5, w=4, cin=2, axes="0132"),
        S("transpose", h=5, w=4, cin=3, axes="0321"),
        S("transpose", batch=2, h=3, w=4, cin=5, axes="0213"),
        S("clstoken", tokens=6, cin=8),
        S("gather", tokens=6, cin=8),
        S("posembed", tokens=6, cin=8),
        S("posembed", batch=2, tokens=6, cin=8),
        S("convt", h=4, w=4, cin=4, cout=8, kernel=2, stride=2),
        S("convt", h=5, w=5, cin=4, cout=6, kernel=3, stride=2, pad=1, out_pad=1, act="relu"),
        S("convt", h=4, w=4, cin=4, cout=8, kernel=4, stride=2, pad=1, groups=2),
        S("resize", h=4, w=5, cin=3, scale=2, mode="nearest"),
        S("resize", h=4, w=4, cin=3, scale=3, mode="bilinear"),
        S("pad", h=6, w=5, cin=3, pad=2),
        S("pad", h=6, w=6, cin=3, pad=2, mode="reflect"),
        S("slice", h=4, w=4, cin=8, cout=3),
        S("instnorm", h=5, w=6, cin=4),
        S("reduce", h=5, w=6, cin=4, axes="1"),
        S("reduce", h=5, w=6, cin=4, axes="123"),
        S("reduce", h=5, w=6, cin=4, axes="2"),
        S("shuffle", h=4, w=4, cin=8, groups=2),
        S("shuffle", h=3, w=5, cin=12, groups=3),
        S("concat", h=4, w=6, cin=8, groups=2, axes="2"),
        S("concat", h=4, w=6, cin=8, groups=3, axes="3"),
        S("conv", h=12, w=12, cin=4, cout=8, kernel=3, dilation=2),
        S("conv", h=13, w=11, cin=4, cout=6, kernel=3, dilation=3, stride=2, act="relu6"),
        S("conv", h=9, w=9, cin=4, cout=8, kernel=1, kernel_w=5),
        S("conv", h=9, w=9, cin=4, cout=8, kernel=7, kernel_w=1, act="relu"),
        S("conv", h=9, w=9, cin=4, cout=8, kernel=3, kernel_w=5, pad=0, pad_w=1),
        S("conv", h=6, w=6, cin=4, cout=6, kernel=3, act="gelu"),  # splits: conv + act
        S("dwconv", h=12, w=12, cin=6, kernel=3, dilation=2, act="relu"),
        *[S("act", h=5, w=5, cin=6, act=a) for a in acts],
        S("act", h=5, w=5, cin=6, act="leakyrelu", alpha=0.3),
        S("act", h=7, w=1, cin=6, act="gelu"),  # on tokens: h = T, w = 1
        S("add", h=5, w=1, cin=8),
    ]


@pytest.mark.parametrize("spec", _new_kinds(), ids=lambda s: s.key())
def test_new_kinds_round_trip_through_latbench_exporter(spec):
    got = onnx_to_kernels(to_onnx(spec_graph(spec, seed=1)))
    assert [k.key() for k in got] == [k.key() for k in apply_attach(decompose(spec),
                                                                      DEFAULT_ATTACH)]


@pytest.mark.parametrize(("spec", "want"), [
    # the canonical transpose: [1, C, H, W] -> [1, H, W, C] is a 2-D [C, H*W] transpose
    (S("transpose", h=3, w=4, cin=5, axes="0231"), [S("transpose", cin=1, h=5, w=12,
                                                      axes="0132")]),
    (S("transpose", batch=2, h=3, w=4, cin=5, axes="1023"),
     [S("transpose", cin=2, h=5, w=12, axes="0213")]),
    (S("transpose", h=1, w=4, cin=5, axes="0213"), []),  # moves an axis of size 1: a reshape
    (S("reduce", h=5, w=6, cin=4, axes="23"), [S("pool", h=5, w=6, cin=4, pool="gavg")]),
], ids=["nchw-to-nhwc", "swap-batch", "unit-axis", "mean-over-hw"])
def test_specs_parse_into_their_canonical_kernels(spec, want):
    assert onnx_to_kernels(to_onnx(spec_graph(spec))) == want


def test_transformer_chain_round_trip():
    chain = [S("clstoken", tokens=16, cin=32), S("posembed", tokens=17, cin=32),
             S("layernorm", tokens=17, cin=32), S("tlinear", tokens=17, cin=32, cout=96,
                                                 act="gelu"),
             S("tlinear", tokens=17, cin=96, cout=32), S("layernorm", tokens=17, cin=32),
             S("gather", tokens=17, cin=32), S("linear", cin=32, cout=10)]
    assert onnx_to_kernels(to_onnx(chain_graph(chain, seed=2))) == chain
    unfused = DEFAULT_ATTACH - {("tlinear", "gelu")}
    assert onnx_to_kernels(to_onnx(chain_graph(chain)), attach=unfused) == \
        apply_attach(chain, unfused) == [*chain[:3], chain[3].with_(act="none"),
                                         S("act", h=17, w=1, cin=96, act="gelu"), *chain[4:]]


# --- activations in every form ------------------------------------------------------------------
def _c(value: float) -> np.ndarray:
    return np.array(value, np.float32)


# Each form: nodes from "x" to "y" as (op, inputs, attributes); c<value> names a constant.
GELU_FORMS = {
    "gelu-torchscript": ("gelu", [("Div", ["x", "c1.4142135"]), ("Erf", [0]), ("Add", [1, "c1"]),
                                  ("Mul", ["x", 2]), ("Mul", [3, "c0.5"])]),
    "gelu-dynamo": ("gelu", [("Div", ["x", "c1.4142135"]), ("Erf", [0]), ("Add", [1, "c1"]),
                             ("Mul", ["c0.5", 2]), ("Mul", ["x", 3])]),
    "gelu-mul-first": ("gelu", [("Mul", ["x", "c0.5"]), ("Mul", ["x", "c0.70710677"]),
                                ("Erf", [1]), ("Add", ["c1", 2]), ("Mul", [0, 3])]),
    "gelu-tanh-torchscript": ("gelu_tanh", [
        ("Mul", ["x", "x"]), ("Mul", ["x", 0]), ("Mul", ["c0.044715", 1]), ("Add", ["x", 2]),
        ("Mul", ["c0.7978846", 3]), ("Tanh", [4]), ("Add", ["c1", 5]), ("Mul", ["x", 6]),
        ("Mul", ["c0.5", 7])]),
    "gelu-tanh-dynamo": ("gelu_tanh", [
        ("Pow", ["x", "c3"]), ("Mul", ["c0.044715", 0]), ("Add", ["x", 1]),
        ("Mul", ["c0.7978846", 2]), ("Tanh", [3]), ("Add", [4, "c1"]), ("Mul", ["c0.5", 5]),
        ("Mul", ["x", 6])]),
    "mish": ("mish", [("Softplus", ["x"]), ("Tanh", [0]), ("Mul", [1, "x"])]),
    "hswish-written-out": ("hswish", [("Add", ["x", "c3"]), ("Clip", [0, "c0", "c6"]),
                                      ("Div", [1, "c6"]), ("Mul", ["x", 2])]),
    "swish": ("swish", [("Sigmoid", ["x"]), ("Mul", ["x", 0])]),
}


def _form_model(steps: list, tokens: int = 5, cin: int = 4, cout: int = 6) -> bytes:
    """[1, tokens, cin] -> MatMul + bias -> the activation form -> y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((cin, cout)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["input", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["x"])]
    names: list[str] = []
    for i, (op, inputs) in enumerate(steps):
        args = []
        for a in inputs:
            if isinstance(a, int):
                args.append(names[a])
            elif a.startswith("c"):
                name = f"k{i}_{len(args)}"
                inits.append(numpy_helper.from_array(_c(float(a[1:])), name))
                args.append(name)
            else:
                args.append(a)
        out = "y" if i == len(steps) - 1 else f"t{i}"
        nodes.append(helper.make_node(op, args, [out]))
        names.append(out)
    graph = helper.make_graph(nodes, "form", [_vi("input", [1, tokens, cin])],
                              [_vi("y", [1, tokens, cout])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.mark.parametrize("form", sorted(GELU_FORMS))
def test_activation_forms_attach_to_the_linear_layer(form):
    import onnxruntime as ort

    name, steps = GELU_FORMS[form]
    model = _form_model(steps)
    # the form computes what its name says (onnxruntime on the probe values)
    x = PROBE.astype(np.float32).reshape(1, -1, 1)
    probe = _form_model(steps, tokens=len(PROBE), cin=1, cout=1)
    probe_model = onnx.load_from_string(probe)
    for init in probe_model.graph.initializer:
        if init.name in ("w", "b"):
            init.CopyFrom(numpy_helper.from_array(
                np.full(tuple(init.dims), 1.0 if init.name == "w" else 0.0, np.float32),
                init.name))
    session = ort.InferenceSession(probe_model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"input": x})
    np.testing.assert_allclose(y.ravel(), ACTIVATION_FUNCTIONS[name](PROBE), atol=2e-5)
    tlinear = S("tlinear", tokens=5, cin=4, cout=6)
    assert onnx_to_kernels(model) == [tlinear.with_(act=name)]
    assert onnx_to_kernels(model, attach=frozenset()) == [
        tlinear, S("act", h=5, w=1, cin=6, act=name)]


def test_the_gelu_and_mish_ops():
    for op, attrs, opset, want in (("Gelu", {}, 20, "gelu"),
                                   ("Gelu", {"approximate": "tanh"}, 20, "gelu_tanh"),
                                   ("Mish", {}, 18, "mish"), ("LeakyRelu", {"alpha": 0.3}, 17,
                                                              "leakyrelu")):
        nodes = [helper.make_node(op, ["x"], ["y"], **attrs)]
        graph = helper.make_graph(nodes, "g", [_vi("x", [1, 8, 4, 4])], [_vi("y", [1, 8, 4, 4])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 9
        alpha = attrs.get("alpha", 0.01)
        assert onnx_to_kernels(model.SerializeToString()) == [
            S("act", h=4, w=4, cin=8, act=want, alpha=alpha)]


def test_arithmetic_that_is_no_activation_stays_elementwise():
    model = _form_model([("Mul", ["x", "c0.5"]), ("Add", [0, "c1"])])
    assert onnx_to_kernels(model) == [S("tlinear", tokens=5, cin=4, cout=6),
                                      S("mul", h=5, w=1, cin=6), S("mul", h=5, w=1, cin=6)]


def test_activation_functions_are_told_apart():
    for name, function in ACTIVATION_FUNCTIONS.items():
        assert identify_activation(function(PROBE)) == name
        assert identify_activation(function(PROBE).astype(np.float32)) == name
    gelu, tanh_gelu = (ACTIVATION_FUNCTIONS[n](PROBE) for n in ("gelu", "gelu_tanh"))
    assert 1e-4 < np.abs(gelu - tanh_gelu).max() < 1e-3  # close, yet not confused
    assert identify_activation(0.5 * PROBE) is None
    assert identify_activation(np.full(3, 1.0)) is None


# --- shared forms (the TFLite split reads shapes the same way) -----------------------------------
def test_transposes_have_one_canonical_form_whatever_reshapes_surround_them():
    heads = S("transpose", cin=17, h=2, w=32, axes="0213")
    assert transpose_spec((1, 17, 2, 32), (0, 2, 1, 3)) == heads
    assert transpose_spec((17, 2, 32), (1, 0, 2)) == heads  # batch reshaped away
    # k^T as the 4-D transpose or as a 3-D one between reshapes (sdpa with the dynamo exporter)
    assert transpose_spec((1, 2, 17, 32), (0, 1, 3, 2)) == transpose_spec((2, 17, 32), (0, 2, 1))
    # the packed qkv of [B, T, 3, heads, D] -> [3, B, heads, T, D]: [T, 3 * heads, D] swapped
    assert transpose_spec((1, 17, 3, 2, 32), (2, 0, 3, 1, 4)) == heads.with_(h=6)
    # past four groups the first axis is a batch of transposes (MobileViT's B * P rows)
    assert transpose_spec((4, 25, 3, 2, 8), (2, 0, 3, 1, 4)) == S("transpose", batch=4, cin=25,
                                                                 h=6, w=8, axes="0213")
    assert transpose_spec((1, 17, 64), (1, 0, 2)) is None
    assert transpose_spec((2, 3, 4, 5), (3, 2, 1, 0)) == S("transpose", batch=2, cin=3, h=4,
                                                           w=5, axes="3210")


def test_part_resize_and_elementwise_forms():
    assert part_spec((3, 1, 2, 17, 32), 0, 1, drops_axis=True, image=False) == \
        S("gather", tokens=3, cin=1088)
    assert part_spec((1, 17, 64), 1, 1, drops_axis=True, image=False) == \
        S("gather", tokens=17, cin=64)
    assert part_spec((2, 16, 5, 5), 1, 4, drops_axis=False, image=True) == \
        S("slice", batch=2, cin=16, cout=4, h=5, w=5)
    assert part_spec((1, 16, 5, 5), 2, 2, drops_axis=False, image=True) == \
        S("slice", batch=16, cin=5, cout=2, h=5)
    assert resize_spec(1, 8, (5, 5), (10, 10), "nearest") == S("resize", cin=8, h=5, w=5,
                                                               scale=2, mode="nearest")
    # a non-integer upscale is the integer one with the same output; a downscale is scale 1
    assert resize_spec(1, 8, (5, 5), (6, 6), "bilinear").output_shape == (1, 8, 6, 6)
    assert resize_spec(1, 8, (6, 6), (5, 5), "bilinear") == S("resize", cin=8, h=5, w=5,
                                                              mode="bilinear")
    assert elementwise_dims((4, 25, 16), 1, image=False) == (1, 100, 1, 16)
    assert elementwise_dims((1, 2, 17, 17), 1, image=False) == (1, 2, 17, 17)
    assert elementwise_dims((2, 8, 4, 6), 2, image=True) == (2, 4, 6, 8)


# --- torch exports of the transformer families, both exporters ----------------------------------
def _vit(attention: str, act: str = "gelu", distilled: bool = False) -> NetworkDef:
    config = ViTConfig(resolution=32, patch=8, dim=64, depth=2, heads=2, mlp_ratio=2.0,
                       attention=attention, act=act, distilled=distilled, classes=10)
    return NetworkDef("tiny", "deit" if distilled else "vit", (1, 3, 32, 32), config, seed=3)


def _convnext(norm2d: str) -> NetworkDef:
    config = ConvNeXtConfig(resolution=32, dims=(8, 16, 16, 24), depths=(1, 1, 2, 1),
                            norm2d=norm2d, classes=10)
    return NetworkDef("tiny", "convnext", (1, 3, 32, 32), config, seed=3)


def _mobilevit(resolution: int) -> NetworkDef:
    config = MobileViTConfig(resolution=resolution, channels=(8, 8, 8, 16, 16, 16),
                             dims=(16, 16, 24), depths=(1, 2, 1), expansion=2, head=32,
                             heads=2, classes=10)
    return NetworkDef("tiny", "mobilevit", (1, 3, resolution, resolution), config, seed=3)


NETWORKS = {
    "vit-timm": lambda: _vit("timm"),
    "vit-sdpa-gelu-tanh": lambda: _vit("sdpa", "gelu_tanh"),
    "vit-mha": lambda: _vit("mha"),
    "deit": lambda: _vit("timm", distilled=True),
    "convnext-permute": lambda: _convnext("permute"),
    "convnext-decomposed": lambda: _convnext("decomposed"),
    "mobilevit": lambda: _mobilevit(64),
    "mobilevit-resized": lambda: _mobilevit(80),  # 5x5 maps resized to 6x6 around the unfold
}


def _expected(module, input_shape) -> tuple[Counter, str | None, int]:
    """Kernel counts read off the torch module: Linear layers on tokens (plus both projections
    of each nn.MultiheadAttention, applied functionally), heads, layer norms, two matmuls and a
    softmax per attention; the MLP activation and how many MLPs carry it; resized MobileViT
    blocks."""
    import torch
    from torch import nn

    seen = Counter()

    def hook(_layer, args, _out):
        seen["tlinear" if args[0].dim() > 2 else "linear"] += 1

    resized = 0

    def vit_block_hook(block, args, _out):
        nonlocal resized
        resized += args[0].shape[-1] % block.patch != 0

    modules = list(module.modules())
    hooks = [m.register_forward_hook(hook) for m in modules if type(m) is nn.Linear]
    hooks += [m.register_forward_hook(vit_block_hook) for m in modules
              if type(m).__name__ == "MobileViTBlock"]
    with torch.no_grad():
        module(torch.zeros(input_shape))
    for h in hooks:
        h.remove()
    names = [type(m).__name__ for m in modules]
    attentions = names.count("Attention") + names.count("TorchAttention")
    seen["tlinear"] += 2 * names.count("MultiheadAttention")
    seen["layernorm"] = sum(isinstance(m, nn.LayerNorm) for m in modules)
    seen["softmax"], seen["bmm"] = attentions, 2 * attentions
    seen["conv+dwconv"] = sum(isinstance(m, nn.Conv2d) for m in modules)
    mlps = names.count("TransformerBlock") + names.count("ConvNeXtBlock")
    acts = {getattr(m, "approximate", None) for m in modules if isinstance(m, nn.GELU)}
    act = ({"none": "gelu", "tanh": "gelu_tanh"}[acts.pop()] if acts else
           "swish" if any(isinstance(m, nn.SiLU) for m in modules) else None)
    seen["mlp"] = mlps
    return seen, act, resized


@pytest.fixture(scope="module")
def exported():
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            net = NETWORKS[name]()
            module = net.build()
            cache[name] = (net, module, {dynamo: torch_to_onnx(module, net.input_shape,
                                                               dynamo=dynamo)
                                         for dynamo in (False, True)})
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_transformer_families_split_alike_with_both_exporters(exported, name):
    net, module, models = exported(name)
    legacy, dynamo = (onnx_to_kernels(models[d]) for d in (False, True))
    assert [k.key() for k in legacy] == [k.key() for k in dynamo]
    kinds = Counter(k.kind for k in legacy)
    want, act, resized = _expected(module, net.input_shape)
    for kind in ("tlinear", "linear", "layernorm", "softmax", "bmm"):
        assert kinds[kind] == want[kind], kind
    assert kinds["conv"] + kinds["dwconv"] == want["conv+dwconv"]
    activated = [k for k in legacy if k.kind == "tlinear" and k.act != "none"]
    assert len(activated) == want["mlp"] and {k.act for k in activated} == {act}
    assert not [k for k in legacy if k.kind == "act"]  # every activation attached
    assert kinds["resize"] == 2 * resized
    if net.family in ("vit", "deit"):
        c = net.config
        assert kinds["clstoken"] == kinds["posembed"] == 1
        # q, k and v taken out of the packed projection; the class (and distillation) token
        assert kinds["gather"] == 3 * c.depth + 1 + c.distilled
        assert [k for k in legacy if k.kind == "posembed"] == [
            S("posembed", tokens=c.tokens, cin=c.dim)]
        assert {(k.heads, k.tokens) for k in legacy if k.kind in ("bmm", "softmax")} == \
            {(c.heads, c.tokens)}


def test_a_transformer_parses_as_onnxruntime_runs_it(exported):
    """The shapes the split reads are the shapes onnxruntime computes (both exporters)."""
    import onnxruntime as ort

    net, module, models = exported("vit-mha")
    for data in models.values():
        model = onnx.load_from_string(data)
        names = [n.output[0] for n in model.graph.node
                 if n.op_type in ("MatMul", "Gemm", "Softmax")]
        del model.graph.output[:]
        model.graph.output.extend(_vi(n, None) for n in names)
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        x = np.zeros(net.input_shape, np.float32)
        shapes = [o.shape for o in session.run(None, {session.get_inputs()[0].name: x})]
        kernels = [k for k in onnx_to_kernels(data)
                   if k.kind in ("tlinear", "linear", "bmm", "softmax")]
        assert [math.prod(s) for s in shapes] == [math.prod(k.output_shape) for k in kernels]


# --- the rest of the common op set, as torch writes it ------------------------------------------
COMMON = [
    S("conv", h=8, w=8, cin=8, cout=8, kernel=3, dilation=2),
    S("act", h=8, w=8, cin=8, act="leakyrelu", alpha=0.2),
    S("conv", h=8, w=8, cin=8, cout=8, kernel=1, kernel_w=7, pad=0, pad_w=3),
    S("act", h=8, w=8, cin=8, act="tanh"),
    S("conv", h=8, w=8, cin=8, cout=16, kernel=5, kernel_w=1, pad=2, pad_w=0),
    S("act", h=8, w=8, cin=16, act="mish"),
    S("convt", h=8, w=8, cin=16, cout=8, kernel=2, stride=2),
    S("instnorm", h=16, w=16, cin=8),
    S("act", h=16, w=16, cin=8, act="prelu"),
    S("slice", h=16, w=16, cin=8, cout=4),
    S("slice", h=16, w=16, cin=8, cout=4),
    S("concat", h=32, w=16, cin=4, groups=2, axes="2"),
    S("pad", h=32, w=16, cin=4, pad=1, mode="reflect"),
    S("resize", h=34, w=18, cin=4, scale=2, mode="nearest"),
    S("resize", h=40, w=20, cin=4, mode="bilinear"),  # 68x36 -> 40x20: a downscale
    S("shuffle", h=40, w=20, cin=4, groups=2),
    S("act", h=40, w=20, cin=4, act="hswish"),
    S("act", h=40, w=20, cin=4, act="hsigmoid"),
    S("add", h=40, w=20, cin=4),
    S("reduce", h=40, w=20, cin=4, axes="1"),
]


def _common_module():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Common(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
            self.row = nn.Conv2d(8, 8, (1, 7), padding=(0, 3))
            self.column = nn.Conv2d(8, 16, (5, 1), padding=(2, 0))
            self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
            self.norm = nn.InstanceNorm2d(8, affine=True)
            self.prelu = nn.PReLU(8)

        def forward(self, x):
            y = torch.tanh(self.row(F.leaky_relu(self.dilated(x), 0.2)))
            y = self.prelu(self.norm(self.up(F.mish(self.column(y)))))
            a, b = torch.split(y, [4, 4], dim=1)
            y = F.pad(torch.cat([a, b], dim=2), (1, 1, 1, 1), mode="reflect")
            y = F.interpolate(y, scale_factor=2, mode="nearest")
            y = F.interpolate(y, size=(40, 20), mode="bilinear", align_corners=False)
            n, c, h, w = y.shape
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
            return (F.hardswish(y) + F.hardsigmoid(y)).mean(1, keepdim=True)

    return Common().eval()


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_common_ops_as_torch_exports_them(dynamo):
    assert onnx_to_kernels(torch_to_onnx(_common_module(), (1, 8, 8, 8), dynamo=dynamo)) == COMMON


def test_layer_norm_written_out_by_an_older_exporter_is_one_kernel():
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.fc = nn.LayerNorm(16), nn.Linear(16, 32)

        def forward(self, x):
            return F.gelu(self.fc(self.norm(x)), approximate="tanh").softmax(-1)

    want = [S("layernorm", batch=2, tokens=10, cin=16),
            S("tlinear", batch=2, tokens=10, cin=16, cout=32, act="gelu_tanh"),
            S("softmax", batch=2, tokens=10, cin=32)]
    for opset in (14, 17):  # ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add at 14
        data = torch_to_onnx(Block().eval(), (2, 10, 16), opset=opset)
        ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
        assert ("LayerNormalization" in ops) == (opset == 17)
        assert onnx_to_kernels(data) == want


# --- layout-only ops and constant subgraphs ------------------------------------------------------
def _graph(nodes, inputs, outputs, inits=(), opset=17) -> bytes:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def _int64(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def test_layout_only_ops_and_shape_arithmetic_are_no_kernels():
    """Flatten, Reshape (its target computed from Shape/Gather/Concat), Unsqueeze, Squeeze,
    Identity, a transpose of a size-1 axis, a full slice and a no-op expand between two
    kernels: only the two kernels."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 1, 1)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Shape", ["c"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["c", "target"], ["tokens"]),  # [1, 8, 16]
        helper.make_node("Transpose", ["tokens"], ["moved"], perm=[1, 0, 2]),  # [8, 1, 16]
        helper.make_node("Identity", ["moved"], ["same"]),
        helper.make_node("Unsqueeze", ["same", "zero1"], ["u"]),  # [1, 8, 1, 16]
        helper.make_node("Squeeze", ["u", "two"], ["s"]),  # [1, 8, 16]
        helper.make_node("Slice", ["s", "start", "end", "axis2"], ["all"]),
        helper.make_node("Expand", ["all", "full"], ["e"]),
        helper.make_node("Flatten", ["e"], ["f"], axis=1),  # [1, 128]
        helper.make_node("Gemm", ["f", "fc", "bias"], ["y"], transB=1),
    ]
    inits = [w, _int64("zero", 0), _int64("zero1", [0]), _int64("rest", [8, 16]),
             _int64("two", [2]), _int64("start", [0]), _int64("end", [16]),
             _int64("axis2", [2]), _int64("full", [1, 8, 16]),
             numpy_helper.from_array(rng.standard_normal((10, 128)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.zeros(10, np.float32), "bias")]
    model = _graph(nodes, [_vi("x", [1, 4, 4, 4])], [_vi("y", [1, 10])], inits)
    assert onnx_to_kernels(model) == [S("conv", h=4, w=4, cin=4, cout=8, kernel=1),
                                      S("linear", cin=128, cout=10)]


def test_a_class_token_expanded_through_where_and_equal_is_folded():
    """The legacy exporter's `cls_token.expand(B, -1, -1)`: ConstantOfShape, Mul, Equal, Where,
    Expand of a constant - shape inference alone leaves the concatenation's size unknown."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("ConstantOfShape", ["three"], ["ones"],
                         value=numpy_helper.from_array(np.array([1], np.int64))),
        helper.make_node("Mul", ["ones", "minus1"], ["neg"]),
        helper.make_node("Equal", ["wanted", "neg"], ["keep"]),
        helper.make_node("Where", ["keep", "ones", "wanted"], ["shape"]),
        helper.make_node("Expand", ["token", "shape"], ["tokens"]),
        helper.make_node("Concat", ["tokens", "x"], ["cat"], axis=1),
        helper.make_node("Add", ["cat", "pos"], ["y"]),
    ]
    inits = [_int64("three", [3]), _int64("minus1", -1), _int64("wanted", [1, -1, -1]),
             numpy_helper.from_array(rng.standard_normal((1, 1, 8)).astype(np.float32), "token"),
             numpy_helper.from_array(rng.standard_normal((1, 6, 8)).astype(np.float32), "pos")]
    model = _graph(nodes, [_vi("x", [1, 5, 8])], [_vi("y", [1, 6, 8])], inits)
    assert onnx_to_kernels(model) == [S("clstoken", tokens=5, cin=8),
                                      S("posembed", tokens=6, cin=8)]


# --- refusals ------------------------------------------------------------------------------------
def test_uses_no_kernel_describes_are_named_with_their_node():
    x = _vi("x", [1, 4, 6, 6])
    cases = {
        "softmax over axis 1": ([helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1)],
                                [_vi("y", [1, 4, 6, 6])], [], r"Softmax \(1 node\).*'sm' "
                                r"normalises axis 1 of a 1x4x6x6 tensor"),
        "gather of two indices": ([helper.make_node("Gather", ["x", "idx"], ["y"], name="g",
                                                    axis=1)],
                                  [_vi("y", [1, 2, 6, 6])], [_int64("idx", [0, 2])],
                                  r"Gather \(1 node\).*'g' gathers 2 indices"),
        "strided slice": ([helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"],
                                            name="sl")],
                          [_vi("y", [1, 2, 6, 6])],
                          [_int64("s", [0]), _int64("e", [4]), _int64("a", [1]),
                           _int64("st", [2])], r"'sl' is a strided slice"),
        "edge padding": ([helper.make_node("Pad", ["x", "p"], ["y"], name="pd", mode="edge")],
                         [_vi("y", [1, 4, 8, 8])], [_int64("p", [0, 0, 1, 1, 0, 0, 1, 1])],
                         r"'pd' pads in mode 'edge'"),
        "cubic resize": ([helper.make_node("Resize", ["x", "", "sc"], ["y"], name="rs",
                                           mode="cubic")],
                         [_vi("y", [1, 4, 12, 12])],
                         [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")],
                         r"'rs' resizes in mode 'cubic'"),
    }
    for name, (nodes, outputs, inits, needle) in cases.items():
        model = _graph(nodes, [x], outputs, inits)
        with pytest.raises(UnsupportedModelError, match=needle):
            onnx_to_kernels(model)
        assert parse_onnx(_graph([helper.make_node("Relu", ["x"], ["r"]),
                                  *[_rename(n) for n in nodes]], [x], outputs, inits),
                          allow_partial=True).skipped, name


def _rename(node: onnx.NodeProto) -> onnx.NodeProto:
    """`node` reading the Relu's output instead of the input."""
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[0] = "r"
    return new


def test_an_unknown_op_alone_is_unsupported_and_inside_an_activation_is_not():
    nodes = [helper.make_node("Erf", ["x"], ["y"])]
    model = _graph(nodes, [_vi("x", [1, 4])], [_vi("y", [1, 4])])
    with pytest.raises(UnsupportedModelError, match=r"unsupported ONNX ops: Erf \(1 node\)"):
        onnx_to_kernels(model)
    assert onnx_to_kernels(_form_model(GELU_FORMS["gelu-dynamo"][1])) == [
        S("tlinear", tokens=5, cin=4, cout=6, act="gelu")]


# --- fusion pairs of token-wise linear layers ----------------------------------------------------
def test_tlinear_fusion_pairs_split_like_the_parser():
    pairs = default_pairs(["tlinear"])
    assert {p.rule for p in pairs} == {("tlinear", a) for a in ("gelu", "gelu_tanh", "swish",
                                                                "relu")}
    assert len(default_pairs()) == len([p for p in default_pairs() if p.a.kind != "tlinear"])
    for pair in pairs[::3]:
        graph = to_onnx(pair.graph())
        assert onnx_to_kernels(graph, attach=frozenset()) == [pair.a, pair.b]
        assert onnx_to_kernels(graph) == [pair.a.with_(act=pair.b.act)]


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_a_zero_pad_before_a_conv_is_its_padding_and_a_1d_conv_is_2d(dynamo):
    import torch.nn.functional as F
    from torch import nn

    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 6, 3, padding=1)
            self.reflected = nn.Conv2d(6, 6, 3)
            self.sequence = nn.Conv1d(6, 8, 5, padding=2, stride=2)

        def forward(self, x):
            y = self.conv(F.pad(x, (1, 1, 1, 1)))  # one conv padded by 2
            y = self.reflected(F.pad(y, (1, 1, 1, 1), mode="reflect"))  # a pad kernel
            return self.sequence(y.flatten(2))  # [1, 6, 100] -> [1, 8, 50]

    assert onnx_to_kernels(torch_to_onnx(Padded().eval(), (1, 4, 8, 8), dynamo=dynamo)) == [
        S("conv", h=8, w=8, cin=4, cout=6, kernel=3, pad=2),
        S("pad", h=10, w=10, cin=6, pad=1, mode="reflect"),
        S("conv", h=12, w=12, cin=6, cout=6, kernel=3, pad=0),
        S("conv", h=100, w=1, cin=6, cout=8, kernel=5, kernel_w=1, stride=2, pad=2, pad_w=0)]


def test_a_transformer_with_a_symbolic_batch_reads_it_as_one_or_as_given(tmp_path):
    """The legacy exporter computes the attention's reshape targets from the symbolic batch
    (Shape, Gather, Concat, ...): with the batch fixed, they fold into constants."""
    import warnings

    import torch

    net = _vit("mha")
    module = net.build()
    path = tmp_path / "vit.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(net.input_shape),), str(path), dynamo=False,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    static = onnx_to_kernels(torch_to_onnx(module, net.input_shape))
    assert onnx_to_kernels(path) == static
    batched = onnx_to_kernels(path, input_shapes={"input": (4, 3, 32, 32)})
    assert Counter(k.kind for k in batched) == Counter(k.kind for k in static) + Counter(
        transpose=2 * net.config.depth)  # [B, T, C] <-> [T, B, C] now moves data
    assert {k.batch for k in batched if k.kind in ("tlinear", "layernorm", "bmm")} == {4}
