"""Evolution and random search under a latency budget on toy tables: nothing over budget is
ever evaluated or returned, table queries are counted and capped, the optimum under the budget
is found on an easy landscape, and the zero-cost and surrogate options behave."""

from __future__ import annotations

import numpy as np
import pytest

from latbench.errors import ConfigError, SearchError
from latbench.search.accuracy import SurrogateAccuracy, TableAccuracy, make_source, one_hot
from latbench.search.latency import LatencyTable, choices_matrix
from latbench.search.strategies import SearchContext, get_strategy
from latbench.search.strategies.evolution import sample_feasible

pytestmark = pytest.mark.usefixtures("one_thread")


def toy(space, seed: int) -> tuple[LatencyTable, dict[str, float], np.ndarray, np.ndarray]:
    """A random table and an accuracy made of per-layer gains that mostly grow with a
    candidate's latency (plus a little noise), like real spaces; returns every architecture's
    latency and accuracy too."""
    rng = np.random.default_rng(seed)
    layer_ms = np.sort(rng.uniform(0.0, 1.0, size=(8, 3)), axis=1)
    gain = 3 * np.sqrt(layer_ms) + rng.normal(0, 0.3, size=(8, 3))
    table = LatencyTable(space.name, 2.0, tuple(tuple(r) for r in layer_ms))
    archs = space.all_archs()
    choices = choices_matrix(archs)
    lat = table.latencies(choices)
    acc = 60 + gain[np.arange(8), choices].sum(1) + rng.normal(0, 0.1, len(archs))
    return table, {space.encode(a): float(v) for a, v in zip(archs, acc, strict=True)}, lat, acc


@pytest.mark.parametrize("strategy", ["evolution", "random"])
@pytest.mark.parametrize("quantile", [0.05, 0.3, 0.7])
def test_budget_is_honoured_and_queries_capped(space, strategy: str, quantile: float) -> None:
    table, accuracy, lat, acc = toy(space, seed=1)
    budget = float(np.quantile(lat, quantile))
    result = get_strategy(strategy, max_queries=120).search(space, table, accuracy, budget,
                                                            SearchContext(seed=2))
    assert result.predicted_ms <= budget
    assert table.latency(space.decode(result.arch)) <= budget
    assert result.queries <= 120 and result.queries == len(result.history)
    assert all(row["predicted_ms"] <= budget for row in result.history)
    assert result.accuracy == accuracy[result.arch]
    assert result.accuracy == max(row["accuracy"] for row in result.history)
    # the history's query counter runs 1, 2, ... (each evaluation a distinct architecture)
    assert [row["queries"] for row in result.history] == list(range(1, result.queries + 1))
    assert len({row["arch"] for row in result.history}) == result.queries


def test_evolution_finds_the_best_under_budget_and_beats_random(space) -> None:
    gaps = {"evolution": [], "random": []}
    for seed in range(4):
        table, accuracy, lat, acc = toy(space, seed=10 + seed)
        budget = float(np.quantile(lat, 0.5))
        best = float(acc[lat <= budget].max())
        for name in gaps:
            result = get_strategy(name, max_queries=300).search(space, table, accuracy,
                                                                budget, SearchContext(seed=seed))
            gaps[name].append(best - result.accuracy)
    assert np.mean(gaps["evolution"]) < 0.2
    assert np.mean(gaps["evolution"]) < np.mean(gaps["random"])


def test_tight_budget_exhausts_the_feasible_region(space) -> None:
    table, accuracy, lat, _ = toy(space, seed=3)
    budget = float(np.sort(lat)[9])  # exactly 10 architectures fit
    feasible = {space.encode(a) for a, v in zip(space.all_archs(), lat, strict=True)
                if v <= budget}
    result = get_strategy("evolution", population=5, tournament=2, max_queries=500,
                          max_attempts=40).search(space, table, accuracy, budget)
    assert {row["arch"] for row in result.history} <= feasible
    assert result.arch == max(feasible, key=accuracy.get)
    with pytest.raises(SearchError, match="predicted under"):
        get_strategy("evolution").search(space, table, accuracy, float(lat.min()) - 0.01)
    with pytest.raises(SearchError, match="predicted under"):
        get_strategy("random").search(space, table, accuracy, float(lat.min()) - 0.01)


def test_sample_feasible_is_distinct_and_within_budget(space) -> None:
    table, _, lat, _ = toy(space, seed=4)
    budget = float(np.quantile(lat, 0.2))
    rng = np.random.default_rng(0)
    archs = sample_feasible(space, table, budget, 200, rng)
    assert len(archs) == 200 and len({a.choices for a in archs}) == 200
    assert (table.latencies(choices_matrix(archs)) <= budget).all()
    exclude = {a.choices for a in archs}
    more = sample_feasible(space, table, budget, 50, rng, exclude=exclude)
    assert not exclude & {a.choices for a in more}


def test_surrogate_source_counts_its_training_and_verification(space) -> None:
    table, accuracy, lat, acc = toy(space, seed=5)
    budget = float(np.quantile(lat, 0.5))
    source = make_source("surrogate:gbm:60", space, accuracy, seed=0)
    assert isinstance(source, SurrogateAccuracy)
    result = get_strategy("evolution", max_queries=400, verify_top=10).search(
        space, table, source, budget, SearchContext(seed=0))
    # 60 training look-ups + at most 10 to verify the finalists; evaluations are predictions
    assert 60 < result.queries <= 70 and result.evaluated >= 100
    assert result.accuracy == accuracy[result.arch] and result.predicted_ms <= budget
    assert result.info["accuracy_source"] == "surrogate:gbm"
    best = float(acc[lat <= budget].max())
    assert best - result.accuracy < 3.0
    mlp = SurrogateAccuracy(space, TableAccuracy(space, accuracy), n_init=40, model="mlp")
    assert len(mlp(space.all_archs()[:5])) == 5 and mlp.queries == 40
    assert one_hot(space, space.all_archs()[:2]).sum() == 16


def test_zero_cost_warmup_and_move_proposal(space) -> None:
    table, accuracy, lat, _ = toy(space, seed=6)
    budget = float(np.quantile(lat, 0.6))
    result = get_strategy("evolution", population=6, tournament=3, max_queries=14, warmup=12,
                          proposals=3, proxy="naswot").search(space, table, accuracy, budget,
                                                              SearchContext(seed=0))
    assert result.queries == 14 and result.predicted_ms <= budget
    warm = get_strategy("random", max_queries=5, warmup=10, proxy="synflow")
    result = warm.search(space, table, accuracy, budget)
    assert result.queries == 5 and result.predicted_ms <= budget


def test_proxy_source_costs_no_queries(space) -> None:
    table, _, lat, _ = toy(space, seed=7)
    source = make_source("proxy:naswot", space)
    result = get_strategy("random", max_queries=6).search(
        space, table, source, float(np.quantile(lat, 0.5)))
    assert result.queries == 0 and result.evaluated == 6
    assert result.info["accuracy_source"] == "proxy:naswot"


def test_sources_and_options_are_checked(space) -> None:
    with pytest.raises(ConfigError, match="accuracy source"):
        make_source("oracle", space, {})
    with pytest.raises(ConfigError, match="needs an accuracy table"):
        make_source("table", space, None)
    with pytest.raises(ConfigError, match="unknown accuracy predictor"):
        make_source("surrogate:forest", space, {})
    with pytest.raises(ConfigError, match="tournament"):
        get_strategy("evolution", population=4, tournament=5)
    with pytest.raises(ConfigError, match="rejects its options"):
        get_strategy("random", population=4)
    table, accuracy, lat, _ = toy(space, seed=8)
    with pytest.raises(SearchError, match="no nasbench-macro architecture"):
        get_strategy("random", max_queries=3).search(space, table, {"x": 1.0},
                                                     float(lat.max()))
