"""Peak memory of a model on one runtime: the graph's memory figures (`bench.memory`: weights and
live activation bytes walked in execution order) composed by a few coefficients fitted on the
measured peaks of the predictor's calibration networks.

    peak = constant + k_conv * conv weight bytes + k_weights * other weight bytes
                    + k_live * peak live activation bytes + k_all * all activation bytes

The constant is what the runtime itself adds for any model (its session, kernel registry and
first-run buffers); k_conv covers copies a runtime makes of convolution weights (ONNX Runtime's
NCHWc layout on x86 keeps a reordered copy, XNNPACK packs them); the two activation terms span
a planner that reuses every freed byte (k_live) and one that reuses little (k_all). Uncalibrated
(no network with a measured peak), the model is the graph's own need: weights plus peak live
activations, no runtime constant - `MemoryPrediction.calibrated` says which.

Fit: non-negative least squares on relative errors (every network counts alike, whatever its
size). A term whose values across the calibration networks span less than MIN_SPREAD of their
median peak cannot be told from the constant and keeps its prior (e.g. the classifier weights
of a search space's networks, which all share one head); with few networks only the constant
is fitted. Saved as plain JSON inside the predictor's manifest (`to_json`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from latbench.bench.memory import MemoryProfile, card_profiles
from latbench.errors import PredictorError
from latbench.predictor.training import setup_networks

TERMS = ("conv_weight_bytes", "other_weight_bytes", "activation_peak_bytes",
         "activation_total_bytes")
PRIOR = {"conv_weight_bytes": 1.0, "other_weight_bytes": 1.0, "activation_peak_bytes": 1.0,
         "activation_total_bytes": 0.0}
MIN_SPREAD = 0.05   # of the median measured peak (see the module docstring)
EXTRA_NETWORKS = 3  # networks beyond the free coefficients' count needed to fit the scales
MIB = float(1 << 20)


def term_values(profile: MemoryProfile) -> np.ndarray:
    """The profile's values of TERMS, in bytes."""
    return np.array([profile.conv_weight_bytes,
                     profile.weight_bytes - profile.conv_weight_bytes,
                     profile.activation_peak_bytes, profile.activation_total_bytes],
                    dtype=np.float64)


@dataclass(frozen=True)
class MemoryPrediction:
    """A model's predicted peak memory in bytes and its parts: the runtime's constant, the
    weights (scaled) and the activations (scaled); the model file's size; whether the model
    was calibrated on measured peaks, and how those were measured."""

    peak_bytes: float
    constant_bytes: float
    weight_bytes: float
    activation_bytes: float
    model_size_bytes: int | None
    calibrated: bool
    method: str
    profile: MemoryProfile

    def to_json(self) -> dict[str, Any]:
        return {"peak_bytes": round(self.peak_bytes), "peak_mib": self.peak_bytes / MIB,
                "constant_bytes": round(self.constant_bytes),
                "weight_bytes": round(self.weight_bytes),
                "activation_bytes": round(self.activation_bytes),
                "model_size_bytes": self.model_size_bytes, "calibrated": self.calibrated,
                "method": self.method, "graph": self.profile.to_json()}

    def text(self) -> str:
        """One line for `latbench predict`."""
        size = ("" if self.model_size_bytes is None
                else f"; model file {self.model_size_bytes / MIB:.2f} MiB")
        how = (f"runtime constant {self.constant_bytes / MIB:.1f} + weights "
               f"{self.weight_bytes / MIB:.1f} + activations {self.activation_bytes / MIB:.1f}"
               if self.calibrated else
               "uncalibrated: the graph's weights + peak live activations only, without the "
               "runtime's own memory (no measured network peaks in the predictor's dataset)")
        return f"predicted peak memory: {self.peak_bytes / MIB:.1f} MiB ({how}){size}"


@dataclass(frozen=True)
class MemoryModel:
    """The coefficients (module docstring) and what they were calibrated on: `calibration`
    holds networks, keys, method, fitted terms, in-sample and leave-one-out errors."""

    constant_bytes: float = 0.0
    scales: Mapping[str, float] = field(default_factory=lambda: dict(PRIOR))
    calibration: Mapping[str, Any] = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        return bool(self.calibration.get("networks"))

    def predict_profile(self, profile: MemoryProfile) -> MemoryPrediction:
        x = term_values(profile)
        k = np.array([self.scales[t] for t in TERMS])
        parts = x * k
        return MemoryPrediction(
            peak_bytes=float(self.constant_bytes + parts.sum()),
            constant_bytes=float(self.constant_bytes), weight_bytes=float(parts[:2].sum()),
            activation_bytes=float(parts[2:].sum()), model_size_bytes=profile.model_size_bytes,
            calibrated=self.calibrated, method=str(self.calibration.get("method") or ""),
            profile=profile)

    def predict(self, model: Any, input_shapes: Mapping[str, Sequence[int]] | None = None
                ) -> MemoryPrediction:
        """The peak memory of a model file (path or bytes, any format `bench.memory` reads)."""
        from latbench.bench.memory import profile_model

        return self.predict_profile(profile_model(model, input_shapes))

    def to_json(self) -> dict[str, Any]:
        return {"constant_bytes": self.constant_bytes, "scales": dict(self.scales),
                "calibration": dict(self.calibration)}

    @classmethod
    def from_json(cls, raw: Any, where: str = "memory") -> MemoryModel:
        """A model from `to_json` output; PredictorError naming the bad field."""
        if not isinstance(raw, Mapping):
            raise PredictorError(f"{where} must be a JSON object, got {type(raw).__name__}")
        constant = raw.get("constant_bytes", 0.0)
        scales = raw.get("scales") or {}
        if not _number(constant) or not isinstance(scales, Mapping) \
                or set(scales) != set(TERMS) or not all(_number(v) for v in scales.values()):
            raise PredictorError(f"{where}: needs a number constant_bytes and scales for "
                                 f"{', '.join(TERMS)}, got {dict(raw)!r:.300}")
        calibration = raw.get("calibration") or {}
        if not isinstance(calibration, Mapping):
            raise PredictorError(f"{where}: calibration must be a JSON object")
        return cls(float(constant), {t: float(scales[t]) for t in TERMS}, dict(calibration))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _solve(x: np.ndarray, y: np.ndarray, free: Sequence[int]) -> tuple[float, np.ndarray]:
    """(constant, scales) minimising the relative error, scales of `free` terms >= 0 fitted,
    the others at their prior."""
    from scipy.optimize import nnls

    prior = np.array([PRIOR[t] for t in TERMS])
    target = y - x @ prior + x[:, free] @ prior[free]  # what the constant and free terms explain
    design = np.column_stack([np.ones(len(y)), x[:, free]]) / y[:, None]
    coef, _ = nnls(design, target / y)
    scales = prior.copy()
    scales[list(free)] = coef[1:]
    return float(coef[0]), scales


def fit_memory(profiles: Sequence[MemoryProfile], peaks: Sequence[float],
               keys: Sequence[str] = (), method: str = "") -> MemoryModel:
    """Fit the coefficients on networks' figures and measured peaks (bytes); see the module
    docstring for which are fitted. No networks: the uncalibrated prior."""
    if len(profiles) != len(peaks):
        raise PredictorError(f"{len(profiles)} memory profiles for {len(peaks)} measured peaks")
    y = np.asarray(peaks, dtype=np.float64)
    if not len(y):
        return MemoryModel()
    if not np.all(np.isfinite(y) & (y > 0)):
        raise PredictorError("measured peaks must be positive numbers of bytes")
    x = np.array([term_values(p) for p in profiles])
    spread = np.ptp(x, axis=0)
    order = [i for i in np.argsort(-spread) if spread[i] >= MIN_SPREAD * np.median(y)]
    free = sorted(order[:max(0, len(y) - 1 - EXTRA_NETWORKS)])
    constant, scales = _solve(x, y, free)
    predicted = constant + x @ scales
    loo = []
    for i in range(len(y)) if len(y) > 1 else ():
        keep = np.arange(len(y)) != i
        c, k = _solve(x[keep], y[keep], free)
        loo.append((c + x[i] @ k) / y[i] - 1)
    rel = predicted / y - 1
    calibration = {
        "networks": int(len(y)), "method": method, "fitted": [TERMS[i] for i in free],
        "rmspe_pct": float(100 * np.sqrt(np.mean(rel ** 2))),
        "within10": float(np.mean(np.abs(rel) <= 0.10)),
        "rmspe_pct_loo": float(100 * np.sqrt(np.mean(np.square(loo)))) if loo else None,
        "keys": list(keys)}
    return MemoryModel(constant, dict(zip(TERMS, (float(v) for v in scales), strict=True)),
                       calibration)


def dataset_memory_pairs(records: pd.DataFrame, card: Mapping[str, Any], setup: Mapping[str, Any]
                         ) -> tuple[list[str], list[MemoryProfile], list[float], str]:
    """(keys, profiles, measured peak bytes, method) of a dataset's networks measured in the
    setup (device, runtime, settings) of `setup` with a peak and figures in the card."""
    if "peak_memory_bytes" not in records.columns:
        return [], [], [], ""
    profiles = card_profiles(card)
    nets = setup_networks(records, setup)
    nets = nets[nets["peak_memory_bytes"].notna() & nets["key"].isin(list(profiles))
                & (nets["peak_memory_bytes"] > 0)]
    methods = sorted({str(m).split(":", 1)[0] for m in nets["memory_method"]})
    keys = [str(k) for k in nets["key"]]
    return (keys, [profiles[k] for k in keys],
            [float(v) for v in nets["peak_memory_bytes"]], ", ".join(methods))


def fit_dataset_memory(records: pd.DataFrame, card: Mapping[str, Any],
                       setup: Mapping[str, Any]) -> MemoryModel:
    """The memory model of a dataset's setup: fitted on its networks' measured peaks (the
    predictor's calibration networks), the uncalibrated prior when it has none."""
    keys, profiles, peaks, method = dataset_memory_pairs(records, card, setup)
    return fit_memory(profiles, peaks, keys, method)


def memory_metrics(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """n, RMSPE and MAPE (%), bias (%), within-5/10/15% of predicted against measured peaks."""
    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    if len(p) != len(m) or not len(p):
        raise PredictorError(f"need equal, non-empty predictions and measurements ({len(p)} "
                             f"vs {len(m)})")
    rel = p / m - 1
    return {"n": float(len(p)), "rmspe_pct": float(100 * np.sqrt(np.mean(rel ** 2))),
            "mape_pct": float(100 * np.mean(np.abs(rel))), "bias_pct": float(100 * rel.mean()),
            "within5": float(np.mean(np.abs(rel) <= 0.05)),
            "within10": float(np.mean(np.abs(rel) <= 0.10)),
            "within15": float(np.mean(np.abs(rel) <= 0.15))}


__all__ = ["PRIOR", "TERMS", "MemoryModel", "MemoryPrediction", "dataset_memory_pairs",
           "fit_dataset_memory", "fit_memory", "memory_metrics", "term_values"]
