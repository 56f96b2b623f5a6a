"""One search as a user runs it: prepare, search under every budget, measure the winners on the
device when asked, and write each budget's folder (search.outputs) - for the command line and
for scripts.

Under torchrun a strategy that declares `distributed` joins the process group; every rank
searches, only rank 0 measures and writes folders. The set-up and tear-down live here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from latbench.bench.campaign import CampaignConfig
from latbench.bench.platform import PlatformChoice
from latbench.errors import ConfigError
from latbench.predictor.intervals import DEFAULT_LEVEL, check_level
from latbench.search.budget import (
    DEFAULT_MEASURE_BUDGET,
    BudgetOutcome,
    Candidate,
    CandidateMeter,
    Choice,
    check_budgets,
    check_measure_budget,
    choose_by_measurement,
    interval_function,
    measure_winners,
    ranked_candidates,
)
from latbench.search.outputs import write_outputs
from latbench.search.run import Prepared, SearchJob, prepare, run_job
from latbench.search.strategies import SearchResult


@dataclass
class SearchSession:
    """What a search produced: per budget the result, the outcome (measured when asked) and the
    folder it was written to. `lead` is False on the other ranks of a distributed run."""

    prepared: Prepared | None
    results: list[tuple[float, SearchResult]] = field(default_factory=list)
    outcomes: list[BudgetOutcome] = field(default_factory=list)
    folders: dict[float, Path] = field(default_factory=dict)
    lead: bool = True
    winners: Path | None = None  # the measured winners' dataset, with --measure

    def to_json(self) -> list[dict[str, Any]]:
        """Per budget its outcome, result and folder, and the platform predicted for."""
        platform = self.prepared.platform_json() if self.prepared is not None else None
        return [{**o.to_json(), **r.to_json(), "budget_ms": b, "platform": platform,
                 "folder": str(self.folders.get(b, ""))}
                for o, (b, r) in zip(self.outcomes, self.results, strict=True)]


def default_out(predictor: str) -> Path:
    """Where a search writes without --out: inside the predictor's folder (its platform's, of
    a folder of several), or runs/search for flops."""
    return Path(predictor) / "search" if predictor != "flops" else Path("runs") / "search"


def unmeasured(results: Sequence[tuple[float, SearchResult]], statistic: str = ""
               ) -> list[BudgetOutcome]:
    """Outcomes of results whose winners were not measured."""
    return [BudgetOutcome(b, r.budget_ms, r.arch, r.accuracy, r.predicted_ms, None, r.feasible,
                          r.evaluated, statistic) for b, r in results]


def run_search(job: SearchJob, predictor: str, budgets_ms: Sequence[float], *,
               data_dir: Path | None = None, margin: float | None = None,
               budget_statistic: str | None = None, out: Path | None = None,
               measure: bool = False, device: str | None = None,
               fleet: str | None = None, config: CampaignConfig | None = None,
               progress: Callable[[str], Any] | None = None,
               on_prepared: Callable[[Prepared], None] | None = None,
               platform: PlatformChoice | None = None,
               measure_budget: int = DEFAULT_MEASURE_BUDGET,
               interval_level: float = DEFAULT_LEVEL) -> SearchSession:
    """Search `job` under each budget with the latency table of `predictor` (a predictor
    folder, at the platform `platform` chooses among those it holds, or "flops").

    A budget's folder `<out>/<strategy>-<budget>ms` (history, Pareto plot, winner files,
    outcome.json) is written when `out` is given, or by default (`default_out`) when the
    search has more to keep than its table row: a history of evaluations or a trained
    network. With `measure`, the winners are measured on `device` (of `fleet`) with the
    predictor's runtime and settings before the folders are written, so the plots show them;
    a budget holds for `budget_statistic` of the measured runs (default: the median, see
    search.budget.BudgetTarget). When the predictor gives intervals (at `interval_level`),
    `measure` instead searches each budget under budget / gap (the point prediction within
    it) and chooses the winner by measuring candidates best first until one is within the
    budget, at most `measure_budget` measurements per budget (`choose_by_measurement`).
    `progress` makes a progress sink for a phase ("search", "winners")."""
    budgets = check_budgets(budgets_ms)
    measure_budget = check_measure_budget(measure_budget)
    interval_level = check_level(interval_level)
    dist_info = None
    if job.strategy_class.distributed:
        from latbench.search.supernet import init_distributed

        dist_info = init_distributed()  # under torchrun: one process per rank
    lead = dist_info is None or dist_info.rank == 0
    try:
        prepared = prepare(job, predictor, data_dir, margin, budget_statistic, platform)
        if measure and not prepared.measurable:
            raise ConfigError("--measure needs a predictor directory (the flops table has no "
                              "device or runtime to measure with)")
        by_intervals = measure and prepared.predictor.has_intervals
        if lead and on_prepared is not None:
            on_prepared(prepared)
        with (_sink(progress, "search") if lead else nullcontext()) as bars:
            results = run_job(prepared, budgets, bars, dist_info,
                              margin=0.0 if by_intervals else None)
    finally:
        if dist_info is not None:
            from latbench.search.supernet import close_distributed

            close_distributed(dist_info)
    if not lead:
        return SearchSession(prepared, results, lead=False)
    own = prepared.predictor.path if prepared.predictor is not None else None
    base = Path(out) if out is not None else default_out(str(own or predictor))
    session = SearchSession(prepared, results, unmeasured(results, prepared.target.statistic))
    if measure:
        from latbench.bench.targets import resolve_device

        settings = prepared.predictor.run_settings()
        target = resolve_device(device, fleet, threads=settings.threads)
        with _sink(progress, "winners") as bars:
            if by_intervals:
                meter = CandidateMeter(prepared.space, prepared.predictor, target,
                                       base / "winners", config, bars,
                                       prepared.target.statistic)
                results, session.outcomes = _choose_measured(prepared, results, meter,
                                                             measure_budget, interval_level)
                session.results = results
            else:
                session.outcomes = measure_winners(prepared.space, results,
                                                   prepared.predictor, target,
                                                   base / "winners", config, bars,
                                                   prepared.target.statistic)
        session.winners = base / "winners"
    for (budget, result), outcome in zip(results, session.outcomes, strict=True):
        if out is None and not result.history and result.module is None:
            continue
        folder = base / f"{job.strategy}-{budget:g}ms"
        write_outputs(folder, prepared.space, prepared.space_options, prepared.table, result,
                      outcome, prepared.accuracy_table, prepared.platform_json())
        session.folders[budget] = folder
    return session


def _choose_measured(prepared: Prepared, results: Sequence[tuple[float, SearchResult]],
                     meter: CandidateMeter, measure_budget: int, level: float
                     ) -> tuple[list[tuple[float, SearchResult]], list[BudgetOutcome]]:
    """Per budget, the winner `choose_by_measurement` picks among the result's candidates
    (`ranked_candidates`), as a result (a different architecture than the strategy's keeps
    no trained module) and its outcome; the stricter search it falls back to runs under
    budget / the target's factor."""
    space, table, target = prepared.space, prepared.table, prepared.target
    interval_of = interval_function(space, prepared.predictor, target.gap, level)
    chosen, outcomes = [], []
    for budget, result in results:
        strict = budget / target.factor

        def fallback(strict: float = strict) -> Candidate:
            found = prepared.strategy.search(space, table, prepared.accuracy, strict,
                                             prepared.context())
            return Candidate(found.arch, found.accuracy, found.predicted_ms)

        choice = choose_by_measurement(
            ranked_candidates(result, space, table, prepared.accuracy_table), interval_of,
            meter, budget, measure_budget, fallback)
        winner = choice.winner
        interval = choice.interval_ms or interval_of(winner)
        probes = tuple(p.to_json() for p in choice.probes)
        searched = result.budget_ms if choice.interval_ms is not None else strict
        result = replace(result, arch=winner.arch, accuracy=winner.accuracy,
                         predicted_ms=winner.predicted_ms,
                         module=result.module if winner.arch == result.arch else None,
                         info={**result.info,
                               **_choice_info(choice, result, interval, level, probes)})
        chosen.append((budget, result))
        outcomes.append(BudgetOutcome(budget, searched, winner.arch, winner.accuracy,
                                      winner.predicted_ms, choice.measured_ms,
                                      result.feasible, result.evaluated, target.statistic,
                                      interval, level, probes, choice.measurements,
                                      choice.reason))
    return chosen, outcomes


def _choice_info(choice: Choice, result: SearchResult, interval: tuple[float, float],
                 level: float, probes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What winner.json records of how the winner was chosen (`probes`: the choice's probes
    as JSON)."""
    return {"chosen_by_measurement": {
        "strategy_winner": result.arch, "reason": choice.reason,
        "interval_ms": list(interval), "interval_level": level,
        "measured": list(probes), "measurements": choice.measurements}}


def _sink(progress: Callable[[str], Any] | None, phase: str) -> Any:
    """A context manager yielding a ProgressSink for `phase` (or None)."""
    return progress(phase) if progress is not None else nullcontext()
