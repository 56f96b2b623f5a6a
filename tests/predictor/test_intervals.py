"""Prediction intervals (predictor/intervals.py, LatencyPredictor.interval): coverage at the
nominal level for a predictor whose networks carry known noise, widening for untrained and
out-of-range kernels and few calibration networks, the fit storing its residual quantiles
and the save/load round trip, predictors saved before intervals, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from cli_run import run

from latbench.bench.ops import OpSpec, decompose
from latbench.bench.spaces import get_space
from latbench.errors import ConfigError
from latbench.predictor.features import kernel_cost
from latbench.predictor.intervals import (
    DEFAULT_KERNEL_SPREAD,
    FEW_NETWORKS,
    check_level,
    key_digest,
    network_interval,
    ratio_quantiles,
)
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.model_level import solve_composition
from latbench.predictor.models import XGBoostKernelPredictor

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO / "datasets" / "xeon-2core-onnxruntime-1t-nasbench-macro"
OLD = REPO / "tests" / "data" / "predictors"
NOISE = 0.05  # log-normal sigma of the synthetic networks' measurement


def true_ms(spec: OpSpec) -> float:
    return 0.003 + 2e-9 * kernel_cost(spec).flops


@pytest.fixture(scope="module")
def space():
    return get_space("nasbench-macro", resolution=16)


@pytest.fixture(scope="module")
def noisy(space) -> tuple[LatencyPredictor, np.random.Generator]:
    """Kernels fitted on exact made-up latencies; the composition calibrated on 80 networks
    measured with log-normal noise of NOISE (what a network's interval must cover)."""
    specs = space.layer_specs()
    specs = list({s.key(): s for s in [*specs, *(p for s in specs for p in decompose(s))]}
                 .values())
    model = XGBoostKernelPredictor(n_estimators=60, max_depth=4, n_jobs=1)
    model.fit(specs, [true_ms(s) for s in specs])
    rng = np.random.default_rng(7)
    networks = []
    for _ in range(80):
        kernels = space.ops(space.sample(rng))
        measured = (sum(true_ms(k) for k in kernels) + 0.01) * math.exp(rng.normal(0, NOISE))
        networks.append((kernels, measured))
    composition = solve_composition(model, networks, 0.01)
    predictor = LatencyPredictor.from_kernels(model, call_overhead_ms=0.01,
                                              composition=composition)
    predictor.kernel_residuals_ = {}
    predictor.trained_kernels_ = frozenset(key_digest(s.key()) for s in specs)
    return predictor, rng


@pytest.mark.parametrize("level", [0.9, 0.5])
def test_intervals_cover_the_truth_at_their_level(space, noisy, level: float) -> None:
    predictor, rng = noisy
    inside, n = 0, 400
    for _ in range(n):
        kernels = space.ops(space.sample(rng))
        truth = (sum(true_ms(k) for k in kernels) + 0.01) * math.exp(rng.normal(0, NOISE))
        prediction = predictor.predict(kernels, interval_level=level)
        low, high = prediction.interval_ms
        assert low < prediction.predicted_ms < high and prediction.interval_level == level
        inside += low <= truth <= high
    # within three standard errors of the level (split conformal: a little above it)
    assert abs(inside / n - level) <= 3 * math.sqrt(level * (1 - level) / n) + 0.02, inside


def test_untrained_out_of_range_kernels_and_few_networks_widen() -> None:
    composition = ratio_quantiles(np.exp(np.random.default_rng(0).normal(0, 0.05, 200)),
                                  np.ones(200))
    noisy_conv = ratio_quantiles(np.exp(np.random.default_rng(1).normal(0, 0.3, 500)),
                                 np.ones(500))

    def width(trained: bool, coverage: float | None = 1.0, networks=composition,
              kernels=None) -> float:
        low, high = network_interval(1.0, [("conv", 0.6, trained), ("add", 0.4, trained)],
                                     coverage, {"conv": noisy_conv} if kernels is None
                                     else kernels, networks, 0.9)
        return math.log(high / low)

    base = width(True)
    assert base == pytest.approx(2 * 1.645 * 0.05, rel=0.25)  # the networks' spread alone
    assert width(False) > base * 2  # conv's out-of-fold error and add's default spread
    assert width(True, coverage=0.0) == pytest.approx(3 * base)  # OUT_OF_RANGE_WIDEN 2
    assert width(True, coverage=None) == pytest.approx(base)
    few = {**composition, "n": FEW_NETWORKS // 4}
    assert width(True, networks=few) > 1.9 * base
    # a kind without out-of-fold residuals counts DEFAULT_KERNEL_SPREAD
    lone = network_interval(1.0, [("add", 1.0, False)], 1.0, {}, None, 0.9)
    assert lone == pytest.approx((math.exp(-math.hypot(0.1, DEFAULT_KERNEL_SPREAD)),
                                  math.exp(math.hypot(0.1, DEFAULT_KERNEL_SPREAD))))


@pytest.mark.parametrize("level", [0, 1, -0.5, 1.5, "x", math.nan])
def test_levels_outside_zero_one_are_refused(level) -> None:
    with pytest.raises(ConfigError, match="interval level must be"):
        check_level(level)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    predictor = LatencyPredictor("xgboost", {"n_estimators": 60, "n_jobs": 1}).fit(DATASET)
    return predictor.save(tmp_path_factory.mktemp("intervals") / "predictor")


def test_fit_stores_residual_quantiles_and_they_survive_save_and_load(fitted: Path) -> None:
    manifest = json.loads((fitted / "manifest.json").read_text())
    residuals = manifest["kernel_residuals"]
    assert set(residuals) == {k for k, v in manifest["fit_summary"]["kinds"].items()
                              if v["cv"] and "skipped" not in v["cv"]}
    for entry in residuals.values():
        assert entry["n"] > 0 and entry["log_ratio"] == sorted(entry["log_ratio"])
    loo = manifest["composition"]["loo_ratio_quantiles"]
    assert loo["n"] == manifest["composition"]["networks"]
    assert manifest["trained_kernels"] and all(len(d) == 16 for d in manifest["trained_kernels"])
    loaded = LatencyPredictor.load(fitted)
    space = get_space("nasbench-macro")
    arch = space.sample(np.random.default_rng(3))
    prediction = loaded.predict(space.ops(arch))
    low, high = prediction.interval_ms
    assert low < prediction.predicted_ms < high and prediction.interval_level == 0.9
    assert high / low < 1.5  # the space's kernels were measured: the networks' spread rules
    assert prediction.to_json()["interval_ms"] == [low, high]
    wider = loaded.predict(space.ops(arch), interval_level=0.99).interval_ms
    assert wider[0] <= low and wider[1] >= high


@pytest.mark.parametrize("name", ["v1/xgboost", "v2/xgboost", "v2/rf", "v2/linear"])
def test_old_predictors_load_and_predict_without_an_interval(name: str) -> None:
    predictor = LatencyPredictor.load(OLD / name)
    prediction = predictor.predict(OLD / "tiny.onnx")
    assert prediction.predicted_ms > 0
    assert prediction.interval_ms is None and prediction.interval_level is None
    assert "refit" in prediction.interval_note and not predictor.has_intervals
    assert prediction.to_json()["interval_ms"] is None


def test_predict_command_prints_and_carries_the_interval(capsys, fitted: Path) -> None:
    model = str(OLD / "tiny.onnx")
    code, out, err = run(capsys, "predict", model, "--predictor", str(fitted), "--json",
                         "--interval-level", "0.8")
    assert code == 0, err
    data = json.loads(out)
    low, high = data["interval_ms"]
    assert low < data["predicted_ms"] < high and data["interval_level"] == 0.8
    code, out, err = run(capsys, "predict", model, "--predictor", str(fitted))
    assert code == 0, err
    assert "90% interval" in out and f"{data['predicted_ms']:.4f} ms" in out
    code, out, err = run(capsys, "predict", model, "--predictor", str(OLD / "v2" / "xgboost"))
    assert code == 0 and "no interval:" in out
    for bad in ("0", "1", "-0.2", "90"):
        code, out, err = run(capsys, "predict", model, "--predictor", str(fitted),
                             "--interval-level", bad)
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1 and "--interval-level must be in (0, 1)" in err


def test_eval_reports_how_often_the_measured_latency_fell_inside(tmp_path: Path) -> None:
    import pandas as pd

    from latbench.bench.campaign import CampaignSummary
    from latbench.predictor.evaluate import (
        EvaluationReport,
        error_metrics,
        interval_metrics,
        write_report,
    )

    table = pd.DataFrame({
        "network": list("abcd"), "family": ["f"] * 4,
        "predicted_ms": [1.0, 1.0, 2.0, 2.0], "measured_ms": [1.05, 1.2, 1.9, 2.5],
        "interval_low_ms": [0.9, 0.9, 1.8, 1.8], "interval_high_ms": [1.1, 1.1, 2.2, 2.2]})
    metrics = interval_metrics(table)
    assert metrics == {"n": 4.0, "inside": 0.5, "mean_width_pct": pytest.approx(20.0),
                       "above": 0.5}
    assert interval_metrics(table.assign(interval_low_ms=math.nan)) is None
    table["error_pct"] = 100 * (table["predicted_ms"] / table["measured_ms"] - 1)
    errors = {"f": error_metrics(table["predicted_ms"], table["measured_ms"])}
    report = EvaluationReport(table, errors, "min_ms", CampaignSummary(),
                              intervals={"f": metrics}, interval_level=0.9)
    paths = write_report(report, tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert saved["intervals"] == {"f": metrics} and saved["interval_level"] == 0.9
    text = paths["markdown"].read_text()
    assert "## Prediction intervals" in text and "| f | 4 | 50.0% | 50.0% | 20.0 |" in text
