"""What a strategy returns, and the registry strategies join."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from latbench.errors import ConfigError

STRATEGIES: dict[str, Callable[..., Any]] = {}


def register_strategy(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in STRATEGIES:
            raise ConfigError(f"search strategy {name!r} is registered twice")
        STRATEGIES[name] = factory
        return factory

    return decorate


def get_strategy(name: str, **options: Any) -> Any:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown search strategy {name!r}; known: "
                          f"{', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name](**options)


@dataclass(frozen=True)
class SearchResult:
    """The winner of a search and how it was found."""

    strategy: str
    arch: str
    accuracy: float
    predicted_ms: float
    budget_ms: float
    evaluated: int
    feasible: int
    history: list[dict[str, Any]] = field(default_factory=list)
