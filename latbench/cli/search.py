"""`latbench search`: the most accurate architecture under each latency budget, optionally
measured on any device of a fleet."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from latbench.bench.stats import BUDGET_STATISTICS
from latbench.cli.common import (
    add_device_options,
    add_interval_level,
    add_json,
    add_platform_choice,
    add_run_settings,
    campaign_config,
    data_dir,
    platform_choice,
    predictor_choice,
)
from latbench.errors import ConfigError
from latbench.tables import print_json, print_table


def cmd_search(args: argparse.Namespace) -> int:
    from latbench.bench.runners import RunSettings
    from latbench.predictor.intervals import check_level
    from latbench.progress import Bars
    from latbench.search.budget import (
        DEFAULT_MEASURE_BUDGET,
        OUTCOME_HEADER,
        check_budgets,
        check_measure_budget,
    )
    from latbench.search.outputs import accuracy_label
    from latbench.search.run import SearchJob, parse_options
    from latbench.search.session import run_search

    budgets = check_budgets(args.budget_ms, "--budget-ms")
    if args.measure_budget is not None and not args.measure:
        raise ConfigError("--measure-budget bounds the measurements of --measure; add "
                          "--measure")
    measure_budget = check_measure_budget(
        DEFAULT_MEASURE_BUDGET if args.measure_budget is None else args.measure_budget)
    level = check_level(args.interval_level, "--interval-level")
    job = SearchJob(args.space, parse_options(args.space_option, "--space-option"),
                    args.strategy, parse_options(args.option, "--option"), args.accuracy,
                    args.data, args.seed, args.queries, args.epochs)

    def announce(prepared: Any) -> None:
        fastest, slowest = prepared.latency_range()
        space_options = f" {prepared.space_options}" if prepared.space_options else ""
        measured = args.measure and prepared.predictor is not None \
            and prepared.predictor.has_intervals
        aim = prepared.target.describe_measured(level, measure_budget) if measured \
            else prepared.target.describe()
        print(f"{args.strategy} on {args.space}{space_options} (predicted "
              f"{fastest:.4g} to {slowest:.4g} ms): {aim}",
              file=sys.stderr)

    platform = replace(platform_choice(args), device=None) if args.predictor == "flops" \
        else predictor_choice(args, args.predictor, measured_on=True)
    session = run_search(job, args.predictor, budgets, data_dir=data_dir(args.data_dir),
                         margin=args.margin, budget_statistic=args.budget_statistic,
                         out=args.out, measure=args.measure,
                         device=args.device, fleet=args.fleet,
                         config=campaign_config(args, RunSettings()), progress=Bars,
                         on_prepared=announce, platform=platform,
                         measure_budget=measure_budget, interval_level=level)
    if not session.lead:
        return 0
    if session.winners is not None:  # what disturbed their measurement, and what was done
        from latbench.bench.store import LatencyDataset

        card = LatencyDataset.open(session.winners).card
        for line in (card.get("drift_last_run") or {}).get("report", []):
            print(f"winners measured: {line}", file=sys.stderr)
        for outcome in session.outcomes:
            if outcome.measurements is not None:
                print(_choice_line(outcome), file=sys.stderr)
    if args.json:
        print_json(session.to_json())
        return 0
    what = accuracy_label(session.results[0][1])
    target = session.prepared.target
    predicted = session.prepared.platform_json()
    on = f" on {predicted['label']}" if predicted else " (flops table)"
    print_table(f"{args.space} / {args.strategy}{on}: the most accurate under each budget "
                f"(accuracy: {what}; budgets and measured: {target.statistic}, predicted: "
                f"{target.learned})",
                (*OUTCOME_HEADER, "queries"),
                [(*o.row(), r.queries)
                 for o, (_, r) in zip(session.outcomes, session.results, strict=True)])
    for budget, folder in session.folders.items():
        print(f"budget {budget:g} ms: {folder}/ (winner.txt, winner.onnx, winner.pt, "
              "pareto.png, history.csv)")
    return 0


def _choice_line(outcome: Any) -> str:
    """`budget 0.9 ms: 1 candidates measured and passed over, 2 measurements; winner ...,
    90% interval 0.81-0.93 ms: because ...`."""
    low, high = outcome.interval_ms
    return (f"budget {outcome.budget_ms:g} ms: {len(outcome.probes)} candidates measured and "
            f"passed over, {outcome.measurements} measurements; winner {outcome.arch} "
            f"({outcome.interval_level:.0%} interval {low:.4g}-{high:.4g} ms): "
            f"{outcome.chosen_because}")


class _RegistryHelp(argparse.HelpFormatter):
    """Lists the registered spaces and strategies in `search --help` when it is shown (importing
    them at every start of the command line would slow every command)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if action.dest == "space":
            from latbench.bench.spaces import SPACES

            return f"{text}: {', '.join(sorted(SPACES))} (default %(default)s)"
        if action.dest == "strategy":
            from latbench.search.strategies import STRATEGIES

            return f"{text}: {'; '.join(_describe(n, c) for n, c in sorted(STRATEGIES.items()))}" \
                   " (default %(default)s)"
        return text


def _describe(name: str, cls: Any) -> str:
    scores = "trains on --data" if cls.trains else f"scores with {'/'.join(cls.accuracy_sources)}"
    limits = [f"--{flag} sets {option}" for flag, option in (("queries", cls.queries_option),
                                                             ("epochs", cls.epochs_option))
              if option]
    return f"{name} ({', '.join([scores, *limits])})"


def add_commands(sub: Any) -> None:
    search = sub.add_parser(
        "search", help="most accurate architecture under a latency budget",
        formatter_class=_RegistryHelp,
        description="Search a space for the most accurate architecture whose predicted "
                    "latency is within each budget; with --measure, measure each winner on the "
                    "device (the local CPU or any device of a fleet) and report predicted vs "
                    "measured latency.")
    search.add_argument("--space", default="nasbench-macro", help="search space")
    search.add_argument("--space-option", action="append", metavar="KEY=VALUE",
                        help="space option, repeatable (e.g. resolution=64, width_mult=0.5, "
                             "cells=5, num_classes=1000; JSON values)")
    search.add_argument("--predictor", required=True,
                        help="predictor directory, or 'flops' for an analytical FLOPs table "
                             "(no device: trying strategies offline)")
    search.add_argument("--budget-ms", type=float, nargs="+", required=True,
                        help="one or more latency budgets in ms (positive)")
    search.add_argument("--strategy", default="exhaustive", help="search strategy")
    search.add_argument("--accuracy",
                        help="accuracy source of strategies that score with one: table "
                             "(NAS-Bench-Macro), surrogate[:gbm|mlp[:N]] (a predictor trained "
                             "on N table queries) or proxy:NAME (zero-cost: synflow, snip, "
                             "grasp, fisher, jacob_cov, grad_norm, naswot, vote) (default table "
                             "if the space has one, else proxy:naswot)")
    search.add_argument("--data", default="digits",
                        help="training data of strategies that train: digits or an image "
                             "folder path (default digits)")
    search.add_argument("--queries", type=int,
                        help="most table queries, for strategies with a query limit")
    search.add_argument("--epochs", type=int,
                        help="training epochs, for strategies that train (see --strategy)")
    search.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="strategy option, repeatable (e.g. population=30, warmup=200, "
                             "proposals=4, mode=full, loss=additive, lam=0.5, eta=3, "
                             "hyperband=true; an unknown one is refused, naming the known ones)")
    search.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    search.add_argument("--margin", type=float, default=None,
                        help="search under budget / (1 + MARGIN) so measured winners stay within "
                             "the budget (default: the predictor's 95th-percentile "
                             "under-prediction on calibration networks left out of its fit)")
    search.add_argument("--budget-statistic", choices=BUDGET_STATISTICS, default=None,
                        help="what a budget is about, and what --measure checks the winners "
                             "with: median_ms (default: what most tools print), p90_ms, mean_ms "
                             "or min_ms of the measured runs. A predictor of another statistic "
                             "is scaled by the gap its dataset's networks show (see `predictor "
                             "fit`)")
    search.add_argument("--data-dir", help="reference data folder (default $LATBENCH_DATA or "
                                           "shared/data beside the latbench checkout)")
    search.add_argument("--measure", action="store_true",
                        help="measure the winners; with a predictor that gives intervals, "
                             "search under budget / gap and measure candidates best first "
                             "until one is within the budget (see --measure-budget)")
    search.add_argument("--measure-budget", type=int, default=None, metavar="N",
                        help="with --measure: at most N measurements per budget, the "
                             "winner's included; walking the candidates best first, each "
                             "whose interval is not wholly over the budget is measured and "
                             "wins if measured within it; straddling ones only while two "
                             "measurements are left; if none is within, a search under a "
                             "stricter budget wins (measured too) (default 5)")
    add_interval_level(search, "the intervals --measure judges candidates by")
    search.add_argument("--out",
                        help="output folder: per budget history, pareto.png, winner.txt/.pt/"
                             ".onnx, outcome.json; measured winners (default PREDICTOR/search; "
                             "without --out nothing is written for searches that keep no "
                             "history, such as exhaustive)")
    add_json(search)
    add_device_options(search, what="device for --measure")
    add_run_settings(search, defaults_from_predictor=True)
    add_platform_choice(search)
    search.set_defaults(func=cmd_search)
