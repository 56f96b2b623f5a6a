"""Zero-cost proxies: score an untrained network from one batch, to rank architectures without
training them (Abdelfattah et al. 2021, Mellor et al. 2021).

Each proxy is a function (model, x, y) -> float, registered by name; higher means "predicted
more accurate". `vote` is the mean rank of synflow, jacob_cov and snip over the architectures
scored together. Every architecture is built with the same seed, so scores are repeatable.

Proxies serve the searches in two ways: a zero-cost warm-up (score many random architectures,
start from the best) and move proposal (of several mutations, evaluate the one the proxy likes
best). `ProxyScorer` caches scores per architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from latbench.bench.spaces.base import Arch, SearchSpace
from latbench.errors import ConfigError, SearchError
from latbench.registry import Registry

log = logging.getLogger(__name__)

ProxyFn = Callable[[Any, Any, Any], float]
PROXIES: Registry[ProxyFn] = Registry("zero-cost proxy")
VOTE_OF = ("synflow", "jacob_cov", "snip")
_JACOB_K = 1e-5


def register_proxy(name: str) -> Callable[[ProxyFn], ProxyFn]:
    if name == "vote":  # the rank vote over the others; always there
        raise ConfigError("zero-cost proxy 'vote' is registered twice (it is the built-in rank "
                          "vote)")
    return PROXIES.register(name)


def proxy_names() -> list[str]:
    """Every proxy, with `vote` (a rank average, computed over a set of architectures)."""
    return [*PROXIES, "vote"]


def _check(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in PROXIES and n != "vote"]
    if unknown:
        raise ConfigError(f"unknown zero-cost proxy {unknown[0]!r}; known: "
                          f"{', '.join(proxy_names())}")


def _weights(model: Any) -> list[Any]:
    import torch.nn as nn

    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def _activations(model: Any) -> list[Any]:
    import torch.nn as nn

    kinds = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.Hardsigmoid, nn.Sigmoid)
    return [m for m in model.modules() if isinstance(m, kinds)]


def _loss(model: Any, x: Any, y: Any) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(model(x), y)


@register_proxy("grad_norm")
def grad_norm(model: Any, x: Any, y: Any) -> float:
    """Sum of the L2 norms of the loss gradient of every conv / linear weight."""
    return _gradient_family(model, x, y, ("grad_norm",))["grad_norm"]


@register_proxy("snip")
def snip(model: Any, x: Any, y: Any) -> float:
    """Connection sensitivity: sum |w * dL/dw|."""
    return _gradient_family(model, x, y, ("snip",))["snip"]


def _gradient_family(model: Any, x: Any, y: Any, names: Sequence[str]) -> dict[str, float]:
    """grad_norm, snip and fisher from one backward pass."""
    import torch

    captured: list[Any] = []

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        if output.requires_grad:
            output.retain_grad()
            captured.append(output)

    handles = ([m.register_forward_hook(hook) for m in _activations(model)]
               if "fisher" in names else [])
    try:
        model.zero_grad(set_to_none=True)
        _loss(model, x, y).backward()
    finally:
        for h in handles:
            h.remove()
    out: dict[str, float] = {}
    with torch.no_grad():
        grads = [(w, w.grad) for w in _weights(model) if w.grad is not None]
        if "grad_norm" in names:
            out["grad_norm"] = float(sum(float(g.norm()) for _, g in grads))
        if "snip" in names:
            out["snip"] = float(sum(float((w * g).abs().sum()) for w, g in grads))
        if "fisher" in names:
            total = 0.0
            for act in captured:
                if act.grad is None:
                    continue
                prod = act.detach() * act.grad
                per_channel = prod.sum(dim=(2, 3)) if prod.dim() == 4 else prod
                total += float(0.5 * (per_channel ** 2).mean(0).sum())
            out["fisher"] = total
    return out


_GRADIENT_FAMILY = ("grad_norm", "snip", "fisher")


@register_proxy("grasp")
def grasp(model: Any, x: Any, y: Any) -> float:
    """Gradient signal preservation: -sum(w * H g), H g by a Hessian-vector product."""
    import torch

    weights = [w for w in _weights(model) if w.requires_grad]
    first = torch.autograd.grad(_loss(model, x, y), weights, allow_unused=True)
    grads = torch.autograd.grad(_loss(model, x, y), weights, create_graph=True,
                                allow_unused=True)
    z = sum((g0.detach() * g).sum() for g0, g in zip(first, grads, strict=True)
            if g0 is not None and g is not None)
    if not torch.is_tensor(z) or not z.requires_grad:
        return 0.0
    hg = torch.autograd.grad(z, weights, allow_unused=True)
    return float(-sum(float((w.detach() * h).sum()) for w, h in zip(weights, hg, strict=True)
                      if h is not None))


@register_proxy("fisher")
def fisher(model: Any, x: Any, y: Any) -> float:
    """Sum over activations of 0.5 * mean_batch (sum_spatial act * dL/dact)^2."""
    return _gradient_family(model, x, y, ("fisher",))["fisher"]


@register_proxy("jacob_cov")
def jacob_cov(model: Any, x: Any, y: Any) -> float:
    """-sum(log(v + k) + 1/(v + k)) over eigenvalues v of the correlation of the input
    Jacobians (uncorrelated per-image Jacobians score high)."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    out.backward(_ones_like(out))
    jac = x.grad.detach().reshape(len(x), -1).double().numpy()
    n = len(jac)
    std = jac.std(axis=1)
    if not np.all(std > 0):  # an output blind to some input: the worst score
        return float(-n * (np.log(_JACOB_K) + 1 / _JACOB_K))
    corr = np.corrcoef(jac)
    v = np.linalg.eigvalsh(corr)
    v = np.clip(v, 0.0, None)
    return float(-np.sum(np.log(v + _JACOB_K) + 1.0 / (v + _JACOB_K)))


@register_proxy("naswot")
def naswot(model: Any, x: Any, y: Any) -> float:
    """log det of the Hamming-agreement kernel of ReLU on/off codes over the batch (+ I, so a
    repeated code gives a finite score)."""
    import torch

    n = len(x)
    kernel = torch.zeros((n, n), dtype=torch.float64)

    def hook(_module: Any, inputs: Any, _output: Any) -> None:
        codes = (inputs[0].detach().reshape(n, -1) > 0).float()
        agree = codes @ codes.T + (1 - codes) @ (1 - codes).T
        kernel.add_(agree.double())

    handles = [m.register_forward_hook(hook) for m in _activations(model)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    sign, logdet = np.linalg.slogdet(kernel.numpy() + np.eye(n))
    return float(logdet) if sign > 0 else 0.0


@register_proxy("synflow")
def synflow(model: Any, x: Any, y: Any) -> float:
    """Synaptic flow: sum |w * d(sum f(1))/dw| with |weights|, in float64, BN as identity."""
    import copy

    import torch

    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad(set_to_none=True)
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64)
    net(ones).sum().backward()
    with torch.no_grad():
        total = sum(float((w * w.grad).abs().sum()) for w in _weights(net)
                    if w.grad is not None)
    return float(total) if np.isfinite(total) else float(np.finfo(np.float64).max)


def _ones_like(t: Any) -> Any:
    import torch

    return torch.ones_like(t)


def build_model(space: SearchSpace, arch: Arch, seed: int) -> Any:
    """The architecture's network with weights from `seed` (torch's global RNG untouched)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = space.to_torch(arch)
    return model.train()


def score(space: SearchSpace, arch: Arch, names: Sequence[str], batch: tuple[Any, Any],
          seed: int = 0) -> dict[str, float]:
    """Raw scores of one architecture (without `vote`)."""
    _check(names)
    x, y = batch
    out: dict[str, float] = {}
    family = [n for n in names if n in _GRADIENT_FAMILY]
    try:
        if len(family) > 1:  # one backward pass serves them all
            out.update(_gradient_family(build_model(space, arch, seed), x, y, family))
        for name in names:
            if name == "vote" or name in out:
                continue
            out[name] = PROXIES[name](build_model(space, arch, seed), x, y)
    except RuntimeError as exc:
        raise SearchError(f"zero-cost proxies {', '.join(names)} failed on {space.name} "
                          f"{space.encode(arch)}: {exc}") from exc
    return {n: float(v) if np.isfinite(v) else float("nan") for n, v in out.items()
            if n in names}


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks in [0, 1] (ties share a rank; NaN ranks lowest)."""
    from scipy.stats import rankdata

    values = np.where(np.isfinite(values), values, -np.inf)
    if len(values) < 2:
        return np.ones(len(values))
    return (rankdata(values) - 1) / (len(values) - 1)


def vote(scores: dict[str, np.ndarray], of: Sequence[str] = VOTE_OF) -> np.ndarray:
    """Mean rank of the `of` proxies over the architectures scored together."""
    missing = [n for n in of if n not in scores]
    if missing:
        raise SearchError(f"vote needs the scores of {', '.join(missing)}")
    return np.mean([ranks(np.asarray(scores[n], dtype=float)) for n in of], axis=0)


def score_archs(space: SearchSpace, archs: Sequence[Arch], names: Sequence[str],
                batch: tuple[Any, Any], seed: int = 0, progress: Any = None
                ) -> dict[str, np.ndarray]:
    """Scores of every architecture under every proxy in `names` ("vote" allowed)."""
    _check(names)
    raw = [n for n in names if n != "vote"]
    if "vote" in names:
        raw += [n for n in VOTE_OF if n not in raw]
    lane = "proxies"
    if progress is not None:
        progress.start(lane, len(archs))
    rows = []
    for arch in archs:
        rows.append(score(space, arch, raw, batch, seed))
        if progress is not None:
            progress.advance(lane, 1)
    out = {n: np.array([r[n] for r in rows]) for n in raw}
    if "vote" in names:
        out["vote"] = vote(out)
    return {n: out[n] for n in names}


class ProxyScorer:
    """Scores architectures with one proxy (or `vote`), caching raw scores per architecture.

    `vote` ranks each component among every architecture scored so far, so scores of a growing
    cache stay comparable enough for selection.
    """

    def __init__(self, space: SearchSpace, name: str = "naswot",
                 batch: tuple[Any, Any] | None = None, seed: int = 0,
                 batch_size: int = 32) -> None:
        _check([name])
        self.space = space
        self.name = name
        self.seed = seed
        if batch is None:
            from latbench.search.data import random_batch

            batch = random_batch(batch_size, space.input_shape[-1],
                                 getattr(space, "num_classes", 10), seed)
        self.batch = batch
        self.components = list(VOTE_OF) if name == "vote" else [name]
        self.cache: dict[tuple[int, ...], dict[str, float]] = {}
        self.evaluations = 0

    def raw(self, arch: Arch) -> dict[str, float]:
        key = arch.choices
        if key not in self.cache:
            self.cache[key] = score(self.space, arch, self.components, self.batch, self.seed)
            self.evaluations += 1
        return self.cache[key]

    def __call__(self, archs: Sequence[Arch]) -> np.ndarray:
        rows = [self.raw(a) for a in archs]
        if self.name != "vote":
            values = np.array([r[self.name] for r in rows], dtype=float)
            return np.where(np.isfinite(values), values, -np.inf)
        everything = list(self.cache.values())
        out = np.zeros(len(rows))
        for n in self.components:
            pool = np.sort([r[n] for r in everything])
            mine = np.array([r[n] for r in rows])
            out += np.searchsorted(pool, mine, side="right") / len(pool)
        return out / len(self.components)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation over the pairs where both are finite (NaN under 3 pairs)."""
    from scipy.stats import spearmanr

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)
