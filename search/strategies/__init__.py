"""Search strategies, each a swappable object registered by name."""

from __future__ import annotations

from latbench.search.strategies import (  # noqa: F401  (registers the strategies)
    evolution,
    exhaustive,
    halving,
    proxyless,
)
from latbench.search.strategies.base import (
    STRATEGIES,
    SearchResult,
    get_strategy,
    register_strategy,
)

__all__ = ["STRATEGIES", "SearchResult", "get_strategy", "register_strategy"]
