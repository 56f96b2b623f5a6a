"""Adaptive sampling: on a synthetic target with a hidden slow region, measuring neighbours of
the worst out-of-fold predictions lowers the held-out error round by round."""

from __future__ import annotations

import numpy as np
import pytest

from latbench.bench.ops import OpSpec
from latbench.errors import PredictorError
from latbench.predictor.adaptive import adaptive_fit, neighbours, out_of_fold, reports_markdown
from latbench.predictor.features import kernel_cost
from latbench.predictor.models import get_predictor_class


def target_ms(spec: OpSpec) -> float:
    """Smooth in FLOPs, except 5x5 kernels on >= 64 input channels run 2.5x slower."""
    base = 0.01 + 1e-9 * kernel_cost(spec).flops
    return base * 2.5 if spec.kernel == 5 and spec.cin >= 64 else base


def random_conv(rng: np.random.Generator) -> OpSpec:
    h = int(rng.choice([8, 16, 32]))
    return OpSpec("conv", h=h, w=h, cin=int(rng.integers(8, 129)), cout=int(rng.integers(8, 129)),
                  kernel=int(rng.choice([1, 3, 5])), stride=int(rng.choice([1, 2])))


def make():
    return get_predictor_class("xgboost")(n_estimators=150, max_depth=4, learning_rate=0.2,
                                          n_jobs=1)


def measure(specs):
    return {s.key(): target_ms(s) for s in specs}


def test_adaptive_rounds_reduce_held_out_error() -> None:
    rng = np.random.default_rng(0)
    start = [random_conv(rng) for _ in range(60)]
    held = [random_conv(rng) for _ in range(200)]
    model, reports, specs, y = adaptive_fit(
        start, [target_ms(s) for s in start], measure, make, rounds=3,
        rng=np.random.default_rng(10), per_point=2, max_new=40,
        holdout=(held, [target_ms(s) for s in held]))
    assert [r.round for r in reports] == [0, 1, 2, 3]
    assert [r.n_train for r in reports] == [60, 100, 140, 180]
    assert all(r.n_new == 40 for r in reports[:-1]) and reports[-1].n_new == 0
    first, last = reports[0], reports[-1]
    assert last.holdout_rmspe_pct < 0.8 * first.holdout_rmspe_pct
    assert last.holdout_within10 > first.holdout_within10
    assert len(specs) == len(y) == 180 and len({s.key() for s in specs}) == 180
    np.testing.assert_array_equal(y, [target_ms(s) for s in specs])
    assert "| 3 | 180 |" in reports_markdown(reports)


def test_default_holdout_and_early_stop_when_nothing_is_flagged() -> None:
    rng = np.random.default_rng(1)
    start = [random_conv(rng) for _ in range(50)]
    linear = get_predictor_class("linear")
    flops = [1e-8 * kernel_cost(s).flops ** 0.9 for s in start]
    # A power law of FLOPs, which the linear-on-FLOPs member fits: nothing is off by 50%.
    _, reports, specs, _ = adaptive_fit(start, flops, measure, linear, rounds=3,
                                        rng=np.random.default_rng(2), threshold=0.5)
    assert len(reports) == 1 and reports[0].n_flagged == 0
    assert reports[0].n_train == 40  # 20% held out
    with pytest.raises(PredictorError, match="rounds"):
        adaptive_fit(start, flops, measure, linear, rounds=-1, rng=np.random.default_rng(0))


def test_out_of_fold_never_sees_the_predicted_kernel() -> None:
    spec = [OpSpec("conv", h=8, w=8, cin=8 + i, cout=8, kernel=3) for i in range(10)]
    y = np.ones(10)
    y[3] = 100.0  # an outlier no other kernel explains
    oof = out_of_fold(get_predictor_class("lut"), spec, y, 5, np.random.default_rng(0))
    assert np.isnan(oof).all()  # a table knows no kernel it was not given
    oof = out_of_fold(get_predictor_class("linear"), spec, y, 5, np.random.default_rng(0))
    assert oof[3] < 50


def test_neighbours_are_new_and_bounded() -> None:
    rng = np.random.default_rng(0)
    flagged = [random_conv(rng) for _ in range(10)]
    known = {s.key() for s in flagged}
    out = neighbours(flagged, 3, np.random.default_rng(1), known, limit=12)
    assert 0 < len(out) <= 12
    assert not known & {s.key() for s in out}
    assert len({s.key() for s in out}) == len(out)


def test_adapt_command_grows_the_dataset_and_writes_a_predictor(tmp_path, capsys) -> None:
    import json

    from latbench.bench.campaign import CampaignConfig, Subject, measure_into_dataset
    from latbench.bench.runners import RunSettings
    from latbench.bench.store import LatencyDataset
    from latbench.cli import main
    from latbench.device_agents import local_device
    from latbench.predictor.io import read_manifest
    from latbench.predictor.latency_predictor import LatencyPredictor

    rng = np.random.default_rng(5)
    specs = {s.key(): s for s in (random_conv(rng) for _ in range(30))}
    config = CampaignConfig(settings=RunSettings(warmup=1, runs=3, rounds=1), drift_retries=0)
    measure_into_dataset([Subject.op(s) for s in specs.values()], local_device(threads=1),
                         "onnxruntime", tmp_path / "data", config)
    before = len(LatencyDataset.open(tmp_path / "data").records())
    capsys.readouterr()
    assert main(["predictor", "adapt", "--data", str(tmp_path / "data"), "--out",
                 str(tmp_path / "pred"), "--rounds", "1", "--max-new", "6", "--threshold",
                 "0.0", "--predictor", "linear", "--drift-tolerance", "10", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["predictor"] == str(tmp_path / "pred") and len(printed["rounds"]) == 2
    after = len(LatencyDataset.open(tmp_path / "data").records())
    assert after == before + 6  # threshold 0 flags every kernel; max-new caps the round
    predictor, manifest = LatencyPredictor.load(tmp_path / "pred"), read_manifest(tmp_path / "pred")
    assert manifest["predictor"] == "linear" and predictor.n_train["conv"] == after
    report = (tmp_path / "pred" / "adapt.md").read_text()
    assert "| 0 | 24 |" in report and "| 1 | 30 |" in report
