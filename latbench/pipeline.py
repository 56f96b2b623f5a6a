"""The whole flow on one device, written into runs/<timestamp>/ (what `latbench demo` runs).

measure kernels -> dataset -> fit predictor -> held-out networks measured end to end -> search
under three budgets -> measure the winners -> predict and measure two models a user might bring
(a CNN and a vision transformer exported from PyTorch) -> report.md. Each step is the same
library call a user would make with the CLI, so the demo doubles as the end-to-end check of the
spine.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from latbench.bench.campaign import CampaignConfig, measure_into_dataset
from latbench.bench.network_sets import resolve_networks
from latbench.bench.plans import load_plan, plan_subjects
from latbench.bench.runners import RunSettings
from latbench.bench.spaces import get_space
from latbench.bench.spaces.nasbench_macro import PUBLIC_SOURCE, load_accuracy_table
from latbench.bench.store import LatencyDataset, atomic_write_text
from latbench.device_agents import Device, local_device
from latbench.errors import LatbenchError
from latbench.extras import available, can_plot
from latbench.predictor.evaluate import evaluate, write_report
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.progress import Bars
from latbench.search.budget import (
    OUTCOME_HEADER,
    budget_target,
    measure_winners,
    search_budgets,
)
from latbench.search.latency import LatencyTable, choices_matrix
from latbench.tables import print_table
from latbench.user_models import ROW_HEADER as USER_MODEL_HEADER
from latbench.user_models import UserModelResult, predict_and_measure
from latbench.user_models import markdown as user_models_markdown

RUNTIME = "onnxruntime"
BUDGET_QUANTILES = (0.2, 0.5, 0.8)


@dataclass(frozen=True)
class DemoOptions:
    quick: bool = True
    data_dir: Path | None = None
    runs_root: Path = Path("runs")
    networks: int | None = None
    seed: int = 0
    families: tuple[str, ...] = field(default=())
    plan_name: str | None = None  # a preset or plan file instead of the default
    print_summary: bool = True  # the summary tables on stdout (off: report.json only)
    user_models: bool = True  # end with the two models a user might bring (needs torch)

    @property
    def plan(self) -> str:
        return self.plan_name or ("quick" if self.quick else "nasbench-macro")

    @property
    def n_networks(self) -> int:
        return self.networks or (50 if self.quick else 200)

    @property
    def network_spec(self) -> str:
        families = self.families or (() if self.quick else
                                     ("mobilenetv2:8", "resnet:8", "efficientnet:8"))
        return ",".join((f"nasbench-macro:{self.n_networks}", *families))


def _new_run_dir(root: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{stamp}-{suffix}"
    path.mkdir(parents=True)
    return path


def run_demo(options: DemoOptions, console: Console | None = None,
             device: Device | None = None) -> Path:
    """Run the whole flow on `device` (default: this machine) into a new run folder."""
    console = console or Console(stderr=True)
    run_dir = _new_run_dir(Path(options.runs_root))
    console.print(f"[bold]latbench demo[/] ({'quick' if options.quick else 'full'}) -> {run_dir}")
    settings = RunSettings(threads=1, settle=True)  # as the CLI measures
    config = CampaignConfig(settings=settings)
    device = device or local_device(threads=1)
    timings: dict[str, float] = {}
    report: dict[str, Any] = {"options": {"quick": options.quick, "plan": options.plan,
                                          "networks": options.network_spec, "seed": options.seed}}

    # 1. operator dataset
    started = time.perf_counter()
    plan = load_plan(options.plan)
    subjects = plan_subjects(plan)
    n_kernels = sum(1 for s in subjects if s.subject == "op")
    console.print(f"1/6 measuring {n_kernels} kernels and {len(subjects) - n_kernels} "
                  f"calibration networks of plan {plan.name!r} on {device.name} "
                  f"({RUNTIME}, 1 thread)")
    with Bars("kernels", console) as bars:
        summary = measure_into_dataset(subjects, device, RUNTIME, run_dir / "dataset", config,
                                       card={"plan": plan.to_dict(), "flags": ["demo"]},
                                       progress=bars)
    timings["dataset"] = time.perf_counter() - started
    card = LatencyDataset.open(run_dir / "dataset").card
    report["dataset"] = {"kernels": n_kernels, "networks": len(subjects) - n_kernels,
                         "measured": summary.measured, "failed": summary.failed,
                         "redone_batches": summary.redone_batches,
                         "drift": summary.drift_report()}
    if summary.drifted_batches:  # what follows carries it: say so before the figures
        for line in report["dataset"]["drift"]:
            console.print(f"[yellow]    drift: {line}[/]")

    # 2. predictor
    started = time.perf_counter()
    console.print("2/6 fitting the xgboost per-kernel predictor")
    predictor = LatencyPredictor().fit(run_dir / "dataset")
    predictor.save(run_dir / "predictor")
    timings["predictor"] = time.perf_counter() - started
    composition = predictor.composition_.summary
    report["predictor"] = {"platform": predictor.platform.to_json(),
                           "platform_label": predictor.platform.label(),
                           "kinds": predictor.n_train, "statistic": predictor.statistic,
                           "call_overhead_ms": predictor.call_overhead_ms_,
                           "composition": {k: v for k, v in composition.items() if k != "keys"}}

    # 3. held-out networks (never the calibration networks)
    started = time.perf_counter()
    networks = resolve_networks(options.network_spec, seed=options.seed + 1,
                                exclude=predictor.calibration_keys)
    console.print(f"3/6 measuring {len(networks)} held-out networks end to end")
    with Bars("networks", console) as bars:
        evaluation = evaluate(predictor, networks, device, run_dir / "eval",
                              config=config, progress=bars)
    write_report(evaluation, run_dir / "eval", f"Held-out networks, {device.name}")
    timings["evaluation"] = time.perf_counter() - started
    report["evaluation"] = evaluation.metrics

    # 4-5. search under budgets and measure the winners
    started = time.perf_counter()
    space = get_space("nasbench-macro")
    search_rows: list[tuple[str, ...]] = []
    search_note = ""
    accuracy = _accuracy_table(options.data_dir)
    if accuracy is None:
        search_note = (f"Search skipped: the NAS-Bench-Macro accuracy table was not found. Get "
                       f"it from {PUBLIC_SOURCE} and pass its folder with --data-dir (or set "
                       f"LATBENCH_DATA).")
        console.print(f"[yellow]4/6 {search_note}[/]")
    else:
        table = LatencyTable.from_predictor(space, predictor, device.name, RUNTIME)
        table.save(run_dir / "latency_table.json")
        predicted_all = table.latencies(choices_matrix(space.all_archs()))
        budgets = [float(f"{q:.3g}") for q in np.quantile(predicted_all, BUDGET_QUANTILES)]
        console.print(f"4/6 searching all {space.size} architectures under budgets "
                      f"{', '.join(f'{b:g} ms' for b in budgets)}")
        target = budget_target(predictor)
        console.print(f"    {target.describe()}")
        results = search_budgets(space, table, accuracy, budgets, margin=target.margin,
                                 gap=target.gap)
        console.print("5/6 measuring the winners")
        with Bars("winners", console) as bars:
            outcomes = measure_winners(space, results, predictor, device,
                                       run_dir / "search" / "winners", config, bars,
                                       target.statistic)
        report["search_target"] = {**asdict(target), "factor": target.factor,
                                   "described": target.describe()}
        report["search"] = [o.to_json() for o in outcomes]
        search_rows = [o.row() for o in outcomes]
        if can_plot(run_dir / "search_pareto.png"):
            _pareto_plot(predicted_all, space, accuracy, outcomes,
                         run_dir / "search_pareto.png", device.name)
    timings["search"] = time.perf_counter() - started

    # 6. models a user might bring, predicted from their files, then measured
    started = time.perf_counter()
    user_results: list[UserModelResult] = []
    user_note = ""
    if not options.user_models:
        user_note = "Skipped (--no-user-models)."
    elif not available("torch"):
        user_note = ("Skipped: building the models needs torch, which is not installed: pip "
                     "install 'latbench[torch]'.")
        console.print(f"[yellow]6/6 {user_note}[/]")
    else:
        console.print("6/6 predicting two models a user might bring (a CNN and a vision "
                      "transformer exported from PyTorch), then measuring them")
        with Bars("models", console) as bars:
            user_results = predict_and_measure(predictor, device, run_dir / "user_models",
                                               config, bars)
        report["user_models"] = [r.to_json() for r in user_results]
    timings["user_models"] = time.perf_counter() - started
    report["timings_s"] = timings
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(run_dir / "report.md", _markdown(report, card, predictor.info_, evaluation,
                                                       search_rows, search_note)
                      + _user_models_markdown(user_results, user_note)
                      + "\nTimings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
                      + "\n")
    if options.print_summary:
        target = report.get("search_target") or {}
        _print_summary(evaluation, search_rows, user_results, run_dir,
                       f"budgets and measured: {target.get('statistic')}, predicted: "
                       f"{target.get('learned')}")
    return run_dir


def _accuracy_table(data_dir: Path | None) -> dict[str, float] | None:
    if data_dir is None:
        return None
    try:
        return load_accuracy_table(data_dir)
    except LatbenchError:
        return None


def _pareto_plot(latency: np.ndarray, space: Any, accuracy: dict[str, float],
                 outcomes: list[Any], path: Path, device: str) -> None:
    from latbench.search.pareto import pareto_figure, save_figure

    acc = np.array([accuracy[space.encode(a)] for a in space.all_archs()])
    figure = pareto_figure(
        latency, acc, outcomes, points_label=f"all {len(acc):,} (predicted)",
        latency_label=f"latency on {device} (ms): predicted; winners also measured",
        accuracy_label="NAS-Bench-Macro CIFAR-10 accuracy (%)",
        ylim=(max(80.0, float(acc.min())), float(acc.max()) + 0.5))
    save_figure(figure, path)


def _markdown(report: dict[str, Any], card: dict[str, Any], manifest: dict[str, Any],
              evaluation: Any, search_rows: list[tuple[str, ...]], search_note: str) -> str:
    facts = card.get("device_facts") or {}
    t = report["timings_s"]
    lines = [
        "# latbench demo report", "",
        f"- date: {card.get('created')}",
        f"- device: {manifest.get('device')} `{facts.get('cpu_model')}`, "
        f"{facts.get('cores')} cores, "
        f"governor {facts.get('governor')}",
        f"- runtime: {manifest.get('runtime')} {manifest.get('runtime_version')}, settings "
        f"`{manifest.get('settings')}`",
        f"- platform: {report['predictor']['platform_label']}",
        f"- statistic: `{manifest.get('statistic')}`", "",
        "## 1. Operator dataset", "",
        f"{report['dataset']['measured']} kernels measured (plan `{report['options']['plan']}`), "
        f"{report['dataset']['failed']} failed, {report['dataset']['redone_batches']} batches "
        f"redone after a slow phase, in {t['dataset']:.0f} s. Folder: `dataset/`.", "",
        *[f"- drift: {line}" for line in report["dataset"]["drift"]], "",
        "## 2. Predictor", "",
        "xgboost per kernel kind, trained kernels: " + ", ".join(
            f"{k} {n}" for k, n in sorted(report["predictor"]["kinds"].items()))
        + f"; runtime call overhead {report['predictor']['call_overhead_ms']:.4f} ms. "
          "Folder: `predictor/`.", "",
        _composition_text(report["predictor"]["composition"]), "",
        "## 3. Held-out networks measured end to end", "",
        evaluation.markdown(), "",
        "![predicted vs measured](eval/scatter.png)", "",
        "## 4. Search under latency budgets (NAS-Bench-Macro, exhaustive)", "",
    ]
    if search_note:
        lines.append(search_note)
    else:
        lines += [f"{report['search_target']['described'].capitalize()}. The safety margin "
                  "is the predictor's 95th-percentile under-prediction on calibration networks "
                  "left out of its fit (leave-one-out); the gap is how far the budget's "
                  "statistic ran above the predictor's on its dataset's networks (95th "
                  "percentile). Measured: the budget's statistic.",
                  "", "| " + " | ".join(OUTCOME_HEADER) + " |",
                  "|" + "---|" * len(OUTCOME_HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in search_rows]
        lines += ["", "![accuracy vs latency](search_pareto.png)"]
    return "\n".join(lines) + "\n\n"


def _composition_text(composition: dict[str, Any]) -> str:
    if not composition.get("networks"):
        return "No calibration networks: network latency is the plain sum of kernels."
    scales = ", ".join(f"{k} x{v:.3f}" for k, v in sorted(composition["kind_scale"].items()))
    return (f"Composition fitted on {composition['networks']} measured calibration networks "
            f"(never used below): {scales}. RMSPE on them: plain kernel sum "
            f"{composition['rmspe_pct_sum']:.2f}%, "
            f"composed {composition['rmspe_pct_composed']:.2f}%.")


def _user_models_markdown(results: list[UserModelResult], note: str) -> str:
    lines = ["## 5. Models a user might bring", "",
             "A CNN and a vision transformer built in PyTorch, exported with torch's default "
             "exporter (`user_models/*.onnx`), predicted from the files as `latbench predict "
             "FILE` does, then measured end to end (`user_models/measured/`). Coverage: the "
             "share of the predicted kernel time from kernels inside the predictor's training "
             "range.", ""]
    lines.append(note or user_models_markdown(results))
    return "\n".join(lines) + "\n"


def _print_summary(evaluation: Any, search_rows: list[tuple[str, ...]],
                   user_results: list[UserModelResult], run_dir: Path,
                   search_label: str) -> None:
    print_table("held-out networks", ("family", "n", "RMSPE %", "within 10%", "Spearman"),
                [(family, int(m["n"]), f"{m['rmspe_pct']:.2f}", f"{m['within10']:.1%}",
                  f"{m['spearman']:.3f}") for family, m in evaluation.metrics.items()])
    if search_rows:
        print_table(f"search under budgets ({search_label})", OUTCOME_HEADER, search_rows)
    if user_results:
        print_table("models a user might bring (predicted from the file, then measured)",
                    USER_MODEL_HEADER, [r.row() for r in user_results])
    print(f"everything is in {run_dir} (report.md)")
