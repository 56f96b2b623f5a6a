"""Features of the kernel kinds added for transformers and the common op set: exact costs,
the kind columns of feature version 3, classic kinds fitted exactly as before, a predictor per
new kind that saves and loads, and training ranges over the new fields."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latbench.bench.ops import OP_KINDS, OpSpec
from latbench.bench.plans import COMMON_OPS_RANDOM, TRANSFORMER_RANDOM, Plan, RandomKernels
from latbench.bench.plans import build_specs as plan_specs
from latbench.predictor.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    FEATURE_WIDTH,
    GROUP_FEATURES,
    KIND_FEATURES,
    V2_KINDS,
    feature_matrix,
    feature_width,
    kernel_cost,
    kernel_features,
    range_values,
    training_ranges,
)

S = OpSpec
NEW_KINDS = OP_KINDS[OP_KINDS.index("tlinear"):]


@pytest.mark.parametrize(("spec", "flops", "params", "in_elems", "out_elems"), [
    (S("tlinear", tokens=197, cin=384, cout=1536, batch=2), 2 * 2 * 197 * 384 * 1536,
     384 * 1536 + 1536, 2 * 197 * 384, 2 * 197 * 1536),
    (S("bmm", heads=6, tokens=197, cin=64, cout=197), 2 * 6 * 197 * 64 * 197, 0,
     6 * 197 * 64 * 2, 6 * 197 * 197),
    (S("softmax", heads=6, tokens=197, cin=197), 3 * 6 * 197 * 197, 0, 6 * 197 * 197,
     6 * 197 * 197),
    (S("layernorm", tokens=197, cin=384), 5 * 197 * 384, 2 * 384, 197 * 384, 197 * 384),
    (S("transpose", h=6, w=64, cin=197, axes="0213"), 0, 0, 197 * 6 * 64, 197 * 6 * 64),
    (S("clstoken", tokens=196, cin=384), 0, 384, 196 * 384, 197 * 384),
    (S("gather", tokens=197, cin=384), 0, 0, 197 * 384, 384),
    (S("posembed", tokens=197, cin=384), 197 * 384, 197 * 384, 197 * 384, 197 * 384),
    (S("convt", h=8, w=8, cin=64, cout=32, kernel=2, stride=2), 2 * 64 * 64 * 32 * 4,
     64 * 32 * 4 + 32, 64 * 64, 32 * 16 * 16),
    (S("convt", h=8, w=8, cin=64, cout=32, kernel=3, stride=2, groups=4, pad=1, out_pad=1),
     2 * 64 * 64 * 8 * 9, 64 * 8 * 9 + 32, 64 * 64, 32 * 16 * 16),
    (S("resize", h=8, w=8, cin=16, scale=2), 0, 0, 16 * 64, 16 * 256),
    (S("resize", h=8, w=8, cin=16, scale=2, mode="bilinear"), 4 * 16 * 256, 0, 16 * 64,
     16 * 256),
    (S("pad", h=8, w=8, cin=16, pad=1), 0, 0, 16 * 64, 16 * 100),
    (S("slice", h=8, w=8, cin=16, cout=4), 0, 0, 16 * 64, 4 * 64),
    (S("instnorm", h=8, w=8, cin=16), 5 * 16 * 64, 32, 16 * 64, 16 * 64),
    (S("reduce", h=8, w=8, cin=16, axes="23"), 16 * 64, 0, 16 * 64, 16),
    (S("shuffle", h=8, w=8, cin=16, groups=4), 0, 0, 16 * 64, 16 * 64),
    (S("conv", h=17, w=17, cin=64, cout=96, kernel=1, kernel_w=7), 2 * 17 * 17 * 96 * 64 * 7,
     96 * 64 * 7 + 96, 64 * 289, 96 * 289),
    (S("conv", h=16, w=16, cin=8, cout=8, kernel=3, dilation=4), 2 * 256 * 8 * 8 * 9,
     8 * 8 * 9 + 8, 8 * 256, 8 * 256),
    (S("act", h=4, w=4, cin=8, act="prelu"), 128, 8, 128, 128),
    (S("concat", h=8, w=8, cin=16, groups=2, axes="3"), 0, 0, 16 * 64, 16 * 64),
])
def test_costs_of_new_kinds(spec: OpSpec, flops: float, params: float, in_elems: float,
                            out_elems: float) -> None:
    cost = kernel_cost(spec)
    assert (cost.flops, cost.params) == (flops, params)
    assert (cost.input_bytes, cost.output_bytes) == (4 * in_elems, 4 * out_elems)


EVERY_NEW = [
    S("conv", h=17, w=17, cin=64, cout=64, kernel=1, kernel_w=7, dilation=2),
    S("dwconv", h=16, w=16, cin=32, kernel=3, dilation=2, act="leakyrelu", alpha=0.2),
    S("tlinear", tokens=197, cin=384, cout=1536, act="gelu"),
    S("bmm", heads=6, tokens=197, cin=64, cout=197),
    S("bmm", heads=6, tokens=197, cin=197, cout=64),
    S("softmax", heads=6, tokens=197, cin=197),
    S("layernorm", tokens=197, cin=384),
    S("transpose", h=6, w=64, cin=197, axes="0213"),
    S("clstoken", tokens=196, cin=384),
    S("gather", tokens=197, cin=384),
    S("posembed", tokens=197, cin=384),
    S("convt", h=16, w=16, cin=64, cout=32, kernel=3, stride=2, pad=1, out_pad=1),
    S("resize", h=16, w=16, cin=64, scale=2, mode="bilinear"),
    S("pad", h=16, w=16, cin=64, pad=1, mode="reflect"),
    S("slice", h=28, w=28, cin=116, cout=58),
    S("instnorm", h=64, w=64, cin=32),
    S("reduce", h=7, w=7, cin=96, axes="23"),
    S("shuffle", h=28, w=28, cin=116, groups=2),
]


def test_kind_columns() -> None:
    assert FEATURE_VERSION == 4
    assert FEATURE_NAMES[FEATURE_WIDTH[2]:FEATURE_WIDTH[3]] == KIND_FEATURES
    assert FEATURE_WIDTH[3] == FEATURE_WIDTH[2] + len(KIND_FEATURES)
    assert FEATURE_NAMES[FEATURE_WIDTH[3]:] == GROUP_FEATURES
    assert {s.kind for s in EVERY_NEW} == set(NEW_KINDS) | {"conv", "dwconv"}
    matrix = feature_matrix(EVERY_NEW)
    assert matrix.shape == (len(EVERY_NEW), len(FEATURE_NAMES)) and np.isfinite(matrix).all()
    named = [dict(zip(FEATURE_NAMES, row, strict=True)) for row in matrix]
    by_key = {s.key(): row for s, row in zip(EVERY_NEW, named, strict=True)}
    conv = by_key[EVERY_NEW[0].key()]
    assert (conv["dilation"], conv["kernel_w"], conv["pad_w"], conv["kernel"]) == (2, 7, 6, 1)
    assert by_key[EVERY_NEW[1].key()]["alpha"] == pytest.approx(0.2)
    tl = by_key[EVERY_NEW[2].key()]
    assert (tl["tokens"], tl["act"], tl["log_rows"]) == (197, 7, pytest.approx(np.log(197)))
    qk, av = by_key[EVERY_NEW[3].key()], by_key[EVERY_NEW[4].key()]
    assert (qk["heads"], qk["head_dim"], av["head_dim"]) == (6, 64, 64)
    assert qk["log_rows"] == pytest.approx(np.log(6 * 197))
    assert by_key[EVERY_NEW[7].key()]["axes"] == 213
    assert by_key[EVERY_NEW[12].key()]["mode"] == 1 and by_key[EVERY_NEW[13].key()]["mode"] == 1
    assert by_key[EVERY_NEW[11].key()]["out_pad"] == 1
    for spec, row in zip(EVERY_NEW, matrix, strict=True):
        np.testing.assert_array_equal(kernel_features(spec), row)


def test_group_columns_follow_the_channels_per_group() -> None:
    """A RegNet-style grouped conv at 8 and at 32 channels per group: the same FLOPs at the
    same total channels are told apart by the group columns; padding to the 16-channel block
    doubles an 8-wide group's FLOPs in both directions, and leaves a 32-wide one's."""
    narrow = S("conv", h=14, w=14, cin=256, cout=256, kernel=3, groups=32)
    wide = S("conv", h=28, w=28, cin=256, cout=256, kernel=3, groups=8)
    rows = [dict(zip(FEATURE_NAMES, kernel_features(s), strict=True)) for s in (narrow, wide)]
    assert (rows[0]["group_cin"], rows[0]["group_cout"]) == (8, 8)
    assert (rows[1]["group_cin"], rows[1]["group_cout"]) == (32, 32)
    assert rows[0]["log_flops_group_padded"] == pytest.approx(
        np.log1p(kernel_cost(narrow).flops * 4))
    assert rows[1]["log_flops_group_padded"] == pytest.approx(np.log1p(kernel_cost(wide).flops))
    plain = dict(zip(FEATURE_NAMES, kernel_features(S("conv", h=8, w=8, cin=24, cout=40,
                                                      kernel=1)), strict=True))
    assert (plain["group_cin"], plain["group_cout"]) == (24, 40)
    tlinear = dict(zip(FEATURE_NAMES, kernel_features(S("tlinear", tokens=9, cin=16, cout=8)),
                       strict=True))
    assert [tlinear[name] for name in GROUP_FEATURES] == [0.0, 0.0, 0.0]


def test_classic_kinds_are_fitted_on_their_version_2_columns() -> None:
    """The kinds that gained nothing see exactly the matrix version 2 gave them; conv and
    dwconv see the same version 2 columns plus the kind columns."""
    from latbench.predictor.models import _by_kind

    specs = [S("pool", h=8, w=8, cin=16, pool="gavg"), S("add", h=8, w=8, cin=16),
             S("linear", cin=64, cout=10), S("mbconv", h=8, w=8, cin=16, kernel=3, expand=3),
             S("conv", h=8, w=8, cin=16, cout=8, kernel=3), S("dwconv", h=8, w=8, cin=8,
                                                              kernel=5),
             S("tlinear", tokens=9, cin=16, cout=8)]
    v2 = {kind: rows for kind, _, _, rows in _by_kind(specs, 2)}
    v3 = {kind: rows for kind, _, _, rows in _by_kind(specs, 3)}
    for kind in ("pool", "add", "linear", "mbconv"):
        assert kind in V2_KINDS and feature_width(kind) == FEATURE_WIDTH[2]
        np.testing.assert_array_equal(v3[kind], v2[kind])
    for kind in ("conv", "dwconv"):
        assert v3[kind].shape[1] == FEATURE_WIDTH[3]
        np.testing.assert_array_equal(v3[kind][:, :FEATURE_WIDTH[2]], v2[kind])
    v4 = {kind: rows for kind, _, _, rows in _by_kind(specs, 4)}
    assert v4["conv"].shape[1] == FEATURE_WIDTH[4]
    for kind in v3:  # version 4 only adds columns to conv
        np.testing.assert_array_equal(v4[kind][:, :v3[kind].shape[1]], v3[kind])
        assert kind == "conv" or v4[kind].shape == v3[kind].shape
    assert feature_width("tlinear", 1) == FEATURE_WIDTH[1] == feature_width("pool", 1)
    assert set(V2_KINDS) | {"conv", "dwconv"} | set(NEW_KINDS) == set(OP_KINDS)


def _synthetic(entries: tuple[dict, ...], seed: int) -> tuple[list[OpSpec], np.ndarray]:
    """Specs of the plans' random entries, with a 'latency' smooth in FLOPs and bytes."""
    randoms = tuple(RandomKernels(e["kind"], 8, {k: v for k, v in e.items()
                                                 if k not in ("kind", "count")})
                    for e in entries)
    specs = plan_specs(Plan("p", seed=seed, random=randoms))
    costs = [kernel_cost(s) for s in specs]
    ms = np.array([0.005 + 1e-9 * c.flops + 2e-9 * (c.input_bytes + c.output_bytes)
                   for c in costs])
    return specs, ms


def test_a_predictor_per_new_kind_fits_saves_and_loads(tmp_path: Path) -> None:
    from latbench.predictor.latency_predictor import LatencyPredictor
    from latbench.predictor.models import XGBoostKernelPredictor

    specs, ms = _synthetic((*TRANSFORMER_RANDOM, *COMMON_OPS_RANDOM), seed=0)
    assert set(NEW_KINDS) <= {s.kind for s in specs}
    kernels = XGBoostKernelPredictor(n_estimators=30, max_depth=3, n_jobs=1).fit(specs, ms)
    assert set(NEW_KINDS) <= set(kernels.kinds)
    held_out, truth = _synthetic((*TRANSFORMER_RANDOM, *COMMON_OPS_RANDOM), seed=1)
    predicted = kernels.predict(held_out)
    assert np.all(np.isfinite(predicted)) and np.all(predicted > 0)
    assert np.median(np.abs(predicted / truth - 1)) < 0.5  # it learned something per kind
    path = LatencyPredictor.from_kernels(kernels, ranges_from=specs).save(tmp_path / "p")
    loaded = LatencyPredictor.load(path)
    np.testing.assert_allclose(loaded.kernels_.predict(held_out), predicted, rtol=1e-6)


def test_training_ranges_cover_the_new_fields() -> None:
    plain = [S("conv", h=16, w=16, cin=16, cout=16, kernel=3),
             S("conv", h=32, w=32, cin=32, cout=32, kernel=5)]
    ranges = training_ranges([*plain, S("tlinear", tokens=49, cin=64, cout=64),
                              S("tlinear", tokens=197, cin=384, cout=384)])
    assert ranges["conv"]["dilation"] == (1, 1) and ranges["conv"]["kernel_w"] == (3, 5)
    assert ranges["tlinear"]["tokens"] == (49, 197)
    dilated = S("conv", h=16, w=16, cin=16, cout=16, kernel=3, dilation=2)
    assert range_values(dilated)["dilation"] == 2  # outside (1, 1): flagged by a predictor
    assert range_values(S("conv", h=16, w=16, cin=16, kernel=1, kernel_w=7))["kernel_w"] == 7
    assert set(range_values(S("bmm", heads=6, tokens=49, cin=64, cout=49))) == {
        "cin", "cout", "tokens", "heads", "flops"}
