"""Issue 15 item 6 targets: predictors of the median and p90 as accurate as the minimum's, and
search winners within budget by the median in every run.

Per run, from a fresh dataset: the `nasbench-macro` plan (kernels and 60 calibration networks)
measured on the local CPU together with N held-out NAS-Bench-Macro networks (their batches mixed
in time with the plan's; none calibrates anything). xgboost predictors are fitted for `min_ms`,
`median_ms` and `p90_ms` on that one dataset and scored on the held-out networks' measured
statistic of their own. Then the user's check: exhaustive search under three budgets (the 20th,
50th and 80th percentiles of the space's predicted latency) with the `min_ms` predictor and with
the `median_ms` one, budgets on the median (the default) and on the p90; every distinct winner
is measured afterwards, as `latbench search --measure` does, and judged by the budget's
statistic.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from _common import fresh_dir, measure_plan  # noqa: E402
from _report import publish  # noqa: E402

from latbench.bench.network_sets import resolve_networks  # noqa: E402
from latbench.bench.spaces import get_space  # noqa: E402
from latbench.bench.spaces.nasbench_macro import load_accuracy_table  # noqa: E402
from latbench.bench.store import LatencyDataset  # noqa: E402
from latbench.predictor.evaluate import error_metrics  # noqa: E402
from latbench.predictor.latency_predictor import LatencyPredictor  # noqa: E402
from latbench.search.budget import budget_target, measure_winners, search_budgets  # noqa: E402
from latbench.search.latency import LatencyTable, choices_matrix  # noqa: E402

DATA_DIR = ROOT.parent / "shared" / "data"
LEARNED = ("min_ms", "median_ms", "p90_ms")
SEARCHED = (("min_ms", "median_ms"), ("min_ms", "p90_ms"), ("median_ms", "median_ms"))
QUANTILES = (0.2, 0.5, 0.8)


def truth_spread(by_key, keys: list[str], statistic: str) -> tuple[float, float, float]:
    """How the held-out networks' `statistic` sits above their own minimum: the 5th and 95th
    percentiles of the ratio, and the share within 10% of its median. Even an exact predictor
    of the minimum, times the best constant, gets only that share within 10%: the ratio is
    the machine's noise during each network's measurement, which no architecture feature
    carries."""
    ratio = (by_key.loc[keys, statistic] / by_key.loc[keys, "min_ms"]).to_numpy(dtype=float)
    typical = float(np.median(ratio))
    return (float(np.percentile(ratio, 5)), float(np.percentile(ratio, 95)),
            float(np.mean(np.abs(ratio / typical - 1) <= 0.10)))


def one_run(networks: int, out: Path, seed: int) -> dict:
    candidates = resolve_networks(f"nasbench-macro:{networks}", seed=seed)
    measured = measure_plan("nasbench-macro", out / "dataset", sys.argv[1:],
                            extra=[dataclasses.replace(n, kernels=None) for n in candidates])
    calibration = {s.key for s in measured.subjects if s.subject == "network"}
    held_out = [n for n in candidates if n.key not in calibration]
    records = LatencyDataset.open(out / "dataset").records()
    by_key = records.set_index("key")
    predictors, scores = {}, {}
    for statistic in LEARNED:
        predictor = LatencyPredictor(cv_folds=0).fit(out / "dataset", statistic=statistic)
        predictors[statistic] = predictor.save(out / f"predictor-{statistic}")
        kept = [n for n in held_out if n.key in by_key.index]
        predicted = [predictor.predict(n.kernels).predicted_ms for n in kept]
        truth = [float(by_key.loc[n.key, statistic]) for n in kept]
        scores[statistic] = error_metrics(np.array(predicted), np.array(truth))
        scores[statistic]["gaps"] = predictor.info_["statistic_gaps"]
        scores[statistic]["spread"] = truth_spread(by_key, [n.key for n in kept], statistic)
    space = get_space("nasbench-macro")
    accuracy = load_accuracy_table(DATA_DIR)
    minimum = LatencyPredictor.load(predictors["min_ms"])
    latency = LatencyTable.from_predictor(space, minimum).latencies(
        choices_matrix(space.all_archs()))
    budgets = [float(f"{np.quantile(latency, q):.4g}") for q in QUANTILES]
    searches = []
    for learned, statistic in SEARCHED:
        predictor = LatencyPredictor.load(predictors[learned])
        target = budget_target(predictor, statistic)
        table = LatencyTable.from_predictor(space, predictor)
        results = search_budgets(space, table, accuracy, budgets, margin=target.margin,
                                 gap=target.gap)
        outcomes = measure_winners(space, results, predictor, measured.device,
                                   out / f"winners-{learned}-{statistic}", measured.config,
                                   statistic=statistic)
        searches.append((target, outcomes))
    return {"measured": measured, "held_out": len(held_out), "scores": scores,
            "searches": searches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", type=int, default=150,
                        help="held-out NAS-Bench-Macro networks per run (default 150)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="independent runs from scratch (default 3)")
    parser.add_argument("--out", default="/tmp/latbench-bench/user_statistics")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    runs = [one_run(args.networks, fresh_dir(Path(args.out) / f"run{i + 1}"), seed=3030 + i)
            for i in range(args.repeats)]
    first = runs[0]["measured"]
    lines = [
        f"Plan `nasbench-macro` ({sum(s.subject == 'op' for s in first.subjects)} kernels, "
        f"{sum(s.subject == 'network' for s in first.subjects)} calibration networks) and "
        f"{runs[0]['held_out']} held-out NAS-Bench-Macro networks measured in one campaign per "
        f"run ({np.mean([r['measured'].seconds for r in runs]):.0f} s each; ONNX Runtime CPU, 1 "
        "thread, 5 interleaved rounds x 20 runs). One xgboost predictor (composed) per statistic "
        f"on the same dataset, each scored against that statistic of the held-out networks. "
        f"Independent runs from fresh datasets: {args.repeats}.", "",
        "| run | statistic learned | n | within 10% | within 5% | RMSPE % | Spearman | bias % | "
        "held-out statistic / min: p5-p95 | within 10% of its median (ceiling) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, run in enumerate(runs, 1):
        for statistic, m in run["scores"].items():
            low, high, ceiling = m["spread"]
            spread = "" if statistic == "min_ms" else f"{low:.3f}-{high:.3f} | {ceiling:.1%}"
            lines.append(f"| {i} | {statistic} | {int(m['n'])} | {m['within10']:.1%} | "
                         f"{m['within5']:.1%} | {m['rmspe_pct']:.2f} | {m['spearman']:.3f} | "
                         f"{m['bias_pct']:+.2f} | {spread or ' |'} |")
    for statistic in LEARNED:
        within = [r["scores"][statistic]["within10"] for r in runs]
        lines.append(f"| mean | {statistic} | | {np.mean(within):.1%} | | "
                     f"{np.mean([r['scores'][statistic]['rmspe_pct'] for r in runs]):.2f} | | "
                     "| | |")
    lines += ["", "*Ceiling*: the share of held-out networks whose statistic / minimum lies "
              "within 10% of the run's median ratio - what an exact predictor of the minimum "
              "times the best constant would reach. The spread of that ratio is the machine's "
              "noise during each network's measurement, not a property of the architecture."]
    lines += ["", "Search (exhaustive, NAS-Bench-Macro accuracy table) under budgets at the "
              "20/50/80th percentiles of the minimum's predicted latency; every winner measured "
              "after the search, judged by the budget's statistic:", "",
              "| run | predictor learned | budget on | searched under budget / | "
              "winners within budget | measured / budget (max) |",
              "|---|---|---|---|---|---|"]
    total = within_total = 0
    for i, run in enumerate(runs, 1):
        for target, outcomes in run["searches"]:
            ok = [o.within_budget for o in outcomes]
            total += len(ok)
            within_total += sum(bool(x) for x in ok)
            worst = max(o.measured_ms / o.budget_ms for o in outcomes)
            lines.append(f"| {i} | {target.learned} | {target.statistic} | {target.factor:.3f} "
                         f"| {sum(bool(x) for x in ok)}/{len(ok)} | {worst:.3f} |")
    means = {s: np.mean([r["scores"][s]["within10"] for r in runs]) for s in LEARNED}
    met = all(means[s] >= 0.95 for s in ("median_ms", "p90_ms"))
    lines += ["", "Targets (issue 15): median and p90 predictors within 10% on >= 95% of "
              "held-out NAS-Bench-Macro networks: "
              + ", ".join(f"{s} {means[s]:.1%}" for s in LEARNED)
              + f" (**{'met' if met else 'not met'}**); search winners within budget by the "
              f"budget's statistic in 100% of runs: {within_total}/{total} "
              f"(**{'met' if within_total == total else 'not met'}**). The families are not "
              "scored here (issue 14: their truth does not yet repeat between campaigns)."]
    publish("user_statistics", "The statistic users see: median and p90 predictors, budgets "
            "on the median, NAS-Bench-Macro, local CPU", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
