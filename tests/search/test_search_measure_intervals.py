"""A measured search that acts on prediction intervals (search.budget.choose_by_measurement,
run_search, `latbench search --measure --measure-budget`): straddling candidates are measured
before one is accepted, the measurements per budget are bounded, the files say what was
measured and why the winner won, and bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latbench.bench.ops import OpSpec, decompose
from latbench.bench.spaces import get_space
from latbench.bench.store import LatencyDataset
from latbench.cli import main
from latbench.errors import ConfigError, SearchError
from latbench.predictor.features import kernel_cost
from latbench.predictor.intervals import key_digest, ratio_quantiles
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.model_level import Composition
from latbench.predictor.models import XGBoostKernelPredictor
from latbench.search.budget import (
    Candidate,
    check_measure_budget,
    choose_by_measurement,
    ranked_candidates,
)
from latbench.search.latency import LatencyTable
from latbench.search.run import SearchJob
from latbench.search.session import run_search
from latbench.search.strategies import SearchResult

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the walk, with a measuring function injected -----------------------------------------------
def walk(intervals: dict[str, tuple[float, float]], measured: dict[str, float | None],
         budget: float = 1.0, n: int = 5, fallback=None):
    calls: list[str] = []

    def measure(arch: str) -> float | None:
        calls.append(arch)
        return measured.get(arch, 0.5)

    candidates = [Candidate(a, 90.0 - i, sum(iv) / 2) for i, (a, iv) in
                  enumerate(intervals.items())]
    choice = choose_by_measurement(candidates, lambda c: intervals[c.arch], measure, budget,
                                   n, fallback)
    return choice, calls


def test_a_straddling_candidate_is_measured_before_it_is_accepted() -> None:
    choice, calls = walk({"a": (0.9, 1.1), "b": (0.5, 0.8)}, {"a": 0.95})
    assert choice.winner.arch == "a" and choice.measured_ms == 0.95 and calls == ["a"]
    assert choice.probes == ()  # probes are the candidates measured and passed over
    assert choice.measurements == 1 and "straddled" in choice.reason


def test_a_straddler_measured_over_the_budget_is_passed_over() -> None:
    choice, calls = walk({"a": (0.9, 1.1), "over": (1.01, 1.3), "b": (0.5, 0.8)},
                         {"a": 1.04, "b": 0.7})
    assert calls == ["a", "b"]  # wholly over: never measured; b measured as the winner
    assert choice.winner.arch == "b" and choice.measured_ms == 0.7
    assert [(p.arch, p.measured_ms, p.verdict) for p in choice.probes] == [
        ("a", 1.04, "over the budget")]
    assert "1 better candidates measured over the budget" in choice.reason


def test_a_confident_candidate_measured_over_the_budget_is_passed_over_too() -> None:
    # a busy device makes a confident prediction wrong: the walk goes on to the next one
    choice, calls = walk({"a": (0.5, 0.9), "b": (0.4, 0.8)}, {"a": 1.3, "b": 0.7})
    assert calls == ["a", "b"] and choice.winner.arch == "b" and choice.measured_ms == 0.7
    assert [(p.arch, p.verdict) for p in choice.probes] == [("a", "over the budget")]
    # every measurement spent over the budget: the stricter search's winner, measured as well
    choice, calls = walk({"a": (0.5, 0.9), "b": (0.4, 0.8), "c": (0.3, 0.6)},
                         {"a": 1.3, "b": 1.2, "strict": 0.5}, n=2,
                         fallback=lambda: Candidate("strict", 80.0, 0.4))
    assert calls == ["a", "b", "strict"] and choice.winner.arch == "strict"
    assert choice.measurements == 3 and choice.measured_ms == 0.5


def test_a_confident_candidate_whose_measurement_failed_is_chosen_on_its_prediction() -> None:
    choice, calls = walk({"a": (0.5, 0.9)}, {"a": None})
    assert calls == ["a"] and choice.winner.arch == "a" and choice.measured_ms is None
    assert "its measurement failed" in choice.reason


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_measurements_are_bounded_by_the_measure_budget(n: int) -> None:
    intervals = {f"s{i}": (0.9, 1.2) for i in range(6)} | {"safe": (0.4, 0.6)}
    choice, calls = walk(intervals, {f"s{i}": 1.1 for i in range(6)}, n=n)
    assert len(calls) == choice.measurements == n  # n - 1 straddlers, then the winner
    assert calls[:-1] == [f"s{i}" for i in range(n - 1)] and calls[-1] == "safe"
    assert choice.winner.arch == "safe" and len(choice.probes) == n - 1
    assert "measurements were spent" in choice.reason


def test_a_failed_measurement_never_accepts_and_the_fallback_ends_the_walk() -> None:
    choice, calls = walk({"a": (0.9, 1.1), "b": (0.95, 1.05)}, {"a": None, "b": 1.2},
                         fallback=lambda: Candidate("strict", 80.0, 0.6))
    assert calls == ["a", "b", "strict"]
    assert [p.verdict for p in choice.probes] == ["measurement failed", "over the budget"]
    assert choice.winner.arch == "strict" and choice.interval_ms is None
    assert "stricter budget" in choice.reason
    with pytest.raises(SearchError, match="no candidate measured within the 1 ms budget"):
        walk({"a": (0.9, 1.1)}, {"a": 1.2})


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_a_measure_budget_below_one_is_refused(bad) -> None:
    with pytest.raises(ConfigError, match="--measure-budget must be a whole number"):
        check_measure_budget(bad)


def test_candidates_are_the_winner_then_the_history_best_first_within_the_budget() -> None:
    space = get_space("nasbench-macro", resolution=8)
    table = LatencyTable.from_flops(space, ms_per_gflop=100.0)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(30)]
    budget = float(np.median([table.latency(a) for a in archs]))
    history = [{"arch": space.encode(a), "accuracy": float(i)} for i, a in enumerate(archs)]
    winner = history[3]["arch"]
    result = SearchResult("x", winner, 3.0, table.latency(archs[3]), budget, 30, 30, history)
    ranked = ranked_candidates(result, space, table)
    assert ranked[0].arch == winner
    accs = [c.accuracy for c in ranked[1:]]
    assert accs == sorted(accs, reverse=True) and winner not in [c.arch for c in ranked[1:]]
    assert all(c.predicted_ms <= budget for c in ranked[1:])
    assert len(ranked) - 1 == sum(table.latency(a) <= budget for i, a in enumerate(archs)
                                  if i != 3)


# --- on the local device (ONNX Runtime), through run_search and the command line --------------
@pytest.fixture(scope="module")
def predictor_dir(tmp_path_factory) -> Path:
    """A NAS-Bench-Macro (16x16) predictor on made-up kernel latencies whose intervals are
    +-40% (its calibration networks' leave-one-out spread), fast run settings."""
    space = get_space("nasbench-macro", resolution=16)
    specs: list[OpSpec] = []
    for spec in space.layer_specs():
        specs += [spec, *decompose(spec)]
    specs = list({s.key(): s for s in specs}.values())
    model = XGBoostKernelPredictor(n_estimators=20, n_jobs=1).fit(
        specs, [0.002 + 1e-9 * kernel_cost(s).flops for s in specs])
    spread = np.linspace(np.log(0.6), np.log(1.4), 41)
    composition = Composition(summary={"networks": 41, "loo_ratio_quantiles": ratio_quantiles(
        np.exp(spread), np.ones(len(spread)))})
    predictor = LatencyPredictor.from_kernels(
        model, call_overhead_ms=0.01, composition=composition,
        info={"device": "local", "runtime": "onnxruntime", "statistic": "min_ms",
              "run_settings": {"threads": 1, "warmup": 2, "runs": 5, "rounds": 1}})
    predictor.kernel_residuals_ = {}
    predictor.trained_kernels_ = frozenset(key_digest(s.key()) for s in specs)
    return predictor.save(tmp_path_factory.mktemp("intervals") / "predictor")


def budget_between(predictor_dir: Path) -> float:
    """A budget in the middle of the space's predicted latencies: many candidates straddle it
    with +-40% intervals."""
    space = get_space("nasbench-macro", resolution=16)
    table = LatencyTable.from_predictor(space, LatencyPredictor.load(predictor_dir))
    rng = np.random.default_rng(0)
    return float(np.median([table.latency(space.sample(rng)) for _ in range(200)]))


def test_run_search_measures_straddlers_on_the_device(tmp_path: Path,
                                                      predictor_dir: Path) -> None:
    budget = budget_between(predictor_dir)
    job = SearchJob(space_options={"resolution": 16}, strategy="random",
                    accuracy="proxy:synflow", queries=12, seed=0)
    session = run_search(job, str(predictor_dir), [budget], measure=True, out=tmp_path,
                         measure_budget=3)
    [outcome] = session.outcomes
    [(_, result)] = session.results
    assert outcome.measurements is not None and 1 <= outcome.measurements <= 3
    assert len(outcome.probes) <= 2 and outcome.interval_level == 0.9
    assert outcome.search_budget_ms == pytest.approx(budget) or "stricter" in \
        outcome.chosen_because  # min_ms budget: no gap, searched under the budget itself
    low, high = outcome.interval_ms
    records = LatencyDataset.open(tmp_path / "winners").records()
    measured = dict(zip(records["key"], records["min_ms"], strict=True))
    for probe in outcome.probes:  # each straddled the budget and its measurement is stored
        assert probe["interval_ms"][0] <= budget < probe["interval_ms"][1]
        assert probe["measured_ms"] == measured[f"nasbench-macro:{probe['arch']}"]
    assert outcome.measured_ms == measured[f"nasbench-macro:{outcome.arch}"]
    if "straddled the budget and its measured" in outcome.chosen_because:
        assert outcome.measured_ms <= budget and outcome.probes[-1]["arch"] == outcome.arch
    elif "stricter" not in outcome.chosen_because:
        assert high <= budget
    assert result.arch == outcome.arch
    assert len(set(records["key"])) <= outcome.measurements


def test_search_command_measures_and_records_why(capsys, tmp_path: Path,
                                                 predictor_dir: Path) -> None:
    budget = budget_between(predictor_dir)
    code = main(["search", "--predictor", str(predictor_dir), "--space-option",
                 "resolution=16", "--strategy", "random", "--accuracy", "proxy:synflow",
                 "--queries", "12", "--budget-ms", f"{budget:.6f}", "--margin", "0",
                 "--measure", "--measure-budget", "2", "--interval-level", "0.8", "--out",
                 str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    [row] = json.loads(out)
    assert row["measurements"] <= 2 and len(row["probes"]) <= 1
    assert row["interval_level"] == 0.8 and row["chosen_because"]
    assert "candidates measured and passed over" in err
    folder = Path(row["folder"])
    outcome = json.loads((folder / "outcome.json").read_text())
    assert outcome["probes"] == row["probes"] and outcome["chosen_because"]
    winner = json.loads((folder / "winner.json").read_text())
    chosen = winner["result"]["chosen_by_measurement"]
    assert chosen["measurements"] == row["measurements"] and winner["arch"] == row["arch"]
    assert [p["arch"] for p in chosen["measured"]] == [p["arch"] for p in row["probes"]]


@pytest.mark.parametrize(("flags", "needle"), [
    (["--measure", "--measure-budget", "0"], "--measure-budget must be a whole number"),
    (["--measure", "--measure-budget", "-2"], "--measure-budget must be a whole number"),
    (["--measure-budget", "3"], "--measure-budget bounds the measurements of --measure"),
    (["--measure", "--interval-level", "1"], "--interval-level must be in (0, 1)"),
    (["--interval-level", "0"], "--interval-level must be in (0, 1)"),
])
def test_bad_measure_flags_are_one_line_errors(capsys, tmp_path: Path, predictor_dir: Path,
                                               flags: list[str], needle: str) -> None:
    code = main(["search", "--predictor", str(predictor_dir), "--budget-ms", "1", "--out",
                 str(tmp_path), *flags])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and needle in lines[0], err
    assert not any(tmp_path.iterdir())
