"""`run_search` (search.session): folders and outcome files per budget, what is written without
--out, the checks before anything runs; and what `latbench search` prints: --json, a table
whose architecture strings survive a pipe, one-line errors for bad budgets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latbench.bench.spaces import get_space
from latbench.cli import main
from latbench.errors import ConfigError, SearchError
from latbench.search.budget import check_budgets
from latbench.search.latency import LatencyTable
from latbench.search.run import SearchJob
from latbench.search.session import run_search

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO.parent / "shared" / "data"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_run_search_writes_a_folder_and_outcome_per_budget(tmp_path: Path) -> None:
    job = SearchJob(strategy="evolution", strategy_options={"population": 4, "tournament": 2},
                    seed=1, queries=12)
    session = run_search(job, "flops", [0.1, 0.15], data_dir=DATA_DIR, out=tmp_path)
    assert session.lead and [b for b, _ in session.results] == [0.1, 0.15]
    assert sorted(session.folders) == [0.1, 0.15]
    for (budget, result), outcome in zip(session.results, session.outcomes, strict=True):
        folder = tmp_path / f"evolution-{budget:g}ms"
        assert session.folders[budget] == folder
        saved = json.loads((folder / "outcome.json").read_text())
        assert saved == {**outcome.to_json(), "platform": None}  # the flops table: none
        assert saved["arch"] == result.arch == (folder / "winner.txt").read_text().strip()
        assert saved["budget_ms"] == budget == saved["search_budget_ms"]  # flops: no margin
        assert saved["measured_ms"] is None and saved["within_budget"] is None
        assert saved["predicted_ms"] <= budget and result.queries == 12
        rows = (folder / "history.jsonl").read_text().splitlines()
        assert len(rows) == result.evaluated
        for name in ("pareto.png", "winner.json", "winner.pt", "winner.onnx", "history.csv"):
            assert (folder / name).is_file(), name
    rows = session.to_json()
    assert [r["folder"] for r in rows] == [str(tmp_path / "evolution-0.1ms"),
                                           str(tmp_path / "evolution-0.15ms")]
    json.dumps(rows)


def test_margin_is_searched_under_and_recorded(tmp_path: Path) -> None:
    session = run_search(SearchJob(), "flops", [0.12], data_dir=DATA_DIR, margin=0.2,
                         out=tmp_path)
    [outcome] = session.outcomes
    assert outcome.search_budget_ms == pytest.approx(0.1)
    assert outcome.predicted_ms <= 0.1
    saved = json.loads((tmp_path / "exhaustive-0.12ms" / "outcome.json").read_text())
    assert saved["search_budget_ms"] == pytest.approx(0.1) and saved["budget_ms"] == 0.12


def test_without_out_only_searches_with_a_history_are_written(tmp_path: Path,
                                                              monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the flops table's default folder is runs/search
    scan = run_search(SearchJob(), "flops", [0.1], data_dir=DATA_DIR)
    assert scan.folders == {} and not (tmp_path / "runs").exists()
    assert scan.to_json()[0]["folder"] == ""
    evolved = run_search(SearchJob(strategy="random", queries=3), "flops", [0.1],
                         data_dir=DATA_DIR)
    assert evolved.folders == {0.1: Path("runs") / "search" / "random-0.1ms"}
    assert (tmp_path / "runs" / "search" / "random-0.1ms" / "outcome.json").is_file()


@pytest.mark.parametrize(("job", "data_dir", "error", "match"), [
    (SearchJob(), None, ConfigError, "exhaustive search reads an accuracy table and there is "
                                     "no reference data: pass --data-dir or set LATBENCH_DATA"),
    (SearchJob(space="nasbench201"), DATA_DIR, ConfigError,
     r"exhaustive search needs an accuracy table; nasbench201 has none here \(use evolution "
     r"or random with --accuracy proxy:NAME\)"),
    (SearchJob(strategy="exhaustive", accuracy="proxy:naswot"), DATA_DIR, ConfigError,
     "exhaustive search needs an accuracy table"),
    (SearchJob(strategy="halving", accuracy="table"), DATA_DIR, ConfigError,
     "halving trains its candidates and takes no accuracy source"),
    (SearchJob(strategy="evolution", strategy_options={"populaton": 5}), DATA_DIR,
     ConfigError, "unknown option 'populaton'; known: .*population"),
    (SearchJob(strategy="random"), DATA_DIR, SearchError, "at least one latency budget"),
])
def test_run_search_refuses_before_searching(tmp_path: Path, job: SearchJob, data_dir,
                                             error: type, match: str) -> None:
    budgets = [] if job.strategy == "random" else [0.1]
    with pytest.raises(error, match=match):
        run_search(job, "flops", budgets, data_dir=data_dir, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_json_has_the_outcome_and_result(capsys, tmp_path: Path) -> None:
    code = main(["search", "--predictor", "flops", "--budget-ms", "0.1", "--data-dir",
                 str(DATA_DIR), "--out", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    [row] = json.loads(out)
    assert {"budget_ms", "search_budget_ms", "arch", "accuracy", "predicted_ms", "measured_ms",
            "within_budget", "feasible", "evaluated", "strategy", "queries", "folder"} <= set(row)
    assert row["budget_ms"] == 0.1 and row["measured_ms"] is None
    assert row["strategy"] == "exhaustive" and row["evaluated"] == 6561
    assert json.loads((Path(row["folder"]) / "outcome.json").read_text())["arch"] == row["arch"]


def test_piped_table_keeps_long_architecture_strings(tmp_path: Path) -> None:
    """The proxyless space's architecture strings are over 100 characters: piped, the table
    keeps every one whole."""
    options = {"resolution": 32, "width_mult": 0.35, "num_classes": 10,
               "stages": [[16, 4, 2], [24, 4, 2], [32, 4, 2], [48, 4, 2], [64, 4, 1]]}
    space = get_space("proxyless", **options)
    table = LatencyTable.from_flops(space)
    rng = np.random.default_rng(0)
    budget = float(np.median([table.latency(space.sample(rng)) for _ in range(100)]))
    argv = [sys.executable, "-m", "latbench.cli", "search", "--predictor", "flops",
            "--space", "proxyless", "--strategy", "random", "--queries", "2", "--accuracy",
            "proxy:naswot", "--budget-ms", f"{budget:.6g}", "--out", str(tmp_path)]
    for key, value in options.items():
        argv += ["--space-option", f"{key}={json.dumps(value)}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "60"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    arch = (tmp_path / f"random-{budget:.6g}ms" / "winner.txt").read_text().strip()
    assert len(arch) > 100 and arch in proc.stdout
    assert "…" not in proc.stdout


@pytest.mark.parametrize("value", ["0", "-2", "nan", "inf"])
def test_bad_budgets_are_one_line_errors(capsys, tmp_path: Path, value: str) -> None:
    code = main(["search", "--predictor", "flops", "--budget-ms", "0.1", value,
                 "--data-dir", str(DATA_DIR), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "--budget-ms must be positive, finite milliseconds" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_check_budgets() -> None:
    assert check_budgets([1, 2.5]) == [1.0, 2.5]
    for bad in ([0.0], [float("nan")], [-1.0], [float("inf")], ["fast"]):
        with pytest.raises(ConfigError, match="latency budget must be"):
            check_budgets(bad)
    with pytest.raises(SearchError, match="give at least one latency budget"):
        check_budgets([])
