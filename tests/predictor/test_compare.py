"""The zoo side by side: every member fitted on one dataset and scored on the same held-out
networks, measured once on the local CPU; lookup-table coverage instead of guesses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from latbench.bench.campaign import CampaignConfig, Subject, measure_into_dataset
from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.ops import OpSpec
from latbench.bench.runners import RunSettings
from latbench.bench.store import LatencyDataset
from latbench.cli import main
from latbench.device_agents import local_device
from latbench.predictor.compare import compare_predictors, score, write_comparison

FAST = RunSettings(warmup=1, runs=4, rounds=2)


def test_score_reports_coverage_and_metrics_per_family() -> None:
    table = pd.DataFrame({
        "predictor": ["a"] * 4 + ["lut"] * 4,
        "network": ["n1", "n2", "n3", "n4"] * 2,
        "family": ["x", "x", "y", "y"] * 2,
        "predicted_ms": [1.0, 2.1, 3.0, 3.9, 1.0, math.nan, math.nan, math.nan],
        "measured_ms": [1.0, 2.0, 3.0, 4.0] * 2,
    })
    metrics = score(table)
    assert set(metrics) == {"a", "lut"}
    assert set(metrics["a"]) == {"x", "y", "all"}
    assert metrics["a"]["all"]["within10"] == 1.0 and metrics["a"]["all"]["coverage"] == 1.0
    assert metrics["lut"]["x"]["coverage"] == 0.5 and metrics["lut"]["x"]["n"] == 1
    assert metrics["lut"]["y"]["n"] == 0 and metrics["lut"]["y"]["coverage"] == 0.0


def _kernels(seed: int) -> list[OpSpec]:
    rng = np.random.default_rng(seed)
    c = int(rng.choice([8, 16, 24]))
    return [OpSpec("conv", h=16, w=16, cin=3, cout=c, kernel=3, act="relu"),
            OpSpec("conv", h=16, w=16, cin=c, cout=c, kernel=int(rng.choice([1, 3])),
                   act="relu"),
            OpSpec("pool", h=16, w=16, cin=c, pool="gavg"),
            OpSpec("linear", cin=c, cout=10)]


def test_compare_measures_once_and_scores_every_member(tmp_path: Path, capsys) -> None:
    device = local_device(threads=1)
    config = CampaignConfig(settings=FAST, drift_retries=0)
    nets = [Subject.chain(f"toy:{i}", "toy", _kernels(i)) for i in range(8)]
    calibration, held_out = nets[:3], nets[3:]
    ops = {k.key(): k for net in nets[:6] for k in net.kernels}  # nets 6, 7 may hold new keys
    extra = [OpSpec("conv", h=16, w=16, cin=c, cout=c2, kernel=k, act="relu")
             for c in (8, 16, 24) for c2 in (8, 16, 24) for k in (1, 3)]
    for spec in extra:
        ops.setdefault(spec.key(), spec)
    unseen = OpSpec("conv", h=16, w=16, cin=3, cout=40, kernel=3, act="relu")
    odd = Subject.chain("toy:odd", "odd", [unseen, OpSpec("pool", h=16, w=16, cin=40,
                                                          pool="gavg")])
    subjects = [Subject.op(s) for s in ops.values()] + calibration
    measure_into_dataset(subjects, device, "onnxruntime", tmp_path / "data", config)
    report = compare_predictors(tmp_path / "data", [*nets, odd], ["xgboost", "rf", "linear", "lut"],
                                device, tmp_path / "cmp", config=config,
                                params={"xgboost": {"n_estimators": 50, "n_jobs": 1},
                                        "rf": {"n_estimators": 30, "n_jobs": 1}})
    # Calibration networks are left out; the rest measured once (one record each).
    measured = LatencyDataset.open(tmp_path / "cmp" / "networks").records()
    assert sorted(measured["key"]) == sorted([n.key for n in held_out] + ["toy:odd"])
    assert set(report.metrics) == {"xgboost", "rf", "linear", "lut"}
    assert report.metrics["lut"]["odd"]["coverage"] == 0.0
    assert report.metrics["xgboost"]["odd"]["coverage"] == 1.0
    for name in ("xgboost", "rf", "linear"):
        m = report.metrics[name]["toy"]
        assert m["n"] == 5 and m["coverage"] == 1.0 and np.isfinite(m["rmspe_pct"])
    toy = report.table[report.table["family"] == "toy"]
    assert (toy["predicted_ms"] > 0).all() and len(toy) == 4 * 5
    # Every member saw the same measured value for a network.
    assert toy.groupby("network")["measured_ms"].nunique().eq(1).all()
    for name in report.metrics:
        assert (tmp_path / "cmp" / "predictors" / name / "manifest.json").is_file()
    # Networks measured elsewhere (e.g. in the dataset's own campaign) are not measured again.
    given = {n.key: 1.0 + i for i, n in enumerate(held_out[:3])}
    reused = compare_predictors(tmp_path / "data", held_out, ["linear"], device,
                                tmp_path / "given", config=config, measured_ms=given)
    again = LatencyDataset.open(tmp_path / "given" / "networks").records()
    assert sorted(again["key"]) == sorted(n.key for n in held_out[3:])
    by_net = reused.table.set_index("network")["measured_ms"]
    assert all(by_net[key] == ms for key, ms in given.items())
    paths = write_comparison(report, tmp_path / "cmp")
    text = paths["markdown"].read_text()
    assert "| lut |" in text and "**odd**" in text
    assert paths["scatter"].stat().st_size > 1000 and paths["bars"].stat().st_size > 1000
    # The command line, on user ONNX files (split into kernels by the parser).
    folder = tmp_path / "onnx"
    folder.mkdir()
    for net in held_out[:2]:
        (folder / f"{net.key.replace(':', '_')}.onnx").write_bytes(
            to_onnx(chain_graph(list(net.kernels))))
    capsys.readouterr()
    assert main(["predictor", "compare", "--data", str(tmp_path / "data"), "--networks",
                 str(folder), "--predictors", "linear,lut", "--out", str(tmp_path / "cli"),
                 "--drift-tolerance", "10", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)  # valid JSON: NaN metrics print as null
    assert set(printed["metrics"]) == {"linear", "lut"}
    frame = pd.read_csv(tmp_path / "cli" / "predictions.csv")
    assert sorted(set(frame["predictor"])) == ["linear", "lut"] and set(frame["family"]) == {"onnx"}
