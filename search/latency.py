"""LatencyTable: predicted ms of every (layer, candidate) of a space plus a fixed part.

Because a layer-wise space's latency is a sum over its kernels, the table gives any
architecture's predicted latency with one lookup per layer, which is what lets a search query
millions of architectures (and, in a later stage, lets a supernet take gradients of the
expected latency).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latbench.errors import SearchError
from predictor.model_level import composed_kernel_ms
from search.spaces.base import Arch, SearchSpace


@dataclass(frozen=True)
class LatencyTable:
    space: str
    fixed_ms: float
    layer_ms: tuple[tuple[float, ...], ...]
    device: str = ""
    runtime: str = ""

    @classmethod
    def from_predictor(cls, space: SearchSpace, predictor: Any, device: str = "",
                       runtime: str = "") -> LatencyTable:
        """Predict every candidate once; the fixed part includes one call overhead."""
        prefix, suffix = space.fixed_ops()
        fixed = float(np.sum(composed_kernel_ms(predictor, [*prefix, *suffix])))
        fixed += float(getattr(predictor, "call_overhead_ms_", 0.0))
        rows = []
        for layer in range(space.n_layers):
            rows.append(tuple(float(np.sum(composed_kernel_ms(predictor, candidate)))
                              for candidate in space.candidates(layer)))
        return cls(space.name, fixed, tuple(rows), device, runtime)

    def latency(self, arch: Arch) -> float:
        if arch.space != self.space:
            raise SearchError(f"table of space {self.space!r} asked about a {arch.space} "
                              "architecture")
        return self.fixed_ms + sum(self.layer_ms[i][c] for i, c in enumerate(arch.choices))

    def latencies(self, choices: np.ndarray) -> np.ndarray:
        """Latency of many architectures at once; `choices` is (n_archs, n_layers) ints."""
        choices = np.asarray(choices, dtype=np.int64)
        width = max(len(r) for r in self.layer_ms)
        table = np.full((len(self.layer_ms), width), np.nan)
        for i, row in enumerate(self.layer_ms):
            table[i, :len(row)] = row
        values = table[np.arange(len(self.layer_ms))[None, :], choices]
        if np.isnan(values).any():
            raise SearchError("an architecture uses a candidate the table does not have")
        return self.fixed_ms + values.sum(axis=1)

    def to_json(self) -> dict[str, Any]:
        return {"space": self.space, "fixed_ms": self.fixed_ms,
                "layer_ms": [list(r) for r in self.layer_ms], "device": self.device,
                "runtime": self.runtime}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencyTable:
        return cls(data["space"], float(data["fixed_ms"]),
                   tuple(tuple(float(v) for v in row) for row in data["layer_ms"]),
                   data.get("device", ""), data.get("runtime", ""))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        return cls.from_json(json.loads(Path(path).read_text()))


def choices_matrix(archs: Sequence[Arch]) -> np.ndarray:
    return np.array([a.choices for a in archs], dtype=np.int64)
