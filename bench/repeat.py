"""Repeatability: measure a dataset's records again and report how far the numbers moved.

`repeat_dataset` re-measures a dataset (or a seeded random sample of its records) on the same
device, with the same runtime, run settings and campaign settings (read from the dataset's card
and records), into a fresh dataset, and `compare_records` reports, per statistic, the relative
difference |new / old - 1| of every record: its median, p90, mean and max, plus the signed
median (a systematic shift, e.g. the device got slower between the two runs). This is what a
user checks before trusting a dataset, and what the repeatability benchmark measures.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latbench.bench.campaign import CampaignConfig, CampaignSummary, ProgressSink, Subject
from latbench.bench.network_sets import network_from_key
from latbench.bench.runners import RunSettings
from latbench.bench.store import LatencyDataset, LatencyRecord, atomic_write_text
from latbench.device_agents import Device
from latbench.errors import ConfigError, DatasetError
from latbench.extras import can_plot

log = logging.getLogger(__name__)

# Statistics compared, when both datasets have them (corrected ones only with --drift-correct).
COMPARED_STATISTICS = ("min_ms", "median_ms", "mean_ms", "p90_ms", "round_min_median_ms",
                       "min_corrected_ms", "median_corrected_ms")

NetworkResolver = Callable[[str, str], Subject | None]


@dataclass
class RepeatReport:
    """Per-record relative differences between two measurements of the same jobs."""

    device: str
    runtime: str
    settings: str
    n_records: int
    metrics: dict[str, dict[str, float]]  # statistic -> median/p90/mean/max/signed_median/n
    table: pd.DataFrame  # key, then <stat>_old, <stat>_new, <stat>_rel_diff per statistic
    skipped: list[tuple[str, str]]  # (key, why) records that could not be measured again
    campaign: CampaignSummary | None = None

    def rows(self) -> list[tuple[str, ...]]:
        """Table rows: statistic, n, median, p90, mean, max relative difference, signed shift."""
        return [(stat, str(int(m["n"])), f"{m['median']:.2%}", f"{m['p90']:.2%}",
                 f"{m['mean']:.2%}", f"{m['max']:.2%}", f"{m['signed_median']:+.2%}")
                for stat, m in self.metrics.items()]

    def markdown(self) -> str:
        header = ("| statistic | n | median rel. diff | p90 | mean | max | median shift |\n"
                  "|---|---|---|---|---|---|---|\n")
        return header + "\n".join("| " + " | ".join(r) + " |" for r in self.rows())

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "runtime": self.runtime, "settings": self.settings,
                "n_records": self.n_records, "metrics": self.metrics,
                "skipped": [{"key": k, "why": w} for k, w in self.skipped]}


REPORT_HEADER = ("statistic", "n", "median rel. diff", "p90", "mean", "max", "median shift")


def compare_records(old: pd.DataFrame, new: pd.DataFrame,
                    statistics: Sequence[str] = COMPARED_STATISTICS
                    ) -> tuple[dict[str, dict[str, float]], pd.DataFrame]:
    """Join two record frames on the job (key, device, runtime, settings) and summarise
    |new/old - 1| per statistic present (non-NaN, > 0) in both. Returns (metrics, table)."""
    on = ["key", "device", "runtime", "settings"]
    joined = old.merge(new, on=on, suffixes=("_old", "_new"))
    if joined.empty:
        raise DatasetError("the two measurements have no job in common to compare")
    table = joined[on].copy()
    metrics: dict[str, dict[str, float]] = {}
    for stat in statistics:
        if f"{stat}_old" not in joined or f"{stat}_new" not in joined:
            continue
        a = joined[f"{stat}_old"].astype(float).to_numpy()
        b = joined[f"{stat}_new"].astype(float).to_numpy()
        ok = np.isfinite(a) & np.isfinite(b) & (a > 0)
        if not ok.any():
            continue
        signed = np.full(len(a), math.nan)
        signed[ok] = b[ok] / a[ok] - 1.0
        table[f"{stat}_old"], table[f"{stat}_new"] = a, b
        table[f"{stat}_rel_diff"] = np.abs(signed)
        diffs = np.abs(signed[ok])
        metrics[stat] = {"n": float(ok.sum()), "median": float(np.median(diffs)),
                         "p90": float(np.percentile(diffs, 90)), "mean": float(diffs.mean()),
                         "max": float(diffs.max()),
                         "signed_median": float(np.median(signed[ok]))}
    if not metrics:
        raise DatasetError("no statistic is present in both measurements")
    return metrics, table


def settings_from_card(card: dict[str, Any]) -> RunSettings:
    raw = card.get("run_settings")
    if not isinstance(raw, dict):
        raise ConfigError("the dataset card has no run_settings; it cannot be measured again "
                          "with the same settings")
    try:
        return RunSettings(**raw)
    except TypeError as exc:
        raise ConfigError(f"the dataset card's run_settings are not understood: {exc}") from None


def campaign_from_card(card: dict[str, Any], settings: RunSettings) -> CampaignConfig:
    """The card's campaign settings (batch size, drift control...) with `settings`."""
    raw = card.get("campaign") if isinstance(card.get("campaign"), dict) else {}
    known = {f.name for f in fields(CampaignConfig)} - {"settings", "lock_wait_s"}
    return CampaignConfig(settings=settings, **{k: v for k, v in raw.items() if k in known})


def pick_records(records: pd.DataFrame, device: str | None, runtime: str | None,
                 settings_key: Callable[[str], str]) -> tuple[pd.DataFrame, str, str]:
    """The records of one (device, runtime) measured with the card's settings."""
    def one(column: str, given: str | None) -> str:
        values = sorted(set(records[column]))
        if given is not None:
            if given not in values:
                raise ConfigError(f"the dataset has no records with {column} {given!r} (it has "
                                  f"{', '.join(values)})")
            return given
        if len(values) != 1:
            raise ConfigError(f"the dataset holds several {column}s ({', '.join(values)}); "
                              f"say which to measure again")
        return values[0]

    device_name, runtime_name = one("device", device), one("runtime", runtime)
    key = settings_key(runtime_name)
    chosen = records[(records["device"] == device_name) & (records["runtime"] == runtime_name)
                     & (records["settings"] == key)]
    if chosen.empty:
        raise ConfigError(f"no records of {device_name}/{runtime_name} were measured with the "
                          f"card's settings {key!r}")
    return chosen, device_name, runtime_name


def subjects_for(records: pd.DataFrame, resolve_network: NetworkResolver | None
                 ) -> tuple[list[Subject], list[tuple[str, str]]]:
    """Subjects to measure again: ops from their spec columns, networks through the resolver
    (search-space keys such as nasbench-macro:0123...). Others are skipped with the reason."""
    subjects, skipped = [], []
    for _, row in records.iterrows():
        record = LatencyRecord.from_row(row)
        if record.subject == "op":
            subjects.append(Subject.op(record.spec()))
            continue
        subject = resolve_network(record.key, record.family) if resolve_network else None
        if subject is None:
            skipped.append((record.key, "network cannot be rebuilt from its key (only search-"
                                        "space networks can)"))
        else:
            subjects.append(subject)
    return subjects, skipped


def repeat_dataset(data: Path, out: Path, device: Device, *, sample: int | None = None,
                   seed: int = 0, runtime: str | None = None,
                   resolve_network: NetworkResolver | None = network_from_key,
                   progress: ProgressSink | None = None,
                   lock_wait_s: float = 0.0) -> RepeatReport:
    """Measure the records of the dataset at `data` again into OUT/remeasured (resumable) and
    compare. `sample` picks that many records at random (seeded); `device` must be the device
    the records were measured on (its name is checked); `lock_wait_s` is how long to wait for
    another campaign measuring into OUT/remeasured."""
    from latbench.bench.campaign import measure_into_dataset

    source = LatencyDataset.open(data)
    card = source.card
    settings = settings_from_card(card)
    records = source.records()
    if records.empty:
        raise DatasetError(f"dataset {data} has no records to measure again")
    chosen, device_name, runtime_name = pick_records(records, device.name, runtime,
                                                     settings.key)
    if sample is not None:
        if sample < 1:
            raise ConfigError(f"--sample must be >= 1, got {sample}")
        if sample < len(chosen):
            rng = np.random.default_rng(seed)
            chosen = chosen.iloc[np.sort(rng.choice(len(chosen), sample, replace=False))]
    subjects, skipped = subjects_for(chosen, resolve_network)
    if not subjects:
        raise ConfigError(f"none of the {len(chosen)} chosen records can be measured again")
    config = replace(campaign_from_card(card, settings), lock_wait_s=lock_wait_s)
    out = Path(out)
    summary = measure_into_dataset(subjects, device, runtime_name, out / "remeasured", config,
                                   card={"repeat_of": str(Path(data).resolve()),
                                         "sample": sample, "seed": seed},
                                   progress=progress)
    new = LatencyDataset.open(out / "remeasured").records()
    metrics, table = compare_records(chosen, new)
    return RepeatReport(device_name, runtime_name, settings.key(runtime_name), len(table),
                        metrics, table, skipped, summary)


def write_repeat_report(report: RepeatReport, out: Path) -> dict[str, Path]:
    """repeat.json, repeat.csv (per record), repeat.md and repeat.png (histogram) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "repeat.json", "csv": out / "repeat.csv",
             "markdown": out / "repeat.md", "histogram": out / "repeat.png"}
    atomic_write_text(paths["json"], json.dumps(report.to_json(), indent=2) + "\n")
    atomic_write_text(paths["csv"], report.table.to_csv(index=False))
    skipped = "".join(f"- {k}: {w}\n" for k, w in report.skipped)
    atomic_write_text(paths["markdown"],
                      f"# Repeatability: {report.device} / {report.runtime}\n\n"
                      f"Settings `{report.settings}`; {report.n_records} records measured again."
                      f"\nRelative difference per record: |new / old - 1|; median shift: the "
                      f"median of new / old - 1 (a systematic change between the runs).\n\n"
                      f"{report.markdown()}\n\n![histogram](repeat.png)\n"
                      + (f"\nNot measured again:\n{skipped}" if skipped else ""))
    if can_plot(paths["histogram"]):
        histogram(report, paths["histogram"])
    return paths


def histogram(report: RepeatReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    stats = [s for s in ("min_ms", "median_ms", "p90_ms") if s in report.metrics]
    values = {s: report.table[f"{s}_rel_diff"].dropna().to_numpy() * 100 for s in stats}
    top = max((float(np.percentile(v, 99)) for v in values.values() if v.size), default=1.0)
    bins = np.linspace(0, max(top, 0.5), 40)
    for stat in stats:
        m = report.metrics[stat]
        ax.hist(np.clip(values[stat], 0, bins[-1]), bins=bins, alpha=0.5,
                label=f"{stat} (median {m['median']:.1%}, p90 {m['p90']:.1%})")
    ax.set_xlabel("|new / old - 1|  (%)")
    ax.set_ylabel("records")
    ax.set_title(f"Repeatability on {report.device} / {report.runtime} "
                 f"({report.n_records} records)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
