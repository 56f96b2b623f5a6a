"""Issue 16 item 5: every platform this machine has, measured, fitted and scored the way a user
would do it - one row per platform in one table.

A platform is runtime (and delegate) x precision x threads. For each one available here - ONNX
Runtime, LiteRT with XNNPACK, LiteRT's built-in kernels; FP32, INT8, FP16 where the runtime has
it; 1 and 2 threads - the script runs the three commands of the README as subprocesses:

    latbench bench ops --plan PLAN --runtime R [--delegate D] --precision P --threads T --out DATA
    latbench predictor fit --data DATA --out PRED
    latbench predictor eval --predictor PRED --networks HELD_OUT --seed 2024 --passes 3

and reports within-10%, RMSPE and Spearman per held-out family, and the minutes the platform's
campaign took (what building a table for it costs). The held-out networks are measured in
`--passes` whole passes (default 3) and scored against their median: one pass carries every
slow phase of the machine into the truth. Platforms run one after the other, never two
timings at once. `--platforms` picks a subset by label (e.g. `onnxruntime/int8/1t`).

`--runs N` measures every platform N times from scratch (run 1 of every platform, then run 2,
...: a slow phase of the machine falls on several platforms, not on one platform's every run)
and reports each cell as the median over the runs, with every run's overall within-10%: on this
VM one platform's two campaigns differed by as much as 26 points. `--summarize` rebuilds the
table from the finished runs in --out without measuring anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import HELD_OUT_SEED, MATRIX_OUT, fresh_dir  # noqa: E402
from _report import publish  # noqa: E402

LATBENCH = str(Path(sys.executable).with_name("latbench"))
# Held-out networks whose kernel kinds the `quick` plan covers.
DEFAULT_NETWORKS = "nasbench-macro:50,mobilenetv2:5,resnet:5,resnet50:5,vit:5"


@dataclass(frozen=True)
class MatrixPlatform:
    runtime: str
    delegate: str  # "" for ONNX Runtime
    precision: str  # fp32 | int8 | fp16
    threads: int

    @property
    def label(self) -> str:
        runtime = f"{self.runtime}-{self.delegate}" if self.delegate else self.runtime
        return f"{runtime}/{self.precision}/{self.threads}t"

    def flags(self) -> list[str]:
        out = ["--runtime", self.runtime, "--precision", self.precision,
               "--threads", str(self.threads)]
        return out + (["--delegate", self.delegate] if self.delegate else [])


def all_platforms() -> list[MatrixPlatform]:
    """The matrix. FP16 on ONNX Runtime stays in it: `bench ops` refuses it off ARM64 and the
    row says why (bench/runners/onnxruntime.py, `kernel_refusal`)."""
    runtimes = [("onnxruntime", ""), ("litert", "xnnpack"), ("litert", "builtin")]
    return [MatrixPlatform(r, d, p, t) for r, d in runtimes for p in ("fp32", "int8", "fp16")
            for t in (1, 2)]


def run(argv: list[str], log: Path) -> tuple[int, float]:
    """Run one latbench command, its output appended to `log`; (exit code, seconds)."""
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "COLUMNS": "200"}).returncode
    return code, time.perf_counter() - started


def refusal(log: Path) -> str | None:
    """The one-line error latbench ended `log` with, if any (a platform it refuses here)."""
    lines = log.read_text().strip().splitlines()
    prefix = "latbench: error: "
    return lines[-1][len(prefix):] if lines and lines[-1].startswith(prefix) else None


def measure_platform(p: MatrixPlatform, plan: str, networks: str, folder: Path,
                     passes: int) -> dict[str, object]:
    """One fresh run of a platform in `folder` (resumed where it holds an earlier one); the
    held-out networks measured in `passes` whole passes and scored against their median."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.txt"
    data, pred, ev = folder / "data", folder / "predictor", folder / "eval"
    row: dict[str, object] = {"platform": p.label}
    timed = folder / "campaign_seconds.txt"  # a resumed run (--keep) reports the first campaign
    # seconds of attempts that stopped unfinished (jobs left for a quiet machine), which the
    # resumed campaign's time adds to: the platform cost all of them
    unfinished = folder / "campaign_seconds_unfinished.txt"
    before = float(unfinished.read_text()) if unfinished.exists() else 0.0
    code, seconds = run([LATBENCH, "bench", "ops", "--plan", plan, *p.flags(), "--out",
                         str(data)], log)
    if code:
        refused = refusal(log)
        if refused:  # latbench said why in one line (a platform this machine cannot measure)
            row["error"] = f"bench ops: {refused}"
            return row
        unfinished.write_text(f"{before + seconds}\n")
        row["error"] = f"bench ops exited {code} (see {log})"
        row["campaign_min"] = (before + seconds) / 60
        return row
    if not timed.exists():
        timed.write_text(f"{before + seconds}\n")
    row["campaign_min"] = float(timed.read_text()) / 60
    code, _ = run([LATBENCH, "predictor", "fit", "--data", str(data), "--out", str(pred)], log)
    if code:
        row["error"] = f"predictor fit exited {code} (see {log})"
        return row
    code, seconds = run([LATBENCH, "predictor", "eval", "--predictor", str(pred), "--networks",
                         networks, "--seed", str(HELD_OUT_SEED), "--runtime", p.runtime,
                         "--passes", str(passes), "--out", str(ev)], log)
    if code:
        row["error"] = f"predictor eval exited {code} (see {log})"
        return row
    evaluated = folder / "eval_seconds.txt"  # likewise the first evaluation's time
    if not evaluated.exists():
        evaluated.write_text(f"{seconds}\n")
    return read_run(p, folder)


def read_run(p: MatrixPlatform, folder: Path) -> dict[str, object]:
    """The row of a finished run from its folder (an error row when it did not finish)."""
    row: dict[str, object] = {"platform": p.label}
    files = [folder / "campaign_seconds.txt", folder / "eval_seconds.txt",
             folder / "eval" / "eval.json", folder / "eval" / "predictions.csv"]
    if not all(f.exists() for f in files):
        row["error"] = f"no finished run in {folder}"
        return row
    row["campaign_min"] = float(files[0].read_text()) / 60
    row["eval_min"] = float(files[1].read_text()) / 60
    summary = json.loads(files[2].read_text())
    row["metrics"] = summary["metrics"]
    row["levelled"] = levelled_within10(files[3])
    # an eval.json written before the scores at the dataset's speed existed has none
    row["at_speed"] = (summary.get("at_dataset_speed") or {}).get("metrics")
    return row


def levelled_within10(predictions: Path) -> float:
    """Within 10% once every prediction is scaled by one constant, the median measured /
    predicted ratio of the run's held-out networks: what is left when the machine ran at
    another speed while the networks were measured than while the kernels were (the eval's
    reference probe says by how much), a shift no predictor can see."""
    import pandas as pd

    from latbench.predictor.evaluate import error_metrics

    table = pd.read_csv(predictions)
    level = (table["measured_ms"] / table["predicted_ms"]).median()
    return error_metrics(level * table["predicted_ms"], table["measured_ms"])["within10"]


def pct(value: object) -> str:
    return "" if value is None else f"{100 * float(value):.1f}%"


def median_row(label: str, runs: list[dict[str, object]]) -> dict[str, object]:
    """A platform's runs as one row: every figure the median over the runs that finished."""
    done = [r for r in runs if "error" not in r]
    if not done:
        return {**runs[-1], "platform": label}
    metrics: dict[str, dict[str, float]] = {}
    for family in {f for r in done for f in r["metrics"]}:
        rows = [r["metrics"][family] for r in done if family in r["metrics"]]
        metrics[family] = {k: statistics.median(float(m[k]) for m in rows)
                           for k in ("n", "within10", "rmspe_pct", "spearman")}
    at_speed = [r["at_speed"] for r in done if r.get("at_speed")]
    speed = {family: statistics.median(float(m[family]["within10"]) for m in at_speed
                                       if family in m)
             for family in {f for m in at_speed for f in m}}
    return {"platform": label, "metrics": metrics, "at_speed_within10": speed or None,
            "at_speed_runs": len(at_speed),
            "campaign_min": statistics.median(float(r["campaign_min"]) for r in done),
            "eval_min": statistics.median(float(r["eval_min"]) for r in done),
            "levelled": statistics.median(float(r["levelled"]) for r in done),
            "runs": [pct(r["metrics"]["all"]["within10"]) if "error" not in r
                     else "not finished" for r in runs]}


def tables(rows: list[dict[str, object]]) -> list[str]:
    families = sorted({f for r in rows for f in r.get("metrics", {}) if f != "all"})
    header = ["platform", "campaign min", "eval min", "n", "within 10%", "each run", "levelled",
              "RMSPE %", "Spearman", *(f"{f} within 10% / Spearman" for f in families)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if "error" in r:
            minutes = f"{r['campaign_min']:.1f}" if "campaign_min" in r else ""
            lines.append(f"| {r['platform']} | {minutes} | | | {r['error']} | | | | |"
                         + " |" * len(families))
            continue
        m = r["metrics"]
        a = m["all"]
        cells = [f"{pct(m[f]['within10'])} / {m[f]['spearman']:.3f}" if f in m else ""
                 for f in families]
        each = ", ".join(r.get("runs", [pct(a["within10"])]))
        lines.append(f"| {r['platform']} | {r['campaign_min']:.1f} | {r['eval_min']:.1f} | "
                     f"{int(a['n'])} | {pct(a['within10'])} | {each} | {pct(r['levelled'])} | "
                     f"{a['rmspe_pct']:.2f} | "
                     f"{a['spearman']:.3f} | " + " | ".join(cells) + " |")
    return lines


def speed_tables(rows: list[dict[str, object]]) -> list[str]:
    """Within 10% per family against the held-out times scaled by the reference probe to the
    speed the platform's dataset was measured at (`predictor eval`'s scores at the dataset's
    speed), median over the runs that have them; [] when none has."""
    rows = [r for r in rows if r.get("at_speed_within10")]
    if not rows:
        return []
    families = sorted({f for r in rows for f in r["at_speed_within10"] if f != "all"})
    lines = ["| platform | runs | within 10% | " + " | ".join(families) + " |",
             "|---|---|---|" + "---|" * len(families)]
    for r in rows:
        speed = r["at_speed_within10"]
        lines.append(f"| {r['platform']} | {r['at_speed_runs']} | {pct(speed.get('all'))} | "
                     + " | ".join(pct(speed.get(f)) for f in families) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", default="platforms", help="plan every platform measures")
    parser.add_argument("--networks", default=DEFAULT_NETWORKS, help="held-out networks")
    parser.add_argument("--platforms", help="comma-separated labels to run (default: all), "
                        "e.g. onnxruntime/fp32/1t,litert-xnnpack/int8/2t")
    parser.add_argument("--out", default=str(MATRIX_OUT))
    parser.add_argument("--keep", action="store_true", help="resume an earlier run's output")
    parser.add_argument("--runs", type=int, default=3, help="fresh runs per platform; figures "
                        "are medians over them (default 3)")
    parser.add_argument("--passes", type=int, default=3, help="whole passes over the held-out "
                        "networks per evaluation, scored against their median (default 3: "
                        "on a VM whose speed moved in bursts one pass put 19%% of a sound "
                        "predictor's networks outside 10%%, three passes none)")
    parser.add_argument("--summarize", action="store_true", help="measure nothing: the "
                        "table of the finished runs already in --out")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    chosen = all_platforms()
    if args.platforms:
        wanted = set(args.platforms.split(","))
        unknown = wanted - {p.label for p in chosen}
        if unknown:
            parser.error(f"unknown platform {sorted(unknown)[0]!r}; known: "
                         + ", ".join(p.label for p in chosen))
        chosen = [p for p in chosen if p.label in wanted]
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.passes < 1:
        parser.error("--passes must be at least 1")
    out = fresh_dir(args.out, keep=args.keep or args.summarize)
    runs: dict[str, list[dict[str, object]]] = {p.label: [] for p in chosen}
    for index in range(1, args.runs + 1):
        for p in chosen:
            folder = out / p.label.replace("/", "_") / f"run{index}"
            if args.summarize:
                runs[p.label].append(read_run(p, folder))
                continue
            print(f"== {p.label} run {index}/{args.runs}", flush=True)
            runs[p.label].append(measure_platform(p, args.plan, args.networks, folder,
                                                  args.passes))
            print("\n".join(tables(runs[p.label][-1:])), flush=True)
    rows = [median_row(label, measured) for label, measured in runs.items()]
    load = os.getloadavg()[0]
    body = [f"Plan `{args.plan}` measured per platform on the local CPU, a predictor fitted on "
            f"it (`latbench predictor fit`, defaults), and held-out networks `{args.networks}` "
            f"(seed {HELD_OUT_SEED}) measured in {args.passes} whole pass(es) and scored "
            f"against their median by `latbench predictor eval` at the same platform; "
            f"{args.runs} fresh run(s) per platform, interleaved, every figure "
            f"the median over them (each run: that run's overall within 10%; levelled: within "
            f"10% once one constant, the median measured / predicted ratio of the run, "
            f"removes the machine's speed shift between campaign and evaluation). Load "
            f"average {load:.1f} at the end. Every family cell: within 10% / Spearman.", "",
            *tables(rows)]
    if speed := speed_tables(rows):
        body += ["", "The same held-out networks at the dataset's speed: each measured time "
                 "scaled by the predictor's dataset's reference probe over the evaluation's "
                 "(`predictor eval`'s second score; the probe is measured in every batch of "
                 "both, so nothing here uses the truth to level). Within 10%, median over the "
                 "runs:", "", *speed]
    publish("platform_matrix", "Platform matrix: runtime x precision x threads, local CPU",
            body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
