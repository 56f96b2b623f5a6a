"""The files one search under one budget leaves in its folder, and rebuilding its winner.

`write_outputs` writes: history.jsonl and history.csv (every architecture the strategy
evaluated), pareto.png (accuracy vs predicted latency with the Pareto front, the budget, the
searched-under line and the winner, measured too when it was), winner.txt (the architecture
string), winner.json (what to rebuild it with), winner.pt (a state_dict, trained when the
strategy trained it), winner.onnx, and outcome.json (predicted vs measured latency, whether the
budget holds). `load_winner` reads such a folder back.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from latbench.bench.spaces import SearchSpace, get_space
from latbench.extras import can_plot
from latbench.search.budget import BudgetOutcome
from latbench.search.latency import LatencyTable, choices_matrix
from latbench.search.pareto import pareto_figure, save_figure
from latbench.search.strategies import SearchResult

# Spaces up to this size are drawn whole behind the evaluated points (when an accuracy table
# gives every architecture's accuracy).
BACKGROUND_MAX_SIZE = 20_000


def accuracy_label(result: SearchResult) -> str:
    """What the result's accuracy is: test accuracy on the data, a proxy score, or a table's %."""
    source = str(result.info.get("accuracy_source", "table"))
    if result.module is not None:
        return f"accuracy on {result.info.get('data', 'the search data')} (%)"
    if source.startswith("proxy"):
        return f"{source} score"
    return "accuracy (%)"


def write_outputs(out: Path, space: SearchSpace, space_options: Mapping[str, Any],
                  table: LatencyTable, result: SearchResult, outcome: BudgetOutcome,
                  accuracy_table: Mapping[str, float] | None = None,
                  platform: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """The files of one search (see the module docstring); `outcome` is the result's budget
    outcome (measured or not); `platform` (its JSON form) is what the table predicted for, named
    in winner.json and outcome.json."""
    import pandas as pd
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"history_jsonl": out / "history.jsonl", "history_csv": out / "history.csv",
             "pareto": out / "pareto.png", "arch": out / "winner.txt",
             "winner": out / "winner.json", "module": out / "winner.pt",
             "onnx": out / "winner.onnx", "outcome": out / "outcome.json"}
    history = list(result.history)
    with paths["history_jsonl"].open("w") as f:
        for row in history:
            f.write(json.dumps(row, default=float) + "\n")
    pd.DataFrame(history).to_csv(paths["history_csv"], index=False)
    background = None
    if accuracy_table is not None and space.size <= BACKGROUND_MAX_SIZE:
        archs = space.all_archs()
        background = (table.latencies(choices_matrix(archs)),
                      np.array([accuracy_table.get(space.encode(a), np.nan) for a in archs]))
    points = [(h["predicted_ms"], h["accuracy"]) for h in history
              if "predicted_ms" in h and h.get("accuracy") is not None]
    title = (f"{space.name} / {result.strategy}, budget {outcome.budget_ms:g} ms: winner\n"
             + textwrap.fill(result.arch, 90))
    if can_plot(paths["pareto"]):
        figure = pareto_figure([p[0] for p in points], [p[1] for p in points], [outcome],
                               background=background, title=title,
                               accuracy_label=accuracy_label(result))
        save_figure(figure, paths["pareto"])
    paths["arch"].write_text(result.arch + "\n")
    arch = space.decode(result.arch)
    trained = result.module is not None
    module = result.module if trained else space.to_torch(arch)
    paths["winner"].write_text(json.dumps({
        "space": space.name, "space_options": dict(space_options), "arch": result.arch,
        "choices": list(arch.choices), "trained": trained, "input_shape": space.input_shape,
        "budget_ms": outcome.budget_ms, "result": result.to_json(), "latency_table": {
            "device": table.device, "runtime": table.runtime}, "platform": platform},
        indent=1, default=str) + "\n")
    torch.save(module.state_dict(), paths["module"])
    paths["onnx"].write_bytes(space.to_onnx(arch, module))
    paths["outcome"].write_text(json.dumps({**outcome.to_json(), "platform": platform},
                                           indent=1) + "\n")
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
