"""`latbench predictor fewshot|lut`: predictors for a device without a kernel campaign - from a
few end-to-end measurements and reference devices, or from published lookup tables."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from latbench.cli.common import add_json, add_platform_choice, load_predictor
from latbench.errors import ConfigError
from latbench.tables import print_json, print_table


def cmd_fewshot(args: argparse.Namespace) -> int:
    from latbench.predictor.fewshot import predict_csv

    result, model = predict_csv(args.space, Path(args.reference), Path(args.samples),
                                Path(args.query), Path(args.out),
                                exclude=args.exclude_device or ())
    shares = model.reference_shares()
    if args.json:
        print_json({"samples": model.n_samples_,
                    "loo_median_relative_error_pct": 100 * model.loo_error_,
                    "bases": model.weights_by_candidate_, "reference_shares": shares,
                    "predictions": len(result), "out": str(args.out)})
        return 0
    bases = ", ".join(f"{c} {w:.2f}" for c, w in model.weights_by_candidate_.items())
    alike = ", ".join(f"{d} {w:.0%}" for d, w in list(shares.items())[:3])
    print(f"fitted on {model.n_samples_} samples: leave-one-out error on them "
          f"{100 * model.loo_error_:.1f}% (median |predicted / measured - 1|; what to expect "
          f"on the rest, roughly); bases {bases}")
    if alike:
        print(f"most like: {alike} of the predicted latency")
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


def add_commands(pred_sub: Any) -> None:
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
    add_json(fewshot)
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
