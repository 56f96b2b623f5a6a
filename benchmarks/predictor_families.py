"""Issue 4 target: whole held-out networks of NAS-Bench-Macro and three hand-built families
(MobileNetV2, ResNet, EfficientNet) on the local CPU, every zoo member on the same split.

Builds an operator dataset with the `families` plan (NAS-Bench-Macro kernels, the kernels of 30
sampled networks of each family as their ONNX export splits them, one neighbour of each, and
calibration networks of every family), fits xgboost, random forest, linear-on-FLOPs and the
exact lookup table on it, and scores each predictor per family on held-out networks (other
seeds, never the calibration ones; ONNX Runtime, 1 thread, `min_ms`), measured end to end in
the same campaign as the dataset. `--passes N` adds N - 1 passes over them after the campaign,
scores against the median and gives xgboost's within-10% against each pass alone. The default
is the in-campaign pass alone: later passes carry the machine's speed level of their own time
(resuming a day-old run, the reference probe read 10% and the networks 5-6% slower than in the
campaign, and xgboost's 99.1% within 10% against the in-campaign pass became 88.0% and 94.9%
against the two later ones).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import fresh_dir, measure_plan  # noqa: E402
from _report import publish  # noqa: E402

from latbench.bench.campaign import CampaignSummary  # noqa: E402
from latbench.bench.network_sets import resolve_networks  # noqa: E402
from latbench.bench.store import LatencyDataset  # noqa: E402
from latbench.predictor.compare import compare_predictors, write_comparison  # noqa: E402
from latbench.predictor.evaluate import NetworkTimes, error_metrics, measure_networks  # noqa: E402

FAMILIES = ("mobilenetv2", "resnet", "efficientnet")


def per_pass_lines(report, times: NetworkTimes) -> list[str]:
    """xgboost's within-10% per family against each pass alone and against the median: how far
    the noise of one measurement of the truth moves the figure."""
    if len(times.passes) < 2:
        return []
    rows = report.table[(report.table["predictor"] == "xgboost")
                        & np.isfinite(report.table["predicted_ms"])]
    truths = [("median", times.median()),
              *((f"pass {i + 1} alone", p) for i, p in enumerate(times.passes))]
    families = sorted(rows["family"].unique())
    lines = ["xgboost within 10% against each pass alone and against their median:", "",
             "| truth | " + " | ".join(families) + " | all |",
             "|---" * (len(families) + 2) + "|"]
    for name, truth in truths:
        cells = []
        for group in [*(rows[rows["family"] == f] for f in families), rows]:
            kept = group[group["network"].isin(list(truth))]
            measured = kept["network"].map(truth).astype(float)
            cells.append(f"{error_metrics(kept['predicted_ms'], measured)['within10']:.1%}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", default="families")
    parser.add_argument("--macro", type=int, default=100, help="held-out NAS-Bench-Macro nets")
    parser.add_argument("--per-family", type=int, default=40, help="held-out nets per family")
    parser.add_argument("--predictors", default="xgboost,rf,linear,lut")
    parser.add_argument("--out", default="/tmp/latbench-bench/predictor_families")
    parser.add_argument("--passes", type=int, default=1,
                        help="passes over the held-out networks: the in-campaign one and N - 1 "
                             "after it (default 1)")
    parser.add_argument("--keep", action="store_true", help="resume from an earlier --out")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    out = fresh_dir(args.out, args.keep)
    spec = ",".join([f"nasbench-macro:{args.macro}",
                     *(f"{f}:{args.per_family}" for f in FAMILIES)])
    candidates = resolve_networks(spec, seed=2024)
    # Held-out networks are measured in the dataset's campaign (without their kernel lists, so
    # they calibrate nothing): a slow phase of the machine hits them and the calibration
    # networks alike, instead of one of the two measurement sessions.
    measured = measure_plan(args.plan, out / "dataset", sys.argv[1:],
                            extra=[dataclasses.replace(n, kernels=None) for n in candidates])
    device, config, subjects = measured.device, measured.config, measured.subjects
    extra_keys = {s.key for s in measured.extras}
    networks = [n for n in candidates if n.key in extra_keys]
    summary, dataset_s = measured.summary, measured.seconds
    records = LatencyDataset.open(out / "dataset").records()
    held_ms = dict(zip(records["key"], records["min_ms"].astype(float), strict=True))
    first = {n.key: held_ms[n.key] for n in networks if n.key in held_ms}
    started = time.perf_counter()
    later = measure_networks(networks, device, "onnxruntime", config.settings, "min_ms",
                             out / "held-out", config, passes=args.passes - 1) \
        if args.passes > 1 else NetworkTimes([], CampaignSummary())
    passes_s = time.perf_counter() - started
    times = NetworkTimes([first, *later.passes], later.campaign)
    where = ("The first pass was measured in the dataset's campaign, the others after it."
             if args.passes > 1 else "Measured in the dataset's campaign.")
    names = [n.strip() for n in args.predictors.split(",") if n.strip()]
    started = time.perf_counter()
    report = compare_predictors(out / "dataset", networks, names, device, out / "compare",
                                config=config, measured_ms=times.median(),
                                measurement=f"{where} {times.note()}")
    compare_s = time.perf_counter() - started
    paths = write_comparison(report, out / "compare", "Held-out networks, local CPU")
    n_ops = sum(s.subject == "op" for s in subjects)
    n_nets = sum(s.subject == "network" for s in subjects)
    held = report.table.drop_duplicates("network")
    counts = held.groupby("family").size().to_dict()
    lines = [
        f"Plan `{args.plan}`: {n_ops} kernels and {n_nets} calibration networks, plus "
        f"{len(networks)} held-out networks ({summary.measured} measured by this run in "
        f"{dataset_s:.0f} s, the rest resumed from "
        f"an earlier run; {summary.failed} failed, {summary.redone_batches} batches redone "
        "after a slow phase). Held-out networks (seed 2024, none used for calibration): "
        + ", ".join(f"{f} {n}" for f, n in sorted(counts.items()))
        + "; measured end to end in the dataset's campaign (their batches mixed in time with "
        "the plan's, so a slow phase of the machine hits them and the calibration networks "
        "alike)" + (f", then in {args.passes - 1} more passes after it ({passes_s:.0f} s, "
                    f"{later.campaign.redone_batches} batches redone), every predictor scored "
                    "against the median" if args.passes > 1 else "")
        + f"; fitting and scoring took {compare_s:.0f} s. {times.note()} "
        "ONNX Runtime CPU, 1 thread, "
        "5 interleaved rounds x 20 runs, "
        "statistic `min_ms`. *covered*: share of networks whose every kernel the predictor "
        "can price (the lookup table knows only measured keys).", "",
        report.markdown(),
        "Target (issue 4): within-10% >= 95% on NAS-Bench-Macro and every family. xgboost "
        "reaches it on: " + (", ".join(
            f"{f} ({m['within10']:.1%})" for f, m in report.metrics["xgboost"].items()
            if f != "all" and m["within10"] >= 0.95) or "none") + "; not on: " + (", ".join(
            f"{f} ({m['within10']:.1%}, bias {m['bias_pct']:+.1f}%)"
            for f, m in report.metrics["xgboost"].items()
            if f != "all" and not m["within10"] >= 0.95) or "none") + ". "
        f"Full report and plots: `{paths['markdown']}`.",
        "", *per_pass_lines(report, times),
    ] if "xgboost" in report.metrics else [report.markdown()]
    publish("predictor_families", "Whole-network prediction per family, predictor zoo, local CPU",
            lines, write=not args.no_write)


if __name__ == "__main__":
    main()
