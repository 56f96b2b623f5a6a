"""OpSpec: golden keys (the dataset/predictor join key must never drift), round trips,
normalisation, refusals and the decomposition of fused mbconv kernels."""

from __future__ import annotations

from dataclasses import fields

import pytest

from latbench.bench.ops import ACTIVATIONS, KEY_FIELDS, OP_KINDS, OpSpec, decompose, se_gate
from latbench.errors import SpecError

# (spec, key it must produce). Copied from the code when these tests were written: a change that
# alters any of them silently orphans every stored dataset and predictor, so it must fail here.
GOLDEN: list[tuple[OpSpec, str]] = [
    (OpSpec("conv", h=32, w=32, cin=16, cout=32, kernel=3, act="relu"),
     "conv:n=1,h=32,w=32,cin=16,cout=32,k=3,s=1,p=1,g=1,act=relu,dtype=float32"),
    (OpSpec("conv", h=56, w=28, cin=32, cout=64, kernel=1, stride=2, groups=4),
     "conv:n=1,h=56,w=28,cin=32,cout=64,k=1,s=2,p=0,g=4,act=none,dtype=float32"),
    (OpSpec("conv", h=224, w=224, cin=3, cout=32, kernel=3, stride=2, act="relu6", pad=0),
     "conv:n=1,h=224,w=224,cin=3,cout=32,k=3,s=2,p=0,g=1,act=relu6,dtype=float32"),
    (OpSpec("dwconv", h=16, w=16, cin=96, kernel=5, stride=2, act="hswish"),
     "dwconv:n=1,h=16,w=16,cin=96,k=5,s=2,p=2,act=hswish,dtype=float32"),
    (OpSpec("mbconv", h=16, w=16, cin=32, cout=32, kernel=5, expand=6, act="relu"),
     "mbconv:n=1,h=16,w=16,cin=32,cout=32,k=5,s=1,e=6,act=relu,se=0,residual=1,dtype=float32"),
    (OpSpec("mbconv", h=32, w=32, cin=32, cout=64, kernel=3, stride=2, expand=3, act="relu6",
            se=True),
     "mbconv:n=1,h=32,w=32,cin=32,cout=64,k=3,s=2,e=3,act=relu6,se=1,residual=0,dtype=float32"),
    (OpSpec("mbconv", h=8, w=8, cin=24, cout=24, kernel=3, expand=1, act="swish", residual=False),
     "mbconv:n=1,h=8,w=8,cin=24,cout=24,k=3,s=1,e=1,act=swish,se=0,residual=0,dtype=float32"),
    (OpSpec("linear", cin=1280, cout=10),
     "linear:n=1,cin=1280,cout=10,act=none,dtype=float32"),
    (OpSpec("linear", cin=64, cout=32, act="relu", batch=4),
     "linear:n=4,cin=64,cout=32,act=relu,dtype=float32"),
    (OpSpec("pool", h=8, w=8, cin=256, pool="gavg"),
     "pool:n=1,h=8,w=8,cin=256,pool=gavg,k=1,s=1,p=0,dtype=float32"),
    (OpSpec("pool", h=32, w=32, cin=16, pool="max", kernel=3, stride=2),
     "pool:n=1,h=32,w=32,cin=16,pool=max,k=3,s=2,p=1,dtype=float32"),
    (OpSpec("pool", h=14, w=14, cin=8, pool="avg", kernel=2, stride=2),
     "pool:n=1,h=14,w=14,cin=8,pool=avg,k=2,s=2,p=0,dtype=float32"),
    (OpSpec("add", h=16, w=16, cin=64, act="relu"),
     "add:n=1,h=16,w=16,cin=64,act=relu,dtype=float32"),
    (OpSpec("mul", h=7, w=7, cin=160),
     "mul:n=1,h=7,w=7,cin=160,dtype=float32"),
    (OpSpec("act", h=28, w=28, cin=40, act="hsigmoid"),
     "act:n=1,h=28,w=28,cin=40,act=hsigmoid,dtype=float32"),
    (OpSpec("se", h=14, w=14, cin=120, expand=0.25),
     "se:n=1,h=14,w=14,cin=120,e=0.25,act=sigmoid,dtype=float32"),
    (OpSpec("se", h=7, w=7, cin=96, expand=0.5, act="hsigmoid"),
     "se:n=1,h=7,w=7,cin=96,e=0.5,act=hsigmoid,dtype=float32"),
    (OpSpec("concat", h=16, w=16, cin=96, groups=3),
     "concat:n=1,h=16,w=16,cin=96,g=3,dtype=float32"),
]


def test_golden_keys_cover_every_kind() -> None:
    assert {spec.kind for spec, _ in GOLDEN} == set(OP_KINDS)


@pytest.mark.parametrize(("spec", "key"), GOLDEN, ids=[k.split(",")[0] + "..." + k[-30:]
                                                      for _, k in GOLDEN])
def test_golden_key(spec: OpSpec, key: str) -> None:
    assert spec.key() == key


@pytest.mark.parametrize(("spec", "key"), GOLDEN, ids=[k[:40] for _, k in GOLDEN])
def test_from_key_round_trip(spec: OpSpec, key: str) -> None:
    back = OpSpec.from_key(key)
    assert back == spec
    assert back.key() == key
    assert back.output_shape == spec.output_shape


def test_key_lists_exactly_the_kind_fields() -> None:
    short = {"batch": "n", "kernel": "k", "stride": "s", "pad": "p", "groups": "g",
             "expand": "e"}
    for spec, key in GOLDEN:
        names = [item.split("=")[0] for item in key.partition(":")[2].split(",")]
        assert names == [short.get(f, f) for f in KEY_FIELDS[spec.kind]] + ["dtype"]


def test_shapes() -> None:
    conv = OpSpec("conv", h=32, w=32, cin=16, cout=32, kernel=3, stride=2)
    assert conv.input_shape == (1, 16, 32, 32)
    assert conv.output_shape == (1, 32, 16, 16)
    assert OpSpec("linear", cin=64, cout=10, batch=2).output_shape == (2, 10)
    assert OpSpec("pool", h=7, w=7, cin=64, pool="gavg").output_shape == (1, 64, 1, 1)
    assert OpSpec("pool", h=9, w=9, cin=4, pool="max", kernel=3, stride=2,
                  pad=0).output_shape == (1, 4, 4, 4)
    mb = OpSpec("mbconv", h=15, w=15, cin=8, cout=16, kernel=5, stride=2, expand=6)
    assert mb.output_shape == (1, 16, 8, 8)
    assert mb.mid == 48
    assert OpSpec("se", h=4, w=4, cin=10, expand=0.25).mid == 2  # round(2.5) -> 2
    assert OpSpec("se", h=4, w=4, cin=2, expand=0.25).mid == 1   # never below 1
    with pytest.raises(SpecError, match="no middle channels"):
        _ = conv.mid


# --- normalisation -----------------------------------------------------------------------------
@pytest.mark.parametrize(("a", "b"), [
    # fields a kind ignores are reset, so they cannot split one operator into two keys
    (dict(kind="linear", cin=64, cout=10, h=7, w=7, kernel=3, stride=2),
     dict(kind="linear", cin=64, cout=10)),
    (dict(kind="add", h=8, w=8, cin=16, kernel=3, stride=2, cout=99, expand=4.0, se=True),
     dict(kind="add", h=8, w=8, cin=16)),
    (dict(kind="mul", h=8, w=8, cin=16, act="none", pool="max", groups=2),
     dict(kind="mul", h=8, w=8, cin=16)),
    (dict(kind="act", h=8, w=8, cin=16, act="relu", cout=3, residual=True),
     dict(kind="act", h=8, w=8, cin=16, act="relu")),
    (dict(kind="conv", h=8, w=8, cin=16, cout=16, kernel=3, expand=6.0, se=True, pool="max"),
     dict(kind="conv", h=8, w=8, cin=16, kernel=3)),          # cout 0 -> cin
    (dict(kind="conv", h=8, w=8, cin=16, kernel=3, pad=-1), dict(kind="conv", h=8, w=8, cin=16,
                                                                  kernel=3, pad=1)),
    (dict(kind="pool", h=8, w=8, cin=16, pool="gavg", kernel=3, stride=2, pad=1),
     dict(kind="pool", h=8, w=8, cin=16, pool="gavg")),
    (dict(kind="se", h=8, w=8, cin=16, expand=0.25, act="none"),
     dict(kind="se", h=8, w=8, cin=16, expand=0.25, act="sigmoid")),
    (dict(kind="mbconv", h=8, w=8, cin=16, kernel=3, expand=6, groups=4, pad=3),
     dict(kind="mbconv", h=8, w=8, cin=16, cout=16, kernel=3, expand=6.0, residual=True)),
    (dict(kind="concat", h=8, w=8, cin=16, groups=2, act="relu", kernel=5),
     dict(kind="concat", h=8, w=8, cin=16, groups=2)),
])
def test_irrelevant_fields_do_not_change_the_key(a: dict, b: dict) -> None:
    sa, sb = OpSpec(**a), OpSpec(**b)
    assert sa.key() == sb.key()
    assert sa == sb  # normalised field by field, not only in the key


def test_dwconv_forces_groups_and_cout() -> None:
    spec = OpSpec("dwconv", h=8, w=8, cin=32, cout=7, groups=3, kernel=3)
    assert (spec.cout, spec.groups) == (32, 32)
    assert spec.key() == OpSpec("dwconv", h=8, w=8, cin=32, kernel=3).key()
    assert spec.output_shape == (1, 32, 8, 8)


def test_mbconv_residual() -> None:
    auto_on = OpSpec("mbconv", h=8, w=8, cin=16, cout=16, kernel=3, expand=3)
    assert auto_on.residual is True
    auto_off_stride = OpSpec("mbconv", h=8, w=8, cin=16, cout=16, kernel=3, stride=2, expand=3)
    assert auto_off_stride.residual is False
    auto_off_channels = OpSpec("mbconv", h=8, w=8, cin=16, cout=24, kernel=3, expand=3)
    assert auto_off_channels.residual is False
    explicit_off = OpSpec("mbconv", h=8, w=8, cin=16, cout=16, kernel=3, expand=3,
                          residual=False)
    assert explicit_off.residual is False and explicit_off.key() != auto_on.key()
    explicit_on = OpSpec("mbconv", h=8, w=8, cin=16, cout=16, kernel=3, expand=3, residual=True)
    assert explicit_on == auto_on
    with pytest.raises(SpecError, match="residual needs stride 1"):
        OpSpec("mbconv", h=8, w=8, cin=16, cout=16, kernel=3, stride=2, expand=3, residual=True)
    with pytest.raises(SpecError, match="16 -> 24"):
        OpSpec("mbconv", h=8, w=8, cin=16, cout=24, kernel=3, expand=3, residual=True)


def test_non_key_fields_are_defaults_after_normalising() -> None:
    defaults = {f.name: f.default for f in fields(OpSpec)}
    for spec, _ in GOLDEN:
        for name, default in defaults.items():
            if name in KEY_FIELDS[spec.kind] or name in ("kind", "dtype"):
                continue
            if spec.kind == "dwconv" and name in ("cout", "groups"):
                continue
            if name == "pad":  # -1 ("auto") is resolved to a concrete pad
                assert getattr(spec, name) == 0, (spec.key(), name)
                continue
            if name == "residual":
                assert getattr(spec, name) is False, (spec.key(), name)
                continue
            if name == "cout":
                assert spec.cout == 0, spec.key()
                continue
            assert getattr(spec, name) == default, (spec.key(), name)


# --- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(kind="conv3d"), "unknown op kind 'conv3d'"),
    (dict(kind="conv", act="gelu"), "unknown activation 'gelu'"),
    (dict(kind="pool", pool="lp"), "unknown pool type 'lp'"),
    (dict(kind="conv", dtype="float16"), "unsupported dtype 'float16'"),
    (dict(kind="conv", h=0), "field h must be a positive integer"),
    (dict(kind="conv", w=-3), "field w must be a positive integer"),
    (dict(kind="dwconv", cin=0), "field cin must be a positive integer"),
    (dict(kind="conv", kernel=0), "field kernel must be a positive integer"),
    (dict(kind="conv", stride=0), "field stride must be a positive integer"),
    (dict(kind="conv", batch=0), "field batch must be a positive integer"),
    (dict(kind="conv", groups=-1), "field groups must be a positive integer"),
    (dict(kind="conv", h=True), "field h must be a positive integer"),
    (dict(kind="conv", h=8.0), "field h must be a positive integer"),
    (dict(kind="conv", cin=8, cout=-8), "field cout must be an integer >= 0"),
    (dict(kind="linear", cin=8, cout=-1), "field cout must be an integer >= 0"),
    (dict(kind="mbconv", h=8, w=8, cin=8, cout=-8, stride=2), "field cout must be an integer"),
    (dict(kind="conv", h=4, w=4, cin=8, kernel=3, pad=1.5), "field pad must be an integer"),
    (dict(kind="conv", h=2, w=2, kernel=5, pad=0), "empty output"),
    (dict(kind="pool", h=1, w=1, pool="max", kernel=3, pad=0), "empty output"),
    (dict(kind="conv", cin=6, cout=8, groups=4), "groups=4 must divide cin=6"),
    (dict(kind="mbconv", expand=0), "expand must be > 0"),
    (dict(kind="se", expand=1.5), "se expand"),
    (dict(kind="se", expand=0), "se expand"),
    (dict(kind="concat", groups=1), "at least 2 inputs"),
])
def test_bad_specs_raise_spec_error(kwargs: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        OpSpec(**kwargs)


def test_errors_name_what_is_known() -> None:
    with pytest.raises(SpecError) as info:
        OpSpec("softmax")
    for kind in OP_KINDS:
        assert kind in str(info.value)
    with pytest.raises(SpecError) as info:
        OpSpec("conv", act="tanh")
    for act in ACTIVATIONS:
        assert act in str(info.value)


@pytest.mark.parametrize(("key", "match"), [
    ("conv", "malformed spec key"),
    ("conv:", "malformed spec key"),
    ("conv:n=1,h=8,bogus=3,dtype=float32", "bad field 'bogus=3'"),
    ("conv:n=1,h", "bad field 'h'"),
    ("conv:n=1,h=eight,dtype=float32", "must be an integer, got 'eight'"),
    ("warp:n=1,h=8,w=8,cin=8,dtype=float32", "unknown op kind 'warp'"),
    # valid fields but not the canonical form: missing fields, other order, ignored fields
    ("conv:n=1,h=32,w=32,cin=16,cout=32,k=3,s=1,p=1,g=1,act=relu", "not canonical"),
    ("conv:h=32,n=1,w=32,cin=16,cout=32,k=3,s=1,p=1,g=1,act=relu,dtype=float32", "not canonical"),
    ("linear:n=1,h=7,w=7,cin=64,cout=10,act=none,dtype=float32", "not canonical"),
    ("mbconv:n=1,h=8,w=8,cin=8,cout=8,k=3,s=1,e=6,act=relu,se=2,residual=1,dtype=float32",
     "not canonical"),
])
def test_from_key_refusals(key: str, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        OpSpec.from_key(key)


def test_with_revalidates() -> None:
    spec = OpSpec("conv", h=8, w=8, cin=16, kernel=3)
    assert spec.with_(stride=2).output_shape == (1, 16, 4, 4)
    with pytest.raises(SpecError):
        spec.with_(kernel=0)


def test_fields_dict_has_every_field() -> None:
    spec = GOLDEN[0][0]
    assert spec.fields_dict() == {f.name: getattr(spec, f.name) for f in fields(OpSpec)}


# --- decompose --------------------------------------------------------------------------------
def _chains(parts: list[OpSpec]) -> bool:
    return all(a.output_shape == b.input_shape for a, b in zip(parts, parts[1:], strict=False))


def test_decompose_expanded_residual_mbconv() -> None:
    spec = OpSpec("mbconv", h=16, w=16, cin=32, cout=32, kernel=5, expand=6, act="relu")
    parts = decompose(spec)
    assert [p.key() for p in parts] == [
        "conv:n=1,h=16,w=16,cin=32,cout=192,k=1,s=1,p=0,g=1,act=relu,dtype=float32",
        "dwconv:n=1,h=16,w=16,cin=192,k=5,s=1,p=2,act=relu,dtype=float32",
        "conv:n=1,h=16,w=16,cin=192,cout=32,k=1,s=1,p=0,g=1,act=none,dtype=float32",
        "add:n=1,h=16,w=16,cin=32,act=none,dtype=float32",
    ]
    assert _chains(parts)


def test_decompose_strided_se_mbconv() -> None:
    spec = OpSpec("mbconv", h=32, w=32, cin=16, cout=24, kernel=3, stride=2, expand=3,
                  act="hswish", se=True)
    parts = decompose(spec)
    assert [p.kind for p in parts] == ["conv", "dwconv", "se", "conv"]
    expand, dw, se, project = parts
    assert (expand.cout, expand.act) == (48, "hswish")
    assert (dw.cin, dw.stride, dw.kernel, dw.output_shape) == (48, 2, 3, (1, 48, 16, 16))
    assert (se.h, se.cin, se.expand, se.act) == (16, 48, 0.25, "hsigmoid")
    assert project.output_shape == spec.output_shape == (1, 24, 16, 16)
    assert project.act == "none"
    assert parts[0].input_shape == spec.input_shape
    assert _chains(parts)


def test_decompose_expand_one_has_no_expansion_conv() -> None:
    spec = OpSpec("mbconv", h=8, w=8, cin=24, cout=24, kernel=3, expand=1, act="relu6",
                  residual=False, batch=2)
    parts = decompose(spec)
    assert [p.kind for p in parts] == ["dwconv", "conv"]
    assert all(p.batch == 2 for p in parts)
    assert parts[-1].output_shape == spec.output_shape
    assert se_gate("relu6") == "sigmoid" and se_gate("hswish") == "hsigmoid"


def test_decompose_leaves_other_kinds_alone() -> None:
    for spec, _ in GOLDEN:
        if spec.kind != "mbconv":
            assert decompose(spec) == [spec]
        else:
            assert all(p.kind != "mbconv" for p in decompose(spec))
