"""Issue 2 target: whole-network prediction on held-out NAS-Bench-Macro networks, local CPU.

Builds an operator dataset with a plan (default `nasbench-macro`: the space's kernels, their
primitives, neighbours, random kernels and 60 calibration networks), fits the xgboost predictor
(min_ms, composition calibrated on those networks), measures N random held-out architectures
end to end with the same runner and settings (ONNX Runtime, 1 thread), and reports within-10%,
RMSPE and Spearman - with and without the composition step, on the same measurements.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fresh_dir, measure_plan  # noqa: E402
from _report import publish  # noqa: E402

from predictor.evaluate import evaluate, write_report  # noqa: E402
from predictor.io import load_predictor  # noqa: E402
from predictor.training import fit_from_dataset  # noqa: E402
from search.networks import resolve_networks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", default="nasbench-macro")
    parser.add_argument("--networks", type=int, default=200)
    parser.add_argument("--out", default="/tmp/latbench-bench/predictor_accuracy")
    parser.add_argument("--keep", action="store_true", help="resume from an earlier --out")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    out = fresh_dir(args.out, args.keep)
    measured = measure_plan(args.plan, out / "dataset", sys.argv[1:])
    device, config, subjects = measured.device, measured.config, measured.subjects
    summary, dataset_s = measured.summary, measured.seconds
    fitted = {name: fit_from_dataset(out / "dataset", out / f"predictor-{tag}",
                                     calibrate=calibrate)[1]
              for name, tag, calibrate in (("composed", "composed", True),
                                           ("kernel sum", "sum", False))}
    held_out = resolve_networks(f"nasbench-macro:{args.networks}", seed=2024,
                                exclude=fitted["composed"]["composition"].get("keys", []))
    results = {}
    for name, tag in (("composed", "composed"), ("kernel sum", "sum")):
        predictor, manifest = load_predictor(out / f"predictor-{tag}")
        # Both predictors share one measurement of the held-out networks (resumed dataset).
        report = evaluate(predictor, manifest, held_out, device, out / "eval", config=config)
        write_report(report, out / f"eval-{tag}")
        results[name] = report.metrics["nasbench-macro"]
    lines = [
        f"Plan `{args.plan}`: {sum(s.subject == 'op' for s in subjects)} kernels and "
        f"{sum(s.subject == 'network' for s in subjects)} calibration networks measured in "
        f"{dataset_s:.0f} s ({summary.redone_batches} batches redone after a slow phase). "
        f"Held-out: {args.networks} random NAS-Bench-Macro architectures (none used for "
        "calibration), measured end to end with the same runner and settings "
        "(ONNX Runtime CPU, 1 thread, 5 interleaved rounds x 20 runs, statistic `min_ms`).", "",
        "| predictor | n | within 10% | within 5% | RMSPE % | RMSE ms | Spearman | bias % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in results.items():
        lines.append(f"| xgboost, {name} | {int(m['n'])} | {m['within10']:.1%} | "
                     f"{m['within5']:.1%} | {m['rmspe_pct']:.2f} | {m['rmse_ms']:.4f} | "
                     f"{m['spearman']:.3f} | {m['bias_pct']:+.2f} |")
    lines += ["", "Target (issue 2): within-10% >= 90% on 200 held-out networks."]
    publish("predictor_accuracy", "Whole-network prediction, NAS-Bench-Macro, local CPU", lines,
            write=not args.no_write)


if __name__ == "__main__":
    main()
