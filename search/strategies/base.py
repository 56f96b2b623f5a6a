"""The Strategy protocol every search strategy implements, what a search runs with
(SearchContext) and returns (SearchResult), and the registry strategies join.

A strategy is an object holding its hyper-parameters (the options a user passes with
`--option KEY=VALUE`); each search gets the run's seed, progress sink, training data and
distributed handles through a `SearchContext`, so one strategy object serves every budget.
A strategy class describes itself with class attributes (`trains`, `accuracy_sources`,
`epochs_option`, `queries_option`, `distributed`) and `option_names()`: callers read those,
never the strategy's name, so adding a strategy is one `@register_strategy(NAME)`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from latbench.errors import ConfigError
from latbench.registry import Registry

if TYPE_CHECKING:
    from latbench.bench.campaign import ProgressSink
    from latbench.bench.spaces.base import SearchSpace
    from latbench.search.latency import LatencyTable

ACCURACY_KINDS = ("table", "surrogate", "proxy")


@dataclass(frozen=True)
class SearchContext:
    """What one search runs with besides the space, table, accuracy and budget.

    `data` is the training data of strategies that train ("digits", an image folder path or
    a `search.data.DataSplits`); `dist_info` is a `search.supernet.Distributed` under torchrun
    (None in a single process)."""

    seed: int = 0
    progress: ProgressSink | None = None
    data: Any = "digits"
    dist_info: Any = None


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


class Strategy(ABC):
    """A search strategy: `search(space, table, accuracy, budget_ms, context)`.

    Class attributes say what callers must know about it:
    - `trains`: it trains networks on `context.data` and returns the trained winner as
      `SearchResult.module` (it then takes no accuracy source: `accuracy` is None);
    - `accuracy_sources`: the accuracy kinds it scores with (`table`: a benchmark's accuracy
      table, `surrogate`: a predictor trained on table queries, `proxy`: a zero-cost proxy);
      a strategy taking only "table" is given the table itself (code -> accuracy);
    - `epochs_option`, `queries_option`: the option an epoch or query limit sets (None: it
      has no such limit);
    - `distributed`: it joins a torchrun process group (`context.dist_info`).
    The constructor's keyword arguments are its options (`option_names()`).
    """

    name: ClassVar[str] = ""
    trains: ClassVar[bool] = False
    accuracy_sources: ClassVar[tuple[str, ...]] = ACCURACY_KINDS
    epochs_option: ClassVar[str | None] = None
    queries_option: ClassVar[str | None] = None
    distributed: ClassVar[bool] = False

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The options the constructor takes (its keyword parameters)."""
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return tuple(name for name, p in inspect.signature(cls.__init__).parameters.items()
                     if name != "self" and p.kind in kinds)

    @abstractmethod
    def search(self, space: SearchSpace, table: LatencyTable, accuracy: Any, budget_ms: float,
               context: SearchContext | None = None) -> SearchResult:
        """The best architecture predicted within `budget_ms` (context None: seed 0, no
        progress, digits for training)."""


STRATEGIES: Registry[type[Strategy]] = Registry("search strategy")


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: register a Strategy subclass under `name` (which becomes its `name`)."""

    def decorate(cls: type[Strategy]) -> type[Strategy]:
        if name not in STRATEGIES and not (isinstance(cls, type)
                                           and issubclass(cls, Strategy)):
            raise ConfigError(f"search strategy {name!r}: {cls!r} is not a Strategy subclass")
        STRATEGIES.add(name, cls)
        cls.name = name
        return cls

    return decorate


def strategy_class(name: str) -> type[Strategy]:
    """The registered class (its description) without building it."""
    return STRATEGIES.lookup(name)


def get_strategy(name: str, **options: Any) -> Strategy:
    """Strategy `name` built with `options`; an unknown option is refused, naming the known
    ones."""
    cls = STRATEGIES.lookup(name)
    known = cls.option_names()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"search strategy {name!r} rejects its options: unknown option "
                          f"{unknown[0]!r}; known: {', '.join(sorted(known)) or 'none'}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"search strategy {name!r} rejects its options "
                          f"({', '.join(sorted(options)) or 'none'}): {exc}") from exc
