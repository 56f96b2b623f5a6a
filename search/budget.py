"""Search under latency budgets, then check the winners on the device.

A search trusts the predictor; a user trusts the device. So every winner is exported, measured
with the same runner and settings as the predictor's training data, and reported with its
predicted and measured latency and whether the budget really holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latbench.bench.campaign import CampaignConfig, ProgressSink, Subject, run_campaign
from latbench.bench.network_sets import arch_subject, precision_key
from latbench.bench.spaces.base import SearchSpace
from latbench.bench.stats import BUDGET_STATISTICS, DEFAULT_BUDGET_STATISTIC
from latbench.bench.store import LatencyDataset
from latbench.device_agents import Device
from latbench.errors import ConfigError, PredictorError, SearchError
from latbench.search.latency import LatencyTable
from latbench.search.strategies import SearchContext, SearchResult, Strategy, get_strategy

if TYPE_CHECKING:
    from latbench.predictor.latency_predictor import LatencyPredictor


@dataclass(frozen=True)
class BudgetTarget:
    """What a budget is about and how far below it a search aims: the budget holds for
    `statistic` (what the user's own tool prints: the median by default); the predictor learned
    `learned`, which runs `gap` times lower (95th percentile on its networks), and
    under-predicts by up to `margin`. The search aims at budget / ((1 + margin) x gap)."""

    statistic: str
    learned: str
    margin: float
    gap: float = 1.0
    note: str = ""  # why the budget is not on the statistic the user would expect

    @property
    def factor(self) -> float:
        return (1 + self.margin) * self.gap

    def describe(self) -> str:
        """`budgets are on median_ms; searching under each budget / 1.157 (safety margin 3.0%
        x median_ms/min_ms gap 1.123)`."""
        gap = "" if self.gap == 1.0 else \
            f" x {self.statistic}/{self.learned} gap {self.gap:.3f}"
        note = f"; {self.note}" if self.note else ""
        return (f"budgets are on {self.statistic} (predictor: {self.learned}); searching under "
                f"each budget / {self.factor:.3f} (safety margin {100 * self.margin:.1f}%"
                f"{gap}){note}")

    def describe_measured(self, level: float, measurements: int) -> str:
        """What a search that measures its straddling candidates aims at (`run_search` with
        `measure` and a predictor that gives intervals)."""
        gap = "" if self.gap == 1.0 else f" (the {self.statistic}/{self.learned} gap)"
        note = f"; {self.note}" if self.note else ""
        return (f"budgets are on {self.statistic} (predictor: {self.learned}); searching under "
                f"each budget / {self.gap:.3f}{gap}, then measuring, best first, the "
                f"candidates whose {level:.0%} interval is not wholly over the budget until "
                f"one is within it, at most {measurements} measurements per budget{note}")


def budget_target(predictor: LatencyPredictor | None, statistic: str | None = None,
                  margin: float | None = None) -> BudgetTarget:
    """The target of a search with `predictor` (None: the analytical FLOPs table, no
    statistic) for budgets on `statistic` (default: the median), `margin` (default: the
    predictor's own). A predictor that cannot relate the median to what it learned (saved
    before latbench kept the gap) keeps budgets on its own statistic when none was asked for,
    and says so; an explicit statistic it cannot relate is refused."""
    if predictor is None:
        return BudgetTarget("flops", "flops", 0.0 if margin is None else margin)
    if statistic is not None and statistic not in BUDGET_STATISTICS:
        raise ConfigError(f"unknown budget statistic {statistic!r}; choose one of "
                          f"{', '.join(BUDGET_STATISTICS)}")
    margin = predictor.safety_margin() if margin is None else margin
    if statistic is None:
        try:
            return BudgetTarget(DEFAULT_BUDGET_STATISTIC, predictor.statistic, margin,
                                predictor.statistic_gap(DEFAULT_BUDGET_STATISTIC))
        except PredictorError:
            return BudgetTarget(predictor.statistic, predictor.statistic, margin, 1.0,
                                f"the predictor does not know how {DEFAULT_BUDGET_STATISTIC} "
                                f"relates to {predictor.statistic}: refit it to search on "
                                f"{DEFAULT_BUDGET_STATISTIC}")
    return BudgetTarget(statistic, predictor.statistic, margin,
                        predictor.statistic_gap(statistic))


@dataclass(frozen=True)
class BudgetOutcome:
    budget_ms: float
    search_budget_ms: float
    arch: str
    accuracy: float
    predicted_ms: float  # the predictor's own statistic
    measured_ms: float | None  # the budget's statistic
    feasible: int
    evaluated: int
    statistic: str = ""  # what the budget and measured_ms are about
    # With --measure and a predictor that gives intervals (`choose_by_measurement`): the
    # winner's interval (on the budget's statistic) and level, the candidates measured before
    # choosing (Probe.to_json), how many measurements the budget took and why the winner won.
    interval_ms: tuple[float, float] | None = None
    interval_level: float | None = None
    probes: tuple[dict[str, Any], ...] = ()
    measurements: int | None = None
    chosen_because: str = ""

    @property
    def within_budget(self) -> bool | None:
        return None if self.measured_ms is None else self.measured_ms <= self.budget_ms

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "within_budget": self.within_budget,
                "interval_ms": None if self.interval_ms is None else list(self.interval_ms),
                "probes": list(self.probes)}

    def row(self) -> tuple[str, ...]:
        """Cells under OUTCOME_HEADER: the architecture string whole, the accuracy to four
        significant digits (a percentage or a proxy score of any magnitude)."""
        measured = "-" if self.measured_ms is None else f"{self.measured_ms:.4f}"
        verdict = {True: "yes", False: "NO", None: "-"}[self.within_budget]
        return (f"{self.budget_ms:g}", f"{self.search_budget_ms:.4g}", self.arch,
                f"{self.accuracy:.4g}", f"{self.predicted_ms:.4f}", measured, verdict)


OUTCOME_HEADER = ("budget ms", "searched under ms", "arch", "accuracy", "predicted ms",
                  "measured ms", "within budget")


def check_budgets(budgets_ms: Sequence[float], what: str = "latency budget") -> list[float]:
    """The budgets as floats; refuses none at all, and any that is not a positive, finite
    number of milliseconds (`what` names them in the message, e.g. a command-line flag)."""
    if len(budgets_ms) == 0:
        raise SearchError(f"give at least one {what}")
    out = []
    for value in budgets_ms:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be a number of milliseconds, got {value!r}") from None
        if not math.isfinite(number) or number <= 0:
            raise ConfigError(f"{what} must be positive, finite milliseconds, got {value}")
        out.append(number)
    return out


def search_budgets(space: SearchSpace, table: LatencyTable, accuracy: Any,
                   budgets_ms: Sequence[float], strategy: str | Strategy = "exhaustive",
                   margin: float = 0.0, context: SearchContext | None = None,
                   gap: float = 1.0) -> list[tuple[float, SearchResult]]:
    """(budget, result) per budget. The search aims at budget / ((1 + margin) x gap): the
    winner of a search sits just under its predicted budget, so any under-prediction would
    overshoot; the margin (the predictor's own under-prediction quantile) keeps the measured
    winner inside, and the gap (BudgetTarget) carries the predictor's statistic to the
    budget's.

    `strategy` is a registered name (built with default options) or a Strategy; `accuracy` is
    a table (code -> accuracy), an accuracy source (search.accuracy) or None for strategies
    that train (`context` carries their data)."""
    budgets = check_budgets(budgets_ms)
    if not 0 <= margin < 1:
        raise SearchError(f"safety margin must be in [0, 1), got {margin}")
    if not math.isfinite(gap) or gap <= 0:
        raise SearchError(f"statistic gap must be positive and finite, got {gap}")
    searcher = get_strategy(strategy) if isinstance(strategy, str) else strategy
    return [(b, searcher.search(space, table, accuracy, b / ((1 + margin) * gap), context))
            for b in budgets]


def measure_winners(space: SearchSpace, results: Sequence[tuple[float, SearchResult]],
                    predictor: LatencyPredictor,
                    device: Device, out: Path, config: CampaignConfig | None = None,
                    progress: ProgressSink | None = None,
                    statistic: str | None = None) -> list[BudgetOutcome]:
    """Measure each distinct winner once (resumable dataset in `out`) with the runtime and
    settings the predictor was trained on, and pair it with its prediction; the budget holds
    (or not) for `statistic` of the measured runs (default: the median), whatever statistic
    the predictor learned."""
    statistic = statistic or DEFAULT_BUDGET_STATISTIC
    runtime = predictor.runtime
    settings = predictor.run_settings()
    base = config or CampaignConfig()
    config = CampaignConfig(**{**base.__dict__, "settings": settings})
    precision = predictor.platform.precision  # winners measured as the predictor priced them

    def key_of(arch: str) -> str:
        return precision_key(f"{space.name}:{arch}", precision)

    subjects: dict[str, Subject] = {}
    for _, result in results:
        key = key_of(result.arch)
        if key not in subjects:
            subjects[key] = arch_subject(space, space.decode(result.arch), key, precision)
    dataset = LatencyDataset.create(out, {"purpose": "search winners", "device": device.name,
                                          "runtime": runtime, "run_settings": asdict(settings)})
    summary = run_campaign(list(subjects.values()), [device], [runtime], dataset, config,
                           progress)
    dataset.update_card(drift_last_run=summary.drift_json())  # what disturbed the winners
    records = dataset.records()
    records = records[(records["device"] == device.name) & (records["runtime"] == runtime)
                      & (records["settings"] == settings.key(runtime))]
    measured = dict(zip(records["key"], records[statistic].astype(float), strict=True))
    return [BudgetOutcome(budget, r.budget_ms, r.arch, r.accuracy, r.predicted_ms,
                          measured.get(key_of(r.arch)), r.feasible, r.evaluated,
                          statistic)
            for budget, r in results]


DEFAULT_MEASURE_BUDGET = 5  # measurements per budget when --measure walks the candidates


def check_measure_budget(value: Any, what: str = "--measure-budget") -> int:
    """`value` as a whole number of measurements, at least 1; else a ConfigError naming
    `what`."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not float(value).is_integer() or value < 1:
        raise ConfigError(f"{what} must be a whole number of measurements, at least 1 (the "
                          f"winner's own), got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Candidate:
    """An architecture a search found within its searched-under budget, with the strategy's
    accuracy for it and its predicted latency (the predictor's statistic)."""

    arch: str
    accuracy: float
    predicted_ms: float


@dataclass(frozen=True)
class Probe:
    """A candidate measured and passed over before the winner was chosen: its interval and
    measured latency (both on the budget's statistic; None when the measurement failed) and
    why it was passed over."""

    arch: str
    accuracy: float
    predicted_ms: float
    interval_ms: tuple[float, float]
    measured_ms: float | None
    verdict: str  # "over the budget" or "measurement failed"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "interval_ms": list(self.interval_ms)}


@dataclass(frozen=True)
class Choice:
    """What `choose_by_measurement` chose: the winner, its interval, its measured latency (None
    when its measurement failed), the candidates measured and passed over on the way, the
    measurements spent and why this one."""

    winner: Candidate
    interval_ms: tuple[float, float] | None
    measured_ms: float | None
    probes: tuple[Probe, ...]
    measurements: int
    reason: str


def ranked_candidates(result: SearchResult, space: SearchSpace, table: LatencyTable,
                      accuracy_table: Mapping[str, float] | None = None) -> list[Candidate]:
    """The architectures a search result offers, best first by the search's objective: its
    winner, then the architectures it evaluated (its history) by accuracy; for a search that
    keeps no history and has an accuracy table (an exhaustive scan), the table's
    architectures. Only those predicted within the budget the result was searched under; no
    strategy needs to return more than its SearchResult."""
    from latbench.search.latency import choices_matrix

    scores: dict[str, float] = {}
    for row in result.history:
        if isinstance(row.get("arch"), str) and row.get("accuracy") is not None:
            scores[row["arch"]] = float(row["accuracy"])
    if not result.history and accuracy_table is not None:
        scores.update({code: float(acc) for code, acc in accuracy_table.items()})
    scores.pop(result.arch, None)
    codes = list(scores)
    archs = [space.decode(code) for code in codes]
    latency = table.latencies(choices_matrix(archs)) if archs else np.zeros(0)
    rest = sorted((Candidate(code, scores[code], float(ms))
                   for code, ms in zip(codes, latency, strict=True)
                   if ms <= result.budget_ms * (1 + 1e-9)),
                  key=lambda c: -c.accuracy)
    return [Candidate(result.arch, result.accuracy, result.predicted_ms), *rest]


def choose_by_measurement(candidates: Sequence[Candidate],
                          interval_of: Callable[[Candidate], tuple[float, float]],
                          measure: Callable[[str], float | None], budget_ms: float,
                          max_measurements: int = DEFAULT_MEASURE_BUDGET,
                          fallback: Callable[[], Candidate] | None = None) -> Choice:
    """Walk `candidates` best first and choose the winner of a budget by measuring it
    (`interval_of`: a candidate's interval on the budget's statistic; `measure`: an
    architecture's measured latency on it, None when the measurement failed):

    - a candidate whose interval lies wholly over the budget is passed over unmeasured;
    - any other is measured and chosen when its measurement is within the budget, passed over
      when it is not - a prediction confidently under the budget is still checked, because a
      busy device can make it wrong; a failed measurement passes a straddling candidate over
      and leaves one whose interval lies under the budget chosen on its prediction;
    - straddling candidates are measured only while two or more measurements are left, so
      the last is kept for a candidate whose interval lies under the budget;
    - when none measured within the budget, the `fallback` candidate (the winner of a search
      under a stricter budget) is chosen and measured, one measurement more if all were spent.

    At most `max_measurements` measurements, plus the fallback's."""
    max_measurements = check_measure_budget(max_measurements, "max_measurements")
    probes: list[Probe] = []
    used, skipped = 0, 0
    for candidate in candidates:
        low, high = interval = interval_of(candidate)
        confident = high <= budget_ms
        if low > budget_ms:
            continue
        if used >= max_measurements or (not confident and used >= max_measurements - 1):
            skipped += not confident
            continue
        used += 1
        measured = measure(candidate.arch)
        if measured is None and confident:
            return Choice(candidate, interval, None, tuple(probes), used,
                          _under_reason(probes, skipped, "its measurement failed"))
        if measured is not None and measured <= budget_ms:
            reason = ("its interval straddled the budget and its measured latency is within "
                      "it" if not confident else _under_reason(probes, skipped))
            return Choice(candidate, interval, measured, tuple(probes), used, reason)
        probes.append(Probe(candidate.arch, candidate.accuracy, candidate.predicted_ms,
                            interval, measured,
                            "measurement failed" if measured is None else "over the budget"))
    if fallback is None:
        raise SearchError(f"no candidate measured within the {budget_ms:g} ms budget and no "
                          "stricter search to fall back to")
    candidate = fallback()
    return Choice(candidate, None, measure(candidate.arch), tuple(probes), used + 1,
                  f"none of the candidates measured within the budget ({len(probes)} measured "
                  "over it or failed): the winner of a search under the stricter budget")


def _under_reason(probes: Sequence[Probe], skipped: int, note: str = "") -> str:
    """Why a candidate whose interval lies under the budget was chosen."""
    parts = [f"{len(probes)} better candidates measured over the budget or failed"] \
        if probes else []
    if skipped:
        parts.append(f"the measurements were spent: {skipped} better straddling candidates "
                     "not measured")
    if note:
        parts.append(note)
    return "its interval lies under the budget" + (f" ({'; '.join(parts)})" if parts else "")


class CandidateMeter:
    """Measures one architecture at a time on `device` with the predictor's runtime and
    settings (`measure_winners` measures all winners at once), into one resumable dataset
    (`out`: an architecture measured before is read back, not measured again). The campaigns'
    wait for a quiet device (`CampaignConfig.max_load_wait_s`) is shared by all its
    measurements: on a busy device a search waits that long in all, not per candidate, and a
    measurement still disturbed then fails (None) instead of being stored."""

    def __init__(self, space: SearchSpace, predictor: LatencyPredictor, device: Device,
                 out: Path, config: CampaignConfig | None = None,
                 progress: ProgressSink | None = None, statistic: str | None = None) -> None:
        self.space, self.device, self.progress = space, device, progress
        self.statistic = statistic or DEFAULT_BUDGET_STATISTIC
        self.runtime = predictor.runtime
        self.settings = predictor.run_settings()
        self.precision = predictor.platform.precision
        base = config or CampaignConfig()
        self.config = CampaignConfig(**{**base.__dict__, "settings": self.settings})
        self.wait_left_s = self.config.max_load_wait_s
        self.dataset = LatencyDataset.create(out, {
            "purpose": "search candidates and winners", "device": device.name,
            "runtime": self.runtime, "run_settings": asdict(self.settings)})
        self.measured: list[str] = []  # architectures measured, in order (repeats too)

    def __call__(self, arch: str) -> float | None:
        key = precision_key(f"{self.space.name}:{arch}", self.precision)
        subject = arch_subject(self.space, self.space.decode(arch), key, self.precision)
        config = replace(self.config, max_load_wait_s=max(0.0, self.wait_left_s))
        summary = run_campaign([subject], [self.device], [self.runtime], self.dataset, config,
                               self.progress)
        self.wait_left_s -= sum(float((lane.get("load") or {}).get("waited_s") or 0.0)
                                for lane in summary.control.values())
        self.dataset.update_card(drift_last_run=summary.drift_json())
        self.measured.append(arch)
        records = self.dataset.records()
        records = records[(records["key"] == key) & (records["device"] == self.device.name)
                          & (records["runtime"] == self.runtime)
                          & (records["settings"] == self.settings.key(self.runtime))
                          & (records["status"] == "ok")]
        if records.empty:
            return None
        value = float(records[self.statistic].iloc[-1])
        return value if math.isfinite(value) else None


def interval_function(space: SearchSpace, predictor: LatencyPredictor, gap: float,
                      level: float) -> Callable[[Candidate], tuple[float, float]]:
    """A candidate's interval on the budget's statistic: the predictor's interval for the
    architecture's kernels at `level`, relative to its prediction, around the candidate's
    table latency, times the statistic `gap` the search divides budgets by (both ends alike);
    computed once per architecture."""
    cache: dict[str, tuple[float, float]] = {}

    def interval_of(candidate: Candidate) -> tuple[float, float]:
        if candidate.arch not in cache:
            prediction = predictor.predict(space.ops(space.decode(candidate.arch)),
                                           interval_level=level)
            if prediction.interval_ms is None:
                raise PredictorError(prediction.interval_note or "the predictor gives no "
                                     "interval")
            scale = gap * candidate.predicted_ms / prediction.predicted_ms
            low, high = prediction.interval_ms
            cache[candidate.arch] = (low * scale, high * scale)
        return cache[candidate.arch]

    return interval_of
