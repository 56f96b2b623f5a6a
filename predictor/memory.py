"""Peak memory of a model on one runtime: the graph's memory figures (`bench.memory`: weights,
their largest tensors, ops and live activation bytes walked in execution order) composed by a
few coefficients fitted on the measured peaks of the predictor's calibration networks.

A runtime's resident set peaks in one of its phases - while it loads the model or while it runs
it - never in both at once, so the phases' extra memory is a maximum, not a sum:

    peak = constant + k_w * weight bytes + k_ops * ops
           + max( rewrite: k_c * conv weight bytes + k_mc * largest conv weight,
                  load:    k_mw * largest weight tensor,
                  run:     k_live * peak live activations + k_all * all activations )

The constant is the runtime's own memory for any model (its session, kernel registry); the
weights and a per-op share (kernels, their state) stay for the model's life. Loading adds
copies that are freed once it is done: graph rewrites that lay convolution weights out anew
(ONNX Runtime's optimisation level `all` holds the old and the new layout of every convolution,
and a few copies of the one being rewritten), and the copy of the tensor being deserialised.
Running adds the activations: k_live and k_all place the runtime's planner between one that
reuses every freed byte and one that reuses little (an arena that keeps what it once held, a
memory pattern laid out beside it). docs/predictors.md, "Peak memory", has the measurements
behind each term.

Uncalibrated (no network with a measured peak), the model is the graph's own need: the weights
plus the larger of the largest weight tensor and the peak live activations, no runtime constant -
`MemoryPrediction.calibrated` says which.

Fit: least squares on relative errors (every network counts alike, whatever its size), every
coefficient >= 0. The maximum makes it a fit per phase once each network's peaking phase is
known: descents alternate fitting with re-assigning networks to the phase the fit puts highest,
started from every phase peaking everywhere, from the prior's phases and from seeded random
assignments, the best polished by least squares on the maximum itself. A
term whose values hardly vary across the calibration networks (their spread under MIN_SPREAD of
the largest) cannot be told from the constant and keeps its prior (e.g. the classifier weights
of a search space's networks, which all share one head); terms are freed in FIT_ORDER while
EXTRA_NETWORKS more networks than free coefficients remain, so few networks fit the constant
only. A freed coefficient is drawn gently towards its prior (RIDGE, in units of its typical
share of a peak): where the calibration networks never reach a phase (a set of convolution
networks whose loading always outweighs their activations), that phase's coefficients stay
near the prior instead of wandering. Saved as plain JSON inside the predictor's manifest
(`to_json`); models saved before the phases (one sum of terms) load and predict as they did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from latbench.bench.memory import MemoryProfile, card_profiles
from latbench.errors import PredictorError
from latbench.predictor.training import setup_networks

# The graph's figures a coefficient can scale (bytes, or a count for ops).
TERMS: dict[str, Callable[[MemoryProfile], float]] = {
    "weight_bytes": lambda p: p.weight_bytes,
    "conv_weight_bytes": lambda p: p.conv_weight_bytes,
    "other_weight_bytes": lambda p: p.weight_bytes - p.conv_weight_bytes,
    "max_weight_bytes": lambda p: p.max_weight_bytes,
    "max_conv_weight_bytes": lambda p: p.max_conv_weight_bytes,
    "activation_peak_bytes": lambda p: p.activation_peak_bytes,
    "activation_total_bytes": lambda p: p.activation_total_bytes,
    "ops": lambda p: p.steps,
}
# The priors (uncalibrated coefficients) of the terms held throughout, and of each phase's.
RESIDENT = {"weight_bytes": 1.0, "ops": 0.0}
PHASES = {"rewrite": {"conv_weight_bytes": 0.0, "max_conv_weight_bytes": 0.0},
          "load": {"max_weight_bytes": 1.0},
          "run": {"activation_peak_bytes": 1.0, "activation_total_bytes": 0.0}}
PHASE_WORDS = {"rewrite": "loading (graph rewrites)", "load": "loading (tensor copies)",
               "run": "running (activations)"}
# The order in which coefficients are freed when the networks are few ("phase:term" or term).
FIT_ORDER = ("weight_bytes", "run:activation_peak_bytes", "rewrite:conv_weight_bytes",
             "rewrite:max_conv_weight_bytes", "load:max_weight_bytes",
             "run:activation_total_bytes", "ops")
MIN_SPREAD = 0.05   # of a term's largest value (see the module docstring)
EXTRA_NETWORKS = 3  # networks beyond the free coefficients' count needed to fit them
RIDGE = 0.03        # pull of a freed coefficient towards its prior (module docstring)
MAX_SWAPS = 30      # rounds of re-assigning networks to phases in one descent
RANDOM_STARTS = 8   # descents from random assignments, beside one per phase and the prior's
MIB = float(1 << 20)


def term_values(profile: MemoryProfile, terms: Sequence[str]) -> np.ndarray:
    """The profile's values of `terms` (names of TERMS)."""
    return np.array([TERMS[t](profile) for t in terms], dtype=np.float64)


@dataclass(frozen=True)
class MemoryPrediction:
    """A model's predicted peak memory in bytes and its parts: the runtime's constant, what the
    model holds throughout (weights, per-op state), what each phase adds on top and the phase
    that peaks (empty for a model without phases); the model file's size; whether the model
    was calibrated on measured peaks, and how those were measured."""

    peak_bytes: float
    constant_bytes: float
    resident_bytes: float
    phase_bytes: Mapping[str, float]
    peak_phase: str
    model_size_bytes: int | None
    calibrated: bool
    method: str
    profile: MemoryProfile

    def to_json(self) -> dict[str, Any]:
        return {"peak_bytes": round(self.peak_bytes), "peak_mib": self.peak_bytes / MIB,
                "constant_bytes": round(self.constant_bytes),
                "resident_bytes": round(self.resident_bytes),
                "phase_bytes": {k: round(v) for k, v in self.phase_bytes.items()},
                "peak_phase": self.peak_phase,
                "model_size_bytes": self.model_size_bytes, "calibrated": self.calibrated,
                "method": self.method, "graph": self.profile.to_json()}

    def text(self) -> str:
        """One line for `latbench predict`."""
        size = ("" if self.model_size_bytes is None
                else f"; model file {self.model_size_bytes / MIB:.2f} MiB")
        when = f" while {PHASE_WORDS.get(self.peak_phase, self.peak_phase)}" \
            if self.peak_phase else ""
        phases = "".join(f" + {PHASE_WORDS.get(k, k).split(' (')[0]} {v / MIB:.1f}"
                         if k == self.peak_phase else "" for k, v in self.phase_bytes.items())
        how = (f"runtime constant {self.constant_bytes / MIB:.1f} + weights and ops "
               f"{self.resident_bytes / MIB:.1f}{phases}"
               if self.calibrated else
               "uncalibrated: the graph's weights + the larger of its largest weight and its "
               "peak live activations, without the runtime's own memory (no measured network "
               "peaks in the predictor's dataset)")
        return f"predicted peak memory: {self.peak_bytes / MIB:.1f} MiB{when} ({how}){size}"


@dataclass(frozen=True)
class MemoryModel:
    """The coefficients (module docstring): `scales` of the terms held throughout, `phases`
    (name -> term -> coefficient) of which the largest is added; `calibration` holds networks,
    keys, method, fitted terms, the phase each network peaks in, in-sample and leave-one-out
    errors."""

    constant_bytes: float = 0.0
    scales: Mapping[str, float] = field(default_factory=lambda: dict(RESIDENT))
    phases: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: {k: dict(v) for k, v in PHASES.items()})
    calibration: Mapping[str, Any] = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        return bool(self.calibration.get("networks"))

    def predict_profile(self, profile: MemoryProfile) -> MemoryPrediction:
        resident = float(term_values(profile, list(self.scales))
                         @ np.array(list(self.scales.values()), dtype=np.float64))
        phase_bytes = {name: float(term_values(profile, list(k))
                                   @ np.array(list(k.values()), dtype=np.float64))
                       for name, k in self.phases.items()}
        top = max(phase_bytes, key=phase_bytes.__getitem__) if phase_bytes else ""
        return MemoryPrediction(
            peak_bytes=float(self.constant_bytes + resident + (phase_bytes[top] if top else 0.0)),
            constant_bytes=float(self.constant_bytes), resident_bytes=resident,
            phase_bytes=phase_bytes, peak_phase=top, model_size_bytes=profile.model_size_bytes,
            calibrated=self.calibrated, method=str(self.calibration.get("method") or ""),
            profile=profile)

    def predict(self, model: Any, input_shapes: Mapping[str, Sequence[int]] | None = None
                ) -> MemoryPrediction:
        """The peak memory of a model file (path or bytes, any format `bench.memory` reads)."""
        from latbench.bench.memory import profile_model

        return self.predict_profile(profile_model(model, input_shapes))

    def to_json(self) -> dict[str, Any]:
        return {"constant_bytes": self.constant_bytes, "scales": dict(self.scales),
                "phases": {k: dict(v) for k, v in self.phases.items()},
                "calibration": dict(self.calibration)}

    @classmethod
    def from_json(cls, raw: Any, where: str = "memory") -> MemoryModel:
        """A model from `to_json` output; PredictorError naming the bad field. A model saved
        before the phases (no "phases") is its one sum of terms, as it predicted then."""
        if not isinstance(raw, Mapping):
            raise PredictorError(f"{where} must be a JSON object, got {type(raw).__name__}")
        constant = raw.get("constant_bytes", 0.0)
        scales = raw.get("scales")
        phases = raw.get("phases") or {}
        if not _number(constant) or not _coefficients(scales) or not isinstance(phases, Mapping) \
                or not all(isinstance(k, str) and _coefficients(v) for k, v in phases.items()):
            raise PredictorError(f"{where}: needs a number constant_bytes, scales and phases "
                                 f"mapping terms of {', '.join(TERMS)} to numbers, got "
                                 f"{dict(raw)!r:.300}")
        calibration = raw.get("calibration") or {}
        if not isinstance(calibration, Mapping):
            raise PredictorError(f"{where}: calibration must be a JSON object")
        return cls(float(constant), {t: float(v) for t, v in scales.items()},
                   {k: {t: float(x) for t, x in v.items()} for k, v in phases.items()},
                   dict(calibration))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _coefficients(value: Any) -> bool:
    return (isinstance(value, Mapping) and bool(value)
            and all(t in TERMS and _number(v) for t, v in value.items()))


@dataclass(frozen=True)
class _Design:
    """The calibration networks' term values laid out for the fit: the resident terms' columns,
    each phase's columns, the prior of every coefficient (constant first) and which are fitted."""

    resident: np.ndarray
    phases: tuple[np.ndarray, ...]
    prior: np.ndarray
    free: np.ndarray  # bool per coefficient, the constant included
    scale: np.ndarray  # a coefficient's typical share of a peak per unit (for RIDGE)

    def split(self, theta: np.ndarray) -> tuple[float, np.ndarray, list[np.ndarray]]:
        edges = np.cumsum([1, self.resident.shape[1], *(p.shape[1] for p in self.phases)])
        return (float(theta[0]), theta[1:edges[1]],
                [theta[edges[i]:edges[i + 1]] for i in range(1, len(edges) - 1)])

    def phase_values(self, theta: np.ndarray, rows: slice | np.ndarray = slice(None)
                     ) -> np.ndarray:
        _, _, bs = self.split(theta)
        return np.column_stack([p[rows] @ b for p, b in zip(self.phases, bs, strict=True)])

    def predict(self, theta: np.ndarray, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        constant, a, _ = self.split(theta)
        return constant + self.resident[rows] @ a + self.phase_values(theta, rows).max(axis=1)

    def residuals(self, theta: np.ndarray, y: np.ndarray, rows: slice | np.ndarray = slice(None)
                  ) -> np.ndarray:
        pull = RIDGE * self.scale * (theta - self.prior)
        return np.concatenate([self.predict(theta, rows) / y - 1, pull[self.free][1:]])


def _design(profiles: Sequence[MemoryProfile], y: np.ndarray) -> tuple[_Design, list[str]]:
    """The design of `profiles` and the names ("phase:term" or term) of the coefficients it
    frees (module docstring)."""
    resident = np.array([term_values(p, list(RESIDENT)) for p in profiles])
    phases = tuple(np.array([term_values(p, list(k)) for p in profiles]) for k in PHASES.values())
    names = ["constant", *RESIDENT, *(f"{ph}:{t}" for ph, k in PHASES.items() for t in k)]
    prior = np.array([0.0, *RESIDENT.values(), *(v for k in PHASES.values() for v in k.values())])
    columns = np.column_stack([np.ones(len(y)), resident, *phases])
    spread = np.ptp(columns, axis=0)
    varies = spread > MIN_SPREAD * np.abs(columns).max(axis=0)
    room = max(0, len(y) - 1 - EXTRA_NETWORKS)
    fitted = [n for n in FIT_ORDER if varies[names.index(n)]][:room]
    free = np.array([n == "constant" or n in fitted for n in names])
    scale = np.mean(np.abs(columns), axis=0) / np.median(y)
    return _Design(resident, phases, prior, free, scale), fitted


def _assigned_fit(design: _Design, y: np.ndarray, assigned: np.ndarray) -> np.ndarray:
    """The coefficients minimising the fit's objective with each network's peak taken to be in
    the phase `assigned` names (a least-squares problem with non-negative coefficients)."""
    from scipy.optimize import nnls

    theta = design.prior.copy()
    x = np.column_stack([np.ones((len(y), 1)), design.resident]
                        + [p * (assigned == i)[:, None] for i, p in enumerate(design.phases)])
    fixed = x[:, ~design.free] @ design.prior[~design.free]
    pull = np.diag(RIDGE * design.scale)[design.free][1:]  # no pull on the constant
    a = np.vstack([x[:, design.free] / y[:, None], pull[:, design.free]])
    b = np.concatenate([1 - fixed / y, pull @ design.prior])
    theta[design.free], _ = nnls(a, b, maxiter=50 * a.shape[1])
    return theta


def _descend(design: _Design, y: np.ndarray, assigned: np.ndarray) -> tuple[np.ndarray, float]:
    """(coefficients, cost) from an assignment of networks to phases: fitted for it, each
    network re-assigned to the phase the fit puts highest, until none moves; then polished."""
    for _ in range(MAX_SWAPS):
        theta = _assigned_fit(design, y, assigned)
        moved = design.phase_values(theta).argmax(axis=1)
        if np.array_equal(moved, assigned):
            break
        assigned = moved
    return _polish(design, y, theta)


def _polish(design: _Design, y: np.ndarray, start: np.ndarray,
            rows: slice | np.ndarray = slice(None)) -> tuple[np.ndarray, float]:
    """(coefficients, cost) of the least-squares fit from `start`, free coefficients >= 0."""
    from scipy.optimize import least_squares

    theta = start.copy()

    def residuals(free: np.ndarray) -> np.ndarray:
        theta[design.free] = free
        return design.residuals(theta, y[rows], rows)

    x0 = np.maximum(start[design.free], 0.0)
    scale = np.maximum(np.abs(x0), 1e-3 / np.maximum(design.scale[design.free], 1e-12))
    done = least_squares(residuals, x0, bounds=(0.0, np.inf), x_scale=scale)
    theta[design.free] = done.x
    return theta, float(done.cost)


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
    design, fitted = _design(profiles, y)
    rng = np.random.default_rng(0)
    starts = [design.phase_values(design.prior).argmax(axis=1),
              *(np.full(len(y), i) for i in range(len(design.phases))),
              *(rng.integers(len(design.phases), size=len(y)) for _ in range(RANDOM_STARTS))]
    theta, cost = min((_descend(design, y, s) for s in starts), key=lambda done: done[1])
    while True:  # from the best, re-assign and descend again while that lowers the cost
        again, lower = _descend(design, y, design.phase_values(theta).argmax(axis=1))
        if lower >= cost * (1 - 1e-9):
            break
        theta, cost = again, lower
    loo = []
    for i in range(len(y)) if len(y) > 1 else ():
        keep = np.arange(len(y)) != i
        refit, _ = _polish(design, y, theta, keep)
        loo.append(design.predict(refit, np.array([i]))[0] / y[i] - 1)
    rel = design.predict(theta) / y - 1
    top = design.phase_values(theta).argmax(axis=1)
    names = list(PHASES)
    calibration = {
        "networks": int(len(y)), "method": method, "fitted": fitted,
        "peak_phases": {n: int(np.sum(top == i)) for i, n in enumerate(names) if np.any(top == i)},
        "rmspe_pct": float(100 * np.sqrt(np.mean(rel ** 2))),
        "within10": float(np.mean(np.abs(rel) <= 0.10)),
        "rmspe_pct_loo": float(100 * np.sqrt(np.mean(np.square(loo)))) if loo else None,
        "keys": list(keys)}
    constant, a, bs = design.split(theta)
    return MemoryModel(constant, dict(zip(RESIDENT, map(float, a), strict=True)),
                       {n: dict(zip(PHASES[n], map(float, b), strict=True))
                        for n, b in zip(names, bs, strict=True)}, calibration)


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


__all__ = ["PHASES", "RESIDENT", "TERMS", "MemoryModel", "MemoryPrediction",
           "dataset_memory_pairs", "fit_dataset_memory", "fit_memory", "memory_metrics",
           "term_values"]
