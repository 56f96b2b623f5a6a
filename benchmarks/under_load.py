"""Issue 15 target: figures that hold on a busy machine.

The demo's flow (plan `quick` measured on the local CPU, the xgboost predictor fitted on it, 100
held-out NAS-Bench-Macro networks measured end to end and scored) runs on a quiet machine and
with another process keeping one core busy during the first half of the run (the benchmark
starts and stops it: a Python busy loop, placed by the scheduler). Each is run with latbench's
protocol (`guarded`: timed calls whose thread was descheduled are timed again, and a batch
timed while other programs kept more than `--max-load` cores busy is timed again once the
machine is quiet - bench.load) and without either (`unguarded`: descheduled calls kept,
`--max-load off`, which still reports the load). Target: within-10% under load no more than 3
points below the quiet run.

Runs go in the order quiet / loaded, alternating the two protocols, `--repeats` times; the
figures are the median over repeats, with the machine's steal time (the hypervisor's share of
the CPUs) during each run and each run's figures on their own.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fresh_dir  # noqa: E402
from _report import publish  # noqa: E402

from latbench.bench.campaign import CampaignConfig, measure_into_dataset  # noqa: E402
from latbench.bench.load import DEFAULT_MAX_LOAD, steal_share  # noqa: E402
from latbench.bench.network_sets import resolve_networks  # noqa: E402
from latbench.bench.plans import load_plan, plan_subjects  # noqa: E402
from latbench.bench.runners import RunSettings  # noqa: E402
from latbench.bench.store import LatencyDataset  # noqa: E402
from latbench.device_agents import local_device  # noqa: E402
from latbench.device_agents.agent.latbench_agent import cpu_times  # noqa: E402
from latbench.predictor.evaluate import evaluate  # noqa: E402
from latbench.predictor.latency_predictor import LatencyPredictor  # noqa: E402

TARGET_POINTS = 3.0


class BusyCore:
    """Another program keeping one core busy for `seconds` (0: none), started at once."""

    def __init__(self, seconds: float) -> None:
        self.proc = None
        if seconds > 0:
            self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            self.timer = threading.Timer(seconds, self.stop)
            self.timer.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def one_run(out: Path, guarded: bool, busy_s: float, networks: int) -> dict:
    """The demo's steps 1-3 into `out`, with a busy core for the first `busy_s` seconds."""
    device = local_device(threads=1)
    config = CampaignConfig(settings=RunSettings(threads=1, retake_descheduled=guarded),
                            max_load=DEFAULT_MAX_LOAD if guarded else math.inf)
    plan = load_plan("quick")
    load_before = Path("/proc/loadavg").read_text().split()[0]
    started = time.perf_counter()
    cpu_before = {"cpu_times": cpu_times()}
    busy = BusyCore(busy_s)
    try:
        summary = measure_into_dataset(plan_subjects(plan), device, "onnxruntime",
                                       out / "dataset", config,
                                       card={"plan": plan.to_dict(), "flags": ["under_load"]})
        predictor = LatencyPredictor().fit(out / "dataset")
        held_out = resolve_networks(f"nasbench-macro:{networks}", seed=1,
                                    exclude=predictor.calibration_keys)
        report = evaluate(predictor, held_out, device, out / "eval", config=config)
    finally:
        busy.stop()
    seconds = time.perf_counter() - started
    steal = steal_share(cpu_before, {"cpu_times": cpu_times()})
    loads = [lane.get("load") or {} for part in (summary, report.campaign)
             for lane in part.control.values()]
    summary.merge(report.campaign)
    records = LatencyDataset.open(out / "dataset").records()
    kept = int(records["descheduled_kept"].fillna(0).sum())
    m = report.metrics.get("all") or next(iter(report.metrics.values()))
    return {"seconds": seconds, "within10": 100 * m["within10"], "rmspe": m["rmspe_pct"],
            "bias": m["bias_pct"], "steal": 100 * steal,
            "checked": summary.checked_runs,
            "retaken": summary.retaken_runs, "kept": summary.kept_descheduled_runs,
            "kept_in_dataset": kept, "redone": summary.redone_batches, "load": load_before,
            "waited": sum(part.get("waited_s") or 0.0 for part in loads),
            "refused": sum(part.get("refused_batches") or 0 for part in loads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--networks", type=int, default=100, help="held-out networks")
    parser.add_argument("--out", default="/tmp/latbench-bench/under_load")
    parser.add_argument("--guarded-only", action="store_true",
                        help="skip the unguarded protocol (half the time)")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    root = fresh_dir(args.out)
    runs: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        quiet_s = None
        for guarded in (True,) if args.guarded_only else (True, False):
            protocol = "guarded" if guarded else "unguarded"
            for condition in ("quiet", "loaded"):
                busy_s = 0.0 if condition == "quiet" else 0.5 * (quiet_s or 120.0)
                result = one_run(root / f"{repeat}-{protocol}-{condition}", guarded, busy_s,
                                 args.networks)
                if condition == "quiet":
                    quiet_s = result["seconds"]
                print(f"repeat {repeat} {protocol} {condition}: {result}", flush=True)
                runs.setdefault((protocol, condition), []).append(result)

    def med(protocol: str, condition: str, field: str) -> float:
        return statistics.median(r[field] for r in runs[(protocol, condition)])

    lines = [f"The demo's flow on the local CPU (plan `quick`, xgboost, {args.networks} held-out "
             "NAS-Bench-Macro networks, ONNX Runtime, 1 thread), quiet and with a Python busy "
             "loop started at the beginning of the run and stopped after half of the quiet "
             f"run's duration; median of {args.repeats} repeats per cell.", "",
             "| protocol | machine | within 10% | RMSPE % | bias % | timed calls retaken | "
             "descheduled calls kept | batches redone | waited for quiet s | batches not stored "
             "| steal % | minutes | each run: within 10% |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for protocol in [p for p in ("guarded", "unguarded") if (p, "quiet") in runs]:
        for condition in ("quiet", "loaded"):
            checked = med(protocol, condition, "checked")
            lines.append(
                f"| {protocol} | {condition} | {med(protocol, condition, 'within10'):.1f}% | "
                f"{med(protocol, condition, 'rmspe'):.2f} | "
                f"{med(protocol, condition, 'bias'):+.2f} | "
                f"{med(protocol, condition, 'retaken') / max(checked, 1):.2%} | "
                f"{med(protocol, condition, 'kept'):.0f} | "
                f"{med(protocol, condition, 'redone'):.0f} | "
                f"{med(protocol, condition, 'waited'):.0f} | "
                f"{med(protocol, condition, 'refused'):.0f} | "
                f"{med(protocol, condition, 'steal'):.1f} | "
                f"{med(protocol, condition, 'seconds') / 60:.1f} | "
                + " / ".join(f"{r['within10']:.0f}%" for r in runs[(protocol, condition)])
                + " |")
    gap = med("guarded", "quiet", "within10") - med("guarded", "loaded", "within10")
    before = (med("unguarded", "quiet", "within10") - med("unguarded", "loaded", "within10")
              if ("unguarded", "quiet") in runs else math.nan)
    lines += ["", f"Target: within-10% under load no more than {TARGET_POINTS:g} points below "
              f"quiet: **{'met' if gap <= TARGET_POINTS else 'not met'}** ({gap:+.1f} points"
              + ("" if math.isnan(before) else f"; {before:+.1f} unguarded") + ").",
              "1-minute load average at the start of each run: "
              + ", ".join(f"{p}/{c} " + "/".join(r["load"] for r in rs)
                          for (p, c), rs in runs.items()) + "."]
    publish("under_load", "Figures on a busy machine: the demo's flow with one core kept busy",
            lines, write=not args.no_write)


if __name__ == "__main__":
    main()
