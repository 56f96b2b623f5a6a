"""Issue 6 target: repeatability on the local CPU - two full measurements of the same 200
kernels, median relative difference <= 2% and p90 <= 5%.

200 kernels drawn (seeded) from the `nasbench-macro` plan are each measured twice, A and B,
with latbench's default settings (ONNX Runtime CPU, 1 thread, 10 warm-up calls, stopping rule:
95% CI of the median within 2%); per statistic, the median and p90 over kernels of |B/A - 1|
(`bench.repeat.compare_records`). Two designs, both reported:

1. Interleaved re-measurement (the measurement's floor): A and B are two separately loaded copies
   of each kernel - own session, own warm-up, own stopping rule - timed in the same agent calls
   (batches of 20 kernels x 2 copies, A-block/B-block order alternating), so both see the same
   machine state. What differs between them is what differs between two sessions of the same
   model (memory placement, which core) plus sampling noise: the repeatability of the
   measurement itself.
2. Two separate campaigns, A and B, interleaved batch by batch in ABBA order (each with its own
   agent calls, calibration and drift control): two full measurements of the same kernels, as
   the issue words the target and as `latbench bench repeat` does it for a user's dataset. This
   adds how much the shared machine's state changed between the campaigns' batches.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fresh_dir  # noqa: E402
from _report import publish  # noqa: E402

from latbench.bench.campaign import CampaignConfig, Subject, run_campaign  # noqa: E402
from latbench.bench.plans import build_specs, load_plan  # noqa: E402
from latbench.bench.repeat import compare_records  # noqa: E402
from latbench.bench.runners import RunSettings  # noqa: E402
from latbench.bench.store import LatencyDataset  # noqa: E402
from latbench.device_agents import local_device  # noqa: E402

TARGET_MEDIAN, TARGET_P90 = 0.02, 0.05
STRICT_MEDIAN, STRICT_P90 = 0.01, 0.03  # issue 15: two campaigns of the same 200 kernels
STATS = ("min_ms", "round_min_median_ms", "median_ms", "mean_ms", "p90_ms")


def pick_specs(n: int, seed: int) -> list:
    specs = build_specs(load_plan("nasbench-macro"))
    rng = np.random.default_rng(seed)
    return [specs[i] for i in sorted(rng.choice(len(specs), min(n, len(specs)), replace=False))]


def interleaved_pairs(subjects: list, settings: RunSettings, device, batch_size: int
                      ) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Two copies of every kernel measured in the same agent calls: (A frame, B frame, s)."""
    from latbench.bench.runners import ModelFile, get_runner

    runner = get_runner("onnxruntime")
    rows: dict[str, list[dict]] = {"A": [], "B": []}
    half = max(1, batch_size // 2)
    started = time.perf_counter()
    for start in range(0, len(subjects), half):
        chunk = subjects[start:start + half]
        data = [s.model_bytes(runner) for s in chunk]
        order = "AB" if (start // half) % 2 == 0 else "BA"
        models = [ModelFile(f"{copy}{i}", d) for copy in order for i, d in enumerate(data)]
        result = runner.measure(device, models, settings, timeout_s=3600)
        for m in result.measurements:
            stats = m.stats
            if stats is None:
                raise SystemExit(f"repeatability: {m.id} failed: {m.error}")
            quality = m.quality(settings.confidence)
            rows[m.id[0]].append({"key": chunk[int(m.id[1:])].key, "device": device.name,
                                  "runtime": "onnxruntime", "settings": "interleaved",
                                  "min_ms": stats.min_ms, "median_ms": stats.median_ms,
                                  "mean_ms": stats.mean_ms, "p90_ms": stats.p90_ms,
                                  "round_min_median_ms": m.round_min_median_ms,
                                  "n_runs": stats.n_runs, "stop_reason": m.stop_reason,
                                  "ci_rel_width": quality.ci_rel_width if quality else np.nan})
    return pd.DataFrame(rows["A"]), pd.DataFrame(rows["B"]), time.perf_counter() - started


def separate_campaigns(subjects: list, settings: RunSettings, device, batch_size: int,
                       out: Path) -> tuple[pd.DataFrame, pd.DataFrame, float, int, int]:
    """Two whole campaigns, batch by batch in ABBA order: (A, B, seconds, redone, flagged)."""
    config = CampaignConfig(settings=settings, batch_size=batch_size, calibration_runs=1)
    datasets = {name: LatencyDataset.create(out / name, {"run": name}) for name in "AB"}
    redone = flagged = 0
    started = time.perf_counter()
    chunks = [subjects[i:i + batch_size] for i in range(0, len(subjects), batch_size)]
    for index, chunk in enumerate(chunks):
        for name in ("AB" if index % 2 == 0 else "BA"):
            summary = run_campaign(chunk, [device], ["onnxruntime"], datasets[name], config)
            redone += summary.redone_batches
            flagged += summary.drifted_batches
            if summary.failed:
                raise SystemExit(f"repeatability: {summary.failed} jobs failed: "
                                 f"{summary.failures[:3]}")
    a, b = (datasets[n].records() for n in "AB")
    return a, b, time.perf_counter() - started, redone, flagged


def table(metrics: dict, best: str | None, shift: bool) -> list[str]:
    lines = ["| statistic | median \\|B/A - 1\\| | p90 | mean | max |"
             + (" median shift B vs A |" if shift else ""),
             "|---|---|---|---|---|" + ("---|" if shift else "")]
    for stat, m in metrics.items():
        mark = " (most repeatable)" if stat == best else ""
        lines.append(f"| `{stat}`{mark} | {m['median']:.2%} | {m['p90']:.2%} | {m['mean']:.2%} "
                     f"| {m['max']:.2%} |" + (f" {m['signed_median']:+.2%} |" if shift else ""))
    return lines


def most_repeatable(metrics: dict) -> str:
    return min(metrics, key=lambda s: (metrics[s]["p90"], metrics[s]["median"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--specs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixed-runs", action="store_true",
                        help="measure with the fixed 5 x 20 protocol instead of the stopping rule")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--target-ci", type=float, default=0.02)
    parser.add_argument("--min-runs", type=int, default=20)
    parser.add_argument("--affinity", type=int, nargs="+", default=None,
                        help="pin the agent to these CPUs")
    parser.add_argument("--no-campaigns", dest="campaigns", action="store_false",
                        help="skip the two-separate-campaigns design")
    parser.add_argument("--out", default="/tmp/latbench-bench/repeatability")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    out = fresh_dir(args.out)
    settings = (RunSettings(threads=1, warmup=args.warmup) if args.fixed_runs else
                RunSettings(threads=1, warmup=args.warmup, runs=10, target_ci=args.target_ci,
                            min_runs=args.min_runs))
    device = local_device(threads=1, cpu_affinity=tuple(args.affinity) if args.affinity else None)
    subjects = [Subject.op(s) for s in pick_specs(args.specs, args.seed)]
    load_before = os.getloadavg()[0]
    a, b, seconds = interleaved_pairs(subjects, settings, device, args.batch_size)
    metrics, _ = compare_records(a, b, STATS)
    best = most_repeatable(metrics)
    m = metrics[best]
    met = m["median"] <= TARGET_MEDIAN and m["p90"] <= TARGET_P90
    lines = [
        f"{len(a)} kernels drawn from the `nasbench-macro` plan (seed {args.seed}; "
        f"{float(a['median_ms'].min()):.3f}-{float(a['median_ms'].max()):.2f} ms each), each "
        f"measured twice; settings `{settings.key('onnxruntime')}`; load average "
        f"{load_before:.1f} at the start (other jobs share the 2 cores). The statistic held to "
        "the target is the most repeatable one of the run (least p90, marked).", "",
        "**1. Interleaved re-measurement** (the measurement's floor): two separately loaded copies "
        "of every kernel, each with its own warm-up and stopping rule, timed in the same agent "
        f"calls (20 kernels x 2 copies per call) - {seconds:.0f} s. Achieved CI width of the "
        f"median: median {float(a['ci_rel_width'].median()):.2%}, p90 "
        f"{float(a['ci_rel_width'].quantile(0.9)):.2%} (stopped: "
        f"{', '.join(f'{k} {v}' for k, v in a['stop_reason'].value_counts().items())}).", "",
        *table(metrics, best, shift=False), "",
        f"On `{best}`: {m['median']:.2%} / {m['p90']:.2%} "
        f"({'within' if met else 'outside'} the target's bounds even for two copies measured "
        "side by side).",
    ]
    if args.campaigns:
        ca, cb, seconds, redone, flagged = separate_campaigns(subjects, settings, device,
                                                              args.batch_size, out)
        camp_metrics, _ = compare_records(ca, cb, STATS)
        camp_best = most_repeatable(camp_metrics)
        cm = camp_metrics[camp_best]
        camp_met = cm["median"] <= TARGET_MEDIAN and cm["p90"] <= TARGET_P90
        lines += [
            "", "**2. Two separate campaigns** A and B (each its own agent calls, calibration "
            f"and drift control), interleaved batch by batch (ABBA, batches of "
            f"{args.batch_size}) - {seconds:.0f} s, {redone} batches redone after a slow "
            f"phase, {flagged} stored flagged as drifted:", "",
            *table(camp_metrics, camp_best, shift=True), "",
            f"Target (issue 6, two full measurements): median <= {TARGET_MEDIAN:.0%} and p90 <= "
            f"{TARGET_P90:.0%}, here on `{camp_best}`: "
            f"**{'met' if camp_met else 'NOT met'}** ({cm['median']:.2%} / {cm['p90']:.2%}); "
            f"issue 15's stricter median <= {STRICT_MEDIAN:.0%} and p90 <= {STRICT_P90:.0%}: "
            f"**{'met' if cm['median'] <= STRICT_MEDIAN and cm['p90'] <= STRICT_P90 else 'NOT met'}"
            "**. "
            + ("Worse than (1): what (2) adds is this shared machine's state changing between "
               "the two campaigns' batches (other jobs on its 2 cores), "
               + (f"here partly as a uniform shift of B against A ({cm['signed_median']:+.1%})."
                  if abs(cm["signed_median"]) > 0.005 else
                  "kernel by kernel rather than as a uniform shift.")
               if cm["p90"] > 1.2 * m["p90"] else
               "Close to (1) in this run: the machine's state changed little between the two "
               "campaigns' batches.")
            + " `latbench bench repeat` reports this figure for a user's own dataset.",
        ]
    lines += ["", f"`min_ms` is latbench's default statistic for predictors (`predictor fit "
              f"--statistic`); in this run the most repeatable statistic was `{best}`."]
    publish("repeatability", "Repeatability of two full measurements, local CPU", lines,
            write=not args.no_write)


if __name__ == "__main__":
    main()
