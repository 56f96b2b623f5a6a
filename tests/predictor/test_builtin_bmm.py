"""What `latbench predict` tells a user of an INT8 transformer on LiteRT XNNPACK: the attention
products whose right operand's zero point is not 0 run in LiteRT's builtin kernel, their share
of the prediction, and the model's prediction with them in the form XNNPACK takes - counted
from the file's own zero points, priced by the predictor, said only where it applies."""

from __future__ import annotations

import json

import pytest
from cli_run import run

from latbench.bench.export.graph import spec_graph
from latbench.bench.export.to_tflite import to_tflite
from latbench.bench.ops import BMM_SYMMETRIC, OpSpec
from latbench.bench.platform import Platform
from latbench.predictor.builtin_bmm import builtin_bmm
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.lut import LookupTablePredictor

QK = OpSpec("bmm", heads=2, tokens=20, cin=16, cout=20, dtype="int8")
AV = OpSpec("bmm", heads=2, tokens=20, cin=20, cout=16, dtype="int8")
LINEAR = OpSpec("tlinear", tokens=20, cin=32, cout=32, dtype="int8")
# builtin 10x the XNNPACK form, as measured for products of this size
TABLE = {QK: 0.50, QK.with_(mode=BMM_SYMMETRIC): 0.05, AV: 0.40,
         AV.with_(mode=BMM_SYMMETRIC): 0.04, LINEAR: 0.10}


def predictor(platform: Platform) -> LatencyPredictor:
    table = LookupTablePredictor.from_entries({s.key(): ms for s, ms in TABLE.items()})
    return LatencyPredictor.from_kernels(table, call_overhead_ms=0.01,
                                         info={"platform": platform.to_json(),
                                               "device": platform.device,
                                               "runtime": platform.runtime})


LITERT_INT8 = Platform("box", "litert", "xnnpack", "int8")


def test_builtin_products_are_counted_and_priced_in_both_forms():
    p = predictor(LITERT_INT8)
    prediction = p.predict([QK, AV.with_(mode=BMM_SYMMETRIC), LINEAR, QK])
    advice = builtin_bmm(p, prediction, "tflite")
    assert (advice.builtin, advice.total) == (2, 3)
    assert advice.builtin_ms == pytest.approx(1.0)
    assert advice.predicted_ms == pytest.approx(0.01 + 0.5 + 0.04 + 0.1 + 0.5)
    assert advice.symmetric_ms == pytest.approx(0.01 + 0.05 + 0.04 + 0.1 + 0.05)
    assert "2 of the model's 3 INT8 attention products" in advice.text()


@pytest.mark.parametrize("platform", [Platform("box", "onnxruntime", precision="int8"),
                                      Platform("box", "litert", "builtin", "int8")],
                         ids=["onnxruntime", "litert-builtin"])
def test_nothing_is_said_where_the_form_does_not_decide_the_kernel(platform):
    p = predictor(platform)
    assert builtin_bmm(p, p.predict([QK, LINEAR]), "tflite") is None


def test_nothing_is_said_when_every_product_is_delegated():
    p = predictor(LITERT_INT8)
    assert builtin_bmm(p, p.predict([QK.with_(mode=BMM_SYMMETRIC), LINEAR]),
                       "tflite") is None


def test_nothing_is_said_of_an_onnx_file():
    """An ONNX file holds no LiteRT zero points (its converter decides them)."""
    p = predictor(LITERT_INT8)
    assert builtin_bmm(p, p.predict([QK, LINEAR]), "onnx") is None


def test_predict_reads_the_zero_point_off_a_tflite_file(tmp_path, capsys):
    folder = predictor(LITERT_INT8).save(tmp_path / "predictor")
    model = tmp_path / "qk.tflite"
    model.write_bytes(to_tflite(spec_graph(QK)))  # right operand's zero point not 0
    code, out, _ = run(capsys, "predict", str(model), "--predictor", str(folder))
    assert code == 0
    assert "LiteRT runs 1 of the model's 1 INT8 attention products" in out
    assert "about 0.06 ms" in out
    code, out, _ = run(capsys, "predict", str(model), "--predictor", str(folder), "--json")
    assert json.loads(out)["builtin_int8_bmm"] == {
        "builtin": 1, "total": 1, "builtin_ms": pytest.approx(0.5),
        "symmetric_predicted_ms": pytest.approx(0.06)}
    delegated = tmp_path / "qk_symmetric.tflite"
    delegated.write_bytes(to_tflite(spec_graph(QK.with_(mode=BMM_SYMMETRIC))))
    code, out, _ = run(capsys, "predict", str(delegated), "--predictor", str(folder), "--json")
    assert json.loads(out)["builtin_int8_bmm"] is None
