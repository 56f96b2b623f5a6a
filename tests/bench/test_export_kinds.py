"""The kernel kinds added for transformers and the common op set, against PyTorch modules.

Every kind (and every new activation) is built as the PyTorch module a model would use -
nn.Linear, nn.LayerNorm, nn.ConvTranspose2d, nn.Upsample, nn.ChannelShuffle, ... - from the spec
alone, loaded with the exported graph's random weights, and run in float64; the ONNX export
(onnxruntime) and the TFLite export (LiteRT, XNNPACK and builtin kernels) must match it within
a relative error of 1e-4, at several shapes per kind. Then the structure: which ONNX ops are
written, layout changes between image and plain tensors inside one model, and the one kind
TFLite has no form for (grouped transposed convolution), refused by the LiteRT runner.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
import pytest
from test_export import RESOLVERS, _check, _check_graph, _op_names, run_onnx, run_tflite

from latbench.bench.export.graph import GraphBuilder, LayerGraph, chain_graph, spec_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.export.to_tflite import tflite_shape, to_tflite
from latbench.bench.ops import ALL_ACTIVATIONS, MORE_ACTIVATIONS, OP_KINDS, OpSpec
from latbench.errors import ExportError

torch = pytest.importorskip("torch")
nn = torch.nn
S = OpSpec
NEW_KINDS = OP_KINDS[OP_KINDS.index("tlinear"):]


def _cases() -> list[OpSpec]:
    cases = [
        # conv and dwconv: dilation, non-square kernels (1xk, kx1), patch embedding (k = s)
        S("conv", h=12, w=12, cin=4, cout=8, kernel=3, dilation=2),
        S("conv", h=13, w=11, cin=4, cout=6, kernel=3, dilation=3, stride=2, act="relu6"),
        S("conv", h=9, w=11, cin=4, cout=6, kernel=1, kernel_w=7),
        S("conv", h=9, w=11, cin=6, cout=4, kernel=7, kernel_w=1, stride=2, act="gelu"),
        S("conv", h=8, w=10, cin=4, cout=6, kernel=3, kernel_w=5, pad=0, pad_w=1, groups=2),
        S("conv", h=32, w=48, cin=3, cout=16, kernel=16, stride=16, pad=0, batch=2),
        S("conv", h=30, w=23, cin=3, cout=12, kernel=7, stride=7, pad=0),
        S("conv", h=28, w=28, cin=3, cout=8, kernel=14, stride=14, pad=0, act="prelu"),
        S("dwconv", h=12, w=12, cin=6, kernel=3, dilation=2, act="relu"),
        S("dwconv", h=11, w=11, cin=6, kernel=5, dilation=2, stride=2),
        S("dwconv", h=9, w=12, cin=4, kernel=1, kernel_w=5, act="hswish"),
        S("dwconv", h=12, w=9, cin=4, kernel=7, kernel_w=1, stride=2, act="leakyrelu", alpha=0.2),
        # concat along H and W
        S("concat", h=6, w=5, cin=4, groups=2, axes="2"),
        S("concat", h=4, w=9, cin=3, groups=3, axes="3", batch=2),
        # transformer kernels
        S("tlinear", tokens=7, cin=16, cout=24),
        S("tlinear", tokens=50, cin=32, cout=96, act="gelu", batch=2),
        S("tlinear", tokens=9, cin=24, cout=8, act="gelu_tanh"),
        S("tlinear", tokens=5, cin=8, cout=12, act="relu"),
        S("bmm", heads=4, tokens=17, cin=8, cout=17),       # QK^T
        S("bmm", heads=4, tokens=17, cin=17, cout=8),       # AV
        S("bmm", heads=1, tokens=5, cin=3, cout=7, batch=2),
        S("softmax", heads=4, tokens=17, cin=17),
        S("softmax", heads=1, tokens=1, cin=10, batch=3),
        S("layernorm", tokens=50, cin=32),
        S("layernorm", tokens=7, cin=64, batch=2),
        S("transpose", h=4, w=8, cin=17, axes="0213"),      # [B, T, H, D] -> [B, H, T, D]
        S("transpose", h=17, w=8, cin=4, axes="0213"),      # [B, H, T, D] -> [B, T, H, D]
        S("transpose", h=17, w=8, cin=4, axes="0132"),      # K -> K^T
        S("transpose", h=5, w=6, cin=3, axes="0231", batch=2),  # NCHW -> NHWC
        S("clstoken", tokens=49, cin=32),
        S("clstoken", tokens=4, cin=8, batch=3),
        S("gather", tokens=50, cin=32),
        S("gather", tokens=5, cin=8, batch=2),
        S("posembed", tokens=50, cin=32),
        S("posembed", tokens=5, cin=8, batch=2),
        # the rest of the common op set
        S("convt", h=6, w=7, cin=8, cout=4, kernel=2, stride=2),
        S("convt", h=5, w=5, cin=4, cout=6, kernel=3, stride=2, pad=1, out_pad=1, act="relu"),
        S("convt", h=5, w=6, cin=4, cout=6, kernel=4, stride=2, pad=1, act="leakyrelu"),
        S("convt", h=4, w=4, cin=4, cout=4, kernel=3, stride=3, pad=1, out_pad=2, batch=2),
        S("convt", h=6, w=6, cin=4, cout=5, kernel=3, stride=1, pad=1, act="hswish"),
        S("resize", h=5, w=6, cin=4, scale=2),
        S("resize", h=5, w=6, cin=4, scale=2, mode="bilinear"),
        S("resize", h=3, w=4, cin=3, scale=3, mode="bilinear", batch=2),
        S("resize", h=3, w=4, cin=3, scale=4),
        S("pad", h=5, w=6, cin=4, pad=1),
        S("pad", h=5, w=6, cin=4, pad=2, mode="reflect"),
        S("pad", h=4, w=4, cin=3, pad=3, mode="reflect", batch=2),
        S("slice", h=5, w=6, cin=8, cout=4),
        S("slice", h=3, w=3, cin=7, cout=2, batch=2),
        S("instnorm", h=5, w=6, cin=8),
        S("instnorm", h=8, w=8, cin=3, batch=2),
        S("reduce", h=5, w=6, cin=8, axes="23"),
        S("reduce", h=5, w=6, cin=8, axes="1"),
        S("reduce", h=5, w=6, cin=8, axes="123", batch=2),
        S("reduce", h=5, w=6, cin=8, axes="3"),
        S("shuffle", h=5, w=6, cin=8, groups=2),
        S("shuffle", h=3, w=3, cin=12, groups=3, batch=2),
    ]
    for act in MORE_ACTIVATIONS:
        cases += [S("act", h=5, w=6, cin=4, act=act), S("act", h=3, w=3, cin=8, act=act, batch=2),
                  S("add", h=4, w=4, cin=6, act=act), S("linear", cin=12, cout=6, act=act)]
    return cases


CASES = _cases()


def test_cases_cover_every_new_kind_and_activation() -> None:
    kinds = Counter(s.kind for s in CASES)
    assert all(kinds[k] >= 2 for k in NEW_KINDS), kinds
    assert {s.act for s in CASES} >= set(MORE_ACTIVATIONS)
    assert any(s.dilation > 1 for s in CASES if s.kind == "conv")
    assert any(s.dilation > 1 for s in CASES if s.kind == "dwconv")
    assert {(s.kernel, s.kernel_w) for s in CASES if s.kernel_w} >= {(1, 7), (7, 1), (1, 5)}


# --- the PyTorch module of a spec --------------------------------------------------------------
def _t(array: np.ndarray) -> Any:
    return torch.from_numpy(np.asarray(array, np.float64))


def _act_module(spec: OpSpec, weights: dict[str, np.ndarray], channels_last: bool) -> Any:
    """The activation as the nn module a model would hold."""
    act = spec.act
    simple = {"none": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish,
              "hsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid, "swish": nn.SiLU,
              "tanh": nn.Tanh, "mish": nn.Mish}
    if act in simple:
        return simple[act]()
    if act == "gelu":
        return nn.GELU()
    if act == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if act == "leakyrelu":
        return nn.LeakyReLU(spec.alpha)
    if act == "prelu":
        prelu = nn.PReLU(len(weights["slope"])).double()
        prelu.weight.data = _t(weights["slope"])
        if not channels_last:
            return prelu

        class ChannelsLast(nn.Module):  # nn.PReLU's channels are axis 1; tokens keep them last
            def forward(self, x: Any) -> Any:
                return prelu(x.movedim(-1, 1)).movedim(1, -1)

        return ChannelsLast()
    raise AssertionError(act)


class _Lambda(nn.Module):
    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs: Any) -> Any:
        return self.fn(*xs)


def _load(module: Any, weights: dict[str, np.ndarray], **names: str) -> Any:
    """module.<attr> = graph weight <name> for each attr=name."""
    module = module.double()
    for attr, name in names.items():
        getattr(module, attr).data = _t(weights[name])
    return module


def torch_module(spec: OpSpec, graph: LayerGraph) -> Any:
    """The PyTorch module computing `spec`, from the spec's fields and the graph's weights."""
    (layer,) = graph.layers
    w, k = layer.weights, spec.kind
    act = _act_module(spec, w, channels_last=k == "tlinear")
    if k in ("conv", "dwconv"):
        conv = nn.Conv2d(spec.cin, spec.cout, (spec.kernel, spec.kernel_w or spec.kernel),
                         spec.stride, (spec.pad, spec.pad_w if spec.pad_w >= 0 else spec.pad),
                         spec.dilation, spec.groups)
        return nn.Sequential(_load(conv, w, weight="weight", bias="bias"), act)
    if k == "linear":
        return nn.Sequential(_load(nn.Linear(spec.cin, spec.cout), w, weight="weight",
                                   bias="bias"), act)
    if k == "tlinear":
        return nn.Sequential(_load(nn.Linear(spec.cin, spec.cout), w, weight="weight",
                                   bias="bias"), act)
    if k == "add":
        return _Lambda(lambda a, b: act(a + b))
    if k == "act":
        return act
    if k == "concat":
        return _Lambda(lambda *xs: torch.cat(xs, dim=int(spec.axes or 1)))
    if k == "bmm":
        return _Lambda(torch.matmul)
    if k == "softmax":
        return nn.Softmax(dim=-1)
    if k == "layernorm":
        return _load(nn.LayerNorm(spec.cin), w, weight="scale", bias="bias")
    if k == "transpose":
        return _Lambda(lambda x: x.permute(*(int(a) for a in spec.axes)))
    if k == "clstoken":
        token = _t(w["value"])
        return _Lambda(lambda x: torch.cat([token.expand(x.shape[0], -1, -1), x], dim=1))
    if k == "gather":
        return _Lambda(lambda x: x[:, 0])
    if k == "posembed":
        pos = _t(w["value"])
        return _Lambda(lambda x: x + pos)
    if k == "convt":
        convt = nn.ConvTranspose2d(spec.cin, spec.cout, spec.kernel, spec.stride, spec.pad,
                                   spec.out_pad, spec.groups)
        return nn.Sequential(_load(convt, w, weight="weight", bias="bias"), act)
    if k == "resize":
        if spec.mode == "nearest":
            return nn.Upsample(scale_factor=spec.scale, mode="nearest")
        return nn.Upsample(scale_factor=spec.scale, mode="bilinear", align_corners=False)
    if k == "pad":
        return nn.ZeroPad2d(spec.pad) if spec.mode == "constant" else nn.ReflectionPad2d(spec.pad)
    if k == "slice":
        return _Lambda(lambda x: x[:, :spec.cout])
    if k == "instnorm":
        return _load(nn.InstanceNorm2d(spec.cin, affine=True), w, weight="scale", bias="bias")
    if k == "reduce":
        return _Lambda(lambda x: x.mean(dim=tuple(int(a) for a in spec.axes), keepdim=True))
    if k == "shuffle":
        return nn.ChannelShuffle(spec.groups)
    raise AssertionError(k)


@pytest.mark.parametrize("spec", CASES, ids=[s.key() for s in CASES])
def test_exports_match_pytorch_module(spec: OpSpec) -> None:
    graph = spec_graph(spec, seed=5)
    inputs = graph.random_inputs(seed=2)
    assert [graph.shapes[name] for name in graph.inputs] == spec.input_shapes
    with torch.no_grad():
        module = torch_module(spec, graph).eval()
        ref = module(*(_t(inputs[name]) for name in graph.inputs)).numpy()
    assert ref.shape == spec.output_shape == graph.output_shape
    _check("onnx", run_onnx(to_onnx(graph), inputs), ref)
    model = to_tflite(graph)
    for resolver in RESOLVERS:
        _check(f"tflite/{resolver}", run_tflite(model, inputs, resolver, graph), ref)


def test_plain_tensors_keep_their_shape_in_tflite() -> None:
    graph = spec_graph(S("bmm", heads=3, tokens=5, cin=4, cout=6))
    assert [tflite_shape(graph, x) for x in graph.inputs] == [[1, 3, 5, 4], [1, 3, 4, 6]]
    assert tflite_shape(graph, graph.output_name) == [1, 3, 5, 6]
    image = spec_graph(S("resize", h=3, w=4, cin=5, scale=2))
    assert tflite_shape(image, image.inputs[0]) == [1, 3, 4, 5]


# --- whole chains: layout changes between image and plain tensors -----------------------------
def test_image_and_plain_layers_mixed_in_one_model() -> None:
    """A patch embedding as a ViT begins: conv (image) -> transpose (plain) -> gelu, softmax,
    transpose, prelu (plain) -> resize (image): each change between the NHWC image and the
    plain tensor is one TRANSPOSE in TFLite, and the numerics still match."""
    builder = GraphBuilder(np.random.default_rng(0))
    x = builder.input((2, 3, 16, 16))
    x = builder.conv(x, 8, 4, stride=4, pad=0)                # (2, 8, 4, 4) image
    x = builder.transpose(x, (0, 2, 3, 1))                    # (2, 4, 4, 8) plain
    x = builder.act(x, "gelu")
    x = builder.softmax(x)
    x = builder.transpose(x, (0, 3, 1, 2))                    # (2, 8, 4, 4) plain
    y = builder.act(x, "prelu")                               # slope on the last axis
    assert x in builder.plain and y in builder.plain
    graph = builder.finish(builder.resize(y, 2, "bilinear"))  # reads it as an image
    assert graph.is_image(graph.output_name) and not graph.is_image(y)

    _check_graph(graph)
    names = _op_names(to_tflite(graph))
    # the graph's two, plus one layout change after the conv and one before the resize
    assert names.count("TRANSPOSE") == 4


def test_transformer_block_chain_matches_reference() -> None:
    """Chained specs of an encoder's MLP half: layernorm -> tlinear + gelu -> tlinear ->
    posembed-style constant add; the tokens flow as plain tensors end to end."""
    specs = [S("layernorm", tokens=9, cin=16),
             S("tlinear", tokens=9, cin=16, cout=48, act="gelu"),
             S("tlinear", tokens=9, cin=48, cout=16), S("posembed", tokens=9, cin=16)]
    graph = chain_graph(specs, seed=3)
    assert graph.output_shape == (1, 9, 16)

    _check_graph(graph)


# --- ONNX structure ------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "ops"), [
    (S("tlinear", tokens=5, cin=8, cout=4), ["MatMul", "Add"]),
    (S("tlinear", tokens=5, cin=8, cout=4, act="gelu"),
     ["MatMul", "Add", "Div", "Erf", "Add", "Mul", "Mul"]),
    (S("bmm", heads=2, tokens=5, cin=4, cout=5), ["MatMul"]),
    (S("softmax", heads=2, tokens=5, cin=5), ["Softmax"]),
    (S("layernorm", tokens=5, cin=8), ["LayerNormalization"]),
    (S("transpose", h=2, w=4, cin=5, axes="0213"), ["Transpose"]),
    (S("clstoken", tokens=5, cin=8), ["Concat"]),
    (S("gather", tokens=5, cin=8), ["Gather"]),
    (S("posembed", tokens=5, cin=8), ["Add"]),
    (S("convt", h=4, w=4, cin=4, cout=8, kernel=2, stride=2), ["ConvTranspose"]),
    (S("resize", h=4, w=4, cin=4, scale=2, mode="bilinear"), ["Resize"]),
    (S("pad", h=4, w=4, cin=4, pad=1, mode="reflect"), ["Pad"]),
    (S("slice", h=4, w=4, cin=8, cout=3), ["Slice"]),
    (S("instnorm", h=4, w=4, cin=8), ["InstanceNormalization"]),
    (S("reduce", h=4, w=4, cin=8, axes="23"), ["ReduceMean"]),
    (S("shuffle", h=4, w=4, cin=8, groups=2), ["Reshape", "Transpose", "Reshape"]),
    (S("act", h=4, w=4, cin=4, act="leakyrelu", alpha=0.3), ["LeakyRelu"]),
    (S("act", h=4, w=4, cin=4, act="prelu"), ["PRelu"]),
    (S("act", h=4, w=4, cin=4, act="mish"), ["Softplus", "Tanh", "Mul"]),
    (S("conv", h=8, w=8, cin=4, cout=8, kernel=1, kernel_w=7, dilation=2), ["Conv"]),
])
def test_onnx_ops_written(spec: OpSpec, ops: list[str]) -> None:
    model = onnx.load_from_string(to_onnx(spec_graph(spec)))
    assert [n.op_type for n in model.graph.node] == ops
    assert model.opset_import[0].version == 17


def _ops_onnxruntime_runs(model: bytes, folder: Any) -> Counter:
    """Op types of `model` after onnxruntime's full graph optimization (what it executes)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(folder / "optimized.onnx").graph.node)


def test_gelu_kernel_runs_as_in_a_model_from_torchs_default_exporter(tmp_path: Any) -> None:
    """onnxruntime fuses only the legacy exporter's GELU order into one Gelu kernel; the
    default exporter's order runs as Erf and its elementwise ops. The kernel is exported in the
    default exporter's order, so that it is timed as users' models run it."""
    from latbench.bench.export.from_torch import torch_to_onnx

    kernel = _ops_onnxruntime_runs(
        to_onnx(spec_graph(S("tlinear", tokens=5, cin=8, cout=4, act="gelu"))), tmp_path)
    exported = _ops_onnxruntime_runs(
        torch_to_onnx(nn.Sequential(nn.Linear(8, 4), nn.GELU()), (1, 5, 8), dynamo=True),
        tmp_path)
    legacy = _ops_onnxruntime_runs(
        torch_to_onnx(nn.Sequential(nn.Linear(8, 4), nn.GELU()), (1, 5, 8), dynamo=False),
        tmp_path)
    assert "Gelu" in legacy and "Erf" not in legacy  # the fusion exists, for the other order
    for ops in (kernel, exported):
        assert ops["Erf"] == 1 and "Gelu" not in ops


def test_onnx_attributes_of_new_fields() -> None:
    model = onnx.load_from_string(to_onnx(spec_graph(
        S("conv", h=9, w=9, cin=4, cout=8, kernel=1, kernel_w=5, dilation=2, stride=2))))
    attrs = {a.name: list(a.ints) for a in model.graph.node[0].attribute if a.ints}
    assert attrs["kernel_shape"] == [1, 5] and attrs["dilations"] == [2, 2]
    assert attrs["pads"] == [0, 4, 0, 4]  # dilation * (k // 2) per axis
    model = onnx.load_from_string(to_onnx(spec_graph(S("act", h=2, w=2, cin=3,
                                                       act="leakyrelu", alpha=0.25))))
    assert model.graph.node[0].attribute[0].f == pytest.approx(0.25)


# --- kinds without a TFLite form ---------------------------------------------------------------
GROUPED_CONVT = S("convt", h=4, w=4, cin=8, cout=8, kernel=2, stride=2, groups=4)


def test_grouped_transposed_conv_has_no_tflite_form_but_runs_in_onnx() -> None:
    graph = spec_graph(GROUPED_CONVT)
    with pytest.raises(ExportError, match="no grouped transposed convolution.*groups=4"):
        to_tflite(graph)
    inputs = graph.random_inputs(1)
    with torch.no_grad():
        ref = torch_module(GROUPED_CONVT, graph)(_t(inputs["input"])).numpy()
    _check("onnx", run_onnx(to_onnx(graph), inputs), ref)


def test_litert_runner_refuses_it_before_measuring() -> None:
    """The LiteRT runner's export raises the ExportError (a LatbenchError), which a campaign
    records as that job's failure instead of sending a model to the device."""
    from latbench.bench.campaign import Subject
    from latbench.bench.runners import get_runner

    runner = get_runner("litert")
    with pytest.raises(ExportError, match="TRANSPOSE_CONV has no groups"):
        Subject.op(GROUPED_CONVT).model_bytes(runner)
    assert Subject.op(GROUPED_CONVT.with_(groups=1)).model_bytes(runner)[4:8] == b"TFL3"
    assert get_runner("onnxruntime").export(spec_graph(GROUPED_CONVT))


def test_every_activation_in_every_exporter() -> None:
    for act in ALL_ACTIVATIONS:
        graph = spec_graph(S("conv", h=4, w=4, cin=3, cout=4, kernel=3, act=act))
        assert to_onnx(graph) and to_tflite(graph)


def test_pt2_export_computes_the_new_layers() -> None:
    """The .pt2 export (torch.export, for torch-cuda) walks the same layer definitions: an
    encoder-style token chain and an image chain of the common op set give the reference."""
    import io

    from latbench.bench.export.reference import run_reference
    from latbench.bench.export.to_pt2 import to_pt2

    builder = GraphBuilder(np.random.default_rng(1))
    t = builder.cls_token(builder.input((2, 6, 16)))
    t = builder.add_const(t)
    t = builder.tlinear(builder.layernorm(t), 24, "gelu_tanh")
    tokens = builder.finish(builder.gather(builder.tlinear(t, 16, "prelu")))
    attention = GraphBuilder(np.random.default_rng(2))
    q = attention.input((2, 7, 3, 8), plain=True)
    k = attention.input((2, 3, 8, 7), plain=True)
    scores = attention.bmm(attention.transpose(q, (0, 2, 1, 3)), k)
    attention_graph = attention.finish(attention.softmax(scores))
    image = GraphBuilder(np.random.default_rng(3))
    x = image.convt(image.input((1, 8, 5, 5)), 6, 3, stride=2, pad=1, out_pad=1, act="mish")
    x = image.pad(image.resize(x, 2, "bilinear"), 2, "reflect")
    x = image.shuffle(image.instnorm(image.conv(x, 6, 3, kernel_w=1, dilation=2)), 3)
    x = image.concat([image.slice(x, 0, 4), image.slice(x, 2, 6)], axis=1)
    image_graph = image.finish(image.reduce_mean(x, (2, 3)))
    for graph in (tokens, attention_graph, image_graph):
        inputs = graph.random_inputs(4)
        program = torch.export.load(io.BytesIO(to_pt2(graph)))
        got = program.module()(*(torch.from_numpy(inputs[n]) for n in graph.inputs))
        _check("pt2", got.detach().numpy(), run_reference(graph, inputs))
