"""Per-kernel latency predictors behind the scikit-learn estimator contract.

X is a sequence of OpSpecs, y kernel milliseconds. One regressor per kernel kind, fitted on log
latency so that errors are relative (what a latency budget cares about). A kind the predictor
never saw raises UnknownKernelError naming it: a silent zero would make every network with that
kernel look faster than it is.

The tree members (xgboost, rf) learn the residual over a log-linear baseline (log latency
linear in log FLOPs, padded FLOPs and log sizes): trees are piecewise constant, so on their own
they price a layer unlike any they saw (a 3-channel stem, an unusual width) like its nearest
seen neighbour; over the baseline they only correct it (docs/predictors.md has the figures).

The call overhead, the composition into networks and the manifest belong to the network-level
`LatencyPredictor` (latency_predictor.py), which holds one of these.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from latbench.bench.ops import OpSpec
from latbench.errors import PredictorError, UnknownKernelError
from latbench.predictor.features import (
    BASELINE_FEATURES,
    FEATURE_NAMES,
    FEATURE_VERSION,
    feature_matrix,
    feature_width,
)
from latbench.registry import Registry

PREDICTORS: Registry[type[KernelPredictor]] = Registry("predictor", PredictorError)


def register_predictor(name: str):
    def decorate(cls: type[KernelPredictor]) -> type[KernelPredictor]:
        PREDICTORS.add(name, cls)
        cls.registry_name = name
        return cls

    return decorate


def _by_kind(specs: list[OpSpec], version: int = FEATURE_VERSION
             ) -> Iterator[tuple[str, np.ndarray, list[OpSpec], np.ndarray]]:
    """Per kernel kind, in sorted order: (kind, row mask, its specs, its feature rows: the
    columns the kind is fitted on)."""
    kinds = np.array([s.kind for s in specs])
    features = feature_matrix(specs, version)
    for kind in sorted(set(kinds)):
        rows = kinds == kind
        yield (str(kind), rows, [s for s, keep in zip(specs, rows, strict=True) if keep],
               features[rows][:, :feature_width(str(kind), version)])


def _with_intercept(features: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    return np.column_stack([np.ones(len(features)), features[:, columns]])


def fit_log_linear(features: np.ndarray, columns: Sequence[int], log_ms: np.ndarray,
                   ridge: float) -> np.ndarray:
    """[intercept, coefficients]: log ms linear in the feature `columns`, by ridge regression
    (penalty scaled by the row count; the intercept is never shrunk)."""
    a = _with_intercept(features, columns)
    penalty = ridge * len(a) * np.eye(a.shape[1])
    penalty[0, 0] = 0.0
    return np.linalg.solve(a.T @ a + penalty, a.T @ log_ms)


def predict_log_linear(coef: np.ndarray, features: np.ndarray, columns: Sequence[int]
                       ) -> np.ndarray:
    return _with_intercept(features, columns) @ coef


BASELINE_COLUMNS = [FEATURE_NAMES.index(name) for name in BASELINE_FEATURES]
BASELINE_RIDGE = 1e-3
BASELINE_SUFFIX = ".baseline.json"


@dataclass
class ResidualModel:
    """A kind's model as baseline + learned residual (log ms); `baseline` is None for models
    saved before baselines existed (feature version 1), which predict with `residual` alone."""

    baseline: np.ndarray | None  # [intercept, one coefficient per BASELINE_FEATURES column]
    residual: Any

    def base(self, features: np.ndarray) -> np.ndarray:
        return predict_log_linear(self.baseline, features, BASELINE_COLUMNS)


class KernelPredictor(RegressorMixin, BaseEstimator):
    """One model per kernel kind; subclasses say how one kind's model is fitted and stored."""

    registry_name = ""
    learns_residual = False  # tree members: fit the residual over a log-linear baseline

    def fit(self, X: Sequence[OpSpec], y: Sequence[float]) -> KernelPredictor:
        specs = list(X)
        target = np.asarray(y, dtype=np.float64)
        if len(specs) != len(target):
            raise PredictorError(f"{len(specs)} specs but {len(target)} latencies")
        if not specs:
            raise PredictorError("cannot fit a predictor on zero kernels")
        if np.any(~np.isfinite(target)) or np.any(target <= 0):
            raise PredictorError("kernel latencies must be finite and positive")
        models: dict[str, Any] = {}
        n_train: dict[str, int] = {}
        for kind, rows, kind_specs, features in _by_kind(specs):
            try:
                models[kind] = self._fit_specs(kind_specs, features, target[rows])
            except ValueError as exc:  # sklearn's and xgboost's parameter errors among them
                raise PredictorError(
                    f"{self.registry_name or type(self).__name__} could not be fitted on the "
                    f"{kind} kernels with parameters {self.get_params()}: "
                    f"{first_line(exc)}") from exc
            n_train[kind] = len(kind_specs)
        self.models_, self.n_train_, self.feature_version_ = models, n_train, FEATURE_VERSION
        return self

    def predict(self, X: Sequence[OpSpec]) -> np.ndarray:
        if not hasattr(self, "models_"):
            raise PredictorError(f"{type(self).__name__} is not fitted yet")
        specs = list(X)
        missing = sorted({s.kind for s in specs} - set(self.models_))
        if missing:
            example = next(s for s in specs if s.kind in missing)
            raise UnknownKernelError(
                f"predictor has no model for kernel kind(s) {', '.join(missing)} "
                f"(e.g. {example.key()}); it knows {', '.join(sorted(self.models_))}")
        out = np.empty(len(specs))
        if not specs:
            return out
        version = getattr(self, "feature_version_", FEATURE_VERSION)
        for kind, rows, kind_specs, features in _by_kind(specs, version):
            out[rows] = self._predict_ms(self.models_[kind], kind_specs, features)
        return out

    @property
    def kinds(self) -> list[str]:
        return sorted(getattr(self, "models_", {}))

    # subclass hooks -----------------------------------------------------------------------
    # Most members learn log latency from the feature matrix (`_fit_kind`/`_predict_kind`);
    # a member that needs the specs themselves (the lookup table) overrides the two below.
    def _fit_specs(self, specs: list[OpSpec], features: np.ndarray, ms: np.ndarray) -> Any:
        log_ms = np.log(ms)
        if not self.learns_residual:
            return self._fit_kind(features, log_ms)
        baseline = fit_log_linear(features, BASELINE_COLUMNS, log_ms, BASELINE_RIDGE)
        base = predict_log_linear(baseline, features, BASELINE_COLUMNS)
        return ResidualModel(baseline, self._fit_kind(features, log_ms - base))

    def _predict_ms(self, model: Any, specs: list[OpSpec], features: np.ndarray) -> np.ndarray:
        if isinstance(model, ResidualModel) and model.baseline is not None:
            return np.exp(model.base(features) + self._predict_kind(model.residual, features))
        if isinstance(model, ResidualModel):  # saved before baselines: exactly as it was then
            return np.exp(self._predict_kind(model.residual, features))
        return np.exp(self._predict_kind(model, features))

    def save_kind(self, model: Any, path: Path) -> str:
        """Write one kind's model next to `path` (no suffix), its baseline (if any) beside it;
        return the main file's name."""
        if not isinstance(model, ResidualModel):
            return self._save_kind(model, path)
        name = self._save_kind(model.residual, path)
        if model.baseline is not None:
            text = json.dumps({"features": list(BASELINE_FEATURES),
                               "coefficients": [float(c) for c in model.baseline]})
            path.with_name(path.name + BASELINE_SUFFIX).write_text(text + "\n")
        return name

    def load_kind(self, file: Path) -> Any:
        """One kind's model from its main file (and the baseline beside it, if saved)."""
        model = self._load_kind(file)
        if not self.learns_residual:
            return model
        baseline_file = file.with_name(file.name.split(".")[0] + BASELINE_SUFFIX)
        baseline = None
        if baseline_file.is_file():
            try:
                saved = json.loads(baseline_file.read_text())
                if saved["features"] != list(BASELINE_FEATURES):
                    raise ValueError(f"features {saved['features']} are not "
                                     f"{list(BASELINE_FEATURES)}")
                baseline = np.array(saved["coefficients"], dtype=np.float64)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise PredictorError(f"{baseline_file} is not a saved baseline: {exc}") from exc
        return ResidualModel(baseline, model)

    def _fit_kind(self, features: np.ndarray, log_ms: np.ndarray) -> Any:
        raise NotImplementedError

    def _predict_kind(self, model: Any, features: np.ndarray) -> np.ndarray:
        return model.predict(features)

    def _save_kind(self, model: Any, path: Path) -> str:
        """Write one kind's model next to `path` (no suffix); return the file name written."""
        raise NotImplementedError

    def _load_kind(self, path: Path) -> Any:
        raise NotImplementedError


@register_predictor("xgboost")
class XGBoostKernelPredictor(KernelPredictor):
    """Gradient-boosted trees per kernel kind (the default)."""

    learns_residual = True

    def __init__(self, n_estimators: int = 600, max_depth: int = 6, learning_rate: float = 0.05,
                 subsample: float = 0.85, colsample_bytree: float = 0.9,
                 min_child_weight: float = 1.0, random_state: int = 0,
                 n_jobs: int | None = None) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _regressor(self) -> Any:
        import xgboost

        return xgboost.XGBRegressor(
            n_estimators=self.n_estimators, max_depth=self.max_depth,
            learning_rate=self.learning_rate, subsample=self.subsample,
            colsample_bytree=self.colsample_bytree, min_child_weight=self.min_child_weight,
            random_state=self.random_state, n_jobs=self.n_jobs, tree_method="hist")

    def _fit_kind(self, features: np.ndarray, log_ms: np.ndarray) -> Any:
        return self._regressor().fit(features, log_ms)

    def _save_kind(self, model: Any, path: Path) -> str:
        target = path.with_suffix(".json")
        model.save_model(target)
        return target.name

    def _load_kind(self, path: Path) -> Any:
        import xgboost

        model = self._regressor()
        try:
            model.load_model(path)
        except (xgboost.core.XGBoostError, OSError, ValueError) as exc:
            raise PredictorError(f"{path} is not a saved xgboost model: "
                                 f"{first_line(exc)}") from exc
        return model


@register_predictor("rf")
class RandomForestKernelPredictor(KernelPredictor):
    """Random forest per kernel kind (scikit-learn), kept as numpy arrays of its trees.

    After fitting, each tree's node table and leaf values are copied out of scikit-learn and
    predictions come from a small numpy evaluator, so a saved forest (plain .npz arrays, no
    pickle) reloads to bit-identical predictions on any scikit-learn version.
    """

    learns_residual = True

    def __init__(self, n_estimators: int = 300, max_depth: int | None = None,
                 min_samples_leaf: int = 1, max_features: float | str | None = 0.6,
                 random_state: int = 0, n_jobs: int | None = None) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _fit_kind(self, features: np.ndarray, log_ms: np.ndarray) -> Any:
        from sklearn.ensemble import RandomForestRegressor

        forest = RandomForestRegressor(
            n_estimators=self.n_estimators, max_depth=self.max_depth,
            min_samples_leaf=self.min_samples_leaf, max_features=self.max_features,
            random_state=self.random_state, n_jobs=self.n_jobs).fit(features, log_ms)
        return TreeArrays.from_forest(forest)

    def _save_kind(self, model: Any, path: Path) -> str:
        target = path.with_suffix(".npz")
        model.save(target)
        return target.name

    def _load_kind(self, path: Path) -> Any:
        return TreeArrays.load(path)


class TreeArrays:
    """A forest of regression trees as flat numpy arrays (all trees' nodes concatenated).

    `left`/`right` are absolute node indices (-1 at a leaf), `roots` the first node of each
    tree. The evaluator compares float32 features with float64 thresholds, as scikit-learn
    does, and averages trees in order, so it reproduces scikit-learn's predictions.
    """

    FIELDS = ("left", "right", "feature", "threshold", "value", "roots")

    def __init__(self, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
                 threshold: np.ndarray, value: np.ndarray, roots: np.ndarray) -> None:
        self.left = np.asarray(left, dtype=np.int64)
        self.right = np.asarray(right, dtype=np.int64)
        self.feature = np.asarray(feature, dtype=np.int64)
        self.threshold = np.asarray(threshold, dtype=np.float64)
        self.value = np.asarray(value, dtype=np.float64)
        self.roots = np.asarray(roots, dtype=np.int64)

    @classmethod
    def from_forest(cls, forest: Any) -> TreeArrays:
        parts: dict[str, list[np.ndarray]] = {name: [] for name in cls.FIELDS}
        offset = 0
        for tree in forest.estimators_:
            state = tree.tree_.__getstate__()
            nodes = state["nodes"]
            leaf = nodes["left_child"] == -1
            parts["left"].append(np.where(leaf, -1, nodes["left_child"] + offset))
            parts["right"].append(np.where(leaf, -1, nodes["right_child"] + offset))
            parts["feature"].append(nodes["feature"])
            parts["threshold"].append(nodes["threshold"])
            parts["value"].append(state["values"].reshape(len(nodes), -1)[:, 0])
            parts["roots"].append(np.array([offset]))
            offset += len(nodes)
        return cls(**{name: np.concatenate(arrays) for name, arrays in parts.items()})

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32).astype(np.float64)
        rows = np.arange(len(x))
        total = np.zeros(len(x))
        for root in self.roots:
            node = np.full(len(x), root, dtype=np.int64)
            while True:
                inner = self.left[node] != -1
                if not inner.any():
                    break
                at = node[inner]
                go_left = x[rows[inner], self.feature[at]] <= self.threshold[at]
                node[inner] = np.where(go_left, self.left[at], self.right[at])
            total += self.value[node]
        return total / len(self.roots)

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, **{name: getattr(self, name) for name in self.FIELDS})

    @classmethod
    def load(cls, path: Path) -> TreeArrays:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(**{name: data[name] for name in cls.FIELDS})
        except (OSError, KeyError, ValueError) as exc:
            raise PredictorError(f"{path} is not a saved random forest: {exc}") from exc


@register_predictor("linear")
class LinearKernelPredictor(KernelPredictor):
    """Baseline: per kind, log latency linear in log FLOPs and log bytes moved (ridge).

    What a FLOPs-only estimate gives once bytes are allowed to matter; the reference line the
    learned members must beat.
    """

    def __init__(self, ridge: float = 1e-3) -> None:
        self.ridge = ridge

    COLUMNS = [FEATURE_NAMES.index("log_flops"), FEATURE_NAMES.index("log_bytes")]

    def _fit_kind(self, features: np.ndarray, log_ms: np.ndarray) -> Any:
        return fit_log_linear(features, self.COLUMNS, log_ms, self.ridge)

    def _predict_kind(self, model: Any, features: np.ndarray) -> np.ndarray:
        return predict_log_linear(model, features, self.COLUMNS)

    def _save_kind(self, model: Any, path: Path) -> str:
        target = path.with_suffix(".npy")
        with open(target, "wb") as f:
            np.save(f, np.asarray(model, dtype=np.float64), allow_pickle=False)
        return target.name

    def _load_kind(self, path: Path) -> Any:
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise PredictorError(f"{path} is not a saved linear model: {exc}") from exc


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (xgboost appends native stack traces)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_PARAM_TYPES = (int, float, str, bool, type(None))  # what a JSON --params value can be


def _accepted_types(cls: type[KernelPredictor], name: str, default: Any) -> tuple[type, ...] | None:
    """The types `name` accepts: from the constructor's annotation, else from its default
    (None when anything goes: no annotation and a None default)."""
    try:
        hint = typing.get_type_hints(cls.__init__).get(name)
    except (NameError, TypeError):
        hint = None
    if hint is not None:
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) or \
            typing.get_origin(hint) is typing.Union else (hint,)
        accepted = tuple(a for a in args if isinstance(a, type))
        if accepted and all(a in _PARAM_TYPES for a in accepted):
            return accepted
    if default is None:
        return None
    return (type(default),)


def _type_ok(value: Any, accepted: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in accepted
    if isinstance(value, int) and float in accepted:
        return True
    return isinstance(value, accepted)


def check_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """`params` for registered predictor `name`, checked against its constructor: every name
    one of its get_params(), every value of the type its default (or annotation) says; bad
    input raises PredictorError naming the parameter and the predictor."""
    cls = get_predictor_class(name)
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise PredictorError(f"parameters of predictor {name!r} must be a JSON object of "
                             f"name: value, got {type(params).__name__}")
    defaults = cls().get_params()
    out = {}
    for key, value in params.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise PredictorError(f"predictor {name!r} has no parameter {key!r}; its "
                                 f"parameters: {known}")
        accepted = _accepted_types(cls, key, defaults[key])
        if accepted is not None and not _type_ok(value, accepted):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in accepted)
            raise PredictorError(f"predictor {name!r} parameter {key!r} must be {wanted}, got "
                                 f"{value!r}")
        out[key] = value
    return out


# Members registered in modules of their own, imported on first lookup (they import this one).
_ZOO_MODULES = ("latbench.predictor.lut", "latbench.predictor.kernel_transfer")


def _import_zoo() -> None:
    import importlib

    for module in _ZOO_MODULES:
        importlib.import_module(module)


def predictor_names() -> list[str]:
    """Every registered predictor type (the zoo)."""
    _import_zoo()
    return sorted(PREDICTORS)


def get_predictor_class(name: str) -> type[KernelPredictor]:
    _import_zoo()
    return PREDICTORS.lookup(name)
