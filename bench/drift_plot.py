"""The drift of a campaign as a figure: per batch, the reference probe's ratio to the device's
best, the temperature and the CPU clock before and after it (and, where reported, the cores
other programs kept busy and the hypervisor's steal share), against time, one line per
device/runtime lane.

It is drawn from what a dataset card keeps of the last run (`drift_last_run`, i.e.
CampaignSummary.drift_json()), so the campaign draws it next to the card when it ends and
`latbench bench drift DATASET` draws it again later. Throttling shows as the ratio climbing
while the temperature rises and the clock drops; a noisy neighbour as the ratio moving alone.
matplotlib is optional: without it the figure is skipped with a warning (latbench.extras).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latbench.errors import ConfigError
from latbench.extras import can_plot

DRIFT_PLOT = "drift.png"  # next to the dataset's card.json
OPTIONAL_PANELS = (("foreign_cores", 1.0, "cores other\nprograms kept busy"),
                   ("steal_share", 100.0, "hypervisor steal\n(% of CPU time)"))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else math.nan


def _lanes(batches: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Lane name -> the indices of its batches, in order."""
    lanes: dict[str, list[int]] = {}
    for index, batch in enumerate(batches):
        lanes.setdefault(f"{batch.get('device')}/{batch.get('runtime')}", []).append(index)
    return lanes


def drift_axes(batches: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float], str]:
    """Each batch's start and end on the figure's x axis, and the axis label: minutes since
    the campaign's first batch, or batch numbers for cards kept before batches had times."""
    starts = [_number(b.get("time_unix")) for b in batches]
    if starts and all(math.isfinite(t) for t in starts):
        first = min(starts)
        ends = [t + (s if math.isfinite(s := _number(b.get("seconds"))) else 0.0)
                for t, b in zip(starts, batches, strict=True)]
        return ([(t - first) / 60 for t in starts], [(t - first) / 60 for t in ends],
                "minutes since the first batch")
    numbers = [float(i) for i in range(len(batches))]
    return numbers, [n + 0.8 for n in numbers], "batch"


def plot_drift(drift: Mapping[str, Any], path: Path, title: str = "") -> Path | None:
    """Draw `drift` (a card's `drift_last_run`) to the PNG `path`; None when there is no batch
    to draw or matplotlib is missing."""
    batches = [b for b in drift.get("batches") or [] if isinstance(b, Mapping)]
    path = Path(path)
    if not batches or not can_plot(path):
        return None
    from matplotlib.figure import Figure

    # optional panels: (batch field, scale, axis label), drawn where some batch reports it
    extra = [(key, scale, text) for key, scale, text in OPTIONAL_PANELS
             if any(math.isfinite(_number(b.get(key))) for b in batches)]
    panels = ["ratio", "temperature", "clock"] + [key for key, _, _ in extra]
    fig = Figure(figsize=(9, 2.2 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    tolerance = _number(drift.get("tolerance"))
    all_starts, all_ends, label = drift_axes(batches)
    marked = False  # the legend names the drifted-batch marker once
    for lane, indices in _lanes(batches).items():
        group = [batches[i] for i in indices]
        starts, ends = [all_starts[i] for i in indices], [all_ends[i] for i in indices]
        mids = [(a + b) / 2 for a, b in zip(starts, ends, strict=True)]
        ratio = [_number(b.get("ratio")) for b in group]
        line = axes[0].plot(mids, ratio, marker="o", ms=3, lw=1, label=lane)[0]
        flagged = [(x, r) for x, r, b in zip(mids, ratio, group, strict=True) if b.get("flagged")]
        if flagged:
            axes[0].scatter(*zip(*flagged, strict=True), marker="x", s=40, color="red", zorder=3,
                            label=None if marked else "stored drifted (after retries)")
            marked = True
        color = line.get_color()
        for ax, before, after, scale in (
                (axes[1], "temp_before_c", "temp_after_c", 1.0),
                (axes[2], "freq_before_khz", "freq_after_khz", 1e-3)):
            xs, ys = [], []
            for start, end, b in zip(starts, ends, group, strict=True):
                xs += [start, end, math.nan]
                ys += [_number(b.get(before)) * scale, _number(b.get(after)) * scale, math.nan]
            ax.plot(xs, ys, marker=".", ms=4, lw=1, color=color)
        for ax, (key, scale, _) in zip(axes[3:], extra, strict=True):
            ax.plot(mids, [scale * _number(b.get(key)) for b in group], marker="o", ms=3,
                    lw=1, color=color)
    axes[0].axhline(1.0, color="black", lw=0.6)
    if math.isfinite(tolerance):
        axes[0].axhline(1 + tolerance, color="grey", lw=0.8, ls="--",
                        label=f"tolerance (+{tolerance:.0%})")
    axes[0].set_ylabel("reference probe\n/ best")
    axes[0].legend(fontsize=7, loc="upper left")
    axes[1].set_ylabel("hottest sensor (C)\nbefore-after")
    axes[2].set_ylabel("CPU clock (MHz)\nbefore-after")
    for ax, (_, _, text) in zip(axes[3:], extra, strict=True):
        ax.set_ylabel(text)
    for ax, key, what in ((axes[1], "temp_before_c", "no temperature reported"),
                          (axes[2], "freq_before_khz", "no CPU clock reported")):
        if not any(math.isfinite(_number(b.get(key))) for b in batches):
            ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center",
                    color="grey")
            ax.set_yticks([])
    lo, hi = min(all_starts), max(all_ends)
    # a single short batch still gets a readable axis, which starts at the first batch
    axes[-1].set_xlim(lo - 0.03 * (hi - lo), hi + max(0.03 * (hi - lo), 0.25))
    axes[-1].set_xlabel(label)
    fig.suptitle(title or "drift over the campaign", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def plot_dataset_drift(root: Path, out: Path | None = None) -> Path | None:
    """Draw the drift a dataset's card keeps of its last run to `out` (default: drift.png
    next to the card); ConfigError when the card keeps no per-batch drift."""
    from latbench.bench.store import LatencyDataset

    root = Path(root)
    card = LatencyDataset.open(root).card
    drift = card.get("drift_last_run") or {}
    if not drift.get("batches"):
        raise ConfigError(f"dataset {root} keeps no per-batch drift in its card (its last run "
                          "measured nothing, or it was measured before latbench kept it)")
    devices = sorted({str(b.get("device")) for b in drift["batches"]})
    title = f"drift over the last campaign of {root.name} ({', '.join(devices)})"
    return plot_drift(drift, out if out is not None else root / DRIFT_PLOT, title)
