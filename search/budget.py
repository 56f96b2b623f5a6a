"""Search under latency budgets, then check the winners on the device.

A search trusts the predictor; a user trusts the device. So every winner is exported, measured
with the same runner and settings as the predictor's training data, and reported with its
predicted and measured latency and whether the budget really holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latbench.bench.campaign import CampaignConfig, ProgressSink, Subject, run_campaign
from latbench.bench.network_sets import arch_subject, precision_key
from latbench.bench.spaces.base import SearchSpace
from latbench.bench.stats import BUDGET_STATISTICS, DEFAULT_BUDGET_STATISTIC
from latbench.bench.store import LatencyDataset
from latbench.device_agents import Device
from latbench.errors import ConfigError, PredictorError, SearchError
from latbench.search.latency import LatencyTable
from latbench.search.strategies import SearchContext, SearchResult, Strategy, get_strategy

if TYPE_CHECKING:
    from latbench.predictor.latency_predictor import LatencyPredictor


@dataclass(frozen=True)
class BudgetTarget:
    """What a budget is about and how far below it a search aims: the budget holds for
    `statistic` (what the user's own tool prints: the median by default); the predictor learned
    `learned`, which runs `gap` times lower (95th percentile on its networks), and
    under-predicts by up to `margin`. The search aims at budget / ((1 + margin) x gap)."""

    statistic: str
    learned: str
    margin: float
    gap: float = 1.0
    note: str = ""  # why the budget is not on the statistic the user would expect

    @property
    def factor(self) -> float:
        return (1 + self.margin) * self.gap

    def describe(self) -> str:
        """`budgets are on median_ms; searching under each budget / 1.157 (safety margin 3.0%
        x median_ms/min_ms gap 1.123)`."""
        gap = "" if self.gap == 1.0 else \
            f" x {self.statistic}/{self.learned} gap {self.gap:.3f}"
        note = f"; {self.note}" if self.note else ""
        return (f"budgets are on {self.statistic} (predictor: {self.learned}); searching under "
                f"each budget / {self.factor:.3f} (safety margin {100 * self.margin:.1f}%"
                f"{gap}){note}")


def budget_target(predictor: LatencyPredictor | None, statistic: str | None = None,
                  margin: float | None = None) -> BudgetTarget:
    """The target of a search with `predictor` (None: the analytical FLOPs table, no
    statistic) for budgets on `statistic` (default: the median), `margin` (default: the
    predictor's own). A predictor that cannot relate the median to what it learned (saved
    before latbench kept the gap) keeps budgets on its own statistic when none was asked for,
    and says so; an explicit statistic it cannot relate is refused."""
    if predictor is None:
        return BudgetTarget("flops", "flops", 0.0 if margin is None else margin)
    if statistic is not None and statistic not in BUDGET_STATISTICS:
        raise ConfigError(f"unknown budget statistic {statistic!r}; choose one of "
                          f"{', '.join(BUDGET_STATISTICS)}")
    margin = predictor.safety_margin() if margin is None else margin
    if statistic is None:
        try:
            return BudgetTarget(DEFAULT_BUDGET_STATISTIC, predictor.statistic, margin,
                                predictor.statistic_gap(DEFAULT_BUDGET_STATISTIC))
        except PredictorError:
            return BudgetTarget(predictor.statistic, predictor.statistic, margin, 1.0,
                                f"the predictor does not know how {DEFAULT_BUDGET_STATISTIC} "
                                f"relates to {predictor.statistic}: refit it to search on "
                                f"{DEFAULT_BUDGET_STATISTIC}")
    return BudgetTarget(statistic, predictor.statistic, margin,
                        predictor.statistic_gap(statistic))


@dataclass(frozen=True)
class BudgetOutcome:
    budget_ms: float
    search_budget_ms: float
    arch: str
    accuracy: float
    predicted_ms: float  # the predictor's own statistic
    measured_ms: float | None  # the budget's statistic
    feasible: int
    evaluated: int
    statistic: str = ""  # what the budget and measured_ms are about

    @property
    def within_budget(self) -> bool | None:
        return None if self.measured_ms is None else self.measured_ms <= self.budget_ms

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "within_budget": self.within_budget}

    def row(self) -> tuple[str, ...]:
        """Cells under OUTCOME_HEADER: the architecture string whole, the accuracy to four
        significant digits (a percentage or a proxy score of any magnitude)."""
        measured = "-" if self.measured_ms is None else f"{self.measured_ms:.4f}"
        verdict = {True: "yes", False: "NO", None: "-"}[self.within_budget]
        return (f"{self.budget_ms:g}", f"{self.search_budget_ms:.4g}", self.arch,
                f"{self.accuracy:.4g}", f"{self.predicted_ms:.4f}", measured, verdict)


OUTCOME_HEADER = ("budget ms", "searched under ms", "arch", "accuracy", "predicted ms",
                  "measured ms", "within budget")


def check_budgets(budgets_ms: Sequence[float], what: str = "latency budget") -> list[float]:
    """The budgets as floats; refuses none at all, and any that is not a positive, finite
    number of milliseconds (`what` names them in the message, e.g. a command-line flag)."""
    if len(budgets_ms) == 0:
        raise SearchError(f"give at least one {what}")
    out = []
    for value in budgets_ms:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be a number of milliseconds, got {value!r}") from None
        if not math.isfinite(number) or number <= 0:
            raise ConfigError(f"{what} must be positive, finite milliseconds, got {value}")
        out.append(number)
    return out


def search_budgets(space: SearchSpace, table: LatencyTable, accuracy: Any,
                   budgets_ms: Sequence[float], strategy: str | Strategy = "exhaustive",
                   margin: float = 0.0, context: SearchContext | None = None,
                   gap: float = 1.0) -> list[tuple[float, SearchResult]]:
    """(budget, result) per budget. The search aims at budget / ((1 + margin) x gap): the
    winner of a search sits just under its predicted budget, so any under-prediction would
    overshoot; the margin (the predictor's own under-prediction quantile) keeps the measured
    winner inside, and the gap (BudgetTarget) carries the predictor's statistic to the
    budget's.

    `strategy` is a registered name (built with default options) or a Strategy; `accuracy` is
    a table (code -> accuracy), an accuracy source (search.accuracy) or None for strategies
    that train (`context` carries their data)."""
    budgets = check_budgets(budgets_ms)
    if not 0 <= margin < 1:
        raise SearchError(f"safety margin must be in [0, 1), got {margin}")
    if not math.isfinite(gap) or gap <= 0:
        raise SearchError(f"statistic gap must be positive and finite, got {gap}")
    searcher = get_strategy(strategy) if isinstance(strategy, str) else strategy
    return [(b, searcher.search(space, table, accuracy, b / ((1 + margin) * gap), context))
            for b in budgets]


def measure_winners(space: SearchSpace, results: Sequence[tuple[float, SearchResult]],
                    predictor: LatencyPredictor,
                    device: Device, out: Path, config: CampaignConfig | None = None,
                    progress: ProgressSink | None = None,
                    statistic: str | None = None) -> list[BudgetOutcome]:
    """Measure each distinct winner once (resumable dataset in `out`) with the runtime and
    settings the predictor was trained on, and pair it with its prediction; the budget holds
    (or not) for `statistic` of the measured runs (default: the median), whatever statistic
    the predictor learned."""
    statistic = statistic or DEFAULT_BUDGET_STATISTIC
    runtime = predictor.runtime
    settings = predictor.run_settings()
    base = config or CampaignConfig()
    config = CampaignConfig(**{**base.__dict__, "settings": settings})
    precision = predictor.platform.precision  # winners measured as the predictor priced them

    def key_of(arch: str) -> str:
        return precision_key(f"{space.name}:{arch}", precision)

    subjects: dict[str, Subject] = {}
    for _, result in results:
        key = key_of(result.arch)
        if key not in subjects:
            subjects[key] = arch_subject(space, space.decode(result.arch), key, precision)
    dataset = LatencyDataset.create(out, {"purpose": "search winners", "device": device.name,
                                          "runtime": runtime, "run_settings": asdict(settings)})
    summary = run_campaign(list(subjects.values()), [device], [runtime], dataset, config,
                           progress)
    dataset.update_card(drift_last_run=summary.drift_json())  # what disturbed the winners
    records = dataset.records()
    records = records[(records["device"] == device.name) & (records["runtime"] == runtime)
                      & (records["settings"] == settings.key(runtime))]
    measured = dict(zip(records["key"], records[statistic].astype(float), strict=True))
    return [BudgetOutcome(budget, r.budget_ms, r.arch, r.accuracy, r.predicted_ms,
                          measured.get(key_of(r.arch)), r.feasible, r.evaluated,
                          statistic)
            for budget, r in results]
