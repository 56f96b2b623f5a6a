"""The stopping rule on synthetic sample streams, the median's confidence interval, and the
bimodality / heavy-tail flags on synthetic mixtures - exact where the answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from latbench.bench import stats
from latbench.bench.stats import (
    BIMODAL_MIN_SAMPLES,
    ci_rel_width,
    is_bimodal,
    median_ci,
    median_ci_ranks,
    quality,
    stop_reason,
    tail_ratio,
)
from latbench.device_agents.agent import latbench_agent as agent

RULE = {"target_rel_width": 0.02, "confidence": 0.95, "min_runs": 20, "max_runs": 400,
        "max_seconds": 10.0}


def test_one_implementation_on_host_and_device() -> None:
    """bench.stats re-exports the agent's functions: the rule a device applies is the rule
    the host reports with."""
    assert stats.median_ci is agent.median_ci
    assert stats.stop_reason is agent.stop_reason
    assert stats.ci_rel_width is agent.ci_rel_width


def binom_coverage(n: int, lo: int, hi: int) -> float:
    """P(lo < B <= hi) for B ~ Bin(n, 1/2), lo/hi 0-based ranks: the interval's coverage."""
    return sum(math.comb(n, k) for k in range(lo + 1, hi + 1)) / 2 ** n


@pytest.mark.parametrize("n", [6, 7, 10, 20, 50, 101, 400])
def test_ranks_are_the_tightest_with_the_coverage(n: int) -> None:
    lo, hi = median_ci_ranks(n, 0.95)
    assert hi == n - 1 - lo
    assert binom_coverage(n, lo, hi) >= 0.95
    if lo + 1 < hi - 1:  # one rank tighter on both sides no longer covers 95%
        assert binom_coverage(n, lo + 1, hi - 1) < 0.95


def test_known_ranks_and_too_few_samples() -> None:
    # n = 10: [x(2), x(9)] covers 1 - 2 * 11/1024 = 97.9%; [x(3), x(8)] only 89%.
    assert median_ci_ranks(10, 0.95) == (1, 8)
    assert median_ci_ranks(6, 0.95) == (0, 5)  # 1 - 2/64 = 96.9%
    assert median_ci_ranks(5, 0.95) is None  # even [min, max] covers only 93.75%
    assert median_ci_ranks(5, 0.90) == (0, 4)
    assert median_ci([3.0, 1.0, 2.0, 5.0, 4.0]) is None
    assert ci_rel_width([1.0] * 5) == math.inf
    assert median_ci(list(range(10, 0, -1))) == (2.0, 9.0)
    assert ci_rel_width([10.0] * 30) == 0.0
    # large n: no underflow, ranks near n/2 -+ 1.96 sqrt(n)/2
    lo, hi = median_ci_ranks(10_000, 0.95)
    assert abs(lo - (5000 - 98)) <= 2 and hi == 9999 - lo


def test_interval_covers_the_true_median_at_its_confidence() -> None:
    rng = np.random.default_rng(0)
    true_median = 1.0  # lognormal(0, s) has median exp(0)
    hits = 0
    for _ in range(2000):
        lo, hi = median_ci(rng.lognormal(0.0, 0.5, 40), 0.95)
        hits += lo <= true_median <= hi
    lo, hi = median_ci_ranks(40, 0.95)
    exact = binom_coverage(40, lo, hi)  # 96.2%: order statistics give discrete coverages
    assert abs(hits / 2000 - exact) < 0.015


def run_stream(values: np.ndarray, rule: dict, chunk: int = 10,
               seconds_per_sample: float = 0.0) -> tuple[str | None, int, list[int]]:
    """Feed a stream chunk by chunk as the agent does; (reason, n at stop, n of each check)."""
    checks = []
    for end in range(chunk, len(values) + 1, chunk):
        checks.append(end)
        reason = stop_reason(values[:end], end * seconds_per_sample, rule)
        if reason is not None:
            return reason, end, checks
    return None, len(values), checks


def test_stable_stream_stops_at_its_minimum_not_before() -> None:
    values = np.random.default_rng(1).lognormal(0.0, 0.002, 1000)
    assert ci_rel_width(values[:10]) < 0.02  # precise enough long before min_runs...
    reason, n, _ = run_stream(values, RULE, chunk=5)
    assert (reason, n) == ("converged", 20)  # ...yet it stops exactly at min_runs
    for end in (5, 10, 15, 19):
        assert stop_reason(values[:end], 1e9, RULE) is None  # not even past the time cap


def test_noisy_stream_stops_when_its_interval_is_narrow_enough() -> None:
    values = np.random.default_rng(2).lognormal(0.0, 0.05, 5000)
    reason, n, checks = run_stream(values, {**RULE, "max_runs": 5000})
    assert reason == "converged" and 20 < n < 5000
    assert ci_rel_width(values[:n]) <= 0.02 < ci_rel_width(values[:checks[-2]])


def test_run_cap() -> None:
    values = np.random.default_rng(3).lognormal(0.0, 0.8, 1000)  # far too noisy for 2%
    reason, n, _ = run_stream(values, RULE)
    assert (reason, n) == ("max_runs", RULE["max_runs"])
    assert ci_rel_width(values[:n]) > 0.02


def test_time_cap() -> None:
    values = np.random.default_rng(4).lognormal(0.0, 0.8, 1000)
    # 0.1 s per sample: the 10 s cap is reached at 100 samples, before the 400-run cap
    reason, n, _ = run_stream(values, RULE, seconds_per_sample=0.1)
    assert (reason, n) == ("max_seconds", 100)


def test_futility_gives_up_slow_hopeless_streams_only() -> None:
    values = np.random.default_rng(7).lognormal(0.0, 0.8, 1000)  # ~40% wide at 20 runs
    rule = {**RULE, "futility": 4.0}
    width = ci_rel_width(values[:20])
    needed = 20 * (width / 0.02) ** 2  # ~8000 runs to reach 2%
    # 10 ms per call: 8000 runs take ~80 s > 4 x 10 s: given up at the minimum
    reason, n, _ = run_stream(values, rule, seconds_per_sample=0.01)
    assert needed * 0.01 > 4 * RULE["max_seconds"] and (reason, n) == ("futile", 20)
    # the same stream at 0.1 ms per call: 8000 runs take under a second - keep going
    assert run_stream(values, rule, seconds_per_sample=1e-4)[:2] == ("max_runs", 400)
    # without futility the slow stream runs to its cap (400 runs, 4 s)
    assert run_stream(values, {**rule, "futility": None}, seconds_per_sample=0.01)[0] == \
        "max_runs"
    # a projection only slightly over the time cap (1.2x < 4x) is not given up
    seconds_per_sample = 1.2 * RULE["max_seconds"] / needed
    assert stop_reason(values[:20], 20 * seconds_per_sample, rule) is None
    # a stream that can converge in time is not given up
    close = np.random.default_rng(2).lognormal(0.0, 0.05, 5000)
    assert run_stream(close, {**rule, "max_runs": 5000}, seconds_per_sample=1e-3)[0] == \
        "converged"


def test_bad_rules_are_refused() -> None:
    assert agent.validate_stop(None) is None
    assert agent.validate_stop(RULE) == {**RULE, "futility": None}
    assert agent.validate_stop({**RULE, "futility": 3})["futility"] == 3.0
    for bad, match in [({**RULE, "target_rel_width": 0}, "target_rel_width"),
                       ({**RULE, "confidence": 1.0}, "confidence"),
                       ({**RULE, "min_runs": 0}, "min_runs"),
                       ({**RULE, "max_runs": 10}, "below min_runs"),
                       ({**RULE, "max_seconds": -1}, "max_seconds"),
                       ({**RULE, "futility": 0.5}, "futility"),
                       ("fast", "object")]:
        with pytest.raises(agent.AgentFailure, match=match):
            agent.validate_stop(bad)


# --- bimodality and heavy tails -----------------------------------------------------------
def test_mixture_is_flagged_bimodal_and_lognormal_is_not() -> None:
    rng = np.random.default_rng(5)
    flagged_mixture = flagged_lognormal = 0
    for _ in range(50):
        slow = rng.random(200) < 0.25  # a quarter of the calls in a 1.3x slower device state
        mixture = np.where(slow, 1.3, 1.0) * rng.lognormal(0.0, 0.02, 200)
        flagged_mixture += is_bimodal(mixture)
        flagged_lognormal += is_bimodal(rng.lognormal(0.0, 0.5, 200))
    assert flagged_mixture == 50 and flagged_lognormal == 0
    q = quality(mixture)
    assert q.bimodal and q.bimodality > 5 / 9 and q.separation > 5


def test_few_samples_are_never_flagged() -> None:
    two_states = [1.0] * (BIMODAL_MIN_SAMPLES // 2) + [2.0] * (BIMODAL_MIN_SAMPLES // 2 - 1)
    assert not is_bimodal(two_states)
    assert is_bimodal(two_states * 2)


def test_heavy_tail_flag() -> None:
    rng = np.random.default_rng(6)
    base = rng.lognormal(0.0, 0.01, 500)
    spiky = base.copy()
    spiky[::25] *= 3.0  # 4% of the calls interrupted, 3x as long
    assert tail_ratio(spiky) > 2.5 and quality(spiky).heavy_tail
    assert not quality(base).heavy_tail and tail_ratio(base) < 1.1
    assert not quality(spiky).bimodal  # rare slow calls are a tail, not a second mode


def test_quality_of_rounds_pools_them() -> None:
    rounds = [[1.0, 1.01, 0.99] * 5, [1.0, 1.02, 0.98] * 5]
    q = quality(rounds)
    assert q.ci_low_ms <= 1.0 <= q.ci_high_ms
    assert q.ci_rel_width == pytest.approx(ci_rel_width(sum(rounds, [])))
