"""Composition: from kernel predictions to a network's latency, and its fit on measured networks.

A kernel timed alone is not the same kernel inside a network (its weights were evicted by the
kernels before it, layout conversions happen once per network instead of once per kernel), so
networks run at other than the sum of their kernels. The composition learns that from a few
measured networks: one scale per kernel kind, fitted by ridge regression pulled towards 1 (so
kinds the calibration networks barely exercise stay at their kernel-level values), plus optional
per-kernel terms (COMPOSITION_TERMS). A network stays a sum over its kernels, which is what a
per-layer latency table relies on. Without calibration networks every scale is 1 and the
prediction is the plain sum. `LatencyPredictor` (latency_predictor.py) holds a `Composition`.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latbench.bench.ops import CONV_SHARED_S8, OpSpec
from latbench.errors import PredictorError
from latbench.predictor.features import BYTES_PER_ELEMENT, KernelCost, kernel_cost
from latbench.predictor.intervals import ratio_quantiles

# A kind's composition scale stays within these: a kind whose kernels run in networks at half or
# twice their time alone is not composed from them any more (`Composition.scales_at_bound`).
SCALE_BOUNDS = (0.5, 2.0)
# The composition's robust fit (iteratively reweighted least squares with Huber weights): its
# rounds, the Huber constant and the least spread (relative error) it assumes.
ROBUST_ROUNDS = 6
HUBER_K = 1.345
ROBUST_FLOOR = 0.01
ROBUST_MIN_NETWORKS = 10  # fewer: plain least squares (too few to tell an outlier)
# An optional term is tried only where at least this many calibration networks carry it: fitted
# on one or two networks, its coefficient is whatever those networks' residuals were, and it is
# applied to every network with the term (bytes past the cache on a large model) unchecked.
MIN_TERM_NETWORKS = 5
DEFAULT_MARGIN = 0.03  # safety margin of a predictor without calibration networks


@dataclass(frozen=True)
class OutOfRange:
    """A kernel with a feature outside the range its kind was trained on."""

    kernel: str  # the kernel's key
    feature: str
    value: float
    low: float
    high: float

    def describe(self) -> str:
        side = f"< {self.low:g}" if self.value < self.low else f"> {self.high:g}"
        return f"{self.kernel}: {self.feature} {self.value:g} {side}"

    def to_json(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "feature": self.feature, "value": self.value,
                "trained_range": [self.low, self.high]}


@dataclass(frozen=True)
class UnseenValue:
    """A kernel whose kind was trained, but never on this computation (features.CATEGORY_FIELDS:
    an average pool where only max pools were measured)."""

    kernel: str  # the kernel's key
    feature: str
    value: str
    trained: tuple[str, ...]

    def describe(self) -> str:
        return (f"{self.kernel}: {self.feature} {self.value} never trained "
                f"(trained: {', '.join(self.trained)})")

    def to_json(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "feature": self.feature, "value": self.value,
                "trained_values": list(self.trained)}


@dataclass(frozen=True)
class NetworkPrediction:
    """A network's predicted latency with its per-kernel breakdown; per kernel whether it lies
    inside its kind's training range (None: no range known for the kind); for a partial
    prediction, the op types left out with their node counts and why supported ops were; and
    the interval (low, high ms) the measured latency is expected in at `interval_level`
    (None, with `interval_note` saying why, for a predictor saved without the residuals it
    is built from; predictor/intervals.py)."""

    predicted_ms: float
    overhead_ms: float
    kernels: tuple[tuple[OpSpec, float], ...]
    out_of_range: tuple[OutOfRange | UnseenValue, ...] = ()
    in_range: tuple[bool | None, ...] = ()
    skipped_ops: tuple[tuple[str, int], ...] = ()
    skip_reasons: tuple[str, ...] = ()
    interval_ms: tuple[float, float] | None = None
    interval_level: float | None = None
    interval_note: str = ""

    def interval_text(self) -> str:
        """`90% interval 11.5-13.4 ms`, or why there is none."""
        if self.interval_ms is None:
            return f"no interval: {self.interval_note}" if self.interval_note else ""
        low, high = self.interval_ms
        return f"{self.interval_level:.0%} interval {low:.4g}-{high:.4g} ms"

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for spec, ms in self.kernels:
            out[spec.kind] = out.get(spec.kind, 0.0) + ms
        return out

    @property
    def partial(self) -> bool:
        return bool(self.skipped_ops)

    def range_flags(self) -> tuple[bool | None, ...]:
        return self.in_range or (None,) * len(self.kernels)

    @property
    def coverage(self) -> float | None:
        """Fraction of the kernels' predicted time (the call overhead aside) that comes from
        kernels inside their kind's training range; a kernel of a kind without a known range
        counts as outside. None when no kernel's range is known."""
        flags = self.range_flags()
        if all(f is None for f in flags):
            return None
        total = sum(ms for _, ms in self.kernels)
        if total <= 0:
            return 1.0 if all(flags) else 0.0
        return sum(ms for (_, ms), f in zip(self.kernels, flags, strict=True) if f) / total

    def to_json(self) -> dict[str, Any]:
        return {"predicted_ms": self.predicted_ms, "overhead_ms": self.overhead_ms,
                "n_kernels": len(self.kernels),
                "by_kind_ms": self.by_kind(),
                "coverage": self.coverage,
                "interval_ms": None if self.interval_ms is None else list(self.interval_ms),
                "interval_level": self.interval_level,
                "interval_note": self.interval_note,
                "kernels": [{"key": s.key(), "kind": s.kind, "predicted_ms": ms,
                             "in_range": flag}
                            for (s, ms), flag in zip(self.kernels, self.range_flags(),
                                                     strict=True)],
                "out_of_range": [o.to_json() for o in self.out_of_range],
                "partial": self.partial,
                "skipped_ops": dict(self.skipped_ops),
                "skip_reasons": list(self.skip_reasons)}


# Optional composition terms beyond the per-kind scales, each a per-kernel value times a fitted
# coefficient (ms per unit), so a network stays a sum over its kernels (docs/predictors.md,
# "Composition terms", says how each was found and what it is worth):
# - "per_kernel": 1 per kernel: the dispatch cost every node of a network pays, which a kernel
#   timed alone has subtracted with the per-call overhead;
# - "layout_bytes": input + output MB of kernels a runtime runs in a blocked layout (conv,
#   dwconv, pool): timed alone they convert in and out of it, inside a network once;
# - "weight_mb": MB of the kernel's weights: timed alone a kernel finds them in cache, inside a
#   network the kernels before it have evicted them;
# - "aligned_conv_gflops": GFLOPs of convolutions whose channels are multiples of
#   CHANNEL_BLOCK, which a blocked layout runs faster inside a network than alone;
# - "spilled_layout_mb": MB beyond SPILL_BYTES of each input and output tensor of the
#   blocked-layout kernels: a layout conversion of a tensor past the cache streams from memory;
# - "unaligned_add_pool_mb": input + output MB of Add and pooling kernels off the channel
#   block, which a runtime neither fuses nor pools in the blocked layout;
# - "streamed_weight_mb": MB of the kernel's weights times max(0, 1 - C / W), W the MB of all
#   the network's weights and C the composition's `weight_cache_mb` (chosen among
#   WEIGHT_CACHE_MB by leave-one-out): once a network's weights outgrow what the cache keeps
#   from one inference to the next, its kernels read them from memory, where timed alone
#   they found them in cache (LiteRT: ResNet-50 with 100 MB of weights ran 10 ms over its
#   kernels' sum at 128 px and at 224 px alike, a network of 6 MB on it);
# - "shared_s8_conv_gflops": GFLOPs of the INT8 convs of a QDQ model that read or write a
#   signed int8 tensor other nodes read too (`ops.CONV_SHARED_S8`), which ONNX Runtime on x86
#   runs in float, dequantizing their weights at every call, where their kernel was timed as a
#   QLinearConv;
# - "quantize_io_mb": MB beyond QUANTIZE_FREE_BYTES of each input and output tensor of an INT8
#   kernel: its single-kernel model reads float and writes float (a QUANTIZE before it, a
#   DEQUANTIZE after it), which a network does only at its own ends; tensors that stay in the
#   near caches cost little to convert (the kernels of a LiteRT INT8 ResNet-50 at 224 px, timed
#   alone, summed to 1.33x the network).
# - "pool_switches": the switches between thread pools a kernel makes (`pool_switches`):
#   TFLite's built-in kernels run GEMMs in ruy's pool and depthwise convolutions in the
#   cpu_backend threadpool, and at 2 threads on 2 cores the pool that just finished still spins
#   on the core the other one needs - timed alone a kernel never switches (8 int8 1x1 +
#   depthwise pairs at 48 and 24 px: 0.48-0.51 ms per switch at 2 threads, none at 1 thread,
#   none with single-threaded kernels between the depthwise ones).
STREAMED = "streamed_weight_mb"
SHARED_S8 = "shared_s8_conv_gflops"
QUANTIZE_IO = "quantize_io_mb"
QUANTIZE_FREE_BYTES = 100_000
POOL_SWITCHES = "pool_switches"
# Every term with what one unit of it is, for people reading a fit (`predictor fit` prints the
# coefficients kept in ms per unit); the terms in the order a fit tries them.
TERM_UNITS = {"per_kernel": "kernel", "layout_bytes": "MB", "weight_mb": "MB",
              "aligned_conv_gflops": "GFLOP", "spilled_layout_mb": "MB",
              "unaligned_add_pool_mb": "MB", STREAMED: "MB", SHARED_S8: "GFLOP",
              QUANTIZE_IO: "MB", POOL_SWITCHES: "switch"}
COMPOSITION_TERMS = tuple(TERM_UNITS)
WEIGHT_CACHE_MB = (4.0, 8.0, 16.0, 32.0, 64.0)
# Terms of a runtime that converts tensors into a blocked channel layout and out of it (ONNX
# Runtime's NCHWc on the CPU; a runner's `blocked_layout`): on LiteRT, which computes in the
# tensors' own NHWC layout, they were fitted to other causes and priced a MobileNetV2 at 224 px
# 62% over (docs/predictors.md, "Composition terms").
LAYOUT_TERMS = frozenset({"layout_bytes", "aligned_conv_gflops", "spilled_layout_mb",
                          "unaligned_add_pool_mb"})
# Terms of a runtime whose kernels run in two thread pools (a runner's `split_pool_delegates`),
# at several threads.
POOL_TERMS = frozenset({POOL_SWITCHES})
# Terms `predictor fit` keeps only when they lower the calibration networks' leave-one-out error
# (the pool switches too: at 1 thread, or under the XNNPACK delegate's one pool, they cost
# nothing).
OPTIONAL_TERMS = frozenset({"aligned_conv_gflops", "spilled_layout_mb", "unaligned_add_pool_mb",
                            STREAMED, QUANTIZE_IO, POOL_SWITCHES})
# Terms kept whenever MIN_TERM_NETWORKS calibration networks carry them: they count what the
# runtime is known to do to those kernels (read off the graph), not a guess the leave-one-out
# error must confirm - where the kind scales already absorb most of it, that error moves by
# hundredths of a percent either way, and a run that drops the term prices the family it
# concerns 5-15% low (docs/predictors.md, *Shared int8 tensors on ONNX Runtime*).
CARRIED_TERMS = frozenset({SHARED_S8})
LAYOUT_KINDS = frozenset({"conv", "dwconv", "pool"})
BLOCK_FALLBACK_KINDS = frozenset({"add", "pool"})  # fused / blocked only at aligned widths
CHANNEL_BLOCK = 16
SPILL_BYTES = 1_000_000  # half of a 2 MB per-core L2 cache
MIN_SHARE = 0.25  # a kernel's composed contribution never drops below this share of its own
# The thread pool each kind of TFLite built-in kernel runs its work in (`pool_switches`); a
# fused mbconv block begins and ends with a 1x1 convolution and switches INTERNAL_SWITCHES
# times inside (into its depthwise convolution and out of it).
KIND_POOL = {"conv": "gemm", "linear": "gemm", "tlinear": "gemm", "bmm": "gemm",
             "mbconv": "gemm", "dwconv": "depthwise"}
INTERNAL_SWITCHES = {"mbconv": 2.0}


def runtime_terms(terms: Sequence[str], runtime: str | None, *, delegate: str = "",
                  threads: int = 1) -> tuple[str, ...]:
    """The composition `terms` that apply to `runtime`'s networks (under `delegate`, at
    `threads`): the layout terms only for a runtime whose runner has a blocked layout, the pool
    terms only at several threads under a delegate whose kernels run in two pools (all of them
    for a runtime latbench does not know, and without one)."""
    from latbench.bench.runners import RUNNERS

    runner = RUNNERS.get(runtime) if runtime else None
    if runner is None:
        return tuple(terms)
    apart = (set() if runner.blocked_layout else LAYOUT_TERMS) \
        | (set() if delegate in runner.split_pool_delegates and threads > 1 else POOL_TERMS)
    return tuple(t for t in terms if t not in apart)


def pool_switches(specs: Sequence[OpSpec]) -> np.ndarray:
    """Per kernel of a network (in execution order), the switches between thread pools
    (KIND_POOL) it makes: 1 where its pool differs from the one of the kernel before it (both
    in a pool), plus the switches inside a fused block (INTERNAL_SWITCHES). Every GEMM counts,
    however small: one int8 pair of a 2.7-MFLOPs 1x1 conv and a depthwise conv, which ruy ran
    on the calling thread alone, switched for free, but fitted on networks, counting every GEMM
    priced held-out ones best (docs/predictors.md, *Two thread pools*)."""
    pools = [KIND_POOL.get(s.kind) for s in specs]
    return np.array([float(i > 0 and None not in (pools[i - 1], pools[i])
                           and pools[i - 1] != pools[i])
                     + INTERNAL_SWITCHES.get(spec.kind, 0.0) for i, spec in enumerate(specs)])


def network_term_values(specs: Sequence[OpSpec], terms: Sequence[str],
                        weight_cache_mb: float | None = None) -> np.ndarray:
    """Each kernel's value of each term (rows: the network's kernels in execution order), the
    ones that depend on the whole network (streamed weights, pool switches) included."""
    terms = list(terms)
    total = network_weight_mb(specs) if STREAMED in terms else 0.0
    kernel_terms = [t for t in terms if t != POOL_SWITCHES]
    values = np.zeros((len(specs), len(terms)))
    if kernel_terms and specs:
        columns = [terms.index(t) for t in kernel_terms]
        values[:, columns] = [term_values(s, kernel_terms, total, weight_cache_mb)
                              for s in specs]
    if POOL_SWITCHES in terms and specs:
        values[:, terms.index(POOL_SWITCHES)] = pool_switches(specs)
    return values


def network_weight_mb(specs: Sequence[OpSpec]) -> float:
    """MB of all the weights of a network's kernels."""
    return float(sum(kernel_cost(s).params * BYTES_PER_ELEMENT[s.dtype] for s in specs)) / 1e6


def term_values(spec: OpSpec, terms: Sequence[str], network_mb: float = 0.0,
                weight_cache_mb: float | None = None) -> list[float]:
    """The kernel's value of each term; "streamed_weight_mb" needs the MB of the weights of
    the network the kernel is in (`network_weight_mb`) and the cache size, else it is 0."""
    out = []
    cost = kernel_cost(spec) if set(terms) - {"per_kernel"} else None
    weights = cost.params * BYTES_PER_ELEMENT[spec.dtype] / 1e6 if cost else 0.0
    for term in terms:
        if term == "per_kernel":
            out.append(1.0)
        elif term == STREAMED:
            streamed = weight_cache_mb is not None and network_mb > weight_cache_mb
            out.append(weights * (1 - weight_cache_mb / network_mb) if streamed else 0.0)
        elif term == "layout_bytes":
            in_layout = spec.kind in LAYOUT_KINDS
            out.append((cost.input_bytes + cost.output_bytes) / 1e6 if in_layout else 0.0)
        elif term == "weight_mb":
            out.append(weights)
        elif term == "aligned_conv_gflops":
            aligned = spec.kind == "conv" and (spec.cin or 0) % CHANNEL_BLOCK == 0 \
                and (spec.cout or 0) % CHANNEL_BLOCK == 0
            out.append(cost.flops / 1e9 if aligned else 0.0)
        elif term == "spilled_layout_mb":
            out.append(_mb_past(cost, SPILL_BYTES) if spec.kind in LAYOUT_KINDS else 0.0)
        elif term == SHARED_S8:
            shared = spec.kind == "conv" and spec.mode == CONV_SHARED_S8
            out.append(cost.flops / 1e9 if shared else 0.0)
        elif term == QUANTIZE_IO:
            out.append(_mb_past(cost, QUANTIZE_FREE_BYTES) if spec.dtype == "int8" else 0.0)
        elif term == "unaligned_add_pool_mb":
            unaligned = spec.kind in BLOCK_FALLBACK_KINDS and (spec.cin or 0) % CHANNEL_BLOCK
            out.append((cost.input_bytes + cost.output_bytes) / 1e6 if unaligned else 0.0)
        else:
            raise PredictorError(f"unknown composition term {term!r}; known: "
                                 f"{', '.join(COMPOSITION_TERMS)}")
    return out


def _mb_past(cost: KernelCost, threshold: float) -> float:
    """MB of a kernel's input tensor and of its output tensor beyond `threshold` bytes each."""
    return sum(max(0.0, b - threshold) for b in (cost.input_bytes, cost.output_bytes)) / 1e6


@dataclass(frozen=True)
class Composition:
    """Per-kind scales, term coefficients (ms per unit) and a summary of their fit (errors of
    the plain sum and of the composition, in sample and leave-one-out, terms tried and
    dropped, the calibration networks' keys, and `weight_cache_mb`: the cache size of the
    streamed-weights term). The identity (no scales, no terms) prices a network as the plain
    sum of its kernels."""

    kind_scale: dict[str, float] = field(default_factory=dict)
    terms: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=lambda: {"networks": 0})

    @property
    def weight_cache_mb(self) -> float | None:
        value = self.summary.get("weight_cache_mb")
        return None if value is None else float(value)

    def compose(self, raw: np.ndarray, specs: Sequence[OpSpec]) -> np.ndarray:
        """Each kernel's contribution to a network (`specs`, all of its kernels) from its own
        prediction `raw`: times its kind's scale, plus the terms, never below MIN_SHARE of the
        prediction."""
        names = sorted(self.terms)
        values = network_term_values(specs, names, self.weight_cache_mb) \
            if names and specs else None
        return _compose(np.asarray(raw, dtype=np.float64), [s.kind for s in specs], values,
                        self.kind_scale, [self.terms[t] for t in names])

    def scales_at_bound(self) -> dict[str, float]:
        """The kinds whose scale the fit left at SCALE_BOUNDS: in the calibration networks their
        kernels ran at least twice (or at most half) their time alone, and the networks of
        such kinds are priced with errors near the calibration's (LiteRT's builtin kernels at
        2 threads on a 2-core VM ran MobileNetV2s at 2.2-2.7x their kernels' sum)."""
        low, high = SCALE_BOUNDS
        return {kind: scale for kind, scale in self.kind_scale.items()
                if scale <= low + 1e-9 or scale >= high - 1e-9}

    def safety_margin(self, default: float = DEFAULT_MARGIN) -> float:
        """How much faster than a budget a search should aim, as a fraction: the 95th
        percentile under-prediction on calibration networks left out of the fit
        (leave-one-out), else the in-sample 90th percentile, else `default`."""
        for key in ("underprediction_p95_loo_pct", "underprediction_p90_pct"):
            if key in self.summary:
                return float(self.summary[key]) / 100
        return default


def _compose(raw: np.ndarray, kinds: Sequence[str], values: np.ndarray | None,
             scale: dict[str, float], coef: Sequence[float]) -> np.ndarray:
    out = raw * np.array([scale.get(k, 1.0) for k in kinds])
    if values is not None and len(coef):
        out = np.maximum(out + values @ np.asarray(coef, dtype=np.float64), MIN_SHARE * raw)
    return out


def solve_composition(kernels: Any, networks: Sequence[tuple[Sequence[OpSpec], float]],
                      overhead_ms: float = 0.0, ridge: float = 0.1, terms: Sequence[str] = (),
                      optional: Collection[str] = (), robust: bool = True) -> Composition:
    """Per-kind scales (and the `terms`, see COMPOSITION_TERMS) fitted on measured networks
    (kernels, ms) that each pay `overhead_ms` once; the fitted kernel predictor `kernels` is
    only asked for kernel predictions.

    Minimises sum_n ((sum_k a_kind(k) p_k + sum_t c_t v_t(n) + overhead - m_n) / m_n)^2
    + ridge * |a - 1|^2 + ridge * 1e-4 * |c|^2 (terms are in ms: barely pulled to 0); with
    `robust` (and at least ROBUST_MIN_NETWORKS networks) the squares of networks far off the
    fit count with Huber weights (`huber_weights`): calibration networks are measured once.
    Terms in `optional` are kept only if they lower the leave-one-out error: where a term says
    nothing new (every convolution aligned) it only adds a free parameter; one that fewer than
    MIN_TERM_NETWORKS networks carry is not tried. The streamed-weights term is fitted with
    each cache size of WEIGHT_CACHE_MB and the least leave-one-out error wins. The summary
    holds the scales, terms, networks used, RMSPE of the plain sum and of the composition (in
    sample and leave-one-out), 90th percentile under-prediction, the cache size if kept.
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
    predictions = [np.asarray(kernels.predict(list(specs)), dtype=np.float64)
                   for specs, _ in networks]
    fit = None
    # The streamed-weights term's cache size: each candidate, the least leave-one-out error.
    for cache in WEIGHT_CACHE_MB if STREAMED in terms else (None,):
        design = _CompositionDesign(list(kernels.kinds), networks, predictions, terms, measured,
                                    overhead_ms, robust, cache)
        trial = _choose_terms(design, terms, optional, ridge)
        if fit is None or trial.summary.get("rmspe_pct_loo", np.inf) \
                < fit.summary.get("rmspe_pct_loo", np.inf):
            fit = trial
    if STREAMED not in fit.terms:
        fit.summary.pop("weight_cache_mb", None)
    return fit


def _choose_terms(design: _CompositionDesign, terms: Sequence[str], optional: Collection[str],
                  ridge: float) -> Composition:
    """The fit with every subset of the optional terms (there are few) a network set supports:
    the least leave-one-out error wins, and of equal ones the subset with fewer terms. The
    CARRIED_TERMS are in every fit where enough networks carry them."""
    unsupported = [t for t in terms if (t in optional or t in CARRIED_TERMS)
                   and design.support(t) < MIN_TERM_NETWORKS]
    terms = [t for t in terms if t not in unsupported]
    choosable = [t for t in terms if t in optional and t not in CARRIED_TERMS] \
        if len(design.measured) > 1 else []
    fit, dropped = design.solve(terms, ridge), []
    for size in range(1, len(choosable) + 1):
        for left_out in itertools.combinations(choosable, size):
            trial = design.solve([t for t in terms if t not in left_out], ridge)
            if trial.summary["rmspe_pct_loo"] <= fit.summary["rmspe_pct_loo"]:
                fit, dropped = trial, list(left_out)
    if optional or unsupported:
        fit.summary["optional_terms_dropped"] = unsupported + dropped
    return fit


class _CompositionDesign:
    """Per-network kernel predictions and term values, computed once for every fit tried."""

    def __init__(self, kinds: Sequence[str], networks: Sequence[tuple[Sequence[OpSpec], float]],
                 predictions: Sequence[np.ndarray], terms: Sequence[str], measured: np.ndarray,
                 overhead_ms: float, robust: bool = True,
                 weight_cache_mb: float | None = None) -> None:
        self.robust = robust
        self.kinds = list(kinds)
        self.terms = list(terms)
        self.measured = measured
        self.overhead = float(overhead_ms)
        self.weight_cache_mb = weight_cache_mb
        index = {k: i for i, k in enumerate(self.kinds)}
        self.sums = np.zeros((len(networks), len(self.kinds) + len(self.terms)))
        self.kernels: list[tuple[np.ndarray, list[str], np.ndarray]] = []
        for row, ((specs, _), raw) in enumerate(zip(networks, predictions, strict=True)):
            specs = list(specs)
            values = network_term_values(specs, self.terms, weight_cache_mb)
            for spec, ms in zip(specs, raw, strict=True):
                self.sums[row, index[spec.kind]] += ms
            self.sums[row, len(self.kinds):] = values.sum(axis=0)
            self.kernels.append((raw, [s.kind for s in specs], values))

    def support(self, term: str) -> int:
        """How many networks have a non-zero value of `term`."""
        return int(np.count_nonzero(self.sums[:, len(self.kinds) + self.terms.index(term)]))

    def solve(self, terms: Sequence[str], ridge: float) -> Composition:
        n_kinds = len(self.kinds)
        columns = list(range(n_kinds)) + [n_kinds + self.terms.index(t) for t in terms]
        sums = self.sums[:, columns]
        a = sums / self.measured[:, None]
        b = (self.measured - self.overhead) / self.measured
        penalty = np.diag([ridge] * n_kinds + [ridge * 1e-4] * len(terms))
        prior = np.r_[np.ones(n_kinds), np.zeros(len(terms))]

        def solve(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """The fit on `rows` and the weight each row had in it."""
            weights = np.ones(len(rows))
            robust = self.robust and len(rows) >= ROBUST_MIN_NETWORKS
            for _ in range(ROBUST_ROUNDS if robust else 1):
                aw = a[rows] * weights[:, None]
                x = np.linalg.solve(aw.T @ a[rows] + penalty, aw.T @ b[rows] + penalty @ prior)
                if robust:
                    weights = huber_weights(a[rows] @ x - b[rows])  # before the bounds bite
            x[:n_kinds] = np.clip(x[:n_kinds], *SCALE_BOUNDS)
            return x, weights

        everything = np.arange(len(self.measured))
        solution, weights = solve(everything)
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
                   "rmspe_pct_sum": rmspe_pct(before, self.measured),
                   "rmspe_pct_composed": rmspe_pct(after, self.measured),
                   "underprediction_p90_pct": float(100 * max(0.0, under)),
                   "weights": [round(float(w), 4) for w in weights]}
        if STREAMED in terms:
            summary["weight_cache_mb"] = self.weight_cache_mb
        if len(self.measured) > 1:
            # Leave-one-out predictions: how the composition does on a network it was not
            # fitted on, which is what a search's safety margin must cover.
            loo = np.array([sums[i] @ solve(np.delete(everything, i))[0]
                            for i in everything]) + self.overhead
            summary.update(leave_one_out_summary(loo, self.measured))
        return Composition(scale, coef, summary)


def leave_one_out_summary(loo: np.ndarray, measured: np.ndarray) -> dict[str, Any]:
    """What a composition's summary keeps of its networks' leave-one-out predictions `loo`:
    their RMSPE, the 95th percentile under-prediction (a search's safety margin) and the
    quantiles of measured / predicted a network's prediction interval is built from
    (predictor/intervals.py)."""
    return {"rmspe_pct_loo": rmspe_pct(loo, measured),
            "underprediction_p95_loo_pct": float(
                100 * max(0.0, np.percentile(measured / loo - 1, 95))),
            "loo_ratio_quantiles": ratio_quantiles(measured, loo)}


def huber_weights(residuals: np.ndarray) -> np.ndarray:
    """Huber weights of relative residuals: 1 within HUBER_K robust standard deviations (from
    the median absolute deviation), falling as 1/|r| beyond, so that one network measured in a
    slow phase the reference probe missed (20-30% high) pulls the fit as one ordinary
    residual would, not as its square."""
    spread = 1.4826 * np.median(np.abs(residuals - np.median(residuals)))
    limit = HUBER_K * max(spread, ROBUST_FLOOR)
    return np.minimum(1.0, limit / np.maximum(np.abs(residuals), 1e-12))


def rmspe_pct(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Root mean squared percentage error of `predicted` against `measured`, in percent."""
    return float(100 * np.sqrt(np.mean((predicted / measured - 1) ** 2)))
