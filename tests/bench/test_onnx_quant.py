"""Quantized and float16 ONNX models split into kernels (`bench.onnx_quant` under
`bench.kernels`): ONNX Runtime's own quantizer writes the models (QDQ, QOperator, dynamic), from
latbench's exports and from torch exports of family networks, and the int8 kernels must be the
float32 kernels with their dtype switched (dynamic quantization: Conv / MatMul int8, the rest
float32). Then what the float view keeps: ReLU dropped into an output range, memory in 8 bits,
and quantized ops it cannot read named."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from latbench.bench.export.graph import chain_graph, spec_graph
from latbench.bench.export.quantize import quantize, to_float16
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.kernels import onnx_to_kernels, supported_ops
from latbench.bench.memory import onnx_profile
from latbench.bench.onnx_quant import clamp_of, float_view, is_quantized
from latbench.bench.ops import CONV_SHARED_S8, OpSpec, decompose, timed_alone
from latbench.bench.spaces import get_space
from latbench.errors import UnsupportedModelError

S = OpSpec


def _keys(kernels: list[OpSpec], dtype: str | None = None) -> Counter[str]:
    return Counter((k if dtype is None else k.with_(dtype=dtype)).key() for k in kernels)


@pytest.fixture(scope="module")
def resnet() -> bytes:
    """A ResNet-18-like family network as torch's exporter writes it (the legacy one: fast)."""
    pytest.importorskip("torch")
    from latbench.bench.families import sample_networks

    (net,) = sample_networks("resnet", 1, np.random.default_rng(0))
    return net.to_onnx(dynamo=False)


@pytest.mark.parametrize("quant_format", ["qdq", "qoperator"])
def test_a_statically_quantized_network_parses_into_its_int8_kernels(
        resnet: bytes, quant_format: str) -> None:
    model = quantize(resnet, quant_format=quant_format, strict=False)
    ops = {n.op_type for n in onnx.load_from_string(model).graph.node}
    if quant_format == "qdq":
        assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Add"} <= ops
        assert "Relu" not in ops  # dropped into the output ranges by the quantizer
    else:
        assert {"QLinearConv", "QLinearAdd", "QLinearGlobalAveragePool", "QGemm"} <= ops
    fp32 = onnx_to_kernels(resnet)
    int8 = onnx_to_kernels(model)
    assert any(k.act == "relu" for k in fp32)
    # the same kernels (the quantizer may order parallel branches differently), the convs on
    # either side of a shared int8 tensor marked (test_shared_int8_convs_are_the_ones_...)
    assert _keys([timed_alone(k) for k in int8]) \
        == _keys(fp32, "int8")
    shared = [k for k in int8 if k.mode == CONV_SHARED_S8]
    assert bool(shared) == (quant_format == "qdq")  # QOperator activations are uint8


def _ort_float_convs(model: bytes) -> int:
    """How many Conv nodes ONNX Runtime's CPU provider leaves in float in `model`."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp, "optimized.onnx"))
        options.log_severity_level = 3
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    return sum(n.op_type == "Conv" for n in optimized.graph.node)


@pytest.mark.parametrize("family", ["resnet", "mobilenetv2", "resnet50"])
def test_shared_int8_convs_are_the_ones_onnx_runtime_runs_in_float(family: str) -> None:
    """The split marks exactly as many convs `CONV_SHARED_S8` as ONNX Runtime keeps in float
    (a signed int8 tensor with several readers is not turned into uint8 on x86), none where
    the activations are uint8 (QOperator), and the mark reaches only int8 convs."""
    pytest.importorskip("torch")
    from latbench.bench.families import sample_networks

    (net,) = sample_networks(family, 1, np.random.default_rng(3))
    source = net.to_onnx(dynamo=False)
    qdq = quantize(source, quant_format="qdq", strict=False)
    marked = [k for k in onnx_to_kernels(qdq) if k.mode == CONV_SHARED_S8]
    assert marked and all(k.kind == "conv" and k.dtype == "int8" for k in marked)
    assert len(marked) == _ort_float_convs(qdq)
    qoperator = quantize(source, quant_format="qoperator", strict=False)
    assert not [k for k in onnx_to_kernels(qoperator) if k.mode]
    assert _ort_float_convs(qoperator) == 0


def test_a_dynamically_quantized_network_has_int8_convs_and_float_glue(resnet: bytes) -> None:
    model = quantize(resnet, quant_format="dynamic", strict=False)
    ops = {n.op_type for n in onnx.load_from_string(model).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "Cast", "Mul"} <= ops
    fp32, int8 = onnx_to_kernels(resnet), onnx_to_kernels(model)
    assert _keys(int8, "float32") == _keys(fp32)  # biases, rescaling and casts are no kernel
    for kernel in int8:  # only the integer ops run in int8; adds and pools stay float32
        assert kernel.dtype == ("int8" if kernel.kind in ("conv", "linear") else "float32")


def test_a_float16_network_parses_into_float16_kernels(resnet: bytes) -> None:
    model = to_float16(resnet)
    assert _keys(onnx_to_kernels(model)) == _keys(onnx_to_kernels(resnet), "float16")


@pytest.mark.parametrize("quant_format", ["qdq", "qoperator", "fp16"])
def test_a_search_space_chain_keeps_its_kernels_in_order(quant_format: str) -> None:
    space = get_space("nasbench-macro")
    arch = space.sample(np.random.default_rng(4))
    dtype = "float16" if quant_format == "fp16" else "int8"
    specs = [s.with_(dtype=dtype) for s in space.ops(arch)]
    graph = chain_graph(specs)
    model = to_onnx(graph) if dtype == "float16" else to_onnx(graph, quant_format=quant_format)
    # (a residual block's input is a shared int8 tensor in QDQ: its convs are marked)
    assert [timed_alone(k) for k in onnx_to_kernels(model)] \
        == [p for s in specs for p in decompose(s)]
    assert onnx_to_kernels(model, group=True) == specs  # fused blocks read whole, in int8 too


@pytest.mark.parametrize("spec, op", [
    (S("concat", h=5, w=5, cin=8, groups=2), "QLinearConcat"),
    (S("act", h=5, w=5, cin=6, act="sigmoid"), "QLinearSigmoid"),
    (S("act", h=5, w=5, cin=6, act="leakyrelu"), "QLinearLeakyRelu"),
    (S("mul", h=5, w=5, cin=8), "QLinearMul"),
    (S("add", h=5, w=5, cin=8, act="relu"), "QLinearAdd"),
    (S("pool", h=8, w=8, cin=4, pool="avg", kernel=3, stride=2, pad=1), "QLinearAveragePool"),
    (S("softmax", heads=2, tokens=5, cin=6), "QLinearSoftmax"),
    (S("linear", cin=16, cout=10), "QGemm"),
    (S("bmm", heads=2, tokens=5, cin=4, cout=5), "QLinearMatMul"),
    (S("conv", h=8, w=8, cin=4, cout=8, kernel=3, act="relu6"), "QLinearConv"),
], ids=lambda v: v if isinstance(v, str) else v.kind)
def test_qoperator_ops_read_as_the_kernel_they_compute(spec: OpSpec, op: str) -> None:
    spec = spec.with_(dtype="int8")
    graph = spec_graph(spec)
    if spec.act == "relu6":  # inputs large enough that the calibrated range reaches 6
        graph.layers[0].weights["weight"] *= 8
    model = to_onnx(graph, quant_format="qoperator")
    assert op in {n.op_type for n in onnx.load_from_string(model).graph.node}
    assert onnx_to_kernels(model) == [spec]


def test_quantized_ops_count_as_supported() -> None:
    assert {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
            "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear",
            "QLinearAdd"} <= set(supported_ops())


def test_an_output_range_from_zero_is_a_relu_or_relu6() -> None:
    int8, uint8 = np.int8, np.uint8
    assert clamp_of(np.float32(0.1), np.array(-128, int8)) == "relu"
    assert clamp_of(np.float32(6 / 255), np.array(-128, int8)) == "relu6"
    assert clamp_of(np.float32(6 / 255), np.array(0, uint8)) == "relu6"
    assert clamp_of(np.float32(0.1), None) == "relu"  # no zero point: uint8 0
    assert clamp_of(np.float32(0.1), np.array(0, int8)) is None  # symmetric: not clamped
    assert clamp_of(np.float32(0.1), np.array(3, uint8)) is None
    assert clamp_of(np.full(4, 0.1, np.float32), np.zeros(4, uint8)) is None  # per channel


def test_float_models_are_left_as_they_are() -> None:
    model = onnx.load_from_string(to_onnx(spec_graph(S("conv", h=8, w=8, cin=4, cout=8,
                                                       kernel=3))))
    assert not is_quantized(model)
    assert float_view(model).model is model


def test_memory_counts_quantized_tensors_in_one_byte(resnet: bytes) -> None:
    fp32 = onnx_profile(resnet)
    for quant_format in ("qdq", "qoperator"):
        int8 = onnx_profile(quantize(resnet, quant_format=quant_format, strict=False))
        assert int8.unsized == 0
        # int8 weights (int32 biases are a few percent), int8 activations (float input)
        assert 0.25 * fp32.weight_bytes <= int8.weight_bytes < 0.27 * fp32.weight_bytes
        assert int8.activation_peak_bytes < 0.5 * fp32.activation_peak_bytes
    dynamic = onnx_profile(quantize(resnet, quant_format="dynamic", strict=False))
    assert dynamic.weight_bytes < 0.27 * fp32.weight_bytes
    assert dynamic.activation_peak_bytes == fp32.activation_peak_bytes  # activations float


def test_a_quantized_op_the_float_view_cannot_read_is_named() -> None:
    spec = S("pool", h=6, w=6, cin=8, pool="gavg")
    chain = [S("conv", h=6, w=6, cin=8, cout=8, kernel=3), spec]
    model = onnx.load_from_string(quantize(to_onnx(chain_graph(chain)),
                                           quant_format="qoperator"))
    pool = next(n for n in model.graph.node if n.op_type == "QLinearGlobalAveragePool")
    pool.attribute.append(onnx.helper.make_attribute("channels_last", 1))
    with pytest.raises(UnsupportedModelError,
                       match=r"com\.microsoft\.QLinearGlobalAveragePool \(1 node\)"):
        onnx_to_kernels(model)
