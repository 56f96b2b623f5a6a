"""Exhaustive search: score every architecture of a small space (NAS-Bench-Macro has 6,561)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from latbench.bench.spaces.base import SearchSpace
from latbench.errors import SearchError
from latbench.search.latency import LatencyTable, choices_matrix
from latbench.search.strategies.base import (
    SearchContext,
    SearchResult,
    Strategy,
    register_strategy,
)


@register_strategy("exhaustive")
class ExhaustiveSearch(Strategy):
    """The most accurate architecture whose predicted latency is within the budget, read from
    an accuracy table of the whole space."""

    accuracy_sources = ("table",)

    def search(self, space: SearchSpace, table: LatencyTable, accuracy: Mapping[str, float],
               budget_ms: float, context: SearchContext | None = None) -> SearchResult:
        archs = space.all_archs()
        latency = table.latencies(choices_matrix(archs))
        codes = [space.encode(a) for a in archs]
        missing = [c for c in codes if c not in accuracy]
        if missing:
            raise SearchError(f"accuracy table lacks {len(missing)} architectures of "
                              f"{space.name}, e.g. {missing[0]}")
        acc = np.array([accuracy[c] for c in codes])
        feasible = latency <= budget_ms
        if not feasible.any():
            raise SearchError(f"no {space.name} architecture is predicted under {budget_ms:.3f} "
                              f"ms; the fastest is predicted at {latency.min():.3f} ms")
        best = int(np.flatnonzero(feasible)[np.argmax(acc[feasible])])
        return SearchResult(self.name, codes[best], float(acc[best]), float(latency[best]),
                            float(budget_ms), len(archs), int(feasible.sum()),
                            queries=len(archs))
