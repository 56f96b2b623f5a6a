"""`latbench search` with every strategy: the files it leaves (history, Pareto PNG, winner
string, state_dict, ONNX) and, with --measure, predicted vs measured latency of winners of a
chain space and of a cell space (exported through ONNX)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import run
from PIL import Image

from latbench.bench.kernels import onnx_to_kernels
from latbench.bench.ops import OpSpec, decompose
from latbench.bench.spaces import get_space
from latbench.predictor.features import kernel_cost
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.models import XGBoostKernelPredictor
from latbench.search.outputs import load_winner
from latbench.search.pareto import pareto_front

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO.parent / "shared" / "data"


pytestmark = pytest.mark.usefixtures("one_thread")


def check_folder(folder: Path, strategy: str) -> dict:
    """Every file is there and consistent; everything evaluated was within budget (a
    supernet's history holds its argmax per epoch instead, which the budget does not bind)."""
    for name in ("history.jsonl", "history.csv", "pareto.png", "winner.txt", "winner.json",
                 "winner.pt", "winner.onnx", "outcome.json"):
        assert (folder / name).is_file(), name
    with Image.open(folder / "pareto.png") as image:
        assert image.size[0] > 300
    meta = json.loads((folder / "winner.json").read_text())
    assert meta["arch"] == (folder / "winner.txt").read_text().strip()
    assert meta["result"]["strategy"] == strategy
    space, arch, module = load_winner(folder)
    parsed = onnx_to_kernels((folder / "winner.onnx").read_bytes())
    assert Counter(p.key() for s in parsed for p in decompose(s)) == \
        Counter(p.key() for s in space.ops(arch) for p in decompose(s))
    rows = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    if not strategy.startswith("proxyless"):
        assert all(r["predicted_ms"] <= meta["budget_ms"] for r in rows)
    assert rows and all("arch" in r and "accuracy" in r for r in rows)
    meta["history"] = rows
    return meta


def test_evolution_with_the_benchmark_table(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "search", "--predictor", "flops", "--strategy", "evolution",
                            "--budget-ms", "0.1", "0.15", "--queries", "60", "--data-dir",
                            str(DATA_DIR), "--out", str(out), "--json")
    assert code == 0, err
    results = json.loads(stdout)
    assert [r["budget_ms"] for r in results] == [0.1, 0.15]
    table = json.loads((DATA_DIR / "nas-bench-macro" / "nas-bench-macro_cifar10.json")
                       .read_text())
    for r in results:
        assert r["queries"] <= 60 and r["predicted_ms"] <= r["budget_ms"]
        assert r["accuracy"] == pytest.approx(table[r["arch"]]["mean_acc"])
        meta = check_folder(Path(r["folder"]), "evolution")
        assert meta["trained"] is False and len(meta["history"]) == r["queries"]
    assert "predicted" in err  # the space's latency range is shown


def test_random_on_nasbench201_with_a_proxy(capsys, tmp_path: Path) -> None:
    code, stdout, err = run(capsys, "search", "--predictor", "flops", "--space", "nasbench201",
                            "--space-option", "cells=1", "--space-option", "resolution=16",
                            "--strategy", "random", "--accuracy", "proxy:naswot",
                            "--queries", "5", "--budget-ms", "0.15", "--out", str(tmp_path))
    assert code == 0, err
    meta = check_folder(tmp_path / "random-0.15ms", "random")
    assert meta["space_options"] == {"cells": 1, "resolution": 16}
    assert meta["result"]["queries"] == 0 and meta["result"]["evaluated"] == 5
    assert "nasbench201 / random" in stdout


@pytest.mark.parametrize("strategy,options", [
    ("halving", ["--epochs", "2", "--option", "n_candidates=2", "--option", "eta=2",
                 "--option", "max_steps=1", "--option", "batch_size=16"]),
    ("proxyless-g", ["--epochs", "2", "--option", "warmup_epochs=1", "--option", "max_steps=1",
                     "--option", "batch_size=16", "--option", "finetune_epochs=0"]),
    ("proxyless-r", ["--epochs", "1", "--option", "warmup_epochs=0", "--option", "max_steps=1",
                     "--option", "batch_size=16", "--option", "finetune_epochs=0"]),
])
def test_training_strategies(capsys, tmp_path: Path, strategy: str, options: list[str]) -> None:
    code, stdout, err = run(capsys, "search", "--predictor", "flops", "--space-option",
                            "resolution=8", "--strategy", strategy, "--budget-ms", "0.055",
                            "--out", str(tmp_path), *options)
    assert code == 0, err
    meta = check_folder(tmp_path / f"{strategy}-0.055ms", strategy)
    assert meta["trained"] is True and meta["result"]["predicted_ms"] <= 0.055
    _, arch, module = load_winner(tmp_path / f"{strategy}-0.055ms")
    assert tuple(module(torch.zeros(2, 3, 8, 8)).shape) == (2, 10)


def test_exhaustive_unchanged_and_errors(capsys, tmp_path: Path) -> None:
    code, stdout, err = run(capsys, "search", "--predictor", "flops", "--budget-ms", "0.1",
                            "--data-dir", str(DATA_DIR), "--json")
    assert code == 0, err
    [result] = json.loads(stdout)
    assert result["strategy"] == "exhaustive" and result["queries"] == 6561
    assert result["folder"] == ""  # no --out: nothing written
    code, _, err = run(capsys, "search", "--predictor", "flops", "--budget-ms", "0.02",
                       "--space", "nasbench201", "--data-dir", str(DATA_DIR))
    assert code == 1 and "exhaustive search needs an accuracy table" in err
    code, _, err = run(capsys, "search", "--predictor", "flops", "--budget-ms", "0.02",
                       "--strategy", "evolution", "--option", "population", "--data-dir",
                       str(DATA_DIR))
    assert code == 1 and "KEY=VALUE" in err
    code, _, err = run(capsys, "search", "--predictor", "flops", "--budget-ms", "0.02",
                       "--strategy", "evolution", "--measure", "--data-dir", str(DATA_DIR))
    assert code == 1 and "--measure needs a predictor directory" in err
    code, _, err = run(capsys, "search", "--predictor", "flops", "--budget-ms", "0.001",
                       "--strategy", "random", "--data-dir", str(DATA_DIR))
    assert code == 1 and "predicted under" in err


@pytest.fixture(scope="module")
def predictor_dir(tmp_path_factory) -> Path:
    """A predictor of every kernel NAS-Bench-Macro and NAS-Bench-201 (16x16) use, fitted on
    made-up latencies, with fast run settings for --measure."""
    specs: list[OpSpec] = []
    for space in (get_space("nasbench-macro", resolution=16),
                  get_space("nasbench201", resolution=16, cells=1)):
        for spec in space.layer_specs():
            specs += [spec, *decompose(spec)]
        specs += [OpSpec("mul", h=s, w=s, cin=c) for s, c in ((16, 16), (8, 32), (4, 64))]
    specs = list({s.key(): s for s in specs}.values())
    model = XGBoostKernelPredictor(n_estimators=20, n_jobs=1).fit(
        specs, [0.002 + 1e-9 * kernel_cost(s).flops for s in specs])
    return LatencyPredictor.from_kernels(
        model, call_overhead_ms=0.01,
        info={"device": "local", "runtime": "onnxruntime", "statistic": "min_ms",
              "run_settings": {"threads": 1, "warmup": 2, "runs": 5, "rounds": 1}},
    ).save(tmp_path_factory.mktemp("search") / "predictor")


@pytest.mark.parametrize("space,options", [
    ("nasbench-macro", ["--space-option", "resolution=16", "--strategy", "evolution",
                        "--accuracy", "proxy:synflow", "--queries", "4"]),
    ("nasbench201", ["--space-option", "resolution=16", "--space-option", "cells=1",
                     "--strategy", "random", "--queries", "4"]),
])
def test_measure_winners(capsys, tmp_path: Path, predictor_dir: Path, space: str,
                         options: list[str]) -> None:
    code, stdout, err = run(capsys, "search", "--predictor", str(predictor_dir), "--space",
                            space, "--budget-ms", "5", "--margin", "0", "--measure", "--out",
                            str(tmp_path), "--json", *options)
    assert code == 0, err
    [result] = json.loads(stdout)
    assert result["measured_ms"] is not None and result["measured_ms"] > 0
    assert result["within_budget"] == (result["measured_ms"] <= 5)
    outcome = json.loads((Path(result["folder"]) / "outcome.json").read_text())
    assert outcome["measured_ms"] == result["measured_ms"]
    platform = LatencyPredictor.load(predictor_dir).platform
    assert outcome["platform"]["label"] == platform.label()
    winner = json.loads((Path(result["folder"]) / "winner.json").read_text())
    assert winner["platform"] == outcome["platform"]
    assert (tmp_path / "winners").is_dir()


@pytest.mark.parametrize("statistic", ["median_ms", "p90_ms"])
def test_winners_are_checked_by_the_budget_statistic(capsys, tmp_path: Path,
                                                     predictor_dir: Path,
                                                     statistic: str) -> None:
    """The predictor learned min_ms; the budget is on the median (default) or the p90: the
    search aims lower by the gap the predictor keeps, and the winner is judged by that
    statistic of its measured runs."""
    gapped = LatencyPredictor.load(predictor_dir)
    gapped.info_["statistic_gaps"] = {
        "median_ms": {"median": 1.1, "p95": 1.2, "n": 9, "source": "networks"},
        "p90_ms": {"median": 1.3, "p95": 1.5, "n": 9, "source": "networks"}}
    folder = gapped.save(tmp_path / "gapped")
    chosen = [] if statistic == "median_ms" else ["--budget-statistic", statistic]
    code, stdout, err = run(capsys, "search", "--predictor", str(folder), "--space",
                            "nasbench201", "--space-option", "resolution=16", "--space-option",
                            "cells=1", "--strategy", "random", "--queries", "4", "--budget-ms",
                            "5", "--margin", "0", "--measure", "--out", str(tmp_path / "s"),
                            "--json", *chosen)
    assert code == 0, err
    gap = 1.2 if statistic == "median_ms" else 1.5
    assert f"budgets are on {statistic} (predictor: min_ms)" in err
    assert f"budget / {gap:.3f}" in err
    [result] = json.loads(stdout)
    assert result["statistic"] == statistic
    assert result["search_budget_ms"] == pytest.approx(5 / gap)
    from latbench.bench.store import LatencyDataset

    winners = LatencyDataset.open(tmp_path / "s" / "winners").records()
    assert result["measured_ms"] == float(winners[statistic].iloc[0])
    assert result["within_budget"] == (result["measured_ms"] <= 5)


def test_an_old_predictor_keeps_budgets_on_its_statistic(capsys, predictor_dir: Path) -> None:
    code, stdout, err = run(capsys, "search", "--predictor", str(predictor_dir), "--space",
                            "nasbench201", "--space-option", "resolution=16", "--space-option",
                            "cells=1", "--strategy", "random", "--queries", "4", "--budget-ms",
                            "5", "--json")
    assert code == 0, err
    assert "budgets are on min_ms" in err and "refit it to search on median_ms" in err
    assert json.loads(stdout)[0]["statistic"] == "min_ms"
    code, _, err = run(capsys, "search", "--predictor", str(predictor_dir), "--space",
                       "nasbench201", "--space-option", "resolution=16", "--strategy",
                       "random", "--budget-ms", "5", "--budget-statistic", "p90_ms")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "does not know how p90_ms relates to it" in err


def test_pareto_front() -> None:
    lat = np.array([1.0, 2.0, 1.5, 3.0, 0.5, 2.5])
    acc = np.array([80.0, 85.0, 79.0, 90.0, 70.0, 84.0])
    assert pareto_front(lat, acc).tolist() == [4, 0, 1, 3]
