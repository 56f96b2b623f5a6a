"""LatencyTable: predicted ms of every (layer, candidate) of a space plus a fixed part.

Because a layer-wise space's latency is a sum over its kernels, the table gives any
architecture's predicted latency with one lookup per layer, which is what lets a search query
millions of architectures, and lets a supernet take gradients of the expected latency
(`search.expected_latency.ExpectedLatency`, the torch side: E[lat] = fixed +
sum_l softmax(alpha_l) . T_l). The loss forms and the masked softmax work on any tensor type
and live here with the table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latbench.bench.spaces.base import Arch, SearchSpace
from latbench.errors import SearchError

if TYPE_CHECKING:
    from latbench.predictor.latency_predictor import LatencyPredictor


@dataclass(frozen=True)
class LatencyTable:
    space: str
    fixed_ms: float
    layer_ms: tuple[tuple[float, ...], ...]
    device: str = ""
    runtime: str = ""

    @classmethod
    def from_predictor(cls, space: SearchSpace, predictor: LatencyPredictor,
                       device: str | None = None, runtime: str | None = None) -> LatencyTable:
        """Predict every candidate once; the fixed part includes one call overhead. The table
        names the predictor's device and runtime unless `device` / `runtime` say otherwise."""
        dtype = predictor.platform.precision  # the space's networks in the predictor's precision

        def ms(specs: Sequence[Any]) -> float:
            return float(np.sum(predictor.kernel_ms([s.with_(dtype=dtype) for s in specs])))

        prefix, suffix = space.fixed_ops()
        fixed = ms([*prefix, *suffix]) + predictor.call_overhead_ms_
        rows = []
        for layer in range(space.n_layers):
            rows.append(tuple(ms(candidate) for candidate in space.candidates(layer)))
        return cls(space.name, fixed, tuple(rows), predictor.device if device is None else device,
                   predictor.runtime if runtime is None else runtime)

    @classmethod
    def from_flops(cls, space: SearchSpace, ms_per_gflop: float = 1.0,
                   ms_per_kernel: float = 0.005) -> LatencyTable:
        """A roofline-free analytical table (ms = per-kernel overhead + FLOPs x rate): no
        device, no predictor; for trying strategies offline and for tests."""
        from latbench.predictor.features import kernel_cost

        def ms(specs: Sequence[Any]) -> float:
            return float(sum(ms_per_kernel + ms_per_gflop * kernel_cost(s).flops / 1e9
                             for s in specs))

        prefix, suffix = space.fixed_ops()
        rows = tuple(tuple(ms(c) for c in space.candidates(i)) for i in range(space.n_layers))
        return cls(space.name, ms([*prefix, *suffix]), rows, "flops-model", "")

    def latency(self, arch: Arch) -> float:
        if arch.space != self.space:
            raise SearchError(f"table of space {self.space!r} asked about a {arch.space} "
                              "architecture")
        return float(self.latencies(np.array([arch.choices]))[0])

    def latencies(self, choices: np.ndarray) -> np.ndarray:
        """Latency of many architectures at once; `choices` is (n_archs, n_layers) ints."""
        choices = np.asarray(choices, dtype=np.int64)
        if choices.ndim != 2 or choices.shape[1] != len(self.layer_ms):
            raise SearchError(f"{self.space} architectures have {len(self.layer_ms)} layers; got "
                              f"choices of shape {choices.shape}")
        width = max(len(r) for r in self.layer_ms)
        if choices.size and (choices.min() < 0 or choices.max() >= width):
            # a negative index would silently pick a candidate from the end of the row
            raise SearchError("an architecture uses a candidate the table does not have")
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


def padded_table(table: LatencyTable) -> tuple[np.ndarray, np.ndarray]:
    """(ms, mask): layer_ms as an (n_layers, max candidates) array, 0 where a layer has fewer
    candidates, and the mask of real entries."""
    width = max(len(r) for r in table.layer_ms)
    ms = np.zeros((len(table.layer_ms), width))
    mask = np.zeros_like(ms, dtype=bool)
    for i, row in enumerate(table.layer_ms):
        ms[i, :len(row)] = row
        mask[i, :len(row)] = True
    return ms, mask


def masked_softmax(alpha: Any, mask: Any) -> Any:
    """Softmax over each layer's real candidates (padding gets probability 0 and no gradient)."""
    return alpha.masked_fill(~mask, float("-inf")).softmax(dim=-1)


def additive_loss(ce: Any, latency_ms: Any, lam: float, target_ms: float | None = None) -> Any:
    """CE + lambda * E[lat]: lambda in 1/ms trades accuracy for latency at a fixed rate. With a
    target (hinge), only the part above it costs: CE + lambda * max(E[lat] - target, 0)."""
    if target_ms is None:
        return ce + lam * latency_ms
    return ce + lam * (latency_ms - target_ms).clamp(min=0)


def multiplicative_loss(ce: Any, latency_ms: Any, target_ms: float, beta: float,
                        hinge: bool = False) -> Any:
    """CE * (E[lat] / target)^beta: scale-free, always rewards a faster network. With `hinge`,
    CE * max(E[lat] / target, 1)^beta: no pressure once under the target."""
    if target_ms <= 0:
        raise SearchError(f"latency target must be > 0 ms, got {target_ms}")
    ratio = latency_ms / target_ms
    if hinge:
        ratio = ratio.clamp(min=1.0)
    return ce * ratio ** beta


def repair_to_budget(choices: Sequence[int], table: LatencyTable, budget_ms: float,
                     preference: np.ndarray | None = None,
                     rng: np.random.Generator | None = None) -> tuple[int, ...] | None:
    """Move layers to cheaper candidates until the predicted latency fits the budget.

    With `preference` (an (n_layers, max candidates) score, e.g. log-probabilities) each move
    is the one losing the least preference per ms saved, or, once one move can reach the
    budget, the fitting move losing least; without preferences a random cheaper move. None when
    even the fastest candidates do not fit.
    """
    current = [int(c) for c in choices]
    ms, mask = padded_table(table)
    fastest = table.fixed_ms + float(np.where(mask, ms, np.inf).min(axis=1).sum())
    if fastest > budget_ms:
        return None
    total = table.fixed_ms + float(sum(ms[i, c] for i, c in enumerate(current)))
    while total > budget_ms:
        moves = [(i, c) for i in range(len(current)) for c in range(int(mask[i].sum()))
                 if ms[i, c] < ms[i, current[i]]]
        if preference is not None:
            def loss(move: tuple[int, int]) -> float:
                return float(preference[move[0], current[move[0]]] - preference[move])

            def saved(move: tuple[int, int]) -> float:
                return float(ms[move[0], current[move[0]]] - ms[move])

            finishing = [m for m in moves if total - saved(m) <= budget_ms]
            if finishing:  # the least loss that fits, using as much of the budget as possible
                layer, cand = min(finishing, key=lambda m: (loss(m), saved(m)))
            else:  # else the least loss per ms saved
                layer, cand = min(moves, key=lambda m: loss(m) / saved(m))
        else:
            generator = rng or np.random.default_rng(0)
            layer, cand = moves[int(generator.integers(len(moves)))]
        total -= ms[layer, current[layer]] - ms[layer, cand]
        current[layer] = cand
    return tuple(current)
