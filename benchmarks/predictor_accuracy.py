"""Issue 2 target: whole-network prediction on held-out NAS-Bench-Macro networks, local CPU.

Builds an operator dataset with a plan (default `nasbench-macro`: the space's kernels, their
primitives, neighbours, random kernels and 60 calibration networks spread among them), fits the
xgboost predictor (min_ms, composition calibrated on those networks), measures N random held-out
architectures end to end with the same runner and settings (ONNX Runtime, 1 thread), and reports
within-10%, RMSPE and Spearman - with and without the composition step, on the same
measurements. `--repeats` runs the whole thing several times from scratch (a fresh dataset each
time), because on a shared machine the state drifts between runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fresh_dir, measure_plan  # noqa: E402
from _report import publish  # noqa: E402

from latbench.bench.network_sets import resolve_networks  # noqa: E402
from latbench.predictor.evaluate import evaluate, write_report  # noqa: E402
from latbench.predictor.latency_predictor import LatencyPredictor  # noqa: E402

VARIANTS = (("composed", "composed", True), ("kernel sum", "sum", False))


def one_run(plan: str, networks: int, out: Path, keep: bool, seed: int) -> dict:
    out = fresh_dir(out, keep)
    measured = measure_plan(plan, out / "dataset", sys.argv[1:])
    fitted = {}
    for name, tag, calibrate in VARIANTS:
        fitted[name] = LatencyPredictor(calibrate=calibrate, cv_folds=0).fit(out / "dataset")
        fitted[name].save(out / f"predictor-{tag}")
    held_out = resolve_networks(f"nasbench-macro:{networks}", seed=seed,
                                exclude=fitted["composed"].calibration_keys)
    metrics = {}
    for name, tag, _ in VARIANTS:
        # Both predictors share one measurement of the held-out networks (resumed dataset).
        report = evaluate(fitted[name], held_out, measured.device, out / "eval",
                          config=measured.config)
        write_report(report, out / f"eval-{tag}")
        metrics[name] = report.metrics["nasbench-macro"]
    return {"measured": measured, "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", default="nasbench-macro")
    parser.add_argument("--networks", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3,
                        help="independent runs from scratch (default 3)")
    parser.add_argument("--out", default="/tmp/latbench-bench/predictor_accuracy")
    parser.add_argument("--keep", action="store_true", help="resume from an earlier --out")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    runs = [one_run(args.plan, args.networks, Path(args.out) / f"run{i + 1}", args.keep,
                    seed=2024 + i) for i in range(args.repeats)]
    first = runs[0]["measured"]
    lines = [
        f"Plan `{args.plan}`: {sum(s.subject == 'op' for s in first.subjects)} kernels and "
        f"{sum(s.subject == 'network' for s in first.subjects)} calibration networks, measured "
        f"in {np.mean([r['measured'].seconds for r in runs]):.0f} s per run. Held-out: "
        f"{args.networks} random NAS-Bench-Macro architectures per run (none used for "
        "calibration), measured end to end with the same runner and settings (ONNX Runtime "
        "CPU, 1 thread, 5 interleaved rounds x 20 runs, statistic `min_ms`). "
        f"{args.repeats} independent runs, each from a fresh dataset.", "",
        "| run | predictor | n | within 10% | within 5% | RMSPE % | RMSE ms | Spearman | bias % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, run in enumerate(runs, 1):
        for name, m in run["metrics"].items():
            lines.append(f"| {i} | xgboost, {name} | {int(m['n'])} | {m['within10']:.1%} | "
                         f"{m['within5']:.1%} | {m['rmspe_pct']:.2f} | {m['rmse_ms']:.4f} | "
                         f"{m['spearman']:.3f} | {m['bias_pct']:+.2f} |")
    for name, _, _ in VARIANTS:
        within = [r["metrics"][name]["within10"] for r in runs]
        lines.append(f"| mean | xgboost, {name} | {args.networks} | {np.mean(within):.1%} | | "
                     f"{np.mean([r['metrics'][name]['rmspe_pct'] for r in runs]):.2f} | | "
                     f"{np.mean([r['metrics'][name]['spearman'] for r in runs]):.3f} | |")
    lines += ["", "Target (issue 2): within-10% >= 90% on 200 held-out networks. The plain "
              "kernel sum swings with the machine's state between the kernels' and the "
              "networks' measurements; the composition, fitted on calibration networks measured "
              "in the same batches as the kernels, follows it."]
    publish("predictor_accuracy", "Whole-network prediction, NAS-Bench-Macro, local CPU", lines,
            write=not args.no_write)


if __name__ == "__main__":
    main()
