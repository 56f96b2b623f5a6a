"""Compare the predictor zoo side by side on one held-out split.

Every member is fitted on the same operator dataset (same statistic, same composition
calibration networks), the held-out networks (never the calibration ones) are measured end to
end once for all members (in one pass or several, scored against the median), and each member
is scored per network family. A lookup table only prices the
kernels it holds: networks with other kernels are counted as not covered (its coverage is
reported) rather than guessed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latbench.bench.campaign import CampaignConfig, CampaignSummary, ProgressSink, Subject
from latbench.bench.stats import DEFAULT_STATISTIC
from latbench.bench.store import atomic_write_text
from latbench.device_agents import Device
from latbench.errors import PredictorError, UnknownKernelError
from latbench.extras import can_plot
from latbench.predictor.evaluate import (
    error_metrics,
    error_table,
    measure_networks,
    priced_kernels,
    readable_log_axes,
)
from latbench.predictor.latency_predictor import LatencyPredictor

METRIC_COLUMNS = ("n", "coverage", "rmse_ms", "rmspe_pct", "within5", "within10", "within15",
                  "spearman", "kendall", "bias_pct")


@dataclass
class ComparisonReport:
    table: pd.DataFrame  # predictor, network, family, predicted_ms (NaN = not covered), measured
    metrics: dict[str, dict[str, dict[str, float]]]  # predictor -> family (and "all") -> metrics
    statistic: str
    campaign: CampaignSummary
    measurement: str = ""  # how the networks were measured (`NetworkTimes.note`)
    platform: dict[str, Any] | None = None  # the predictors' platform (JSON form, with its label)

    def frame(self) -> pd.DataFrame:
        rows = [{"predictor": p, "family": f, **m} for p, fam in self.metrics.items()
                for f, m in fam.items()]
        return pd.DataFrame(rows)

    def markdown(self) -> str:
        out = []
        families = sorted({f for fam in self.metrics.values() for f in fam},
                          key=lambda f: (f == "all", f))
        for family in families:
            out += [f"**{family}**", "",
                    "| predictor | n | covered | RMSE ms | RMSPE % | within 5% | within 10% | "
                    "within 15% | Spearman | Kendall | bias % |",
                    "|---|---|---|---|---|---|---|---|---|---|---|"]
            for name, fam in self.metrics.items():
                m = fam.get(family)
                if m is None:
                    continue
                if m["n"] == 0:
                    out.append(f"| {name} | 0 | {m['coverage']:.0%} | - | - | - | - | - | - | "
                               "- | - |")
                    continue
                out.append(f"| {name} | {int(m['n'])} | {m['coverage']:.0%} | "
                           f"{m['rmse_ms']:.4f} | {m['rmspe_pct']:.2f} | {m['within5']:.1%} | "
                           f"{m['within10']:.1%} | {m['within15']:.1%} | {m['spearman']:.3f} | "
                           f"{m['kendall']:.3f} | {m['bias_pct']:+.2f} |")
            out.append("")
        return "\n".join(out)


def _empty_metrics(coverage: float) -> dict[str, float]:
    out = {k: math.nan for k in METRIC_COLUMNS}
    out.update(n=0.0, coverage=coverage)
    return out


def score(table: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """Per predictor and family (plus "all" when there are several): metrics on the covered
    networks and the share covered."""
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    for name, rows in table.groupby("predictor", sort=False):
        groups = list(rows.groupby("family", sort=True))
        if len(groups) > 1:
            groups.append(("all", rows))
        metrics[str(name)] = {}
        for family, group in groups:
            covered = group[np.isfinite(group["predicted_ms"])]
            coverage = len(covered) / len(group)
            if covered.empty:
                metrics[str(name)][str(family)] = _empty_metrics(coverage)
                continue
            m = error_metrics(covered["predicted_ms"], covered["measured_ms"])
            m["coverage"] = coverage
            metrics[str(name)][str(family)] = m
    return metrics


def compare_predictors(data_dir: Path, networks: Sequence[Subject], names: Sequence[str],
                       device: Device, out_dir: Path, runtime: str | None = None,
                       statistic: str = DEFAULT_STATISTIC,
                       params: dict[str, dict[str, Any]] | None = None,
                       config: CampaignConfig | None = None,
                       progress: ProgressSink | None = None,
                       exclude_calibration: bool = True,
                       measured_ms: Mapping[str, float] | None = None,
                       passes: int = 1, measurement: str = "",
                       platform: Any = None) -> ComparisonReport:
    """Fit each named predictor on `data_dir` (into out_dir/predictors/NAME), measure the
    networks in `passes` passes (out_dir/networks, networks-pass2, ...), score every predictor
    on the median. `measured_ms` (key -> ms, the predictors' statistic) supplies networks
    already measured, e.g. in the dataset's own campaign, and `measurement` says how; the
    others are measured here. `platform` (a PlatformChoice) picks one of a dataset's several
    platforms."""
    if not names:
        raise PredictorError("no predictors to compare")
    if params is not None and not isinstance(params, Mapping):
        raise PredictorError("per-predictor parameters must be a JSON object of predictor name: "
                             f"{{parameter: value}}, got {type(params).__name__}")
    unknown = sorted(set(params or {}) - set(names))
    if unknown:
        raise PredictorError(f"parameters given for {', '.join(map(repr, unknown))}, which is "
                             f"not among the predictors compared ({', '.join(names)})")
    out_dir = Path(out_dir)
    members = {name: LatencyPredictor(name, (params or {}).get(name), cv_folds=0)
               for name in names}  # every member's parameters checked before any fit
    fitted: dict[str, LatencyPredictor] = {}
    for name, member in members.items():
        member.fit(Path(data_dir), statistic=statistic, device=device.name, runtime=runtime,
                   platform=platform)
        member.save(out_dir / "predictors" / name)
        fitted[name] = member
    first = next(iter(fitted.values()))
    calibration = set(first.calibration_keys)
    held_out = [n for n in networks if not (exclude_calibration and n.key in calibration)]
    if not held_out:
        raise PredictorError("every network given is a calibration network of the predictors")
    runtime = first.runtime
    settings = first.run_settings()
    given = dict(measured_ms or {})
    to_measure = [n for n in held_out if n.key not in given]
    if to_measure:
        times = measure_networks(to_measure, device, runtime, settings, statistic,
                                 out_dir / "networks", config, progress, passes=passes)
        measured, summary = {**given, **times.median()}, times.campaign
        measurement = " ".join(filter(None, [measurement, times.note(),
                                             times.level_note(first.reference_probe_ms)]))
    else:
        measured, summary = given, CampaignSummary()
    rows = []
    for name, model in fitted.items():
        for net in held_out:
            if net.key not in measured:
                continue
            try:
                predicted = model.predict(priced_kernels(net, model)).predicted_ms
            except UnknownKernelError:
                predicted = math.nan
            rows.append({"predictor": name, "network": net.key, "family": net.family,
                         "predicted_ms": predicted, "measured_ms": measured[net.key]})
    table = error_table(rows, len(held_out), device, out_dir)
    return ComparisonReport(table, score(table), statistic, summary, measurement,
                            {**first.platform.to_json(), "label": first.platform.label()})


def write_comparison(report: ComparisonReport, out_dir: Path,
                     title: str = "Predictor zoo on held-out networks") -> dict[str, Path]:
    """compare.json, compare.csv (metrics), predictions.csv, compare.md and two PNGs: one
    predicted-vs-measured panel per predictor, and within-10% per family and predictor."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "compare.json", "metrics": out_dir / "compare.csv",
             "csv": out_dir / "predictions.csv", "markdown": out_dir / "compare.md",
             "scatter": out_dir / "compare_scatter.png", "bars": out_dir / "compare_within10.png"}
    atomic_write_text(paths["json"], json.dumps({"platform": report.platform,
                                                 "statistic": report.statistic,
                                                 "metrics": report.metrics}, indent=2,
                                                default=float) + "\n")
    atomic_write_text(paths["metrics"], report.frame().to_csv(index=False))
    atomic_write_text(paths["csv"], report.table.to_csv(index=False))
    atomic_write_text(paths["markdown"],
                      f"# {title}\n\n"
                      + (f"Platform: {report.platform['label']}. " if report.platform else "")
                      + f"Measured statistic: `{report.statistic}`. Every predictor "
                      f"is scored on the same networks. {report.measurement} *Covered* is the "
                      "share of networks whose every kernel the predictor can price.\n\n"
                      f"{report.markdown()}\n![predicted vs measured](compare_scatter.png)\n\n"
                      "![within 10%](compare_within10.png)\n")
    if can_plot(paths["scatter"]):
        _plots(report, paths["scatter"], paths["bars"], title)
    return paths


def _plots(report: ComparisonReport, scatter: Path, bars: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.metrics)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.4), squeeze=False)
    table = report.table
    finite = table[np.isfinite(table["predicted_ms"])]
    lo = float(min(finite["predicted_ms"].min(), table["measured_ms"].min())) * 0.9 \
        if not finite.empty else float(table["measured_ms"].min()) * 0.9
    hi = float(max(finite["predicted_ms"].max(), table["measured_ms"].max())) * 1.1 \
        if not finite.empty else float(table["measured_ms"].max()) * 1.1
    line = np.geomspace(lo, hi, 50)
    for ax, name in zip(axes[0], names, strict=True):
        ax.plot(line, line, color="black", lw=1)
        ax.fill_between(line, line * 0.9, line * 1.1, color="grey", alpha=0.2)
        rows = finite[finite["predictor"] == name]
        for family, group in rows.groupby("family", sort=True):
            ax.scatter(group["measured_ms"], group["predicted_ms"], s=10, alpha=0.8,
                       label=str(family))
        m = report.metrics[name].get("all") or next(iter(report.metrics[name].values()))
        within = "n/a" if m["n"] == 0 else f"{m['within10']:.0%}"
        ax.set_title(f"{name}: {within} within 10%", fontsize=10)
        readable_log_axes(ax, lo, hi)
        ax.set_xlabel("measured ms")
        ax.set_ylabel("predicted ms")
        if not rows.empty:
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, scatter)
    frame = report.frame()
    families = [f for f in sorted(frame["family"].unique()) if f != "all"]
    if "all" in set(frame["family"]):
        families.append("all")
    fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(families) * max(1, len(names)) / 3, 4))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [report.metrics[name].get(f, {}).get("within10", math.nan) for f in families]
        ax.bar(np.arange(len(families)) + i * width, np.nan_to_num(values), width, label=name)
    ax.set_xticks(np.arange(len(families)) + width * (len(names) - 1) / 2)
    ax.set_xticklabels(families, rotation=20)
    ax.set_ylabel("within 10% of measured")
    ax.set_ylim(0, 1.05)
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, bars)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
