"""`latbench predictor fewshot|lut`: predictors for a device without a kernel campaign - from a
few end-to-end measurements and reference devices, or from published lookup tables."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from latbench.cli.common import (
    add_device_options,
    add_json,
    add_platform_choice,
    add_run_settings,
    campaign_config,
    load_predictor,
    one_device,
    runtime_names,
)
from latbench.errors import ConfigError
from latbench.tables import print_json, print_table


def cmd_fewshot(args: argparse.Namespace) -> int:
    import numpy as np

    from latbench.predictor.fewshot import interval_half_width, predict_csv, suggest_csv

    reference = Path(args.reference) if args.reference else None
    predictors = [Path(p) for p in args.reference_predictor or ()]
    if args.suggest is not None:
        archs = suggest_csv(args.space, reference, args.suggest, Path(args.out),
                            exclude=args.exclude_device or (), predictors=predictors)
        if args.json:
            print_json({"suggested": archs, "out": str(args.out)})
        else:
            print(f"{len(archs)} architectures to measure written to {args.out} (measure them, "
                  "then pass them as --samples with a column latency_ms)")
        return 0
    missing = [flag for flag, value in (("--samples", args.samples), ("--query", args.query))
               if not value]
    if missing:
        raise ConfigError(f"fewshot needs {' and '.join(missing)} (or --suggest K)")
    result, model = predict_csv(args.space, reference, Path(args.samples), Path(args.query),
                                Path(args.out), exclude=args.exclude_device or (),
                                predictors=predictors, level=args.level,
                                structure=False if args.no_structure_prior else None)
    shares = model.reference_shares()
    half = interval_half_width(model.loo_log_residuals_, args.level)
    if args.json:
        print_json({"samples": model.n_samples_,
                    "loo_median_relative_error_pct": 100 * model.loo_error_,
                    "bases": model.weights_by_candidate_, "reference_shares": shares,
                    "structure_strength": model.structure_strength_,
                    "level_scale": model.level_,
                    "interval": {"level": args.level,
                                 "low_pct": 100 * (float(np.exp(-half)) - 1),
                                 "high_pct": 100 * (float(np.exp(half)) - 1)},
                    "predictions": len(result), "out": str(args.out)})
        return 0
    bases = ", ".join(f"{c} {w:.2f}" for c, w in model.weights_by_candidate_.items())
    alike = ", ".join(f"{d} {w:.0%}" for d, w in list(shares.items())[:3])
    print(f"fitted on {model.n_samples_} samples: leave-one-out error on them "
          f"{100 * model.loo_error_:.1f}% (median |predicted / measured - 1|; what to expect "
          f"on the rest, roughly); bases {bases}")
    if alike:
        print(f"most like: {alike} of the predicted latency")
    if model.structure_strength_ > 0:
        print(f"structure prior: weight {model.structure_strength_:.2f} where the references "
              "disagree most")
    if abs(model.level_ - 1) >= 0.05:
        print(f"level: the mix's predictions scaled x{model.level_:.2f} to the samples' median "
              "(the references fit their ranks better than their level)")
    print(f"{args.level:.0%} intervals: {100 * (np.exp(-half) - 1):+.1f}% to "
          f"{100 * (np.exp(half) - 1):+.1f}% around each prediction")
    print(f"{len(result)} predictions written to {args.out}")
    return 0


def cmd_lut_import(args: argparse.Namespace) -> int:
    from latbench.predictor.lut import import_table

    predictor = import_table(Path(args.table), args.format, args.device_name or "",
                             args.runtime_name or "")
    predictor.save(Path(args.out))
    lut = predictor.info_["lut"]
    if args.json:
        print_json({"predictor": str(args.out), "format": lut["format"],
                    "entries": lut["entries"], "kinds": predictor.n_train})
        return 0
    print_table(f"lookup table {args.table} ({lut['format']})", ["kernel kind", "entries"],
                sorted(predictor.n_train.items()))
    print(f"predictor written to {args.out}")
    return 0


def cmd_lut_export(args: argparse.Namespace) -> int:
    from latbench.predictor.lut import (
        export_space_table,
        export_table,
        read_table,
        table_layout,
        write_table,
    )

    if bool(args.space) == bool(args.like):
        raise ConfigError("give exactly one of --space (a search space's layers) or --like "
                          "(the keys of an existing table)")
    predictor = load_predictor(args)
    if args.like:
        fmt = args.format or read_table(Path(args.like)).format
        table = export_table(predictor, table_layout(Path(args.like), fmt), fmt)
    else:
        from latbench.bench.spaces import get_space

        options = {"resolution": args.resolution} if args.resolution else {}
        fmt = args.format or "proxyless"
        table = export_space_table(predictor, get_space(args.space, **options), fmt)
    write_table(table, Path(args.out))
    print(f"{len(table)} {fmt} entries for {predictor.platform} written to {args.out}")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    import sys

    from latbench.bench.plans import load_plan
    from latbench.bench.platform import parse_precision
    from latbench.bench.runners import require_runtime
    from latbench.predictor.kernel_transfer import load_source, measure_transfer
    from latbench.progress import Bars

    if not args.budget_minutes > 0:
        raise ConfigError(f"--budget-minutes must be positive, got {args.budget_minutes}")
    sources = [load_source(entry) for entry in args.sources]
    plan = load_plan(args.plan)
    device = one_device(args, threads=args.threads)
    require_runtime(device, args.runtime)
    data = Path(args.data or f"{args.out}-data")
    with Bars("measuring") as bars:
        run = measure_transfer(sources, plan, parse_precision(args.precision), device,
                               args.runtime, campaign_config(args), 60 * args.budget_minutes,
                               data, progress=bars, seed=args.seed,
                               note=lambda text: print(text, file=sys.stderr),
                               card={"flags": sys.argv[1:]})
    predictor = run.predictor
    predictor.save(Path(args.out))
    transfer = predictor.info_["transfer"]
    cv = transfer["cv"]
    if args.json:
        print_json({"predictor": str(args.out), "data": str(data),
                    "platform": predictor.platform.to_json(), **transfer})
        return 0
    print_table(f"kernel transfer to {predictor.platform}",
                ["kernel kind", "measured", "model", "map LOO %", "alone LOO %"],
                [(kind, k["kernels"], k["mode"], _pct(k["map_loo_pct"]),
                  _pct(k["alone_loo_pct"])) for kind, k in sorted(cv["kinds"].items())])
    print(f"{transfer['kernels_measured']} kernels and {transfer['networks_measured']} networks "
          f"measured in {transfer['minutes_spent']:.1f} min (budget {args.budget_minutes:g}); "
          f"kernel leave-one-out error: map {_pct(cv['map_loo_pct'])}%, sample alone "
          f"{_pct(cv['alone_loo_pct'])}%, chosen {_pct(cv['chosen_loo_pct'])}%")
    print(_networks_priced_by(transfer["networks_priced_by"]))
    for advice in transfer.get("advice") or ():
        print(f"note: {advice}")
    print(f"predictor written to {args.out} (measurements in {data})")
    return 0


def _networks_priced_by(choice: dict[str, Any]) -> str:
    """Which candidate prices networks, with every candidate's cross-validated error over the
    measured calibration networks that chose it."""
    errors = choice.get("errors_pct") or {}
    if not errors:
        return (f"networks priced by the kernel map with its composition "
                f"({choice['networks']} calibration networks measured: too few to choose "
                "between it, the sample alone and a source times a ratio)")

    def named(name: str) -> str:
        ratio = (choice.get("ratios") or {}).get(name)
        what = f"{name.removesuffix(' a ratio')} {ratio:.3g}" if ratio is not None \
            else f"the {name}"
        return f"{what} ({_pct(errors[name])}%)"

    others = ", ".join(named(n) for n in errors if n != choice["chosen"])
    return (f"networks priced by {named(choice['chosen'])}, not {others}: error over the "
            f"{choice['networks']} measured calibration networks, {choice['folds']}-fold "
            "cross-validated")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def add_commands(pred_sub: Any) -> None:
    fewshot = pred_sub.add_parser(
        "fewshot", help="predict a new device's latencies from K end-to-end measurements",
        description="Given every architecture's latency on reference devices (a wide CSV "
                    "and/or kernel predictors) and K architectures measured on a new device, "
                    "predict the query architectures' latency on the new device, with "
                    "intervals; or (--suggest K) say which K architectures to measure.")
    fewshot.add_argument("--space", required=True, choices=("nasbench201", "fbnet"))
    fewshot.add_argument("--reference",
                         help="wide CSV: arch, then one latency column (ms) per device")
    fewshot.add_argument("--reference-predictor", action="append", metavar="PRED",
                         help="a kernel predictor folder as one more reference device: it "
                              "prices every architecture of the space (nasbench201 only); "
                              "repeatable, with or without --reference")
    fewshot.add_argument("--samples", help="CSV with columns arch,latency_ms")
    fewshot.add_argument("--query", help="CSV with a column arch")
    fewshot.add_argument("--out", required=True,
                         help="CSV written: arch,predicted_ms,lo_ms,hi_ms (with --suggest: "
                              "arch)")
    fewshot.add_argument("--suggest", type=int, metavar="K",
                         help="write the K architectures most worth measuring to --out and "
                              "exit")
    fewshot.add_argument("--level", type=float, default=0.9,
                         help="nominal coverage of the lo_ms..hi_ms intervals (default 0.9)")
    fewshot.add_argument("--no-structure-prior", action="store_true",
                         help="do not shrink towards the sum over the cells' operations where "
                              "the references disagree (on by default for nasbench201 only)")
    fewshot.add_argument("--exclude-device", action="append",
                         help="drop this reference column (e.g. the device being predicted)")
    add_json(fewshot)
    fewshot.set_defaults(func=cmd_fewshot)

    transfer = pred_sub.add_parser(
        "transfer", help="a new platform's predictor from a few of its kernels and the "
                         "predictors of platforms already measured",
        description="Build the predictor of a new platform (device, runtime, threads, "
                    "precision, delegate) from a small sample of the plan's kernels measured "
                    "on it plus the kernel predictors of platforms already measured (--from). "
                    "Within --budget-minutes of device time it measures one or more kernels "
                    "of every kind the plan needs, then kernels where the sources disagree or "
                    "the map is least certain, and the plan's calibration networks up to a "
                    "quarter of the budget (repriced by what the first ones took); "
                    "per kind it maps the sources' predictions to the target (or fits the "
                    "sample alone where that cross-validates better) and fits the composition "
                    "on the networks. With 3 or more networks measured, two other "
                    "candidates may price networks instead, whichever predicts the measured "
                    "networks best by cross-validation (kernels refitted without the held-out "
                    "networks' kernels): the sample alone with the default kernel model (often "
                    "between runtimes) and a source's whole predictor times one ratio (often "
                    "another thread count of the same runtime). "
                    "Rerunning the same command resumes the measurements. "
                    "See docs/predictors.md, Kernel transfer.")
    transfer.add_argument("--from", dest="sources", nargs="+", required=True, metavar="PRED",
                          help="source predictor folders (`predictor fit` output); PATH@SLUG "
                               "picks one platform of a multi-platform folder, SLUG as its "
                               "platforms.json folders are named, e.g. "
                               "local-onnxruntime-fp32-1t")
    transfer.add_argument("--runtime", choices=runtime_names(), default="onnxruntime",
                          help="the target's runtime (default onnxruntime)")
    transfer.add_argument("--precision", default="fp32", metavar="P",
                          help="the target's precision: fp32 (default), fp16 or int8; sources "
                               "of another precision are asked about the same kernel at theirs")
    transfer.add_argument("--plan", default="quick",
                          help="plan whose kernels and networks the predictor must price: a "
                               "preset or a YAML/TOML plan file (default quick)")
    transfer.add_argument("--budget-minutes", type=float, required=True, metavar="M",
                          help="device time to spend measuring on the target (too small to "
                               "measure one kernel of each kind is an error naming the least)")
    transfer.add_argument("--out", required=True, help="predictor directory to write")
    transfer.add_argument("--data", help="dataset of the target's measurements (created or "
                                         "resumed; default OUT-data)")
    transfer.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    add_json(transfer)
    add_device_options(transfer, what="the target device")
    add_run_settings(transfer)
    transfer.set_defaults(func=cmd_transfer)

    lut = pred_sub.add_parser("lut", help="import or export ProxylessNAS / OFA lookup tables")
    lut_sub = lut.add_subparsers(dest="lut_command", required=True, metavar="SUBCOMMAND")
    imp = lut_sub.add_parser("import", help="a YAML layer table as an exact predictor")
    imp.add_argument("--table", required=True, help="ProxylessNAS or OFA YAML table")
    imp.add_argument("--format", choices=("proxyless", "ofa"),
                     help="table format (default: detected from the keys)")
    imp.add_argument("--out", required=True, help="predictor directory to write")
    imp.add_argument("--device-name", help="device the table was measured on (manifest)")
    imp.add_argument("--runtime-name", help="runtime the table was measured with (manifest)")
    add_json(imp)
    imp.set_defaults(func=cmd_lut_import)
    exp = lut_sub.add_parser("export", help="price a layer table with any predictor")
    exp.add_argument("--predictor", required=True, help="predictor directory")
    exp.add_argument("--space", help="search space whose layers to price (e.g. proxyless)")
    exp.add_argument("--resolution", type=int, help="input resolution of --space")
    exp.add_argument("--like", help="price the keys of this existing table instead")
    exp.add_argument("--format", choices=("proxyless", "ofa"),
                     help="output format (default: --like's, else proxyless)")
    exp.add_argument("--out", required=True, help="YAML file to write")
    add_platform_choice(exp, device_runtime=True)
    exp.set_defaults(func=cmd_lut_export)
