"""`latbench predictor fit|eval|compare|adapt` and `latbench predict`: fit predictors on a
dataset, predict a model, and score predictors on held-out networks measured on any device."""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latbench.cli.common import (
    PASSES_HELP,
    add_device_options,
    add_interval_level,
    add_json,
    add_legacy_export,
    add_platform_choice,
    add_run_settings,
    add_statistic,
    campaign_config,
    json_params,
    load_predictor,
    networks_help,
    one_device,
    platform_choice,
    report_failures,
    runtime_names,
)
from latbench.errors import ConfigError
from latbench.tables import print_json, print_table

if TYPE_CHECKING:
    from latbench.predictor.memory import MemoryPrediction
    from latbench.predictor.model_level import NetworkPrediction, OutOfRange, UnseenValue

METRIC_HEADER = ["family", "n", "RMSE ms", "RMSPE %", "within 10%", "Spearman"]


def _metric_rows(metrics: dict[str, dict[str, float]]) -> list[tuple[Any, ...]]:
    return [(f, int(m["n"]), f"{m['rmse_ms']:.4f}", f"{m['rmspe_pct']:.2f}",
             f"{m['within10']:.1%}", f"{m['spearman']:.3f}") for f, m in metrics.items()]


def cmd_fit(args: argparse.Namespace) -> int:
    from latbench.bench.platform import choosing_flags
    from latbench.predictor.latency_predictor import (
        LatencyPredictor,
        fit_platforms,
        save_platforms,
    )

    template = LatencyPredictor(args.predictor, json_params(args.params, "--params"),
                                cv_folds=args.cv_folds)
    rules = None
    if args.fusion:
        from latbench.bench.fusion import rules_from_card
        from latbench.bench.store import LatencyDataset

        rules = rules_from_card(LatencyDataset.open(Path(args.fusion)).card)
        if rules is None:
            raise ConfigError(f"dataset {args.fusion} holds no fusion rules; measure them with "
                              "`latbench bench fusion`")
    predictors = fit_platforms(template, Path(args.data), statistic=args.statistic,
                               platform=platform_choice(args), fusion=rules)
    save_platforms(predictors, Path(args.out))
    if args.json:
        fitted = [_fit_json(p, args.predictor) for p in predictors]
        single = fitted[0] if len(fitted) == 1 else {}
        print_json({**single, "predictor": str(args.out), "kernel_model": args.predictor,
                    "platforms": fitted})
        return 0
    for predictor in predictors:
        _print_fit(predictor, len(predictors) > 1)
    if len(predictors) > 1:
        print(f"{len(predictors)} platforms in {args.out}: choose one with "
              f"{choosing_flags([p.platform for p in predictors])} when predicting")
    return 0


def _fit_json(predictor: Any, kernel_model: str) -> dict[str, Any]:
    """What `predictor fit --json` says of one platform's predictor."""
    info = predictor.info_
    return {"platform": predictor.platform.to_json(), "label": predictor.platform.label(),
            "folder": str(predictor.path), "kernel_model": kernel_model,
            **{k: info.get(k) for k in ("device", "runtime", "runtime_version", "settings",
                                        "statistic", "statistic_gaps")},
            "summary": predictor.fit_summary_}


def _print_fit(predictor: Any, several: bool) -> None:
    """One platform's fit summary: per kind the kernels, CV error and training range; the
    calibration; the margin, statistic gaps and memory model; what it was trained for."""
    info, summary = predictor.info_, predictor.fit_summary_
    title = f"predictor {predictor.path}" + (f" ({predictor.platform})" if several else "")
    print_table(title, ["kernel kind", "kernels", "CV RMSPE %", "CV within 10%",
                        "training range"],
                [(kind, k["kernels"], *_cv_cells(k["cv"]),
                  _range_text(k["range"], k.get("values") or {}))
                 for kind, k in summary["kinds"].items()])
    if skipped := [f"{kind} ({k['cv']['skipped']})" for kind, k in summary["kinds"].items()
                   if k["cv"] and "skipped" in k["cv"]]:
        print(f"not cross-validated: {'; '.join(skipped)}")
    calibration = summary["calibration"]
    if calibration.get("networks"):
        loo = calibration.get("rmspe_pct_loo")
        print(f"calibration on {calibration['networks']} measured networks: RMSPE "
              f"{calibration['rmspe_pct_composed']:.2f}% composed, "
              + (f"{loo:.2f}% leave-one-out, " if loo is not None else "")
              + f"{calibration['rmspe_pct_sum']:.2f}% as the plain sum of kernels")
        if terms := calibration.get("terms"):
            print(_terms_text(terms))
        if at_bound := calibration.get("scales_at_bound"):
            print(_at_bound_text(at_bound))
        if downweighted := calibration.get("downweighted"):
            print("down-weighted in the robust fit (far off the composition that fits the "
                  "rest: measured in a slow phase, or a kind of network it prices badly): "
                  + ", ".join(f"{key} ({weight:.2f})" for key, weight in downweighted.items()))
    else:
        print("calibration: the dataset holds no measured networks; a network is the plain sum "
              "of its kernels")
    print(f"safety margin for searches: {100 * summary['safety_margin']:.1f}%")
    if gaps := _gap_text(info):
        print(gaps)
    print(_memory_fit_text(summary.get("memory") or {}))
    print(f"platform {predictor.platform}: device {info['device']}, runtime {info['runtime']} "
          f"{info['runtime_version']}, statistic {info['statistic']}, call overhead "
          f"{summary['call_overhead_ms']:.4f} ms")


def _terms_text(terms: dict[str, float]) -> str:
    """The composition terms the fit kept, each in ms per its unit (docs/predictors.md,
    *Composition terms*)."""
    from latbench.predictor.model_level import TERM_UNITS

    return "composition terms kept: " + ", ".join(
        f"{name} {coef:+.4f} ms per {TERM_UNITS[name]}"
        for name, coef in sorted(terms.items()))


def _at_bound_text(at_bound: dict[str, float]) -> str:
    """The warning for kinds whose composition scale hit its bound (Composition.scales_at_bound)."""
    kinds = ", ".join(f"{kind} x{scale:.2f}" for kind, scale in sorted(at_bound.items()))
    return ("warning: in the calibration networks these kernels ran at the composition's bound "
            f"of their time alone ({kinds}): networks of them do not compose from kernels "
            "timed alone on this platform, and their predictions carry errors near the "
            "calibration's - time such networks whole (`latbench bench networks`), or compare "
            "another thread count")


def _gap_text(info: dict[str, Any]) -> str:
    """`median_ms runs x1.08 of min_ms (95th percentile x1.15), p90_ms ... (60 networks)`: how
    a search on another statistic's budget scales this predictor's figures."""
    gaps = {s: g for s, g in (info.get("statistic_gaps") or {}).items()
            if s != info.get("statistic")}
    if not gaps:
        return ""
    first = next(iter(gaps.values()))
    return (f"other statistics on its {first['n']} {first['source']}: "
            + ", ".join(f"{s} x{g['median']:.3f} (95th percentile x{g['p95']:.3f})"
                        for s, g in gaps.items()) + f" of {info['statistic']}")


def _memory_fit_text(calibration: dict[str, Any]) -> str:
    """How the peak-memory model was calibrated, in one line."""
    if not calibration.get("networks"):
        return ("peak memory: uncalibrated (no measured network peaks in the dataset): "
                "predicts the graph's weights and live activations only")
    loo = calibration.get("rmspe_pct_loo")
    return (f"peak memory: calibrated on {calibration['networks']} measured networks "
            f"({calibration.get('method') or 'unknown method'}): RMSPE "
            f"{calibration['rmspe_pct']:.2f}%"
            + (f", {loo:.2f}% leave-one-out" if loo is not None else "")
            + f"; fitted {', '.join(calibration.get('fitted') or []) or 'the constant only'}")


def _cv_cells(cv: dict[str, Any] | None) -> tuple[str, str]:
    if not cv or "skipped" in cv:
        return "-", "-"
    return f"{cv['rmspe_pct']:.2f}", f"{cv['within10']:.1%}"


def _range_text(ranges: dict[str, list[float]], values: dict[str, list[str]]) -> str:
    """`pool gavg/max, h 8-32, cin 3-96, ..., MFLOPs 0.1-42` (w only where it differs from h;
    first the computations trained on)."""
    parts = [f"{name} {'/'.join(seen)}" for name, seen in values.items()]
    for name, (low, high) in ranges.items():
        if name == "w" and ranges.get("h") == [low, high]:
            continue
        if name == "flops":
            parts.append(f"MFLOPs {low / 1e6:.3g}-{high / 1e6:.3g}")
        else:
            parts.append(f"{name} {low:g}-{high:g}")
    return ", ".join(parts)


def cmd_predict(args: argparse.Namespace) -> int:
    from latbench.bench.model_files import model_format, parse_input_shapes
    from latbench.predictor.builtin_bmm import builtin_bmm
    from latbench.predictor.intervals import check_level
    from latbench.predictor.shared_int8 import float_int8_convs

    path = Path(args.model)
    level = check_level(args.interval_level, "--interval-level")
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    shapes = parse_input_shapes(args.input_shape or [])
    predictor = load_predictor(args)
    prediction = predictor.predict(path, input_shapes=shapes, allow_partial=args.allow_partial,
                                   interval_level=level)
    memory = predicted_memory(predictor, path, shapes)
    attention = builtin_bmm(predictor, prediction, model_format(path))
    float_convs = float_int8_convs(predictor, prediction)
    for warning in prediction_warnings(path, prediction):
        print(f"latbench: warning: {warning}", file=sys.stderr)
    if args.json:
        print_json({"model": str(path), "device": predictor.device,
                    "runtime": predictor.runtime, "platform": predictor.platform.to_json(),
                    **prediction.to_json(),
                    "model_size_bytes": path.stat().st_size,
                    "memory": None if memory is None else memory.to_json(),
                    "builtin_int8_bmm": None if attention is None else attention.to_json(),
                    "float_int8_convs": None if float_convs is None
                    else float_convs.to_json()})
        return 0
    flags = prediction.range_flags()
    print_table(f"{path.name} on {predictor.platform}",
                ["kernel kind", "kernels", "outside range", "predicted ms"],
                [(kind, sum(1 for s, _ in prediction.kernels if s.kind == kind),
                  sum(1 for (s, _), f in zip(prediction.kernels, flags, strict=True)
                      if s.kind == kind and f is False), f"{ms:.4f}")
                 for kind, ms in sorted(prediction.by_kind().items())])
    interval = f", {prediction.interval_text()}" if prediction.interval_ms else ""
    print(f"predicted latency: {prediction.predicted_ms:.4f} ms "
          f"(including {prediction.overhead_ms:.4f} ms runtime call overhead{interval})"
          + (" - partial, see the warning" if prediction.partial else ""))
    if prediction.interval_ms is None and prediction.interval_note:
        print(f"no interval: {prediction.interval_note}")
    if prediction.coverage is not None:
        print(f"coverage: {prediction.coverage:.1%} of the predicted kernel time comes from "
              "kernels inside the predictor's training range")
    if attention is not None:
        print(attention.text())
    if float_convs is not None:
        print(float_convs.text())
    if memory is not None:
        print(memory.text())
    return 0


def predicted_memory(predictor: Any, path: Path, shapes: Any) -> MemoryPrediction | None:
    """The model's predicted peak memory, or None with a warning when its graph cannot be
    walked (the latency prediction stands on its own)."""
    from latbench.errors import LatbenchError

    try:
        return predictor.predict_memory(path, input_shapes=shapes)
    except LatbenchError as exc:
        print(f"latbench: warning: no memory prediction for {path}: {exc}", file=sys.stderr)
        return None


WORST_SHOWN = 3


def prediction_warnings(path: Path, prediction: NetworkPrediction) -> list[str]:
    """One line per concern: a partial prediction, kernels outside the training range
    (count per kind; the few furthest outside, each by its worst field), a predictor that
    cannot tell."""
    out = []
    if prediction.partial:
        nodes = sum(n for _, n in prediction.skipped_ops)
        listed = ", ".join(f"{op} ({n} node{'s' if n > 1 else ''})"
                           for op, n in prediction.skipped_ops)
        why = f"; {prediction.skip_reasons[0]}" if prediction.skip_reasons else ""
        out.append(f"partial prediction of {path}: {nodes} node{'s' if nodes > 1 else ''} "
                   f"left out, priced as nothing: {listed}{why}")
    flags = prediction.range_flags()
    if prediction.coverage is None and prediction.kernels:
        out.append("the predictor records no training ranges (saved by an older latbench): "
                   "it cannot tell which kernels it extrapolates")
    elif outside := [s.kind for (s, _), f in zip(prediction.kernels, flags, strict=True)
                     if not f]:
        per_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(Counter(outside).items()))
        by_kernel: dict[str, OutOfRange | UnseenValue] = {}
        for o in prediction.out_of_range:  # each kernel by its field furthest outside
            if o.kernel not in by_kernel or _excess(o) > _excess(by_kernel[o.kernel]):
                by_kernel[o.kernel] = o
        worst = sorted(by_kernel.values(), key=_excess, reverse=True)[:WORST_SHOWN]
        out.append(f"{len(outside)} of {len(flags)} kernels lie outside the predictor's "
                   f"training range ({per_kind}); {prediction.coverage:.0%} of the predicted "
                   "kernel time comes from kernels inside it"
                   + ("; worst: " + ", ".join(_outside_text(o) for o in worst) if worst
                      else ""))
    return out


def _excess(outside: OutOfRange | UnseenValue) -> float:
    """How far a value lies outside its range, as a factor (2 = twice the largest seen); a
    computation never trained on is the farthest of all."""
    from latbench.predictor.model_level import UnseenValue

    if isinstance(outside, UnseenValue):
        return math.inf
    if outside.value > outside.high:
        return outside.value / outside.high if outside.high > 0 else math.inf
    return outside.low / outside.value if outside.value > 0 else math.inf


def _outside_text(outside: OutOfRange | UnseenValue) -> str:
    """`conv h 224 (trained 4-56)`; FLOPs in millions; `pool pool avg (trained gavg, max)`."""
    from latbench.predictor.model_level import UnseenValue

    kind = outside.kernel.partition(":")[0]
    if isinstance(outside, UnseenValue):
        return f"{kind} {outside.feature} {outside.value} (trained {', '.join(outside.trained)})"
    if outside.feature == "flops":
        return (f"{kind} MFLOPs {outside.value / 1e6:.3g} (trained "
                f"{outside.low / 1e6:.3g}-{outside.high / 1e6:.3g})")
    return f"{kind} {outside.feature} {outside.value:g} (trained {outside.low:g}-{outside.high:g})"


def cmd_eval(args: argparse.Namespace) -> int:
    from latbench.bench.network_sets import resolve_networks
    from latbench.predictor.evaluate import evaluate, write_report
    from latbench.predictor.intervals import check_level
    from latbench.progress import Bars

    level = check_level(args.interval_level, "--interval-level")
    predictor = load_predictor(args, measured_on=True)
    networks = resolve_networks(args.networks, args.seed, exclude=predictor.calibration_keys,
                                dynamo=not args.legacy_export,
                                precision=predictor.platform.precision)
    settings = predictor.run_settings()
    device = one_device(args, threads=settings.threads)
    out = Path(args.out or Path(predictor.path or args.predictor) / "eval")
    with Bars("networks") as bars:
        report = evaluate(predictor, networks, device, out, args.runtime,
                          campaign_config(args, settings), bars, passes=args.passes,
                          interval_level=level)
    paths = write_report(report, out)
    if args.json:
        memory = report.memory
        print_json({"device": device.name, "platform": predictor.platform.to_json(),
                    "threads": settings.threads, "statistic": report.statistic,
                    "metrics": report.metrics, "measurement": report.measurement,
                    "intervals": report.intervals, "interval_level": report.interval_level,
                    "training_range": report.range_metrics(), **report.speed_json(),
                    "memory": None if memory is None else {
                        "metrics": memory.metrics, "calibrated": memory.calibrated},
                    "report": {k: str(v) for k, v in paths.items()}})
        return 0
    print_table(f"held-out networks on {device.name} ({report.statistic}, {settings.threads} "
                f"thread{'' if settings.threads == 1 else 's'})", METRIC_HEADER,
                _metric_rows(report.metrics))
    print(f"predictor platform: {predictor.platform}")
    print(report.measurement)
    if report.speed_note():
        print(report.speed_note())
    if report.intervals:
        print_table(f"{level:.0%} prediction intervals: how often the measured latency fell "
                    "inside", ["family", "n", "inside", "above", "mean width %"],
                    [(family, int(m["n"]), f"{m['inside']:.1%}", f"{m['above']:.1%}",
                      f"{m['mean_width_pct']:.1f}") for family, m in report.intervals.items()])
    else:
        print("no prediction intervals: the predictor holds no residual quantiles (refit it)")
    outside = {family: m for family, m in (report.range_metrics() or {}).items()
               if family != "all" and m["in_range"] < m["n"]}
    if outside:
        print("priced partly outside the training range: " + ", ".join(
            f"{family} {int(m['n'] - m['in_range'])} of {int(m['n'])}"
            for family, m in outside.items()) + " (eval.md, Training range)")
    if report.memory is not None:
        print_memory_metrics(report.memory, device.name)
    print(f"report: {paths['markdown']}  scatter: {paths['scatter']}")
    report_failures(report.campaign)
    return 0


def print_memory_metrics(memory: Any, device: str) -> None:
    """The held-out networks' predicted against measured peak memory, per family."""
    print_table(f"peak memory of the held-out networks on {device}",
                ["family", "n", "RMSPE %", "within 10%", "bias %"],
                [(f, int(m["n"]), f"{m['rmspe_pct']:.2f}", f"{m['within10']:.1%}",
                  f"{m['bias_pct']:+.2f}") for f, m in memory.metrics.items()])
    if not memory.calibrated:
        print("the predictor's memory model is not calibrated (its dataset holds no measured "
              "network peaks): it predicts the graph's weights and live activations only")


def cmd_compare(args: argparse.Namespace) -> int:
    from latbench.bench.network_sets import resolve_networks
    from latbench.bench.runners import RunSettings
    from latbench.predictor.compare import compare_predictors, write_comparison
    from latbench.progress import Bars

    names = [n.strip() for n in args.predictors.split(",") if n.strip()]
    networks = resolve_networks(args.networks, args.seed, dynamo=not args.legacy_export)
    device = one_device(args)
    out = Path(args.out)
    with Bars("networks") as bars:
        report = compare_predictors(Path(args.data), networks, names, device, out,
                                    args.runtime, args.statistic,
                                    json_params(args.params, "--params"),
                                    campaign_config(args, RunSettings()), bars,
                                    passes=args.passes, platform=platform_choice(args))
    paths = write_comparison(report, out)
    if args.json:
        print_json({"device": device.name, "platform": report.platform,
                    "statistic": report.statistic,
                    "metrics": report.metrics, "measurement": report.measurement,
                    "report": str(paths["markdown"])})
        return 0
    rows = []
    for name, families in report.metrics.items():
        for family, m in families.items():
            empty = m["n"] == 0
            rows.append((name, family, int(m["n"]), f"{m['coverage']:.0%}",
                         "-" if empty else f"{m['rmspe_pct']:.2f}",
                         "-" if empty else f"{m['within10']:.1%}",
                         "-" if empty else f"{m['spearman']:.3f}"))
    print_table(f"held-out networks on {device.name} ({report.statistic})",
                ["predictor", "family", "n", "covered", "RMSPE %", "within 10%", "Spearman"],
                rows)
    print(f"predictors' platform: {report.platform['label']}")
    print(report.measurement)
    print(f"report: {paths['markdown']}")
    report_failures(report.campaign)
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from latbench.bench.runners import RunSettings
    from latbench.predictor.adaptive import adapt_dataset
    from latbench.progress import Bars

    device = one_device(args)
    with Bars("new kernels") as bars:
        final, reports = adapt_dataset(
            Path(args.data), Path(args.out), device, args.rounds, args.predictor,
            json_params(args.params, "--params"), args.statistic, args.runtime,
            args.threshold, args.per_point, args.max_new, args.seed,
            campaign_config(args, RunSettings()), bars, platform=platform_choice(args))
    if args.json:
        print_json({"predictor": str(args.out), "platform": final.platform.to_json(),
                    "rounds": [r.__dict__ for r in reports]})
        return 0
    print_table("adaptive sampling (held-out kernels)",
                ["round", "training kernels", "flagged", "new", "held-out RMSPE %",
                 "held-out within 10%"],
                [(r.round, r.n_train, r.n_flagged, r.n_new, f"{r.holdout_rmspe_pct:.2f}",
                  f"{r.holdout_within10:.1%}") for r in reports])
    print(f"predictor for {final.platform} written to {args.out} (report: "
          f"{Path(args.out) / 'adapt.md'})")
    return 0


def _add_dataset_measuring(p: argparse.ArgumentParser, seed: int, seed_help: str) -> None:
    """Options of the commands that fit on an operator dataset and measure more with its
    device, runtime and run settings (predictor adapt, predictor compare)."""
    add_statistic(p)
    p.add_argument("--runtime", choices=runtime_names(), help="runtime (default: the dataset's)")
    p.add_argument("--seed", type=int, default=seed, help=seed_help)
    add_json(p)
    add_device_options(p)
    add_run_settings(p, defaults_from_predictor=True)
    add_platform_choice(p, what="the dataset's")


def add_commands(sub: Any, pred_sub: Any) -> None:
    """`predict` at the top level; fit, eval, compare, adapt under `predictor`."""
    predict = sub.add_parser(
        "predict", help="predict the latency of a model file (.onnx or .tflite)",
        description="Split a model file into the kernels the predictor's runtime executes and "
                    "price them. Kernels outside the predictor's training range are named on "
                    "stderr; --json carries each kernel with its range check and the coverage "
                    "(the share of predicted time from kernels inside the range). Beside the "
                    "latency it prints the model's predicted peak memory (the predictor's "
                    "memory model, calibrated on its dataset's measured network peaks) and "
                    "the file's size. On LiteRT XNNPACK, an INT8 .tflite's attention products "
                    "(BATCH_MATMUL) whose right operand's zero point is not 0 run in LiteRT's "
                    "builtin kernel, many times slower: it says how many and what the model "
                    "would take with them quantized symmetric.")
    predict.add_argument("model", help="model file (.onnx, .tflite)")
    predict.add_argument("--predictor", required=True, help="predictor directory")
    predict.add_argument("--input-shape", action="append", metavar="NAME=DIMS",
                         help="shape of an input with symbolic dims, e.g. input=1x3x224x224 "
                              "(the batch may be left out); once per input")
    predict.add_argument("--allow-partial", action="store_true",
                         help="predict the ops latbench can price and name those left out, "
                              "instead of refusing a model with unsupported ops")
    predict.add_argument("--json", action="store_true",
                         help="print a JSON object (platform, predicted_ms, interval_ms, "
                              "interval_level, coverage, per-kernel figures and range checks, "
                              "skipped_ops, memory, model_size_bytes, builtin_int8_bmm, "
                              "float_int8_convs)")
    add_interval_level(predict)
    add_platform_choice(predict, device_runtime=True)
    predict.set_defaults(func=cmd_predict)

    fit = pred_sub.add_parser("fit", help="fit a per-kernel predictor on a dataset")
    fit.add_argument("--data", required=True, help="dataset directory (from `latbench bench ops`)")
    fit.add_argument("--out", required=True, help="predictor directory to write")
    fit.add_argument("--predictor", default="xgboost", help="predictor type (default xgboost)")
    add_statistic(fit, "which latency statistic to learn (default min_ms: timing noise only "
                       "ever adds time, so the minimum is the most repeatable figure on a "
                       "shared or throttling device; median_ms for typical latency)")
    fit.add_argument("--device", help="fit only the platforms of this device")
    fit.add_argument("--runtime", choices=runtime_names(),
                     help="fit only the platforms of this runtime")
    fit.add_argument("--params", help='predictor parameters as JSON, e.g. \'{"max_depth": 4}\'')
    fit.add_argument("--fusion", help="take the fusion rules from this dataset (its card) "
                                      "instead of the --data dataset's own")
    fit.add_argument("--cv-folds", type=int, default=5, metavar="K",
                     help="K-fold cross-validation of each kernel kind's model for the summary "
                          "(default 5; 0 skips it)")
    add_json(fit)
    add_platform_choice(fit, what="the dataset's", default="fit every platform of the dataset")
    fit.set_defaults(func=cmd_fit)

    ev = pred_sub.add_parser(
        "eval", help="measure held-out networks end to end and score a predictor",
        description="Measure whole networks on a device (the local CPU or any device of a "
                    "fleet) with the runner and settings the predictor was trained with, and "
                    "report RMSE, RMSPE, within-5/10/15% accuracy, Spearman and Kendall per "
                    "family, with a predicted-vs-measured scatter plot. The machine's speed "
                    "drifts between sessions; every measurement runs a reference probe, and "
                    "the same scores are also given against the times scaled by the probe to "
                    "the speed the predictor's dataset was measured at.")
    ev.add_argument("--predictor", required=True, help="predictor directory")
    ev.add_argument("--networks", default="nasbench-macro:50",
                    help=networks_help("nasbench-macro:50", held_out=True))
    ev.add_argument("--runtime", choices=runtime_names(),
                    help="runtime (default: the predictor's)")
    ev.add_argument("--out", help="report directory (default PREDICTOR/eval)")
    ev.add_argument("--seed", type=int, default=0, help="seed for sampling networks")
    add_legacy_export(ev)
    ev.add_argument("--passes", type=int, default=1, metavar="N", help=PASSES_HELP)
    add_interval_level(ev)
    add_json(ev)
    add_device_options(ev)
    add_run_settings(ev, defaults_from_predictor=True)
    add_platform_choice(ev)
    ev.set_defaults(func=cmd_eval)

    compare = pred_sub.add_parser(
        "compare", help="fit the zoo on one dataset, score every member on the same networks",
        description="Fit each predictor on the dataset, measure the held-out networks once "
                    "for all of them (never the calibration networks), and report RMSE, RMSPE, "
                    "within-5/10/15%, Spearman and Kendall per family and predictor, with PNG "
                    "plots.")
    compare.add_argument("--data", required=True, help="operator dataset")
    compare.add_argument("--networks", default="nasbench-macro:50",
                         help="network set, as for `predictor eval` (default nasbench-macro:50)")
    compare.add_argument("--predictors", default="xgboost,rf,linear,lut",
                         help="comma-separated zoo members (default xgboost,rf,linear,lut)")
    compare.add_argument("--out", required=True, help="report directory")
    compare.add_argument("--params", help='per-predictor parameters as JSON, e.g. '
                                          '\'{"rf": {"n_estimators": 100}}\'')
    compare.add_argument("--passes", type=int, default=1, metavar="N", help=PASSES_HELP)
    add_legacy_export(compare)
    _add_dataset_measuring(compare, seed=1, seed_help="seed for sampling networks")
    compare.set_defaults(func=cmd_compare)

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
