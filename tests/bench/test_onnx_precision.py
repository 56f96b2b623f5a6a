"""INT8 and FP16 ONNX exports (`bench.export.quantize`, `to_onnx` of a graph's dtype), run in
real ONNX Runtime against references.

INT8 (QDQ): ONNX Runtime's fused int8 kernels against a NumPy fake-quant reference - the same
QDQ model evaluated by onnx's reference evaluator with QuantizeLinear / DequantizeLinear written
out in NumPy (round half to even, saturate) - within one step of the output's quantization
scale (a requantization may round the other way); and against the float64 reference within
four output steps on the calibration inputs: input, weight and output rounding are half a step
each in their own scale, and the He-scaled kernels keep them near unit gain. QOperator and
dynamic quantization: within four output steps / 3% of the output range of the float64
reference. FP16: within 2e-3 of the output range (11-bit mantissa, weights rounded once).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from latbench.bench.export.graph import chain_graph, spec_graph
from latbench.bench.export.quantize import (
    QUANT_FORMATS,
    calibration_inputs,
    in_precision,
    quantize,
    to_float16,
)
from latbench.bench.export.reference import run_reference
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.onnx_quant import dequantize, quantize_values
from latbench.bench.ops import OpSpec
from latbench.errors import ConfigError, ExportError

S = OpSpec
# One kernel per kind ONNX Runtime's QDQ quantizer has an int8 form of, with the activations
# that fuse into int8 kernels or run after them.
INT8_SPECS = [
    S("conv", h=8, w=8, cin=4, cout=8, kernel=3, stride=2, act="relu"),
    S("conv", h=8, w=8, cin=4, cout=6, kernel=1, act="hswish"),
    S("dwconv", h=8, w=8, cin=8, kernel=3, act="relu6"),
    S("mbconv", h=8, w=8, cin=8, cout=8, kernel=3, expand=4, act="hswish", se=True,
      residual=True),
    S("linear", cin=16, cout=10, act="relu"),
    S("pool", h=8, w=8, cin=4, pool="avg", kernel=3, stride=2, pad=1),
    S("pool", h=8, w=8, cin=4, pool="max", kernel=3, stride=2, pad=1),
    S("pool", h=6, w=6, cin=8, pool="gavg"),
    S("add", h=5, w=5, cin=8, act="relu"),
    S("mul", h=5, w=5, cin=8),
    S("se", h=6, w=6, cin=16, expand=0.25, act="hsigmoid"),
    S("concat", h=5, w=5, cin=8, groups=2),
    S("act", h=5, w=5, cin=6, act="sigmoid"),
    S("act", h=5, w=5, cin=6, act="gelu"),
    S("tlinear", tokens=7, cin=16, cout=24, act="gelu"),
    S("bmm", heads=2, tokens=5, cin=4, cout=5),
    S("softmax", heads=2, tokens=5, cin=6),
    S("layernorm", tokens=5, cin=16),
    S("transpose", h=3, w=4, cin=5, axes="0213"),
    S("convt", h=5, w=6, cin=4, cout=6, kernel=3, stride=2, pad=1, out_pad=1, act="relu"),
    S("resize", h=5, w=6, cin=4, scale=2, mode="bilinear"),
    S("pad", h=5, w=6, cin=4, pad=2, mode="reflect"),
    S("slice", h=5, w=6, cin=8, cout=3),
    S("shuffle", h=5, w=6, cin=8, groups=2),
]
FP16_SPECS = [*INT8_SPECS, S("act", h=5, w=5, cin=6, act="hswish"),
              S("reduce", h=5, w=6, cin=8, axes="1"), S("instnorm", h=5, w=6, cin=8)]


def _session(model: bytes, optimized: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if optimized:
        options.optimized_model_filepath = optimized
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _run(model: bytes, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return _session(model).run(None, inputs)[0]


class QuantizeLinear(OpRun):
    """QuantizeLinear in NumPy, for the reference evaluator at any opset."""

    op_domain = ""

    def _run(self, x, scale, zero=None, axis=1, **_):  # type: ignore[no-untyped-def]
        return (quantize_values(x, scale, zero, axis),)


class DequantizeLinear(OpRun):
    op_domain = ""

    def _run(self, x, scale, zero=None, axis=1, **_):  # type: ignore[no-untyped-def]
        return (dequantize(x, scale, zero, axis),)


def fake_quant(model: bytes, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The QDQ model evaluated in NumPy: the fake-quant reference."""
    evaluator = ReferenceEvaluator(onnx.load_from_string(model),
                                   new_ops=[QuantizeLinear, DequantizeLinear])
    return evaluator.run(None, inputs)[0]


def output_step(model: bytes) -> float:
    """The quantization scale of the model's output: its final DequantizeLinear's, or where
    an activation with no int8 form runs last in float (hard-swish), that of its input."""
    proto = onnx.load_from_string(model)
    producer = {o: n for n in proto.graph.node for o in n.output}
    node = producer[proto.graph.output[0].name]
    while node.op_type != "DequantizeLinear":
        node = producer[node.input[0]]
    scale = next(t for t in proto.graph.initializer if t.name == node.input[1])
    return float(onnx.numpy_helper.to_array(scale))


def _inputs(model: bytes) -> dict[str, np.ndarray]:
    """The first calibration batch: the ranges were calibrated on it, so no input saturates
    and the error left is rounding."""
    return calibration_inputs(onnx.load_from_string(model), np.random.default_rng(0))[0]


@pytest.mark.parametrize("spec", INT8_SPECS, ids=lambda s: f"{s.kind}-{s.act}")
def test_int8_qdq_matches_fake_quant_and_float_references(spec: OpSpec) -> None:
    graph = spec_graph(spec.with_(dtype="int8"))
    model = to_onnx(graph)
    inputs = _inputs(model)
    got = _run(model, inputs)
    step = output_step(model)
    assert np.abs(got - fake_quant(model, inputs)).max() <= 1.01 * step
    ref = run_reference(graph, inputs)
    assert np.abs(ref).max() > 10 * step  # the bound below is not vacuous
    assert np.abs(got - ref).max() <= 4 * step


@pytest.mark.parametrize("quant_format", ["qoperator", "dynamic"])
@pytest.mark.parametrize("spec", [INT8_SPECS[0], INT8_SPECS[4],
                                  S("mbconv", h=8, w=8, cin=8, cout=8, kernel=3, expand=4,
                                    act="relu", residual=True)], ids=lambda s: s.kind)
def test_int8_qoperator_and_dynamic_match_the_float_reference(spec: OpSpec,
                                                              quant_format: str) -> None:
    graph = spec_graph(spec.with_(dtype="int8"))
    model = to_onnx(graph, quant_format=quant_format)
    proto = onnx.load_from_string(model)
    ops = {n.op_type for n in proto.graph.node}
    assert ops & ({"QLinearConv", "QGemm", "QLinearMatMul"} if quant_format == "qoperator"
                  else {"ConvInteger", "MatMulInteger"})
    weights = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer  # not zero points
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert weights and max(np.abs(w.astype(np.int32)).max() for w in weights) <= 64  # 7 bits
    inputs = _inputs(model)
    ref = run_reference(graph, inputs)
    assert np.abs(_run(model, inputs) - ref).max() <= 0.03 * np.abs(ref).max()


def test_int8_qdq_is_what_onnxruntime_fuses_into_int8_kernels(tmp_path) -> None:
    spec = S("conv", h=8, w=8, cin=4, cout=8, kernel=3, dtype="int8")
    model = onnx.load_from_string(to_onnx(spec_graph(spec)))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 2 and "Conv" in ops
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    weight = next(v for v in values.values() if v.ndim == 4)
    assert weight.dtype == np.int8 and weight.shape == (8, 4, 3, 3)
    assert any(v.dtype == np.int32 and v.shape == (8,) for v in values.values())  # the bias
    # per-channel symmetric weights: a scale per output channel, zero points 0
    weight_dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear"
                     and values.get(n.input[0]) is weight)
    assert values[weight_dq.input[1]].shape == (8,) and not values[weight_dq.input[2]].any()
    # 7-bit weights (reduce_range): exact in ONNX Runtime's int16 pair sums on x86 without VNNI
    assert np.abs(weight.astype(np.int32)).max() == 64
    # float32 at the edges, as the quantizer leaves them
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    optimized = tmp_path / "optimized.onnx"
    _session(model.SerializeToString(), str(optimized))
    assert "QLinearConv" in [n.op_type for n in onnx.load(str(optimized)).graph.node]


@pytest.mark.parametrize("spec", FP16_SPECS, ids=lambda s: f"{s.kind}-{s.act}")
def test_fp16_matches_the_float_reference(spec: OpSpec) -> None:
    graph = spec_graph(spec.with_(dtype="float16"))
    model = to_onnx(graph)
    inputs = graph.random_inputs(1)
    ref = run_reference(graph, inputs)
    got = _run(model, inputs)
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() <= 2e-3 * np.abs(ref).max()


def test_fp16_model_computes_in_half_with_float_edges() -> None:
    chain = [S("conv", h=8, w=8, cin=3, cout=8, kernel=3, act="relu", dtype="float16"),
             S("pool", h=8, w=8, cin=8, pool="gavg", dtype="float16"),
             S("linear", cin=8, cout=4, dtype="float16")]
    model = onnx.load_from_string(to_onnx(chain_graph(chain)))
    onnx.checker.check_model(model)
    nodes = list(model.graph.node)
    assert nodes[0].op_type == "Cast" and nodes[-1].op_type == "Cast"  # in execution order
    floats = {t.data_type for t in model.graph.initializer if t.data_type in
              (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    assert floats == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_float32_graphs_are_written_as_before() -> None:
    graph = spec_graph(INT8_SPECS[0])
    assert to_onnx(graph) == in_precision(to_onnx(graph), "float32")
    assert not {n.op_type for n in onnx.load_from_string(to_onnx(graph)).graph.node} \
        & {"QuantizeLinear", "Cast"}


@pytest.mark.parametrize("spec, op", [(S("act", h=5, w=5, cin=6, act="relu"), "Relu"),
                                      (S("act", h=5, w=5, cin=6, act="hswish"), "HardSwish"),
                                      (S("reduce", h=5, w=6, cin=8, axes="1"), "ReduceMean")])
def test_kernels_the_quantizer_leaves_in_float_are_refused_by_name(spec: OpSpec,
                                                                    op: str) -> None:
    with pytest.raises(ExportError, match=rf"INT8 \(qdq\) export of graph of {spec.kind}: "
                                          rf"ONNX Runtime's quantizer leaves {op} in float"):
        to_onnx(spec_graph(spec.with_(dtype="int8")))


def test_a_network_may_keep_float_ops_when_not_strict() -> None:
    graph = spec_graph(S("act", h=5, w=5, cin=6, act="hswish"))
    model = onnx.load_from_string(quantize(to_onnx(graph), strict=False))
    assert [n.op_type for n in model.graph.node] == ["HardSwish"]


def test_the_quantizer_notices_users_cannot_act_on_are_not_printed(
        caplog: pytest.LogCaptureFixture) -> None:
    # a LayerNorm's 1-D scale under per-channel quantization: ONNX Runtime logs "Axis 1 is
    # out-of-range for weight" on the root logger and quantizes it per tensor, as it should
    data = to_onnx(spec_graph(S("layernorm", tokens=5, cin=16)))
    with caplog.at_level("INFO"):
        model = onnx.load_from_string(quantize(data, strict=False))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert "out-of-range" not in caplog.text and "pre-processing" not in caplog.text


def test_quantization_is_deterministic_and_formats_are_checked() -> None:
    data = to_onnx(spec_graph(INT8_SPECS[0]))
    assert quantize(data) == quantize(data)
    assert quantize(data, seed=1) != quantize(data)  # the calibration inputs differ
    assert set(QUANT_FORMATS) == {"qdq", "qoperator", "dynamic"}
    with pytest.raises(ConfigError, match="unknown quantization format 'int4'"):
        quantize(data, quant_format="int4")
    with pytest.raises(ExportError, match="no precision 'bfloat16'"):
        in_precision(data, "bfloat16")
    assert to_float16(data) == to_float16(data)
