"""Whole-network prediction: composed kernel predictions plus one runtime call overhead.

A kernel timed alone runs with its weights hot in cache; inside a network its weights were just
evicted by the kernels before it, so networks run slower than the sum of their kernels (on this
project's CPU by 5-10%). The composition step learns that from a few measured networks: one
scale per kernel kind, fitted by ridge regression pulled towards 1 (so kinds the calibration
networks barely exercise stay at their kernel-level values). Without calibration networks every
scale is 1 and the prediction is the plain sum.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latbench.bench.ops import OpSpec
from latbench.errors import PredictorError
from latbench.predictor.features import BYTES_PER_ELEMENT, kernel_cost

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


# Optional composition terms beyond the per-kind scales, each a per-kernel value times a fitted
# coefficient (ms per unit), so a network stays a sum over its kernels:
# - "per_kernel": a constant per kernel (1): in a network every node pays a dispatch cost that
#   a kernel timed alone has subtracted with the per-call overhead;
# - "layout_bytes": input + output MB of kernels a runtime runs in a blocked layout (conv,
#   dwconv, pool): timed alone they pay a layout conversion in and out that inside a network
#   happens once (ONNX Runtime's NCHWc), so the fit finds a negative coefficient there;
# - "weight_mb": MB of the kernel's weights (float32): timed alone, a kernel finds its weights in
#   cache on every call; inside a network the kernels before it have evicted them, so weight-heavy
#   kernels (late, narrow-spatial convs of ResNet-style nets) pay to stream them in again;
# - "aligned_conv_gflops": GFLOPs of convolutions whose input and output channels are both
#   multiples of CHANNEL_BLOCK: ONNX Runtime's blocked layout (16 channels with AVX-512) runs
#   them faster inside a network than the kernel-alone times say, by more than the layout
#   bytes account for. On the families benchmark's calibration networks the fit finds about
#   -0.5..-0.75 ms/GFLOP and the leave-one-out error fell in every run tried (4.51 -> 4.39%,
#   4.41 -> 4.26%, 4.13 -> 4.06% for xgboost); without it ResNets of base width 16 and 32
#   were predicted ~4-5% slow and width 24 ~2-4% fast.
# - "spilled_layout_mb": MB beyond SPILL_BYTES of each input and output tensor of those
#   blocked-layout kernels: a layout conversion reads a tensor and writes one as large, so
#   past half the L2 cache it streams from memory and costs far more per byte than
#   layout_bytes says. ONNX Runtime per-node profiles of MobileNetV2 nets showed layers on
#   28-112 px inputs running 1.4-2.1x faster inside the network than alone, layers under 14 px
#   not at all; on the families benchmark's calibration networks this term lowered the
#   leave-one-out error more than any other tried (4.39 -> 3.63%, 4.06 -> 3.52%,
#   5.37 -> 4.79% for xgboost), fit coefficient about -0.06 ms/MB.
# - "unaligned_add_pool_mb": input + output MB of Add and pooling kernels whose channel count
#   is not a multiple of CHANNEL_BLOCK. At aligned widths ONNX Runtime folds a residual Add
#   (and its ReLU) into the blocked convolution and pools in the blocked layout; at other
#   widths it does neither, and wraps them in layout reorders. Per-node profile of a ResNet
#   of base width 24: 25 us of ReorderInput/ReorderOutput, an 18 us NCHW max pool (5 us at
#   width 16) and 8 us of separate Add and ReLU, all absent from the kernels timed alone; such
#   nets were predicted 9-12% too low in five runs out of five. On the families benchmark's
#   calibration networks the term lowered the leave-one-out error in all five stored runs
#   (3.17 -> 3.09, 3.52 -> 3.38, 4.16 -> 4.07, 4.79 -> 4.62, 3.63 -> 3.38% for xgboost), fit
#   coefficient +0.04..+0.09 ms/MB.
COMPOSITION_TERMS = ("per_kernel", "layout_bytes", "weight_mb", "aligned_conv_gflops",
                     "spilled_layout_mb", "unaligned_add_pool_mb")
# Terms `predictor fit` keeps only when they lower the calibration networks' leave-one-out error.
OPTIONAL_TERMS = frozenset({"aligned_conv_gflops", "spilled_layout_mb", "unaligned_add_pool_mb"})
LAYOUT_KINDS = frozenset({"conv", "dwconv", "pool"})
BLOCK_FALLBACK_KINDS = frozenset({"add", "pool"})  # fused / blocked only at aligned widths
CHANNEL_BLOCK = 16
SPILL_BYTES = 1_000_000  # half the 2 MB per-core L2 of the CPU the term was found on
MIN_SHARE = 0.25  # a kernel's composed contribution never drops below this share of its own


def term_values(spec: OpSpec, terms: Sequence[str]) -> list[float]:
    out = []
    cost = kernel_cost(spec) if set(terms) - {"per_kernel"} else None
    for term in terms:
        if term == "per_kernel":
            out.append(1.0)
        elif term == "layout_bytes":
            in_layout = spec.kind in LAYOUT_KINDS
            out.append((cost.input_bytes + cost.output_bytes) / 1e6 if in_layout else 0.0)
        elif term == "weight_mb":
            out.append(cost.params * BYTES_PER_ELEMENT[spec.dtype] / 1e6)
        elif term == "aligned_conv_gflops":
            aligned = spec.kind == "conv" and (spec.cin or 0) % CHANNEL_BLOCK == 0 \
                and (spec.cout or 0) % CHANNEL_BLOCK == 0
            out.append(cost.flops / 1e9 if aligned else 0.0)
        elif term == "spilled_layout_mb":
            spilled = sum(max(0.0, b - SPILL_BYTES) for b in (cost.input_bytes,
                                                              cost.output_bytes))
            out.append(spilled / 1e6 if spec.kind in LAYOUT_KINDS else 0.0)
        elif term == "unaligned_add_pool_mb":
            unaligned = spec.kind in BLOCK_FALLBACK_KINDS and (spec.cin or 0) % CHANNEL_BLOCK
            out.append((cost.input_bytes + cost.output_bytes) / 1e6 if unaligned else 0.0)
        else:
            raise PredictorError(f"unknown composition term {term!r}; known: "
                                 f"{', '.join(COMPOSITION_TERMS)}")
    return out


def composed_kernel_ms(predictor: Any, specs: Sequence[OpSpec]) -> np.ndarray:
    """Each kernel's contribution to a network: its prediction times its kind's scale, plus
    the fitted composition terms (if any), never below MIN_SHARE of the prediction."""
    specs = list(specs)
    if not specs:
        return np.zeros(0)
    raw = np.asarray(predictor.predict(specs), dtype=np.float64)
    terms = getattr(predictor, "composition_terms_", None) or {}
    names = sorted(terms)
    values = np.array([term_values(s, names) for s in specs]) if names else None
    return _compose(raw, [s.kind for s in specs], values,
                    getattr(predictor, "kind_scale_", None) or {}, [terms[t] for t in names])


def _compose(raw: np.ndarray, kinds: Sequence[str], values: np.ndarray | None,
             scale: dict[str, float], coef: Sequence[float]) -> np.ndarray:
    out = raw * np.array([scale.get(k, 1.0) for k in kinds])
    if values is not None and len(coef):
        out = np.maximum(out + values @ np.asarray(coef, dtype=np.float64), MIN_SHARE * raw)
    return out


def predict_network(predictor: Any, specs: Sequence[OpSpec]) -> NetworkPrediction:
    specs = list(specs)
    per_kernel = composed_kernel_ms(predictor, specs)
    overhead = float(getattr(predictor, "call_overhead_ms_", 0.0))
    return NetworkPrediction(float(per_kernel.sum()) + overhead, overhead,
                             tuple(zip(specs, (float(v) for v in per_kernel), strict=True)))


def predict_onnx(predictor: Any, model: bytes | str | Path) -> NetworkPrediction:
    """Split the model into kernels with the predictor's fusion rules, then sum."""
    from latbench.bench.fusion import predictor_attach
    from latbench.bench.kernels import onnx_to_kernels

    return predict_network(predictor, onnx_to_kernels(model, attach=predictor_attach(predictor)))


@dataclass(frozen=True)
class CompositionFit:
    """Fitted composition: per-kind scales, term coefficients (ms per unit) and a summary
    (errors of the plain sum, in sample and leave-one-out, terms tried and dropped)."""

    kind_scale: dict[str, float]
    terms: dict[str, float]
    summary: dict[str, Any]

    def apply(self, predictor: Any) -> None:
        predictor.kind_scale_ = dict(self.kind_scale)
        predictor.composition_terms_ = dict(self.terms)


def fit_composition(predictor: Any, networks: Sequence[tuple[Sequence[OpSpec], float]],
                    ridge: float = 0.1, terms: Sequence[str] = (),
                    optional: Collection[str] = ()) -> dict[str, Any]:
    """Fit the composition (see `solve_composition`), set it on the predictor
    (`kind_scale_`, `composition_terms_`) and return its summary."""
    fit = solve_composition(predictor, networks, ridge, terms, optional)
    fit.apply(predictor)
    return fit.summary


def solve_composition(predictor: Any, networks: Sequence[tuple[Sequence[OpSpec], float]],
                      ridge: float = 0.1, terms: Sequence[str] = (),
                      optional: Collection[str] = ()) -> CompositionFit:
    """Per-kind scales (and the `terms`, see COMPOSITION_TERMS) fitted on measured networks
    (kernels, ms); the predictor is only asked for kernel predictions.

    Minimises sum_n ((sum_k a_kind(k) p_k + sum_t c_t v_t(n) + overhead - m_n) / m_n)^2
    + ridge * |a - 1|^2 + ridge * 1e-4 * |c|^2 (terms are in ms: barely pulled to 0).
    Terms in `optional` are kept only if they lower the leave-one-out error: where a term says
    nothing new (every convolution aligned, as in NAS-Bench-Macro) it only adds a free
    parameter. The summary holds the scales, terms, networks used, RMSPE of the plain sum and
    of the composition (in sample and leave-one-out), 90th percentile under-prediction.
    """
    if not networks:
        raise PredictorError("no calibration networks to fit the composition on")
    terms = list(terms)
    unknown = [t for t in terms if t not in COMPOSITION_TERMS]
    if unknown:
        raise PredictorError(f"unknown composition term {unknown[0]!r}; known: "
                             f"{', '.join(COMPOSITION_TERMS)}")
    measured = np.array([float(ms) for _, ms in networks])
    if np.any(~np.isfinite(measured)) or np.any(measured <= 0):
        raise PredictorError("calibration network latencies must be finite and positive")
    design = _CompositionDesign(predictor, networks, terms, measured)
    choosable = [t for t in terms if t in optional] if len(networks) > 1 else []
    fit, dropped = design.solve(terms, ridge), []
    # Every subset of the optional terms (there are few); the least leave-one-out error wins,
    # and of equal ones the subset with fewer terms.
    for size in range(1, len(choosable) + 1):
        for left_out in itertools.combinations(choosable, size):
            trial = design.solve([t for t in terms if t not in left_out], ridge)
            if trial.summary["rmspe_pct_loo"] <= fit.summary["rmspe_pct_loo"]:
                fit, dropped = trial, list(left_out)
    if optional:
        fit.summary["optional_terms_dropped"] = dropped
    return fit


class _CompositionDesign:
    """Per-network kernel predictions and term values, computed once for every fit tried."""

    def __init__(self, predictor: Any, networks: Sequence[tuple[Sequence[OpSpec], float]],
                 terms: Sequence[str], measured: np.ndarray) -> None:
        self.kinds = sorted(predictor.models_)
        self.terms = list(terms)
        self.measured = measured
        self.overhead = float(getattr(predictor, "call_overhead_ms_", 0.0))
        index = {k: i for i, k in enumerate(self.kinds)}
        self.sums = np.zeros((len(networks), len(self.kinds) + len(self.terms)))
        self.kernels: list[tuple[np.ndarray, list[str], np.ndarray]] = []
        for row, (kernels, _) in enumerate(networks):
            kernels = list(kernels)
            raw = np.asarray(predictor.predict(kernels), dtype=np.float64)
            values = np.array([term_values(s, self.terms) for s in kernels]).reshape(
                len(kernels), len(self.terms))
            for spec, ms in zip(kernels, raw, strict=True):
                self.sums[row, index[spec.kind]] += ms
            self.sums[row, len(self.kinds):] = values.sum(axis=0)
            self.kernels.append((raw, [s.kind for s in kernels], values))

    def solve(self, terms: Sequence[str], ridge: float) -> CompositionFit:
        n_kinds = len(self.kinds)
        columns = list(range(n_kinds)) + [n_kinds + self.terms.index(t) for t in terms]
        sums = self.sums[:, columns]
        a = sums / self.measured[:, None]
        b = (self.measured - self.overhead) / self.measured
        penalty = np.diag([ridge] * n_kinds + [ridge * 1e-4] * len(terms))
        prior = np.r_[np.ones(n_kinds), np.zeros(len(terms))]

        def solve(rows: np.ndarray) -> np.ndarray:
            x = np.linalg.solve(a[rows].T @ a[rows] + penalty,
                                a[rows].T @ b[rows] + penalty @ prior)
            x[:n_kinds] = np.clip(x[:n_kinds], *SCALE_BOUNDS)
            return x

        everything = np.arange(len(self.measured))
        solution = solve(everything)
        scale = {k: float(s) for k, s in zip(self.kinds, solution[:n_kinds], strict=True)}
        coef = {t: float(c) for t, c in zip(terms, solution[n_kinds:], strict=True)}
        term_columns = [self.terms.index(t) for t in terms]
        after = np.array([_compose(raw, kinds, values[:, term_columns], scale,
                                   solution[n_kinds:]).sum()
                          for raw, kinds, values in self.kernels]) + self.overhead
        before = sums[:, :n_kinds].sum(axis=1) + self.overhead
        under = np.percentile(self.measured / after - 1, 90)
        summary = {"kind_scale": scale, "terms": coef, "networks": len(self.measured),
                   "ridge": ridge,
                   "rmspe_pct_sum": _rmspe(before, self.measured),
                   "rmspe_pct_composed": _rmspe(after, self.measured),
                   "underprediction_p90_pct": float(100 * max(0.0, under))}
        if len(self.measured) > 1:
            # Leave-one-out predictions: how the composition does on a network it was not
            # fitted on, which is what a search's safety margin must cover.
            loo = np.array([sums[i] @ solve(np.delete(everything, i))
                            for i in everything]) + self.overhead
            summary["rmspe_pct_loo"] = _rmspe(loo, self.measured)
            summary["underprediction_p95_loo_pct"] = float(
                100 * max(0.0, np.percentile(self.measured / loo - 1, 95)))
        return CompositionFit(scale, coef, summary)


def safety_margin(manifest: dict[str, Any], default: float = 0.03) -> float:
    """How much faster than a budget a search should aim, as a fraction: the predictor's 95th
    percentile under-prediction on calibration networks left out of the fit (leave-one-out),
    else its in-sample 90th percentile, else a default."""
    composition = manifest.get("composition") or {}
    for key in ("underprediction_p95_loo_pct", "underprediction_p90_pct"):
        if key in composition:
            return float(composition[key]) / 100
    return default


def _rmspe(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(100 * np.sqrt(np.mean((predicted / measured - 1) ** 2)))
