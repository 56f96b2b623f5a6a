"""Search spaces: a registry of spaces (importing this package registers them)."""

from __future__ import annotations

from latbench.bench.spaces import nasbench201, nasbench_macro, proxyless  # noqa: F401  (registers them)
from latbench.bench.spaces.base import SPACES, Arch, SearchSpace, get_space, register_space

__all__ = ["SPACES", "Arch", "SearchSpace", "get_space", "register_space"]
