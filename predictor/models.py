"""Per-kernel latency predictors behind the scikit-learn estimator contract.

X is a sequence of OpSpecs, y kernel milliseconds. One regressor per kernel kind, fitted on log
latency so that errors are relative (what a latency budget cares about). A kind the predictor
never saw raises UnknownKernelError naming it: a silent zero would make every network with that
kernel look faster than it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from bench.ops import OpSpec
from latbench.errors import PredictorError, UnknownKernelError
from predictor.features import FEATURE_VERSION, feature_matrix

PREDICTORS: dict[str, type[KernelPredictor]] = {}


def register_predictor(name: str):
    def decorate(cls: type[KernelPredictor]) -> type[KernelPredictor]:
        if name in PREDICTORS:
            raise PredictorError(f"predictor {name!r} is registered twice")
        PREDICTORS[name] = cls
        cls.registry_name = name
        return cls

    return decorate


class KernelPredictor(RegressorMixin, BaseEstimator):
    """One model per kernel kind; subclasses say how one kind's model is fitted and stored."""

    registry_name = ""

    def fit(self, X: Sequence[OpSpec], y: Sequence[float], call_overhead_ms: float = 0.0
            ) -> KernelPredictor:
        specs = list(X)
        target = np.asarray(y, dtype=np.float64)
        if len(specs) != len(target):
            raise PredictorError(f"{len(specs)} specs but {len(target)} latencies")
        if not specs:
            raise PredictorError("cannot fit a predictor on zero kernels")
        if np.any(~np.isfinite(target)) or np.any(target <= 0):
            raise PredictorError("kernel latencies must be finite and positive")
        kinds = np.array([s.kind for s in specs])
        features = feature_matrix(specs)
        self.models_: dict[str, Any] = {}
        self.n_train_: dict[str, int] = {}
        for kind in sorted(set(kinds)):
            rows = kinds == kind
            self.models_[kind] = self._fit_kind(features[rows], np.log(target[rows]))
            self.n_train_[kind] = int(rows.sum())
        self.call_overhead_ms_ = float(call_overhead_ms)
        self.feature_version_ = FEATURE_VERSION
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
        kinds = np.array([s.kind for s in specs])
        features = feature_matrix(specs)
        for kind in set(kinds):
            rows = kinds == kind
            out[rows] = np.exp(self._predict_kind(self.models_[kind], features[rows]))
        return out

    @property
    def kinds(self) -> list[str]:
        return sorted(getattr(self, "models_", {}))

    # subclass hooks -----------------------------------------------------------------------
    def _fit_kind(self, features: np.ndarray, log_ms: np.ndarray) -> Any:
        raise NotImplementedError

    def _predict_kind(self, model: Any, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _save_kind(self, model: Any, path: Path) -> str:
        """Write one kind's model next to `path` (no suffix); return the file name written."""
        raise NotImplementedError

    def _load_kind(self, path: Path) -> Any:
        raise NotImplementedError


@register_predictor("xgboost")
class XGBoostKernelPredictor(KernelPredictor):
    """Gradient-boosted trees per kernel kind (the default)."""

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

    def _predict_kind(self, model: Any, features: np.ndarray) -> np.ndarray:
        return model.predict(features)

    def _save_kind(self, model: Any, path: Path) -> str:
        target = path.with_suffix(".json")
        model.save_model(target)
        return target.name

    def _load_kind(self, path: Path) -> Any:
        model = self._regressor()
        model.load_model(path)
        return model
