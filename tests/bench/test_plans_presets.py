"""The `transformer` and `vision` presets cover the families they are for: their kernels come
from sampled family networks (drawn with the presets' own seed) and neighbours of those, so the
kernels of held-out networks of the same families - other widths, depths and resolutions, drawn
with other seeds - lie inside the ranges a predictor fitted on the plan was trained on."""

from __future__ import annotations

import numpy as np
import pytest

from latbench.bench.families import sample_networks
from latbench.bench.network_sets import _EXPORTS, family_kernels, resolve_networks
from latbench.bench.ops import OpSpec
from latbench.bench.plans import (
    PRESET_FAMILY_SEED,
    build_specs,
    kernel_set_networks,
    load_plan,
)
from latbench.predictor.features import range_values, training_ranges

VISION_FAMILIES = {"mobilenetv3", "efficientnet", "regnet", "resnet50", "convnext", "mobilevit",
                   "vit", "deit"}
HELD_OUT_SEED = 2024


def inside(kernel: OpSpec, ranges: dict[str, dict[str, tuple[float, float]]]) -> bool:
    """Within its kind's training range in every field and its FLOPs (as predict checks)."""
    kind = ranges.get(kernel.kind)
    return bool(kind) and all(kind[name][0] <= value <= kind[name][1]
                              for name, value in range_values(kernel).items() if name in kind)


def held_out_coverage(preset: str, families: set[str], count: int) -> dict[str, float]:
    """Per family, the share of the kernels of `count` held-out networks inside the ranges of
    the preset's kernels."""
    plan = load_plan(preset)
    ranges = training_ranges(build_specs(plan))
    calibration = resolve_networks(",".join(plan.networks), seed=plan.seed)  # not exported
    seen = kernel_set_networks(plan) | {n.key for n in calibration}
    out = {}
    for family in sorted(families):
        nets = [n for n in sample_networks(family, count, np.random.default_rng(HELD_OUT_SEED))
                if f"{family}:{n.name}" not in seen]  # as evaluation leaves them out
        assert len(nets) >= count // 2
        kernels = [k for net in nets for k in _EXPORTS.kernels(net, False)]
        out[family] = float(np.mean([inside(k, ranges) for k in kernels]))
    return out


@pytest.mark.parametrize("preset, families", [("transformer", {"vit", "deit"}),
                                              ("vision", VISION_FAMILIES)])
def test_presets_draw_kernels_and_calibration_networks_from_their_families(
        preset: str, families: set[str]) -> None:
    plan = load_plan(preset)
    drawn = {s.split(":")[1] for s in plan.spaces}
    assert drawn == families
    assert all(s.endswith(f":{PRESET_FAMILY_SEED}") for s in plan.spaces)
    assert {n.split(":")[0] for n in plan.networks} == families
    assert plan.around >= 1 and plan.primitives
    networks = kernel_set_networks(plan)
    assert {key.split(":")[0] for key in networks} == families
    assert len(networks) == sum(int(s.split(":")[2]) for s in plan.spaces)


@pytest.mark.slow
def test_transformer_preset_covers_held_out_vits_and_deits() -> None:
    specs = {s.key() for s in build_specs(load_plan("transformer"))}
    vit_kernels = {k.key() for k in family_kernels(f"family:vit:16:{PRESET_FAMILY_SEED}")}
    assert vit_kernels <= specs  # the sampled networks' own kernels are all measured
    coverage = held_out_coverage("transformer", {"vit", "deit"}, 8)
    assert all(share >= 0.97 for share in coverage.values()), coverage


@pytest.mark.slow
def test_vision_preset_covers_held_out_networks_of_every_family() -> None:
    coverage = held_out_coverage("vision", VISION_FAMILIES, 10)
    assert all(share >= 0.97 for share in coverage.values()), coverage
