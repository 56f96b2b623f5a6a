"""Quantized and FP16-weight TFLite models read into kernels of their precision: every int8
export of a spec or a chain reads back as the float32 export's kernels with dtype int8, the
QUANTIZE / DEQUANTIZE glue is no kernel, float16 weights make float16 kernels; the memory walk
counts int8 tensors at one byte. Short LiteRT campaigns store int8 records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_export import _spec_cases
from test_tflite_model import CHAIN, _Net, schema
from test_tflite_precision import _chain_specs

from latbench.bench.campaign import CampaignConfig, Subject, run_campaign
from latbench.bench.export.graph import chain_graph, spec_graph
from latbench.bench.export.to_tflite import to_tflite
from latbench.bench.memory import tflite_profile
from latbench.bench.ops import OpSpec
from latbench.bench.runners import RunSettings
from latbench.bench.runners.litert import xnnpack_delegation
from latbench.bench.store import LatencyDataset
from latbench.bench.tflite_kernels import parse_tflite, tflite_to_kernels
from latbench.device_agents import local_device
from latbench.errors import UnsupportedModelError

# act "none" is an identity RESHAPE, no kernel in any precision
SPECS = [spec for spec in _spec_cases() if spec.kind != "act" or spec.act != "none"]


def _as(kernels: list[OpSpec], dtype: str) -> list[OpSpec]:
    return [k.with_(dtype=dtype) for k in kernels]


@pytest.mark.parametrize("native_groups", [True, False], ids=["grouped", "split"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.key())
def test_int8_export_reads_back_as_the_float_kernels_in_int8(spec, native_groups):
    got = tflite_to_kernels(to_tflite(spec_graph(spec.with_(dtype="int8")),
                                      native_groups=native_groups))
    float32 = tflite_to_kernels(to_tflite(spec_graph(spec), native_groups=native_groups))
    assert got and got == _as(float32, "int8")


@pytest.mark.parametrize("dtype", ["int8", "float16"])
@pytest.mark.parametrize("group", [False, True], ids=["kernels", "blocks"])
def test_chain_reads_back_in_its_precision(dtype, group):
    for specs in (CHAIN, _chain_specs()):
        graph = chain_graph([spec.with_(dtype=dtype) for spec in specs], seed=4)
        got = tflite_to_kernels(to_tflite(graph), group=group)
        float32 = tflite_to_kernels(to_tflite(chain_graph(specs, seed=4)), group=group)
        assert got == _as(float32, dtype)
        if group:
            assert "mbconv" in [k.kind for k in got]


@pytest.mark.parametrize("spec", [
    OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3, stride=2, act="relu"),
    OpSpec("mbconv", h=8, w=8, cin=8, cout=8, kernel=3, expand=4, se=True, act="relu6"),
    OpSpec("linear", cin=16, cout=10),
    OpSpec("se", h=6, w=6, cin=16, expand=0.5, act="hsigmoid"),
    OpSpec("act", h=5, w=5, cin=6, act="prelu"),
    OpSpec("layernorm", tokens=5, cin=16, batch=2),
    OpSpec("posembed", tokens=5, cin=8, batch=2),
    OpSpec("convt", h=5, w=6, cin=4, cout=6, kernel=3, stride=2, pad=1, out_pad=1),
], ids=lambda spec: spec.kind)
def test_float16_weight_export_reads_back_as_float16_kernels(spec):
    got = tflite_to_kernels(to_tflite(spec_graph(spec.with_(dtype="float16"))))
    assert got == _as(tflite_to_kernels(to_tflite(spec_graph(spec))), "float16")


def test_weightless_kernels_of_a_float16_model_are_float16():
    """The precision is the model's: a pool and an add between fp16-weight convolutions are
    kernels of the FP16-weights platform although they read no weight."""
    specs = [OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3, dtype="float16"),
             OpSpec("pool", h=8, w=8, cin=8, pool="max", kernel=2, stride=2, dtype="float16"),
             OpSpec("add", h=4, w=4, cin=8, dtype="float16")]
    got = tflite_to_kernels(to_tflite(chain_graph(specs)))
    assert [k.key() for k in got] == [k.key() for k in specs]


def test_a_model_mixing_int8_and_float_kernels_keeps_each_precision():
    """A converter leaves an operator it cannot quantize in float between DEQUANTIZE and
    QUANTIZE: the int8 conv is int8, the float activation after it float32."""
    net = _Net()
    x = net.tensor([1, 4, 4, 2], "INT8", quant=([0.1], [3], 0))
    filt = net.tensor([4, 1, 1, 2], "INT8", np.ones((4, 1, 1, 2), np.int8),
                      quant=([0.5] * 4, [0] * 4, 0))
    bias = net.tensor([4], "INT32", np.zeros(4, np.int32), quant=([0.05] * 4, [0] * 4, 0))
    y = net.tensor([1, 4, 4, 4], "INT8", quant=([0.2], [-1], 0))
    net.op("CONV_2D", [x, filt, bias], [y], schema.Conv2DOptionsT(strideH=1, strideW=1))
    f = net.tensor([1, 4, 4, 4])
    net.op("DEQUANTIZE", [y], [f])
    g = net.tensor([1, 4, 4, 4])
    net.op("GELU", [f], [g], schema.GeluOptionsT())
    q = net.tensor([1, 4, 4, 4], "INT8", quant=([0.2], [-1], 0))
    net.op("QUANTIZE", [g], [q])
    kernels = tflite_to_kernels(net.finish([x], [q]))
    assert [k.key() for k in kernels] == [
        OpSpec("conv", h=4, w=4, cin=2, cout=4, kernel=1, dtype="int8").key(),
        OpSpec("act", h=4, w=4, cin=4, act="gelu").key()]


def test_hybrid_quantization_is_still_refused():
    """int8 weights read by float data (dynamic-range quantization) compute in neither."""
    net = _Net()
    x = net.tensor([1, 4, 4, 2])
    filt = net.tensor([4, 1, 1, 2], "INT8", np.ones((4, 1, 1, 2), np.int8),
                      quant=([0.5] * 4, [0] * 4, 0))
    y = net.tensor([1, 4, 4, 4])
    net.op("CONV_2D", [x, filt, net.const(np.zeros(4, np.float32))], [y],
           schema.Conv2DOptionsT(strideH=1, strideW=1))
    with pytest.raises(UnsupportedModelError, match="hybrid quantization"):
        tflite_to_kernels(net.finish([x], [y]))


def test_quantize_glue_is_left_out_of_the_kernels_and_not_counted_as_unsupported():
    model = parse_tflite(to_tflite(spec_graph(OpSpec("add", h=4, w=4, cin=8, dtype="int8"))),
                         allow_partial=True)
    assert [k.kind for k in model.kernels] == ["add"]
    assert not model.partial and not model.problems


# --- memory ------------------------------------------------------------------------------------
def test_memory_walk_counts_int8_tensors_at_one_byte():
    spec = OpSpec("conv", h=16, w=16, cin=8, cout=16, kernel=3)
    float32 = tflite_profile(to_tflite(spec_graph(spec)))
    int8 = tflite_profile(to_tflite(spec_graph(spec.with_(dtype="int8"))))
    weights, bias = 16 * 3 * 3 * 8, 16
    assert float32.weight_bytes == 4 * (weights + bias)
    assert int8.weight_bytes == weights + 4 * bias  # int8 filter, int32 bias
    assert int8.conv_weight_bytes == int8.weight_bytes
    # float input and output (4 bytes) around int8 copies of them (1 byte)
    assert int8.input_bytes == float32.input_bytes and int8.output_bytes == float32.output_bytes
    data_in, data_out = 16 * 16 * 8, 16 * 16 * 16
    assert int8.activation_total_bytes == 4 * (data_in + data_out) + data_in + data_out


def test_memory_walk_of_float16_weights():
    """FP16 weights are held as float32 once dequantized: what the runtime keeps resident."""
    spec = OpSpec("conv", h=16, w=16, cin=8, cout=16, kernel=3)
    float32 = tflite_profile(to_tflite(spec_graph(spec)))
    float16 = tflite_profile(to_tflite(spec_graph(spec.with_(dtype="float16"))))
    assert float16.weight_bytes == float32.weight_bytes
    assert float16.model_size_bytes < float32.model_size_bytes


# --- campaigns -----------------------------------------------------------------------------------
CAMPAIGN_SPECS = [OpSpec("conv", h=16, w=16, cin=8, cout=16, kernel=3, act="relu6", dtype="int8"),
                  OpSpec("dwconv", h=16, w=16, cin=16, kernel=3, stride=2, dtype="int8"),
                  OpSpec("linear", cin=64, cout=32, dtype="int8")]


@pytest.mark.parametrize("delegate", ["xnnpack", "builtin"])
def test_litert_campaign_stores_int8_records(tmp_path: Path, delegate: str) -> None:
    device = local_device(str(tmp_path / "work"))
    dataset = LatencyDataset.create(tmp_path / "ds", {"purpose": "test"})
    settings = RunSettings(threads=1, warmup=1, runs=3, rounds=2, delegate=delegate)
    summary = run_campaign([Subject.op(spec) for spec in CAMPAIGN_SPECS], [device], ["litert"],
                           dataset, CampaignConfig(settings=settings, drift_pause_s=0.01))
    assert (summary.measured, summary.failed) == (3, 0)
    records = dataset.records()
    assert set(records["dtype"]) == {"int8"}
    assert sorted(records["key"]) == sorted(spec.key() for spec in CAMPAIGN_SPECS)
    assert (records["median_ms"] > 0).all()
    assert set(records["settings"]) == {settings.key("litert")}
    if delegate == "xnnpack":  # the records time XNNPACK's int8 kernels, not a fallback
        runner_models = [to_tflite(spec_graph(spec)) for spec in CAMPAIGN_SPECS]
        assert all(xnnpack_delegation(data).complete for data in runner_models)
