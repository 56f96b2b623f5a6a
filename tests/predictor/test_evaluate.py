"""Evaluation: exact metrics on a hand-checked example, the four report files, and evaluate()
end to end on the local CPU (a predictor fitted on a small real dataset, scored on tiny
NAS-Bench-Macro-like chain networks measured with the predictor's own run settings)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latbench.bench.campaign import CampaignConfig, CampaignSummary, Subject, measure_into_dataset
from latbench.bench.ops import OpSpec
from latbench.bench.runners import RunSettings
from latbench.bench.store import LatencyDataset
from latbench.device_agents import local_device
from latbench.errors import ConfigError, PredictorError, UnknownKernelError
from latbench.predictor.evaluate import (
    EvaluationReport,
    NetworkTimes,
    error_metrics,
    evaluate,
    fast_mode_keys,
    log_ticks,
    network_kernels,
    readable_log_axes,
    write_report,
)
from latbench.predictor.latency_predictor import LatencyPredictor

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- metrics ------------------------------------------------------------------------------------
def test_error_metrics_exact() -> None:
    measured = [10.0, 20.0, 30.0, 40.0, 50.0]
    rel = [0.0, 0.08, 0.5, -0.2, -0.12]
    predicted = [m * (1 + r) for m, r in zip(measured, rel, strict=True)]  # 10 21.6 45 32 44
    m = error_metrics(predicted, measured)
    assert m["n"] == 5
    assert m["rmse_ms"] == pytest.approx(math.sqrt((0 + 1.6 ** 2 + 15 ** 2 + 8 ** 2 + 6 ** 2) / 5))
    assert m["rmspe_pct"] == pytest.approx(100 * math.sqrt((0.0064 + 0.25 + 0.04 + 0.0144) / 5))
    assert m["mape_pct"] == pytest.approx(18.0)
    assert m["bias_pct"] == pytest.approx(5.2)
    # |error| <= 5%: 1 network; <= 10%: 2 (0, 8%); <= 15%: 3 (0, 8%, 12%)
    assert (m["within5"], m["within10"], m["within15"]) == (0.2, 0.4, 0.6)
    # predicted ranks 1 2 5 3 4 vs 1 2 3 4 5: sum d^2 = 6 -> 1 - 6*6/(5*24); 2 of 10 pairs swap
    assert m["spearman"] == pytest.approx(0.7)
    assert m["kendall"] == pytest.approx(0.6)


def test_error_metrics_perfect_and_degenerate() -> None:
    perfect = error_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert perfect["rmse_ms"] == perfect["rmspe_pct"] == perfect["bias_pct"] == 0.0
    assert perfect["within5"] == 1.0 and perfect["spearman"] == pytest.approx(1.0)
    # rank correlation is undefined for 2 points or constant values: NaN, not a crash or a 1
    assert math.isnan(error_metrics([1.0, 2.0], [1.0, 2.0])["spearman"])
    assert math.isnan(error_metrics([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["kendall"])
    with pytest.raises(PredictorError, match="3 vs 2"):
        error_metrics([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(PredictorError, match="non-empty"):
        error_metrics([], [])


# --- report files -------------------------------------------------------------------------------
def toy_report() -> EvaluationReport:
    table = pd.DataFrame({
        "network": ["a:1", "a:2", "a:3", "b:1", "b:2", "b:3"],
        "family": ["a", "a", "a", "b", "b", "b"],
        "predicted_ms": [1.0, 2.2, 2.9, 5.0, 7.0, 9.5],
        "measured_ms": [1.1, 2.0, 3.0, 5.0, 8.0, 9.0]})
    table["error_pct"] = 100 * (table["predicted_ms"] / table["measured_ms"] - 1)
    metrics = {f: error_metrics(g["predicted_ms"], g["measured_ms"])
               for f, g in table.groupby("family")}
    metrics["all"] = error_metrics(table["predicted_ms"], table["measured_ms"])
    return EvaluationReport(table, metrics, "min_ms", CampaignSummary())


def test_write_report(tmp_path: Path) -> None:
    report = toy_report()
    paths = write_report(report, tmp_path / "eval", title="Toy evaluation")
    assert set(paths) == {"json", "csv", "markdown", "scatter"}
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "eval.json", "eval.md", "predictions.csv", "scatter.png"]  # no temp files left
    data = json.loads(paths["json"].read_text())
    assert data["statistic"] == "min_ms"
    assert set(data["metrics"]) == {"a", "b", "all"}
    assert data["metrics"]["all"]["n"] == 6
    assert data["metrics"]["b"]["rmse_ms"] == pytest.approx(report.metrics["b"]["rmse_ms"])
    pd.testing.assert_frame_equal(pd.read_csv(paths["csv"]), report.table)
    md = paths["markdown"].read_text()
    assert md.startswith("# Toy evaluation")
    assert "| family | n | RMSE ms | RMSPE % |" in md and "| all | 6 |" in md
    assert "`min_ms`" in md and "scatter.png" in md
    png = paths["scatter"].read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    import matplotlib.image

    image = matplotlib.image.imread(paths["scatter"])
    assert image.shape[0] >= 600 and image.shape[1] >= 600  # 6x6 in at 120 dpi
    assert image[..., :3].std() > 0.05  # something was drawn


def test_training_range_section_splits_networks_by_coverage(tmp_path: Path) -> None:
    """A family missed by kernels outside the training range shows as such: its networks in
    range and out of it scored apart, in eval.md and eval.json."""
    report = toy_report()
    report.table["coverage"] = [1.0, 1.0, 1.0, 1.0, 0.4, 0.6]  # b:2 is off by 12.5%
    ranges = report.range_metrics()
    assert ranges["a"] == {"n": 3, "in_range": 3, "median_coverage": 1.0,  # a:2 is +10%
                           "within10_in_range": pytest.approx(2 / 3), "within10_outside": None}
    assert ranges["b"]["in_range"] == 1 and ranges["b"]["median_coverage"] == pytest.approx(0.6)
    assert ranges["b"]["within10_in_range"] == 1.0
    assert ranges["b"]["within10_outside"] == pytest.approx(0.5)
    assert ranges["all"]["n"] == 6 and ranges["all"]["in_range"] == 4
    paths = write_report(report, tmp_path / "eval")
    md = paths["markdown"].read_text()
    assert "## Training range" in md and "| b | 3 | 1 | 60.0% | 100.0% | 50.0% |" in md
    assert json.loads(paths["json"].read_text())["training_range"]["b"]["in_range"] == 1
    report.table["coverage"] = 1.0  # every network in range: no section to read
    assert "## Training range" not in write_report(report, tmp_path / "e2")["markdown"] \
        .read_text()


def _with_info(info: dict) -> LatencyPredictor:
    from latbench.predictor.models import get_predictor_class

    kernels = get_predictor_class("lut")().fit([OpSpec("conv")], [1.0])
    return LatencyPredictor.from_kernels(kernels, info=info)


def test_run_settings_from_the_predictor() -> None:
    settings = RunSettings(threads=1, warmup=2, runs=4, rounds=2)
    assert _with_info({"run_settings": settings.__dict__}).run_settings() == settings
    with pytest.raises(PredictorError, match="no run_settings"):
        _with_info({}).run_settings()
    with pytest.raises(PredictorError, match="are not RunSettings"):
        _with_info({"run_settings": {"threads": 1, "speed": "fast"}}).run_settings()


@pytest.mark.parametrize(("lo", "hi"), [(0.05, 40.0), (0.8, 3.0), (0.61, 0.93), (1.01, 1.05)])
def test_log_axes_are_labelled_with_plain_numbers(lo: float, hi: float) -> None:
    """Whatever the range - decades, less than one, a few percent - a log axis carries at
    least two readable number labels (never only powers of ten, never none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ticks = log_ticks(lo, hi)
    assert len(ticks) >= 2 and all(lo <= t <= hi for t in ticks)
    fig, ax = plt.subplots()
    ax.scatter([lo, hi], [lo, hi])
    readable_log_axes(ax, lo, hi)
    fig.canvas.draw()
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        shown = [t.get_text() for t in labels if t.get_text()]
        assert len(shown) >= 2, shown
        assert all("^" not in t and "$" not in t for t in shown), shown
        assert sorted(float(t) for t in shown) == pytest.approx(sorted(ticks), rel=0.05)
    plt.close(fig)


# --- end to end on the local CPU ----------------------------------------------------------------
SETTINGS = RunSettings(threads=1, warmup=2, runs=5, rounds=2)
CONFIG = CampaignConfig(settings=SETTINGS, drift_pause_s=0.05)


def tiny_net(width: int, mb_expand: int | None, res: int) -> list[OpSpec]:
    """A NAS-Bench-Macro-shaped chain: stem conv, one searchable layer (identity conv or
    mbconv), head conv, global pool, linear."""
    layer = (OpSpec("conv", h=res, w=res, cin=8, cout=width, kernel=1, stride=2)
             if mb_expand is None else
             OpSpec("mbconv", h=res, w=res, cin=8, cout=width, kernel=3, stride=2,
                    expand=mb_expand, act="relu"))
    half = res // 2
    return [OpSpec("conv", h=res, w=res, cin=3, cout=8, kernel=3, act="relu"), layer,
            OpSpec("conv", h=half, w=half, cin=width, cout=64, kernel=1, act="relu"),
            OpSpec("pool", h=half, w=half, cin=64, pool="gavg"),
            OpSpec("linear", cin=64, cout=10)]


# 2-8x apart, each large enough that its work outweighs the runtime's per-call overhead (at
# 16x16 pixels the networks took 25-60 us, half of it overhead, and timed 1.6x apart from run
# to run)
NETWORKS = {"macro-like:a": tiny_net(16, None, 32), "macro-like:b": tiny_net(24, 3, 48),
            "macro-like:c": tiny_net(32, 6, 56), "macro-like:d": tiny_net(64, 6, 64)}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple:
    """A predictor fitted on a real dataset of the networks' kernels and a few neighbours."""
    root = tmp_path_factory.mktemp("evaluate")
    kernels = {s.key(): s for net in NETWORKS.values() for s in net}
    for spec in list(kernels.values()):
        if spec.kind in ("conv", "mbconv"):
            wider = spec.with_(cout=spec.cout * 2, residual=None) if spec.kind == "mbconv" \
                else spec.with_(cout=spec.cout * 2)
            kernels.setdefault(wider.key(), wider)
    device = local_device(str(root / "work"))
    summary = measure_into_dataset([Subject.op(s) for s in kernels.values()], device,
                                   "onnxruntime", root / "dataset", CONFIG)
    assert summary.failed == 0 and summary.measured == len(kernels)
    LatencyPredictor(params={"n_estimators": 30, "max_depth": 3, "n_jobs": 1}).fit(
        root / "dataset").save(root / "predictor")
    predictor = LatencyPredictor.load(root / "predictor")
    manifest = json.loads((root / "predictor" / "manifest.json").read_text())
    return predictor, manifest, device, root


def subjects() -> list[Subject]:
    return [Subject.chain(key, "macro-like", specs) for key, specs in NETWORKS.items()]


def test_evaluate_end_to_end(fitted) -> None:
    predictor, manifest, device, root = fitted
    assert predictor.run_settings() == SETTINGS
    networks = subjects()
    report = evaluate(predictor, networks, device, root / "eval",
                      config=CampaignConfig(drift_pause_s=0.05))
    table = report.table.set_index("network")
    assert sorted(table.index) == sorted(NETWORKS)
    assert (table["family"] == "macro-like").all()
    for key, specs in NETWORKS.items():
        prediction = predictor.predict(specs)
        assert table.loc[key, "predicted_ms"] == pytest.approx(prediction.predicted_ms)
        assert table.loc[key, "coverage"] == pytest.approx(prediction.coverage)
    # measured with the predictor's settings, the statistic it was trained on
    records = LatencyDataset.open(root / "eval" / "networks").records()
    assert set(records["settings"]) == {SETTINGS.key("onnxruntime")}
    assert set(records["n_runs"]) == {SETTINGS.runs * SETTINGS.rounds}
    statistic = manifest["statistic"]
    assert report.statistic == statistic
    by_key = dict(zip(records["key"], records[statistic], strict=True))
    for key in NETWORKS:
        assert table.loc[key, "measured_ms"] == by_key[key] > 0
    np.testing.assert_allclose(
        table["error_pct"], 100 * (table["predicted_ms"] / table["measured_ms"] - 1))
    assert list(report.metrics) == ["macro-like"]  # one family: no "all" row
    metrics = report.metrics["macro-like"]
    assert metrics["n"] == 4
    assert metrics["rmse_ms"] == pytest.approx(error_metrics(table["predicted_ms"],
                                                             table["measured_ms"])["rmse_ms"])
    # a real predictor of real kernels ranks networks of those kernels as they measure and
    # prices them in proportion (a constant would miss by 6-8x). The machine's level may move
    # between the kernels' campaign and this one (1.5-2x on a busy VM), and the per-call
    # overhead of the smallest network moves with it more than the largest one's work: their
    # predicted / measured ratios were seen up to 1.95x apart
    assert metrics["spearman"] == pytest.approx(1.0)
    ratios = table["predicted_ms"] / table["measured_ms"]
    assert ratios.max() / ratios.min() < 2.5
    assert 1 / 3 < ratios.median() < 3
    assert report.campaign.measured == 4 and report.campaign.failed == 0
    assert "| macro-like | 4 |" in report.markdown()
    # the predictor remembers the machine's level while its kernels were measured
    trained_probe = manifest["dataset"]["reference_probe_ms"]
    assert trained_probe == pytest.approx(float(np.median(
        LatencyDataset.open(root / "dataset").records()["reference_ms"])))
    assert report.measurement.startswith("Networks measured in one pass")  # slow phases or not
    assert "Reference probe " in report.measurement
    # ... and scores the networks again at that level: each time scaled by the probes' ratio
    probe_now = float(np.median(records["reference_ms"]))
    assert report.speed_factor == pytest.approx(trained_probe / probe_now)
    np.testing.assert_allclose(table["measured_at_dataset_speed_ms"],
                               table["measured_ms"] * trained_probe / probe_now)
    assert report.speed_metrics["macro-like"] == pytest.approx(error_metrics(
        table["predicted_ms"], table["measured_at_dataset_speed_ms"]), nan_ok=True)
    assert report.speed_note().startswith(
        f"At the dataset's speed (measured times x {report.speed_factor:.3f}")
    summary = json.loads(write_report(report, root / "report")["json"].read_text())
    assert summary["at_dataset_speed"]["factor"] == pytest.approx(report.speed_factor)

    again = evaluate(predictor, networks, device, root / "eval")
    assert again.campaign.skipped == 4 and again.campaign.measured == 0  # resumed, not re-measured
    pd.testing.assert_frame_equal(again.table, report.table)


def test_evaluate_in_passes_scores_the_median(fitted, tmp_path: Path) -> None:
    predictor, manifest, device, _ = fitted
    networks = subjects()
    report = evaluate(predictor, networks, device, tmp_path / "eval",
                      config=CampaignConfig(drift_pause_s=0.05), passes=3)
    statistic = manifest["statistic"]
    folders = [tmp_path / "eval" / name for name in ("networks", "networks-pass2",
                                                      "networks-pass3")]
    per_pass, split = [], set()
    for folder in folders:
        records = LatencyDataset.open(folder).records()
        assert sorted(records["key"]) == sorted(NETWORKS)  # every network once per pass
        per_pass.append(dict(zip(records["key"], records[statistic], strict=True)))
        split |= fast_mode_keys(records)
    table = report.table.set_index("network")
    for key in NETWORKS:
        assert table.loc[key, "measured_ms"] == pytest.approx(
            float(np.median([times[key] for times in per_pass])))
    assert report.campaign.measured == 12 and report.campaign.total == 12
    assert report.measurement.startswith("Networks measured in 3 passes, scored against the "
                                         "median; spread between the passes per network")
    # networks with a call under half their median are counted, and only then
    assert (f"{len(split)} of {len(NETWORKS)} networks had a call under 1/2 of their median"
            in report.measurement) == bool(split)
    assert report.measurement in write_report(report, tmp_path / "out")["markdown"].read_text()
    again = evaluate(predictor, networks, device, tmp_path / "eval", passes=3)
    assert again.campaign.skipped == 12 and again.campaign.measured == 0
    pd.testing.assert_frame_equal(again.table, report.table)
    with pytest.raises(ConfigError, match="passes must be at least 1"):
        evaluate(predictor, networks, device, tmp_path / "none", passes=0)
    assert not (tmp_path / "none").exists()


def test_network_times_median_and_spread() -> None:
    times = NetworkTimes([{"a": 1.0, "b": 2.0}, {"a": 1.2, "b": 2.0}, {"a": 1.1}],
                         CampaignSummary())
    assert times.median() == {"a": pytest.approx(1.1), "b": 2.0}
    median, p90 = times.spread_pct()
    assert median == pytest.approx(10.0) and p90 == pytest.approx(18.0)  # spreads 20% and 0%
    # pairs within 10% (strictly): a 1.0/1.2 no (20%), 1.0/1.1 no (10%), 1.2/1.1 yes (8%);
    # b 2.0/2.0 yes
    assert times.agreement() == (pytest.approx(0.5), 4)
    assert times.agreement(0.05) == (pytest.approx(0.25), 4)
    assert times.note().endswith("median 10.0%, p90 18.0%; two passes of one network agree "
                                 "within 10% in 50% of 4 pairs.")
    one = NetworkTimes([{"a": 1.0}], CampaignSummary())
    assert one.spread_pct() is None and one.note() == "Networks measured in one pass."
    assert one.agreement() is None
    # one pass through slow phases says so, and what to do
    bursty = NetworkTimes([{"a": 1.0}], CampaignSummary(redone_batches=3))
    assert bursty.note().startswith("Networks measured in one pass while the device had slow "
                                    "phases (3 batch(es) measured again, 0 stored slow)")
    assert "--passes 3" in bursty.note()
    # networks with a fast mode in any pass are counted once each
    modes = NetworkTimes([{"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 3.1, "b": 2.0, "c": 3.0}],
                         CampaignSummary(), fast_mode=[{"a"}, {"a", "c"}])
    assert modes.note().endswith(" 2 of 3 networks had a call under 1/2 of their median in a "
                                 "visit: a rare fast mode that the fastest call catches in some "
                                 "visits and not in others, so their measured time is not "
                                 "repeatable.")
    assert "fast mode" not in times.note()  # none flagged: nothing said


def test_fast_mode_keys_are_a_median_twice_the_fastest_call() -> None:
    records = pd.DataFrame({"key": ["lucky", "noisy", "steady", "edge"],
                            "min_ms": [1.2, 3.0, 1.0, 1.0], "median_ms": [4.5, 4.4, 1.05, 2.0]})
    assert fast_mode_keys(records) == {"lucky", "edge"}


def test_times_at_the_dataset_speed_scale_each_pass_by_its_probe() -> None:
    times = NetworkTimes([{"a": 1.0, "b": 2.0}, {"a": 1.3}, {"a": 1.1, "b": 2.4}],
                         CampaignSummary(), probe_ms=[0.080, 0.104, 0.088])
    assert times.speed_factors(0.080) == pytest.approx([1.0, 0.080 / 0.104, 0.080 / 0.088])
    # a: 1.0, 1.0, 1.0 -> 1.0 although the raw median is 1.1; b: 2.0 and 2.18 -> 2.09
    assert times.at_dataset_speed(0.080) == pytest.approx({"a": 1.0, "b": (2.0 + 2.4 / 1.1) / 2})
    assert times.at_dataset_speed(None) is None  # a predictor without a probe
    missing = NetworkTimes([{"a": 1.0}, {"a": 1.2}], CampaignSummary(), probe_ms=[0.08, None])
    assert missing.at_dataset_speed(0.08) is None  # a pass without one: no half-scaled median


def test_level_note_warns_when_the_machine_runs_at_another_speed() -> None:
    times = NetworkTimes([{"a": 1.0}, {"a": 1.0}], CampaignSummary(), probe_ms=[0.084, 0.086])
    assert times.level_note(None) == ""
    same = times.level_note(0.084)
    assert same.startswith("Reference probe +1.2% against the predictor's dataset")
    assert "WARNING" not in same
    slower = times.level_note(0.077)
    assert "+10.4%" in slower and "WARNING, the machine ran slower" in slower
    assert "ran faster" in times.level_note(0.095)
    assert NetworkTimes([{"a": 1.0}], CampaignSummary(), probe_ms=[None]).level_note(0.08) == ""


def test_evaluate_refusals(fitted, tmp_path: Path) -> None:
    predictor, manifest, device, _ = fitted
    with pytest.raises(PredictorError, match="no networks"):
        evaluate(predictor, [], device, tmp_path / "a")
    with pytest.raises(PredictorError, match="trained on onnxruntime measurements"):
        evaluate(predictor, subjects(), device, tmp_path / "b", runtime="litert")
    no_settings = LatencyPredictor.from_kernels(
        predictor.kernels_, info={k: v for k, v in predictor.info_.items()
                                  if k != "run_settings"})
    with pytest.raises(PredictorError, match="no run_settings"):
        evaluate(no_settings, subjects(), device, tmp_path / "c")
    # a kernel the predictor never saw fails before anything is measured
    odd = Subject.chain("odd:1", "odd", [OpSpec("conv", h=8, w=8, cin=3, cout=8, kernel=3),
                                         OpSpec("act", h=8, w=8, cin=8, act="hswish")])
    with pytest.raises(UnknownKernelError, match="act"):
        evaluate(predictor, [odd], device, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_network_kernels() -> None:
    from latbench.bench.export.graph import chain_graph
    from latbench.bench.export.to_onnx import to_onnx

    specs = NETWORKS["macro-like:a"]
    assert network_kernels(subjects()[0]) == specs
    onnx_only = Subject.onnx_model("onnx:a", "onnx", lambda: to_onnx(chain_graph(specs)))
    assert [s.key() for s in network_kernels(onnx_only)] == [s.key() for s in specs]
    with pytest.raises(PredictorError, match="neither kernels nor an ONNX export"):
        network_kernels(Subject("x", "network"))


def test_eval_command_prints_json(fitted, tmp_path: Path, capsys) -> None:
    """`predictor eval --json` on ONNX files: valid JSON (NaN as null), the report written."""
    from latbench.bench.export.graph import chain_graph
    from latbench.bench.export.to_onnx import to_onnx
    from latbench.cli import main

    _, _, _, root = fitted
    folder = tmp_path / "onnx"
    folder.mkdir()
    for width in (16, 32):  # the predictor knows no dwconv: no mbconv, which ONNX splits
        (folder / f"plain{width}.onnx").write_bytes(to_onnx(chain_graph(tiny_net(width, None, 32))))
    capsys.readouterr()
    assert main(["predictor", "eval", "--predictor", str(root / "predictor"), "--networks",
                 str(folder), "--out", str(tmp_path / "report"), "--json",
                 "--drift-tolerance", "10"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["statistic"] == "min_ms" and printed["metrics"]["onnx"]["n"] == 2
    assert printed["metrics"]["onnx"]["spearman"] is None  # NaN for two networks -> null
    ranges = printed["training_range"]["onnx"]
    assert ranges["n"] == 2 and 0 <= ranges["in_range"] <= 2
    assert Path(printed["report"]["markdown"]).is_file()
    speed = printed["at_dataset_speed"]
    assert speed["factor"] > 0 and speed["metrics"]["onnx"]["n"] == 2
