"""Robust statistics over latency samples.

Latency samples are skewed (a floor set by the hardware, a long tail of interruptions). Timing
noise only ever adds time, so on a shared or throttling device the minimum is the most repeatable
figure (measured on this project's 2-core machine: repeated measurements of the same networks
differ by a median 1.7-2% on min vs 2.5-8% on median); the median is the typical latency.
Samples come in interleaved rounds; `summarize` pools them, `round_medians` keeps them apart so
drift between rounds can be seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from latbench.errors import LatbenchError

# Statistics every record carries that a predictor can learn, the default first.
RECORD_STATISTICS = ("min_ms", "median_ms", "mean_ms", "round_min_median_ms")
DEFAULT_STATISTIC = RECORD_STATISTICS[0]


@dataclass(frozen=True)
class Stats:
    """Summary of one measurement, in milliseconds; `n_runs` counts the pooled samples."""

    median_ms: float
    min_ms: float
    mean_ms: float
    std_ms: float
    p90_ms: float
    n_runs: int


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
    )


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
