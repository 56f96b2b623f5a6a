"""One search as the command line runs it: space, latency table, accuracy source or data,
strategy, and the files a user takes away.

Per budget, `write_outputs` leaves in its folder: history.jsonl and history.csv (every
architecture the strategy evaluated), pareto.png (accuracy vs predicted latency with the
Pareto front, the budget and the winner), winner.txt (the architecture string), winner.json
(what to rebuild it with), winner.pt (a state_dict, trained when the strategy trained it) and
winner.onnx.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latbench.bench.spaces import SearchSpace, get_space
from latbench.errors import ConfigError
from latbench.search.latency import LatencyTable, choices_matrix
from latbench.search.strategies.base import SearchResult

log = logging.getLogger(__name__)

TRAINING_STRATEGIES = ("halving", "proxyless-g", "proxyless-r")
# Space options used when a strategy trains networks and the user set none: small enough for a
# 2-core CPU and the 8x8 digits (each is printed, and any can be overridden).
CPU_TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "proxyless": {"resolution": 32, "width_mult": 0.35},
    "nasbench201": {"cells": 2},
}


def parse_options(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    """KEY=VALUE strings -> dict; values are JSON when they parse (numbers, lists, true)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r} is not KEY=VALUE")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except ValueError:
            out[key.replace("-", "_")] = raw
    return out


@dataclass(frozen=True)
class SearchJob:
    space: str = "nasbench-macro"
    space_options: Mapping[str, Any] = field(default_factory=dict)
    strategy: str = "exhaustive"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    accuracy: str | None = None     # table | surrogate[:gbm|mlp[:N]] | proxy:NAME
    data: str = "digits"            # for strategies that train: digits or an image folder
    seed: int = 0

    @property
    def trains(self) -> bool:
        return self.strategy in TRAINING_STRATEGIES


def build_space(job: SearchJob, num_classes: int | None = None) -> tuple[SearchSpace,
                                                                          dict[str, Any]]:
    """The space with the job's options (plus CPU-sized defaults when the strategy trains)."""
    options = dict(job.space_options)
    if job.trains:
        for key, value in CPU_TRAINING_DEFAULTS.get(job.space, {}).items():
            options.setdefault(key, value)
        if num_classes is not None:
            options.setdefault("num_classes", num_classes)
    try:
        return get_space(job.space, **options), options
    except TypeError as exc:
        raise ConfigError(f"bad option for space {job.space}: {exc}") from exc


def accuracy_for(job: SearchJob, space: SearchSpace, table: Mapping[str, float] | None) -> Any:
    """What the strategy scores architectures with (None for strategies that train)."""
    from latbench.search.accuracy import make_source

    if job.trains:
        return None
    spec = job.accuracy or ("table" if table is not None else "proxy:naswot")
    if job.strategy == "exhaustive":
        if spec != "table" or table is None:
            raise ConfigError(f"exhaustive search needs an accuracy table; {space.name} has "
                              "none here (use evolution or random with --accuracy proxy:NAME)")
        return table
    return make_source(spec, space, table, seed=job.seed)


def strategy_options(job: SearchJob, data: Any, progress: Any, dist_info: Any) -> dict[str, Any]:
    options = dict(job.strategy_options)
    if job.strategy != "exhaustive":
        options.setdefault("seed", job.seed)
    if job.strategy in ("evolution", "random", "halving"):
        options.setdefault("progress", progress)
    if job.strategy == "halving":
        options.setdefault("data", data)
    if job.strategy.startswith("proxyless"):
        options.update(data=data, progress=progress, dist_info=dist_info)
    return options


@dataclass
class Prepared:
    """Everything a job searches with, built once for all its budgets."""

    job: SearchJob
    space: SearchSpace
    space_options: dict[str, Any]
    table: LatencyTable
    manifest: dict[str, Any] | None
    accuracy_table: Mapping[str, float] | None
    margin: float
    data: Any = None

    @property
    def measurable(self) -> bool:
        return self.manifest is not None

    def latency_range(self) -> tuple[float, float]:
        """Predicted ms of the space's fastest and slowest architectures."""
        rows = self.table.layer_ms
        return (self.table.fixed_ms + sum(min(r) for r in rows),
                self.table.fixed_ms + sum(max(r) for r in rows))


def prepare(job: SearchJob, predictor: str, data_dir: Path | None = None,
            margin: float | None = None) -> Prepared:
    """Space, latency table (a predictor directory, or "flops" for the analytical table),
    benchmark accuracy table when the space has one, search data when the strategy trains."""
    from latbench.search.data import load_data

    data = None
    if job.trains:
        probe, _ = build_space(job)
        data = load_data(job.data, probe.input_shape[-1], job.seed)
    space, options = build_space(job, None if data is None else data.num_classes)
    if data is not None and data.resolution != space.input_shape[-1]:
        data = load_data(job.data, space.input_shape[-1], job.seed)
    manifest = None
    if predictor == "flops":
        table = LatencyTable.from_flops(space)
        margin = 0.0 if margin is None else margin
    else:
        from latbench.predictor.io import load_predictor
        from latbench.predictor.model_level import safety_margin

        model, manifest = load_predictor(Path(predictor))
        table = LatencyTable.from_predictor(space, model, manifest.get("device", ""),
                                            manifest.get("runtime", ""))
        margin = safety_margin(manifest) if margin is None else margin
    accuracy_table = None
    if job.space == "nasbench-macro" and data_dir is not None and not job.trains:
        from latbench.bench.spaces.nasbench_macro import load_accuracy_table

        accuracy_table = load_accuracy_table(data_dir)
    return Prepared(job, space, options, table, manifest, accuracy_table, margin, data)


def run_job(prepared: Prepared, budgets_ms: Sequence[float], progress: Any = None,
            dist_info: Any = None) -> list[tuple[float, SearchResult]]:
    from latbench.search.budget import search_budgets

    job = prepared.job
    accuracy = accuracy_for(job, prepared.space, prepared.accuracy_table)
    options = strategy_options(job, prepared.data, progress, dist_info)
    return search_budgets(prepared.space, prepared.table, accuracy, budgets_ms, job.strategy,
                          prepared.margin, options)


# --- outputs ---------------------------------------------------------------------------------
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


def plot_pareto(path: Path, latency: Sequence[float], accuracy: Sequence[float],
                budget_ms: float, winner: tuple[float, float], title: str,
                background: tuple[np.ndarray, np.ndarray] | None = None,
                accuracy_label: str = "accuracy (%)") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = np.asarray(latency, dtype=float)
    acc = np.asarray(accuracy, dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if background is not None:
        ax.scatter(background[0], background[1], s=3, c="0.85", label="whole space")
    ax.scatter(lat, acc, s=10, alpha=0.6, label="evaluated")
    if len(lat):
        front = pareto_front(lat, acc)
        ax.step(lat[front], acc[front], where="post", c="C1", label="Pareto front")
    ax.axvline(budget_ms, c="C3", ls="--", label=f"budget {budget_ms:.4g} ms")
    ax.scatter([winner[0]], [winner[1]], marker="*", s=160, c="C2", zorder=5, label="winner")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel(accuracy_label)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(out: Path, space: SearchSpace, space_options: Mapping[str, Any],
                  table: LatencyTable, result: SearchResult, budget_ms: float,
                  accuracy_table: Mapping[str, float] | None = None) -> dict[str, Path]:
    """The files of one search (see the module docstring)."""
    import pandas as pd
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"history_jsonl": out / "history.jsonl", "history_csv": out / "history.csv",
             "pareto": out / "pareto.png", "arch": out / "winner.txt",
             "winner": out / "winner.json", "module": out / "winner.pt",
             "onnx": out / "winner.onnx"}
    history = list(result.history)
    with paths["history_jsonl"].open("w") as f:
        for row in history:
            f.write(json.dumps(row, default=float) + "\n")
    pd.DataFrame(history).to_csv(paths["history_csv"], index=False)
    background = None
    if accuracy_table is not None and space.size <= 20_000:
        archs = space.all_archs()
        background = (table.latencies(choices_matrix(archs)),
                      np.array([accuracy_table.get(space.encode(a), np.nan) for a in archs]))
    points = [(h["predicted_ms"], h["accuracy"]) for h in history
              if "predicted_ms" in h and h.get("accuracy") is not None]
    source = str(result.info.get("accuracy_source", "table"))
    if result.module is not None:
        label = f"accuracy on {result.info.get('data', 'the search data')} (%)"
    elif source.startswith("proxy"):
        label = f"{source} score"
    else:
        label = "accuracy (%)"
    plot_pareto(paths["pareto"], [p[0] for p in points], [p[1] for p in points], budget_ms,
                (result.predicted_ms, result.accuracy),
                f"{space.name} {result.strategy}: {result.arch[:40]}", background, label)
    paths["arch"].write_text(result.arch + "\n")
    arch = space.decode(result.arch)
    trained = result.module is not None
    module = result.module if trained else space.to_torch(arch)
    paths["winner"].write_text(json.dumps({
        "space": space.name, "space_options": dict(space_options), "arch": result.arch,
        "choices": list(arch.choices), "trained": trained, "input_shape": space.input_shape,
        "budget_ms": budget_ms, "result": result.to_json(), "latency_table": {
            "device": table.device, "runtime": table.runtime}}, indent=1, default=str) + "\n")
    torch.save(module.state_dict(), paths["module"])
    paths["onnx"].write_bytes(space.to_onnx(arch, module))
    return paths


def load_winner(folder: Path) -> tuple[SearchSpace, Any, Any]:
    """(space, arch, module with the saved weights) from a folder write_outputs filled."""
    import torch

    folder = Path(folder)
    meta = json.loads((folder / "winner.json").read_text())
    space = get_space(meta["space"], **meta.get("space_options", {}))
    arch = space.decode(meta["arch"])
    module = space.to_torch(arch)
    module.load_state_dict(torch.load(folder / "winner.pt", weights_only=True))
    return space, arch, module
