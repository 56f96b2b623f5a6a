"""Export any predictor as a ProxylessNAS / Once-for-All layer table for a search space.

This sits in search/ because it needs both a predictor and a space's layer layout; the key
formats themselves live in `predictor.lut`.
"""

from __future__ import annotations

from typing import Any

from latbench.bench.ops import OpSpec
from latbench.predictor.lut import export_table, layout_keys
from latbench.search.spaces.base import SearchSpace

from latbench.errors import ConfigError


def space_layout(space: SearchSpace, fmt: str) -> list[tuple[str, tuple[OpSpec, ...]]]:
    """Every table entry any architecture of `space` needs: stem, every candidate of every
    searchable layer, head; each key once, in network order."""
    prefix, suffix = space.fixed_ops()
    middle = [spec for layer in range(space.n_layers) for cand in space.candidates(layer)
              for spec in cand]
    entries: dict[str, tuple[OpSpec, ...]] = {}
    for key, specs in layout_keys([*prefix, *middle, *suffix], fmt):
        known = entries.setdefault(key, specs)
        if known != specs:
            raise ConfigError(f"space {space.name}: table key {key} stands for two different "
                              f"kernels ({known[0].key()} and {specs[0].key()}); the {fmt} "
                              "format cannot tell them apart")
    return list(entries.items())


def export_space_table(predictor: Any, space: SearchSpace, fmt: str
                       ) -> dict[str, dict[str, float | int]]:
    """The predictor's estimate of every entry of the space's table, in `fmt`."""
    return export_table(predictor, space_layout(space, fmt), fmt)
