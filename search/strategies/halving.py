"""Successive halving and Hyperband over candidate architectures, with an epoch budget.

Successive halving trains n candidates (all within the latency budget) for r epochs, keeps the
best 1/eta by validation accuracy, trains the survivors on (resuming, not restarting) up to
r * eta epochs, and so on up to `max_epochs`. Hyperband runs several such brackets, from many
candidates trained briefly to few trained long. The winner is tested on the test split.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latbench.bench.spaces.base import Arch, SearchSpace
from latbench.errors import ConfigError, SearchError
from latbench.search.latency import LatencyTable
from latbench.search.strategies.base import (
    SearchContext,
    SearchResult,
    Strategy,
    register_strategy,
)
from latbench.search.strategies.evolution import sample_feasible

log = logging.getLogger(__name__)


@dataclass
class _Candidate:
    arch: Arch
    module: Any
    optimizer: Any
    epochs: int = 0
    val_accuracy: float = 0.0
    history: list[float] = field(default_factory=list)


def rungs(n: int, min_epochs: int, max_epochs: int, eta: int) -> list[tuple[int, int]]:
    """(candidates, epochs reached) per rung of one successive-halving bracket; the last rung
    trains its survivors to max_epochs."""
    out = []
    r, k = min_epochs, n
    while True:
        out.append((k, min(r, max_epochs)))
        if r >= max_epochs:
            return out
        k = max(1, k // eta)
        r *= eta


def bracket_epochs(n: int, min_epochs: int, max_epochs: int, eta: int) -> int:
    """Epochs one bracket trains in total (survivors resume, so each epoch counts once)."""
    total, done = 0, 0
    for k, r in rungs(n, min_epochs, max_epochs, eta):
        total += k * (r - done)
        done = r
    return total


def hyperband_brackets(min_epochs: int, max_epochs: int, eta: int) -> list[tuple[int, int]]:
    """(candidates, first-rung epochs) per Hyperband bracket, most exploratory first."""
    s_max = int(math.floor(math.log(max_epochs / min_epochs, eta) + 1e-9))
    out = []
    for s in range(s_max, -1, -1):
        n = int(math.ceil((s_max + 1) / (s + 1) * eta ** s))
        out.append((n, max(min_epochs, int(round(max_epochs / eta ** s)))))
    return out


@register_strategy("halving")
class SuccessiveHalving(Strategy):
    """Train candidates and halve them (see the module docstring); `hyperband=True` runs the
    Hyperband brackets. `epoch_budget`, when given, sizes the single bracket's candidates."""

    trains = True
    accuracy_sources = ()
    epochs_option = "max_epochs"

    def __init__(self, n_candidates: int = 9, min_epochs: int = 1, max_epochs: int = 3,
                 eta: int = 3, hyperband: bool = False, epoch_budget: int | None = None,
                 batch_size: int = 64, lr: float = 0.05, max_steps: int | None = None,
                 proxy: str | None = None, device: str = "cpu") -> None:
        if eta < 2 or min_epochs < 1 or max_epochs < min_epochs or n_candidates < 1:
            raise ConfigError("successive halving needs eta >= 2, 1 <= min_epochs <= "
                              "max_epochs and n_candidates >= 1")
        self.n_candidates, self.min_epochs = n_candidates, min_epochs
        self.max_epochs, self.eta, self.hyperband = max_epochs, eta, hyperband
        self.epoch_budget, self.batch_size, self.lr = epoch_budget, batch_size, lr
        self.max_steps, self.proxy, self.device = max_steps, proxy, device

    def _n_for_budget(self) -> int:
        n = self.n_candidates
        if self.epoch_budget is None:
            return n
        n = 1
        while bracket_epochs(n + 1, self.min_epochs, self.max_epochs, self.eta) \
                <= self.epoch_budget:
            n += 1
        if bracket_epochs(n, self.min_epochs, self.max_epochs, self.eta) > self.epoch_budget:
            raise ConfigError(f"epoch budget {self.epoch_budget} cannot train one candidate to "
                              f"{self.max_epochs} epochs")
        return n

    def search(self, space: SearchSpace, table: LatencyTable, accuracy: Any,
               budget_ms: float, context: SearchContext | None = None) -> SearchResult:
        from latbench.search.data import load_data, loader
        from latbench.search.supernet import accuracy as test_accuracy

        context = context or SearchContext()
        seed, progress = context.seed, context.progress
        data = load_data(context.data, space.input_shape[-1], seed)
        if data.num_classes != getattr(space, "num_classes", data.num_classes):
            raise ConfigError(f"space {space.name} has {space.num_classes} classes, the data "
                              f"{data.num_classes}")
        started = time.perf_counter()
        rng = np.random.default_rng(seed)
        if self.hyperband:
            brackets = hyperband_brackets(self.min_epochs, self.max_epochs, self.eta)
        else:
            brackets = [(self._n_for_budget(), self.min_epochs)]
        total_epochs = sum(bracket_epochs(n, r, self.max_epochs, self.eta) for n, r in brackets)
        train = loader(data.train, self.batch_size, True, seed)
        val = loader(data.val, self.batch_size, False)
        steps = len(train) if self.max_steps is None else min(self.max_steps, len(train))
        lane = "halving" if not self.hyperband else "hyperband"
        if progress is not None:
            progress.start(lane, total_epochs * steps)
        history: list[dict[str, Any]] = []
        finalists: list[_Candidate] = []
        seen: set[tuple[int, ...]] = set()
        for b, (n, first) in enumerate(brackets):
            archs = self._candidates(space, table, budget_ms, n, rng, seen, seed)
            if not archs:
                raise SearchError(f"no {space.name} architecture is predicted under "
                                  f"{budget_ms:.4g} ms")
            seen.update(a.choices for a in archs)
            pool = [self._build(space, a, seed) for a in archs]
            for k, r in rungs(len(pool), first, self.max_epochs, self.eta):
                pool = sorted(pool, key=lambda c: c.val_accuracy, reverse=True)[:k] \
                    if pool[0].epochs else pool
                for cand in pool:
                    self._train_to(cand, r, train, steps, lane, progress)
                    cand.val_accuracy = test_accuracy(cand.module, val, self.device)
                    cand.history.append(cand.val_accuracy)
                    history.append({"bracket": b, "arch": space.encode(cand.arch),
                                    "epochs": cand.epochs, "accuracy": cand.val_accuracy,
                                    "predicted_ms": table.latency(cand.arch)})
            finalists.append(max(pool, key=lambda c: (c.epochs, c.val_accuracy)))
        best = max(finalists, key=lambda c: (c.epochs, c.val_accuracy))
        test = loader(data.test, self.batch_size, False)
        acc = test_accuracy(best.module, test, self.device)
        return SearchResult(self.name, space.encode(best.arch), acc, table.latency(best.arch),
                            float(budget_ms), len(seen), len(seen), history, 0,
                            best.module.cpu(),
                            info={"val_accuracy": best.val_accuracy, "epochs": best.epochs,
                                  "total_epochs": total_epochs, "evaluations": len(history),
                                  "brackets": [list(b) for b in brackets], "data": data.name,
                                  "seconds": time.perf_counter() - started})

    def _candidates(self, space: SearchSpace, table: LatencyTable, budget_ms: float, n: int,
                    rng: np.random.Generator, seen: set[tuple[int, ...]],
                    seed: int) -> list[Arch]:
        if not self.proxy:
            return sample_feasible(space, table, budget_ms, n, rng, exclude=seen)
        from latbench.search.proxies import ProxyScorer

        pool = sample_feasible(space, table, budget_ms, 4 * n, rng, exclude=seen)
        scores = ProxyScorer(space, self.proxy, seed=seed)(pool)
        return [pool[i] for i in np.argsort(-scores, kind="stable")[:n]]

    def _build(self, space: SearchSpace, arch: Arch, seed: int) -> _Candidate:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = space.to_torch(arch).to(self.device)
        optimizer = torch.optim.SGD(module.parameters(), lr=self.lr, momentum=0.9,
                                    weight_decay=4e-5, nesterov=True)
        return _Candidate(arch, module, optimizer)

    def _train_to(self, cand: _Candidate, epochs: int, train: Any, steps: int,
                  lane: str, progress: Any) -> None:
        import torch.nn.functional as F

        cand.module.train()
        while cand.epochs < epochs:
            # the learning rate follows a cosine over max_epochs, wherever a candidate stops
            for group in cand.optimizer.param_groups:
                group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * cand.epochs /
                                                            self.max_epochs))
            for step, (x, y) in enumerate(train):
                if step >= steps:
                    break
                loss = F.cross_entropy(cand.module(x.to(self.device)), y.to(self.device))
                cand.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                cand.optimizer.step()
                if progress is not None:
                    progress.advance(lane, 1)
            cand.epochs += 1
