"""Search strategies, each a swappable `Strategy` registered by name (importing this package
registers the built-in ones)."""

from __future__ import annotations

from latbench.search.strategies import (  # noqa: F401  (registers the strategies)
    evolution,
    exhaustive,
    halving,
    proxyless,
)
from latbench.search.strategies.base import (
    STRATEGIES,
    SearchContext,
    SearchResult,
    Strategy,
    get_strategy,
    register_strategy,
    strategy_class,
)

__all__ = ["STRATEGIES", "SearchContext", "SearchResult", "Strategy", "get_strategy",
           "register_strategy", "strategy_class"]
