"""Robust statistics on synthetic samples with known exact answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from latbench.bench.stats import Stats, flatten, round_medians, round_spread, summarize
from latbench.errors import LatbenchError


def test_summarize_exact_values() -> None:
    s = summarize([4.0, 1.0, 3.0, 2.0, 10.0])
    assert s == Stats(median_ms=3.0, min_ms=1.0, mean_ms=4.0, std_ms=math.sqrt(12.5),
                      p90_ms=pytest.approx(7.6), n_runs=5, p99_ms=pytest.approx(9.76))
    # p90 by linear interpolation: sorted [1, 2, 3, 4, 10], position 0.9 * 4 = 3.6 -> 4 + 0.6*6
    assert s.p90_ms == pytest.approx(7.6)


def test_summarize_flattens_rounds() -> None:
    rounds = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]]
    s = summarize(rounds)
    assert s.n_runs == 10
    assert s.median_ms == 5.5 and s.min_ms == 1.0 and s.mean_ms == 5.5
    assert s.p90_ms == pytest.approx(9.1)
    assert s.std_ms == pytest.approx(np.std(np.arange(1, 11), ddof=1))
    assert summarize(tuple(tuple(r) for r in rounds)) == s
    assert summarize(np.array(rounds[:2])) == summarize([1.0, 2.0, 3.0, 4.0])


def test_median_is_robust_to_an_outlier() -> None:
    s = summarize([1.0] * 9 + [1000.0])
    assert s.median_ms == 1.0 and s.min_ms == 1.0
    assert s.mean_ms == pytest.approx(100.9)


def test_single_sample_has_zero_std() -> None:
    assert summarize([2.5]) == Stats(2.5, 2.5, 2.5, 0.0, 2.5, 1, 2.5)


@pytest.mark.parametrize("bad", [[], [[]], [1.0, float("nan")], [1.0, float("inf")], [-1.0],
                                 ["fast"], [[1.0, 2.0], [[3.0]]]])
def test_summarize_rejects_bad_samples(bad: list) -> None:
    with pytest.raises(LatbenchError):
        summarize(bad)


def test_flatten() -> None:
    assert flatten([[1, 2], [3]]) == [1.0, 2.0, 3.0]
    assert flatten([1.5, 2.5]) == [1.5, 2.5]


def test_round_medians_and_spread() -> None:
    rounds = [[1.0, 2.0, 9.0], [2.0, 3.0], [4.0]]
    assert round_medians(rounds) == [2.0, 2.5, 4.0]
    assert round_spread(rounds) == pytest.approx((4.0 - 2.0) / 2.5)
    assert round_spread([[1.0, 1.0], [1.0]]) == 0.0


@pytest.mark.parametrize("bad", [[], [[1.0], []], [[1.0], [float("nan")]]])
def test_round_medians_rejects_empty(bad: list) -> None:
    with pytest.raises(LatbenchError):
        round_medians(bad)
