"""Successive halving and Hyperband: the rung and bracket arithmetic, the epoch budget, and a
small run that trains candidates within the latency budget and keeps the best."""

from __future__ import annotations

import numpy as np
import pytest

from latbench.errors import ConfigError
from latbench.search.data import digits
from latbench.search.strategies import SearchContext, get_strategy
from latbench.search.strategies.halving import bracket_epochs, hyperband_brackets, rungs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rungs_and_brackets() -> None:
    assert rungs(9, 1, 9, 3) == [(9, 1), (3, 3), (1, 9)]
    assert rungs(9, 1, 3, 3) == [(9, 1), (3, 3)]
    assert rungs(27, 1, 81, 3)[-2:] == [(1, 27), (1, 81)]  # one candidate, to the end
    assert rungs(1, 1, 9, 3) == [(1, 1), (1, 3), (1, 9)]
    # survivors resume: 9 x 1 + 3 x 2 + 1 x 6 epochs
    assert bracket_epochs(9, 1, 9, 3) == 21
    assert hyperband_brackets(1, 9, 3) == [(9, 1), (5, 3), (3, 9)]
    assert hyperband_brackets(1, 27, 3)[0] == (27, 1)


def test_epoch_budget_sizes_the_bracket() -> None:
    strategy = get_strategy("halving", min_epochs=1, max_epochs=3, eta=3, epoch_budget=20)
    n = strategy._n_for_budget()
    assert bracket_epochs(n, 1, 3, 3) <= 20 < bracket_epochs(n + 1, 1, 3, 3)
    with pytest.raises(ConfigError, match="epoch budget"):
        get_strategy("halving", max_epochs=9, epoch_budget=5)._n_for_budget()
    with pytest.raises(ConfigError, match="eta"):
        get_strategy("halving", eta=1)


@pytest.mark.parametrize("hyperband", [False, True])
def test_halving_trains_and_keeps_the_best(space, table, hyperband: bool) -> None:
    rng = np.random.default_rng(0)
    budget = float(np.median([table.latency(space.sample(rng)) for _ in range(200)]))
    options = dict(min_epochs=1, max_epochs=3 if hyperband else 2, eta=3 if hyperband else 2,
                   hyperband=hyperband, n_candidates=4, max_steps=2, batch_size=32)
    result = get_strategy("halving", **options).search(space, table, None, budget,
                                                       SearchContext(data=digits(8)))
    assert result.predicted_ms <= budget
    assert all(row["predicted_ms"] <= budget for row in result.history)
    if hyperband:
        assert result.info["brackets"] == [[3, 1], [2, 3]]
    else:  # 4 candidates for 1 epoch, the best 2 for a second epoch
        assert [row["epochs"] for row in result.history] == [1] * 4 + [2] * 2
        firsts = {row["arch"]: row["accuracy"] for row in result.history[:4]}
        kept = {row["arch"] for row in result.history[4:]}
        assert len(kept) == 2 and kept <= set(firsts)
        assert min(firsts[a] for a in kept) >= max(firsts[a] for a in set(firsts) - kept)
    assert result.info["epochs"] == (3 if hyperband else 2)
    assert 0 <= result.accuracy <= 100 and result.module is not None
    fresh = space.to_torch(space.decode(result.arch))
    fresh.load_state_dict(result.module.state_dict())
