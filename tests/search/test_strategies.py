"""The Strategy protocol: every registered strategy searches a small space under a small budget
and honours it (a strategy that trains returns its trained network, one that does not returns
none), options are checked against what a strategy declares, and a strategy registered here
works from `latbench search --strategy NAME` with no other edit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from latbench.cli import main
from latbench.errors import ConfigError
from latbench.search.accuracy import as_source
from latbench.search.data import digits
from latbench.search.run import SearchJob, build_strategy
from latbench.search.strategies import (
    STRATEGIES,
    SearchContext,
    SearchResult,
    Strategy,
    get_strategy,
    register_strategy,
    strategy_class,
)
from latbench.search.strategies.evolution import sample_feasible

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO.parent / "shared" / "data"

pytestmark = pytest.mark.usefixtures("one_thread")

# Options that keep any strategy small, each given to the strategies that declare it.
TINY = {"max_queries": 8, "population": 4, "tournament": 2, "n_candidates": 2, "eta": 2,
        "max_steps": 1, "batch_size": 16, "warmup_epochs": 0, "finetune_epochs": 0,
        "eval_batches": 1}


def tiny_options(cls: type[Strategy]) -> dict[str, Any]:
    options = {k: v for k, v in TINY.items() if k in cls.option_names()}
    if cls.epochs_option:
        options[cls.epochs_option] = 1
    return options


@pytest.fixture(scope="module")
def data():
    return digits(resolution=8, seed=0)


@pytest.fixture(scope="module")
def accuracy(space) -> dict[str, float]:
    """A made-up accuracy of every architecture: more for costlier candidates, plus noise."""
    rng = np.random.default_rng(0)
    return {space.encode(a): 80.0 + sum(a.choices) + float(rng.normal(0, 0.5))
            for a in space.all_archs()}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_searches_within_budget(name: str, space, table, data,
                                               accuracy) -> None:
    cls = strategy_class(name)
    assert cls.name == name and set(tiny_options(cls)) <= set(cls.option_names())
    rng = np.random.default_rng(1)
    budget = float(np.median([table.latency(space.sample(rng)) for _ in range(200)]))
    strategy = get_strategy(name, **tiny_options(cls))
    result = strategy.search(space, table, None if cls.trains else accuracy, budget,
                             SearchContext(seed=3, data=data))
    assert isinstance(result, SearchResult) and result.strategy == name
    arch = space.decode(result.arch)
    assert result.predicted_ms == pytest.approx(table.latency(arch))
    assert result.predicted_ms <= budget and result.budget_ms == budget
    assert (result.module is not None) == cls.trains
    if cls.trains:
        with torch.no_grad():
            assert tuple(result.module(torch.zeros(2, 3, 8, 8)).shape) == (2, 10)
        assert 0 <= result.accuracy <= 100
    else:
        assert result.accuracy == pytest.approx(accuracy[result.arch])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_describes_itself(name: str) -> None:
    cls = strategy_class(name)
    assert isinstance(cls.trains, bool) and isinstance(cls.distributed, bool)
    assert set(cls.accuracy_sources) <= {"table", "surrogate", "proxy"}
    assert not (cls.trains and cls.accuracy_sources)  # a strategy that trains scores itself
    for option in (cls.epochs_option, cls.queries_option):
        assert option is None or option in cls.option_names()
    with pytest.raises(ConfigError) as info:
        get_strategy(name, no_such_option=1)
    message = str(info.value)
    assert "'no_such_option'" in message and name in message
    assert all(option in message for option in cls.option_names())


def test_job_limits_map_to_the_declared_options() -> None:
    assert build_strategy(SearchJob(strategy="evolution", queries=7)).max_queries == 7
    assert build_strategy(SearchJob(strategy="halving", epochs=2)).max_epochs == 2
    assert build_strategy(SearchJob(strategy="proxyless-r", epochs=2)).config.epochs == 2
    with pytest.raises(ConfigError, match=r"exhaustive takes no epochs limit \(--epochs "
                                          r"applies to halving, proxyless-g, proxyless-r\)"):
        build_strategy(SearchJob(strategy="exhaustive", epochs=2))
    with pytest.raises(ConfigError, match="halving takes no queries limit"):
        build_strategy(SearchJob(strategy="halving", queries=5))
    with pytest.raises(ConfigError, match="unknown search strategy 'annealing'"):
        build_strategy(SearchJob(strategy="annealing"))


def test_registration_refuses_what_is_no_strategy() -> None:
    with pytest.raises(ConfigError, match="not a Strategy subclass"):
        register_strategy("test-not-a-strategy")(object)
    assert "test-not-a-strategy" not in STRATEGIES


class BestOfDraws(Strategy):
    """Draws `draws` feasible architectures and keeps the most accurate (a plug-in for tests)."""

    queries_option = "draws"

    def __init__(self, draws: int = 5) -> None:
        self.draws = draws

    def search(self, space, table, accuracy, budget_ms, context=None) -> SearchResult:
        context = context or SearchContext()
        archs = sample_feasible(space, table, budget_ms, self.draws,
                                np.random.default_rng(context.seed))
        source = as_source(accuracy, space)
        scores = source(archs)
        history = [{"arch": space.encode(a), "accuracy": float(s),
                    "predicted_ms": table.latency(a)} for a, s in zip(archs, scores, strict=True)]
        best = archs[int(np.argmax(scores))]
        return SearchResult(self.name, space.encode(best), float(scores.max()),
                            table.latency(best), budget_ms, len(archs), len(archs), history,
                            source.queries)


@pytest.fixture
def plugin():
    name = "test-best-of-draws"
    register_strategy(name)(BestOfDraws)
    yield name
    del STRATEGIES[name]


def test_registered_strategy_works_from_the_command_line(plugin: str, capsys,
                                                         tmp_path: Path) -> None:
    code = main(["search", "--predictor", "flops", "--strategy", plugin, "--queries", "6",
                 "--budget-ms", "0.1", "--data-dir", str(DATA_DIR), "--seed", "4",
                 "--out", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    [row] = json.loads(out)
    assert row["strategy"] == plugin and row["evaluated"] == 6 and row["queries"] == 6
    assert row["predicted_ms"] <= 0.1
    folder = Path(row["folder"])
    assert folder == tmp_path / f"{plugin}-0.1ms"
    assert (folder / "winner.txt").read_text().strip() == row["arch"]
    assert len((folder / "history.jsonl").read_text().splitlines()) == 6

    code = main(["search", "--predictor", "flops", "--strategy", plugin, "--option",
                 "draw=3", "--budget-ms", "0.1", "--data-dir", str(DATA_DIR)])
    _, err = capsys.readouterr()
    assert code == 1 and "unknown option 'draw'; known: draws" in err
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    assert f"{plugin} (scores with table/surrogate/proxy, --queries sets draws)" in \
        " ".join(capsys.readouterr().out.split())
