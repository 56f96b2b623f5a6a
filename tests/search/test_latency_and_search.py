"""LatencyTable against the network predictor it summarises, its JSON form, and the exhaustive
search under budgets (checked against a brute-force scan of a toy table)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from latbench.bench.ops import OpSpec, decompose
from latbench.bench.spaces import Arch, get_space
from latbench.errors import ConfigError, PredictorError, SearchError, UnknownKernelError
from latbench.predictor.features import kernel_cost
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.model_level import Composition
from latbench.predictor.models import XGBoostKernelPredictor
from latbench.search.budget import budget_target, search_budgets
from latbench.search.latency import LatencyTable, choices_matrix
from latbench.search.strategies import STRATEGIES, get_strategy


def synthetic_ms(spec: OpSpec) -> float:
    return 0.02 + 2e-9 * kernel_cost(spec).flops


def fitted_predictor(space) -> LatencyPredictor:
    specs = space.layer_specs()
    specs = list({s.key(): s for s in [*specs, *(p for s in specs for p in decompose(s))]}
                 .values())
    model = XGBoostKernelPredictor(n_estimators=40, max_depth=3, n_jobs=1)
    model.fit(specs, [synthetic_ms(s) for s in specs])
    # composition scales must reach the table as they reach a network's prediction
    return LatencyPredictor.from_kernels(model, call_overhead_ms=0.05,
                                         composition=Composition({"mbconv": 1.2, "conv": 0.9}))


@pytest.fixture(scope="module")
def macro():
    return get_space("nasbench-macro")


@pytest.fixture(scope="module")
def predictor(macro) -> LatencyPredictor:
    return fitted_predictor(macro)


@pytest.fixture(scope="module")
def table(macro, predictor) -> LatencyTable:
    return LatencyTable.from_predictor(macro, predictor, "local", "onnxruntime")


def test_table_equals_network_prediction(macro, predictor, table: LatencyTable) -> None:
    assert table.space == "nasbench-macro" and (table.device, table.runtime) == ("local",
                                                                                 "onnxruntime")
    assert [len(r) for r in table.layer_ms] == [3] * 8
    rng = np.random.default_rng(0)
    archs = [macro.sample(rng) for _ in range(25)]
    for arch in archs:
        expected = predictor.predict(macro.ops(arch)).predicted_ms
        assert table.latency(arch) == pytest.approx(expected, rel=1e-9)
    # the identity candidate inside a stage costs nothing
    assert table.layer_ms[1][0] == 0.0
    assert table.fixed_ms > predictor.call_overhead_ms_ > 0


def test_table_for_proxyless_with_skips() -> None:
    space = get_space("proxyless", resolution=64, num_classes=10)
    predictor = fitted_predictor(space)
    table = LatencyTable.from_predictor(space, predictor)
    assert [len(r) for r in table.layer_ms] == [space.n_candidates(i)
                                               for i in range(space.n_layers)]
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(10)]
    for arch in archs:
        expected = predictor.predict(space.ops(arch)).predicted_ms
        assert table.latency(arch) == pytest.approx(expected, rel=1e-9)
    np.testing.assert_allclose(table.latencies(choices_matrix(archs)),
                               [table.latency(a) for a in archs], rtol=1e-12)
    # rows have different widths: the padding must not be usable
    bad = np.array([[6] + [0] * (space.n_layers - 1)])  # layer 0 has no skip (index 6)
    with pytest.raises(SearchError, match="candidate the table does not have"):
        table.latencies(bad)


def test_unknown_kernel_surfaces(macro) -> None:
    specs = [s for s in macro.layer_specs() if s.kind != "linear"]
    model = XGBoostKernelPredictor(n_estimators=5, n_jobs=1).fit(
        specs, [synthetic_ms(s) for s in specs])
    with pytest.raises(UnknownKernelError, match="linear"):
        LatencyTable.from_predictor(macro, LatencyPredictor.from_kernels(model))


def test_latencies_equal_latency(macro, table: LatencyTable) -> None:
    archs = macro.all_archs()
    vectorised = table.latencies(choices_matrix(archs))
    assert vectorised.shape == (6561,)
    one_by_one = np.array([table.latency(a) for a in archs[::37]])
    np.testing.assert_allclose(vectorised[::37], one_by_one, rtol=1e-12)
    assert np.all(vectorised > table.fixed_ms)


@pytest.mark.parametrize(("choices", "match"), [
    ([[0] * 7], "8 layers"),
    ([0] * 8, "8 layers"),
    ([[0] * 7 + [3]], "candidate the table does not have"),
    ([[0] * 7 + [-1]], "candidate the table does not have"),  # must not wrap around
])
def test_latencies_refuse_bad_choices(table: LatencyTable, choices, match: str) -> None:
    with pytest.raises(SearchError, match=match):
        table.latencies(np.array(choices))


def test_latency_refuses_other_space_and_bad_choice(table: LatencyTable) -> None:
    with pytest.raises(SearchError, match="asked about a proxyless architecture"):
        table.latency(Arch("proxyless", (0,) * 8))
    with pytest.raises(SearchError):
        table.latency(Arch("nasbench-macro", (0,) * 7 + (-1,)))


def test_json_round_trip(tmp_path: Path, macro, table: LatencyTable) -> None:
    path = tmp_path / "table.json"
    table.save(path)
    loaded = LatencyTable.load(path)
    assert loaded == table
    arch = macro.decode("21021021")
    assert loaded.latency(arch) == table.latency(arch)
    assert LatencyTable.from_json(table.to_json()) == table


# --- exhaustive search on a toy table -----------------------------------------------------------
def toy_table() -> LatencyTable:
    """Candidate c of layer i costs (i + 1) * c ms over 1 ms fixed: latency = 1 + sum."""
    rows = tuple(tuple(float((i + 1) * c) for c in range(3)) for i in range(8))
    return LatencyTable("nasbench-macro", 1.0, rows)


def toy_accuracy(macro) -> dict[str, float]:
    rng = np.random.default_rng(42)
    return {macro.encode(a): float(v) for a, v in zip(macro.all_archs(),
                                                       rng.uniform(80, 95, 6561), strict=True)}


def brute_force(accuracy: dict[str, float], budget: float) -> tuple[str, float, int]:
    best, best_acc, feasible = "", -1.0, 0
    for choices in itertools.product(range(3), repeat=8):
        latency = 1.0 + sum((i + 1) * c for i, c in enumerate(choices))
        if latency <= budget:
            feasible += 1
            code = "".join(map(str, choices))
            if accuracy[code] > best_acc:
                best, best_acc = code, accuracy[code]
    return best, best_acc, feasible


@pytest.mark.parametrize("budget", [1.0, 5.0, 20.0, 40.5, 73.0])
def test_exhaustive_picks_most_accurate_feasible(macro, budget: float) -> None:
    accuracy = toy_accuracy(macro)
    result = get_strategy("exhaustive").search(macro, toy_table(), accuracy, budget)
    best, best_acc, feasible = brute_force(accuracy, budget)
    assert result.arch == best
    assert result.accuracy == best_acc
    assert result.predicted_ms <= budget
    assert result.predicted_ms == toy_table().latency(macro.decode(best))
    assert result.feasible == feasible and result.evaluated == 6561
    assert result.budget_ms == budget and result.strategy == "exhaustive"


def test_exhaustive_budget_binds(macro) -> None:
    # make the most accurate architecture the slowest one: a budget below it must avoid it
    accuracy = toy_accuracy(macro)
    accuracy["22222222"] = 99.0
    unbounded = get_strategy("exhaustive").search(macro, toy_table(), accuracy, 1e9)
    assert unbounded.arch == "22222222"
    bounded = get_strategy("exhaustive").search(macro, toy_table(), accuracy, 72.9)
    assert bounded.arch != "22222222" and bounded.predicted_ms <= 72.9


def test_no_feasible_architecture(macro) -> None:
    with pytest.raises(SearchError, match=r"under 0\.500 ms; the fastest is predicted at "
                                          r"1\.000 ms"):
        get_strategy("exhaustive").search(macro, toy_table(), toy_accuracy(macro), 0.5)


def test_missing_accuracy(macro) -> None:
    accuracy = toy_accuracy(macro)
    del accuracy["01201201"]
    with pytest.raises(SearchError, match="lacks 1 architectures .* e.g. 01201201"):
        get_strategy("exhaustive").search(macro, toy_table(), accuracy, 50.0)


def test_search_budgets_applies_margin(macro) -> None:
    accuracy = toy_accuracy(macro)
    results = search_budgets(macro, toy_table(), accuracy, [11.0, 33.0], margin=0.1)
    assert [b for b, _ in results] == [11.0, 33.0]
    for budget, result in results:
        aimed = budget / 1.1
        assert result.budget_ms == pytest.approx(aimed)
        assert result.predicted_ms <= aimed
        assert result.arch == brute_force(accuracy, aimed)[0]
    # without a margin the 11 ms search may use the room between 10 and 11 ms
    plain = search_budgets(macro, toy_table(), accuracy, [11.0])[0][1]
    assert plain.budget_ms == 11.0 and plain.arch == brute_force(accuracy, 11.0)[0]
    assert plain.feasible > results[0][1].feasible


def test_search_budgets_carries_the_statistic_gap(macro) -> None:
    """A budget on the median searched with a predictor of the minimum aims lower by the gap
    between them, on top of the margin."""
    accuracy = toy_accuracy(macro)
    [(_, result)] = search_budgets(macro, toy_table(), accuracy, [33.0], margin=0.1, gap=1.2)
    assert result.budget_ms == pytest.approx(33.0 / (1.1 * 1.2))
    assert result.arch == brute_force(accuracy, 33.0 / (1.1 * 1.2))[0]


class _Learned:
    """What budget_target reads of a predictor: its statistic, margin and gaps."""

    def __init__(self, statistic: str, gaps: dict[str, float]) -> None:
        self.statistic, self.gaps = statistic, gaps

    def safety_margin(self) -> float:
        return 0.04

    def statistic_gap(self, statistic: str) -> float:
        if statistic == self.statistic:
            return 1.0
        if statistic not in self.gaps:
            raise PredictorError(f"does not know {statistic}")
        return self.gaps[statistic]


def test_budget_target_defaults_to_the_median() -> None:
    target = budget_target(_Learned("min_ms", {"median_ms": 1.08, "p90_ms": 1.3}))
    assert (target.statistic, target.learned, target.gap) == ("median_ms", "min_ms", 1.08)
    assert target.factor == pytest.approx(1.04 * 1.08)
    assert "budgets are on median_ms" in target.describe() and "gap 1.080" in target.describe()
    p90 = budget_target(_Learned("min_ms", {"p90_ms": 1.3}), "p90_ms", margin=0.0)
    assert (p90.statistic, p90.gap, p90.margin) == ("p90_ms", 1.3, 0.0)
    own = budget_target(_Learned("median_ms", {}))
    assert (own.statistic, own.gap, own.note) == ("median_ms", 1.0, "")


def test_budget_target_without_a_gap() -> None:
    """An old predictor keeps budgets on its own statistic and says so; asking for a statistic
    it cannot relate is refused."""
    old = budget_target(_Learned("min_ms", {}))
    assert (old.statistic, old.gap) == ("min_ms", 1.0)
    assert "refit it to search on median_ms" in old.describe()
    with pytest.raises(PredictorError, match="does not know p90_ms"):
        budget_target(_Learned("min_ms", {}), "p90_ms")
    with pytest.raises(ConfigError, match="unknown budget statistic 'p99_ms'"):
        budget_target(_Learned("min_ms", {}), "p99_ms")
    assert budget_target(None).statistic == "flops"


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(budgets_ms=[]), SearchError, "at least one latency budget"),
    (dict(budgets_ms=[5.0], gap=0.0), SearchError, "statistic gap must be positive"),
    (dict(budgets_ms=[5.0], margin=1.0), SearchError, r"safety margin must be in \[0, 1\)"),
    (dict(budgets_ms=[5.0], margin=-0.1), SearchError, "safety margin"),
    (dict(budgets_ms=[5.0], strategy="annealing"), ConfigError,
     "unknown search strategy 'annealing'"),
])
def test_search_budgets_refusals(macro, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        search_budgets(macro, toy_table(), toy_accuracy(macro), **kwargs)


def test_strategy_registry() -> None:
    assert "exhaustive" in STRATEGIES
    from latbench.search.strategies import register_strategy

    with pytest.raises(ConfigError, match="registered twice"):
        register_strategy("exhaustive")(object)
