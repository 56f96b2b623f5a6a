"""Search under latency budgets, then check the winners on the device.

A search trusts the predictor; a user trusts the device. So every winner is exported, measured
with the same runner and settings as the predictor's training data, and reported with its
predicted and measured latency and whether the budget really holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from latbench.bench.campaign import CampaignConfig, ProgressSink, Subject, run_campaign
from latbench.bench.network_sets import arch_subject
from latbench.bench.spaces.base import SearchSpace
from latbench.bench.store import LatencyDataset
from latbench.device_agents import Device
from latbench.errors import SearchError
from latbench.predictor.evaluate import settings_from_manifest
from latbench.search.latency import LatencyTable
from latbench.search.strategies import SearchResult, get_strategy


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
        """Cells under OUTCOME_HEADER."""
        measured = "-" if self.measured_ms is None else f"{self.measured_ms:.4f}"
        verdict = {True: "yes", False: "NO", None: "-"}[self.within_budget]
        return (f"{self.budget_ms:g}", f"{self.search_budget_ms:.4g}", self.arch,
                f"{self.accuracy:.2f}", f"{self.predicted_ms:.4f}", measured, verdict)


OUTCOME_HEADER = ("budget ms", "searched under ms", "arch", "accuracy %", "predicted ms",
                  "measured ms", "within budget")


def search_budgets(space: SearchSpace, table: LatencyTable, accuracy: Any,
                   budgets_ms: Sequence[float], strategy: str = "exhaustive",
                   margin: float = 0.0, options: Mapping[str, Any] | None = None
                   ) -> list[tuple[float, SearchResult]]:
    """(budget, result) per budget. The search aims at budget / (1 + margin): the winner of a
    search sits just under its predicted budget, so any under-prediction would overshoot; the
    margin (the predictor's own under-prediction quantile) keeps the measured winner inside.

    `accuracy` is a table (code -> accuracy), an accuracy source (search.accuracy) or None for
    strategies that train (`options` carry their data and settings)."""
    if not budgets_ms:
        raise SearchError("give at least one latency budget")
    if not 0 <= margin < 1:
        raise SearchError(f"safety margin must be in [0, 1), got {margin}")
    searcher = get_strategy(strategy, **dict(options or {}))
    return [(float(b), searcher.search(space, table, accuracy, float(b) / (1 + margin)))
            for b in budgets_ms]


def measure_winners(space: SearchSpace, results: Sequence[tuple[float, SearchResult]],
                    manifest: dict[str, Any],
                    device: Device, out: Path, config: CampaignConfig | None = None,
                    progress: ProgressSink | None = None) -> list[BudgetOutcome]:
    """Measure each distinct winner once (resumable dataset in `out`) and pair it with its
    prediction."""
    runtime = manifest["runtime"]
    settings = settings_from_manifest(manifest)
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
    statistic = manifest.get("statistic", "median_ms")
    measured = dict(zip(records["key"], records[statistic].astype(float), strict=True))
    return [BudgetOutcome(budget, r.budget_ms, r.arch, r.accuracy, r.predicted_ms,
                          measured.get(f"{space.name}:{r.arch}"), r.feasible, r.evaluated)
            for budget, r in results]
