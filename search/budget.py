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
from latbench.bench.network_sets import arch_subject
from latbench.bench.spaces.base import SearchSpace
from latbench.bench.store import LatencyDataset
from latbench.device_agents import Device
from latbench.errors import ConfigError, SearchError
from latbench.search.latency import LatencyTable
from latbench.search.strategies import SearchContext, SearchResult, Strategy, get_strategy

if TYPE_CHECKING:
    from latbench.predictor.latency_predictor import LatencyPredictor


@dataclass(frozen=True)
class BudgetOutcome:
    budget_ms: float
    search_budget_ms: float
    arch: str
    accuracy: float
    predicted_ms: float
    measured_ms: float | None
    feasible: int
    evaluated: int

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
                   margin: float = 0.0, context: SearchContext | None = None
                   ) -> list[tuple[float, SearchResult]]:
    """(budget, result) per budget. The search aims at budget / (1 + margin): the winner of a
    search sits just under its predicted budget, so any under-prediction would overshoot; the
    margin (the predictor's own under-prediction quantile) keeps the measured winner inside.

    `strategy` is a registered name (built with default options) or a Strategy; `accuracy` is
    a table (code -> accuracy), an accuracy source (search.accuracy) or None for strategies
    that train (`context` carries their data)."""
    budgets = check_budgets(budgets_ms)
    if not 0 <= margin < 1:
        raise SearchError(f"safety margin must be in [0, 1), got {margin}")
    searcher = get_strategy(strategy) if isinstance(strategy, str) else strategy
    return [(b, searcher.search(space, table, accuracy, b / (1 + margin), context))
            for b in budgets]


def measure_winners(space: SearchSpace, results: Sequence[tuple[float, SearchResult]],
                    predictor: LatencyPredictor,
                    device: Device, out: Path, config: CampaignConfig | None = None,
                    progress: ProgressSink | None = None) -> list[BudgetOutcome]:
    """Measure each distinct winner once (resumable dataset in `out`) with the runtime and
    settings the predictor was trained on, and pair it with its prediction."""
    runtime = predictor.runtime
    settings = predictor.run_settings()
    base = config or CampaignConfig()
    config = CampaignConfig(**{**base.__dict__, "settings": settings})
    subjects: dict[str, Subject] = {}
    for _, result in results:
        key = f"{space.name}:{result.arch}"
        if key not in subjects:
            subjects[key] = arch_subject(space, space.decode(result.arch), key)
    dataset = LatencyDataset.create(out, {"purpose": "search winners", "device": device.name,
                                          "runtime": runtime, "run_settings": asdict(settings)})
    run_campaign(list(subjects.values()), [device], [runtime], dataset, config, progress)
    records = dataset.records()
    records = records[(records["device"] == device.name) & (records["runtime"] == runtime)
                      & (records["settings"] == settings.key(runtime))]
    statistic = predictor.statistic
    measured = dict(zip(records["key"], records[statistic].astype(float), strict=True))
    return [BudgetOutcome(budget, r.budget_ms, r.arch, r.accuracy, r.predicted_ms,
                          measured.get(f"{space.name}:{r.arch}"), r.feasible, r.evaluated)
            for budget, r in results]
