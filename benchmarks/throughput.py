"""Issue 6 target: campaign throughput at the target precision - the stopping rule measures
>= 2x more specs per minute than a fixed 50-run protocol, at the same achieved precision (the
ratio from one run).

The same kernels (drawn, seeded, from the `nasbench-macro` plan) are measured by two whole
campaigns on the local CPU (ONNX Runtime, 1 thread, 10 warm-up calls, batches of 40), one per
protocol, interleaved batch by batch in ABBA order so both see the same machine:

- stopping rule: rounds of 10 calls until the 95% CI of the median is within 2% of it (at least
  20 runs; caps 1000 runs / 5 s per kernel; given up early when 2% is projected to take more
  than 4 x 5 s) - latbench's default;
- fixed: 5 interleaved rounds x 10 calls = 50 runs per kernel.

"At the target precision" counts a kernel when its achieved relative CI width of the median
(the `ci_rel_width` column, computed the same way for both) is <= 2%; throughput is such
kernels per minute of campaign wall time (export, agent start, model loading, warm-up, timing,
storing: everything a user waits for). Both protocols' overall figures are reported too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fresh_dir  # noqa: E402
from _report import publish  # noqa: E402

from latbench.bench.campaign import CampaignConfig, Subject, run_campaign  # noqa: E402
from latbench.bench.plans import build_specs, load_plan  # noqa: E402
from latbench.bench.runners import RunSettings  # noqa: E402
from latbench.bench.store import LatencyDataset  # noqa: E402
from latbench.device_agents import local_device  # noqa: E402

TARGET = 0.02
PROTOCOLS = {
    "stopping rule": RunSettings(threads=1, warmup=10, runs=10, target_ci=TARGET),
    "fixed 50 runs": RunSettings(threads=1, warmup=10, runs=10, rounds=5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--specs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="/tmp/latbench-bench/throughput")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    out = fresh_dir(args.out)
    specs = build_specs(load_plan("nasbench-macro"))
    rng = np.random.default_rng(args.seed)
    picked = [specs[i] for i in sorted(rng.choice(len(specs), min(args.specs, len(specs)),
                                                  replace=False))]
    subjects = [Subject.op(s) for s in picked]
    device = local_device(threads=1)
    load_before = os.getloadavg()[0]
    names = list(PROTOCOLS)
    datasets = {n: LatencyDataset.create(out / f"p{i}", {"protocol": n})
                for i, n in enumerate(names)}
    seconds = dict.fromkeys(names, 0.0)
    chunks = [subjects[i:i + args.batch_size] for i in range(0, len(subjects), args.batch_size)]
    for index, chunk in enumerate(chunks):
        for name in (names if index % 2 == 0 else names[::-1]):
            config = CampaignConfig(settings=PROTOCOLS[name], batch_size=args.batch_size,
                                    calibration_runs=0)
            started = time.perf_counter()
            summary = run_campaign(chunk, [device], ["onnxruntime"], datasets[name], config)
            seconds[name] += time.perf_counter() - started
            if summary.failed:
                raise SystemExit(f"throughput: {summary.failed} jobs failed: "
                                 f"{summary.failures[:3]}")
    load_after = os.getloadavg()[0]
    rows, at_target_rate = [], {}
    for name in names:
        rec = datasets[name].records()
        width = rec["ci_rel_width"].astype(float)
        ok = int((width <= TARGET).sum())
        minutes = seconds[name] / 60
        at_target_rate[name] = ok / minutes
        rows.append(f"| {name} | `{PROTOCOLS[name].key('onnxruntime')}` | {len(rec)} | "
                    f"{seconds[name]:.0f} | {len(rec) / minutes:.0f} | {ok} ({ok / len(rec):.0%})"
                    f" | **{ok / minutes:.0f}** | {width.median():.2%} | "
                    f"{width.quantile(0.9):.2%} | {rec['n_runs'].mean():.0f} |")
    ratio = at_target_rate[names[0]] / at_target_rate[names[1]]
    met = ratio >= 2.0
    stop = datasets[names[0]].records()
    reasons = stop["stop_reason"].value_counts()
    lines = [
        f"{len(subjects)} kernels drawn from the `nasbench-macro` plan (seed {args.seed}), "
        f"{float(stop['median_ms'].min()):.3f}-{float(stop['median_ms'].max()):.2f} ms each; "
        "local CPU, ONNX Runtime, 1 thread; the two protocols interleaved batch by batch (ABBA, "
        f"batches of {args.batch_size}); load average {load_before:.1f} before, "
        f"{load_after:.1f} after (other jobs share the 2 cores). Precision = relative width of "
        "the 95% CI of the median (distribution-free, from order statistics).", "",
        "| protocol | settings | kernels | seconds | kernels/min | at <= 2% CI | kernels/min "
        "at <= 2% | median CI width | p90 CI width | mean runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        f"Stopping rule, why kernels stopped: "
        f"{', '.join(f'{k} {v}' for k, v in reasons.items())}; "
        f"{int((stop['n_runs'] <= 50).sum())} kernels needed at most 50 runs, "
        f"{int((stop['n_runs'] > 50).sum())} more (median {stop['n_runs'].median():.0f}).",
        f"Throughput at the target precision, stopping rule / fixed 50 runs: **{ratio:.1f}x** "
        f"(target >= 2x: **{'met' if met else 'NOT met'}**, one run). The fixed protocol "
        "spends 50 runs on every kernel: too many for the stable ones, too few for the noisy "
        "ones (most kernels of this plan run for tens of microseconds, where this shared "
        "machine's jitter is several percent), which end above 2%. The rule stops the first "
        "early, gives the second the runs they need, and gives up early on slow kernels "
        "that cannot reach 2% within its time cap (`futile`). The ratio depends on how noisy "
        "the machine is during the run: the quieter it is, the more kernels the fixed "
        "protocol brings to 2% by itself, and the closer the ratio gets to 1.",
    ]
    publish("throughput", "Campaign throughput at the target precision, local CPU", lines,
            write=not args.no_write)


if __name__ == "__main__":
    main()
