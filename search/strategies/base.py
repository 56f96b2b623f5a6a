"""What a strategy returns, and the registry strategies join."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from latbench.errors import ConfigError
from latbench.registry import Registry

STRATEGIES: Registry[Callable[..., Any]] = Registry("search strategy")


def register_strategy(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return STRATEGIES.register(name)


def get_strategy(name: str, **options: Any) -> Any:
    factory = STRATEGIES.lookup(name)
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(f"search strategy {name!r} rejects its options "
                          f"({', '.join(sorted(options)) or 'none'}): {exc}") from exc


@dataclass(frozen=True)
class SearchResult:
    """The winner of a search and how it was found.

    `accuracy` is the strategy's accuracy source: a benchmark table's accuracy (%), a test
    accuracy (%) after training on the search data (supernet, successive halving), or a proxy
    score. `queries` counts true-accuracy table look-ups; `module` is the winner's trained
    network when the strategy trained one.
    """

    strategy: str
    arch: str
    accuracy: float
    predicted_ms: float
    budget_ms: float
    evaluated: int
    feasible: int
    history: list[dict[str, Any]] = field(default_factory=list)
    queries: int = 0
    module: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Everything but the module and the history."""
        return {"strategy": self.strategy, "arch": self.arch, "accuracy": self.accuracy,
                "predicted_ms": self.predicted_ms, "budget_ms": self.budget_ms,
                "evaluated": self.evaluated, "feasible": self.feasible, "queries": self.queries,
                **self.info}
