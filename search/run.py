"""One search job as the command line describes it: the space, the latency table (a predictor or
the FLOPs model), the accuracy source or training data, and the strategy - prepared once and
searched under every budget.

Nothing here knows a strategy by name: what a strategy needs (training data, an accuracy table
or source, which option an epoch or query limit sets) is read from its registered class.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latbench.bench.spaces import SPACES, SearchSpace
from latbench.errors import ConfigError
from latbench.search.latency import LatencyTable
from latbench.search.strategies import (
    STRATEGIES,
    SearchContext,
    SearchResult,
    Strategy,
    get_strategy,
    strategy_class,
)

if TYPE_CHECKING:
    from latbench.bench.platform import PlatformChoice
    from latbench.predictor.latency_predictor import LatencyPredictor
    from latbench.search.budget import BudgetTarget

def parse_options(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    """KEY=VALUE strings -> dict; values are JSON when they parse (numbers, lists, true)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r} is not KEY=VALUE")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except ValueError:
            out[key.replace("-", "_")] = raw
    return out


@dataclass(frozen=True)
class SearchJob:
    """A search as a user asks for it. `queries` and `epochs` set the option the strategy
    declares for them (`queries_option`, `epochs_option`)."""

    space: str = "nasbench-macro"
    space_options: Mapping[str, Any] = field(default_factory=dict)
    strategy: str = "exhaustive"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    accuracy: str | None = None     # table | surrogate[:gbm|mlp[:N]] | proxy:NAME
    data: str = "digits"            # for strategies that train: digits or an image folder
    seed: int = 0
    queries: int | None = None
    epochs: int | None = None

    @property
    def strategy_class(self) -> type[Strategy]:
        return strategy_class(self.strategy)

    @property
    def trains(self) -> bool:
        return self.strategy_class.trains


def build_strategy(job: SearchJob) -> Strategy:
    """The job's strategy with its options, `queries` and `epochs` mapped to the options the
    strategy declares for them."""
    cls = job.strategy_class
    options = dict(job.strategy_options)
    for what, value, option, attr in (("queries", job.queries, cls.queries_option,
                                       "queries_option"),
                                      ("epochs", job.epochs, cls.epochs_option,
                                       "epochs_option")):
        if value is None:
            continue
        if option is None:
            takers = sorted(n for n, c in STRATEGIES.items() if getattr(c, attr))
            raise ConfigError(f"strategy {job.strategy} takes no {what} limit (--{what} "
                              f"applies to {', '.join(takers) or 'no strategy'})")
        options[option] = value
    return get_strategy(job.strategy, **options)


def build_space(job: SearchJob, num_classes: int | None = None) -> tuple[SearchSpace,
                                                                          dict[str, Any]]:
    """The space with the job's options (plus the space's `training_defaults` when the
    strategy trains)."""
    factory = SPACES.lookup(job.space)
    options = dict(job.space_options)
    if job.trains:
        for key, value in getattr(factory, "training_defaults", {}).items():
            options.setdefault(key, value)
        if num_classes is not None:
            options.setdefault("num_classes", num_classes)
    try:
        return factory(**options), options
    except TypeError as exc:
        raise ConfigError(f"bad option for space {job.space}: {exc}") from exc


def _accuracy_kind(job: SearchJob) -> str:
    return (job.accuracy or "table").partition(":")[0]


def accuracy_for(job: SearchJob, space: SearchSpace, table: Mapping[str, float] | None) -> Any:
    """What the strategy scores architectures with: None for strategies that train, the table
    itself for strategies that read only a table, else an accuracy source (search.accuracy)
    of `job.accuracy` (default: the table when the space has one, else proxy:naswot)."""
    from latbench.search.accuracy import make_source

    cls = job.strategy_class
    if cls.trains:
        if job.accuracy is not None:
            raise ConfigError(f"strategy {job.strategy} trains its candidates and takes no "
                              f"accuracy source (got {job.accuracy!r})")
        return None
    spec = job.accuracy or ("table" if table is not None else "proxy:naswot")
    kind = spec.partition(":")[0]
    if kind not in cls.accuracy_sources or (kind == "table" and table is None):
        proxies = sorted(n for n, c in STRATEGIES.items()
                         if not c.trains and "proxy" in c.accuracy_sources)
        hint = f" (use {' or '.join(proxies)} with --accuracy proxy:NAME)" if proxies else ""
        if cls.accuracy_sources == ("table",):
            raise ConfigError(f"{job.strategy} search needs an accuracy table; {space.name} has "
                              f"none here{hint}")
        raise ConfigError(f"{job.strategy} search scores with "
                          f"{', '.join(cls.accuracy_sources) or 'no accuracy source'}, not "
                          f"{spec!r}{hint}")
    if cls.accuracy_sources == ("table",):
        return table
    return make_source(spec, space, table, seed=job.seed)


@dataclass
class Prepared:
    """Everything a job searches with, built once for all its budgets."""

    job: SearchJob
    space: SearchSpace
    space_options: dict[str, Any]
    table: LatencyTable
    predictor: LatencyPredictor | None  # None for the analytical "flops" table
    accuracy_table: Mapping[str, float] | None
    target: BudgetTarget
    strategy: Strategy
    accuracy: Any = None
    data: Any = None

    @property
    def measurable(self) -> bool:
        return self.predictor is not None

    def platform_json(self) -> dict[str, Any] | None:
        """The platform the latency table predicts for (None for the flops table)."""
        if self.predictor is None:
            return None
        return {**self.predictor.platform.to_json(), "label": self.predictor.platform.label()}

    def latency_range(self) -> tuple[float, float]:
        """Predicted ms of the space's fastest and slowest architectures."""
        rows = self.table.layer_ms
        return (self.table.fixed_ms + sum(min(r) for r in rows),
                self.table.fixed_ms + sum(max(r) for r in rows))

    def context(self, progress: Any = None, dist_info: Any = None) -> SearchContext:
        return SearchContext(self.job.seed, progress,
                             self.job.data if self.data is None else self.data, dist_info)


def prepare(job: SearchJob, predictor: str, data_dir: Path | None = None,
            margin: float | None = None, budget_statistic: str | None = None,
            platform: PlatformChoice | None = None) -> Prepared:
    """Space, latency table (a predictor directory at the platform `platform` chooses among
    those it holds, or "flops" for the analytical table),
    what the budgets are about and how far below them to aim (BudgetTarget), benchmark
    accuracy table when the space has one and the strategy scores with it, search data when
    the strategy trains. The strategy and its options are checked first, before anything is
    loaded."""
    from latbench.search.budget import budget_target
    from latbench.search.data import load_data

    strategy = build_strategy(job)
    data = None
    if job.trains:
        probe, _ = build_space(job)
        data = load_data(job.data, probe.input_shape[-1], job.seed)
    space, options = build_space(job, None if data is None else data.num_classes)
    if data is not None and data.resolution != space.input_shape[-1]:
        data = load_data(job.data, space.input_shape[-1], job.seed)
    model = None
    if predictor == "flops":
        if platform is not None and platform.flags():
            raise ConfigError(f"{platform.flags()} chooses a predictor's platform; the flops "
                              "table has none")
        table = LatencyTable.from_flops(space)
    else:
        from latbench.predictor.latency_predictor import LatencyPredictor

        model = LatencyPredictor.load(Path(predictor), platform)
        table = LatencyTable.from_predictor(space, model)
    target = budget_target(model, budget_statistic, margin)
    accuracy_table = None
    if not job.trains and _accuracy_kind(job) in ("table", "surrogate"):
        if data_dir is None and job.strategy_class.accuracy_sources == ("table",):
            raise ConfigError(f"{job.strategy} search reads an accuracy table and there is no "
                              "reference data: pass --data-dir or set LATBENCH_DATA")
        if data_dir is not None:
            accuracy_table = space.accuracy_table(data_dir)
    accuracy = accuracy_for(job, space, accuracy_table)
    return Prepared(job, space, options, table, model, accuracy_table, target, strategy,
                    accuracy, data)


def run_job(prepared: Prepared, budgets_ms: Sequence[float], progress: Any = None,
            dist_info: Any = None, margin: float | None = None
            ) -> list[tuple[float, SearchResult]]:
    """(budget, result) per budget, each searched under budget / the target's factor (with
    `margin` instead of the target's when given: 0 searches under budget / gap, the point
    prediction within the budget, as a search that measures its candidates does)."""
    from latbench.search.budget import search_budgets

    return search_budgets(prepared.space, prepared.table, prepared.accuracy, budgets_ms,
                          prepared.strategy,
                          prepared.target.margin if margin is None else margin,
                          prepared.context(progress, dist_info), prepared.target.gap)
