"""latbench command line: parse, call one library function, print.

Every latbench error is printed as one line on stderr with a non-zero exit; tracebacks are for
bugs (use --debug to see them for latbench errors too).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.stats import DEFAULT_STATISTIC, RECORD_STATISTICS
from latbench import __version__
from latbench.errors import ConfigError, LatbenchError

log = logging.getLogger("latbench")

RUNTIMES = ("onnxruntime", "litert")


# --- shared helpers ---------------------------------------------------------------------------
def _device(name: str, threads: int) -> Any:
    from device_agents import local_device

    if name != "local":
        raise ConfigError(f"unknown device {name!r}: this latbench knows the local CPU "
                          "('local')")
    return local_device(threads=threads)


def _run_settings(args: argparse.Namespace) -> Any:
    from bench.runners import RunSettings

    return RunSettings(threads=args.threads, warmup=args.warmup, runs=args.runs,
                       rounds=args.rounds, graph_opt=args.graph_opt, delegate=args.delegate)


def _campaign_config(args: argparse.Namespace, settings: Any = None) -> Any:
    from bench.campaign import CampaignConfig

    return CampaignConfig(settings=settings or _run_settings(args), batch_size=args.batch_size,
                          timeout_s=args.timeout, drift_tolerance=args.drift_tolerance,
                          cooldown_s=args.cooldown)


def _space_resolver(name: str) -> list[Any]:
    from search.spaces import get_space

    return get_space(name).layer_specs()


def _print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console().print(table)


def _summary_rows(summary: Any) -> list[tuple[str, Any]]:
    return [("jobs", summary.total), ("already stored", summary.skipped),
            ("measured", summary.measured), ("failed", summary.failed),
            ("batches redone after a slow phase", summary.redone_batches),
            ("seconds", f"{summary.seconds:.1f}")]


def _report_failures(summary: Any) -> None:
    if not summary.failures:
        return
    _print_table("failures", ["device", "job", "error"],
                 [(d, k, e[:120]) for d, k, e in summary.failures[:20]])
    if len(summary.failures) > 20:
        print(f"... and {len(summary.failures) - 20} more failures", file=sys.stderr)


# --- commands ---------------------------------------------------------------------------------
def cmd_bench_ops(args: argparse.Namespace) -> int:
    from bench.campaign import measure_into_dataset
    from bench.plans import load_plan
    from latbench.progress import Bars
    from search.networks import plan_subjects

    plan = load_plan(args.plan)
    subjects = plan_subjects(plan)
    if args.limit:
        subjects = subjects[:args.limit]
    device = _device(args.device, args.threads)
    config = _campaign_config(args)
    with Bars("measuring") as bars:
        summary = measure_into_dataset(
            subjects, device, args.runtime, Path(args.out), config,
            card={"plan": plan.to_dict(), "flags": sys.argv[1:]}, progress=bars)
    _print_table(f"operator dataset {args.out}", ["", "value"], _summary_rows(summary))
    _report_failures(summary)
    return 1 if summary.failed else 0


def cmd_bench_plan(args: argparse.Namespace) -> int:
    from collections import Counter

    from bench.plans import build_specs, load_plan

    plan = load_plan(args.plan)
    specs = build_specs(plan, _space_resolver)
    counts = Counter(s.kind for s in specs)
    _print_table(f"plan {plan.name}: {len(specs)} kernels", ["kind", "kernels"],
                 sorted(counts.items()))
    if args.keys:
        for spec in specs:
            print(spec.key())
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from predictor.training import fit_from_dataset

    try:
        params = json.loads(args.params) if args.params else None
    except ValueError as exc:
        raise ConfigError(f"--params is not valid JSON: {exc}") from exc
    model, info = fit_from_dataset(Path(args.data), Path(args.out), args.predictor,
                                   args.statistic, args.device, args.runtime, params)
    _print_table(f"predictor {args.out}", ["kernel kind", "training kernels"],
                 sorted(model.n_train_.items()))
    print(f"device {info['device']}, runtime {info['runtime']} {info['runtime_version']}, "
          f"statistic {info['statistic']}, call overhead {model.call_overhead_ms_:.4f} ms")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from predictor.io import load_predictor
    from predictor.model_level import predict_onnx

    path = Path(args.model)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    predictor, manifest = load_predictor(Path(args.predictor))
    prediction = predict_onnx(predictor, path)
    if args.json:
        print(json.dumps({"model": str(path), "device": manifest.get("device"),
                          "runtime": manifest.get("runtime"), **prediction.to_json()}, indent=2))
        return 0
    _print_table(f"{path.name} on {manifest.get('device')} / {manifest.get('runtime')}",
                 ["kernel kind", "kernels", "predicted ms"],
                 [(kind, sum(1 for s, _ in prediction.kernels if s.kind == kind), f"{ms:.4f}")
                  for kind, ms in sorted(prediction.by_kind().items())])
    print(f"predicted latency: {prediction.predicted_ms:.4f} ms "
          f"(including {prediction.overhead_ms:.4f} ms runtime call overhead)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from latbench.progress import Bars
    from predictor.evaluate import evaluate, settings_from_manifest, write_report
    from predictor.io import load_predictor
    from search.networks import resolve_networks

    predictor, manifest = load_predictor(Path(args.predictor))
    manifest["path"] = str(args.predictor)
    calibrated_on = manifest.get("composition", {}).get("keys", [])
    networks = resolve_networks(args.networks, args.seed, exclude=calibrated_on)
    settings = settings_from_manifest(manifest)
    device = _device(args.device, settings.threads)
    out = Path(args.out or Path(args.predictor) / "eval")
    with Bars("networks") as bars:
        report = evaluate(predictor, manifest, networks, device, out, args.runtime,
                          _campaign_config(args, settings), bars)
    paths = write_report(report, out)
    _print_table(f"held-out networks ({report.statistic})",
                 ["family", "n", "RMSE ms", "RMSPE %", "within 10%", "Spearman"],
                 [(f, int(m["n"]), f"{m['rmse_ms']:.4f}", f"{m['rmspe_pct']:.2f}",
                   f"{m['within10']:.1%}", f"{m['spearman']:.3f}")
                  for f, m in report.metrics.items()])
    print(f"report: {paths['markdown']}  scatter: {paths['scatter']}")
    _report_failures(report.campaign)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from latbench.progress import Bars
    from predictor.evaluate import settings_from_manifest
    from predictor.io import load_predictor
    from predictor.model_level import safety_margin
    from search.budget import OUTCOME_HEADER, BudgetOutcome, measure_winners, search_budgets
    from search.latency import LatencyTable
    from search.spaces import get_space
    from search.spaces.nasbench_macro import load_accuracy_table

    if args.space != "nasbench-macro":
        raise ConfigError(f"search needs an accuracy source; only nasbench-macro has one here, "
                          f"not {args.space!r}")
    data_dir = _data_dir(args.data_dir)
    if data_dir is None:
        raise ConfigError("no reference data: pass --data-dir or set LATBENCH_DATA")
    accuracy = load_accuracy_table(data_dir)
    predictor, manifest = load_predictor(Path(args.predictor))
    space = get_space(args.space)
    table = LatencyTable.from_predictor(space, predictor, manifest.get("device", ""),
                                        manifest.get("runtime", ""))
    margin = safety_margin(manifest) if args.margin is None else args.margin
    results = search_budgets(space, table, accuracy, args.budget_ms, args.strategy, margin)
    print(f"searching under each budget / (1 + {margin:.3f}) (safety margin)", file=sys.stderr)
    if args.measure:
        settings = settings_from_manifest(manifest)
        device = _device(args.device, settings.threads)
        out = Path(args.out or Path(args.predictor) / "search")
        with Bars("winners") as bars:
            outcomes = measure_winners(space, results, manifest, device, out / "winners",
                                       _campaign_config(args, settings), bars)
    else:
        outcomes = [BudgetOutcome(b, r.budget_ms, r.arch, r.accuracy, r.predicted_ms, None,
                                  r.feasible, r.evaluated) for b, r in results]
    if args.json:
        print(json.dumps([o.to_json() for o in outcomes], indent=2))
    else:
        _print_table(f"{args.space}: best accuracy under each budget", OUTCOME_HEADER,
                     [o.row() for o in outcomes])
    return 0


def _data_dir(given: str | None) -> Path | None:
    from latbench.demo import default_data_dir

    if given:
        path = Path(given)
        if not path.is_dir():
            raise ConfigError(f"data dir {path} does not exist")
        return path
    return default_data_dir()


def cmd_demo(args: argparse.Namespace) -> int:
    from latbench.demo import DemoOptions, run_demo

    data_dir = _data_dir(args.data_dir)
    options = DemoOptions(quick=args.quick, data_dir=data_dir, runs_root=Path(args.runs_root),
                          networks=args.networks, seed=args.seed)
    run_demo(options)
    return 0


# --- parser -----------------------------------------------------------------------------------
def _add_run_settings(p: argparse.ArgumentParser, defaults_from_predictor: bool = False) -> None:
    g = p.add_argument_group("measurement settings")
    if not defaults_from_predictor:
        g.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
        g.add_argument("--warmup", type=int, default=10,
                       help="untimed calls per model before timing (default 10)")
        g.add_argument("--runs", type=int, default=20,
                       help="timed calls per model per round (default 20)")
        g.add_argument("--rounds", type=int, default=5,
                       help="interleaved rounds over each batch (default 5)")
        g.add_argument("--graph-opt", default="all",
                       choices=("disable", "basic", "extended", "all"),
                       help="ONNX Runtime graph optimisation level (default all)")
        g.add_argument("--delegate", default="xnnpack", choices=("xnnpack", "builtin"),
                       help="LiteRT kernels: XNNPACK delegate or built-in (default xnnpack)")
    g.add_argument("--batch-size", type=int, default=40,
                   help="models per agent call (default 40)")
    g.add_argument("--timeout", type=float, default=None,
                   help="seconds per batch before it is marked failed (default: estimated)")
    g.add_argument("--drift-tolerance", type=float, default=0.10,
                   help="redo a batch whose reference probe is this much slower than the "
                        "device's best (default 0.10)")
    g.add_argument("--cooldown", type=float, default=0.0,
                   help="seconds to pause between batches (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latbench",
        description="On-device latency of neural networks: measure operators on a device, "
                    "build a dataset, fit a predictor, check it on held-out networks, search "
                    "architectures under a latency budget.",
        epilog="Start with `latbench demo --quick`. Every command has --help.")
    parser.add_argument("--version", action="version", version=f"latbench {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("bench", help="measure operators on a device")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")
    ops = bench_sub.add_parser(
        "ops", help="measure a plan's kernels into a dataset (resumable)",
        description="Measure every kernel of a sampling plan on a device and store the records "
                    "in a Parquet dataset with its card. Rerunning the same command resumes: "
                    "kernels already stored are skipped, failed ones are retried.")
    ops.add_argument("--device", default="local", help="device to measure on (default local)")
    ops.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                     help="runtime (default onnxruntime)")
    ops.add_argument("--plan", default="quick",
                     help="a preset (quick, nasbench-macro, mobilenetv2, random) or a YAML/TOML "
                          "plan file (default quick)")
    ops.add_argument("--out", required=True, help="dataset directory (created or resumed)")
    ops.add_argument("--limit", type=int, default=0, help="measure only the first N kernels")
    _add_run_settings(ops)
    ops.set_defaults(func=cmd_bench_ops)

    plan = bench_sub.add_parser("plan", help="show which kernels a plan measures")
    plan.add_argument("plan", help="preset name or plan file")
    plan.add_argument("--keys", action="store_true", help="print every kernel key")
    plan.set_defaults(func=cmd_bench_plan)

    pred = sub.add_parser("predictor", help="fit and evaluate latency predictors")
    pred_sub = pred.add_subparsers(dest="predictor_command", required=True, metavar="SUBCOMMAND")
    fit = pred_sub.add_parser("fit", help="fit a per-kernel predictor on a dataset")
    fit.add_argument("--data", required=True, help="dataset directory (from `latbench bench ops`)")
    fit.add_argument("--out", required=True, help="predictor directory to write")
    fit.add_argument("--predictor", default="xgboost", help="predictor type (default xgboost)")
    fit.add_argument("--statistic", default=DEFAULT_STATISTIC, choices=RECORD_STATISTICS,
                     help="which latency statistic to learn (default min_ms: timing noise only "
                          "ever adds time, so the minimum is the most repeatable figure on a "
                          "shared or throttling device; median_ms for typical latency)")
    fit.add_argument("--device", help="use only this device's records")
    fit.add_argument("--runtime", choices=RUNTIMES, help="use only this runtime's records")
    fit.add_argument("--params", help='predictor parameters as JSON, e.g. \'{"max_depth": 4}\'')
    fit.set_defaults(func=cmd_fit)

    ev = pred_sub.add_parser(
        "eval", help="measure held-out networks end to end and score a predictor",
        description="Measure whole networks with the runner and settings the predictor was "
                    "trained with, and report RMSE, RMSPE, within-5/10/15%% accuracy, Spearman "
                    "and Kendall per family, with a predicted-vs-measured scatter plot.")
    ev.add_argument("--predictor", required=True, help="predictor directory")
    ev.add_argument("--networks", default="nasbench-macro:50",
                    help="network set: comma-separated NAME:COUNT (search spaces: "
                         "nasbench-macro, proxyless; families: mobilenetv2, mobilenetv3, "
                         "efficientnet, resnet) and/or .onnx paths (default nasbench-macro:50)")
    ev.add_argument("--device", default="local", help="device (default local)")
    ev.add_argument("--runtime", choices=RUNTIMES,
                    help="runtime (default: the predictor's)")
    ev.add_argument("--out", help="report directory (default PREDICTOR/eval)")
    ev.add_argument("--seed", type=int, default=0, help="seed for sampling networks")
    _add_run_settings(ev, defaults_from_predictor=True)
    ev.set_defaults(func=cmd_eval)

    predict = sub.add_parser("predict", help="predict the latency of an ONNX model")
    predict.add_argument("model", help="ONNX file")
    predict.add_argument("--predictor", required=True, help="predictor directory")
    predict.add_argument("--json", action="store_true",
                         help="print a JSON object (with predicted_ms and per-kernel figures)")
    predict.set_defaults(func=cmd_predict)

    search = sub.add_parser(
        "search", help="most accurate architecture under a latency budget",
        description="Search a space for the most accurate architecture whose predicted "
                    "latency is within each budget; with --measure, measure each winner on the "
                    "device and report predicted vs measured latency.")
    search.add_argument("--space", default="nasbench-macro", help="search space")
    search.add_argument("--predictor", required=True, help="predictor directory")
    search.add_argument("--budget-ms", type=float, nargs="+", required=True,
                        help="one or more latency budgets in ms")
    search.add_argument("--strategy", default="exhaustive", help="search strategy")
    search.add_argument("--margin", type=float, default=None,
                        help="search under budget / (1 + MARGIN) so measured winners stay within "
                             "the budget (default: the predictor's 90th-percentile "
                             "under-prediction on its calibration networks)")
    search.add_argument("--data-dir", help="reference data folder (default $LATBENCH_DATA or "
                                           "../shared/data)")
    search.add_argument("--measure", action="store_true", help="measure the winners")
    search.add_argument("--device", default="local", help="device for --measure")
    search.add_argument("--out", help="where measured winners go (default PREDICTOR/search)")
    search.add_argument("--json", action="store_true", help="print JSON")
    _add_run_settings(search, defaults_from_predictor=True)
    search.set_defaults(func=cmd_search)

    demo = sub.add_parser(
        "demo", help="the whole pipeline on the local CPU",
        description="On the local CPU with ONNX Runtime (1 thread): measure operators, fit a "
                    "predictor, evaluate it on held-out NAS-Bench-Macro networks measured end "
                    "to end, search under three latency budgets and measure the winners. "
                    "Everything goes into runs/<timestamp>/.")
    demo.add_argument("--quick", action="store_true",
                      help="small plan and 50 held-out networks (under 10 minutes on 2 cores)")
    demo.add_argument("--data-dir", help="reference data folder (default $LATBENCH_DATA or "
                                         "../shared/data)")
    demo.add_argument("--runs-root", default="runs", help="parent of the run directory")
    demo.add_argument("--networks", type=int, default=None,
                      help="held-out NAS-Bench-Macro networks (default 50 quick, 200 full)")
    demo.add_argument("--seed", type=int, default=0, help="seed")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except LatbenchError as exc:
        if args.debug:
            raise
        print(f"latbench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("latbench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
