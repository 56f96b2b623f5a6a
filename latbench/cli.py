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

from latbench import __version__
from latbench.bench.stats import DEFAULT_STATISTIC, RECORD_STATISTICS
from latbench.errors import ConfigError, LatbenchError

log = logging.getLogger("latbench")

RUNTIMES = ("onnxruntime", "litert", "tflite-benchmark-model", "onnxruntime-perf-test",
            "onnxruntime-cuda", "torch-cuda")


# --- shared helpers ---------------------------------------------------------------------------
def _device(name: str, threads: int) -> Any:
    from latbench.device_agents import local_device

    if name != "local":
        raise ConfigError(f"unknown device {name!r}: this latbench knows the local CPU "
                          "('local')")
    return local_device(threads=threads)


def _run_settings(args: argparse.Namespace) -> Any:
    """Stopping rule by default (--target-ci); --fixed-runs: --rounds x --runs per model."""
    from latbench.bench.runners import RunSettings

    fixed = args.fixed_runs
    runs = args.runs if args.runs is not None else (20 if fixed else 10)
    return RunSettings(threads=args.threads, warmup=args.warmup, runs=runs,
                       rounds=args.rounds, graph_opt=args.graph_opt, delegate=args.delegate,
                       target_ci=None if fixed else args.target_ci, confidence=args.confidence,
                       min_runs=args.min_runs, max_runs=args.max_runs,
                       max_seconds=args.max_seconds, futility=args.futility or None)


def _campaign_config(args: argparse.Namespace, settings: Any = None) -> Any:
    from latbench.bench.campaign import CampaignConfig

    return CampaignConfig(settings=settings or _run_settings(args), batch_size=args.batch_size,
                          timeout_s=args.timeout, drift_tolerance=args.drift_tolerance,
                          cooldown_s=args.cooldown,
                          max_device_failures=getattr(args, "max_device_failures", 3),
                          calibration_runs=getattr(args, "calibration_runs", 3),
                          drift_correct=getattr(args, "drift_correct", False),
                          keep_samples=getattr(args, "keep_samples", False),
                          shuffle_seed=None if getattr(args, "keep_order", False) else 0)


def _require_runtime(device: Any, runtime: str) -> None:
    """A GPU runtime on a device without CUDA: a clean "unavailable: no CUDA device" error."""
    from latbench.bench.runners.gpu import require_runtime

    require_runtime(device, runtime)


def _space_resolver(name: str) -> list[Any]:
    from latbench.search.networks import space_kernels

    return space_kernels(name)


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
            ("batches stored drifted (flagged)", getattr(summary, "drifted_batches", 0)),
            ("seconds", f"{summary.seconds:.1f}")]


def _campaign_done(title: str, summary: Any) -> int:
    """Print a campaign's summary table and failures; exit code 1 if any job failed."""
    _print_table(title, ["", "value"], _summary_rows(summary))
    _report_failures(summary)
    return 1 if summary.failed else 0


def _report_failures(summary: Any) -> None:
    for line in getattr(summary, "drift_report", lambda: [])():
        print(f"drift: {line}")
    if not summary.failures:
        return
    _print_table("failures", ["device", "job", "error"],
                 [(d, k, e[:120]) for d, k, e in summary.failures[:20]])
    if len(summary.failures) > 20:
        print(f"... and {len(summary.failures) - 20} more failures", file=sys.stderr)


# --- commands ---------------------------------------------------------------------------------
def _fleet(args: argparse.Namespace) -> list[Any]:
    from latbench.device_agents import load_fleet

    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    return load_fleet(args.fleet, insecure_accept_unknown_host_key=args.insecure_host_keys,
                      only=only)


def _measure_on_fleet(args: argparse.Namespace, subjects: list[Any], card: dict[str, Any],
                      what: str) -> int:
    """Measure subjects on every device of --fleet into --out; print per-device checks, the
    summary and the failures; non-zero exit if any job failed."""
    from latbench.bench.campaign import measure_fleet_into_dataset
    from latbench.device_agents import CHECK_HEADER, check_row
    from latbench.progress import Bars

    devices = _fleet(args)
    with Bars("measuring") as bars:
        summary, checks = measure_fleet_into_dataset(
            subjects, devices, args.runtime, Path(args.out), _campaign_config(args),
            card=card, progress=bars, check_timeout_s=args.check_timeout)
    down = [c for c in checks if not c.reachable]
    if down:
        _print_table("unreachable devices (their jobs are marked failed; rerun to retry)",
                     CHECK_HEADER, [check_row(c) for c in down])
    return _campaign_done(f"{what} {args.out} ({len(devices)} devices)", summary)


def _measure(args: argparse.Namespace, subjects: list[Any], card: dict[str, Any], what: str,
             label: str) -> int:
    """Measure subjects on every device of --fleet, or on --device with one --runtime, into
    --out; print the summary and the failures; non-zero exit if any job failed."""
    if args.fleet:
        return _measure_on_fleet(args, subjects, card, what)
    from latbench.bench.campaign import measure_into_dataset
    from latbench.progress import Bars

    runtime = _one_runtime(args.runtime)
    device = _device(args.device or "local", args.threads)
    _require_runtime(device, runtime)
    config = _campaign_config(args)
    with Bars(label) as bars:
        summary = measure_into_dataset(subjects, device, runtime, Path(args.out), config,
                                       card=card, progress=bars)
    return _campaign_done(f"{what} {args.out}", summary)


def cmd_bench_ops(args: argparse.Namespace) -> int:
    from latbench.bench.plans import load_plan
    from latbench.search.networks import plan_subjects

    plan = load_plan(args.plan)
    subjects = plan_subjects(plan)
    if args.limit:
        subjects = subjects[:args.limit]
    card = {"plan": plan.to_dict(), "flags": sys.argv[1:]}
    return _measure(args, subjects, card, "operator dataset", "measuring")


def _one_runtime(runtimes: list[str] | None) -> str:
    if not runtimes:
        return "onnxruntime"
    if len(runtimes) > 1:
        raise ConfigError("several --runtime values need --fleet; with --device give one")
    return runtimes[0]


def cmd_bench_networks(args: argparse.Namespace) -> int:
    from latbench.search.networks import resolve_networks

    subjects = resolve_networks(args.networks, args.seed)
    card = {"networks": args.networks, "seed": args.seed, "flags": sys.argv[1:]}
    return _measure(args, subjects, card, "network dataset", "networks")


def _network_resolver(key: str, family: str) -> Any:
    """A search-space network subject from its dataset key ("nasbench-macro:0123..."), or None
    (hand-built families and user .onnx files cannot be rebuilt from a key)."""
    from latbench.search.networks import arch_subject
    from latbench.search.spaces import SPACES, get_space

    name, _, code = key.partition(":")
    if name not in SPACES or not code:
        return None
    try:
        space = get_space(name)
        return arch_subject(space, space.decode(code), key)
    except (LatbenchError, ValueError, KeyError):
        return None


def cmd_bench_repeat(args: argparse.Namespace) -> int:
    from latbench.bench.repeat import REPORT_HEADER, repeat_dataset, write_repeat_report
    from latbench.bench.store import LatencyDataset
    from latbench.progress import Bars

    data = Path(args.data)
    records = LatencyDataset.open(data).records()
    if args.fleet:
        names = sorted(set(records["device"]))
        devices = {d.name: d for d in _fleet(args)}
        wanted = args.device_name or (names[0] if len(names) == 1 else None)
        if wanted is None or wanted not in devices:
            raise ConfigError(f"dataset {data} was measured on {', '.join(names)}; pass "
                              "--device-name with one the fleet has "
                              f"({', '.join(sorted(devices))})")
        device = devices[wanted]
    else:
        device = _device(args.device, 1)
    out = Path(args.out) if args.out else data.parent / f"{data.name}-repeat"
    with Bars("measuring again") as bars:
        report = repeat_dataset(data, out, device, sample=args.sample, seed=args.seed,
                                runtime=args.runtime, resolve_network=_network_resolver,
                                progress=bars)
    paths = write_repeat_report(report, out)
    _print_table(f"repeatability of {data} on {report.device}/{report.runtime} "
                 f"({report.n_records} records)", REPORT_HEADER, report.rows())
    if report.skipped:
        print(f"{len(report.skipped)} records could not be measured again (see "
              f"{paths['markdown']})", file=sys.stderr)
    print(f"report: {paths['markdown']}  json: {paths['json']}  histogram: "
          f"{paths['histogram']}")
    if report.campaign is not None:
        _report_failures(report.campaign)
    return 0


def cmd_devices_check(args: argparse.Namespace) -> int:
    from latbench.device_agents import CHECK_HEADER, check_devices, check_row

    devices = _fleet(args)
    checks = check_devices(devices, timeout_s=args.check_timeout)
    if args.json:
        print(json.dumps([{"device": c.device, "address": c.address, "reachable": c.reachable,
                           "error": c.error, "problems": list(c.problems), "facts": c.facts,
                           "seconds": round(c.seconds, 3)} for c in checks], indent=2))
    else:
        _print_table(f"fleet {args.fleet}", CHECK_HEADER, [check_row(c) for c in checks])
    down = [c.device for c in checks if not c.reachable]
    if down:
        print(f"latbench: {len(down)} of {len(checks)} devices unreachable: "
              f"{', '.join(down)}", file=sys.stderr)
    return 1 if down else 0


def cmd_bench_plan(args: argparse.Namespace) -> int:
    from collections import Counter

    from latbench.bench.plans import build_specs, load_plan

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
    from latbench.predictor.training import fit_from_dataset

    params = _json_params(args.params, "--params")
    rules = None
    if args.fusion:
        from latbench.bench.store import LatencyDataset
        from latbench.predictor.fusion import rules_from_card

        rules = rules_from_card(LatencyDataset.open(Path(args.fusion)).card)
        if rules is None:
            raise ConfigError(f"dataset {args.fusion} holds no fusion rules; measure them with "
                              "`latbench bench fusion`")
    model, info = fit_from_dataset(Path(args.data), Path(args.out), args.predictor,
                                   args.statistic, args.device, args.runtime, params,
                                   fusion=rules)
    _print_table(f"predictor {args.out}", ["kernel kind", "training kernels"],
                 sorted(model.n_train_.items()))
    print(f"device {info['device']}, runtime {info['runtime']} {info['runtime_version']}, "
          f"statistic {info['statistic']}, call overhead {model.call_overhead_ms_:.4f} ms")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from latbench.predictor.io import load_predictor
    from latbench.predictor.model_level import predict_onnx

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


PASSES_HELP = ("measure the networks N times, one whole pass after another, and score "
               "against the median: on a machine with slow phases a network's time moves by "
               "several percent between passes (the report gives the spread); default 1")


def cmd_eval(args: argparse.Namespace) -> int:
    from latbench.predictor.evaluate import evaluate, settings_from_manifest, write_report
    from latbench.predictor.io import load_predictor
    from latbench.progress import Bars
    from latbench.search.networks import resolve_networks

    predictor, manifest = load_predictor(Path(args.predictor))
    manifest["path"] = str(args.predictor)
    calibrated_on = manifest.get("composition", {}).get("keys", [])
    networks = resolve_networks(args.networks, args.seed, exclude=calibrated_on)
    settings = settings_from_manifest(manifest)
    device = _device(args.device, settings.threads)
    out = Path(args.out or Path(args.predictor) / "eval")
    with Bars("networks") as bars:
        report = evaluate(predictor, manifest, networks, device, out, args.runtime,
                          _campaign_config(args, settings), bars, passes=args.passes)
    paths = write_report(report, out)
    _print_table(f"held-out networks ({report.statistic})",
                 ["family", "n", "RMSE ms", "RMSPE %", "within 10%", "Spearman"],
                 [(f, int(m["n"]), f"{m['rmse_ms']:.4f}", f"{m['rmspe_pct']:.2f}",
                   f"{m['within10']:.1%}", f"{m['spearman']:.3f}")
                  for f, m in report.metrics.items()])
    print(report.measurement)
    print(f"report: {paths['markdown']}  scatter: {paths['scatter']}")
    _report_failures(report.campaign)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from latbench.predictor.evaluate import settings_from_manifest
    from latbench.progress import Bars
    from latbench.search.budget import OUTCOME_HEADER, BudgetOutcome, measure_winners
    from latbench.search.run import SearchJob, parse_options, prepare, run_job, write_outputs

    options = parse_options(args.option, "--option")
    if args.queries is not None:
        options["max_queries"] = args.queries
    if args.epochs is not None:
        options["max_epochs" if args.strategy == "halving" else "epochs"] = args.epochs
    job = SearchJob(args.space, parse_options(args.space_option, "--space-option"),
                    args.strategy, options, args.accuracy, args.data, args.seed)
    dist_info = None
    if job.strategy.startswith("proxyless"):
        from latbench.search.supernet import init_distributed

        dist_info = init_distributed()  # under torchrun: one process per rank
    lead = dist_info is None or dist_info.rank == 0
    data_dir = _data_dir(args.data_dir)
    if job.strategy == "exhaustive" and data_dir is None:
        raise ConfigError("no reference data: pass --data-dir or set LATBENCH_DATA")
    prepared = prepare(job, args.predictor, data_dir, args.margin)
    if args.measure and not prepared.measurable:
        raise ConfigError("--measure needs a predictor directory (the flops table has no "
                          "device or runtime to measure with)")
    if lead:
        fastest, slowest = prepared.latency_range()
        options = f" {prepared.space_options}" if prepared.space_options else ""
        print(f"{args.strategy} on {args.space}{options} (predicted "
              f"{fastest:.4g} to {slowest:.4g} ms): searching under each budget / "
              f"(1 + {prepared.margin:.3f}) (safety margin)", file=sys.stderr)
    try:
        with (Bars("search") if lead else nullcontext()) as bars:
            results = run_job(prepared, args.budget_ms, bars, dist_info)
    finally:
        if dist_info is not None:
            from latbench.search.supernet import close_distributed

            close_distributed(dist_info)
    if not lead:
        return 0
    space, default_out = prepared.space, Path(args.predictor) / "search"
    out = Path(args.out) if args.out else (default_out if args.predictor != "flops" else
                                           Path("runs") / "search")
    folders = {}
    if args.out or job.strategy != "exhaustive":
        for budget, result in results:
            folder = out / f"{job.strategy}-{budget:g}ms"
            write_outputs(folder, space, prepared.space_options, prepared.table, result, budget,
                          prepared.accuracy_table)
            folders[budget] = folder
    if args.measure:
        settings = settings_from_manifest(prepared.manifest)
        device = _device(args.device, settings.threads)
        with Bars("winners") as bars:
            outcomes = measure_winners(space, results, prepared.manifest, device,
                                       out / "winners", _campaign_config(args, settings), bars)
    else:
        outcomes = [BudgetOutcome(b, r.budget_ms, r.arch, r.accuracy, r.predicted_ms, None,
                                  r.feasible, r.evaluated) for b, r in results]
    for (budget, _), outcome in zip(results, outcomes, strict=True):
        if budget in folders:
            (folders[budget] / "outcome.json").write_text(
                json.dumps(outcome.to_json(), indent=1) + "\n")
    if args.json:
        print(json.dumps([{**o.to_json(), **r.to_json(), "budget_ms": b,
                           "folder": str(folders.get(b, ""))}
                          for o, (b, r) in zip(outcomes, results, strict=True)], indent=2))
        return 0
    _print_table(f"{args.space} / {args.strategy}: best accuracy under each budget",
                 (*OUTCOME_HEADER, "queries"),
                 [(*o.row(), r.queries) for o, (_, r) in zip(outcomes, results, strict=True)])
    for budget, folder in folders.items():
        print(f"budget {budget:g} ms: {folder}/ (winner.txt, winner.onnx, winner.pt, "
              "pareto.png, history.csv)")
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
                          networks=args.networks, seed=args.seed, plan_name=args.plan)
    run_demo(options)
    return 0


# --- predictor zoo, fusion, adaptive sampling, comparison, few-shot, lookup tables -----------
def _json_params(text: str | None, flag: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{flag} is not valid JSON: {exc}") from exc


def cmd_bench_fusion(args: argparse.Namespace) -> int:
    from latbench.bench.fusion import default_pairs, measure_fusion
    from latbench.progress import Bars

    producers = args.producers.split(",") if args.producers else None
    pairs = default_pairs(*([producers] if producers else []))
    device = _device(args.device, args.threads)
    with Bars("fusion pairs") as bars:
        rules = measure_fusion(device, args.runtime, Path(args.out), _campaign_config(args),
                               args.alpha, args.statistic, pairs, bars)
    _print_table(f"fusion on {device.name}/{args.runtime} (alpha {rules.alpha:g}: fused when "
                 "T_A + T_B - T_AB > alpha * min(T_A, T_B))",
                 ["producer", "follower", "median saving / min(T_A, T_B)", "fused"],
                 [(p, f, f"{s:.2f}", "yes" if (p, f) in rules.fused else "no")
                  for (p, f), s in rules.savings().items()])
    print(f"rules stored in {Path(args.out) / 'card.json'} (key 'fusion'); "
          "`latbench predictor fit` on this dataset uses them")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from latbench.predictor.adaptive import adapt_dataset
    from latbench.progress import Bars

    device = _device(args.device, 1)
    with Bars("new kernels") as bars:
        model, info, reports = adapt_dataset(
            Path(args.data), Path(args.out), device, args.rounds, args.predictor,
            _json_params(args.params, "--params"), args.statistic, args.runtime,
            args.threshold, args.per_point, args.max_new, args.seed,
            _campaign_config(args, _run_settings_defaults()), bars)
    _print_table("adaptive sampling (held-out kernels)",
                 ["round", "training kernels", "flagged", "new", "held-out RMSPE %",
                  "held-out within 10%"],
                 [(r.round, r.n_train, r.n_flagged, r.n_new, f"{r.holdout_rmspe_pct:.2f}",
                   f"{r.holdout_within10:.1%}") for r in reports])
    print(f"predictor written to {args.out} (report: {Path(args.out) / 'adapt.md'})")
    return 0


def _run_settings_defaults() -> Any:
    from latbench.bench.runners import RunSettings

    return RunSettings()


def cmd_compare(args: argparse.Namespace) -> int:
    from latbench.predictor.compare import compare_predictors, write_comparison
    from latbench.progress import Bars
    from latbench.search.networks import resolve_networks

    names = [n.strip() for n in args.predictors.split(",") if n.strip()]
    networks = resolve_networks(args.networks, args.seed)
    device = _device(args.device, 1)
    out = Path(args.out)
    with Bars("networks") as bars:
        report = compare_predictors(Path(args.data), networks, names, device, out,
                                    args.runtime, args.statistic,
                                    _json_params(args.params, "--params"),
                                    _campaign_config(args, _run_settings_defaults()), bars,
                                    passes=args.passes)
    paths = write_comparison(report, out)
    rows = []
    for name, families in report.metrics.items():
        for family, m in families.items():
            rows.append((name, family, int(m["n"]), f"{m['coverage']:.0%}",
                         "-" if m["n"] == 0 else f"{m['rmspe_pct']:.2f}",
                         "-" if m["n"] == 0 else f"{m['within10']:.1%}",
                         "-" if m["n"] == 0 else f"{m['spearman']:.3f}"))
    _print_table(f"held-out networks ({report.statistic})",
                 ["predictor", "family", "n", "covered", "RMSPE %", "within 10%", "Spearman"],
                 rows)
    print(report.measurement)
    print(f"report: {paths['markdown']}")
    _report_failures(report.campaign)
    return 0


def cmd_fewshot(args: argparse.Namespace) -> int:
    from latbench.predictor.fewshot import predict_csv

    result, model = predict_csv(args.space, Path(args.reference), Path(args.samples),
                                Path(args.query), Path(args.out),
                                exclude=args.exclude_device or ())
    bases = ", ".join(f"{c} {w:.2f}" for c, w in model.weights_by_candidate_.items())
    alike = ", ".join(f"{d} {w:.0%}" for d, w in list(model.reference_shares().items())[:3])
    print(f"fitted on {model.n_samples_} samples: leave-one-out error on them "
          f"{100 * model.loo_rmspe_:.1f}% RMSPE (what to expect on the rest, roughly); "
          f"bases {bases}")
    if alike:
        print(f"most like: {alike} of the predicted latency")
    print(f"{len(result)} predictions written to {args.out}")
    return 0


def cmd_lut_import(args: argparse.Namespace) -> int:
    from latbench.predictor.io import save_predictor
    from latbench.predictor.lut import read_table

    table = read_table(Path(args.table), args.format)
    predictor = table.predictor()
    save_predictor(predictor, Path(args.out), {
        "device": args.device_name or "", "runtime": args.runtime_name or "",
        "lut": {"source": str(Path(args.table).resolve()), "format": table.format,
                "entries": len(table.entries), "merged": table.merged}})
    _print_table(f"lookup table {args.table} ({table.format})", ["kernel kind", "entries"],
                 sorted(predictor.n_train_.items()))
    print(f"predictor written to {args.out}")
    return 0


def cmd_lut_export(args: argparse.Namespace) -> int:
    from latbench.predictor.io import load_predictor
    from latbench.predictor.lut import export_table, read_table, table_layout, write_table

    predictor, _ = load_predictor(Path(args.predictor))
    if bool(args.space) == bool(args.like):
        raise ConfigError("give exactly one of --space (a search space's layers) or --like "
                          "(the keys of an existing table)")
    if args.like:
        fmt = args.format or read_table(Path(args.like)).format
        table = export_table(predictor, table_layout(Path(args.like), fmt), fmt)
    else:
        from latbench.search.lut_export import export_space_table
        from latbench.search.spaces import get_space

        options = {"resolution": args.resolution} if args.resolution else {}
        fmt = args.format or "proxyless"
        table = export_space_table(predictor, get_space(args.space, **options), fmt)
    write_table(table, Path(args.out))
    print(f"{len(table)} {fmt} entries written to {args.out}")
    return 0


def _add_predictor_tools(bench_sub: Any, pred_sub: Any) -> None:
    """Subcommands of issue 4: bench fusion; predictor adapt, compare, fewshot, lut."""
    fusion = bench_sub.add_parser(
        "fusion", help="measure which op pairs the runtime fuses (rules for the kernel split)",
        description="Measure op pairs (conv/dwconv/linear/add followed by each activation, "
                    "conv/dwconv followed by a residual add): A alone, B alone and A->B. A pair "
                    "is fused when T_A + T_B - T_AB > alpha * min(T_A, T_B). The records and the "
                    "rules go into the dataset at --out (its card, key 'fusion'); give the "
                    "operator dataset itself and `latbench predictor fit` uses them.")
    fusion.add_argument("--device", default="local", help="device (default local)")
    fusion.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                        help="runtime (default onnxruntime)")
    fusion.add_argument("--out", required=True, help="dataset directory (created or resumed)")
    fusion.add_argument("--alpha", type=float, default=0.5,
                        help="fused when the saving exceeds alpha * min(T_A, T_B) (default 0.5)")
    fusion.add_argument("--statistic", default=DEFAULT_STATISTIC, choices=RECORD_STATISTICS,
                        help=f"latency statistic (default {DEFAULT_STATISTIC})")
    fusion.add_argument("--producers", help="comma-separated producer kinds (default: conv, "
                                            "dwconv, linear, add)")
    _add_run_settings(fusion)
    fusion.set_defaults(func=cmd_bench_fusion)

    adapt = pred_sub.add_parser(
        "adapt", help="adaptive sampling: measure kernels near the worst predictions, refit",
        description="After a first fit, find kernels whose out-of-fold prediction is off by "
                    "more than --threshold, measure random neighbours of them into the dataset "
                    "(with its own run settings), refit; repeat for --rounds. Reports the "
                    "error per round on held-out kernels, then writes the final predictor.")
    adapt.add_argument("--data", required=True, help="operator dataset (grows)")
    adapt.add_argument("--out", required=True, help="predictor directory to write")
    adapt.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    adapt.add_argument("--per-point", type=int, default=2,
                       help="neighbours measured per flagged kernel (default 2)")
    adapt.add_argument("--max-new", type=int, default=60,
                       help="new kernels per round at most (default 60)")
    adapt.add_argument("--threshold", type=float, default=0.10,
                       help="relative error that flags a kernel (default 0.10)")
    adapt.add_argument("--predictor", default="xgboost", help="predictor type (default xgboost)")
    adapt.add_argument("--params", help="predictor parameters as JSON")
    _add_dataset_measuring(adapt, seed=0, seed_help="seed")
    adapt.set_defaults(func=cmd_adapt)

    compare = pred_sub.add_parser(
        "compare", help="fit the zoo on one dataset, score every member on the same networks",
        description="Fit each predictor on the dataset, measure the held-out networks once "
                    "for all of them (never the calibration networks), and report RMSE, RMSPE, "
                    "within-5/10/15%%, Spearman and Kendall per family and predictor, with PNG "
                    "plots.")
    compare.add_argument("--data", required=True, help="operator dataset")
    compare.add_argument("--networks", default="nasbench-macro:50",
                         help="network set, as for `predictor eval` (default nasbench-macro:50)")
    compare.add_argument("--predictors", default="xgboost,rf,linear,lut",
                         help="comma-separated zoo members (default xgboost,rf,linear,lut)")
    compare.add_argument("--out", required=True, help="report directory")
    compare.add_argument("--params", help='per-predictor parameters as JSON, e.g. '
                                          '\'{"rf": {"n_estimators": 100}}\'')
    compare.add_argument("--passes", type=int, default=1, metavar="N",
                         help=PASSES_HELP)
    _add_dataset_measuring(compare, seed=1, seed_help="seed for sampling networks")
    compare.set_defaults(func=cmd_compare)

    fewshot = pred_sub.add_parser(
        "fewshot", help="predict a new device's latencies from K end-to-end measurements",
        description="Given every architecture's latency on reference devices (a wide CSV) and "
                    "K architectures measured on a new device, predict the query "
                    "architectures' latency on the new device.")
    fewshot.add_argument("--space", required=True, choices=("nasbench201", "fbnet"))
    fewshot.add_argument("--reference", required=True,
                         help="wide CSV: arch, then one latency column (ms) per device")
    fewshot.add_argument("--samples", required=True, help="CSV with columns arch,latency_ms")
    fewshot.add_argument("--query", required=True, help="CSV with a column arch")
    fewshot.add_argument("--out", required=True, help="CSV written: arch,predicted_ms")
    fewshot.add_argument("--exclude-device", action="append",
                         help="drop this reference column (e.g. the device being predicted)")
    fewshot.set_defaults(func=cmd_fewshot)

    lut = pred_sub.add_parser("lut", help="import or export ProxylessNAS / OFA lookup tables")
    lut_sub = lut.add_subparsers(dest="lut_command", required=True, metavar="SUBCOMMAND")
    imp = lut_sub.add_parser("import", help="a YAML layer table as an exact predictor")
    imp.add_argument("--table", required=True, help="ProxylessNAS or OFA YAML table")
    imp.add_argument("--format", choices=("proxyless", "ofa"),
                     help="table format (default: detected from the keys)")
    imp.add_argument("--out", required=True, help="predictor directory to write")
    imp.add_argument("--device-name", help="device the table was measured on (manifest)")
    imp.add_argument("--runtime-name", help="runtime the table was measured with (manifest)")
    imp.set_defaults(func=cmd_lut_import)
    exp = lut_sub.add_parser("export", help="price a layer table with any predictor")
    exp.add_argument("--predictor", required=True, help="predictor directory")
    exp.add_argument("--space", help="search space whose layers to price (e.g. proxyless)")
    exp.add_argument("--resolution", type=int, help="input resolution of --space")
    exp.add_argument("--like", help="price the keys of this existing table instead")
    exp.add_argument("--format", choices=("proxyless", "ofa"),
                     help="output format (default: --like's, else proxyless)")
    exp.add_argument("--out", required=True, help="YAML file to write")
    exp.set_defaults(func=cmd_lut_export)


# --- parser -----------------------------------------------------------------------------------
def _add_run_settings(p: argparse.ArgumentParser, defaults_from_predictor: bool = False) -> None:
    g = p.add_argument_group("measurement settings")
    if not defaults_from_predictor:
        g.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
        g.add_argument("--warmup", type=int, default=10,
                       help="untimed calls per model before timing (default 10)")
        g.add_argument("--runs", type=int, default=None,
                       help="timed calls per model per round (default 10 with the stopping "
                            "rule, 20 with --fixed-runs)")
        g.add_argument("--rounds", type=int, default=5,
                       help="interleaved rounds over each batch with --fixed-runs (default 5)")
        g.add_argument("--target-ci", type=float, default=0.02,
                       help="stopping rule: repeat rounds until the confidence interval of the "
                            "median is within this relative width (default 0.02 = 2%%)")
        g.add_argument("--fixed-runs", action="store_true",
                       help="no stopping rule: exactly --rounds x --runs timed calls per model "
                            "(the protocol of datasets measured before the rule existed)")
        g.add_argument("--confidence", type=float, default=0.95,
                       help="confidence of the median's interval (default 0.95)")
        g.add_argument("--min-runs", type=int, default=20,
                       help="stopping rule: never stop a model before this many runs "
                            "(default 20)")
        g.add_argument("--max-runs", type=int, default=1000,
                       help="stopping rule: stop a model at this many runs (default 1000)")
        g.add_argument("--max-seconds", type=float, default=5.0,
                       help="stopping rule: stop a model after this much timing (default 5)")
        g.add_argument("--futility", type=float, default=4.0,
                       help="stopping rule: stop a model early when reaching --target-ci is "
                            "projected to take more than this many times --max-seconds "
                            "(default 4; 0: measure such models up to the caps)")
        g.add_argument("--graph-opt", default="all",
                       choices=("disable", "basic", "extended", "all"),
                       help="ONNX Runtime graph optimisation level (default all)")
        g.add_argument("--delegate", default="xnnpack", choices=("xnnpack", "builtin", "gpu"),
                       help="LiteRT kernels: XNNPACK delegate or built-in (default xnnpack); "
                            "gpu: the GPU delegate, with tflite-benchmark-model only")
    g.add_argument("--batch-size", type=int, default=40,
                   help="models per agent call (default 40)")
    g.add_argument("--timeout", type=float, default=None,
                   help="seconds per batch before it is marked failed (default: estimated)")
    g.add_argument("--drift-tolerance", type=float, default=0.10,
                   help="redo a batch whose reference probe is this much slower than the "
                        "device's best (default 0.10)")
    g.add_argument("--cooldown", type=float, default=0.0,
                   help="seconds to pause between batches (default 0)")
    g.add_argument("--max-device-failures", type=int, default=3,
                   help="failed batches in a row before a device's remaining jobs are marked "
                        "failed (default 3)")
    g.add_argument("--calibration-runs", type=int, default=3,
                   help="probe-only batches per device before measuring (default 3)")
    g.add_argument("--drift-correct", action="store_true",
                   help="also store drift-corrected statistics (*_corrected_ms: raw / the "
                        "batch's drift ratio), next to the raw ones")
    g.add_argument("--keep-samples", action="store_true",
                   help="store every timed sample with its record (samples_ms column)")
    g.add_argument("--keep-order", action="store_true",
                   help="measure the subjects in the order given instead of a seeded random "
                        "order (the default spreads a slow phase over every kind of subject "
                        "rather than biasing whichever ones were listed together)")


def _add_dataset_measuring(p: argparse.ArgumentParser, seed: int, seed_help: str) -> None:
    """Options of the commands that fit on an operator dataset and measure more with its
    device, runtime and run settings (predictor adapt, predictor compare)."""
    p.add_argument("--statistic", default=DEFAULT_STATISTIC, choices=RECORD_STATISTICS)
    p.add_argument("--device", default="local", help="device (default local)")
    p.add_argument("--runtime", choices=RUNTIMES, help="runtime (default: the dataset's)")
    p.add_argument("--seed", type=int, default=seed, help=seed_help)
    _add_run_settings(p, defaults_from_predictor=True)


def _add_fleet_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("device fleet (see docs/fleet.md)")
    if required:
        g.add_argument("--fleet", required=True, help="fleet inventory TOML file")
    g.add_argument("--only", help="comma-separated device names of the fleet to use")
    g.add_argument("--insecure-accept-unknown-host-key", dest="insecure_host_keys",
                   action="store_true",
                   help="trust SSH host keys missing from known_hosts WITHOUT verifying them "
                        "(a changed key is still refused)")
    g.add_argument("--check-timeout", type=float, default=60.0,
                   help="seconds per device for its health check (default 60)")


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
    where = ops.add_mutually_exclusive_group()
    # default None, not "local": argparse cannot tell an explicit value equal to the default
    # from an absent one, so `--device local --fleet F` would not be refused.
    where.add_argument("--device", help="device to measure on (default local)")
    where.add_argument("--fleet", help="fleet inventory TOML: measure on all its devices in "
                                       "parallel (see docs/fleet.md)")
    ops.add_argument("--runtime", choices=RUNTIMES, nargs="+", default=None,
                     help="runtime(s) (default: onnxruntime with --device; every runtime each "
                          "device lists with --fleet)")
    ops.add_argument("--plan", default="quick",
                     help="a preset (quick, nasbench-macro, mobilenetv2, random, families) or "
                          "a YAML/TOML plan file (default quick)")
    ops.add_argument("--out", required=True, help="dataset directory (created or resumed)")
    ops.add_argument("--limit", type=int, default=0, help="measure only the first N kernels")
    _add_run_settings(ops)
    _add_fleet_options(ops)
    ops.set_defaults(func=cmd_bench_ops)

    nets = bench_sub.add_parser(
        "networks", help="measure whole networks into a dataset (resumable)",
        description="Measure whole networks end to end on a device or a fleet and store the "
                    "records in a Parquet dataset. Rerunning the same command resumes.")
    where = nets.add_mutually_exclusive_group()
    where.add_argument("--device", help="device to measure on (default local)")
    where.add_argument("--fleet", help="fleet inventory TOML (see docs/fleet.md)")
    nets.add_argument("--networks", required=True,
                      help="network set: comma-separated NAME:COUNT (nasbench-macro, proxyless, "
                           "mobilenetv2, mobilenetv3, efficientnet, resnet) and/or .onnx paths")
    nets.add_argument("--runtime", choices=RUNTIMES, nargs="+", default=None,
                      help="runtime(s) (default as for `bench ops`)")
    nets.add_argument("--seed", type=int, default=0, help="seed for sampling networks")
    nets.add_argument("--out", required=True, help="dataset directory (created or resumed)")
    _add_run_settings(nets)
    _add_fleet_options(nets)
    nets.set_defaults(func=cmd_bench_networks)

    devices = sub.add_parser("devices", help="device fleets: health checks")
    devices_sub = devices.add_subparsers(dest="devices_command", required=True,
                                         metavar="SUBCOMMAND")
    check = devices_sub.add_parser(
        "check", help="reach every device of a fleet and show its facts",
        description="Reach every device of a fleet inventory in parallel and print a table: "
                    "reachable, OS, CPU model and cores, runtime versions, free space, governor "
                    "and temperature where readable. Exits non-zero if any device is "
                    "unreachable.")
    _add_fleet_options(check, required=True)
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check.set_defaults(func=cmd_devices_check)

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
    repeat.add_argument("--runtime", choices=RUNTIMES,
                        help="which runtime's records (needed when the dataset has several)")
    where = repeat.add_mutually_exclusive_group()
    where.add_argument("--device", default="local",
                       help="device the dataset was measured on (default local)")
    where.add_argument("--fleet", help="fleet inventory TOML holding the dataset's device")
    repeat.add_argument("--device-name", help="with --fleet: which device's records "
                                              "(needed when the dataset has several)")
    repeat.add_argument("--only", help=argparse.SUPPRESS)
    repeat.add_argument("--insecure-accept-unknown-host-key", dest="insecure_host_keys",
                        action="store_true", help="as for `bench ops --fleet`")
    repeat.set_defaults(func=cmd_bench_repeat)

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
    fit.add_argument("--fusion", help="take the fusion rules from this dataset (its card) "
                                      "instead of the --data dataset's own")
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
    ev.add_argument("--passes", type=int, default=1, metavar="N", help=PASSES_HELP)
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
    search.add_argument("--space", default="nasbench-macro",
                        help="search space: nasbench-macro, nasbench201, proxyless")
    search.add_argument("--space-option", action="append", metavar="KEY=VALUE",
                        help="space option, repeatable (e.g. resolution=64, width_mult=0.5, "
                             "cells=5, num_classes=1000; JSON values)")
    search.add_argument("--predictor", required=True,
                        help="predictor directory, or 'flops' for an analytical FLOPs table "
                             "(no device: trying strategies offline)")
    search.add_argument("--budget-ms", type=float, nargs="+", required=True,
                        help="one or more latency budgets in ms")
    search.add_argument("--strategy", default="exhaustive",
                        help="exhaustive, evolution, random (an accuracy source), halving, "
                             "proxyless-g, proxyless-r (train on --data) (default exhaustive)")
    search.add_argument("--accuracy",
                        help="accuracy source for evolution/random: table (NAS-Bench-Macro), "
                             "surrogate[:gbm|mlp[:N]] (a predictor trained on N table queries) "
                             "or proxy:NAME (zero-cost: synflow, snip, grasp, fisher, jacob_cov, "
                             "grad_norm, naswot, vote) (default table if the space has one, "
                             "else proxy:naswot)")
    search.add_argument("--data", default="digits",
                        help="training data for halving/proxyless: digits or an image folder "
                             "path (default digits)")
    search.add_argument("--queries", type=int, help="evolution/random: most table queries "
                                                     "(default 500)")
    search.add_argument("--epochs", type=int, help="proxyless: supernet epochs; halving: most "
                                                    "epochs per candidate")
    search.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="strategy option, repeatable (e.g. population=30, warmup=200, "
                             "proposals=4, mode=full, loss=additive, lam=0.5, eta=3, "
                             "hyperband=true)")
    search.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    search.add_argument("--margin", type=float, default=None,
                        help="search under budget / (1 + MARGIN) so measured winners stay within "
                             "the budget (default: the predictor's 95th-percentile "
                             "under-prediction on calibration networks left out of its fit)")
    search.add_argument("--data-dir", help="reference data folder (default $LATBENCH_DATA or "
                                           "../shared/data)")
    search.add_argument("--measure", action="store_true", help="measure the winners")
    search.add_argument("--device", default="local", help="device for --measure")
    search.add_argument("--out",
                        help="output folder: per budget history, pareto.png, winner.txt/.pt/"
                             ".onnx; measured winners (default PREDICTOR/search)")
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
    demo.add_argument("--plan", help="plan preset or file instead of the default (quick: "
                                     "'quick', full: 'nasbench-macro')")
    demo.set_defaults(func=cmd_demo)
    _add_predictor_tools(bench_sub, pred_sub)
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
