"""Evolution and random search under a latency budget, with any accuracy source.

The budget is enforced with the LatencyTable before anything is evaluated: an infeasible child
is rejected and redrawn, and after repeated failures repaired (moved to cheaper candidates), so
no infeasible architecture is ever evaluated or returned. Children already evaluated are
redrawn too: a repeat costs no query but teaches nothing.

Evolution is regularized (aging) evolution (Real et al. 2019): tournament selection, mutation
(`space.mutate`) and uniform crossover, the oldest member leaves. Zero-cost options: `warmup`
scores that many random feasible architectures with a proxy and seeds the population with the
best; `proposals` > 1 draws several children per step and evaluates the one the proxy ranks
first.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from latbench.bench.spaces.base import Arch, SearchSpace
from latbench.errors import ConfigError, SearchError
from latbench.search.accuracy import AccuracySource, as_source
from latbench.search.latency import LatencyTable, repair_to_budget
from latbench.search.strategies.base import (
    SearchContext,
    SearchResult,
    Strategy,
    register_strategy,
)

log = logging.getLogger(__name__)


def sample_feasible(space: SearchSpace, table: LatencyTable, budget_ms: float, n: int,
                    rng: np.random.Generator, exclude: set[tuple[int, ...]] | None = None,
                    max_draws: int = 200_000) -> list[Arch]:
    """Up to n distinct architectures drawn uniformly from those predicted within budget."""
    exclude = set() if exclude is None else exclude
    widths = np.array([space.n_candidates(i) for i in range(space.n_layers)])
    found: dict[tuple[int, ...], Arch] = {}
    drawn = 0
    while len(found) < n and drawn < max_draws:
        block = (rng.random((512, len(widths))) * widths).astype(np.int64)
        drawn += len(block)
        ok = table.latencies(block) <= budget_ms
        for row in block[ok]:
            key = tuple(int(c) for c in row)
            if key not in exclude and key not in found:
                found[key] = Arch(space.name, key)
                if len(found) >= n:
                    break
    return list(found.values())


class _Ledger:
    """Evaluated architectures, their scores and latency, in evaluation order."""

    def __init__(self, space: SearchSpace, table: LatencyTable, source: AccuracySource,
                 progress: Any, total: int, lane: str) -> None:
        self.space, self.table, self.source = space, table, source
        self.scores: dict[tuple[int, ...], float] = {}
        self.history: list[dict[str, Any]] = []
        self.progress, self.lane = progress, lane
        if progress is not None:
            progress.start(lane, total)

    def evaluate(self, arch: Arch) -> float:
        if arch.choices in self.scores:
            return self.scores[arch.choices]
        value = float(self.source([arch])[0])
        self.scores[arch.choices] = value
        self.history.append({"i": len(self.history), "arch": self.space.encode(arch),
                             "accuracy": value, "predicted_ms": self.table.latency(arch),
                             "queries": self.source.queries})
        if self.progress is not None:
            self.progress.advance(self.lane, 1)
        return value

    def result(self, strategy: str, budget_ms: float, verify_top: int) -> SearchResult:
        if not self.scores:
            raise SearchError(f"no {self.space.name} architecture is predicted under "
                              f"{budget_ms:.4g} ms")
        ranked = sorted(self.scores, key=self.scores.get, reverse=True)
        best = ranked[0]
        accuracy = self.scores[best]
        info: dict[str, Any] = {"accuracy_source": self.source.name}
        verify = getattr(self.source, "verify", None)
        if verify is not None and verify_top > 0:
            top = [Arch(self.space.name, c) for c in ranked[:verify_top]]
            true = verify(top)
            pick = int(np.argmax(true))
            best, accuracy = top[pick].choices, float(true[pick])
            info["predicted_accuracy"] = self.scores[best]
        arch = Arch(self.space.name, best)
        return SearchResult(strategy, self.space.encode(arch), accuracy, self.table.latency(arch),
                            float(budget_ms), len(self.scores), len(self.scores), self.history,
                            self.source.queries, info=info)


def _proxy(name: str | None, space: SearchSpace, batch: Any, seed: int) -> Any:
    from latbench.search.proxies import ProxyScorer

    return ProxyScorer(space, name or "naswot", batch, seed)


@register_strategy("evolution")
class EvolutionSearch(Strategy):
    """Regularized evolution within a latency budget (see the module docstring)."""

    queries_option = "max_queries"

    def __init__(self, population: int = 20, tournament: int = 5, max_queries: int = 500,
                 crossover: float = 0.3, mutation_rate: float | None = None, aging: bool = True,
                 warmup: int = 0, proposals: int = 1, proxy: str = "naswot",
                 proxy_batch: Any = None, verify_top: int = 10,
                 max_attempts: int = 100) -> None:
        if population < 2 or not 1 <= tournament <= population:
            raise ConfigError(f"evolution needs population >= 2 and 1 <= tournament <= "
                              f"population, got {population} and {tournament}")
        if max_queries < 1 or proposals < 1 or not 0 <= crossover <= 1:
            raise ConfigError("evolution needs max_queries >= 1, proposals >= 1 and a "
                              "crossover probability in [0, 1]")
        self.population, self.tournament = population, tournament
        self.max_queries, self.crossover, self.mutation_rate = max_queries, crossover, \
            mutation_rate
        self.aging, self.warmup, self.proposals = aging, warmup, proposals
        self.proxy, self.proxy_batch, self.verify_top = proxy, proxy_batch, verify_top
        self.max_attempts = max_attempts

    def search(self, space: SearchSpace, table: LatencyTable, accuracy: Any,
               budget_ms: float, context: SearchContext | None = None) -> SearchResult:
        context = context or SearchContext()
        source = as_source(accuracy, space)
        rng = np.random.default_rng(context.seed)
        ledger = _Ledger(space, table, source, context.progress, self.max_queries, self.name)
        scorer = (_proxy(self.proxy, space, self.proxy_batch, context.seed)
                  if self.warmup or self.proposals > 1 else None)

        def spent() -> bool:
            return (source.queries >= self.max_queries
                    or len(ledger.scores) >= self.max_queries)

        start = sample_feasible(space, table, budget_ms, max(self.warmup, self.population), rng)
        if not start:
            raise SearchError(f"no {space.name} architecture is predicted under "
                              f"{budget_ms:.4g} ms (random draws found none)")
        if scorer is not None and self.warmup:
            order = np.argsort(-scorer(start), kind="stable")
            start = [start[i] for i in order]
        population: deque[tuple[Arch, float]] = deque()
        for arch in start[:self.population]:
            if spent():
                break
            population.append((arch, ledger.evaluate(arch)))
        stale = 0
        while not spent() and stale < 50:
            children = [c for c in (self._child(space, table, budget_ms, population, ledger, rng)
                                    for _ in range(self.proposals)) if c is not None]
            if not children:
                stale += 1  # the feasible region looks exhausted around the population
                continue
            stale = 0
            child = children[0] if len(children) == 1 else \
                children[int(np.argmax(scorer(children)))]
            population.append((child, ledger.evaluate(child)))
            if len(population) > self.population:
                if self.aging:
                    population.popleft()
                else:
                    worst = min(range(len(population)), key=lambda i: population[i][1])
                    del population[worst]
        return ledger.result(self.name, budget_ms, self.verify_top)

    def _select(self, population: Sequence[tuple[Arch, float]],
                rng: np.random.Generator) -> Arch:
        picks = rng.choice(len(population), size=min(self.tournament, len(population)),
                           replace=False)
        return max((population[int(i)] for i in picks), key=lambda item: item[1])[0]

    def _child(self, space: SearchSpace, table: LatencyTable, budget_ms: float,
               population: Sequence[tuple[Arch, float]], ledger: _Ledger,
               rng: np.random.Generator) -> Arch | None:
        """A feasible, not yet evaluated child; None after max_attempts."""
        for attempt in range(self.max_attempts):
            parent = self._select(population, rng)
            if rng.random() < self.crossover and len(population) > 1:
                other = self._select(population, rng)
                mask = rng.random(space.n_layers) < 0.5
                child = Arch(space.name, tuple(int(a if m else b) for a, b, m in
                                               zip(parent.choices, other.choices, mask,
                                                   strict=True)))
                if child.choices in (parent.choices, other.choices):
                    child = space.mutate(child, rng, self.mutation_rate)
            else:
                child = space.mutate(parent, rng, self.mutation_rate)
            if table.latency(child) > budget_ms:
                if attempt < self.max_attempts // 2:
                    continue  # reject and redraw first; repair only when rejection keeps failing
                fixed = repair_to_budget(child.choices, table, budget_ms, rng=rng)
                if fixed is None:
                    return None
                child = Arch(space.name, fixed)
            if child.choices not in ledger.scores:
                return child
        return None


@register_strategy("random")
class RandomSearch(Strategy):
    """Uniform random architectures within the budget; with `warmup` >= max_queries, draw that
    many, and evaluate them in the order a zero-cost proxy ranks them."""

    queries_option = "max_queries"

    def __init__(self, max_queries: int = 500, warmup: int = 0, proxy: str = "naswot",
                 proxy_batch: Any = None, verify_top: int = 10) -> None:
        if max_queries < 1:
            raise ConfigError(f"random search needs max_queries >= 1, got {max_queries}")
        self.max_queries, self.warmup, self.proxy = max_queries, warmup, proxy
        self.proxy_batch, self.verify_top = proxy_batch, verify_top

    def search(self, space: SearchSpace, table: LatencyTable, accuracy: Any,
               budget_ms: float, context: SearchContext | None = None) -> SearchResult:
        context = context or SearchContext()
        source = as_source(accuracy, space)
        rng = np.random.default_rng(context.seed)
        archs = sample_feasible(space, table, budget_ms, max(self.warmup, self.max_queries), rng)
        if self.warmup and archs:
            scores = _proxy(self.proxy, space, self.proxy_batch, context.seed)(archs)
            archs = [archs[i] for i in np.argsort(-scores, kind="stable")]
        ledger = _Ledger(space, table, source, context.progress, self.max_queries, self.name)
        for arch in archs:
            if source.queries >= self.max_queries or len(ledger.scores) >= self.max_queries:
                break
            ledger.evaluate(arch)
        return ledger.result(self.name, budget_ms, self.verify_top)
