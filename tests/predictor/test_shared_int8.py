"""What `latbench predict` tells a user of a QDQ model on ONNX Runtime: the INT8 convs on either
side of a shared int8 tensor run in float, what they add to the prediction, and the model's
prediction with uint8 activations - counted from the file, priced by the predictor's
composition, said only where that composition prices them."""

from __future__ import annotations

import json

import pytest
from cli_run import run

from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.kernels import onnx_to_kernels
from latbench.bench.ops import CONV_SHARED_S8, OpSpec
from latbench.bench.platform import Platform
from latbench.predictor.features import kernel_cost
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.lut import LookupTablePredictor
from latbench.predictor.model_level import SHARED_S8, Composition
from latbench.predictor.shared_int8 import float_int8_convs

# a residual inverted bottleneck: its input is read by the expand conv and by the Add
BLOCK = OpSpec("mbconv", h=16, w=16, cin=32, cout=32, kernel=3, expand=4, dtype="int8")
ORT_INT8 = Platform("box", "onnxruntime", "", "int8")
PER_GFLOP = 20.0


def qdq_kernels(quant_format: str = "qdq") -> tuple[bytes, list[OpSpec]]:
    model = to_onnx(chain_graph([BLOCK]), quant_format=quant_format)
    return model, onnx_to_kernels(model)


def predictor(kernels: list[OpSpec], per_gflop: float = PER_GFLOP) -> LatencyPredictor:
    unmarked = {s.with_(mode="") if s.kind == "conv" else s for s in kernels}
    entries = {}
    for spec in unmarked:
        entries[spec.key()] = 0.01 * (1 + kernel_cost(spec).flops / 1e6)
        if spec.kind == "conv":  # the kernel model never tells the two apart
            entries[spec.with_(mode=CONV_SHARED_S8).key()] = entries[spec.key()]
    composition = Composition(terms={SHARED_S8: per_gflop} if per_gflop else {})
    return LatencyPredictor.from_kernels(
        LookupTablePredictor.from_entries(entries), call_overhead_ms=0.01,
        composition=composition, info={"platform": ORT_INT8.to_json(), "device": "box",
                                       "runtime": "onnxruntime"})


def test_float_convs_are_counted_and_priced_by_the_composition() -> None:
    _, kernels = qdq_kernels()
    marked = [s for s in kernels if s.mode == CONV_SHARED_S8]
    assert len(marked) == 1 and marked[0].cin == BLOCK.cin  # the expand conv reads the input
    p = predictor(kernels)
    prediction = p.predict(kernels)
    advice = float_int8_convs(p, prediction)
    assert advice is not None
    assert (advice.floated, advice.total) == (1, 2)
    assert advice.extra_ms == pytest.approx(PER_GFLOP * kernel_cost(marked[0]).flops / 1e9)
    assert advice.to_json()["uint8_predicted_ms"] == pytest.approx(
        p.predict([s.with_(mode="") for s in kernels]).predicted_ms)
    assert "runs 1 of the model's 2 INT8 convolutions in float" in advice.text()


def test_nothing_is_said_without_float_convs_or_a_price_for_them() -> None:
    _, kernels = qdq_kernels()
    unpriced = predictor(kernels, per_gflop=0.0)
    assert float_int8_convs(unpriced, unpriced.predict(kernels)) is None
    _, uint8 = qdq_kernels("qoperator")  # uint8 activations: nothing shared is signed
    assert not [s for s in uint8 if s.mode]
    p = predictor(uint8)
    assert float_int8_convs(p, p.predict(uint8)) is None


def test_predict_reads_the_shared_tensors_off_an_onnx_file(tmp_path, capsys) -> None:
    model, kernels = qdq_kernels()
    path = tmp_path / "block_int8.onnx"
    path.write_bytes(model)
    folder = predictor(kernels).save(tmp_path / "predictor")
    code, out, _ = run(capsys, "predict", str(path), "--predictor", str(folder))
    assert code == 0
    assert "ONNX Runtime runs 1 of the model's 2 INT8 convolutions in float" in out
    code, out, _ = run(capsys, "predict", str(path), "--predictor", str(folder), "--json")
    found = json.loads(out)["float_int8_convs"]
    assert (found["float"], found["total"]) == (1, 2)
    assert found["extra_ms"] > 0
