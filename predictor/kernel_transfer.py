"""Kernel-level transfer: a new platform's predictor from a small sample of its kernels and the
kernel predictors of platforms already measured (the sources).

A kernel's latency on two platforms is related far more simply than it is related to its
shape: on another thread count, precision or runtime of the same CPU, log ms on the target is
close to an affine function of log ms on a source, per kernel kind (not where the target's
precision runs on a matrix unit the source's does not: `matrix_unit_advice`). So instead of
learning every kind from scratch, the target learns that map from a few kernels measured on it:

    log t(k) = c + e_kind + sum_s (b_s + d_kind,s) log p_s(k)
               [+ r_kind . f(k)] [+ g_kind,group(k)] [+ sum_j h_j max(0, m(k) - log knot_j)]

with p_s the sources' kernel predictions (at the source's precision: a target int8 kernel is
asked of an fp32 source as the same kernel in fp32) and m their mean log, c and the slopes b_s
shared by every kind, e_kind, the slope deviations d_kind,s - each kind leans on the sources that
follow the target for it: LiteRT int8 convolutions follow ONNX Runtime int8, its depthwise ones
LiteRT fp32 - (and the optional residual r_kind on a few log-size
features f, clipped to the sample's range, and offsets g per shape group: kernel size, stride
and mode) per kind, the optional hinges h shared (a ratio that bends with size: one thread to
two), pulled towards 0 by ridge penalties; past the kind's sampled range of a source's log
predictions the target follows that source in proportion (a small budget buys cheap kernels,
and the slope fitted on them must not carry decades further). The penalties, and whether the
residual, the group offsets and the hinges are used, are chosen by leave-one-out error on the
sample; per kind, fitting the sample alone (log-linear in FLOPs and bytes, `predictor.models.
LinearKernelPredictor`'s columns) replaces the map where its leave-one-out error is lower.

The sample (`sample_transfer`) is chosen before measuring, within a device-time budget: every
kind the target plan needs first, then kernels where the sources disagree, where the map is
least certain and that cover each kind's feature space (farthest point), and a share of the
budget for the plan's calibration networks, which fit the target's composition
(`solve_composition`) exactly as `LatencyPredictor.fit` does. Two other candidates may price the
networks instead, whichever is lowest by cross-validation over those networks
(`transfer_predictor`): the sample alone (the default kernel model on the measured kernels) and
a source's whole predictor times one ratio (`network_ratio_predictor`: one runtime at another
thread count, whose lone kernels speed up unlike its networks). `KernelTransferPredictor` is a
registered kernel predictor: it saves each source's model of every kind inside its own folder,
so a transferred predictor loads, predicts and is evaluated like any other.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latbench.bench.ops import OpSpec
from latbench.bench.platform import Platform, precision_name, record_platform, settings_field
from latbench.errors import ConfigError, PredictorError, SpecError, UnknownKernelError
from latbench.predictor.features import FEATURE_NAMES, feature_matrix
from latbench.predictor.model_level import rmspe_pct
from latbench.predictor.models import (
    KernelPredictor,
    check_params,
    fit_log_linear,
    get_predictor_class,
    predict_log_linear,
    register_predictor,
)
from latbench.predictor.training import can_price

SOURCE_SEPARATOR = "@"  # PATH@SLUG picks one platform of a multi-platform predictor folder
# The map's penalties (on sums of squared log errors): the kinds' offsets from the shared
# intercept, the shared source slopes' pull towards an equal split, and the candidates for the
# kinds' slope deviations and residual coefficients that leave-one-out chooses among.
KIND_OFFSET_RIDGE = 0.02
SLOPE_RIDGE = 0.01
SLOPE_DEVIATION_RIDGES = (0.03, 0.3, 3.0)
RESIDUAL_RIDGES = (None, 0.3, 3.0)  # None: no residual
RESIDUAL_FEATURES = ("log_flops", "log_bytes")
# Offsets per shape group within a kind (kernel size and stride): runtimes pick different
# algorithms per kernel size (ONNX Runtime -> LiteRT convolutions: 1x1 at 0.87x the kind's
# typical ratio, 7x7 at 1.6x), a step no smooth size feature follows. None: no offsets.
GROUP_RIDGES = (None, 0.01, 0.1, 1.0)
# Hinges on the sources' mean log prediction, shared by every kind: the ratio between two
# platforms bends with a kernel's size where the map's slope is straight (LiteRT INT8 1 -> 2
# threads: 1.25x for convolutions of 2 us, where the thread pool costs more than it gives,
# 0.5x from 0.15 ms on), and a slope fitted across the bend missed the target's convolutions
# by 12% even fitted on all 709 of them. Knots in ms; None: no hinges.
HINGE_KNOTS_MS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
HINGE_RIDGES = (None, 0.1, 1.0, 10.0)
ALONE_FEATURES = ("log_flops", "log_bytes")  # LinearKernelPredictor's columns
ALONE_RIDGE = 1e-3
MIN_ALONE_KERNELS = 5  # fewer sampled kernels of a kind: never fitted alone
# The sampler: kernels per kind in the covering rounds, the budget share for networks, the
# weight of the sources' disagreement against feature-space distance.
COVER_PER_KIND = 3
NETWORK_SHARE = 0.25
DISAGREEMENT_WEIGHT = 2.0
SAMPLE_SEED = 0
# CPU features (the device facts' `cpu_features`) that are matrix units, and the precision they
# compute in: on a CPU with one, kernels of that precision run on other hardware than fp32's.
MATRIX_UNITS = {"amx_int8": "int8", "amx_fp16": "float16", "sme": "int8"}
# How the networks are priced (`transfer_predictor`) is chosen among the candidates with at
# least this many calibration networks measured (each fold's error needs two left in), by at
# most CHOICE_FOLDS refits per candidate; the sample-alone candidate's kernel model (one thread:
# its per-kind fits are small, and OpenMP threads spinning beside another busy process made
# them 100x slower).
MIN_CHOICE_NETWORKS = 3
CHOICE_FOLDS = 8
ALONE_KERNEL_MODEL, ALONE_KERNEL_PARAMS = "xgboost", {"n_jobs": 1}


# --- sources ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransferSource:
    """A measured platform's kernel predictor, asked about the target's kernels."""

    label: str  # how the user named it (PATH or PATH@SLUG)
    platform: Platform
    kernels: Any  # a fitted KernelPredictor
    predictor: Any = None  # its LatencyPredictor (composition, call overhead): network ratio

    def log_ms(self, specs: Sequence[OpSpec]) -> np.ndarray:
        """Log of the predicted kernel ms of `specs`, each asked at the source's precision."""
        return np.log(np.maximum(source_predict(self.kernels, self.platform.precision, specs),
                                 1e-9))


def network_ms(sources: Sequence[TransferSource], networks: Sequence[Sequence[OpSpec]]
               ) -> np.ndarray:
    """Each network's kernel sum at the sources' geometric mean per kernel: what measuring it on
    the target is priced from before anything was measured there."""
    return np.array([float(np.exp(np.mean([s.log_ms(list(kernels)) for s in sources],
                                          axis=0)).sum()) for kernels in networks])


def at_precision(specs: Sequence[OpSpec], dtype: str) -> list[OpSpec]:
    return [s if s.dtype == dtype else s.with_(dtype=dtype) for s in specs]


def source_predict(kernels: Any, dtype: str, specs: Sequence[OpSpec]) -> np.ndarray:
    return np.asarray(kernels.predict(at_precision(specs, dtype)), dtype=np.float64)


def load_source(entry: str) -> TransferSource:
    """A source from `PATH` (a predictor folder of one platform) or `PATH@SLUG` (the platform
    of a multi-platform folder whose slug, e.g. local-onnxruntime-fp32-1t, is SLUG)."""
    from latbench.predictor.io import read_platforms
    from latbench.predictor.latency_predictor import LatencyPredictor

    path, slug = Path(entry), None
    if not path.exists() and SOURCE_SEPARATOR in entry:
        head, _, slug = entry.rpartition(SOURCE_SEPARATOR)
        path = Path(head)
    if not path.is_dir():
        raise ConfigError(f"source predictor {path} does not exist (give a folder `latbench "
                          "predictor fit` wrote)")
    folders = read_platforms(path)
    if slug is not None:
        chosen = [p for p in folders if p.slug() == slug]
        if not chosen:
            raise ConfigError(f"source predictor {path} has no platform {slug!r}; it has: "
                              f"{', '.join(sorted(p.slug() for p in folders))}")
        predictor = LatencyPredictor.load(path, chosen[0].choice())
    elif len(folders) > 1:
        raise ConfigError(f"source predictor {path} holds {len(folders)} platforms: name one as "
                          f"{path}{SOURCE_SEPARATOR}SLUG, SLUG one of "
                          f"{', '.join(sorted(p.slug() for p in folders))}")
    else:
        predictor = LatencyPredictor.load(path)
    return TransferSource(entry, predictor.platform, predictor.kernels_, predictor)


def matrix_unit_advice(sources: Sequence[TransferSource], target: Platform,
                       cpu_features: Sequence[str] | None) -> str | None:
    """Advice where every source computes in another precision than the target and the
    target's CPU has a matrix unit for the target's: there the map has little to follow. On a
    Xeon with AMX, LiteRT XNNPACK's int8 convolutions ran 0.02-5.4x their fp32 time (log sd
    1.2, against 0.5 from ONNX Runtime int8, which does not use AMX there), and at 10% of the
    campaign the map from fp32 priced networks at an RMSPE of 335%, from ONNX Runtime int8 23%
    (BENCHMARKS.md, *Kernel transfer*)."""
    units = [f for f in cpu_features or () if MATRIX_UNITS.get(f) == target.precision]
    if not units or any(s.platform.precision == target.precision for s in sources):
        return None
    name = precision_name(target.precision)
    return (f"the target's CPU computes {name} on a matrix unit ({', '.join(units)}): its "
            f"{name} kernels run on other hardware than the source(s)' "
            f"{'/'.join(sorted({precision_name(s.platform.precision) for s in sources}))} "
            "kernels and follow them loosely; a source in "
            f"{name} (another thread count or runtime of this device) maps better, or fit the "
            "target's own full campaign (`latbench bench ops`, then `predictor fit`)")


def check_sources(sources: Sequence[TransferSource], specs: Sequence[OpSpec],
                  target: Platform, plan: str = "the plan") -> None:
    """Refuse sources that cannot price every kernel the target needs: a kind they lack (a
    predictor of another space or kind set), a kernel with no form at their precision, a
    kernel they cannot price (a lookup table). One-line errors name the source and the
    kernel."""
    if not sources:
        raise ConfigError("give at least one source predictor (--from)")
    needed = sorted({s.kind for s in specs})
    for source in sources:
        missing = [k for k in needed if k not in source.kernels.kinds]
        if missing:
            raise ConfigError(f"source {source.label} ({source.platform}) has no model for "
                              f"kernel kind(s) {', '.join(missing)} that {plan} needs; use a "
                              "predictor fitted on a plan with them")
        dtype = source.platform.precision
        for spec in specs:
            if spec.dtype != dtype:
                try:
                    spec.with_(dtype=dtype)
                except SpecError as exc:
                    raise ConfigError(
                        f"source {source.label} computes in {precision_name(dtype)} and the "
                        f"target's {precision_name(target.precision)} kernel {spec.key()} has "
                        f"no {precision_name(dtype)} form to map from: {exc}") from exc
        try:
            source_predict(source.kernels, dtype, specs)
        except UnknownKernelError as exc:
            raise ConfigError(f"source {source.label} cannot price the target's kernels: "
                              f"{exc}") from exc


# --- what measuring costs ---------------------------------------------------------------------
@dataclass(frozen=True)
class MeasureCost:
    """Seconds of device time a subject takes under the campaign protocol: a fixed cost per
    subject (export, session creation, transfer, the batch's share of reference probes) plus
    its warm-up and timed calls. The stopping rule's number of timed calls is estimated as
    `typical_runs` (what it takes on a quiet CPU), never below `min_runs` nor past
    `max_runs` or `max_seconds` of timing; the fixed protocol times `fixed_runs` calls."""

    subject_overhead_s: float = 0.15
    campaign_overhead_s: float = 3.0  # calibration probes and device facts, once
    warmup: int = 10
    typical_runs: int = 150
    min_runs: int = 20
    max_runs: int = 1000
    max_seconds: float = 5.0
    fixed_runs: int | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> MeasureCost:
        """The cost of measuring with RunSettings `settings`."""
        if settings.target_ci is None:
            return cls(warmup=settings.warmup, fixed_runs=settings.runs * settings.rounds)
        return cls(warmup=settings.warmup, min_runs=settings.min_runs,
                   max_runs=settings.max_runs, max_seconds=settings.max_seconds)

    def seconds(self, ms: np.ndarray) -> np.ndarray:
        ms = np.maximum(np.asarray(ms, dtype=np.float64), 1e-6)
        if self.fixed_runs is not None:
            runs = np.full(len(ms), float(self.fixed_runs))
        else:
            runs = np.minimum(float(min(max(self.typical_runs, self.min_runs), self.max_runs)),
                              np.maximum(self.min_runs, 1000.0 * self.max_seconds / ms))
        return self._subject_seconds(runs, ms)

    def _subject_seconds(self, runs: np.ndarray, ms: np.ndarray) -> np.ndarray:
        """One subject: the fixed cost, then `warmup` + `runs` calls of `ms` each."""
        return self.subject_overhead_s + (self.warmup + runs) * ms / 1000.0

    def spent(self, records: Any) -> dict[str, float]:
        """Seconds each stored subject (by key) took: the fixed cost, its warm-up and the timed
        calls its record counts."""
        seconds = self._subject_seconds(records["n_runs"].to_numpy(dtype=np.float64),
                                        records["mean_ms"].to_numpy(dtype=np.float64))
        return {k: s for k, s in zip(records["key"], seconds.tolist(), strict=True)
                if math.isfinite(s)}


# --- the sampler ---------------------------------------------------------------------------------
# Measures kernels and networks (indices) on the target; the seconds each took, in order.
MeasureOnTarget = Callable[[list[int], list[int]], tuple[np.ndarray, np.ndarray]]
# With measuring, the rest of the sample after the covering round is taken in rounds of this
# share of the budget left (the last round takes all of it): each round is priced from what
# every kernel measured so far took.
ROUND_SHARE = 0.5
LAST_ROUND = 0.1  # of the budget: what is left below this is spent in one round


@dataclass(frozen=True)
class TransferSample:
    """What to measure on the target: indices of kernels and of calibration networks, why each
    kernel was chosen (`cover` or `spread`), and the estimated seconds of it all."""

    kernels: tuple[int, ...]
    networks: tuple[int, ...]
    reasons: tuple[str, ...]
    estimated_s: float
    budget_s: float

    def to_json(self) -> dict[str, Any]:
        return {"kernels": len(self.kernels), "networks": len(self.networks),
                "covering": self.reasons.count("cover"),
                "estimated_minutes": self.estimated_s / 60, "budget_minutes": self.budget_s / 60}


def minimum_budget_s(specs: Sequence[OpSpec], costs: np.ndarray, cost: MeasureCost) -> float:
    """The least device time that measures one kernel of every kind: each kind's cheapest."""
    cheapest: dict[str, float] = {}
    for spec, c in zip(specs, costs, strict=True):
        cheapest[spec.kind] = min(cheapest.get(spec.kind, math.inf), float(c))
    return cost.campaign_overhead_s + sum(cheapest.values())


def sample_transfer(specs: Sequence[OpSpec], source_logs: np.ndarray, costs: np.ndarray,
                    budget_s: float, *, network_costs: Sequence[float] = (),
                    network_families: Sequence[str] = (), kind_weight: dict[str, float] | None
                    = None, cost: MeasureCost | None = None, per_kind: int = COVER_PER_KIND,
                    network_share: float = NETWORK_SHARE, seed: int = SAMPLE_SEED,
                    measure: MeasureOnTarget | None = None) -> TransferSample:
    """Choose the kernels (and calibration networks) to measure on the target within
    `budget_s` seconds of device time.

    `source_logs` holds each source's log predicted ms of every spec (sources x specs),
    `costs` the estimated seconds of measuring each spec (`MeasureCost.seconds`), the network
    arguments the same of the plan's calibration networks and their family (networks are
    taken round-robin over families up to `network_share` of the budget; with `measure`, the
    rest are repriced by what the first took and more taken while that share allows).
    Kernels: first `per_kind` covering rounds (every kind's most typical kernel, then the
    farthest from those chosen), then greedily the kernel of the most value per second, value
    being its distance to the chosen kernels of its kind (standardized log-size features and the
    sources' mean prediction: where the map is least certain) plus how much the sources disagree
    about it beyond their usual offset, times its kind's weight (default: equal). A budget below
    `minimum_budget_s` is a ConfigError naming the minimum.

    With `measure`, the sample is measured as it is chosen (`measure(kernels, networks)`
    returns the seconds each took): the covering kernels and the networks first, then the
    rest in rounds (ROUND_SHARE of what is left each, all of it once under LAST_ROUND of the
    budget). Each round gets what is left of the budget after the real cost of everything
    before it, and each kernel's estimate is scaled by how far its kind's measured kernels were
    off theirs (`rescaled_costs`). The sources' times are only a guess at the target's: priced
    from them alone, an int8 sample overspent a 10% budget by 66% (an fp32 source) and a
    2-thread one by 650% (a 1-thread source, on a machine whose 2-thread campaign ran in slow
    phases); choosing the cheapest-looking kernels favours the underestimated ones, which
    rounds re-priced from more measurements keep in check."""
    cost = cost or MeasureCost()
    specs = list(specs)
    logs = np.atleast_2d(np.asarray(source_logs, dtype=np.float64))
    costs = np.asarray(costs, dtype=np.float64)
    if logs.shape[1] != len(specs) or len(costs) != len(specs):
        raise PredictorError(f"{len(specs)} kernels but {logs.shape[1]} predictions and "
                             f"{len(costs)} costs")
    minimum = minimum_budget_s(specs, costs, cost)
    if budget_s < minimum:
        raise ConfigError(f"a budget of {budget_s / 60:.2f} min cannot measure one kernel of "
                          f"each of the {len({s.kind for s in specs})} kinds the plan needs; "
                          f"the least is {math.ceil(minimum / 6) / 10:.1f} min "
                          f"(--budget-minutes {math.ceil(minimum / 6) / 10:.1f})")
    rng = np.random.default_rng(seed)
    left = budget_s - cost.campaign_overhead_s
    kinds = np.array([s.kind for s in specs])
    weight = {k: (kind_weight or {}).get(k, 1.0) for k in set(kinds.tolist())}
    space = _sample_space(specs, logs)
    spread = _disagreement(logs, kinds)
    chosen: list[int] = []
    reasons: list[str] = []
    nearest = np.full(len(specs), np.inf)  # distance to the nearest chosen kernel of its kind
    taken = np.zeros(len(specs), dtype=bool)

    def take(i: int, why: str) -> None:
        nonlocal left
        chosen.append(i)
        reasons.append(why)
        taken[i] = True
        left -= costs[i]
        same = kinds == kinds[i]
        nearest[same] = np.minimum(nearest[same],
                                   np.linalg.norm(space[same] - space[i], axis=1))

    order = sorted(set(kinds.tolist()))
    # Round one: the kernel nearest each kind's centre, or its cheapest where the budget would
    # not reach every kind otherwise.
    firsts = {}
    for kind in order:
        rows = np.flatnonzero(kinds == kind)
        centre = space[rows].mean(axis=0)
        firsts[kind] = rows[np.argmin(np.linalg.norm(space[rows] - centre, axis=1))]
    cheap = {k: np.flatnonzero(kinds == k)[np.argmin(costs[kinds == k])] for k in order}
    if sum(costs[i] for i in firsts.values()) > left:
        firsts = cheap
    for kind in order:
        take(int(firsts[kind]), "cover")
    network_costs = np.asarray(network_costs, dtype=np.float64)
    networks_s = network_share * left  # the networks' share of the budget
    networks = take_networks(network_costs, network_families, networks_s, rng)
    left -= float(network_costs[networks].sum())
    for _ in range(per_kind - 1):  # further covering rounds: farthest point per kind
        for kind in order:
            rows = np.flatnonzero((kinds == kind) & ~taken & (costs <= left))
            if len(rows):
                take(int(rows[np.argmax(nearest[rows])]), "cover")
    estimated = costs
    seconds: list[float] = []  # what each measured kernel took, in the order chosen
    network_seconds: list[float] = []  # the same of the networks

    def settle() -> float:
        """Measure what was chosen since the last call; the budget left after it all."""
        nonlocal costs
        new = chosen[len(seconds):]
        kernel_s, net_s = measure(new, networks[len(network_seconds):])
        seconds.extend(float(x) for x in kernel_s)
        network_seconds.extend(float(x) for x in net_s)
        costs = rescaled_costs(kinds, estimated, chosen, np.array(seconds))
        return budget_s - cost.campaign_overhead_s - sum(seconds) - sum(network_seconds)

    def more_networks(left: float) -> float:
        """Once the first networks are measured, reprice the others by what those took and
        take more while the networks' share allows: a 1-thread source priced a 2-thread
        target's networks about 3x too dear, and 8 networks had spent a third of the share."""
        if not network_seconds:
            return left
        one_kind = np.zeros(len(network_costs))  # one median ratio over every network
        repriced = rescaled_costs(one_kind, network_costs, networks[:len(network_seconds)],
                                  np.array(network_seconds))
        extra = take_networks(repriced, network_families,
                              min(networks_s - sum(network_seconds), left), rng,
                              cap_s=networks_s / MIN_CHOICE_NETWORKS, skip=set(networks))
        networks.extend(extra)
        return left - float(repriced[extra].sum())

    def round_end(left: float) -> float:
        """What is left when the round that starts with `left` ends (-inf: never, the last)."""
        return (1 - ROUND_SHARE) * left if measure is not None \
            and left > LAST_ROUND * budget_s else -math.inf

    if measure is not None:
        left = more_networks(settle())
    end = round_end(left)
    while True:
        rows = np.flatnonzero(~taken & (costs <= left))
        if not len(rows):
            if end == -math.inf or len(seconds) == len(chosen):
                break
            left = settle()  # a round ended short of its share: measure it, then go on
            end = round_end(left)
            continue
        value = np.array([weight[k] for k in kinds[rows]]) * (
            nearest[rows] + DISAGREEMENT_WEIGHT * spread[rows])
        take(int(rows[np.argmax(value / np.sqrt(costs[rows]))]), "spread")
        if left <= end:
            left = settle()
            end = round_end(left)
    if measure is not None and (len(seconds) < len(chosen)
                                or len(network_seconds) < len(networks)):
        left = settle()
    return TransferSample(tuple(chosen), tuple(networks), tuple(reasons),
                          budget_s - left, budget_s)


def rescaled_costs(kinds: np.ndarray, costs: np.ndarray, measured: Sequence[int],
                   seconds: np.ndarray) -> np.ndarray:
    """`costs` scaled per kind by the median ratio of the measured kernels' real `seconds` to
    their estimates (a kind none of them has: the median over all of them)."""
    if not len(measured):
        return costs
    rows = np.asarray(measured, dtype=int)
    ratio = np.asarray(seconds, dtype=np.float64) / np.maximum(costs[rows], 1e-9)
    scale = np.full(len(costs), float(np.median(ratio)))
    for kind in set(kinds[rows].tolist()):
        scale[kinds == kind] = float(np.median(ratio[kinds[rows] == kind]))
    return costs * scale


def _sample_space(specs: Sequence[OpSpec], logs: np.ndarray) -> np.ndarray:
    """Per kernel: its log-size features and the sources' mean log prediction, standardized
    within its kind."""
    columns = [FEATURE_NAMES.index(n) for n in ("log_flops", "log_weight_bytes",
                                                "log_input_bytes", "log_output_bytes",
                                                "log_out_pixels")]
    raw = np.column_stack([feature_matrix(specs)[:, columns], logs.mean(axis=0)])
    kinds = np.array([s.kind for s in specs])
    out = np.zeros_like(raw)
    for kind in set(kinds.tolist()):
        rows = kinds == kind
        scale = raw[rows].std(axis=0)
        out[rows] = (raw[rows] - raw[rows].mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    return out


def _disagreement(logs: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """How far the sources disagree about each kernel beyond their usual offset on its kind:
    the spread over sources of their log predictions, each centred on its kind's mean."""
    if logs.shape[0] < 2:
        return np.zeros(logs.shape[1])
    centred = logs.copy()
    for kind in set(kinds.tolist()):
        rows = kinds == kind
        centred[:, rows] -= centred[:, rows].mean(axis=1, keepdims=True)
    return centred.std(axis=0)


def take_networks(costs: Sequence[float], families: Sequence[str], budget_s: float,
                  rng: np.random.Generator, *, cap_s: float | None = None,
                  skip: Collection[int] = ()) -> list[int]:
    """Networks round-robin over their families (in a seeded order), while they fit, none
    above `cap_s` (default 1 / MIN_CHOICE_NETWORKS of `budget_s`): the choice of what prices
    networks needs that many, and two large ones first (a ResNet-50 and a ViT: 2.5 s each
    where a NAS-Bench-Macro network takes 0.3) left room for no other. Not the cheapest
    first: the smallest networks speed up least on a second thread, and a composition or ratio
    fitted on them misprices the rest (LiteRT XNNPACK 2 threads -> 1 at 10%: 90.0 -> 18.6%
    within 10%). `skip`: networks already taken."""
    if not len(costs):
        return []
    cap_s = budget_s / MIN_CHOICE_NETWORKS if cap_s is None else cap_s
    families = list(families) or [""] * len(costs)
    queues: dict[str, list[int]] = {}
    for j, family in enumerate(families):
        if costs[j] <= cap_s and j not in skip:
            queues.setdefault(family, []).append(j)
    order = [f for f in queues]
    rng.shuffle(order)
    out: list[int] = []
    spent = 0.0
    while any(queues.values()):
        for family in order:
            if queues[family]:
                j = queues[family].pop(0)
                if spent + costs[j] <= budget_s:
                    out.append(j)
                    spent += costs[j]
    return out


# --- the map -----------------------------------------------------------------------------------
@dataclass
class KindTransfer:
    """One kind's transferred model: `mode` "map" (intercept + slopes over the sources' log
    predictions + residual on RESIDUAL_FEATURES) or "alone" (log-linear on ALONE_FEATURES,
    fitted on the sample alone). `sources` are one-kind kernel predictors at `dtypes`."""

    mode: str
    sources: list[Any]
    dtypes: list[str]
    labels: list[str]
    intercept: float = 0.0
    slopes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    residual: np.ndarray = field(default_factory=lambda: np.zeros(0))
    alone: np.ndarray = field(default_factory=lambda: np.zeros(0))
    groups: dict[str, float] = field(default_factory=dict)  # shape group -> offset
    # the sample's (min, max) of each residual feature: a kernel beyond them gets the
    # residual of the edge (a slope fitted on a few kernels must not extrapolate)
    bounds: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))
    # the sample's (min, max) of each source's log prediction: beyond them the target follows
    # the sources in proportion (the ratio at the edge): ONNX Runtime -> LiteRT at a 2% budget,
    # a slope of 1.25 fitted on kernels up to 0.08 ms priced convolutions of 200 ms 9x over
    source_bounds: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))
    hinges: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per knot
    knots_ms: tuple[float, ...] = HINGE_KNOTS_MS  # the hinges' knots (as saved)
    residual_features: tuple[str, ...] = RESIDUAL_FEATURES  # the residual's columns (as saved)

    def log_ms(self, specs: Sequence[OpSpec], features: np.ndarray) -> np.ndarray:
        if self.mode == "alone":
            return predict_log_linear(self.alone, features, _columns(ALONE_FEATURES))
        logs = np.array([np.log(np.maximum(source_predict(src, dtype, specs), 1e-9))
                         for src, dtype in zip(self.sources, self.dtypes, strict=True)])
        inside = np.clip(logs, self.source_bounds[0][:, None], self.source_bounds[1][:, None]) \
            if self.source_bounds.size else logs
        out = self.intercept + self.slopes @ inside + (logs - inside).mean(axis=0)
        if len(self.hinges):
            out = out + hinge_columns(inside.mean(axis=0), self.knots_ms) @ self.hinges
        if len(self.residual):
            values = features[:, _columns(self.residual_features)]
            if self.bounds.size:
                values = np.clip(values, self.bounds[0], self.bounds[1])
            out = out + values @ self.residual
        if self.groups:  # a group the sample missed keeps its kind's level
            out = out + np.array([self.groups.get(shape_group(s), 0.0) for s in specs])
        return out


def _columns(names: Sequence[str]) -> list[int]:
    return [FEATURE_NAMES.index(n) for n in names]


def hinge_columns(mean_log_ms: np.ndarray,
                  knots_ms: Sequence[float] = HINGE_KNOTS_MS) -> np.ndarray:
    """max(0, log ms - log knot) per knot (kernels x knots)."""
    return np.maximum(0.0, np.asarray(mean_log_ms)[:, None] - np.log(knots_ms)[None, :])


@dataclass(frozen=True)
class MapFit:
    """The fitted map: shared intercept and slopes, per kind offset, slope deviation and
    residual coefficients; the penalties chosen and the leave-one-out log errors."""

    intercept: float
    slopes: np.ndarray
    offset: dict[str, float]
    deviation: dict[str, np.ndarray]  # kind -> each source's slope deviation
    residual: dict[str, np.ndarray]
    slope_deviation_ridge: float
    residual_ridge: float | None
    loo: np.ndarray  # per sample: leave-one-out log error (NaN where undefined)
    group_offset: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> group
    group_ridge: float | None = None
    hinges: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per HINGE_KNOTS_MS
    hinge_ridge: float | None = None


def shape_group(spec: OpSpec) -> str:
    """The kernel's algorithm group within its kind: kernel size and stride, and its mode
    (an INT8 bmm's form runs in XNNPACK or LiteRT's builtin kernel, which does not use a
    second thread)."""
    kernel = getattr(spec, "kernel", None)
    shape = f"k{kernel}x{getattr(spec, 'kernel_w', None) or kernel}s{spec.stride}" \
        if kernel else ""
    return "/".join(part for part in (shape, getattr(spec, "mode", "") or "") if part)


def fit_map(kinds: Sequence[str], source_logs: np.ndarray, log_ms: np.ndarray,
            features: np.ndarray, groups: Sequence[str] | None = None) -> MapFit:
    """The map's coefficients by generalized ridge regression, its penalties chosen by the
    closed-form leave-one-out error over SLOPE_DEVIATION_RIDGES x RESIDUAL_RIDGES x
    GROUP_RIDGES x HINGE_RIDGES (`groups`: each sample's `shape_group`; offsets only for
    kinds sampled in two groups or more)."""
    groups = list(groups) if groups is not None else [""] * len(kinds)
    columns = _group_columns(kinds, groups)
    best = None
    for deviation_ridge, residual_ridge, group_ridge, hinge_ridge in itertools.product(
            SLOPE_DEVIATION_RIDGES, RESIDUAL_RIDGES, GROUP_RIDGES, HINGE_RIDGES):
        fit = _solve_map(kinds, source_logs, log_ms, features, deviation_ridge, residual_ridge,
                         groups, columns if group_ridge is not None else [], group_ridge,
                         hinge_ridge)
        score = _rms(fit.loo)
        if best is None or score < best[0] - 1e-12:
            best = (score, fit)
    return best[1]


def _group_columns(kinds: Sequence[str], groups: Sequence[str]) -> list[tuple[str, str]]:
    """The (kind, group) pairs that get an offset: groups of kinds sampled in two or more."""
    seen: dict[str, set[str]] = {}
    for kind, group in zip(kinds, groups, strict=True):
        if group:
            seen.setdefault(kind, set()).add(group)
    return sorted((k, g) for k, gs in seen.items() if len(gs) > 1 for g in gs)


def _design(kinds: Sequence[str], order: Sequence[str], logs: np.ndarray,
            features: np.ndarray, residual: bool,
            group_columns: Sequence[tuple[str, str]] = (), groups: Sequence[str] = (),
            hinges: bool = False) -> np.ndarray:
    """Columns: shared intercept, per kind offset, per source slope, per kind deviation of each
    source's slope (kind-major), per kind residual features, per (kind, shape group) offset,
    shared hinges on the mean source."""
    n, n_kinds = len(kinds), len(order)
    index = np.array([order.index(k) for k in kinds])
    onehot = np.zeros((n, n_kinds))
    onehot[np.arange(n), index] = 1.0
    deviations = (onehot[:, :, None] * logs.T[:, None, :]).reshape(n, -1)
    parts = [np.ones((n, 1)), onehot, logs.T, deviations]
    if residual:
        width = features.shape[1]
        block = np.zeros((n, n_kinds * width))
        for j in range(width):
            block[np.arange(n), index * width + j] = features[:, j]
        parts.append(block)
    if group_columns:
        where = {pair: j for j, pair in enumerate(group_columns)}
        block = np.zeros((n, len(group_columns)))
        for i, pair in enumerate(zip(kinds, groups, strict=True)):
            if pair in where:
                block[i, where[pair]] = 1.0
        parts.append(block)
    if hinges:
        parts.append(hinge_columns(logs.mean(axis=0)))
    return np.hstack(parts)


def _solve_map(kinds: Sequence[str], logs: np.ndarray, y: np.ndarray, features: np.ndarray,
               deviation_ridge: float, residual_ridge: float | None, groups: Sequence[str],
               group_columns: Sequence[tuple[str, str]], group_ridge: float | None,
               hinge_ridge: float | None = None) -> MapFit:
    """One fit of the map; `group_columns` (`_group_columns`, empty without offsets) are the
    (kind, shape group) pairs that get an offset; hinges only with a `hinge_ridge`."""
    order = sorted(set(kinds))
    n_sources, n_kinds = logs.shape[0], len(order)
    residual = residual_ridge is not None
    # Residual features centred per kind: the offsets keep meaning the kind's typical level.
    centred = features - np.array([features[np.asarray(kinds) == k].mean(axis=0)
                                   for k in kinds]) if residual else features
    n_hinges = len(HINGE_KNOTS_MS) if hinge_ridge is not None else 0
    z = _design(kinds, order, logs, centred, residual, group_columns, groups, bool(n_hinges))
    width = features.shape[1] if residual else 0
    penalty = np.r_[0.0, [KIND_OFFSET_RIDGE] * n_kinds, [SLOPE_RIDGE] * n_sources,
                    [deviation_ridge] * (n_kinds * n_sources),
                    [residual_ridge or 0.0] * (n_kinds * width),
                    [group_ridge or 0.0] * len(group_columns), [hinge_ridge or 0.0] * n_hinges]
    prior = np.zeros(z.shape[1])
    prior[1 + n_kinds:1 + n_kinds + n_sources] = 1.0 / n_sources
    target = y - z @ prior
    gram = z.T @ z + np.diag(penalty) + 1e-9 * np.eye(z.shape[1])
    inverse = np.linalg.inv(gram)
    theta = inverse @ z.T @ target
    hat = np.einsum("ij,jk,ik->i", z, inverse, z)
    error = target - z @ theta
    loo = np.where(hat < 1 - 1e-6, error / np.maximum(1 - hat, 1e-6), np.nan)
    theta = theta + prior
    dev_start = 1 + n_kinds + n_sources
    start = dev_start + n_kinds * n_sources
    group_start = start + n_kinds * width
    group_offset: dict[str, dict[str, float]] = {}
    for j, (kind, group) in enumerate(group_columns):
        group_offset.setdefault(kind, {})[group] = float(theta[group_start + j])
    return MapFit(
        float(theta[0]), theta[1 + n_kinds:1 + n_kinds + n_sources],
        {k: float(theta[1 + i]) for i, k in enumerate(order)},
        {k: theta[dev_start + i * n_sources:dev_start + (i + 1) * n_sources]
         for i, k in enumerate(order)},
        {k: (theta[start + i * width:start + (i + 1) * width] if residual else np.zeros(0))
         for i, k in enumerate(order)},
        deviation_ridge, residual_ridge, loo, group_offset, group_ridge,
        theta[group_start + len(group_columns):], hinge_ridge)


def _alone_loo(features: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Leave-one-out log errors of the log-linear fit on the sample alone."""
    columns = _columns(ALONE_FEATURES)
    out = np.full(len(y), np.nan)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        coef = fit_log_linear(features[keep], columns, y[keep], ALONE_RIDGE)
        out[i] = y[i] - predict_log_linear(coef, features[i:i + 1], columns)[0]
    return out


def _rms(errors: np.ndarray) -> float:
    errors = errors[np.isfinite(errors)]
    return float(np.sqrt(np.mean(errors ** 2))) if len(errors) else math.inf


def _pct(errors: np.ndarray) -> float | None:
    """Median |predicted / measured - 1| in % of log errors (None when there are none)."""
    errors = errors[np.isfinite(errors)]
    return float(100 * np.median(np.abs(np.expm1(errors)))) if len(errors) else None


# --- the kernel predictor ------------------------------------------------------------------------
@register_predictor("transfer")
class KernelTransferPredictor(KernelPredictor):
    """Per kind, the target's kernel latency mapped from source platforms' kernel predictions
    (module docstring), or fitted on the sample alone where that cross-validates better.
    `fit(X, y, sources=[...])` takes the sources (TransferSource) as a fit argument; the
    fitted object keeps each source's model of every kind, saved beside its own. Without
    sources every kind is fitted on the sample alone."""

    def __init__(self) -> None:
        pass

    def fit(self, X: Sequence[OpSpec], y: Sequence[float],
            sources: Sequence[TransferSource] = ()) -> KernelTransferPredictor:
        from latbench.predictor.features import FEATURE_VERSION

        specs = list(X)
        ms = np.asarray(y, dtype=np.float64)
        if len(specs) != len(ms) or not specs:
            raise PredictorError(f"{len(specs)} specs but {len(ms)} latencies")
        if np.any(~np.isfinite(ms)) or np.any(ms <= 0):
            raise PredictorError("kernel latencies must be finite and positive")
        kinds = [s.kind for s in specs]
        features = feature_matrix(specs)
        y_log = np.log(ms)
        source_logs = np.array([s.log_ms(specs) for s in sources])
        fit = fit_map(kinds, source_logs, y_log,
                      features[:, _columns(RESIDUAL_FEATURES)],
                      [shape_group(s) for s in specs]) if sources else None
        alone_loo = np.full(len(specs), np.nan)
        models: dict[str, KindTransfer] = {}
        summary: dict[str, dict[str, Any]] = {}
        kind_array = np.array(kinds)
        for kind in sorted(set(kinds)):
            rows = kind_array == kind
            if fit is None:  # no sources: the sample alone
                alone = fit_log_linear(features[rows], _columns(ALONE_FEATURES), y_log[rows],
                                       ALONE_RIDGE)
                models[kind] = KindTransfer("alone", [], [], [], alone=alone)
                summary[kind] = {"kernels": int(rows.sum()), "mode": "alone",
                                 "map_loo_pct": None, "alone_loo_pct": None}
                continue
            map_err = fit.loo[rows]
            mode = "map"
            if rows.sum() >= MIN_ALONE_KERNELS:
                alone_loo[rows] = _alone_loo(features[rows], y_log[rows])
                if _rms(alone_loo[rows]) < _rms(map_err):
                    mode = "alone"
            alone = fit_log_linear(features[rows], _columns(ALONE_FEATURES), y_log[rows],
                                   ALONE_RIDGE) if mode == "alone" else np.zeros(0)
            # the residual was fitted on features centred on the kind's sample mean
            sampled = features[rows][:, _columns(RESIDUAL_FEATURES)]
            centre = sampled.mean(axis=0)
            residual = fit.residual[kind]
            intercept = fit.intercept + fit.offset[kind] - (
                float(residual @ centre) if len(residual) else 0.0)
            models[kind] = KindTransfer(
                mode, [_one_kind(s.kernels, kind) for s in sources],
                [s.platform.precision for s in sources], [s.label for s in sources],
                intercept, fit.slopes + fit.deviation[kind], residual, alone,
                fit.group_offset.get(kind, {}),
                np.array([sampled.min(axis=0), sampled.max(axis=0)]) if len(residual)
                else np.zeros((2, 0)),
                np.array([source_logs[:, rows].min(axis=1), source_logs[:, rows].max(axis=1)]),
                fit.hinges, residual_features=RESIDUAL_FEATURES)
            summary[kind] = {"kernels": int(rows.sum()), "mode": mode,
                             "map_loo_pct": _pct(map_err),
                             "alone_loo_pct": _pct(alone_loo[rows])}
        self.models_ = models
        self.n_train_ = {k: int((kind_array == k).sum()) for k in models}
        self.feature_version_ = FEATURE_VERSION
        if fit is None:
            self.cv_ = {"map_loo_pct": None, "alone_loo_pct": None, "chosen_loo_pct": None,
                        "kinds": summary}
            return self
        chosen = np.where([models[k].mode == "alone" for k in kinds], alone_loo, fit.loo)
        self.cv_ = {"map_loo_pct": _pct(fit.loo), "alone_loo_pct": _pct(alone_loo),
                    "chosen_loo_pct": _pct(chosen),
                    "slopes": [float(b) for b in fit.slopes], "intercept": fit.intercept,
                    "slope_deviation_ridge": fit.slope_deviation_ridge,
                    "residual_ridge": fit.residual_ridge, "group_ridge": fit.group_ridge,
                    "hinge_ridge": fit.hinge_ridge,
                    "kinds": summary}
        return self

    def _predict_ms(self, model: Any, specs: list[OpSpec], features: np.ndarray) -> np.ndarray:
        return np.exp(model.log_ms(specs, features))

    def save_kind(self, model: Any, path: Path) -> str:
        entries = []
        for i, (src, dtype, label) in enumerate(zip(model.sources, model.dtypes, model.labels,
                                                    strict=True)):
            kind = path.name
            name = src.save_kind(src.models_[kind], path.with_name(f"{kind}__source{i}"))
            entries.append({"predictor": src.registry_name, "params": src.get_params(),
                            "feature_version": src.feature_version_, "file": name,
                            "n_train": src.n_train_[kind], "dtype": dtype, "label": label})
        target = path.with_suffix(".json")
        target.write_text(json.dumps({
            "mode": model.mode, "intercept": model.intercept,
            "slopes": [float(b) for b in model.slopes],
            "residual_features": list(model.residual_features),
            "residual": [float(r) for r in model.residual],
            "residual_bounds": model.bounds.tolist(),
            "source_bounds": model.source_bounds.tolist(),
            "alone_features": list(ALONE_FEATURES), "alone": [float(a) for a in model.alone],
            "groups": {g: float(v) for g, v in model.groups.items()},
            "hinge_knots_ms": list(model.knots_ms) if len(model.hinges) else [],
            "hinges": [float(h) for h in model.hinges],
            "sources": entries}, indent=1, sort_keys=True) + "\n")
        return target.name

    def load_kind(self, file: Path) -> Any:
        from latbench.predictor.io import inside

        try:
            saved = json.loads(Path(file).read_text())
            kind = Path(file).name.split(".")[0]
            sources, dtypes, labels = [], [], []
            for entry in saved["sources"]:
                name = entry["predictor"]
                src = get_predictor_class(name)(**check_params(name, entry["params"]))
                where = inside(Path(file).parent, entry["file"], f"{kind} source file")
                src.models_ = {kind: src.load_kind(where)}
                src.n_train_ = {kind: int(entry["n_train"])}
                src.feature_version_ = int(entry["feature_version"])
                sources.append(src)
                dtypes.append(str(entry["dtype"]))
                labels.append(str(entry["label"]))
            if saved["mode"] not in ("map", "alone"):
                raise ValueError(f"unknown mode {saved['mode']!r}")
            slopes = np.array(saved["slopes"], dtype=np.float64)
            if len(slopes) != len(sources):
                raise ValueError(f"{len(slopes)} slopes for {len(sources)} sources")
            hinges = np.array(saved.get("hinges", []), dtype=np.float64)
            knots = tuple(float(k) for k in saved.get("hinge_knots_ms") or HINGE_KNOTS_MS)
            if len(hinges) not in (0, len(knots)):
                raise ValueError(f"{len(hinges)} hinges for {len(knots)} knots")
            residual_features = tuple(str(n) for n in saved["residual_features"])
            unknown = [n for n in residual_features if n not in FEATURE_NAMES]
            if unknown:
                raise ValueError(f"unknown residual feature(s) {', '.join(unknown)}")
            residual = np.array(saved["residual"], dtype=np.float64)
            if len(residual) not in (0, len(residual_features)):
                raise ValueError(f"{len(residual)} residual coefficients for "
                                 f"{len(residual_features)} features")
            return KindTransfer(saved["mode"], sources, dtypes, labels,
                                float(saved["intercept"]), slopes, residual,
                                np.array(saved["alone"], dtype=np.float64),
                                {str(g): float(v) for g, v in saved.get("groups", {}).items()},
                                np.array(saved.get("residual_bounds", [[], []]),
                                         dtype=np.float64).reshape(2, -1),
                                np.array(saved.get("source_bounds", [[], []]),
                                         dtype=np.float64).reshape(2, -1), hinges, knots,
                                residual_features)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PredictorError(f"{file} is not a saved kernel transfer: {exc}") from exc


def _one_kind(kernels: Any, kind: str) -> Any:
    """A copy of a fitted kernel predictor holding only its model of `kind`."""
    out = type(kernels)(**kernels.get_params())
    out.models_ = {kind: kernels.models_[kind]}
    out.n_train_ = {kind: kernels.n_train_[kind]}
    out.feature_version_ = getattr(kernels, "feature_version_", None) or 1
    return out


# --- the network-level predictor ----------------------------------------------------------------
def transfer_predictor(sources: Sequence[TransferSource], specs: Sequence[OpSpec],
                       kernel_ms: np.ndarray, call_overhead_ms: float,
                       networks: Sequence[tuple[str, list[OpSpec], float]] = (), *,
                       info: dict[str, Any] | None = None,
                       ranges_from: Sequence[OpSpec] = ()) -> Any:
    """A LatencyPredictor from the measured sample: the kernel map fitted on (`specs`,
    `kernel_ms`) and the composition on the measured `networks` (key, kernels, ms), as
    `LatencyPredictor.fit` does; training ranges (and fused blocks priced whole) of
    `ranges_from` (the target plan's kernels, which the sources price).

    With MIN_CHOICE_NETWORKS networks or more, two other candidates compete with it: the
    sample alone (ALONE_KERNEL_MODEL on the sampled kernels, the same composition: between
    runtimes the sources' kernels can mislead more than a few hundred measured ones), and a
    source's whole predictor times one ratio (`network_ratio_predictor`: one runtime at
    another thread count). The one with the lowest cross-validated error over the networks
    prices them (`choice_error_pct`: each fold's networks priced by kernels refitted without
    their kernels, else the sample alone wins by remembering kernels it was trained on);
    `info_["transfer"]["networks_priced_by"]` says which and every candidate's error."""
    ranges_from = ranges_from or specs
    kernel_ms = np.asarray(kernel_ms, dtype=np.float64)
    kernels = KernelTransferPredictor().fit(specs, kernel_ms, sources=sources)

    def composed(fitted: Any, nets: Sequence[tuple[str, list[OpSpec], float]]) -> Any:
        return compose(fitted, nets, call_overhead_ms, info=info, ranges_from=ranges_from)

    predictor = composed(kernels, networks)
    priceable = [n for n in networks if can_price(kernels, list(n[1]))]
    choice: dict[str, Any] = {"chosen": "kernel map", "networks": len(priceable)}
    if len(priceable) >= MIN_CHOICE_NETWORKS:
        folds = choice_folds(len(priceable))

        def refitted(fit_kernels: Callable[[list[OpSpec], np.ndarray], Any]
                     ) -> Callable[[list[int], list[int]], Any]:
            def fit(train: list[int], held: list[int]) -> Any:
                keep = kernels_kept(specs, [priceable[j][1] for j in held])
                return composed(fit_kernels([s for s, k in zip(specs, keep, strict=True)
                                             if k], kernel_ms[keep]),
                                [priceable[j] for j in train])
            return fit

        def alone_model() -> Any:
            return get_predictor_class(ALONE_KERNEL_MODEL)(**ALONE_KERNEL_PARAMS)

        # each candidate: fitted on everything, and its refit without a fold's networks
        candidates: dict[str, tuple[Any, Callable[[list[int], list[int]], Any]]] = {
            "kernel map": (predictor, refitted(
                lambda s, ms: KernelTransferPredictor().fit(s, ms, sources=sources))),
            "sample alone": (composed(alone_model().fit(specs, kernel_ms), networks),
                             refitted(lambda s, ms: alone_model().fit(s, ms)))}
        ratios = {}
        for source in sources:
            if source.predictor is None:
                continue
            name = f"{source.label} times a ratio"
            whole = network_ratio_predictor(source, kernels, networks, info=info,
                                            ranges_from=ranges_from)
            ratios[name] = whole.composition_.summary["network_ratio"]
            candidates[name] = (whole, lambda train, _, source=source: network_ratio_predictor(
                source, kernels, [priceable[j] for j in train], info=info,
                ranges_from=ranges_from))
        errors = {name: choice_error_pct(fit, priceable, folds)
                  for name, (_, fit) in candidates.items()}
        best = min(errors, key=lambda name: errors[name])
        predictor = candidates[best][0]
        choice.update(chosen=best, folds=len(folds), errors_pct=errors, ratios=ratios)
    transfer = predictor.info_.setdefault("transfer", {})
    transfer["cv"], transfer["networks_priced_by"] = kernels.cv_, choice
    return predictor


def choice_folds(n_networks: int) -> list[list[int]]:
    """The networks' folds (interleaved: the sampler takes families in turn): one network each
    up to CHOICE_FOLDS networks."""
    count = min(n_networks, CHOICE_FOLDS)
    return [list(range(i, n_networks, count)) for i in range(count)]


def kernels_kept(specs: Sequence[OpSpec], held_out: Sequence[Sequence[OpSpec]]) -> np.ndarray:
    """Which sampled kernels a fold may fit on: none of its held-out networks' kernels, but a
    kind only those kernels cover keeps them (else the refit could not price that kind)."""
    left_out = {k.key() for network in held_out for k in network}
    dropped = np.array([s.key() in left_out for s in specs])
    kinds = np.array([s.kind for s in specs])
    covered = set(kinds[~dropped])
    return ~dropped | ~np.isin(kinds, sorted(covered))


def choice_error_pct(fit: Callable[[list[int], list[int]], Any],
                     networks: Sequence[tuple[str, list[OpSpec], float]],
                     folds: Sequence[list[int]]) -> float:
    """RMSPE of `networks` (key, kernels, ms), each priced by `fit(train, held)`: a candidate
    fitted without its fold."""
    predicted = np.empty(len(networks))
    for held in folds:
        fitted = fit([j for j in range(len(networks)) if j not in held], held)
        for j in held:
            predicted[j] = fitted.predict(list(networks[j][1])).predicted_ms
    return rmspe_pct(predicted, np.array([ms for _, _, ms in networks], dtype=np.float64))


def network_ratio_predictor(source: TransferSource, kernel_map: KernelTransferPredictor,
                            networks: Sequence[tuple[str, list[OpSpec], float]], *,
                            info: dict[str, Any] | None = None,
                            ranges_from: Sequence[OpSpec] = ()) -> Any:
    """The source's whole predictor (its kernels, composition and call overhead) times one
    ratio: the median over the measured `networks` of measured / the source's prediction. Its
    composition summary holds the ratio and the networks' leave-one-out error, which
    `transfer_predictor` weighs against the kernel map's.

    Why: between thread counts of one runtime a network's latency is its source's times a
    near-constant (LiteRT XNNPACK fp32, 2 threads over 1: log sd 0.064 over 70 held-out
    networks), while kernels timed alone speed up by a ratio that bends with their size, which
    a composition fitted on a handful of networks must then undo. Kept a sum over kernels (each
    kernel is the source's times the ratio, term coefficients and call overhead too), so it
    saves, loads and serves latency tables like any predictor."""
    from latbench.predictor.latency_predictor import LatencyPredictor
    from latbench.predictor.model_level import Composition, leave_one_out_summary

    full = source.predictor

    def scaled(ratio: float, summary: dict[str, Any]) -> Any:
        kernels = KernelTransferPredictor()
        kernels.models_ = {kind: KindTransfer(
            "map", [_one_kind(source.kernels, kind)], [source.platform.precision],
            [source.label], math.log(ratio), np.ones(1)) for kind in kernel_map.kinds}
        kernels.n_train_ = dict(kernel_map.n_train_)
        kernels.feature_version_ = kernel_map.feature_version_
        kernels.cv_ = kernel_map.cv_
        composition = Composition(
            dict(full.composition_.kind_scale),
            {t: ratio * c for t, c in full.composition_.terms.items()}, summary)
        return LatencyPredictor.from_kernels(
            kernels, call_overhead_ms=ratio * full.call_overhead_ms_, composition=composition,
            info=info, ranges_from=ranges_from)

    cache = full.composition_.weight_cache_mb  # the streamed-weights term's cache size
    kept = {} if cache is None else {"weight_cache_mb": cache}
    base = scaled(1.0, kept)
    measured = np.array([ms for _, _, ms in networks], dtype=np.float64)
    priced = np.array([base.predict(list(kernels)).predicted_ms for _, kernels, _ in networks])
    logs = np.log(measured / priced)
    ratio = float(np.exp(np.median(logs)))
    loo = np.array([priced[i] * np.exp(np.median(np.delete(logs, i)))
                    for i in range(len(logs))])
    summary: dict[str, Any] = {
        **kept, "networks": len(networks), "keys": [key for key, _, _ in networks],
        "source": source.label, "network_ratio": ratio,
        "rmspe_pct_composed": rmspe_pct(ratio * priced, measured),
        **leave_one_out_summary(loo, measured)}  # as a fitted composition's
    return scaled(ratio, summary)


def compose(kernels: Any, networks: Sequence[tuple[str, list[OpSpec], float]],
            call_overhead_ms: float, *, info: dict[str, Any] | None = None,
            ranges_from: Sequence[OpSpec] = ()) -> Any:
    """A LatencyPredictor around fitted `kernels` with its composition fitted on `networks`
    as `LatencyPredictor.fit` fits it (`fit_composition`)."""
    from latbench.predictor.latency_predictor import LatencyPredictor, fit_composition

    info = dict(info or {})
    platform = info.get("platform") or {}
    runtime = info.get("runtime") or platform.get("runtime")
    composition = fit_composition(kernels, networks, call_overhead_ms, runtime=runtime,
                                  delegate=platform.get("delegate") or "",
                                  threads=int(platform.get("threads") or 1))
    return LatencyPredictor.from_kernels(
        kernels, call_overhead_ms=call_overhead_ms, composition=composition,
        info=info, ranges_from=ranges_from)


# --- measuring on the target -------------------------------------------------------------------
@dataclass(frozen=True)
class TransferRun:
    """What `measure_transfer` did: the predictor, the sample, the dataset, the seconds the
    campaign of this call took."""

    predictor: Any
    sample: TransferSample
    data: Path
    seconds: float


def plan_targets(plan: Any, precision: str) -> tuple[list[OpSpec], list[Any]]:
    """The kernels (each once) of the plan and of its calibration networks, which the
    predictor must price too, and the calibration networks, in `precision`."""
    from latbench.bench.ops import precision_forms
    from latbench.bench.plans import build_specs, plan_networks

    networks = plan_networks(plan, precision)
    every = [*(f for k in build_specs(plan) for f in precision_forms(k, precision)),
             *(k for n in networks for k in n.kernels or ())]
    return list({s.key(): s for s in every}.values()), networks


def measure_transfer(sources: Sequence[TransferSource], plan: Any, precision: str,
                     device: Any, runtime: str, config: Any, budget_s: float, data: Path, *,
                     progress: Any = None, note: Any = None, seed: int = SAMPLE_SEED,
                     card: dict[str, Any] | None = None) -> TransferRun:
    """Transfer the `sources` to the platform (device, runtime, settings of `config`,
    `precision`): choose the sample of the plan's kernels and calibration networks within
    `budget_s` seconds, measure it into the dataset `data` with the campaign machinery of
    `bench ops` (resumable: the seeded sample is the same on a rerun, stored subjects are
    skipped), fit the map and the composition. `note(text)` hears what was chosen."""
    import time
    from dataclasses import asdict

    from latbench.bench.campaign import Subject, measure_into_dataset
    from latbench.bench.stats import DEFAULT_STATISTIC
    from latbench.bench.store import LatencyDataset
    from latbench.predictor.features import training_pairs
    from latbench.predictor.latency_predictor import dataset_summary
    from latbench.predictor.training import calibration_networks, select_records

    settings = config.settings
    target = Platform(device.name, runtime, settings_field(settings.key(runtime), "delegate")
                      or "", precision, settings.threads)
    specs, networks = plan_targets(plan, precision)
    check_sources(sources, specs, target, f"plan {plan.name}")
    cost = MeasureCost.from_settings(settings)
    logs = np.array([s.log_ms(specs) for s in sources])
    costs = cost.seconds(np.exp(logs.mean(axis=0)))
    network_costs = cost.seconds(network_ms(sources, [n.kernels for n in networks]))
    transfer = {"sources": [{"source": s.label, "platform": s.platform.to_json()}
                            for s in sources], "plan": plan.name, "budget_minutes": budget_s / 60}
    card = {**(card or {}), "plan": plan.to_dict(), "transfer": transfer}
    # device time spent by earlier runs of this transfer (a crashed or interrupted run resumed):
    # the minutes reported are those of all runs together
    before = float(LatencyDataset.open(Path(data)).card.get("transfer_seconds") or 0.0) \
        if (Path(data) / "card.json").exists() else 0.0
    started = time.perf_counter()

    def measure(kernels: list[int], nets: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Measure a round of the sample (stored subjects are skipped on a resumed run): what
        it took prices the next."""
        if note:
            if not rounds:
                what = (f"{len(kernels)} kernels covering the plan's "
                        f"{len({s.kind for s in specs})} kinds and {len(nets)} calibration "
                        "networks")
            else:
                what = f"{len(kernels)} more kernels" + (
                    f" and {len(nets)} more calibration networks" if nets else "")
            note(f"measuring {what} on {target}"
                 + (f" ({sum(rounds) / 60:.1f} of {budget_s / 60:.1f} min spent)" if rounds
                    else ""))
        measure_into_dataset([Subject.op(specs[i]) for i in kernels]
                             + [networks[j] for j in nets], device, runtime, Path(data), config,
                             card=card, progress=progress)
        spent = cost.spent(LatencyDataset.open(Path(data)).records())
        out = (np.array([spent.get(specs[i].key(), costs[i]) for i in kernels]),
               np.array([spent.get(networks[j].key, network_costs[j]) for j in nets]))
        rounds.append(float(out[0].sum() + out[1].sum()))
        return out

    rounds: list[float] = []  # the seconds each measured round took, by the records
    sample = sample_transfer(specs, logs, costs, budget_s, network_costs=network_costs,
                             network_families=[n.family for n in networks], cost=cost,
                             seed=seed, measure=measure)
    if note:
        note(f"measured {len(sample.kernels)} of the plan's {len(specs)} kernels and "
             f"{len(sample.networks)} of its {len(networks)} calibration networks in "
             f"{len(rounds)} rounds: {sample.estimated_s / 60:.1f} of {budget_s / 60:.1f} min")
    dataset = LatencyDataset.open(Path(data))
    advice = matrix_unit_advice(sources, target, (dataset.card.get("device_facts") or {}).get(
        "cpu_features"))
    if advice and note:
        note(f"note: {advice}")
    transfer = {**transfer, **sample.to_json(), "advice": [advice] if advice else []}
    dataset.update_card(transfer=transfer)
    seconds = before + time.perf_counter() - started
    dataset.update_card(transfer_seconds=seconds)
    records = dataset.records()
    ops = select_records(records, owner=f"transfer dataset {data}")
    measured, kernel_ms, overhead = training_pairs(ops, DEFAULT_STATISTIC)
    nets = calibration_networks(records, dataset.card, ops, DEFAULT_STATISTIC)
    first = ops.iloc[0]
    info = {"device": str(first["device"]), "runtime": str(first["runtime"]),
            "runtime_version": str(first["runtime_version"]), "settings": str(first["settings"]),
            "platform": record_platform(first).to_json(), "run_settings": asdict(settings),
            "statistic": DEFAULT_STATISTIC,
            "dataset": dataset_summary(data, ops, dataset.card),
            "transfer": {**transfer, "kernels_measured": len(measured),
                         "networks_measured": len(nets), "minutes_spent": seconds / 60}}
    if note and len(nets) >= MIN_CHOICE_NETWORKS:
        note(f"fitting the kernel map, the sample alone and each source times a ratio, "
             f"{len(choice_folds(len(nets)))} times each without a fold of the {len(nets)} "
             "calibration networks, to choose what prices networks")
    predictor = transfer_predictor(sources, measured, kernel_ms, overhead, nets, info=info,
                                   ranges_from=specs)
    return TransferRun(predictor, sample, Path(data), seconds)
