"""A weight-sharing supernet with a latency term, trained with ProxylessNAS's recipes.

Every searchable layer of a space becomes a `MixedOp` over its candidates; which candidates run
is decided per forward by a `Path`:
- "full": DARTS-style weighted sum of every candidate (softmax(alpha) weights); memory grows
  with the number of candidates. Kept for comparison.
- "single": one candidate per layer. Weight updates of the two-path and REINFORCE modes sample
  one path from softmax(alpha), so only that path's activations are kept.
- "binary": ProxylessNAS gradient mode for architecture updates: two candidates sampled per
  layer, binary gates (one active), BinaryConnect-style gradient on alpha. The inactive
  candidate runs without autograd (only its output is kept, to price its gate).
Training alternates weight updates on the train split and architecture updates on the
validation split. The latency term is `ExpectedLatency` (E[lat] from a LatencyTable) in an
additive or multiplicative loss; REINFORCE uses a reward from accuracy and predicted latency
with a moving-average baseline.

Under `torchrun` (WORLD_SIZE > 1) weights train with DistributedDataParallel (gloo on CPU, nccl
on GPU); every rank samples the same paths (rank 0's are broadcast) and the alpha gradient is
all-reduced, so ranks keep identical weights and architecture parameters.

This module imports torch; the strategies import it only when they train.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from latbench.bench.spaces.base import Arch, SearchSpace
from latbench.errors import ConfigError, SearchError
from latbench.search.data import loader
from latbench.search.expected_latency import ExpectedLatency
from latbench.search.latency import (
    LatencyTable,
    additive_loss,
    masked_softmax,
    multiplicative_loss,
    padded_table,
    repair_to_budget,
)

log = logging.getLogger(__name__)

MODES = ("full", "two_path", "reinforce")
LOSSES = ("additive", "multiplicative")


@dataclass(frozen=True)
class SupernetConfig:
    """How a supernet trains. Defaults are sized for CPU training on the digits data."""

    mode: str = "two_path"
    epochs: int = 4
    warmup_epochs: int = 1          # weights only (uniform paths) before alpha moves
    batch_size: int = 64
    max_steps: int | None = None    # weight steps per epoch (None = the whole train split)
    weight_lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    arch_lr: float = 0.02
    arch_every: int = 1             # one architecture update every N weight updates
    loss: str = "multiplicative"    # latency term of the gradient modes (and the reward form)
    lam: float = 0.1                # additive: CE + lam * E[lat] (1/ms)
    beta: float = 0.6               # multiplicative: CE * (E[lat] / target)^beta
    hinge: bool = True              # latency costs only above the target (both forms)
    reinforce_samples: int = 2      # architectures sampled per REINFORCE update
    baseline_decay: float = 0.9     # moving-average reward baseline
    finetune_epochs: int = 1        # train the derived network alone before testing it
    eval_batches: int = 4           # validation batches scored per epoch for the history
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown supernet mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown latency loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.epochs < 1 or not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"supernet epochs must be >= 1 with 0 <= warm-up <= epochs, got "
                              f"{self.epochs} and {self.warmup_epochs}")
        if self.batch_size < 2 or self.arch_every < 1 or self.reinforce_samples < 1:
            raise ConfigError("supernet batch size must be >= 2, arch_every and "
                              "reinforce_samples >= 1")


@dataclass
class Path:
    """Which candidates run in one forward (see the module docstring)."""

    kind: str
    choices: tuple[int, ...] = ()
    weights: Any = None                       # full: (n_layers, max candidates) probabilities
    pairs: tuple[tuple[int, int], ...] = ()   # binary: two candidates per layer
    active: tuple[int, ...] = ()              # binary: 0 or 1, which of the pair is active
    gates: Any = None                         # binary: (n_layers, 2) leaf tensor of 0/1

    @classmethod
    def single(cls, choices: Sequence[int]) -> Path:
        return cls("single", choices=tuple(int(c) for c in choices))

    @classmethod
    def full(cls, weights: Any) -> Path:
        return cls("full", weights=weights)


@dataclass
class SupernetRun:
    """What a supernet search produced: the derived architecture and its trained network."""

    space: str
    mode: str
    arch: Arch
    arch_text: str
    alpha: np.ndarray
    predicted_ms: float
    expected_ms: float
    target_ms: float
    repaired: bool
    test_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)
    module: Any = None      # the derived network (weights from the supernet, fine-tuned)
    supernet: Any = None
    arch_params: Any = None
    sampled_paths: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"space": self.space, "mode": self.mode, "arch": self.arch_text,
                "predicted_ms": self.predicted_ms, "expected_ms": self.expected_ms,
                "target_ms": self.target_ms, "repaired": self.repaired,
                "test_accuracy": self.test_accuracy, "sampled_paths": self.sampled_paths,
                "seconds": self.seconds}


# --- torch modules ------------------------------------------------------------------------
class PathHolder:
    """The path of the forward in progress, shared by a supernet's mixed operations."""

    def __init__(self) -> None:
        self.path: Path | None = None


class MixedOp(nn.Module):
    """One searchable layer: its candidates, run as the current path says."""

    def __init__(self, layer: int, candidates: list[nn.Module], holder: PathHolder) -> None:
        super().__init__()
        self.layer = layer
        self.candidates = nn.ModuleList(candidates)
        self._holder = holder

    def forward(self, x):
        path = self._holder.path
        if path is None:
            raise SearchError("a supernet runs only with a path: supernet(x, path)")
        layer = self.layer
        if path.kind == "single":
            return self.candidates[path.choices[layer]](x)
        if path.kind == "full":
            weights = path.weights[layer]
            return sum(weights[k] * op(x) for k, op in enumerate(self.candidates))
        if path.kind == "binary":
            pair, a = path.pairs[layer], path.active[layer]
            out = self.candidates[pair[a]](x)
            if pair[0] == pair[1]:
                return out
            with torch.no_grad():
                other = self.candidates[pair[1 - a]](x)
            gates = path.gates[layer]
            # value: the active output; d/d(gate_k) = <dL/dout, out_k> for both candidates
            return (out + (gates[a] - gates[a].detach()) * out.detach()
                    + (gates[1 - a] - gates[1 - a].detach()) * other)
        raise SearchError(f"unknown path kind {path.kind!r}")


class Supernet(nn.Module):
    """The space's network with a MixedOp per searchable layer; forward(x, path)."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space_name = space.name
        self._holder = PathHolder()
        self.mixed: list[MixedOp] = []

        def make(layer: int, candidates: list[nn.Module]) -> MixedOp:
            op = MixedOp(layer, candidates, self._holder)
            self.mixed.append(op)
            return op

        self.body = space.supernet_body(make)
        self.n_layers = space.n_layers

    def forward(self, x, path: Path):
        self._holder.path = path
        try:
            return self.body(x)
        finally:
            self._holder.path = None


class ArchParameters(nn.Module):
    """alpha: (n_layers, max candidates) logits, masked where a layer has fewer."""

    def __init__(self, table: LatencyTable) -> None:
        super().__init__()
        _, mask = padded_table(table)
        self.register_buffer("mask", torch.from_numpy(mask))
        self.alpha = nn.Parameter(torch.zeros(mask.shape, dtype=torch.float64))

    def probs(self):
        return masked_softmax(self.alpha, self.mask)

    def log_probs(self):
        return self.alpha.masked_fill(~self.mask, float("-inf")).log_softmax(-1)

    def argmax(self) -> tuple[int, ...]:
        masked = self.alpha.detach().masked_fill(~self.mask, float("-inf"))
        return tuple(int(i) for i in masked.argmax(-1))


def build_supernet(space: SearchSpace) -> Supernet:
    return Supernet(space)


# --- distributed ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    backend: str
    local_rank: int = 0


def init_distributed(backend: str | None = None) -> Distributed | None:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None

    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), backend,
                       int(os.environ.get("LOCAL_RANK", "0")))


def close_distributed(dist_info: Distributed | None) -> None:
    if dist_info is None:
        return

    if dist.is_initialized():
        dist.destroy_process_group()


def _all_average(tensor: Any, dist_info: Distributed | None) -> None:
    if dist_info is None:
        return

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor.div_(dist_info.world_size)


def _broadcast_choices(choices: np.ndarray, dist_info: Distributed | None,
                       device: Any) -> np.ndarray:
    """Every rank takes rank 0's sample (ranks draw the same anyway; this guarantees it)."""
    if dist_info is None:
        return choices

    tensor = torch.as_tensor(np.asarray(choices, dtype=np.int64), device=device)
    dist.broadcast(tensor, src=0)
    return tensor.cpu().numpy()


def _broadcast_buffers(module: Any, dist_info: Distributed | None) -> None:
    """BatchNorm statistics from rank 0: architecture updates run outside DDP, on each rank's
    own validation shard, so only the statistics can drift apart (weights and alpha are kept
    identical by gradient averaging)."""
    if dist_info is None:
        return

    for tensor in module.buffers():
        dist.broadcast(tensor.data, src=0)


# --- helpers -------------------------------------------------------------------------------
@contextmanager
def batch_stat_norm(module: Any) -> Iterator[None]:
    """Normalise with batch statistics without touching running statistics (scoring one path
    of a supernet, whose running statistics mix every path)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum) for m in norms]
    for m in norms:
        m.train()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (training, momentum) in zip(norms, saved, strict=True):
            m.train(training)
            m.momentum = momentum


@contextmanager
def _frozen(params: Sequence[Any]) -> Iterator[None]:
    """No weight gradients (architecture updates only need gradients on alpha and gates)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def _sample(probs: np.ndarray, rng: np.random.Generator, k: int = 1) -> np.ndarray:
    """k distinct candidates per layer (fewer if a layer has fewer), drawn from probs."""
    out = np.zeros((probs.shape[0], k), dtype=np.int64)
    for i, p in enumerate(probs):
        n = int((p > 0).sum())
        p = p / p.sum()
        picks = rng.choice(len(p), size=min(k, n), replace=False, p=p)
        out[i, :len(picks)] = picks
        out[i, len(picks):] = picks[0]
    return out


def accuracy(module: Any, loader: Any, device: Any, path: Path | None = None,
             max_batches: int | None = None) -> float:
    """Top-1 accuracy in % (a supernet scored on `path` normalises with batch statistics)."""
    correct = total = 0
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for step, (x, y) in enumerate(loader):
                if max_batches is not None and step >= max_batches:
                    break
                x, y = x.to(device), y.to(device)
                if path is None:
                    out = module(x)
                else:
                    with batch_stat_norm(module):
                        out = module(x, path)
                correct += int((out.argmax(1) == y).sum())
                total += len(y)
    finally:
        module.train(was_training)
    return 100.0 * correct / max(total, 1)


def train_epochs(module: Any, loader: Any, epochs: int, lr: float, device: Any,
                 momentum: float = 0.9, weight_decay: float = 4e-5,
                 max_steps: int | None = None, progress: Any = None, lane: str = "") -> None:
    """Plain SGD training of a network with a cosine schedule (fine-tuning a derived one)."""
    if epochs <= 0:
        return
    optimizer = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay, nesterov=momentum > 0)
    steps = epochs * (len(loader) if max_steps is None else min(max_steps, len(loader)))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    module.train()
    for _ in range(epochs):
        for step, (x, y) in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(module(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if progress is not None:
                progress.advance(lane, 1)


# --- the search ----------------------------------------------------------------------------
class SupernetSearch:
    """Trains a supernet and its architecture parameters for one space, table and target."""

    def __init__(self, space: SearchSpace, table: LatencyTable, target_ms: float,
                 config: SupernetConfig | None = None,
                 dist_info: Distributed | None = None) -> None:
        if table.space != space.name:
            raise SearchError(f"latency table of space {table.space!r} given to a "
                              f"{space.name} supernet")
        if target_ms <= 0:
            raise SearchError(f"latency target must be > 0 ms, got {target_ms}")
        self.space = space
        self.table = table
        self.target_ms = float(target_ms)
        self.config = config or SupernetConfig()
        self.dist = dist_info
        self.device = torch.device(self.config.device)
        if self.dist is not None and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        # Same seed on every rank: initial weights (and path samples, below) agree. The global
        # generator is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.supernet = Supernet(space).to(self.device)
        self.arch = ArchParameters(table).to(self.device)
        self.expected_latency = ExpectedLatency(table).to(self.device)
        self.rng = np.random.default_rng(self.config.seed)
        self.baseline: float | None = None
        self.last_path: Path | None = None  # of the latest update (for inspection)
        self.sampled_paths = 0
        self.history: list[dict[str, Any]] = []
        self._ms, _ = padded_table(table)
        c = self.config
        self.weight_params = list(self.supernet.parameters())
        self.weight_opt = torch.optim.SGD(self.weight_params, lr=c.weight_lr,
                                          momentum=c.momentum, weight_decay=c.weight_decay,
                                          nesterov=c.momentum > 0)
        self.arch_opt = torch.optim.Adam([self.arch.alpha], lr=c.arch_lr, betas=(0.0, 0.999))
        self.train_net: Any = self.supernet
        if self.dist is not None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_net = DistributedDataParallel(self.supernet, device_ids=ids,
                                                     find_unused_parameters=True)

    # --- losses ------------------------------------------------------------------------------
    def latency_loss(self, ce: Any, expected_ms: Any) -> Any:
        c = self.config
        if c.loss == "additive":
            return additive_loss(ce, expected_ms, c.lam, self.target_ms if c.hinge else None)
        return multiplicative_loss(ce, expected_ms, self.target_ms, c.beta, c.hinge)

    def reward(self, acc: float, latency_ms: float) -> float:
        """Accuracy (0..1) traded against latency: additive acc - lam * lat, or MnasNet-style
        acc * (lat / target)^-beta above the target (no penalty under it)."""
        c = self.config
        if c.loss == "additive":
            return acc - c.lam * latency_ms
        if latency_ms <= self.target_ms:
            return acc
        return acc * (latency_ms / self.target_ms) ** (-c.beta)

    def predicted_ms(self, choices: Sequence[int]) -> float:
        return float(self.table.fixed_ms + sum(self._ms[i, c] for i, c in enumerate(choices)))

    def _probs(self) -> np.ndarray:
        return self.arch.probs().detach().cpu().numpy()

    # --- steps -------------------------------------------------------------------------------
    def weight_step(self, x: Any, y: Any) -> tuple[float, tuple[int, ...] | None]:
        """One weight update: a sampled single path (two_path, reinforce) or all candidates
        weighted by softmax(alpha) (full)."""
        if self.config.mode == "full":
            path = Path.full(self.arch.probs().detach().to(torch_dtype(x)))
            choices = None
        else:
            sample = _sample(self._probs(), self.rng)[:, 0]
            choices = tuple(int(c) for c in _broadcast_choices(sample, self.dist, self.device))
            path = Path.single(choices)
            self.sampled_paths += 1
        self.supernet.train()
        self.last_path = path
        loss = F.cross_entropy(self.train_net(x, path), y)
        self.weight_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.weight_opt.step()
        return float(loss.detach()), choices

    def arch_step(self, x: Any, y: Any) -> float:
        mode = self.config.mode
        if mode == "reinforce":
            return self._reinforce_step(x, y)
        return self._gradient_step(x, y, binary=(mode == "two_path"))

    def _gradient_step(self, x: Any, y: Any, binary: bool) -> float:
        alpha = self.arch.alpha
        self.arch_opt.zero_grad(set_to_none=True)
        if binary:
            probs = self._probs()
            pairs = _broadcast_choices(_sample(probs, self.rng, k=2), self.dist, self.device)
            active = []
            for i, (a, b) in enumerate(pairs):
                q = _pair_probs(alpha.detach()[i, [a, b]].cpu().numpy())
                active.append(int(self.rng.random() >= q[0]))
            active_arr = _broadcast_choices(np.array(active), self.dist, self.device)
            gates = torch.zeros(len(pairs), 2, dtype=torch_dtype(x), device=self.device)
            gates[torch.arange(len(pairs)), torch.as_tensor(active_arr)] = 1.0
            gates.requires_grad_(True)
            path = Path("binary", pairs=tuple((int(a), int(b)) for a, b in pairs),
                        active=tuple(int(a) for a in active_arr), gates=gates)
            self.sampled_paths += 2
        else:
            path = Path.full(self.arch.probs().to(torch_dtype(x)))
        self.supernet.train()
        self.last_path = path
        with _frozen(self.weight_params):  # weights move only in weight steps
            ce = F.cross_entropy(self.supernet(x, path), y)
            loss = self.latency_loss(ce, self.expected_latency(alpha))
            loss.backward()
        if binary:
            self._binary_connect(path)
        _all_average(alpha.grad, self.dist)
        old = alpha.detach().clone()
        self.arch_opt.step()
        if binary:
            self._rescale(path, old)
        return float(loss.detach())

    def _binary_connect(self, path: Path) -> None:
        """dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i) over the two sampled candidates
        (p: softmax of their alphas), added to the latency term's gradient."""
        alpha = self.arch.alpha
        if alpha.grad is None:
            alpha.grad = torch.zeros_like(alpha)
        gate_grad = path.gates.grad.detach().to(alpha.dtype)
        with torch.no_grad():
            for i, (a, b) in enumerate(path.pairs):
                if a == b:
                    continue
                p = torch.softmax(alpha[i, [a, b]], 0)
                for m, idx in enumerate((a, b)):
                    alpha.grad[i, idx] += sum(gate_grad[i, k] * p[k] * (float(k == m) - p[m])
                                              for k in range(2))

    def _rescale(self, path: Path, old: Any) -> None:
        """Keep the two sampled candidates' total probability mass as before the update (the
        others' probabilities stay put), as ProxylessNAS does."""
        alpha = self.arch.alpha
        with torch.no_grad():
            for i, (a, b) in enumerate(path.pairs):
                if a == b:
                    continue
                idx = [a, b]
                offset = (torch.logsumexp(old[i, idx], 0) - torch.logsumexp(alpha[i, idx], 0))
                alpha[i, idx] += offset

    def _reinforce_step(self, x: Any, y: Any) -> float:
        c = self.config
        samples = _broadcast_choices(
            np.stack([_sample(self._probs(), self.rng)[:, 0] for _ in range(c.reinforce_samples)]),
            self.dist, self.device)
        rewards = []
        with torch.no_grad(), batch_stat_norm(self.supernet):
            for choices in samples:
                out = self.supernet(x, Path.single(choices))
                acc = float((out.argmax(1) == y).double().mean())
                rewards.append(self.reward(acc, self.predicted_ms(choices)))
        self.sampled_paths += len(samples)
        reward_t = torch.tensor(rewards, dtype=torch.float64, device=self.device)
        _all_average(reward_t, self.dist)
        mean = float(reward_t.mean())
        self.baseline = mean if self.baseline is None else (
            c.baseline_decay * self.baseline + (1 - c.baseline_decay) * mean)
        log_probs = self.arch.log_probs()
        index = torch.as_tensor(samples, device=self.device)
        rows = torch.arange(index.shape[1], device=self.device)
        chosen = torch.stack([log_probs[rows, s].sum() for s in index])
        advantage = reward_t - self.baseline
        loss = -(advantage * chosen).mean()
        self.arch_opt.zero_grad(set_to_none=True)
        loss.backward()
        _all_average(self.arch.alpha.grad, self.dist)
        self.arch_opt.step()
        return float(loss.detach())

    # --- loop --------------------------------------------------------------------------------
    def train(self, data: Any, progress: Any = None) -> list[dict[str, Any]]:
        """Warm-up epochs (weights only), then alternate weight and architecture updates."""
        c = self.config
        rank, world = (0, 1) if self.dist is None else (self.dist.rank, self.dist.world_size)
        train = loader(data.train, c.batch_size, True, c.seed, rank, world, drop_last=True)
        val = loader(data.val, c.batch_size, True, c.seed + 1, rank, world, drop_last=True)
        if len(train) == 0 or len(val) == 0:
            raise SearchError(f"batch size {c.batch_size} is larger than the {data.name} "
                              f"train or validation split per process")
        steps = len(train) if c.max_steps is None else min(c.max_steps, len(train))
        lane = f"supernet {c.mode}"
        if progress is not None:
            progress.start(lane, steps * c.epochs)
        val_epoch = 0
        val_iter = iter(self._epoch(val, val_epoch))

        total_steps = steps * c.epochs
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.weight_opt,
                                                               max(total_steps, 1))
        for epoch in range(c.epochs):
            started = time.perf_counter()
            losses, arch_losses = [], []
            for step, (x, y) in enumerate(self._epoch(train, epoch)):
                if step >= steps:
                    break
                x, y = x.to(self.device), y.to(self.device)
                loss, _ = self.weight_step(x, y)
                losses.append(loss)
                scheduler.step()
                if epoch >= c.warmup_epochs and step % c.arch_every == 0:
                    try:
                        xv, yv = next(val_iter)
                    except StopIteration:
                        val_epoch += 1
                        val_iter = iter(self._epoch(val, val_epoch))
                        xv, yv = next(val_iter)
                    arch_losses.append(self.arch_step(xv.to(self.device), yv.to(self.device)))
                if progress is not None:
                    progress.advance(lane, 1)
            self.history.append(self._record(epoch, val, losses, arch_losses,
                                             time.perf_counter() - started))
            log.info("supernet epoch %d: %s", epoch, self.history[-1])
        _broadcast_buffers(self.supernet, self.dist)
        return self.history

    @staticmethod
    def _epoch(data_loader: Any, epoch: int) -> Any:
        sampler = getattr(data_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        return data_loader

    def _record(self, epoch: int, val: Any, losses: list[float], arch_losses: list[float],
                seconds: float) -> dict[str, Any]:
        choices = self.arch.argmax()
        probs = self._probs()
        with torch.no_grad():
            expected = float(self.expected_latency(self.arch.alpha))
        entropy = float(-(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(1).mean())
        val_acc = accuracy(self.supernet, val, self.device, Path.single(choices),
                           self.config.eval_batches)
        return {"epoch": epoch, "arch": self.space.encode(Arch(self.space.name, choices)),
                "predicted_ms": self.predicted_ms(choices), "expected_ms": expected,
                "val_accuracy": val_acc, "weight_loss": float(np.mean(losses)) if losses else None,
                "arch_loss": float(np.mean(arch_losses)) if arch_losses else None,
                "entropy": entropy, "seconds": seconds}

    # --- result ------------------------------------------------------------------------------
    def derive(self, budget_ms: float | None = None) -> tuple[Arch, bool]:
        """argmax alpha per layer; if over `budget_ms`, cheaper candidates are taken where they
        cost the least log-probability per ms saved."""
        choices = self.arch.argmax()
        repaired = False
        if budget_ms is not None and self.predicted_ms(choices) > budget_ms:
            log_probs = self.arch.log_probs().detach().cpu().numpy()
            log_probs = np.where(np.isfinite(log_probs), log_probs, -1e9)
            fixed = repair_to_budget(choices, self.table, budget_ms, log_probs)
            if fixed is None:
                raise SearchError(f"no {self.space.name} architecture is predicted under "
                                  f"{budget_ms:.4g} ms")
            choices, repaired = fixed, True
        return Arch(self.space.name, tuple(choices)), repaired

    def finish(self, data: Any, budget_ms: float | None = None, progress: Any = None
               ) -> SupernetRun:
        """Derive the architecture, take its weights out of the supernet, fine-tune and test."""
        c = self.config
        arch, repaired = self.derive(budget_ms)
        module = self.space.extract(self.supernet.body, arch).to(self.device)
        if c.finetune_epochs and (self.dist is None or self.dist.rank == 0):
            train = loader(data.train, c.batch_size, True, c.seed + 2)
            lane = "fine-tune"
            if progress is not None:
                steps = len(train) if c.max_steps is None else min(c.max_steps, len(train))
                progress.start(lane, steps * c.finetune_epochs)
            train_epochs(module, train, c.finetune_epochs, c.weight_lr * 0.2, self.device,
                         c.momentum, c.weight_decay, c.max_steps, progress, lane)
        test = loader(data.test, c.batch_size, False)
        test_acc = accuracy(module, test, self.device)
        with torch.no_grad():
            expected = float(self.expected_latency(self.arch.alpha))
        return SupernetRun(self.space.name, c.mode, arch, self.space.encode(arch),
                           self.arch.alpha.detach().cpu().numpy(), self.predicted_ms(arch.choices),
                           expected, self.target_ms, repaired, test_acc, list(self.history),
                           module.cpu(), self.supernet, self.arch, self.sampled_paths)


def _pair_probs(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def torch_dtype(x: Any) -> Any:
    return x.dtype if x.is_floating_point() else None


def search_supernet(space: SearchSpace, table: LatencyTable, data: Any, budget_ms: float,
                    config: SupernetConfig | None = None, progress: Any = None,
                    dist_info: Distributed | None = None) -> SupernetRun:
    """Train a supernet toward `budget_ms` (the latency target), derive an architecture that
    the table predicts within the budget, and return it with its trained network."""
    config = config or SupernetConfig()
    if data.num_classes != getattr(space, "num_classes", data.num_classes):
        raise ConfigError(f"space {space.name} has {space.num_classes} classes, the data "
                          f"{data.name} {data.num_classes}: build the space with "
                          f"num_classes={data.num_classes}")
    if data.resolution != space.input_shape[-1]:
        raise ConfigError(f"data at {data.resolution}x{data.resolution} given to a "
                          f"{space.name} space at {space.input_shape[-1]}")
    started = time.perf_counter()
    searcher = SupernetSearch(space, table, budget_ms, config, dist_info)
    searcher.train(data, progress)
    run = searcher.finish(data, budget_ms, progress)
    run.seconds = time.perf_counter() - started
    log.info("supernet %s: %s", config.mode, run.summary())
    return run


__all__ = ["MODES", "ArchParameters", "Distributed", "MixedOp", "Path", "Supernet",
           "SupernetConfig", "SupernetRun", "SupernetSearch", "accuracy", "batch_stat_norm",
           "build_supernet", "close_distributed", "init_distributed", "search_supernet",
           "train_epochs"]
