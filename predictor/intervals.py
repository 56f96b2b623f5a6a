"""Prediction intervals: how far a network's measured latency may lie from its prediction.

Two sources of error, each read from residuals the fit already computes and stored as
quantiles of log(measured / predicted) (`ratio_quantiles`):
- the kernels: per kind, the out-of-fold residuals of the kernel model's cross-validation
  (training.cross_validate), i.e. its error on kernel shapes it was not fitted on;
- the composition: the leave-one-out residuals on the calibration networks
  (model_level._CompositionDesign.solve), i.e. its error on a network it was not fitted on.

`network_interval` combines them: the composition's quantiles (taken at a finite-sample
corrected level, and widened when there are fewer than FEW_NETWORKS calibration networks) and
the spread of the kernels the kernel model was not trained on (each by its kind's
quantiles, weighted by its share of the predicted time, independent of each other) add in
quadrature in log space; the result is widened by the share of predicted time from kernels
outside their kind's training range. Kernels the model was trained on add nothing: the
calibration networks are made of such kernels, so their leave-one-out residuals already
carry that error. docs/predictors.md
("Prediction intervals") states the defaults and what is a heuristic.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latbench.errors import ConfigError

DEFAULT_LEVEL = 0.90
KEY_DIGEST_CHARS = 16  # trained kernels are stored as this many hex digits of sha1(key)
# The probabilities at which residual quantiles are stored (0 and 1: the extremes seen).
QUANTILE_PROBS = (0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975, 0.99,
                  0.995, 1.0)
# Fewer calibration networks than this: the composition's half-widths grow by
# sqrt(FEW_NETWORKS / n) (its tail quantiles rest on one or two networks).
FEW_NETWORKS = 20
# A kernel kind with no out-of-fold residuals (too few records to cross-validate, a lookup
# table, cv_folds=0) counts with this log half-width (about +-10%) at any level.
DEFAULT_KERNEL_SPREAD = 0.10
# A predictor without calibration networks (the plain sum of kernels) counts this log
# half-width for the composition (about +-10%; docs/predictors.md, Prediction intervals).
DEFAULT_NETWORK_SPREAD = 0.10
# Half-widths grow by 1 + OUT_OF_RANGE_WIDEN x (share of predicted time outside the training
# range): a network entirely outside is given three times the width (a heuristic; nothing
# measured says how much an extrapolation misses).
OUT_OF_RANGE_WIDEN = 2.0


def check_level(level: Any, what: str = "interval level") -> float:
    """`level` as a float in (0, 1); anything else is a ConfigError naming `what`."""
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in (0, 1), got {level!r}") from None
    if not 0 < value < 1:
        raise ConfigError(f"{what} must be in (0, 1) (e.g. 0.9 for 90%), got {level}")
    return value


def ratio_quantiles(measured: Sequence[float], predicted: Sequence[float]) -> dict[str, Any]:
    """{"n", "probs", "log_ratio"}: quantiles of log(measured / predicted) at QUANTILE_PROBS
    over the pairs where both are positive and finite."""
    m = np.asarray(measured, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    ok = np.isfinite(m) & np.isfinite(p) & (m > 0) & (p > 0)
    logs = np.log(m[ok] / p[ok])
    if not len(logs):
        return {"n": 0, "probs": [], "log_ratio": []}
    return {"n": int(len(logs)), "probs": list(QUANTILE_PROBS),
            "log_ratio": [float(v) for v in np.quantile(logs, QUANTILE_PROBS)]}


def usable(stored: Any) -> bool:
    """Whether `stored` is a ratio_quantiles entry to compute with (read from an untrusted
    manifest: anything malformed counts as absent)."""
    if not isinstance(stored, Mapping):
        return False
    probs, values = stored.get("probs"), stored.get("log_ratio")
    return (isinstance(probs, list) and isinstance(values, list) and len(probs) >= 2
            and len(probs) == len(values)
            and all(isinstance(v, int | float) and math.isfinite(v) for v in probs + values)
            and probs == sorted(probs) and isinstance(stored.get("n"), int)
            and stored["n"] > 0)


def quantile_at(stored: Mapping[str, Any], prob: float) -> float:
    """The stored log-ratio quantile at `prob`, interpolated linearly between stored ones."""
    return float(np.interp(prob, stored["probs"], stored["log_ratio"]))


def _sides(level: float) -> tuple[float, float]:
    return (1 - level) / 2, (1 + level) / 2


def composition_spread(stored: Mapping[str, Any] | None, level: float
                       ) -> tuple[float, float, float]:
    """(center, low, high) log offsets of the composition at `level`: the median residual and
    the signed distances of the interval's ends from it. With n calibration networks the
    level's quantiles are taken as split conformal prediction takes them (at p (n + 1) / n,
    the extremes seen once that passes 1) and, under FEW_NETWORKS, the distances grow by
    sqrt(FEW_NETWORKS / n). Without networks (None): DEFAULT_NETWORK_SPREAD both ways."""
    if stored is None:
        return 0.0, -DEFAULT_NETWORK_SPREAD, DEFAULT_NETWORK_SPREAD
    n = int(stored["n"])
    # each side's tail probability, corrected: the upper quantile is taken at p (n + 1) / n
    tail = max(0.0, 1 - (1 + level) / 2 * (n + 1) / n)
    center = quantile_at(stored, 0.5)
    widen = math.sqrt(FEW_NETWORKS / n) if n < FEW_NETWORKS else 1.0
    return (center, widen * (quantile_at(stored, tail) - center),
            widen * (quantile_at(stored, 1 - tail) - center))


def kernel_spread(kernels: Sequence[tuple[str, float, bool]],
                  stored: Mapping[str, Mapping[str, Any]], level: float) -> tuple[float, float]:
    """(low, high) log offsets of the kernels' error at `level`: per kernel (kind, composed
    ms, whether the model was trained on it) not trained on, its kind's out-of-fold quantiles
    about their median (DEFAULT_KERNEL_SPREAD for a kind without), weighted by the kernel's
    share of the predicted time; the kernels' errors are taken as independent."""
    total = sum(max(ms, 0.0) for _, ms, _ in kernels)
    if total <= 0:
        return 0.0, 0.0
    low_p, high_p = _sides(level)
    low = high = 0.0
    for kind, ms, trained in kernels:
        if trained:
            continue
        share = max(ms, 0.0) / total
        entry = stored.get(kind)
        if entry is not None and usable(entry):
            center = quantile_at(entry, 0.5)
            low += (share * min(0.0, quantile_at(entry, low_p) - center)) ** 2
            high += (share * max(0.0, quantile_at(entry, high_p) - center)) ** 2
        else:
            low += (share * DEFAULT_KERNEL_SPREAD) ** 2
            high += (share * DEFAULT_KERNEL_SPREAD) ** 2
    return -math.sqrt(low), math.sqrt(high)


def network_interval(predicted_ms: float, kernels_ms: Sequence[tuple[str, float, bool]],
                     coverage: float | None, residuals: Mapping[str, Mapping[str, Any]],
                     composition: Mapping[str, Any] | None, level: float = DEFAULT_LEVEL
                     ) -> tuple[float, float]:
    """(low, high) ms around `predicted_ms` at `level` (see the module docstring):
    `kernels_ms` are the kernels' kinds, composed ms and whether the kernel model was trained
    on them, `coverage` the share of that time inside the training range (None: unknown, not
    widened), `residuals` the per-kind out-of-fold quantiles and `composition` the calibration
    networks' leave-one-out quantiles (None: none)."""
    level = check_level(level)
    center, net_low, net_high = composition_spread(composition, level)
    ker_low, ker_high = kernel_spread(kernels_ms, residuals, level)
    widen = 1 + OUT_OF_RANGE_WIDEN * (1 - coverage) if coverage is not None else 1.0
    low = center - widen * math.hypot(min(net_low, 0.0), ker_low)
    high = center + widen * math.hypot(max(net_high, 0.0), ker_high)
    return predicted_ms * math.exp(low), predicted_ms * math.exp(high)


def key_digest(key: str) -> str:
    """A kernel key's short digest: how a predictor remembers which kernels it was trained on
    without storing every key."""
    return hashlib.sha1(key.encode()).hexdigest()[:KEY_DIGEST_CHARS]
