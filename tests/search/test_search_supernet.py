"""The supernet: one active path (and one path of activations) per weight update in the two-path
and REINFORCE modes, all candidates in full mode; BinaryConnect gate gradients; the
architecture updates of each mode; a whole search ending within the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latbench.bench.spaces import Arch, get_space
from latbench.errors import ConfigError, SearchError
from latbench.search.data import digits, loader
from latbench.search.latency import LatencyTable
from latbench.search.strategies import SearchContext, get_strategy
from latbench.search.supernet import (
    Path,
    SupernetConfig,
    SupernetSearch,
    build_supernet,
    search_supernet,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return digits(resolution=8, seed=0)


@pytest.fixture(scope="module")
def batch(data):
    return next(iter(loader(data.train, 32, shuffle=True, seed=0)))


def middle_budget(space, table) -> float:
    rng = np.random.default_rng(0)
    return float(np.median([table.latency(space.sample(rng)) for _ in range(300)]))


def activation_bytes(fn, params) -> int:
    """Bytes of the non-parameter tensors autograd saves for backward while fn runs."""
    weights = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_weight_update_runs_and_trains_only_the_sampled_path(space, table, batch) -> None:
    search = SupernetSearch(space, table, middle_budget(space, table),
                            SupernetConfig(mode="two_path", seed=1))
    calls: dict[tuple[int, int], int] = {}
    handles = []
    for op in search.supernet.mixed:
        for k, cand in enumerate(op.candidates):
            handles.append(cand.register_forward_hook(
                lambda m, i, o, key=(op.layer, k): calls.__setitem__(key, calls.get(key, 0) + 1)))
    before = {n: p.detach().clone() for n, p in search.supernet.named_parameters()}
    x, y = batch
    _, choices = search.weight_step(x, y)
    for h in handles:
        h.remove()
    assert choices is not None and len(choices) == space.n_layers
    # exactly one candidate ran in every layer: the sampled one
    assert calls == {(layer, c): 1 for layer, c in enumerate(choices)}
    changed = {n for n, p in search.supernet.named_parameters()
               if not torch.equal(p.detach(), before[n])}
    for op in search.supernet.mixed:
        for k, cand in enumerate(op.candidates):
            for name, p in cand.named_parameters():
                if k == choices[op.layer]:
                    assert p.grad is not None
                else:  # inactive: no gradient, untouched by SGD (momentum, weight decay)
                    assert p.grad is None
                    full = next(n for n, q in search.supernet.named_parameters() if q is p)
                    assert full not in changed, name
    assert any("candidates" in n for n in changed)


def test_two_path_keeps_one_path_of_activations(space, table, batch) -> None:
    """The two-path weight update saves what the sampled network alone saves; full mode saves
    every candidate's activations."""
    x, y = batch
    budget = middle_budget(space, table)
    sizes = {}
    for mode in ("two_path", "full"):
        search = SupernetSearch(space, table, budget, SupernetConfig(mode=mode, seed=2))
        chosen = []
        sizes[mode] = activation_bytes(
            lambda s=search, c=chosen: c.append(s.weight_step(x, y)[1]),
            list(search.supernet.parameters()))
        if mode == "two_path":
            arch = Arch(space.name, chosen[0])
            single = space.extract(search.supernet.body, arch).train()
            sizes["single"] = activation_bytes(
                lambda m=single: torch.nn.functional.cross_entropy(m(x), y).backward(),
                list(single.parameters()))
    assert sizes["two_path"] <= 1.05 * sizes["single"]
    assert sizes["full"] >= 2.0 * sizes["two_path"]


def test_binary_gate_gradients_equal_one_hot_weight_gradients(space, table, batch) -> None:
    torch.manual_seed(0)
    supernet = build_supernet(space).train()
    x, y = batch
    rng = np.random.default_rng(0)
    pairs = tuple(tuple(int(c) for c in rng.choice(3, 2, replace=False))
                  for _ in range(space.n_layers))
    active = tuple(int(a) for a in rng.integers(0, 2, size=space.n_layers))
    gates = torch.zeros(space.n_layers, 2)
    gates[torch.arange(space.n_layers), torch.tensor(active)] = 1.0
    gates.requires_grad_(True)
    out = supernet(x, Path("binary", pairs=pairs, active=active, gates=gates))
    torch.nn.functional.cross_entropy(out, y).backward()
    weights = torch.zeros(space.n_layers, 3)
    for layer, (pair, a) in enumerate(zip(pairs, active, strict=True)):
        weights[layer, pair[a]] = 1.0
    weights.requires_grad_(True)
    out_full = supernet(x, Path.full(weights))
    assert torch.allclose(out, out_full, atol=1e-5)
    torch.nn.functional.cross_entropy(out_full, y).backward()
    for layer, pair in enumerate(pairs):
        for k in range(2):
            assert float(gates.grad[layer, k]) == pytest.approx(
                float(weights.grad[layer, pair[k]]), rel=1e-4, abs=1e-6)


def test_two_path_arch_update_moves_only_the_sampled_pairs(space, table, batch) -> None:
    config = SupernetConfig(mode="two_path", loss="additive", lam=0.0, seed=3, arch_lr=0.1)
    search = SupernetSearch(space, table, middle_budget(space, table), config)
    with torch.no_grad():
        search.arch.alpha.normal_(0, 0.5)
    before = search.arch.alpha.detach().clone()
    x, y = batch
    search.arch_step(x, y)
    after = search.arch.alpha.detach()
    pairs = search.last_path.pairs
    assert search.last_path.kind == "binary"
    moved = 0
    for layer in range(space.n_layers):
        pair = list(pairs[layer])
        others = [c for c in range(3) if c not in pair]
        assert torch.equal(after[layer, others], before[layer, others])
        # rescaled: the pair keeps its total probability mass
        assert float(torch.logsumexp(after[layer, pair], 0)) == pytest.approx(
            float(torch.logsumexp(before[layer, pair], 0)), abs=1e-9)
        moved += int(not torch.equal(after[layer, pair], before[layer, pair]))
    assert moved >= space.n_layers - 1
    # weights never move in an architecture update
    for p in search.supernet.parameters():
        assert p.grad is None


def test_full_mode_moves_every_alpha(space, table, batch) -> None:
    config = SupernetConfig(mode="full", seed=4, arch_lr=0.1, hinge=False)
    search = SupernetSearch(space, table, middle_budget(space, table), config)
    x, y = batch
    search.arch_step(x, y)
    assert bool((search.arch.alpha.detach() != 0).all())


def test_latency_term_pushes_toward_fast_candidates(space, table, batch) -> None:
    """With the target far below anything, every mode's architecture updates favour the
    cheapest candidate (identity) in most layers."""
    x, y = batch
    assert all(row.index(min(row)) == 0 for row in table.layer_ms)
    for mode, extra in (("two_path", {"lam": 200.0}), ("full", {"lam": 200.0}),
                        ("reinforce", {"lam": 200.0, "reinforce_samples": 4})):
        config = SupernetConfig(mode=mode, loss="additive", hinge=False, arch_lr=0.1, seed=5,
                                **extra)
        search = SupernetSearch(space, table, table.fixed_ms, config)
        for _ in range(6):
            search.arch_step(x[:16], y[:16])
        probs = search.arch.probs().detach().numpy()
        assert (probs[:, 0] > 1 / 3).sum() >= space.n_layers - 1, (mode, probs)
        if mode == "reinforce":
            assert search.baseline is not None and search.sampled_paths == 24


def test_reward_forms(space, table) -> None:
    search = SupernetSearch(space, table, 1.0, SupernetConfig(mode="reinforce", beta=1.0))
    assert search.reward(0.8, 0.5) == 0.8  # under the target: accuracy alone
    assert search.reward(0.8, 2.0) == pytest.approx(0.4)
    additive = SupernetSearch(space, table, 1.0, SupernetConfig(mode="reinforce",
                                                                loss="additive", lam=0.1))
    assert additive.reward(0.8, 2.0) == pytest.approx(0.6)


@pytest.mark.parametrize("mode", ["two_path", "full", "reinforce"])
def test_search_ends_within_budget_with_a_trained_network(space, table, data, mode) -> None:
    budget = middle_budget(space, table)
    config = SupernetConfig(mode=mode, epochs=2, warmup_epochs=1, max_steps=3, batch_size=32,
                            finetune_epochs=1, eval_batches=1, seed=6)
    run = search_supernet(space, table, data, budget, config)
    assert run.predicted_ms <= budget
    assert run.predicted_ms == pytest.approx(table.latency(run.arch))
    assert [h["epoch"] for h in run.history] == [0, 1]
    assert all(h["arch_loss"] is None for h in run.history[:1])
    assert run.history[1]["arch_loss"] is not None
    assert 0 <= run.test_accuracy <= 100
    fresh = space.to_torch(run.arch)
    fresh.load_state_dict(run.module.state_dict())  # the architecture's own network
    if mode != "full":
        assert run.sampled_paths > 0


def test_nasbench201_supernet_search(data) -> None:
    space = get_space("nasbench201", resolution=8, channels=4, cells=1)
    table = LatencyTable.from_flops(space, ms_per_gflop=1000.0)
    budget = middle_budget(space, table)
    config = SupernetConfig(epochs=2, warmup_epochs=1, max_steps=2, batch_size=32, seed=7)
    run = search_supernet(space, table, data, budget, config)
    assert run.predicted_ms <= budget and run.arch_text.startswith("|")


def test_strategies_are_registered_and_return_the_module(space, table, data) -> None:
    budget = middle_budget(space, table)
    for name in ("proxyless-g", "proxyless-r"):
        strategy = get_strategy(name, epochs=1, warmup_epochs=0, max_steps=2,
                                batch_size=32, finetune_epochs=0, eval_batches=1)
        result = strategy.search(space, table, None, budget, SearchContext(data=data))
        assert result.strategy == name and result.predicted_ms <= budget
        assert result.module is not None and result.info["mode"] == (
            "two_path" if name == "proxyless-g" else "reinforce")
    full = get_strategy("proxyless-g", mode="full", epochs=1)
    assert full.config.mode == "full" and full.config.epochs == 1
    with pytest.raises(ConfigError, match="unknown option 'epoch'; known: .*epochs"):
        get_strategy("proxyless-g", epoch=1)
    with pytest.raises(ConfigError, match="REINFORCE"):
        get_strategy("proxyless-g", mode="reinforce")


def test_config_and_inputs_are_checked(space, table, data) -> None:
    with pytest.raises(ConfigError, match="mode"):
        SupernetConfig(mode="darts")
    with pytest.raises(ConfigError, match="loss"):
        SupernetConfig(loss="hinge")
    with pytest.raises(ConfigError, match="epochs"):
        SupernetConfig(epochs=1, warmup_epochs=2)
    with pytest.raises(ConfigError, match="classes"):
        search_supernet(get_space("proxyless", resolution=32), table, data, 1.0)
    with pytest.raises(ConfigError, match="8x8"):
        search_supernet(get_space("nasbench-macro", resolution=16), table, data, 1.0)
    with pytest.raises(SearchError, match="latency table of space"):
        SupernetSearch(get_space("nasbench201"), table, 1.0)
    with pytest.raises(SearchError, match="with a path"):
        build_supernet(space)(torch.zeros(1, 3, 8, 8), None)
