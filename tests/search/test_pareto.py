"""Pareto plots, inspected on their matplotlib Axes: the Pareto front, each budget line and its
label, the searched-under line, the winner predicted and measured; plain-number tick labels on
a log axis; the same elements in a search folder's plot and in the demo's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latbench.bench.spaces import get_space
from latbench.search import outputs, pareto
from latbench.search.budget import BudgetOutcome
from latbench.search.pareto import pareto_figure, pareto_front
from latbench.search.run import SearchJob
from latbench.search.session import run_search

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO.parent / "shared" / "data"


def outcome(budget: float, margin: float, predicted: float, accuracy: float,
            measured: float | None = None) -> BudgetOutcome:
    return BudgetOutcome(budget, budget / (1 + margin), "x", accuracy, predicted, measured, 1, 1)


def by_gid(ax, gid: str) -> list:
    return [a for a in [*ax.lines, *ax.collections, *ax.texts] if a.get_gid() == gid]


def legend_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def tick_labels(fig, axis) -> list[str]:
    fig.draw_without_rendering()
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


def test_front_budgets_and_winners_are_drawn() -> None:
    lat = np.array([0.02, 0.05, 0.1, 0.3, 1.0, 2.0, 0.5])
    acc = np.array([70.0, 75.0, 74.0, 82.0, 88.0, 87.0, 90.0])
    outcomes = [outcome(2.0, 0.25, 0.5, 90.0, measured=1.7), outcome(0.4, 0.25, 0.3, 82.0)]
    fig = pareto_figure(lat, acc, outcomes)
    ax = fig.axes[0]
    [front] = by_gid(ax, "pareto-front")
    assert list(front.get_xdata()) == list(lat[pareto_front(lat, acc)])
    budgets = by_gid(ax, "budget")
    assert sorted(line.get_xdata()[0] for line in budgets) == [0.4, 2.0]
    searched = by_gid(ax, "searched-under")
    assert sorted(line.get_xdata()[0] for line in searched) == pytest.approx([0.32, 1.6])
    assert sorted(t.get_text().strip() for t in by_gid(ax, "budget-label")) == ["0.4 ms",
                                                                                 "2 ms"]
    winners = np.concatenate([c.get_offsets() for c in by_gid(ax, "winner")])
    assert sorted(map(tuple, winners)) == [(0.3, 82.0), (0.5, 90.0)]
    [measured] = by_gid(ax, "winner-measured")
    assert [tuple(p) for p in measured.get_offsets()] == [(1.7, 90.0)]
    assert legend_labels(ax) == ["evaluated", "Pareto front", "budget",
                                 "searched under = budget / (1 + margin)", "winner (predicted)",
                                 "winner (measured)"]


def test_log_axes_have_plain_number_labels() -> None:
    lat = np.geomspace(0.05, 20.0, 30)
    score = np.geomspace(1e3, 1e9, 30)
    fig = pareto_figure(lat, score, [outcome(5.0, 0.0, 4.0, 1e9)],
                        accuracy_label="proxy:synflow score")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    for axis in (ax.xaxis, ax.yaxis):
        labels = tick_labels(fig, axis)
        assert len(labels) >= 3
        assert all("$" not in t and "^" not in t for t in labels), labels
        assert all(float(t) > 0 for t in labels)
    assert {"0.1", "1", "10"} <= set(tick_labels(fig, ax.xaxis))
    # a narrow range stays linear
    narrow = pareto_figure([1.0, 1.5, 2.0], [80.0, 85.0, 90.0], [outcome(2.0, 0.1, 2.0, 90.0)])
    assert narrow.axes[0].get_xscale() == "linear" and narrow.axes[0].get_yscale() == "linear"


def test_search_folder_plot_has_every_element(tmp_path: Path, monkeypatch) -> None:
    figures = []
    monkeypatch.setattr(outputs, "save_figure",
                        lambda fig, path: (figures.append(fig), pareto.save_figure(fig, path)))
    session = run_search(SearchJob(strategy="random", queries=20), "flops", [0.12],
                         data_dir=DATA_DIR, margin=0.2, out=tmp_path)
    [fig] = figures
    ax = fig.axes[0]
    [(budget, result)] = session.results
    assert [line.get_xdata()[0] for line in by_gid(ax, "budget")] == [0.12]
    assert by_gid(ax, "searched-under")[0].get_xdata()[0] == pytest.approx(0.1)
    assert [tuple(p) for p in by_gid(ax, "winner")[0].get_offsets()] == \
        [(result.predicted_ms, result.accuracy)]
    assert len(by_gid(ax, "evaluated")[0].get_offsets()) == 20
    assert by_gid(ax, "pareto-front") and by_gid(ax, "background")  # the whole space, too
    assert result.arch in ax.get_title()
    assert (tmp_path / "random-0.12ms" / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_plot_has_every_element(tmp_path: Path, monkeypatch) -> None:
    from latbench import pipeline

    figures = []
    monkeypatch.setattr(pareto, "save_figure", lambda fig, path: figures.append(fig))
    space = get_space("nasbench-macro", resolution=8)
    archs = space.all_archs()
    rng = np.random.default_rng(0)
    latency = rng.uniform(0.1, 1.0, len(archs))
    accuracy = {space.encode(a): float(v) for a, v in zip(archs, rng.uniform(85, 95, len(archs)),
                                                           strict=True)}
    outcomes = [outcome(0.3, 0.1, 0.25, 90.0, measured=0.29),
                outcome(0.8, 0.1, 0.7, 94.0, measured=0.85)]
    pipeline._pareto_plot(latency, space, accuracy, outcomes, tmp_path / "p.png", "phone")
    [fig] = figures
    ax = fig.axes[0]
    assert len(by_gid(ax, "budget")) == len(by_gid(ax, "searched-under")) == 2
    assert len(by_gid(ax, "winner-measured")) == 2 and by_gid(ax, "pareto-front")
    assert {t.get_text().strip() for t in by_gid(ax, "budget-label")} == {"0.3 ms", "0.8 ms"}
    assert "phone" in ax.get_xlabel()
    assert "winner (measured)" in legend_labels(ax)
