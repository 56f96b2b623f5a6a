"""Fixtures the search tests share: one torch thread, and the small NAS-Bench-Macro space
(8x8 inputs) with an analytical FLOPs latency table."""

from __future__ import annotations

import pytest

from latbench.bench.spaces import SearchSpace, get_space
from latbench.search.latency import LatencyTable


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: faster than two on a machine shared with other jobs. A module
    asks for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return get_space("nasbench-macro", resolution=8)


@pytest.fixture(scope="module")
def table(space) -> LatencyTable:
    return LatencyTable.from_flops(space, ms_per_gflop=100.0)
