"""Whole-network prediction: composed kernel predictions plus one runtime call overhead.

A kernel timed alone runs with its weights hot in cache; inside a network its weights were just
evicted by the kernels before it, so networks run slower than the sum of their kernels (on this
project's CPU by 5-10%). The composition step learns that from a few measured networks: one
scale per kernel kind, fitted by ridge regression pulled towards 1 (so kinds the calibration
networks barely exercise stay at their kernel-level values). Without calibration networks every
scale is 1 and the prediction is the plain sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.ops import OpSpec
from latbench.errors import PredictorError

SCALE_BOUNDS = (0.5, 2.0)


@dataclass(frozen=True)
class NetworkPrediction:
    predicted_ms: float
    overhead_ms: float
    kernels: tuple[tuple[OpSpec, float], ...]

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for spec, ms in self.kernels:
            out[spec.kind] = out.get(spec.kind, 0.0) + ms
        return out

    def to_json(self) -> dict[str, Any]:
        return {"predicted_ms": self.predicted_ms, "overhead_ms": self.overhead_ms,
                "n_kernels": len(self.kernels),
                "by_kind_ms": self.by_kind(),
                "kernels": [{"key": s.key(), "kind": s.kind, "predicted_ms": ms}
                            for s, ms in self.kernels]}


def composed_kernel_ms(predictor: Any, specs: Sequence[OpSpec]) -> np.ndarray:
    """Each kernel's contribution to a network: its prediction times its kind's scale."""
    specs = list(specs)
    if not specs:
        return np.zeros(0)
    raw = np.asarray(predictor.predict(specs), dtype=np.float64)
    scale = getattr(predictor, "kind_scale_", None) or {}
    return raw * np.array([scale.get(s.kind, 1.0) for s in specs])


def predict_network(predictor: Any, specs: Sequence[OpSpec]) -> NetworkPrediction:
    specs = list(specs)
    per_kernel = composed_kernel_ms(predictor, specs)
    overhead = float(getattr(predictor, "call_overhead_ms_", 0.0))
    return NetworkPrediction(float(per_kernel.sum()) + overhead, overhead,
                             tuple(zip(specs, (float(v) for v in per_kernel), strict=True)))


def predict_onnx(predictor: Any, model: bytes | str | Path) -> NetworkPrediction:
    from predictor.kernels import onnx_to_kernels

    return predict_network(predictor, onnx_to_kernels(model))


def fit_composition(predictor: Any, networks: Sequence[tuple[Sequence[OpSpec], float]],
                    ridge: float = 1.0) -> dict[str, Any]:
    """Fit per-kind scales on measured networks (kernels, ms); sets `predictor.kind_scale_`.

    Minimises sum_n ((sum_k a_kind(k) p_k + overhead - m_n) / m_n)^2 + ridge * |a - 1|^2.
    Returns a summary (scales, networks used, RMSPE of the plain sum and of the composition).
    """
    if not networks:
        raise PredictorError("no calibration networks to fit the composition on")
    kinds = sorted(predictor.models_)
    index = {k: i for i, k in enumerate(kinds)}
    overhead = float(getattr(predictor, "call_overhead_ms_", 0.0))
    sums = np.zeros((len(networks), len(kinds)))
    measured = np.array([float(ms) for _, ms in networks])
    if np.any(~np.isfinite(measured)) or np.any(measured <= 0):
        raise PredictorError("calibration network latencies must be finite and positive")
    for row, (kernels, _) in enumerate(networks):
        kernels = list(kernels)
        for spec, ms in zip(kernels, predictor.predict(kernels), strict=True):
            sums[row, index[spec.kind]] += ms
    a = sums / measured[:, None]
    b = (measured - overhead) / measured
    lhs = a.T @ a + ridge * np.eye(len(kinds))
    rhs = a.T @ b + ridge * np.ones(len(kinds))
    scales = np.clip(np.linalg.solve(lhs, rhs), *SCALE_BOUNDS)
    before = sums.sum(axis=1) + overhead
    after = sums @ scales + overhead
    predictor.kind_scale_ = {k: float(s) for k, s in zip(kinds, scales, strict=True)}
    under = np.percentile(measured / after - 1, 90)
    return {"kind_scale": predictor.kind_scale_, "networks": len(networks), "ridge": ridge,
            "rmspe_pct_sum": _rmspe(before, measured),
            "rmspe_pct_composed": _rmspe(after, measured),
            "underprediction_p90_pct": float(100 * max(0.0, under))}


def safety_margin(manifest: dict[str, Any], default: float = 0.03) -> float:
    """How much faster than a budget a search should aim, as a fraction: the predictor's 90th
    percentile under-prediction on its calibration networks (a default without them)."""
    composition = manifest.get("composition") or {}
    if "underprediction_p90_pct" in composition:
        return float(composition["underprediction_p90_pct"]) / 100
    return default


def _rmspe(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(100 * np.sqrt(np.mean((predicted / measured - 1) ** 2)))
