"""ExpectedLatency (E[lat] = fixed + sum_l softmax(alpha_l) . T_l) against finite differences
and the table it summarises; the loss forms; repairing an architecture to a budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from latbench.bench.spaces import Arch, get_space
from latbench.errors import SearchError
from latbench.search.expected_latency import ExpectedLatency
from latbench.search.latency import (
    LatencyTable,
    additive_loss,
    multiplicative_loss,
    padded_table,
    repair_to_budget,
)

# Layers with different numbers of candidates (as in the proxyless space's skips).
TABLE = LatencyTable("toy", 1.5, ((0.3, 0.9, 1.7), (0.0, 0.4), (0.2, 0.25, 0.6, 1.1)))


def expected_by_hand(alpha: np.ndarray) -> float:
    total = TABLE.fixed_ms
    for row, logits in zip(TABLE.layer_ms, alpha, strict=True):
        z = np.exp(logits[:len(row)] - logits[:len(row)].max())
        total += float(np.dot(z / z.sum(), row))
    return total


def test_value_matches_the_definition_and_the_table() -> None:
    module = ExpectedLatency(TABLE)
    rng = np.random.default_rng(0)
    alpha = rng.normal(size=(3, 4))
    value = module(torch.tensor(alpha))
    assert float(value) == pytest.approx(expected_by_hand(alpha), rel=1e-12)
    # padding never counts, whatever its logit
    alpha[1, 2:] = 50.0
    assert float(module(torch.tensor(alpha))) == pytest.approx(expected_by_hand(alpha))
    # one-hot logits: the table's latency of that architecture
    for choices in itertools.product(range(3), range(2), range(4)):
        onehot = np.full((3, 4), -60.0)
        onehot[[0, 1, 2], list(choices)] = 60.0
        assert float(module(torch.tensor(onehot))) == pytest.approx(
            TABLE.latency(Arch("toy", choices)), abs=1e-9)


def test_gradient_matches_finite_differences() -> None:
    module = ExpectedLatency(TABLE)
    rng = np.random.default_rng(1)
    alpha = torch.tensor(rng.normal(size=(3, 4)), requires_grad=True)
    module(alpha).backward()
    grad = alpha.grad.numpy()
    eps = 1e-6
    _, mask = padded_table(TABLE)
    for i, j in itertools.product(range(3), range(4)):
        plus, minus = alpha.detach().numpy().copy(), alpha.detach().numpy().copy()
        plus[i, j] += eps
        minus[i, j] -= eps
        numeric = (expected_by_hand(plus) - expected_by_hand(minus)) / (2 * eps)
        assert grad[i, j] == pytest.approx(numeric, abs=1e-7)
        if not mask[i, j]:
            assert grad[i, j] == 0.0
    # and torch's own check in float64
    assert torch.autograd.gradcheck(module, (alpha.detach().clone().requires_grad_(True),))
    # raising a candidate's logit moves E[lat] toward that candidate's latency
    assert grad[0, 2] > 0 > grad[0, 0]


def test_shape_is_checked() -> None:
    with pytest.raises(SearchError, match="shape"):
        ExpectedLatency(TABLE)(torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ImportError):
        from latbench.search.latency import NotThere  # noqa: F401


def test_loss_forms() -> None:
    ce = torch.tensor(2.0, requires_grad=True)
    lat = torch.tensor(3.0, requires_grad=True)
    assert float(additive_loss(ce, lat, 0.5).detach()) == pytest.approx(3.5)
    assert float(multiplicative_loss(ce, lat, 1.5, 0.5).detach()) == pytest.approx(2.0 * 2 ** 0.5)
    loss = multiplicative_loss(ce, lat, 1.5, 0.5)
    loss.backward()
    assert float(lat.grad) > 0 and float(ce.grad) == pytest.approx(2 ** 0.5)
    # hinge: no latency pressure under the target
    under = torch.tensor(1.0, requires_grad=True)
    multiplicative_loss(ce, under, 1.5, 0.5, hinge=True).backward()
    assert float(under.grad) == 0.0
    assert float(additive_loss(ce, under, 0.5, target_ms=1.5).detach()) == pytest.approx(2.0)
    assert float(additive_loss(ce, lat, 0.5, target_ms=1.5).detach()) == pytest.approx(2.75)
    with pytest.raises(SearchError, match="target"):
        multiplicative_loss(ce, lat, 0.0, 0.5)


def test_repair_to_budget_fits_and_prefers_cheap_losses() -> None:
    assert repair_to_budget((2, 1, 3), TABLE, 10.0) == (2, 1, 3)  # already fits
    preference = np.log(np.array([[0.1, 0.1, 0.8, 1e-9], [0.5, 0.5, 1e-9, 1e-9],
                                  [0.1, 0.1, 0.1, 0.7]]))
    start = (2, 1, 3)
    fixed = repair_to_budget(start, TABLE, 3.9, preference)
    assert fixed is not None and TABLE.latency(Arch("toy", fixed)) <= 3.9

    def loss(choices) -> float:
        return float(sum(preference[i, s] - preference[i, c]
                         for i, (s, c) in enumerate(zip(start, choices, strict=True))))

    fitting = [c for c in itertools.product(range(3), range(2), range(4))
               if TABLE.latency(Arch("toy", c)) <= 3.9]
    assert loss(fixed) == pytest.approx(min(loss(c) for c in fitting))
    rng = np.random.default_rng(0)
    for _ in range(20):
        start = tuple(int(rng.integers(n)) for n in (3, 2, 4))
        budget = float(rng.uniform(1.99, 4.0))
        fixed = repair_to_budget(start, TABLE, budget, rng=rng)
        assert fixed is not None and TABLE.latency(Arch("toy", fixed)) <= budget
        assert all(TABLE.layer_ms[i][f] <= TABLE.layer_ms[i][s]
                   for i, (f, s) in enumerate(zip(fixed, start, strict=True)))
    assert repair_to_budget((0, 0, 0), TABLE, 1.9) is None  # the fastest is 2.0 ms


def test_flops_table_orders_candidates_by_cost() -> None:
    space = get_space("nasbench-macro")
    table = LatencyTable.from_flops(space)
    assert table.space == space.name and table.fixed_ms > 0
    for row in table.layer_ms:
        assert row[0] < row[1] < row[2]  # identity < MBConv e3 k3 < MBConv e6 k5
