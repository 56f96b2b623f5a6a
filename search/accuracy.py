"""Where a search's accuracy comes from: a benchmark table, a trained accuracy predictor, or a
zero-cost proxy. Each source scores a list of architectures (higher is better) and counts its
table queries (true accuracy look-ups of distinct architectures), the cost NAS benchmarks
compare strategies by.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from latbench.bench.spaces.base import Arch, SearchSpace
from latbench.errors import ConfigError, SearchError

log = logging.getLogger(__name__)


class AccuracySource(Protocol):
    name: str
    queries: int

    def __call__(self, archs: Sequence[Arch]) -> np.ndarray: ...

    def fresh(self) -> AccuracySource: ...


class TableAccuracy:
    """Accuracy (%) read from a table keyed by the space's architecture strings."""

    def __init__(self, space: SearchSpace, table: Mapping[str, float]) -> None:
        self.space = space
        self.table = table
        self.name = "table"
        self.seen: set[tuple[int, ...]] = set()

    @property
    def queries(self) -> int:
        return len(self.seen)

    def fresh(self) -> TableAccuracy:
        """The same table with no queries counted (one per search)."""
        return TableAccuracy(self.space, self.table)

    def __call__(self, archs: Sequence[Arch]) -> np.ndarray:
        out = np.empty(len(archs))
        for i, arch in enumerate(archs):
            code = self.space.encode(arch)
            if code not in self.table:
                raise SearchError(f"accuracy table has no {self.space.name} architecture {code}")
            self.seen.add(arch.choices)
            out[i] = float(self.table[code])
        return out


class ProxyAccuracy:
    """A zero-cost proxy as the accuracy signal (no table queries; scores are not %)."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.name = f"proxy:{scorer.name}"
        self.queries = 0

    def fresh(self) -> ProxyAccuracy:
        return self  # no queries to count; the scorer's cache is worth keeping

    def __call__(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.scorer(archs)


def one_hot(space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
    """Architecture encodings for accuracy predictors: one-hot choice per layer."""
    widths = [space.n_candidates(i) for i in range(space.n_layers)]
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]])
    out = np.zeros((len(archs), int(sum(widths))), dtype=np.float32)
    for row, arch in enumerate(archs):
        out[row, offsets + np.asarray(arch.choices)] = 1.0
    return out


class SurrogateAccuracy:
    """An accuracy predictor (gradient boosting or a small MLP on one-hot encodings) trained on
    `n_init` random architectures whose true accuracy is queried from `truth`; `verify`
    queries the truth for a search's final candidates."""

    MODELS = ("gbm", "mlp")

    def __init__(self, space: SearchSpace, truth: TableAccuracy, n_init: int = 100,
                 model: str = "gbm", seed: int = 0) -> None:
        if model not in self.MODELS:
            raise ConfigError(f"unknown accuracy predictor {model!r}; known: "
                              f"{', '.join(self.MODELS)}")
        if n_init < 5:
            raise ConfigError(f"an accuracy predictor needs >= 5 training architectures, got "
                              f"{n_init}")
        self.space = space
        self.truth = truth
        self.n_init = n_init
        self.model_name = model
        self.seed = seed
        self.name = f"surrogate:{model}"
        self.model: Any = None
        self.train_archs: list[Arch] = []

    @property
    def queries(self) -> int:
        return self.truth.queries

    def fresh(self) -> SurrogateAccuracy:
        """Untrained, no queries counted: each search pays for its own training data."""
        return SurrogateAccuracy(self.space, self.truth.fresh(), self.n_init, self.model_name,
                                 self.seed)

    def fit(self) -> None:
        rng = np.random.default_rng(self.seed)
        seen: dict[tuple[int, ...], Arch] = {}
        limit = min(self.n_init, self.space.size)
        while len(seen) < limit:
            arch = self.space.sample(rng)
            seen.setdefault(arch.choices, arch)
        self.train_archs = list(seen.values())
        y = self.truth(self.train_archs)
        x = one_hot(self.space, self.train_archs)
        if self.model_name == "gbm":
            from sklearn.ensemble import GradientBoostingRegressor

            model = GradientBoostingRegressor(n_estimators=200, max_depth=3, learning_rate=0.05,
                                              subsample=0.8, random_state=self.seed)
        else:
            from sklearn.neural_network import MLPRegressor

            model = MLPRegressor(hidden_layer_sizes=(64, 64), max_iter=2000, alpha=1e-3,
                                 random_state=self.seed)
        self.model = model.fit(x, y)

    def __call__(self, archs: Sequence[Arch]) -> np.ndarray:
        if self.model is None:
            self.fit()
        return np.asarray(self.model.predict(one_hot(self.space, archs)), dtype=float)

    def verify(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.truth(archs)


def make_source(spec: str, space: SearchSpace, table: Mapping[str, float] | None = None,
                batch: tuple[Any, Any] | None = None, seed: int = 0) -> AccuracySource:
    """"table", "surrogate[:gbm|mlp[:N]]" or "proxy:NAME" (e.g. proxy:naswot, proxy:vote)."""
    kind, _, rest = spec.partition(":")
    if kind == "proxy":
        from latbench.search.proxies import ProxyScorer

        return ProxyAccuracy(ProxyScorer(space, rest or "naswot", batch, seed))
    if table is None:
        raise ConfigError(f"accuracy source {spec!r} needs an accuracy table of {space.name}")
    if kind == "table":
        return TableAccuracy(space, table)
    if kind == "surrogate":
        model, _, count = rest.partition(":")
        try:
            n_init = int(count) if count else 100
        except ValueError:
            raise ConfigError(f"bad surrogate size in {spec!r}") from None
        return SurrogateAccuracy(space, TableAccuracy(space, table), n_init, model or "gbm",
                                 seed)
    raise ConfigError(f"unknown accuracy source {spec!r}; use table, surrogate[:gbm|mlp[:N]] "
                      "or proxy:NAME")


def as_source(accuracy: Any, space: SearchSpace) -> AccuracySource:
    """A fresh source for one search (its queries start at 0): a Mapping (code -> accuracy)
    becomes a TableAccuracy, a source is renewed with `fresh()`."""
    if isinstance(accuracy, Mapping):
        return TableAccuracy(space, accuracy)
    if callable(accuracy) and hasattr(accuracy, "fresh"):
        return accuracy.fresh()
    raise ConfigError(f"{type(accuracy).__name__} is not an accuracy table or source")
