"""TFLite INT8 (full-integer) and FP16-weight exports: numerics in the real LiteRT interpreter
(XNNPACK and the builtin kernels) against the float64 reference, the model structure the
TFLite converter writes and the int8 kernels check, and what XNNPACK actually delegates."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_export import RESOLVERS, _network, _op_names, run_tflite

from latbench.bench.export.graph import Layer, LayerGraph, chain_graph, spec_graph
from latbench.bench.export.reference import run_reference
from latbench.bench.export.tflite_precision import (
    _pinned_zero_point,
    affine,
    calibrate,
    quantize,
)
from latbench.bench.export.to_tflite import to_tflite
from latbench.bench.ops import ACTIVATIONS, BMM_SYMMETRIC, MORE_ACTIVATIONS, OpSpec
from latbench.bench.runners.litert import xnnpack_delegation
from latbench.bench.tflite_kernels import tflite_to_kernels
from latbench.bench.tflite_model import read_tflite
from latbench.errors import ExportError

s = OpSpec
# Every kind TFLite runs in int8, the ones of CNNs first (and each activation).
INT8_SPECS = [
    s("conv", h=8, w=8, cin=3, cout=8, kernel=3),
    s("conv", h=8, w=8, cin=4, cout=8, kernel=3, stride=2, act="relu"),  # PAD + VALID
    s("conv", h=7, w=9, cin=4, cout=6, kernel=3, stride=2, act="relu6"),  # SAME
    s("conv", h=6, w=6, cin=8, cout=16, kernel=1, batch=2, act="hswish"),
    s("conv", h=8, w=8, cin=8, cout=12, kernel=3, stride=2, groups=4, act="swish"),
    s("conv", h=9, w=9, cin=4, cout=6, kernel=3, dilation=2, stride=2, act="relu"),
    s("dwconv", h=8, w=8, cin=8, kernel=3, stride=2),
    s("dwconv", h=7, w=7, cin=8, kernel=3, stride=2, act="relu6"),
    s("dwconv", h=10, w=10, cin=4, kernel=5, stride=2, act="hswish"),
    s("mbconv", h=8, w=8, cin=8, cout=8, kernel=3, expand=4, se=True, act="relu6"),
    s("mbconv", h=8, w=8, cin=8, cout=12, kernel=5, stride=2, expand=3, act="swish"),
    s("mbconv", h=7, w=7, cin=8, cout=16, kernel=3, stride=2, expand=6, se=True, act="hswish"),
    s("linear", cin=16, cout=10),
    s("linear", cin=12, cout=5, act="relu", batch=2),
    s("pool", h=8, w=8, cin=4, pool="avg", kernel=3, stride=2, pad=1),
    s("pool", h=8, w=8, cin=4, pool="max", kernel=3, stride=2, pad=1),  # PADV2 + VALID
    s("pool", h=7, w=7, cin=4, pool="max", kernel=3, stride=2, pad=1),  # SAME
    s("pool", h=6, w=5, cin=6, pool="gavg", batch=2),
    s("add", h=5, w=5, cin=8),
    s("add", h=5, w=5, cin=8, act="relu6"),
    s("mul", h=5, w=5, cin=8, batch=2),
    s("se", h=6, w=6, cin=16, expand=0.25),
    s("se", h=6, w=6, cin=16, expand=0.5, act="hsigmoid"),
    s("concat", h=5, w=5, cin=12, groups=3),
    s("concat", h=6, w=6, cin=8, groups=2, axes="2"),
    # the transformer kinds and the rest of the common op set
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
INT8_SPECS += [s("act", h=5, w=5, cin=6, act=a) for a in ACTIVATIONS + MORE_ACTIVATIONS]
INT8_SPECS = [spec.with_(dtype="int8") for spec in INT8_SPECS]
INT8_SPECS += [s("bmm", heads=3, tokens=5, cin=4, cout=5, batch=2, dtype="int8",
                 mode=BMM_SYMMETRIC)]  # the right operand at zero point 0
# Output quantization steps an int8 kernel may be off the float64 reference when calibrated on
# the inputs it is tested on: the output's own rounding plus its inputs' and weights' rounding
# carried through. Mish is EXP -> ADD -> LOG -> TANH -> MUL in int8, where EXP's range leaves
# small values a few levels.
STEPS = 4.0
STEPS_OF = {"mish": 10.0}
# The two int8 implementations round requantization differently (XNNPACK in float, the builtin
# kernels in fixed point): whole output steps they may differ by.
STEPS_BETWEEN = 2


def _output_quantization(model: bytes) -> tuple[float, int]:
    """(scale, zero point) of the int8 tensor the output DEQUANTIZE reads."""
    sg = read_tflite(model).main
    (dequantize,) = [op for op in sg.operators if op.outputs[0] == sg.outputs[0]]
    assert dequantize.op == "DEQUANTIZE"
    q = sg.tensors[dequantize.inputs[0]].quantization
    assert q is not None and not q.per_channel
    return q.scale[0], q.zero_point[0]


@pytest.mark.parametrize("spec", INT8_SPECS, ids=[spec.key() for spec in INT8_SPECS])
def test_int8_spec_matches_the_reference_within_a_few_steps(spec: OpSpec) -> None:
    graph = spec_graph(spec, seed=3)
    inputs = graph.random_inputs(11)
    model = to_tflite(graph, calibration=[inputs])
    step, _ = _output_quantization(model)
    ref = run_reference(graph, inputs)
    assert np.ptp(ref) > 10 * step, "the output varies over too few steps to test anything"
    outs = {r: run_tflite(model, inputs, r, graph).astype(np.float64) for r in RESOLVERS}
    bound = STEPS_OF.get(spec.act, STEPS)
    for resolver, out in outs.items():
        err = float(np.abs(out - ref).max()) / step
        assert err <= bound, f"{resolver}: {err:.2f} output steps off the reference"
    between = round(float(np.abs(outs["xnnpack"] - outs["builtin"]).max()) / step)
    assert between <= STEPS_BETWEEN, f"XNNPACK and builtin int8 differ by {between} steps"


def _chain_specs() -> list[OpSpec]:
    return [s("conv", h=16, w=16, cin=3, cout=8, kernel=3, stride=2, act="relu6"),
            s("dwconv", h=8, w=8, cin=8, kernel=5, act="hswish"),
            s("mbconv", h=8, w=8, cin=8, cout=8, kernel=3, expand=3, act="swish", se=True),
            s("conv", h=8, w=8, cin=8, cout=8, kernel=3, groups=4, act="swish"),
            s("pool", h=8, w=8, cin=8, pool="max", kernel=3, stride=2, pad=1),
            s("pool", h=4, w=4, cin=8, pool="gavg"),
            s("linear", cin=8, cout=5, act="relu")]


def test_int8_network_with_the_default_calibration() -> None:
    """Calibrated on other random inputs than it is tested on, as a campaign exports it."""
    for graph in (_network(), chain_graph([spec.with_(dtype="int8") for spec in
                                           _chain_specs()], seed=2)):
        graph.dtype = "int8"
        model = to_tflite(graph)
        for seed in (11, 12):
            inputs = graph.random_inputs(seed)
            ref = run_reference(graph, inputs)
            for resolver in RESOLVERS:
                out = run_tflite(model, inputs, resolver, graph)
                err = float(np.abs(out - ref).max()) / float(np.ptp(ref))
                assert err < 0.08, f"{resolver}: error {err:.3f} of the output range"


# --- INT8 structure ----------------------------------------------------------------------------
def _tensor(model: Any, index: int) -> Any:
    return model.main.tensors[index]


def test_int8_conv_is_written_as_the_converter_writes_it() -> None:
    from ai_edge_litert import schema_py_generated as schema

    graph = spec_graph(s("conv", h=8, w=8, cin=4, cout=6, kernel=3, act="relu6", dtype="int8"))
    data = to_tflite(graph)
    model = read_tflite(data)
    sg = model.main
    assert [op.op for op in sg.operators] == ["QUANTIZE", "CONV_2D", "DEQUANTIZE"]
    assert [op.version for op in sg.operators] == [1, 3, 2]
    quant, conv, dequant = sg.operators
    # float inputs and outputs keep the graph's names; QUANTIZE and DEQUANTIZE glue them
    (x,), (y,) = sg.inputs, sg.outputs
    assert (_tensor(model, x).dtype, _tensor(model, x).name) == ("FLOAT32", graph.inputs[0])
    assert (_tensor(model, y).dtype, _tensor(model, y).name) == ("FLOAT32", graph.output_name)
    assert quant.inputs == (x,) and dequant.outputs == (y,)
    data_in, filt, bias = (_tensor(model, i) for i in conv.inputs)
    out = _tensor(model, conv.outputs[0])
    assert data_in.index == quant.outputs[0] and out.index == dequant.inputs[0]
    for t in (data_in, out):
        assert t.dtype == "INT8" and len(t.quantization.scale) == 1
    # relu6's output range [0, 6] at most: zero sits at -128
    assert out.quantization.zero_point == (-128,)
    # per-channel symmetric weights on the output-channel axis, each channel using +-127
    q = filt.quantization
    assert filt.dtype == "INT8" and q.axis == 0 and len(q.scale) == 6
    assert q.zero_point == (0,) * 6
    weights = model.constant(filt)
    assert np.abs(weights).reshape(6, -1).max(axis=1).tolist() == [127] * 6
    assert weights.min() >= -127
    expected = graph.layers[0].weights["weight"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(weights * np.asarray(q.scale)[:, None, None, None], expected,
                               atol=max(q.scale) / 2 + 1e-7)
    # int32 bias at input scale x weight scale
    assert bias.dtype == "INT32" and bias.quantization.zero_point == (0,) * 6
    np.testing.assert_allclose(bias.quantization.scale,
                               data_in.quantization.scale[0] * np.asarray(q.scale), rtol=1e-6)
    np.testing.assert_allclose(model.constant(bias) * np.asarray(bias.quantization.scale),
                               graph.layers[0].weights["bias"], atol=max(bias.quantization.scale))
    # no operator code left over from the float model
    m = schema.ModelT.InitFromPackedBuf(data, 0)
    used = {(m.operatorCodes[op.opcodeIndex].builtinCode, m.operatorCodes[op.opcodeIndex].version)
            for op in m.subgraphs[0].operators}
    assert sorted((c.builtinCode, c.version) for c in m.operatorCodes) == sorted(used)


@pytest.mark.parametrize(("spec", "op", "axis", "version"), [
    (s("dwconv", h=8, w=8, cin=8, kernel=3, act="relu"), "DEPTHWISE_CONV_2D", 3, 3),
    (s("conv", h=8, w=8, cin=4, cout=8, kernel=3, groups=4), "DEPTHWISE_CONV_2D", 3, 3),
    (s("conv", h=8, w=8, cin=8, cout=8, kernel=3, groups=2), "CONV_2D", 0, 6),
    (s("convt", h=4, w=4, cin=4, cout=8, kernel=2, stride=2), "TRANSPOSE_CONV", 0, 3),
])
def test_int8_weights_per_output_channel(spec: OpSpec, op: str, axis: int,
                                         version: int) -> None:
    model = read_tflite(to_tflite(spec_graph(spec.with_(dtype="int8"))))
    (layer,) = [o for o in model.main.operators if o.op == op]
    assert layer.version == version
    filt = _tensor(model, layer.inputs[1])
    cout = filt.shape[axis]
    assert filt.dtype == "INT8" and filt.quantization.axis == axis
    assert len(filt.quantization.scale) == cout == spec.cout
    bias = _tensor(model, layer.inputs[3 if op == "TRANSPOSE_CONV" else 2])
    assert bias.dtype == "INT32" and len(bias.quantization.scale) == cout


def test_int8_fully_connected_has_one_weight_scale() -> None:
    model = read_tflite(to_tflite(spec_graph(s("linear", cin=16, cout=10, dtype="int8"))))
    (fc,) = [o for o in model.main.operators if o.op == "FULLY_CONNECTED"]
    assert fc.version == 4
    weights, bias = _tensor(model, fc.inputs[1]), _tensor(model, fc.inputs[2])
    assert weights.dtype == "INT8" and len(weights.quantization.scale) == 1
    assert weights.quantization.zero_point == (0,)
    assert bias.dtype == "INT32"
    assert bias.quantization.scale[0] == pytest.approx(
        _tensor(model, fc.inputs[0]).quantization.scale[0] * weights.quantization.scale[0])


@pytest.mark.parametrize(("spec", "op", "fixed"), [
    (s("act", h=4, w=4, cin=4, act="sigmoid"), "LOGISTIC", (1 / 256, -128)),
    (s("act", h=4, w=4, cin=4, act="tanh"), "TANH", (1 / 128, 0)),
    (s("softmax", heads=2, tokens=3, cin=4), "SOFTMAX", (1 / 256, -128)),
], ids=lambda value: value if isinstance(value, str) else None)
def test_int8_fixed_output_quantization(spec: OpSpec, op: str,
                                        fixed: tuple[float, int]) -> None:
    model = read_tflite(to_tflite(spec_graph(spec.with_(dtype="int8"))))
    (found,) = [o for o in model.main.operators if o.op == op]
    q = _tensor(model, found.outputs[0]).quantization
    assert (q.scale[0], q.zero_point[0]) == pytest.approx(fixed)


@pytest.mark.parametrize("spec", [
    s("pool", h=8, w=8, cin=4, pool="max", kernel=3, stride=2, pad=1),
    s("pool", h=8, w=8, cin=4, pool="avg", kernel=3, stride=2, pad=1),
    s("concat", h=5, w=5, cin=12, groups=3),
    s("shuffle", h=4, w=4, cin=8, groups=2),
], ids=lambda spec: f"{spec.kind}-{spec.pool}" if spec.kind == "pool" else spec.kind)
def test_int8_data_movement_keeps_one_quantization(spec: OpSpec) -> None:
    """Pools, pads, concatenation and reshapes share their inputs' quantization (the int8
    kernels refuse to rescale); a max pool's very negative PADV2 fill is no value to cover."""
    model = read_tflite(to_tflite(spec_graph(spec.with_(dtype="int8"))))
    inner = [op for op in model.main.operators if op.op not in ("QUANTIZE", "DEQUANTIZE")]
    params = {(t.quantization.scale, t.quantization.zero_point)
              for op in inner for t in (_tensor(model, i) for i in (*op.inputs, *op.outputs))
              if t.dtype == "INT8"}
    assert len(params) == 1
    ((scale, _),) = params
    assert scale[0] < 10 / 255  # the range of the data (normal inputs), not of a fill value


def test_int8_constants_of_elementwise_operators_are_int8() -> None:
    """The 3 and 1/6 of a hard sigmoid are int8 constants that dequantize to themselves."""
    model = read_tflite(to_tflite(spec_graph(s("act", h=4, w=4, cin=4, act="hsigmoid",
                                                dtype="int8"))))
    values = []
    for op in model.main.operators:
        for i in op.inputs:
            t = _tensor(model, i)
            if t.constant:
                assert t.dtype == "INT8"
                q = t.quantization
                values.append(float((model.constant(t).item() - q.zero_point[0]) * q.scale[0]))
    assert values == pytest.approx([3.0, 1 / 6], rel=1e-6)


def test_affine_quantization_holds_zero_exactly() -> None:
    for lo, hi in ((-3.0, 5.0), (0.5, 2.0), (-2.0, -1.0), (0.0, 0.0)):
        scale, zero = affine(lo, hi)
        assert quantize(np.zeros(1), scale, zero)[0] == zero
        assert -128 <= zero <= 127 and scale > 0
        if hi > lo:
            ends = np.asarray([min(lo, 0.0), max(hi, 0.0)])  # the range widened to hold 0
            grid = (quantize(ends, scale, zero).astype(float) - zero) * scale
            np.testing.assert_allclose(grid, ends, atol=scale / 2)
            assert quantize(ends, scale, zero).tolist() == [-128, 127]


def test_calibration_needs_inputs_and_finite_values() -> None:
    graph = spec_graph(s("act", h=2, w=2, cin=2, act="relu"))
    data = to_tflite(graph)
    with pytest.raises(ExportError, match="at least one set of inputs"):
        calibrate(data, [], [1])
    x = read_tflite(data).main.inputs[0]
    with pytest.raises(ExportError, match="not finite"):
        calibrate(data, [{x: np.full((1, 2, 2, 2), np.inf, np.float32)}], [x])


def test_unknown_precision_is_refused() -> None:
    graph = spec_graph(s("act", h=2, w=2, cin=2, act="relu"))
    bad = LayerGraph(graph.inputs, [Layer("act", graph.inputs, "y", {"act": "relu"})], "y",
                     {**graph.shapes, "y": graph.shapes[graph.inputs[0]]}, dtype="bfloat16")
    with pytest.raises(ExportError, match="no precision 'bfloat16'"):
        to_tflite(bad)


# --- FP16 weights ------------------------------------------------------------------------------
FP16_SPECS = [spec.with_(dtype="float16") for spec in (
    s("conv", h=8, w=8, cin=4, cout=8, kernel=3, stride=2, act="relu"),
    s("dwconv", h=8, w=8, cin=8, kernel=3, act="hswish"),
    s("mbconv", h=8, w=8, cin=8, cout=8, kernel=3, expand=4, se=True, act="relu6"),
    s("linear", cin=16, cout=10),
    s("pool", h=8, w=8, cin=4, pool="max", kernel=3, stride=2, pad=1),
    s("act", h=5, w=5, cin=6, act="hsigmoid"),
    s("layernorm", tokens=5, cin=16, batch=2),
    s("convt", h=5, w=6, cin=4, cout=6, kernel=3, stride=2, pad=1, out_pad=1, act="relu"),
)]


@pytest.mark.parametrize("spec", FP16_SPECS, ids=[spec.key() for spec in FP16_SPECS])
def test_float16_weights_match_the_reference_within_fp16_rounding(spec: OpSpec) -> None:
    graph = spec_graph(spec, seed=3)
    inputs = graph.random_inputs(11)
    ref = run_reference(graph, inputs)
    model = to_tflite(graph)
    for resolver in RESOLVERS:
        out = run_tflite(model, inputs, resolver, graph).astype(np.float64)
        err = float(np.abs(out - ref).max()) / float(np.abs(ref).max())
        assert err < 4e-3, f"{resolver}: relative error {err:.2e}"  # fp16: 2**-11 per weight


def test_float16_weights_are_stored_as_the_converter_stores_them() -> None:
    spec = s("conv", h=8, w=8, cin=64, cout=64, kernel=3, act="relu")
    data32 = to_tflite(spec_graph(spec))
    data16 = to_tflite(spec_graph(spec.with_(dtype="float16")))
    assert len(data16) < 0.55 * len(data32)  # the weights take half the bytes
    model = read_tflite(data16)
    sg = model.main
    assert [op.op for op in sg.operators] == ["DEQUANTIZE", "DEQUANTIZE", "CONV_2D"]
    for dq in sg.operators[:2]:
        half, full = _tensor(model, dq.inputs[0]), _tensor(model, dq.outputs[0])
        assert dq.version == 3
        assert half.dtype == "FLOAT16" and half.constant and model.constant(half) is not None
        assert full.dtype == "FLOAT32" and not full.constant and full.shape == half.shape
    assert not any(t.constant and t.dtype == "FLOAT32" for t in sg.tensors)
    assert all(_tensor(model, i).dtype == "FLOAT32" for i in (*sg.inputs, *sg.outputs))
    assert xnnpack_delegation(data16).complete  # XNNPACK folds the DEQUANTIZEs


def test_float16_model_without_float_constants_is_the_float32_model() -> None:
    spec = s("add", h=4, w=4, cin=8)
    assert to_tflite(spec_graph(spec.with_(dtype="float16"))) == to_tflite(spec_graph(spec))


# --- what XNNPACK delegates ----------------------------------------------------------------------
@pytest.mark.parametrize("spec", [
    s("conv", h=8, w=8, cin=4, cout=8, kernel=3, stride=2, act="relu6"),
    s("dwconv", h=8, w=8, cin=8, kernel=3, act="relu"),
    s("mbconv", h=8, w=8, cin=8, cout=8, kernel=3, expand=4, se=True, act="relu6"),
    s("mbconv", h=8, w=8, cin=8, cout=12, kernel=5, stride=2, expand=3, act="swish"),
    s("linear", cin=16, cout=10, act="relu"),
    s("pool", h=7, w=7, cin=4, pool="max", kernel=3, stride=2, pad=1),
    s("pool", h=6, w=5, cin=6, pool="gavg"),
    s("add", h=5, w=5, cin=8, act="relu"),
    s("mul", h=5, w=5, cin=8),
    s("se", h=6, w=6, cin=16, expand=0.5, act="hsigmoid"),
    s("concat", h=5, w=5, cin=12, groups=3),
    s("act", h=5, w=5, cin=6, act="sigmoid"),
    s("act", h=5, w=5, cin=6, act="leakyrelu"),
], ids=lambda spec: spec.key())
def test_xnnpack_delegates_every_int8_operator_of(spec: OpSpec) -> None:
    """A requantization scale out of XNNPACK's range, or a wrong fixed output scale, would
    leave the operator to the builtin kernels silently."""
    data = to_tflite(spec_graph(spec.with_(dtype="int8")))
    delegation = xnnpack_delegation(data)
    assert delegation.complete, f"left to the builtin kernels: {delegation.builtin}"
    assert list(delegation.delegated) == _op_names(data)


@pytest.mark.parametrize("tokens", [20, 64])
def test_an_int8_bmm_is_delegated_by_its_right_operands_zero_point(tokens: int) -> None:
    """XNNPACK takes an int8 BATCH_MATMUL of two computed tensors only when the right operand's
    zero point is 0; calibration decides it in a network (a coin flip of the ranges, 7-20x in
    time), so a kernel's key names the form and its model is written in it, and a model file's
    split reads it back."""
    for mode, builtin in (("", ("BATCH_MATMUL",)), (BMM_SYMMETRIC, ())):
        spec = s("bmm", heads=2, tokens=tokens, cin=16, cout=tokens, dtype="int8", mode=mode)
        data = to_tflite(spec_graph(spec))
        assert xnnpack_delegation(data).builtin == builtin
        sg = read_tflite(data).subgraphs[0]
        (bmm,) = [op for op in sg.operators if op.op == "BATCH_MATMUL"]
        assert (sg.tensors[bmm.inputs[1]].quantization.zero_point[0] == 0) == bool(mode)
        assert [k.key() for k in tflite_to_kernels(data)] == [spec.key()]


def test_a_pinned_zero_point_moves_off_zero_towards_the_larger_end() -> None:
    assert affine(-1.0, 1.0)[1] == 0  # what calibration of a symmetric range gives
    assert _pinned_zero_point(-1.0, 1.0, symmetric=False) == (affine(-1.0, 1.0)[0], -1)
    assert _pinned_zero_point(-1.0, 0.99, symmetric=False)[1] == 1
    assert _pinned_zero_point(-0.5, 2.0, symmetric=True) == (2.0 / 127, 0)
    assert _pinned_zero_point(-0.5, 2.0, symmetric=False) == affine(-0.5, 2.0)


def test_xnnpack_delegation_names_what_it_leaves() -> None:
    """LiteRT's XNNPACK has no int8 HARD_SWISH (a measured "xnnpack" latency of it is the
    builtin kernel's), and takes no PADV2 in any precision."""
    hswish = xnnpack_delegation(to_tflite(spec_graph(s("act", h=4, w=4, cin=4, act="hswish",
                                                       dtype="int8"))))
    assert hswish.builtin == ("HARD_SWISH",)
    assert hswish.delegated == ("QUANTIZE", "DEQUANTIZE")
    padded = xnnpack_delegation(to_tflite(spec_graph(s("pool", h=8, w=8, cin=4, pool="max",
                                                       kernel=3, stride=2, pad=1))))
    assert (padded.delegated, padded.builtin) == (("MAX_POOL_2D",), ("PADV2",))
