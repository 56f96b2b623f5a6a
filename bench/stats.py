"""Robust statistics over latency samples.

Latency samples are skewed (a floor set by the hardware, a long tail of interruptions). Timing
noise only ever adds time, so on a shared or throttling device the minimum is the most repeatable
figure (docs/measurement.md gives the repeatability measured for both); the median is the
typical latency.
Samples come in interleaved rounds; `summarize` pools them, `round_medians` keeps them apart so
drift between rounds can be seen.

The stopping rule (`median_ci`, `ci_rel_width`, `stop_reason`) runs on the device, so it lives
in the standalone agent and is re-exported here: there is one implementation. `quality` adds
what a record says about its own samples: the achieved precision, and flags for bimodal or
heavy-tailed samples (a measurement that straddled two device states, or one full of
interruptions, deserves a second look before anyone trusts its median).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from latbench.device_agents.agent.latbench_agent import (
    STOP_REASONS,
    ci_rel_width,
    median_ci,
    median_ci_ranks,
    stop_reason,
)
from latbench.errors import LatbenchError

__all__ = [
    "BIMODAL_COEFFICIENT",
    "BIMODAL_MIN_FRACTION",
    "BIMODAL_SEPARATION",
    "BUDGET_STATISTICS",
    "DEFAULT_BUDGET_STATISTIC",
    "DEFAULT_STATISTIC",
    "HEAVY_TAIL_RATIO",
    "RECORD_STATISTICS",
    "REPLICATION_TOLERANCE",
    "STOP_REASONS",
    "Quality",
    "Stats",
    "bimodality_coefficient",
    "ci_rel_width",
    "flatten",
    "is_bimodal",
    "median_ci",
    "median_ci_ranks",
    "quality",
    "replication_spread",
    "round_medians",
    "round_spread",
    "stop_reason",
    "summarize",
    "tail_ratio",
    "two_cluster_separation",
]

# Statistics every record carries that a predictor can learn, the default first.
RECORD_STATISTICS = ("min_ms", "median_ms", "mean_ms", "p90_ms", "round_min_median_ms")
DEFAULT_STATISTIC = RECORD_STATISTICS[0]
# What users' own tools print and check a budget with; a search's budget is about one of these
# (the median by default), whatever statistic its predictor learned.
BUDGET_STATISTICS = ("median_ms", "p90_ms", "mean_ms", "min_ms")
DEFAULT_BUDGET_STATISTIC = BUDGET_STATISTICS[0]


@dataclass(frozen=True)
class Stats:
    """Summary of one measurement, in milliseconds; `n_runs` counts the pooled samples."""

    median_ms: float
    min_ms: float
    mean_ms: float
    std_ms: float
    p90_ms: float
    n_runs: int
    p99_ms: float = math.nan


def _as_array(samples_ms: Iterable[float], what: str) -> np.ndarray:
    try:
        arr = np.asarray(list(samples_ms), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LatbenchError(f"{what}: samples are not numbers ({exc})") from None
    if arr.ndim != 1:
        raise LatbenchError(f"{what}: expected a flat list of samples, got shape {arr.shape}")
    if arr.size == 0:
        raise LatbenchError(f"{what}: no samples")
    if not np.all(np.isfinite(arr)):
        raise LatbenchError(f"{what}: samples contain NaN or infinity")
    if np.any(arr < 0):
        raise LatbenchError(f"{what}: negative latency sample {arr.min()}")
    return arr


def flatten(samples_ms: Iterable[float] | Iterable[Iterable[float]]) -> list[float]:
    """Pool rounds: [[a, b], [c]] -> [a, b, c]; a flat list passes through."""
    out: list[float] = []
    for item in samples_ms:
        if isinstance(item, (Sequence, np.ndarray)) and not isinstance(item, (str, bytes)):
            out.extend(item)
        else:
            out.append(item)  # type: ignore[arg-type]
    return out


def summarize(samples_ms: Iterable[float] | Iterable[Iterable[float]]) -> Stats:
    """Stats over all samples (rounds flattened). std is the sample std (ddof=1; 0 for one
    sample); p90 uses linear interpolation between order statistics."""
    arr = _as_array(flatten(samples_ms), "summarize")
    return Stats(
        median_ms=float(np.median(arr)),
        min_ms=float(arr.min()),
        mean_ms=float(arr.mean()),
        std_ms=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        p90_ms=float(np.percentile(arr, 90)),
        n_runs=int(arr.size),
        p99_ms=float(np.percentile(arr, 99)),
    )


# MLPerf-style replication: the single-stream runs of one model must agree on their 90th
# percentile within this relative spread.
REPLICATION_TOLERANCE = 0.05


def replication_spread(rounds: Sequence[Sequence[float]]) -> float:
    """(max - min) / min of the rounds' 90th percentiles: how far a model's replicate runs
    disagree (NaN with fewer than two)."""
    p90 = [float(np.percentile(_as_array(r, f"replicate {i}"), 90)) for i, r in enumerate(rounds)]
    if len(p90) < 2 or min(p90) <= 0:
        return math.nan
    return max(p90) / min(p90) - 1


def round_medians(rounds: Iterable[Iterable[float]]) -> list[float]:
    """Median of each round, in order; an empty round is an error."""
    meds = [float(np.median(_as_array(r, f"round {i}"))) for i, r in enumerate(rounds)]
    if not meds:
        raise LatbenchError("round_medians: no rounds")
    return meds


def round_spread(rounds: Iterable[Iterable[float]]) -> float:
    """(max - min) of the round medians relative to their median: how much the device drifted
    between rounds (0.0 = perfectly stable). Used to flag unstable measurements."""
    meds = np.asarray(round_medians(rounds))
    centre = float(np.median(meds))
    if centre == 0.0:
        return 0.0
    return float((meds.max() - meds.min()) / centre)


# --- outliers and bimodality ----------------------------------------------------------------
# Both tests look at log latencies: latency noise is multiplicative and right-skewed, and on a
# log scale a skewed unimodal sample (lognormal, shifted exponential) looks near-normal while
# two device states (1.0x and 1.3x) stay two clusters. Sarle's bimodality coefficient above 5/9
# (its value for a uniform distribution) hints at two modes, but small skewed samples reach it
# too, so a record is flagged bimodal only when in addition the best split into two clusters
# separates them clearly (Ashman's D above BIMODAL_SEPARATION: a hard split of one normal
# gives ~2.7, of a uniform ~3.5) and the smaller cluster holds at least BIMODAL_MIN_FRACTION of
# at least BIMODAL_MIN_SAMPLES samples (fewer, rarer slow calls are a heavy tail, not a mode).
# On synthetic data (300 draws each): lognormal sigma 0.2-1.5, uniform, shifted exponential or
# gamma are flagged in <= 4% of samples of 30 and <= 0.3% of 50 or more; a 15%/85% mixture of
# 1.3x and 1x is flagged in >= 84%, a 50/50 mixture of 1.15x and 1x in 99%.
BIMODAL_COEFFICIENT = 5.0 / 9.0
BIMODAL_SEPARATION = 5.0
BIMODAL_MIN_FRACTION = 0.10
BIMODAL_MIN_SAMPLES = 30
# p99 / median above this: 1% of the calls took at least 50% longer than the typical call.
HEAVY_TAIL_RATIO = 1.5


@dataclass(frozen=True)
class Quality:
    """What the samples say about themselves: the median's confidence interval and its relative
    width (the achieved precision), Sarle's bimodality coefficient, the two-cluster separation,
    p99 / median, and the flags derived from them."""

    ci_low_ms: float
    ci_high_ms: float
    ci_rel_width: float
    bimodality: float
    separation: float
    tail_ratio: float
    bimodal: bool
    heavy_tail: bool


def bimodality_coefficient(samples_ms: Iterable[float]) -> float:
    """Sarle's bimodality coefficient (g1^2 + 1) / (g2 + 3 (n-1)^2 / ((n-2)(n-3))) with the
    bias-corrected sample skewness g1 and excess kurtosis g2; NaN below 4 samples or when all
    samples are equal."""
    x = _as_array(flatten(samples_ms), "bimodality_coefficient")
    n = x.size
    if n < 4:
        return math.nan
    d = x - x.mean()
    m2 = float(np.mean(d ** 2))
    if m2 <= 0.0:
        return math.nan
    m3, m4 = float(np.mean(d ** 3)), float(np.mean(d ** 4))
    g1 = math.sqrt(n * (n - 1)) / (n - 2) * m3 / m2 ** 1.5
    g2 = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * (m4 / m2 ** 2 - 3.0) + 6.0)
    return (g1 ** 2 + 1.0) / (g2 + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


def two_cluster_separation(samples_ms: Iterable[float]) -> tuple[float, float]:
    """Best split of the sorted samples into two clusters (least within-cluster sum of squares,
    i.e. exact 1-D 2-means): (Ashman's D between them, fraction in the smaller cluster).
    D = sqrt(2) |m1 - m2| / sqrt(s1^2 + s2^2); inf when both clusters are constant."""
    x = np.sort(_as_array(flatten(samples_ms), "two_cluster_separation"))
    n = x.size
    if n < 4:
        return math.nan, 0.0
    csum, csq = np.cumsum(x), np.cumsum(x * x)
    k = np.arange(1, n)  # left cluster = x[:k]
    left_ss = csq[:-1] - csum[:-1] ** 2 / k
    right_n = n - k
    right_sum, right_sq = csum[-1] - csum[:-1], csq[-1] - csq[:-1]
    right_ss = right_sq - right_sum ** 2 / right_n
    split = int(np.argmin(left_ss + right_ss)) + 1
    a, b = x[:split], x[split:]
    spread = math.sqrt(float(a.var()) + float(b.var()))
    gap = abs(float(b.mean()) - float(a.mean()))
    d = math.inf if spread == 0.0 and gap > 0 else (0.0 if gap == 0 else
                                                      math.sqrt(2.0) * gap / spread)
    return d, min(split, n - split) / n


def _log_shape(samples_ms: Iterable[float]) -> tuple[float, float, float]:
    """(bimodality coefficient, separation, minor fraction) of the log samples."""
    x = _as_array(flatten(samples_ms), "bimodality")
    logs = np.log(np.maximum(x, 1e-9))
    logs = logs - logs.min()  # the helpers take non-negative "latencies"
    d, minor = two_cluster_separation(logs)
    return bimodality_coefficient(logs), d, minor


def is_bimodal(samples_ms: Iterable[float]) -> bool:
    """The bimodality flag on log samples (see the constants above); False below 30 samples."""
    x = flatten(samples_ms)
    if len(x) < BIMODAL_MIN_SAMPLES:
        return False
    bc, d, minor = _log_shape(x)
    return (bool(bc > BIMODAL_COEFFICIENT) and d > BIMODAL_SEPARATION
            and minor >= BIMODAL_MIN_FRACTION)


def tail_ratio(samples_ms: Iterable[float]) -> float:
    """p99 / median (linear interpolation); NaN when the median is 0."""
    x = _as_array(flatten(samples_ms), "tail_ratio")
    median = float(np.median(x))
    return float(np.percentile(x, 99)) / median if median > 0 else math.nan


def quality(samples_ms: Iterable[float] | Iterable[Iterable[float]],
            confidence: float = 0.95) -> Quality:
    """Precision and shape of one measurement's samples (rounds pooled); `bimodality` and
    `separation` are those of the log samples, as the flag uses them."""
    x = flatten(samples_ms)
    _as_array(x, "quality")
    ci = median_ci(x, confidence)
    bc, d, _ = _log_shape(x)
    tail = tail_ratio(x)
    return Quality(
        ci_low_ms=ci[0] if ci else math.nan, ci_high_ms=ci[1] if ci else math.nan,
        ci_rel_width=ci_rel_width(x, confidence), bimodality=bc, separation=d,
        tail_ratio=tail, bimodal=is_bimodal(x),
        heavy_tail=bool(math.isfinite(tail) and tail > HEAVY_TAIL_RATIO))
