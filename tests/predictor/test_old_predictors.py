"""Predictors saved by earlier latbench versions load and predict exactly as they did.

tests/data/predictors/v1 (feature version 1, no baselines) and v2 (feature version 2) hold
predictors written BY THE OLD CODE (commits 3083e21 and da501da, see make_old_predictors.py in
that folder), each with `expected.json`: what the old code predicted for kernels seen and unseen,
for kernel lists of measured networks, and for a small ONNX model split by its fusion rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latbench.bench.ops import OpSpec
from latbench.predictor.io import FORMAT_VERSION, read_manifest
from latbench.predictor.latency_predictor import LatencyPredictor

DATA = Path(__file__).resolve().parents[1] / "data" / "predictors"
FOLDERS = sorted(p.parent for p in DATA.glob("v*/*/manifest.json"))
RTOL = 1e-9


def test_the_fixtures_are_there() -> None:
    names = {f"{p.parent.name}/{p.name}" for p in FOLDERS}
    assert {"v1/xgboost", "v1/linear", "v2/xgboost", "v2/rf", "v2/linear", "v2/lut"} <= names
    for folder in FOLDERS:
        manifest = read_manifest(folder)
        assert manifest["format_version"] == 1  # written before the LatencyPredictor format
        assert manifest["feature_version"] == int(folder.parent.name[1:])
        assert sum(p.stat().st_size for p in folder.rglob("*")) < 300_000


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_old_predictor_predicts_identically(folder: Path, tmp_path: Path) -> None:
    expected = json.loads((folder / "expected.json").read_text())
    predictor = LatencyPredictor.load(folder)
    kernels = [OpSpec.from_key(k["key"]) for k in expected["kernels"]]
    np.testing.assert_allclose(predictor.kernels_.predict(kernels),
                               [k["ms"] for k in expected["kernels"]], rtol=RTOL, atol=0)
    networks = [[OpSpec.from_key(k) for k in net["kernels"]] for net in expected["networks"]]
    np.testing.assert_allclose([predictor.predict(n).predicted_ms for n in networks],
                               [net["predicted_ms"] for net in expected["networks"]],
                               rtol=RTOL, atol=0)
    if "onnx" in expected:
        onnx = predictor.predict(DATA / expected["onnx"]["file"])
        assert [s.key() for s, _ in onnx.kernels] == expected["onnx"]["kernels"]
        assert onnx.predicted_ms == pytest.approx(expected["onnx"]["predicted_ms"], rel=RTOL)
    # what the old manifest said carries over
    manifest = read_manifest(folder)
    assert predictor.call_overhead_ms_ == manifest["call_overhead_ms"]
    assert predictor.safety_margin() == \
        manifest["composition"]["underprediction_p95_loo_pct"] / 100
    assert predictor.calibration_keys == manifest["composition"]["keys"]
    assert (predictor.device, predictor.runtime, predictor.statistic) == (
        manifest["device"], manifest["runtime"], manifest["statistic"])
    assert predictor.run_settings().threads == manifest["run_settings"]["threads"]
    assert predictor.fit_summary_ is None and predictor.out_of_range(kernels) == []

    # saved again by this latbench (the current format), it still predicts the same
    again = LatencyPredictor.load(predictor.save(tmp_path / "again"))
    assert read_manifest(tmp_path / "again")["format_version"] == FORMAT_VERSION
    assert read_manifest(tmp_path / "again")["feature_version"] == manifest["feature_version"]
    np.testing.assert_array_equal([again.predict(n).predicted_ms for n in networks],
                                  [predictor.predict(n).predicted_ms for n in networks])
