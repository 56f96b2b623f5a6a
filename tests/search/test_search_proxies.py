"""Zero-cost proxies: finite scores for every registered proxy on every space, the vote as a
rank average, the registry, caching, and the worst score for a network blind to its input."""

from __future__ import annotations

import numpy as np
import pytest

from latbench.bench.spaces import SPACES, get_space
from latbench.errors import ConfigError
from latbench.search.data import random_batch
from latbench.search.proxies import (
    PROXIES,
    VOTE_OF,
    ProxyScorer,
    proxy_names,
    ranks,
    register_proxy,
    score,
    score_archs,
    spearman,
    vote,
)

SMALL = {  # every registered space, sized for a test
    "nasbench-macro": {"resolution": 8},
    "nasbench201": {"resolution": 8, "channels": 4, "cells": 1},
    "proxyless": {"resolution": 32, "width_mult": 0.35, "num_classes": 10,
                  "stages": ((16, 2, 2), (24, 2, 2))},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_space_has_a_small_config() -> None:
    assert set(SMALL) == set(SPACES)
    assert set(proxy_names()) == {"synflow", "snip", "grasp", "fisher", "jacob_cov",
                                  "grad_norm", "naswot", "vote"}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_proxy_is_finite_on_every_space(name: str) -> None:
    space = get_space(name, **SMALL[name])
    batch = random_batch(8, space.input_shape[-1], space.num_classes, seed=0)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(3)]
    scores = score_archs(space, archs, proxy_names(), batch)
    assert set(scores) == set(proxy_names())
    for proxy, values in scores.items():
        assert values.shape == (3,) and np.isfinite(values).all(), (name, proxy, values)
    # the same seed gives the same scores (each network is built from the seed)
    again = score(space, archs[0], ["snip", "naswot"], batch)
    assert again["snip"] == pytest.approx(scores["snip"][0])
    assert again["naswot"] == pytest.approx(scores["naswot"][0])


def test_gradient_family_matches_single_proxies(space) -> None:
    batch = random_batch(8, 8, 10, seed=1)
    arch = space.sample(np.random.default_rng(1))
    together = score(space, arch, ["grad_norm", "snip", "fisher"], batch)
    for name in ("grad_norm", "snip", "fisher"):
        assert together[name] == pytest.approx(score(space, arch, [name], batch)[name],
                                                rel=1e-5)


def test_cut_off_cell_gets_the_worst_jacobian_score() -> None:
    space = get_space("nasbench201", **SMALL["nasbench201"])
    batch = random_batch(8, 8, 10, seed=2)
    dead = space.decode("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    alive = space.decode("|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|"
                         "nor_conv_1x1~2|")
    assert score(space, dead, ["jacob_cov"], batch)["jacob_cov"] < \
        score(space, alive, ["jacob_cov"], batch)["jacob_cov"]


def test_vote_is_the_mean_rank() -> None:
    scores = {"synflow": np.array([1.0, 3.0, 2.0]), "jacob_cov": np.array([-5.0, -1.0, -9.0]),
              "snip": np.array([0.1, 0.2, 0.3])}
    assert vote(scores) == pytest.approx([(0 + 0.5 + 0) / 3, (1 + 1 + 0.5) / 3,
                                          (0.5 + 0 + 1) / 3])
    assert ranks(np.array([1.0, np.nan, 2.0])) == pytest.approx([0.5, 0.0, 1.0])
    assert tuple(VOTE_OF) == ("synflow", "jacob_cov", "snip")


def test_scorer_caches_and_votes(space) -> None:
    scorer = ProxyScorer(space, "vote", seed=0, batch_size=8)
    rng = np.random.default_rng(3)
    archs = [space.sample(rng) for _ in range(4)]
    first = scorer(archs)
    assert scorer.evaluations == 4 and ((0 < first) & (first <= 1)).all()
    scorer(archs[:2])
    assert scorer.evaluations == 4  # cached
    single = ProxyScorer(space, "synflow", seed=0, batch_size=8)
    assert single(archs[:1])[0] == pytest.approx(score(space, archs[0], ["synflow"],
                                                       single.batch)["synflow"])


def test_registry_refuses_duplicates_and_unknown_names() -> None:
    with pytest.raises(ConfigError, match="twice"):
        register_proxy("snip")(lambda m, x, y: 0.0)
    with pytest.raises(ConfigError, match="twice"):
        register_proxy("vote")(lambda m, x, y: 0.0)
    with pytest.raises(ConfigError, match="unknown zero-cost proxy"):
        ProxyScorer(get_space("nasbench-macro"), "magic")
    assert "synflow" in PROXIES


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [1, 2]))


@pytest.mark.parametrize("proxy", proxy_names())
def test_every_proxy_scores_a_tiny_network(space, proxy: str) -> None:
    scorer = ProxyScorer(space, proxy, seed=0, batch_size=8)
    rng = np.random.default_rng(4)
    archs = [space.sample(rng) for _ in range(2)]
    scores = scorer(archs)
    assert scores.shape == (2,) and np.isfinite(scores).all(), scores
    assert scorer.evaluations == 2
