"""Accuracy-versus-latency plots of a search: the points evaluated (or a whole space), their
Pareto front, and per budget the budget line, the "searched under" line (budget / (1 + margin),
what the strategy actually aimed at) and the winner, predicted and, when measured, measured.

One figure function serves `latbench search` (one plot per budget) and the demo (every budget
in one plot). An axis whose values span more than `LOG_SPAN` times goes logarithmic, with
plain numbers as tick labels (0.2, 0.5, 1, 2 ...) rather than bare powers of ten. Artists carry
a gid ("evaluated", "pareto-front", "budget", "searched-under", "winner", "winner-measured") so
tests and users can find them on the Axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

LOG_SPAN = 30.0


def pareto_front(latency: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """Indices of the non-dominated points (no other point is both faster and more accurate),
    by increasing latency."""
    lat = np.asarray(latency, dtype=float)
    acc = np.asarray(accuracy, dtype=float)
    order = np.lexsort((-acc, lat))
    front, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            front.append(int(i))
            best = acc[i]
    return np.array(front, dtype=np.int64)


def _wants_log(values: np.ndarray) -> bool:
    values = values[np.isfinite(values)]
    return bool(len(values) > 1 and (values > 0).all() and values.max() / values.min() > LOG_SPAN)


def _number(value: float, _position: Any = None) -> str:
    return f"{value:g}"


def _log_axis(ax: Any, which: str) -> None:
    """Log scale on axis `which` ("x" or "y") labelled with plain numbers at 1, 2, 5 x 10^k."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(_number))
    axis.set_minor_formatter(NullFormatter())


def pareto_figure(latency: Sequence[float], accuracy: Sequence[float],
                  outcomes: Sequence[Any] = (), *,
                  background: tuple[Sequence[float], Sequence[float]] | None = None,
                  title: str = "", accuracy_label: str = "accuracy (%)",
                  latency_label: str = "predicted latency (ms)",
                  points_label: str = "evaluated",
                  ylim: tuple[float, float] | None = None) -> Any:
    """A matplotlib Figure of accuracy vs latency.

    `outcomes` are `search.budget.BudgetOutcome`s (or anything with budget_ms,
    search_budget_ms, accuracy, predicted_ms and measured_ms): each draws its budget line
    labelled with its value, its searched-under line, its winner at the predicted latency and,
    when measured, at the measured latency joined to the prediction."""
    from matplotlib.figure import Figure

    lat = np.asarray(latency, dtype=float)
    acc = np.asarray(accuracy, dtype=float)
    fig = Figure(figsize=(7.0, 4.8))
    ax = fig.subplots()
    if background is not None:
        ax.scatter(background[0], background[1], s=3, c="0.85", label="whole space",
                   gid="background")
    ax.scatter(lat, acc, s=10, alpha=0.6, c="C0", label=points_label, gid="evaluated")
    if len(lat):
        front = pareto_front(lat, acc)
        ax.step(lat[front], acc[front], where="post", c="C1", label="Pareto front",
                gid="pareto-front")
    xs = [lat, np.asarray(background[0], dtype=float) if background is not None else lat]
    labelled: set[str] = set()

    def once(label: str) -> str:
        """The legend names each kind of element once, however many budgets draw it."""
        if label in labelled:
            return "_nolegend_"
        labelled.add(label)
        return label

    for o in sorted(outcomes, key=lambda o: o.budget_ms):
        ax.axvline(o.budget_ms, c="C3", ls="--", lw=1.0, gid="budget", label=once("budget"))
        ax.axvline(o.search_budget_ms, c="C3", ls=":", lw=1.0, gid="searched-under",
                   label=once("searched under = budget / (1 + margin)"))
        ax.text(o.budget_ms, 0.99, f" {o.budget_ms:g} ms", transform=ax.get_xaxis_transform(),
                rotation=90, va="top", ha="right", fontsize=8, color="C3", gid="budget-label")
        ax.scatter([o.predicted_ms], [o.accuracy], marker="*", s=160, c="C2", zorder=5,
                   edgecolors="k", linewidths=0.5, gid="winner",
                   label=once("winner (predicted)"))
        points = [o.budget_ms, o.search_budget_ms, o.predicted_ms]
        if o.measured_ms is not None:
            ax.plot([o.predicted_ms, o.measured_ms], [o.accuracy, o.accuracy], c="C3", lw=0.8,
                    zorder=4, gid="winner-error")
            ax.scatter([o.measured_ms], [o.accuracy], marker="X", s=70, c="C3", zorder=6,
                       gid="winner-measured", label=once("winner (measured)"))
            points.append(o.measured_ms)
        xs.append(np.asarray(points, dtype=float))
    if _wants_log(np.concatenate(xs)):
        _log_axis(ax, "x")
    ys = acc if background is None else np.concatenate([acc, np.asarray(background[1], float)])
    if _wants_log(ys):
        _log_axis(ax, "y")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(latency_label)
    ax.set_ylabel(accuracy_label)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Write the figure as PNG (any backend-free Figure; no pyplot state involved)."""
    fig.savefig(path, dpi=dpi)
    return Path(path)
