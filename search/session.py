"""One search as a user runs it: prepare, search under every budget, measure the winners on the
device when asked, and write each budget's folder (search.outputs) - for the command line and
for scripts.

Under torchrun a strategy that declares `distributed` joins the process group; every rank
searches, only rank 0 measures and writes folders. The set-up and tear-down live here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latbench.bench.campaign import CampaignConfig
from latbench.bench.platform import PlatformChoice
from latbench.errors import ConfigError
from latbench.search.budget import BudgetOutcome, check_budgets, measure_winners
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
               platform: PlatformChoice | None = None) -> SearchSession:
    """Search `job` under each budget with the latency table of `predictor` (a predictor
    folder, at the platform `platform` chooses among those it holds, or "flops").

    A budget's folder `<out>/<strategy>-<budget>ms` (history, Pareto plot, winner files,
    outcome.json) is written when `out` is given, or by default (`default_out`) when the
    search has more to keep than its table row: a history of evaluations or a trained
    network. With `measure`, the winners are measured on `device` (of `fleet`) with the
    predictor's runtime and settings before the folders are written, so the plots show them;
    a budget holds for `budget_statistic` of the measured runs (default: the median, see
    search.budget.BudgetTarget). `progress` makes a progress sink for a phase ("search",
    "winners")."""
    budgets = check_budgets(budgets_ms)
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
        if lead and on_prepared is not None:
            on_prepared(prepared)
        with (_sink(progress, "search") if lead else nullcontext()) as bars:
            results = run_job(prepared, budgets, bars, dist_info)
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
            session.outcomes = measure_winners(prepared.space, results, prepared.predictor,
                                               target, base / "winners", config, bars,
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


def _sink(progress: Callable[[str], Any] | None, phase: str) -> Any:
    """A context manager yielding a ProgressSink for `phase` (or None)."""
    return progress(phase) if progress is not None else nullcontext()
