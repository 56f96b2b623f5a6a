"""The demo end to end on the local CPU, shrunk to a tiny plan: every stage leaves its files and
the report ties them together."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from latbench.bench.spaces import get_space
from latbench.bench.store import LatencyDataset
from latbench.cli import main
from latbench.predictor.io import read_manifest
from latbench.search.latency import LatencyTable
from latbench.user_models import USER_MODELS

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TINY_PLAN = """\
name: tiny-demo
spaces: [nasbench-macro]
primitives: true
around: 0
networks: ["nasbench-macro:4"]
"""


def test_tiny_demo(tmp_path: Path, capsys) -> None:
    """Through the CLI (`latbench demo --json`): stdout is the run's report as JSON."""
    assert (DATA_DIR / "nas-bench-macro").is_dir(), f"reference data missing at {DATA_DIR}"
    plan = tmp_path / "tiny.yaml"
    plan.write_text(TINY_PLAN)
    assert main(["demo", "--quick", "--data-dir", str(DATA_DIR), "--runs-root",
                 str(tmp_path / "runs"), "--networks", "5", "--seed", "0", "--plan", str(plan),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    run_dir = Path(printed["run"])
    assert run_dir.parent == tmp_path / "runs"
    assert printed["evaluation"] == json.loads((run_dir / "report.json").read_text())["evaluation"]

    # 1. the operator dataset: every kernel of the space and its primitives, 4 networks
    space = get_space("nasbench-macro")
    dataset = LatencyDataset.open(run_dir / "dataset")
    records = dataset.records()
    ops = records[records["subject"] == "op"]
    nets = records[records["subject"] == "network"]
    assert {s.key() for s in space.layer_specs()} <= set(ops["key"])
    assert len(nets) == 4 and set(nets["family"]) == {"nasbench-macro"}
    assert len(dataset.failures()) == 0
    assert set(dataset.card["network_kernels"]) == set(nets["key"])

    # 2. the predictor, calibrated on those 4 networks
    manifest = read_manifest(run_dir / "predictor")
    assert manifest["runtime"] == "onnxruntime" and manifest["device"] == "local"
    assert sorted(manifest["composition"]["keys"]) == sorted(nets["key"])
    assert {"conv", "mbconv", "pool", "linear"} <= set(manifest["kinds"])

    # 3. 5 held-out networks, none of them a calibration network
    held_out = LatencyDataset.open(run_dir / "eval" / "networks").records()
    assert len(held_out) == 5
    assert not set(held_out["key"]) & set(nets["key"])
    for name in ("eval.json", "eval.md", "predictions.csv"):
        assert (run_dir / "eval" / name).is_file()
    assert (run_dir / "eval" / "scatter.png").read_bytes().startswith(PNG_SIGNATURE)

    # 4-5. search under three budgets, winners measured
    report = json.loads((run_dir / "report.json").read_text())
    assert report["options"]["plan"] == str(plan)
    assert report["evaluation"]["nasbench-macro"]["n"] == 5
    assert len(report["search"]) == 3
    # budgets are on the median of runs, whatever the predictor learned (min_ms here): the
    # search aims under budget / ((1 + margin) x the median/min gap of the dataset's networks)
    target = report["search_target"]
    assert (target["statistic"], target["learned"]) == ("median_ms", "min_ms")
    assert target["gap"] > 1.0
    assert abs(target["factor"] - (1 + target["margin"]) * target["gap"]) < 1e-12
    winners = LatencyDataset.open(run_dir / "search" / "winners").records()
    medians = dict(zip(winners["key"], winners["median_ms"], strict=True))
    for outcome in report["search"]:
        assert outcome["statistic"] == "median_ms"
        assert outcome["measured_ms"] == medians[f"nasbench-macro:{outcome['arch']}"]
        assert outcome["within_budget"] == (outcome["measured_ms"] <= outcome["budget_ms"])
        assert abs(outcome["search_budget_ms"] - outcome["budget_ms"] / target["factor"]) < 1e-9
        assert outcome["predicted_ms"] <= outcome["search_budget_ms"]
        space.decode(outcome["arch"])
    budgets = [o["budget_ms"] for o in report["search"]]
    assert budgets == sorted(budgets)
    assert set(winners["key"]) == {f"nasbench-macro:{o['arch']}" for o in report["search"]}
    table = LatencyTable.load(run_dir / "latency_table.json")
    for outcome in report["search"]:
        assert abs(table.latency(space.decode(outcome["arch"])) - outcome["predicted_ms"]) < 1e-9
    assert (run_dir / "search_pareto.png").read_bytes().startswith(PNG_SIGNATURE)

    # 6. the two models a user might bring: exported files, measured end to end; the tiny plan
    # has the CNN's kinds but no transformer kernels, so the ViT is measured but not predicted
    # and the report says which kinds were missing
    models = {m["name"]: m for m in report["user_models"]}
    assert set(models) == {net.name for net in USER_MODELS}
    for model in models.values():
        assert onnx.load(model["file"]).graph.node  # the exported ONNX file
        assert Path(model["file"]).parent == run_dir / "user_models"
        assert model["measured_ms"] > 0
    cnn, vit = models["resnet18-half-r128"], models["vit-tiny-d6-r112"]
    assert cnn["error"] is None
    prediction = cnn["prediction"]
    assert prediction["predicted_ms"] > 0 and 0.0 <= prediction["coverage"] <= 1.0
    low, high = prediction["interval_ms"]  # shown in the report's models table too
    assert low <= prediction["predicted_ms"] <= high
    assert {"conv", "add", "pool", "linear"} <= set(prediction["by_kind_ms"])
    assert abs(sum(k["predicted_ms"] for k in prediction["kernels"]) + prediction["overhead_ms"]
               - prediction["predicted_ms"]) < 1e-6
    assert abs(cnn["error_pct"] - 100 * (prediction["predicted_ms"] / cnn["measured_ms"] - 1)) \
        < 1e-9
    assert vit["prediction"] is None and "tlinear" in vit["error"]
    measured = LatencyDataset.open(run_dir / "user_models" / "measured").records()
    assert set(measured["key"]) == {f"onnx:{name}.onnx" for name in models}

    # the report ties it together
    md = (run_dir / "report.md").read_text()
    # the campaign's drift (probe range, batches flagged, bursts) is in the report
    assert report["dataset"]["drift"][0].startswith("local/onnxruntime: ")
    assert f"- drift: {report['dataset']['drift'][0]}" in md
    assert md.startswith("# latbench demo report")
    assert "| family | n | RMSE ms | RMSPE % |" in md and "| nasbench-macro | 5 |" in md
    assert "Composition fitted on 4 measured calibration networks" in md
    assert "| budget ms | searched under ms | arch |" in md
    cells = f"| {prediction['predicted_ms']:.3f} | {low:.3f}-{high:.3f} |"
    assert f"| resnet18-half-r128 | CNN {cells}" in md
    for outcome in report["search"]:
        assert f"| {outcome['arch']} |" in md
    assert "Search skipped" not in md
    assert "## 5. Models a user might bring" in md
    assert "| resnet18-half-r128 | CNN |" in md and "Not predicted: " in md
