"""Exporters against the float64 PyTorch reference: ONNX (onnxruntime) and TFLite (LiteRT).

Every OpSpec kind and activation, the padding cases where TFLite SAME differs from PyTorch
padding, grouped and depthwise convolutions, and a small network; TFLite runs both through
XNNPACK (default resolver) and through the builtin kernels alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from latbench.bench.export.graph import GraphBuilder, Layer, LayerGraph, chain_graph, spec_graph
from latbench.bench.export.reference import run_reference
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.export.to_tflite import same_padding_matches, to_tflite
from latbench.bench.ops import ACTIVATIONS, ALL_ACTIVATIONS, MORE_ACTIVATIONS, OpSpec
from latbench.errors import ExportError

REL_TOL = 1e-4
RESOLVERS = ("xnnpack", "builtin")


def _spec_cases() -> list[OpSpec]:
    s = OpSpec
    cases = [
        # conv: SAME-compatible, explicit pad (stride 2 on even input), VALID, 1x1, 5x5, batch 2
        s("conv", h=8, w=8, cin=3, cout=8, kernel=3, stride=1),
        s("conv", h=8, w=8, cin=4, cout=8, kernel=3, stride=2, act="relu"),
        s("conv", h=7, w=9, cin=4, cout=6, kernel=3, stride=2, act="relu6"),
        s("conv", h=6, w=6, cin=4, cout=4, kernel=3, pad=0),
        s("conv", h=6, w=6, cin=8, cout=16, kernel=1, batch=2, act="hswish"),
        s("conv", h=9, w=9, cin=4, cout=8, kernel=5, stride=2),
        s("conv", h=6, w=6, cin=4, cout=4, kernel=3, pad=2),
        # grouped and depthwise-with-multiplier conv
        s("conv", h=8, w=8, cin=8, cout=8, kernel=3, groups=2),
        s("conv", h=8, w=8, cin=8, cout=12, kernel=3, stride=2, groups=4, act="swish"),
        s("conv", h=6, w=6, cin=6, cout=6, kernel=1, groups=3, batch=2, act="relu"),
        s("conv", h=6, w=6, cin=4, cout=8, kernel=3, groups=4),
        # dwconv: stride 2 on even input (PAD), odd input (SAME), 5x5, 7x7
        s("dwconv", h=8, w=8, cin=8, kernel=3, stride=2),
        s("dwconv", h=7, w=7, cin=8, kernel=3, stride=2, act="relu6"),
        s("dwconv", h=8, w=8, cin=6, kernel=3, stride=1, act="hswish"),
        s("dwconv", h=10, w=10, cin=4, kernel=5, stride=2, act="relu"),
        s("dwconv", h=9, w=9, cin=4, kernel=7, stride=1),
        # mbconv: se + residual, expand 1, stride 2, residual off, hswish (hsigmoid gate)
        s("mbconv", h=8, w=8, cin=8, cout=8, kernel=3, expand=4, se=True, act="relu6"),
        s("mbconv", h=8, w=8, cin=8, cout=8, kernel=3, expand=1, act="relu"),
        s("mbconv", h=8, w=8, cin=8, cout=12, kernel=5, stride=2, expand=3, act="swish"),
        s("mbconv", h=6, w=6, cin=8, cout=8, kernel=3, expand=2, residual=False, act="relu6"),
        s("mbconv", h=7, w=7, cin=8, cout=16, kernel=3, stride=2, expand=6, se=True,
          act="hswish"),
        # linear
        s("linear", cin=16, cout=10),
        s("linear", cin=12, cout=5, act="relu", batch=2),
        # pool: avg with padding (count_include_pad), max with PADV2 and with SAME, gavg
        s("pool", h=8, w=8, cin=4, pool="avg", kernel=3, stride=2, pad=1),
        s("pool", h=7, w=7, cin=4, pool="avg", kernel=3, stride=1, pad=1),
        s("pool", h=8, w=8, cin=4, pool="avg", kernel=2, stride=2),
        s("pool", h=8, w=8, cin=4, pool="max", kernel=3, stride=2, pad=1),
        s("pool", h=7, w=7, cin=4, pool="max", kernel=3, stride=2, pad=1),
        s("pool", h=8, w=8, cin=4, pool="max", kernel=2, stride=2),
        s("pool", h=6, w=5, cin=6, pool="gavg", batch=2),
        # elementwise
        s("add", h=5, w=5, cin=8),
        s("add", h=5, w=5, cin=8, act="relu"),
        s("add", h=5, w=5, cin=8, act="relu6"),
        s("add", h=5, w=5, cin=8, act="hswish"),
        s("mul", h=5, w=5, cin=8, batch=2),
        # squeeze-excite
        s("se", h=6, w=6, cin=16, expand=0.25),
        s("se", h=6, w=6, cin=16, expand=0.5, act="hsigmoid"),
        # concat
        s("concat", h=5, w=5, cin=8, groups=2),
        s("concat", h=5, w=5, cin=12, groups=3),
    ]
    cases += [s("act", h=5, w=5, cin=6, act=act) for act in ACTIVATIONS]
    cases += [s("conv", h=6, w=6, cin=4, cout=6, kernel=3, act=act) for act in ACTIVATIONS]
    # the kinds, fields and activations added for transformers and the common op set
    # (tests/bench/test_export_kinds.py checks them against PyTorch modules, more shapes each)
    cases += [
        s("conv", h=9, w=11, cin=4, cout=6, kernel=1, kernel_w=7),
        s("conv", h=9, w=9, cin=4, cout=6, kernel=3, dilation=2, stride=2, act="relu"),
        s("dwconv", h=9, w=11, cin=4, kernel=5, kernel_w=1, stride=2, act="leakyrelu",
          alpha=0.2),
        s("concat", h=6, w=6, cin=8, groups=2, axes="2"),
        s("tlinear", tokens=7, cin=8, cout=12, act="gelu", batch=2),
        s("bmm", heads=3, tokens=5, cin=4, cout=5, batch=2),
        s("softmax", heads=3, tokens=5, cin=6),
        s("layernorm", tokens=5, cin=16, batch=2),
        s("transpose", h=3, w=4, cin=5, axes="0213", batch=2),
        s("clstoken", tokens=5, cin=8, batch=2),
        s("gather", tokens=5, cin=8, batch=2),
        s("posembed", tokens=5, cin=8, batch=2),
        s("convt", h=5, w=6, cin=4, cout=6, kernel=3, stride=2, pad=1, out_pad=1, act="relu"),
        s("resize", h=5, w=6, cin=4, scale=2, mode="bilinear"),
        s("resize", h=5, w=6, cin=4, scale=3, mode="nearest"),
        s("pad", h=5, w=6, cin=4, pad=2, mode="reflect"),
        s("slice", h=5, w=6, cin=8, cout=3),
        s("instnorm", h=5, w=6, cin=8),
        s("reduce", h=5, w=6, cin=8, axes="23"),
        s("shuffle", h=5, w=6, cin=8, groups=2),
    ]
    cases += [s("act", h=5, w=5, cin=6, act=act) for act in MORE_ACTIVATIONS]
    cases += [s("conv", h=6, w=6, cin=4, cout=6, kernel=3, act=act) for act in MORE_ACTIVATIONS]
    return cases


SPECS = _spec_cases()


def _network() -> LayerGraph:
    """conv stem -> 2 mbconv -> 1x1 conv -> global pool -> linear."""
    s = OpSpec
    specs = [
        s("conv", h=16, w=16, cin=3, cout=8, kernel=3, stride=2, act="hswish"),
        s("mbconv", h=8, w=8, cin=8, cout=8, kernel=3, expand=3, se=True, act="relu"),
        s("mbconv", h=8, w=8, cin=8, cout=16, kernel=5, stride=2, expand=4, act="hswish"),
        s("conv", h=4, w=4, cin=16, cout=32, kernel=1, act="hswish"),
        s("pool", h=4, w=4, cin=32, pool="gavg"),
        s("linear", cin=32, cout=10),
    ]
    return chain_graph(specs, seed=7)


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def _nchw(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def run_tflite(model: bytes, inputs: dict[str, np.ndarray], resolver: str,
               graph: LayerGraph | None = None) -> np.ndarray:
    """Run a TFLite model on NCHW inputs (matched by tensor name); returns the output NCHW.
    With `graph`, only its image tensors are NHWC in the model (plain ones keep their shape);
    without, every 4-D tensor is."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    def image(name: str) -> bool:
        return graph is None or graph.is_image(name)

    kind = (OpResolverType.AUTO if resolver == "xnnpack"
            else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter = Interpreter(model_content=model, num_threads=1,
                              experimental_op_resolver_type=kind)
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    assert sorted(d["name"] for d in details) == sorted(inputs)
    for d in details:
        x = inputs[d["name"]]
        x = _nhwc(x) if image(d["name"]) else x
        assert tuple(d["shape"]) == x.shape
        interpreter.set_tensor(d["index"], np.ascontiguousarray(x))
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return _nchw(out) if graph is None or image(graph.output_name) else out


def run_onnx(model: bytes, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def _check(name: str, got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != reference {ref.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite output"
    scale = float(np.abs(ref).max())
    assert scale > 0, f"{name}: reference output is all zero, the test would prove nothing"
    err = float(np.abs(got.astype(np.float64) - ref).max()) / scale
    assert err < REL_TOL, f"{name}: relative max error {err:.3g}"


def _check_graph(graph: LayerGraph, seed: int = 1, **tflite_kwargs: object) -> None:
    inputs = graph.random_inputs(seed)
    ref = run_reference(graph, inputs)
    assert ref.shape == graph.output_shape
    _check("onnx", run_onnx(to_onnx(graph), inputs), ref)
    model = to_tflite(graph, **tflite_kwargs)
    for resolver in RESOLVERS:
        _check(f"tflite/{resolver}", run_tflite(model, inputs, resolver, graph), ref)


@pytest.mark.parametrize("spec", SPECS, ids=[spec.key() for spec in SPECS])
def test_spec_matches_reference(spec: OpSpec) -> None:
    _check_graph(spec_graph(spec, seed=3))


GROUPED = [spec for spec in SPECS if spec.kind == "conv" and 1 < spec.groups < spec.cin]


@pytest.mark.parametrize("spec", GROUPED, ids=[spec.key() for spec in GROUPED])
def test_grouped_conv_split_lowering_matches_reference(spec: OpSpec) -> None:
    graph = spec_graph(spec, seed=4)
    _check_graph(graph, native_groups=False)
    names = _op_names(to_tflite(graph, native_groups=False))
    assert names.count("CONV_2D") == spec.groups and "SPLIT" in names


def test_every_kind_and_activation_is_covered() -> None:
    from latbench.bench.ops import OP_KINDS, POOL_TYPES

    assert {s.kind for s in SPECS} == set(OP_KINDS)
    assert {s.pool for s in SPECS if s.kind == "pool"} == set(POOL_TYPES)
    assert {s.act for s in SPECS if s.kind == "act"} == set(ALL_ACTIVATIONS)


def test_network_matches_reference() -> None:
    graph = _network()
    assert graph.output_shape == (1, 10)
    _check_graph(graph)


def test_linear_after_spatial_tensor_flattens_in_nchw_order() -> None:
    """A linear layer on an HxW>1 tensor: the NHWC flatten order must be undone in the weights."""
    builder = GraphBuilder(np.random.default_rng(0))
    x = builder.input((2, 4, 3, 3))
    x = builder.conv(x, 6, 3, act="relu")
    graph = builder.finish(builder.linear(x, 5, act="relu6"))
    _check_graph(graph)


# --- structure of the TFLite model ------------------------------------------------------------
def _model(model: bytes):
    from ai_edge_litert import schema_py_generated as schema

    return schema, schema.ModelT.InitFromPackedBuf(model, 0)


def _op_names(model: bytes) -> list[str]:
    schema, m = _model(model)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names[m.operatorCodes[op.opcodeIndex].builtinCode] for op in m.subgraphs[0].operators]


@pytest.mark.parametrize(("spec", "ops"), [
    (OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3), ["CONV_2D"]),
    (OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3, stride=2), ["PAD", "CONV_2D"]),
    (OpSpec("conv", h=7, w=7, cin=4, cout=8, kernel=3, stride=2), ["CONV_2D"]),
    (OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3, pad=0, act="relu6"), ["CONV_2D"]),
    (OpSpec("conv", h=8, w=8, cin=8, cout=8, kernel=3, groups=2), ["CONV_2D"]),
    (OpSpec("dwconv", h=8, w=8, cin=8, kernel=3, stride=2, act="relu"),
     ["PAD", "DEPTHWISE_CONV_2D"]),
    (OpSpec("dwconv", h=8, w=8, cin=8, kernel=3, act="hswish"),
     ["DEPTHWISE_CONV_2D", "HARD_SWISH"]),
    (OpSpec("pool", h=7, w=7, cin=4, pool="avg", kernel=3, stride=2, pad=1),
     ["PAD", "AVERAGE_POOL_2D"]),
    (OpSpec("pool", h=7, w=7, cin=4, pool="max", kernel=3, stride=2, pad=1), ["MAX_POOL_2D"]),
    (OpSpec("pool", h=8, w=8, cin=4, pool="max", kernel=3, stride=2, pad=1),
     ["PADV2", "MAX_POOL_2D"]),
    (OpSpec("pool", h=8, w=8, cin=4, pool="gavg"), ["MEAN"]),
    (OpSpec("add", h=4, w=4, cin=4, act="relu"), ["ADD"]),
    (OpSpec("act", h=4, w=4, cin=4, act="swish"), ["LOGISTIC", "MUL"]),
    (OpSpec("act", h=4, w=4, cin=4, act="hsigmoid"), ["ADD", "MUL"]),
    (OpSpec("linear", cin=8, cout=4, act="relu"), ["FULLY_CONNECTED"]),
    (OpSpec("concat", h=4, w=4, cin=9, groups=3), ["CONCATENATION"]),
    (OpSpec("concat", h=4, w=4, cin=9, groups=2, axes="3"), ["CONCATENATION"]),
    (OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3, dilation=2), ["CONV_2D"]),
    (OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=1, kernel_w=7), ["CONV_2D"]),
    (OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=7, kernel_w=1, stride=2),
     ["PAD", "CONV_2D"]),
    (OpSpec("dwconv", h=8, w=8, cin=4, kernel=3, dilation=2, act="relu6"),
     ["DEPTHWISE_CONV_2D"]),
    (OpSpec("tlinear", tokens=5, cin=8, cout=4, act="relu"), ["FULLY_CONNECTED"]),
    (OpSpec("tlinear", tokens=5, cin=8, cout=4, act="gelu"), ["FULLY_CONNECTED", "GELU"]),
    (OpSpec("bmm", heads=2, tokens=5, cin=4, cout=5), ["BATCH_MATMUL"]),
    (OpSpec("softmax", heads=2, tokens=5, cin=5), ["SOFTMAX"]),
    (OpSpec("layernorm", tokens=5, cin=8),
     ["MEAN", "SUB", "MUL", "MEAN", "ADD", "RSQRT", "MUL", "MUL", "ADD"]),
    (OpSpec("transpose", h=2, w=4, cin=5, axes="0213"), ["TRANSPOSE"]),
    (OpSpec("clstoken", tokens=5, cin=8), ["CONCATENATION"]),
    (OpSpec("gather", tokens=5, cin=8), ["GATHER"]),
    (OpSpec("posembed", tokens=5, cin=8), ["ADD"]),
    (OpSpec("convt", h=4, w=4, cin=4, cout=8, kernel=2, stride=2), ["TRANSPOSE_CONV"]),
    (OpSpec("convt", h=4, w=4, cin=4, cout=8, kernel=4, stride=2, pad=1),
     ["TRANSPOSE_CONV", "SLICE"]),
    (OpSpec("resize", h=4, w=4, cin=4, scale=2), ["RESIZE_NEAREST_NEIGHBOR"]),
    (OpSpec("resize", h=4, w=4, cin=4, scale=2, mode="bilinear"), ["RESIZE_BILINEAR"]),
    (OpSpec("pad", h=4, w=4, cin=4, pad=1), ["PAD"]),
    (OpSpec("pad", h=4, w=4, cin=4, pad=1, mode="reflect"), ["MIRROR_PAD"]),
    (OpSpec("slice", h=4, w=4, cin=8, cout=3), ["STRIDED_SLICE"]),
    (OpSpec("reduce", h=4, w=4, cin=8, axes="1"), ["MEAN"]),
    (OpSpec("shuffle", h=4, w=4, cin=8, groups=2), ["RESHAPE", "TRANSPOSE", "RESHAPE"]),
    (OpSpec("act", h=4, w=4, cin=4, act="gelu_tanh"), ["GELU"]),
    (OpSpec("act", h=4, w=4, cin=4, act="leakyrelu"), ["LEAKY_RELU"]),
    (OpSpec("act", h=4, w=4, cin=4, act="prelu"), ["PRELU"]),
    (OpSpec("act", h=4, w=4, cin=4, act="tanh"), ["TANH"]),
    (OpSpec("act", h=4, w=4, cin=4, act="mish"), ["EXP", "ADD", "LOG", "TANH", "MUL"]),
])
def test_operators_emitted(spec: OpSpec, ops: list[str]) -> None:
    """Fused activations stay fused and PAD appears exactly where SAME would be wrong."""
    assert _op_names(to_tflite(spec_graph(spec))) == ops


def test_fused_activation_and_options() -> None:
    schema, m = _model(to_tflite(spec_graph(
        OpSpec("dwconv", h=8, w=8, cin=8, kernel=3, stride=2, act="relu6"))))
    op = m.subgraphs[0].operators[-1]
    assert op.builtinOptions.fusedActivationFunction == schema.ActivationFunctionType.RELU6
    assert op.builtinOptions.padding == schema.Padding.VALID
    assert op.builtinOptions.depthMultiplier == 1
    assert (op.builtinOptions.strideH, op.builtinOptions.strideW) == (2, 2)
    _, m = _model(to_tflite(spec_graph(OpSpec("conv", h=8, w=8, cin=8, cout=8, kernel=3,
                                              groups=2))))
    assert m.operatorCodes[0].version == 6  # grouped CONV_2D


def test_io_tensors_are_nhwc_and_named() -> None:
    graph = spec_graph(OpSpec("conv", h=6, w=5, cin=3, cout=7, kernel=3, batch=2))
    _, m = _model(to_tflite(graph))
    sub = m.subgraphs[0]
    (i,), (o,) = sub.inputs, sub.outputs
    assert list(sub.tensors[i].shape) == [2, 6, 5, 3]
    assert list(sub.tensors[o].shape) == [2, 6, 5, 7]
    assert sub.tensors[i].name.decode() == graph.inputs[0]
    assert sub.tensors[o].name.decode() == graph.output_name


def test_weight_buffers_are_aligned() -> None:
    from ai_edge_litert import schema_py_generated as schema

    model = to_tflite(_network())
    base = np.frombuffer(model, np.uint8).ctypes.data
    m = schema.Model.GetRootAs(model, 0)
    assert m.Buffers(0).DataLength() == 0
    sizes = [m.Buffers(i).DataLength() for i in range(1, m.BuffersLength())]
    assert sizes and all(sizes)
    for i in range(1, m.BuffersLength()):
        assert (m.Buffers(i).DataAsNumpy().ctypes.data - base) % 16 == 0


@pytest.mark.parametrize(("size", "kernel", "stride", "pad", "same"), [
    (8, 3, 1, 1, True), (8, 3, 2, 1, False), (7, 3, 2, 1, True), (8, 5, 1, 2, True),
    (8, 5, 2, 2, False), (9, 5, 2, 2, True), (8, 2, 2, 0, True), (8, 3, 1, 0, False),
    (8, 1, 2, 0, True), (8, 4, 1, 2, False),
])
def test_same_padding_matches(size: int, kernel: int, stride: int, pad: int, same: bool) -> None:
    assert same_padding_matches(size, kernel, stride, pad) is same


def test_unknown_layer_op_and_activation_raise() -> None:
    graph = spec_graph(OpSpec("act", h=2, w=2, cin=2, act="relu"))
    bad_act = LayerGraph(graph.inputs, [Layer("act", graph.inputs, "y", {"act": "celu"})], "y",
                         {**graph.shapes, "y": graph.shapes[graph.inputs[0]]})
    with pytest.raises(ExportError, match="celu"):
        to_tflite(bad_act)
    bad_op = LayerGraph(graph.inputs, [Layer("warp", graph.inputs, "y")], "y",
                        {**graph.shapes, "y": graph.shapes[graph.inputs[0]]})
    with pytest.raises(ExportError, match="warp"):
        to_tflite(bad_op)
