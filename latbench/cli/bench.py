"""`latbench bench`: what a plan measures, and measuring kernels, networks, fusion pairs and
repeats on any device of a fleet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from latbench.cli.common import (
    add_device_options,
    add_json,
    add_legacy_export,
    add_run_settings,
    add_single_stream,
    add_statistic,
    campaign_config,
    campaign_done,
    devices,
    networks_help,
    one_device,
    report_failures,
    run_settings,
    runtime_names,
    stream_settings,
    summary_json,
    thread_counts,
)
from latbench.errors import ConfigError
from latbench.tables import print_json, print_table


def _one_runtime(runtimes: list[str] | None) -> str:
    if not runtimes:
        return "onnxruntime"
    if len(runtimes) > 1:
        raise ConfigError("several --runtime values need --fleet; with --device give one")
    return runtimes[0]


def _measure(args: argparse.Namespace, subjects: list[Any], card: dict[str, Any],
             what: str) -> int:
    """Measure subjects on the devices --device / --fleet name into --out; print the summary
    and the failures; non-zero exit if any job failed.

    With --fleet every device's health is checked first and each device is measured with every
    runtime it lists (or --runtime); with --device alone, one runtime (default onnxruntime)."""
    from latbench.bench.campaign import measure_fleet_into_dataset, measure_into_dataset
    from latbench.bench.runners import RUNNERS, require_runtime
    from latbench.progress import Bars

    targets = devices(args, threads=thread_counts(args)[0])  # the first of several counts
    config = campaign_config(args)
    if args.fleet:
        from latbench.device_agents import CHECK_HEADER, check_row

        with Bars("measuring") as bars:
            summary, checks = measure_fleet_into_dataset(
                subjects, targets, args.runtime, Path(args.out), config, card=card,
                progress=bars, check_timeout_s=args.check_timeout)
        down = [c for c in checks if not c.reachable]
        if down and not args.json:
            print_table("unreachable devices (their jobs are marked failed; rerun to retry)",
                        CHECK_HEADER, [check_row(c) for c in down])
        return _done(args, f"{what} {args.out} ({len(targets)} devices)", summary, subjects)
    runtime = _one_runtime(args.runtime)
    device = targets[0]
    require_runtime(device, runtime)
    refused = [why for s in subjects if (why := s.refusal(RUNNERS.lookup(runtime)))]
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise ConfigError(f"{refused[0]}{more}: measure them with a runtime that runs their "
                          "format (--runtime)")
    with Bars("measuring") as bars:
        summary = measure_into_dataset(subjects, device, runtime, Path(args.out), config,
                                       card=card, progress=bars)
    return _done(args, f"{what} {args.out}", summary, subjects)


STREAM_HEADER = ("network", "device", "queries", "p50 ms", "p90 ms", "p99 ms", "replication")


def _done(args: argparse.Namespace, title: str, summary: Any, subjects: list[Any]) -> int:
    """The campaign's summary; after a single stream also each model's percentiles and
    whether its replicates agreed."""
    if not getattr(args, "single_stream", False):
        return campaign_done(title, summary, args.json)
    from latbench.bench.store import stream_results

    results = stream_results(Path(args.out), [s.key for s in subjects])
    if args.json:
        print_json({**summary_json(summary), "single_stream": results})
        return 1 if summary.failed else 0
    code = campaign_done(title, summary)
    print_table("single stream (MLPerf-style): percentiles over every query of the replicates",
                list(STREAM_HEADER), [stream_row(r) for r in results])
    return code


def stream_row(result: dict[str, Any]) -> tuple[str, ...]:
    from latbench.bench.store import replication_verdict

    return (result["key"], result["device"], str(result["queries"]),
            f"{result['p50_ms']:.4f}", f"{result['p90_ms']:.4f}", f"{result['p99_ms']:.4f}",
            replication_verdict(result))


def cmd_bench_ops(args: argparse.Namespace) -> int:
    from latbench.bench.plans import load_plan, plan_subjects

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be a positive number of kernels, got {args.limit}")
    plan = load_plan(args.plan)
    subjects = plan_subjects(plan, _precision(args))
    if args.limit:
        subjects = subjects[:args.limit]
    card = {"plan": plan.to_dict(), "flags": sys.argv[1:]}
    return _measure(args, subjects, card, "operator dataset")


def cmd_bench_networks(args: argparse.Namespace) -> int:
    from latbench.bench.network_sets import resolve_networks

    subjects = resolve_networks(args.networks, args.seed, dynamo=not args.legacy_export,
                                precision=_precision(args))
    card = {"networks": args.networks, "seed": args.seed, "flags": sys.argv[1:]}
    return _measure(args, subjects, card, "network dataset")


def _precision(args: argparse.Namespace) -> str:
    """--precision as a dtype, refused where a runtime asked for cannot compute in it."""
    from latbench.bench.platform import parse_precision
    from latbench.bench.runners import RUNNERS

    precision = parse_precision(args.precision)
    runtimes = getattr(args, "runtime", None) or ("onnxruntime",)
    for runtime in [runtimes] if isinstance(runtimes, str) else runtimes:
        supported = RUNNERS.lookup(runtime).precisions
        if precision not in supported:
            raise ConfigError(f"runtime {runtime} cannot measure --precision {args.precision}: "
                              f"it computes in {', '.join(supported)} only")
    return precision


def _add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", default="fp32", metavar="P",
                        help="what the kernels and networks compute in: fp32 (default), fp16 "
                             "or int8 (ONNX: quantized by ONNX Runtime's static quantizer, QDQ; "
                             "model files are measured as they are)")


def cmd_bench_plan(args: argparse.Namespace) -> int:
    from collections import Counter

    from latbench.bench.plans import build_specs, load_plan, plan_from_model, plan_yaml
    from latbench.bench.store import atomic_write_text

    if (args.plan is None) == (args.model is None):
        raise ConfigError("give a plan (a preset or a plan file) or --from MODEL, not both")
    if args.model is not None:
        plan = plan_from_model(_model_path(args.model),
                               around=DEFAULT_AROUND if args.around is None else args.around,
                               input_shape=args.input_shape or [], seed=args.seed,
                               calibrate=not args.no_network)
    else:
        if args.around is not None or args.input_shape or args.out or args.no_network:
            raise ConfigError("--around, --input-shape, --no-network and --out go with --from "
                              "MODEL")
        plan = load_plan(args.plan)
    specs = build_specs(plan)
    if args.model is not None and args.out is None and not args.json:
        print(plan_yaml(plan), end="")  # the plan itself, ready to redirect into a file
        return 0
    if args.out is not None:
        out = Path(args.out)
        if out.suffix not in (".yaml", ".yml"):
            raise ConfigError(f"--out {out} must end in .yaml or .yml")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, plan_yaml(plan, relative_to=out.parent))
    counts = Counter(s.kind for s in specs)
    if args.json:
        print_json({"plan": plan.name, "kernels": len(specs), "by_kind": dict(sorted(
            counts.items())), "networks": list(plan.networks),
            "keys": [s.key() for s in specs] if args.keys else None,
            "written": args.out})
        return 0
    print_table(f"plan {plan.name}: {len(specs)} kernels", ["kind", "kernels"],
                sorted(counts.items()))
    if plan.networks:
        print(f"calibration networks: {', '.join(plan.networks)}")
    if args.keys:
        for spec in specs:
            print(spec.key())
    if args.out is not None:
        print(f"plan written to {args.out}: edit it, then `latbench bench ops --plan "
              f"{args.out}`")
    return 0


DEFAULT_AROUND = 2  # variations around each kernel of a model's plan


def _model_path(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    return path


def cmd_bench_model(args: argparse.Namespace) -> int:
    from latbench.bench.runners import require_runtime
    from latbench.predictor.model_table import KERNEL_HEADER, measure_model_table
    from latbench.progress import Bars

    model = _model_path(args.model)
    runtime = _one_runtime([args.runtime] if args.runtime else None)
    device = one_device(args, threads=args.threads)
    require_runtime(device, runtime)
    with Bars("measuring") as bars:
        table = measure_model_table(model, device, runtime, Path(args.out),
                                    campaign_config(args, run_settings(args)),
                                    around=args.around, input_shape=args.input_shape or [],
                                    statistic=args.statistic, card={"flags": sys.argv[1:]},
                                    progress=bars, stream=stream_settings(args))
    if args.json:
        print_json(table.to_json())
    else:
        print_table(f"{model.name} on {table.device} / {table.runtime} ({table.statistic})",
                    ["", "value"], table.summary_rows())
        print_table("kernels, most expensive first (share: of the kernels' measured time)",
                    list(KERNEL_HEADER), table.kernel_rows())
        print(f"dataset: {table.dataset}  predictor: {table.predictor} "
              f"(`latbench predict MODEL --predictor {table.predictor}`)")
        report_failures(table.campaign)
    return 1 if table.campaign.failed else 0


def cmd_bench_repeat(args: argparse.Namespace) -> int:
    from latbench.bench.network_sets import network_from_key
    from latbench.bench.repeat import REPORT_HEADER, repeat_dataset, write_repeat_report
    from latbench.bench.store import LatencyDataset
    from latbench.progress import Bars

    data = Path(args.data)
    if args.fleet and not args.device:
        names = sorted(set(LatencyDataset.open(data).records()["device"]))
        if len(names) != 1:
            raise ConfigError(f"dataset {data} was measured on {', '.join(names)}; pass "
                              "--device NAME with the one to measure again")
        args.device = names[0]
    device = one_device(args)
    out = Path(args.out) if args.out else data.parent / f"{data.name}-repeat"
    with Bars("measuring again") as bars:
        report = repeat_dataset(data, out, device, sample=args.sample, seed=args.seed,
                                runtime=args.runtime, resolve_network=network_from_key,
                                progress=bars, lock_wait_s=args.lock_wait)
    paths = write_repeat_report(report, out)
    if args.json:
        print_json({**report.to_json(), "report": {k: str(v) for k, v in paths.items()}})
        return 0
    print_table(f"repeatability of {data} on {report.device}/{report.runtime} "
                f"({report.n_records} records)", REPORT_HEADER, report.rows())
    if report.skipped:
        print(f"{len(report.skipped)} records could not be measured again (see "
              f"{paths['markdown']})", file=sys.stderr)
    print(f"report: {paths['markdown']}  json: {paths['json']}  histogram: "
          f"{paths['histogram']}")
    if report.campaign is not None:
        report_failures(report.campaign)
    return 0


def cmd_bench_fusion(args: argparse.Namespace) -> int:
    from latbench.bench.fusion import RESOLUTION_MS, default_pairs, measure_fusion
    from latbench.progress import Bars

    if not 0 < args.alpha <= 1:
        raise ConfigError(f"--alpha must be in (0, 1], got {args.alpha}")
    producers = args.producers.split(",") if args.producers else None
    pairs = default_pairs(*([producers] if producers else []), precision=_precision(args))
    device = one_device(args, threads=args.threads)
    with Bars("fusion pairs") as bars:
        rules = measure_fusion(device, args.runtime, Path(args.out), campaign_config(args),
                               args.alpha, args.statistic, pairs, bars)
    undecided = sorted({pair.rule for pair in pairs} - rules.tested)
    if args.json:
        print_json({"device": device.name, "runtime": args.runtime, "alpha": rules.alpha,
                    "pairs": [{"producer": p, "follower": f, "saving": s,
                               "fused": (p, f) in rules.fused}
                              for (p, f), s in rules.savings().items()],
                    "undecided": [list(rule) for rule in undecided]})
        return 0
    print_table(f"fusion on {device.name}/{args.runtime} (alpha {rules.alpha:g}: fused when "
                "T_A + T_B - T_AB > alpha * min(T_A, T_B))",
                ["producer", "follower", "median saving / min(T_A, T_B)", "fused"],
                [(p, f, f"{s:.2f}", "yes" if (p, f) in rules.fused else "no")
                 for (p, f), s in rules.savings().items()])
    if undecided:
        print(f"{len(undecided)} pairs left undecided (the cheaper op ran under "
              f"{RESOLUTION_MS:g} ms at every shape, or a measurement failed): "
              f"{', '.join('+'.join(rule) for rule in undecided)}; the kernel split keeps "
              "its default for them")
    print(f"rules stored in {Path(args.out) / 'card.json'} (key 'fusion'); "
          "`latbench predictor fit` on this dataset uses them")
    return 0


def cmd_bench_drift(args: argparse.Namespace) -> int:
    from latbench.bench.drift_plot import plot_dataset_drift
    from latbench.bench.store import LatencyDataset

    path = plot_dataset_drift(Path(args.data), Path(args.out) if args.out else None)
    drift = LatencyDataset.open(Path(args.data)).card.get("drift_last_run") or {}
    if args.json:
        print_json({"plot": str(path) if path else None, "report": drift.get("report", []),
                    "control": drift.get("control", {}),
                    "batches": len(drift.get("batches") or [])})
        return 0
    for line in drift.get("report", []):
        print(f"drift: {line}")
    if path is None:
        print("drift plot not drawn: plots need matplotlib (pip install 'latbench[plots]')",
              file=sys.stderr)
        return 1
    print(f"drift plot: {path}")
    return 0


def _presets() -> str:
    from latbench.bench.presets import preset_names

    return preset_names()


def add_commands(sub: Any) -> None:
    bench = sub.add_parser("bench", help="measure operators and networks on devices")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")
    runtimes = runtime_names()

    ops = bench_sub.add_parser(
        "ops", help="measure a plan's kernels into a dataset (resumable)",
        description="Measure every kernel of a sampling plan on a device (or every device of a "
                    "fleet) and store the records in a Parquet dataset with its card. Rerunning "
                    "the same command resumes: kernels already stored are skipped, failed ones "
                    "are retried.")
    ops.add_argument("--runtime", choices=runtimes, nargs="+", default=None,
                     help="runtime(s) (default: onnxruntime on one device; every runtime each "
                          "device lists with --fleet)")
    ops.add_argument("--plan", default="quick",
                     help=f"a preset ({_presets()}) or a YAML/TOML plan file, e.g. from "
                          "`bench plan --from MODEL` (default quick)")
    ops.add_argument("--out", required=True, help="dataset directory (created or resumed)")
    ops.add_argument("--limit", type=int, default=None,
                     help="measure only the first N kernels (N >= 1)")
    add_json(ops)
    add_device_options(ops)
    add_run_settings(ops, several_threads=True)
    _add_precision(ops)
    ops.set_defaults(func=cmd_bench_ops)

    nets = bench_sub.add_parser(
        "networks", help="measure whole networks into a dataset (resumable)",
        description="Measure whole networks end to end on a device or a fleet and store the "
                    "records in a Parquet dataset. Rerunning the same command resumes.")
    nets.add_argument("--networks", required=True,
                      help=networks_help())
    nets.add_argument("--runtime", choices=runtimes, nargs="+", default=None,
                      help="runtime(s) (default as for `bench ops`)")
    nets.add_argument("--seed", type=int, default=0, help="seed for sampling networks")
    add_legacy_export(nets)
    nets.add_argument("--out", required=True, help="dataset directory (created or resumed)")
    add_json(nets)
    add_device_options(nets)
    add_run_settings(nets, several_threads=True)
    add_single_stream(nets)
    _add_precision(nets)
    nets.set_defaults(func=cmd_bench_networks)

    repeat = bench_sub.add_parser(
        "repeat", help="measure a dataset again and report how far its numbers move",
        description="Measure the records of a dataset (or a random sample of them) again on "
                    "the same device with the same runtime and settings (read from the card "
                    "and the records), and report per statistic the median and p90 of the "
                    "per-record relative difference |new/old - 1|, as a table, JSON and a "
                    "histogram PNG (see docs/measurement.md).")
    repeat.add_argument("--data", required=True, help="dataset directory to measure again")
    repeat.add_argument("--sample", type=int, default=None,
                        help="measure only N records drawn at random (default: all)")
    repeat.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")
    repeat.add_argument("--out", help="report directory, also holding the new measurement "
                                      "(default DATA-repeat next to the dataset)")
    repeat.add_argument("--runtime", choices=runtimes,
                        help="which runtime's records (needed when the dataset has several)")
    repeat.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long for another campaign measuring into the same "
                             "folder (default 0: refuse at once; inf: as long as it takes)")
    add_json(repeat)
    add_device_options(repeat, what="device the dataset was measured on")
    repeat.set_defaults(func=cmd_bench_repeat)

    plan = bench_sub.add_parser(
        "plan", help="show which kernels a plan measures, or make the plan of a model",
        description="Show the kernels a plan measures (a preset or a YAML/TOML plan file), or "
                    "with --from MODEL make the plan of a model file (.onnx, .tflite): its own "
                    "kernels, --around N variations of each and the model as calibration "
                    "network, written as YAML (--out FILE, else printed) to edit and measure "
                    "with `bench ops --plan FILE`.")
    plan.add_argument("plan", nargs="?", help=f"a preset ({_presets()}) or a plan file")
    plan.add_argument("--from", dest="model", metavar="MODEL",
                      help="make the plan of this model file instead")
    plan.add_argument("--around", type=int, default=None,
                      help="with --from: variations around each kernel (default "
                           f"{DEFAULT_AROUND})")
    plan.add_argument("--input-shape", action="append", metavar="NAME=DIMS",
                      help="with --from: the shape of an input with symbolic dims, e.g. "
                           "input=1x3x224x224 (repeatable)")
    plan.add_argument("--no-network", action="store_true",
                      help="with --from: do not measure the model itself as calibration network")
    plan.add_argument("--seed", type=int, default=0, help="with --from: the plan's seed")
    plan.add_argument("--out", help="with --from: write the plan to this .yaml file")
    plan.add_argument("--keys", action="store_true", help="print every kernel key")
    add_json(plan)
    plan.set_defaults(func=cmd_bench_plan)

    model = bench_sub.add_parser(
        "model", help="a latency table for one model on one device, in one command",
        description="Measure a model's own kernels (and --around variations) and the model end "
                    "to end on a device in one resumable campaign (OUT/dataset), fit a "
                    "predictor on them with the model as calibration network (OUT/predictor), "
                    "and report predicted vs measured for the model, every kernel's measured "
                    "time and share, and the composition. Rerun the same command to resume.")
    model.add_argument("model", help="model file (.onnx, .tflite)")
    model.add_argument("--runtime", choices=runtimes, default=None,
                       help="runtime (default onnxruntime)")
    model.add_argument("--out", required=True,
                       help="folder for the dataset and the predictor (created or resumed)")
    model.add_argument("--around", type=int, default=0,
                       help="variations measured around each kernel, for a predictor that "
                            "also prices models near this one (default 0)")
    model.add_argument("--input-shape", action="append", metavar="NAME=DIMS",
                       help="the shape of an input with symbolic dims, e.g. input=1x3x224x224 "
                            "(repeatable)")
    add_statistic(model)
    add_json(model)
    add_device_options(model)
    add_run_settings(model)
    add_single_stream(model)
    model.set_defaults(func=cmd_bench_model)

    fusion = bench_sub.add_parser(
        "fusion", help="measure which op pairs the runtime fuses (rules for the kernel split)",
        description="Measure op pairs (conv/dwconv/linear/add followed by each activation, "
                    "conv/dwconv followed by a residual add): A alone, B alone and A->B. A pair "
                    "is fused when T_A + T_B - T_AB > alpha * min(T_A, T_B). The records and the "
                    "rules go into the dataset at --out (its card, key 'fusion'); give the "
                    "operator dataset itself and `latbench predictor fit` uses them.")
    fusion.add_argument("--runtime", choices=runtimes, default="onnxruntime",
                        help="runtime (default onnxruntime)")
    fusion.add_argument("--out", required=True, help="dataset directory (created or resumed)")
    fusion.add_argument("--alpha", type=float, default=0.5,
                        help="fused when the saving exceeds alpha * min(T_A, T_B); in (0, 1] "
                             "(default 0.5)")
    add_statistic(fusion)
    fusion.add_argument("--producers", help="comma-separated producer kinds (default: conv, "
                                            "dwconv, linear, add)")
    add_json(fusion)
    add_device_options(fusion)
    add_run_settings(fusion)
    _add_precision(fusion)
    fusion.set_defaults(func=cmd_bench_fusion)

    drift = bench_sub.add_parser(
        "drift", help="draw a dataset's drift over its last campaign (PNG)",
        description="Draw, from a dataset's card, the last campaign's drift per batch against "
                    "time: the reference probe's ratio to the device's best, the hottest "
                    "temperature and the CPU clock before and after each batch, and where "
                    "reported the cores other programs kept busy and the hypervisor's steal "
                    "share; print the drift report "
                    "(what --max-temp, --pin and --cpus did included). Campaigns draw it "
                    "themselves, next to the card (drift.png).")
    drift.add_argument("data", help="dataset directory")
    drift.add_argument("--out", help="PNG to write (default DATA/drift.png)")
    add_json(drift)
    drift.set_defaults(func=cmd_bench_drift)
