"""Issue 15 target: predicted peak memory within 10% of measured on >= 95% of held-out networks.

On the local CPU with ONNX Runtime (1 thread, graph optimisation `all`, the CPU arena on, as
every latency campaign runs it), the agent measures each network's peak memory in a fresh process
of its own (docs/measurement.md). Two calibration sets, each the calibration networks of a plan a
user fits predictors on, measured into a dataset of their own:
- `quick`: the demo's plan (30 NAS-Bench-Macro networks, 2 ResNets, 2 ViTs);
- `vision`: the `vision` plan's 50 networks of eight families.
The memory model is fitted on each exactly as `LatencyPredictor.fit` fits it
(`predictor.memory.fit_dataset_memory`), then scored on held-out networks measured in a dataset
of their own, in `--passes` passes (truth: the median; the spread says how repeatable the
measurement is): NAS-Bench-Macro architectures exported by `torch.onnx.export` from the space's
PyTorch modules (as a user of the space has them), and `--per-family` networks of every family
(bench/families_torch.py, `torch.onnx.export`, default exporter), never a calibration network or
one whose kernels a plan takes. Latency is not what is measured here: the runs are short (one
warm-up, two calls) and the campaign does not wait for a quiet machine (a process's resident set
does not depend on its neighbours).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import HELD_OUT_SEED, family_files, fresh_dir, macro_files  # noqa: E402
from _report import publish  # noqa: E402

from latbench.bench.campaign import (  # noqa: E402
    CampaignConfig,
    Subject,
    measure_into_dataset,
)
from latbench.bench.memory import subject_profile  # noqa: E402
from latbench.bench.plans import kernel_set_networks, load_plan, plan_networks  # noqa: E402
from latbench.bench.runners import RunSettings  # noqa: E402
from latbench.bench.store import LatencyDataset  # noqa: E402
from latbench.device_agents import local_device  # noqa: E402
from latbench.predictor.memory import (  # noqa: E402
    MemoryModel,
    fit_dataset_memory,
    memory_metrics,
)

CALIBRATIONS = ("quick", "vision")
FAMILIES = ("mobilenetv2", "resnet", "efficientnet", "mobilenetv3", "regnet", "resnet50",
            "convnext", "vit", "deit", "mobilevit")
SETTINGS = RunSettings(threads=1, warmup=1, runs=2, rounds=1)
MIB = float(1 << 20)


def config() -> CampaignConfig:
    # max_load=None: a busy neighbour slows the timing, not the resident set measured here
    return CampaignConfig(settings=SETTINGS, max_load=None)




def measure(subjects: list[Subject], out: Path, purpose: str) -> str:
    """Measure `subjects` on the local CPU into dataset `out` (resumed if there); how long it
    took, in words for the report."""
    started = time.perf_counter()
    summary = measure_into_dataset(subjects, local_device(threads=1), "onnxruntime", out,
                                   config(), card={"purpose": purpose})
    if summary.failed:
        print(f"memory: {summary.failed} networks failed in {out}: "
              + "; ".join(f"{k}: {e}" for _, k, e in summary.failures[:3]), file=sys.stderr)
    if not summary.measured:
        return "resumed (--keep), measured by an earlier run"
    return f"{(time.perf_counter() - started) / 60:.1f} min for {summary.measured} networks"


def measured_peaks(dataset: Path) -> dict[str, float]:
    records = LatencyDataset.open(dataset).records()
    ok = records[(records["status"] == "ok") & records["peak_memory_bytes"].notna()]
    return {str(k): float(v) for k, v in zip(ok["key"], ok["peak_memory_bytes"], strict=True)}


def calibrate(dataset: Path) -> MemoryModel:
    """The memory model `LatencyPredictor.fit` would learn from this dataset's networks."""
    ds = LatencyDataset.open(dataset)
    records = ds.records()
    nets = records[records["subject"] == "network"]
    setup = nets.iloc[0]
    return fit_dataset_memory(records, ds.card, setup)


def score(model: MemoryModel, held: list[Subject], truth: dict[str, float]
          ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Per family and "all": the memory model's predictions against the measured peaks, and
    how many networks it predicts to peak in each phase."""
    rows: dict[str, list[tuple[float, float, str]]] = {}
    for subject in held:
        if subject.key in truth:
            predicted = model.predict_profile(subject_profile(subject))
            rows.setdefault(subject.family, []).append(
                (predicted.peak_bytes, truth[subject.key], predicted.peak_phase))
    everything = [r for group in rows.values() for r in group]
    families = [r for family, group in rows.items() if family != "nasbench-macro" for r in group]
    out, phases = {}, {}
    for name, group in [*sorted(rows.items()), ("families", families), ("all", everything)]:
        predicted, measured, peaks = zip(*group, strict=True)
        out[name] = memory_metrics(predicted, measured)
        phases[name] = ", ".join(f"{phase} {peaks.count(phase)}" for phase in model.phases
                                 if phase in peaks)
    return out, phases


def coefficients(model: MemoryModel) -> str:
    c = model.calibration
    loo = c.get("rmspe_pct_loo")

    def terms(scales: dict[str, float]) -> str:
        return " + ".join(f"{value / 1024:.1f} KiB x {term}" if term == "ops"
                          else f"{value:.2f} x {term}" for term, value in scales.items())

    phases = "; ".join(f"{name}: {terms(dict(scales))}" for name, scales in model.phases.items())
    peaks = ", ".join(f"{n} in {phase}" for phase, n in (c.get("peak_phases") or {}).items())
    return (f"constant {model.constant_bytes / MIB:.1f} MiB + {terms(dict(model.scales))}"
            + (f" + max({phases})" if phases else "")
            + f"; fitted {', '.join(c.get('fitted') or []) or 'the constant only'}; its "
            f"{c.get('networks', 0)} networks peak {peaks or '(no phases)'}, RMSPE "
            f"{c.get('rmspe_pct', float('nan')):.2f}%"
            + (f" ({loo:.2f}% leave-one-out)" if loo is not None else ""))


def spread_line(passes: list[dict[str, float]]) -> str:
    """How far the passes' measured peaks of the same network lie apart."""
    if len(passes) < 2:
        return "Held-out truth: one pass."
    spreads = [100 * (max(p[k] for p in passes) / min(p[k] for p in passes) - 1)
               for k in set.intersection(*(set(p) for p in passes))]
    return (f"Held-out truth: the median of {len(passes)} passes; the same network's peak "
            f"differs between passes by {np.median(spreads):.2f}% (median), "
            f"{np.percentile(spreads, 90):.2f}% (p90), {max(spreads):.2f}% at most "
            f"({len(spreads)} networks).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--macro", type=int, default=100, help="held-out NAS-Bench-Macro files")
    parser.add_argument("--per-family", type=int, default=5, help="held-out files per family")
    parser.add_argument("--passes", type=int, default=2,
                        help="passes over the held-out networks (their truth is the median)")
    parser.add_argument("--out", default="/tmp/latbench-bench/memory")
    parser.add_argument("--keep", action="store_true", help="resume an earlier --out")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    out = fresh_dir(args.out, args.keep)
    load = os.getloadavg()
    started = time.perf_counter()
    plans = {name: load_plan(name) for name in CALIBRATIONS}
    exclude: set[str] = set()
    calibration_sets = {}
    for name, plan in plans.items():
        calibration_sets[name] = plan_networks(plan)
        exclude |= {n.key for n in calibration_sets[name]} | kernel_set_networks(plan)
    held = (macro_files(args.macro, exclude, out / "files" / "macro")
            + family_files(FAMILIES, args.per_family, exclude, out / "files"))
    campaigns: dict[str, str] = {}
    for name, nets in calibration_sets.items():
        campaigns[name] = measure(nets, out / f"calibration-{name}", f"{name} calibration")
    passes = []
    for index in range(args.passes):
        folder = out / ("held-out" if index == 0 else f"held-out-pass{index + 1}")
        campaigns[f"held-out pass {index + 1}"] = measure(held, folder, "held-out networks")
        passes.append(measured_peaks(folder))
    truth = {k: float(np.median([p[k] for p in passes if k in p]))
             for k in set().union(*passes)}
    lines = [
        f"ONNX Runtime {ort_version()} on the local CPU (1 thread, graph optimisation `all`, CPU "
        "memory arena on); each network's peak is measured by the agent in a fresh process "
        "(`rss-hwm`: VmHWM reset before loading, minus VmRSS before loading; session creation "
        "and three calls). The memory model is fitted on a plan's calibration networks exactly "
        "as `latbench predictor fit` fits it, then predicts the held-out networks from their "
        f"ONNX files: {args.macro} NAS-Bench-Macro architectures (seed {HELD_OUT_SEED}) and "
        f"{args.per_family} networks of each of {len(FAMILIES)} families, all exported by "
        "`torch.onnx.export`, none a calibration network. The model adds to what a network "
        "holds throughout the largest of three phases (docs/predictors.md, \"Peak memory\"); "
        "the tables say which it predicts for the held-out networks: `rewrite` (loading: "
        "convolution weights laid out anew), `load` (loading: the copy of the largest tensor), "
        "`run` (activations).", ""]
    for name in CALIBRATIONS:
        model = calibrate(out / f"calibration-{name}")
        metrics, phases = score(model, held, truth)
        share = {k: metrics[k]["within10"] for k in ("nasbench-macro", "families", "all")}
        lines += [f"### Calibrated on the `{name}` plan's {len(calibration_sets[name])} networks",
                  "", f"Coefficients: {coefficients(model)}.", "",
                  "| held-out family | n | within 10% | within 5% | RMSPE % | bias % | "
                  "predicted to peak in |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {f} | {int(m['n'])} | {m['within10']:.1%} | {m['within5']:.1%} | "
                  f"{m['rmspe_pct']:.2f} | {m['bias_pct']:+.2f} | {phases[f]} |"
                  for f, m in metrics.items()]
        lines += ["", "Target (>= 95% within 10%): " + "; ".join(
            f"{name} **{'met' if share[key] >= 0.95 else 'not met'}** ({share[key]:.1%})"
            for name, key in (("NAS-Bench-Macro", "nasbench-macro"),
                              ("the family networks", "families"),
                              ("all held-out networks", "all"))) + ".", ""]
    lines += [spread_line(passes), "",
              "Campaigns: " + ", ".join(f"{k}: {v}" for k, v in campaigns.items())
              + f"; this run {(time.perf_counter() - started) / 60:.1f} minutes in all (exports "
              "included)."
              f" Machine load (1-min average, 2 cores): {load[0]:.2f} at the start, "
              f"{os.getloadavg()[0]:.2f} at the end."]
    publish("memory", "Peak memory: predicted against measured, held-out networks, local CPU",
            lines, write=not args.no_write)


def ort_version() -> str:
    from importlib import metadata

    return metadata.version("onnxruntime")


if __name__ == "__main__":
    main()
