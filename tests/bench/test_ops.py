"""OpSpec: golden keys (the dataset/predictor join key must never drift), round trips,
normalisation, refusals and the decomposition of fused mbconv kernels."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest

from latbench.bench.ops import (
    ACTIVATIONS,
    ALL_ACTIVATIONS,
    CONV_SHARED_S8,
    KEY_FIELDS,
    OP_KINDS,
    OPTIONAL_FIELDS,
    OpSpec,
    decompose,
    precision_forms,
    se_gate,
)
from latbench.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]

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
    # the transformer kinds
    (OpSpec("tlinear", tokens=197, cin=768, cout=3072, act="gelu"),
     "tlinear:n=1,t=197,cin=768,cout=3072,act=gelu,dtype=float32"),
    (OpSpec("bmm", heads=12, tokens=197, cin=64, cout=197),
     "bmm:n=1,heads=12,t=197,cin=64,cout=197,dtype=float32"),
    (OpSpec("softmax", heads=12, tokens=197, cin=197),
     "softmax:n=1,heads=12,t=197,cin=197,dtype=float32"),
    (OpSpec("layernorm", tokens=197, cin=768, batch=2),
     "layernorm:n=2,t=197,cin=768,dtype=float32"),
    (OpSpec("transpose", h=12, w=64, cin=197, axes="0213"),
     "transpose:n=1,h=12,w=64,cin=197,axes=0213,dtype=float32"),
    (OpSpec("clstoken", tokens=196, cin=768),
     "clstoken:n=1,t=196,cin=768,dtype=float32"),
    (OpSpec("gather", tokens=197, cin=768),
     "gather:n=1,t=197,cin=768,dtype=float32"),
    (OpSpec("posembed", tokens=197, cin=384),
     "posembed:n=1,t=197,cin=384,dtype=float32"),
    # the rest of the common op set
    (OpSpec("convt", h=16, w=16, cin=64, cout=32, kernel=2, stride=2),
     "convt:n=1,h=16,w=16,cin=64,cout=32,k=2,s=2,p=0,g=1,act=none,dtype=float32"),
    (OpSpec("resize", h=16, w=16, cin=64, scale=2, mode="bilinear"),
     "resize:n=1,h=16,w=16,cin=64,scale=2,mode=bilinear,dtype=float32"),
    (OpSpec("pad", h=16, w=16, cin=64, pad=1),
     "pad:n=1,h=16,w=16,cin=64,p=1,mode=constant,dtype=float32"),
    (OpSpec("slice", h=28, w=28, cin=116, cout=58),
     "slice:n=1,h=28,w=28,cin=116,cout=58,dtype=float32"),
    (OpSpec("instnorm", h=64, w=64, cin=32),
     "instnorm:n=1,h=64,w=64,cin=32,dtype=float32"),
    (OpSpec("reduce", h=7, w=7, cin=96, axes="23"),
     "reduce:n=1,h=7,w=7,cin=96,axes=23,dtype=float32"),
    (OpSpec("shuffle", h=28, w=28, cin=116, groups=2),
     "shuffle:n=1,h=28,w=28,cin=116,g=2,dtype=float32"),
]

# Kinds extended with optional fields: the field appears after the kind's key fields, only
# when it is not at its default.
GOLDEN_OPTIONAL: list[tuple[OpSpec, str]] = [
    (OpSpec("conv", h=33, w=33, cin=256, cout=256, kernel=3, dilation=6),
     "conv:n=1,h=33,w=33,cin=256,cout=256,k=3,s=1,p=6,g=1,act=none,d=6,dtype=float32"),
    (OpSpec("conv", h=17, w=17, cin=128, cout=128, kernel=1, kernel_w=7),
     "conv:n=1,h=17,w=17,cin=128,cout=128,k=1,s=1,p=0,g=1,act=none,kw=7,pw=3,dtype=float32"),
    (OpSpec("conv", h=17, w=17, cin=128, cout=192, kernel=7, kernel_w=1, act="relu"),
     "conv:n=1,h=17,w=17,cin=128,cout=192,k=7,s=1,p=3,g=1,act=relu,kw=1,pw=0,dtype=float32"),
    (OpSpec("dwconv", h=16, w=16, cin=96, kernel=3, dilation=2, act="leakyrelu", alpha=0.1),
     "dwconv:n=1,h=16,w=16,cin=96,k=3,s=1,p=2,act=leakyrelu,d=2,alpha=0.1,dtype=float32"),
    (OpSpec("act", h=8, w=8, cin=16, act="leakyrelu", alpha=0.2),
     "act:n=1,h=8,w=8,cin=16,act=leakyrelu,alpha=0.2,dtype=float32"),
    (OpSpec("concat", h=16, w=16, cin=32, groups=2, axes="3"),
     "concat:n=1,h=16,w=16,cin=32,g=2,axes=3,dtype=float32"),
    (OpSpec("convt", h=8, w=8, cin=32, cout=16, kernel=3, stride=2, pad=1, out_pad=1),
     "convt:n=1,h=8,w=8,cin=32,cout=16,k=3,s=2,p=1,g=1,act=none,op=1,dtype=float32"),
    (OpSpec("bmm", heads=4, tokens=197, cin=32, cout=197, dtype="int8", mode="symmetric"),
     "bmm:n=1,heads=4,t=197,cin=32,cout=197,mode=symmetric,dtype=int8"),
]


def test_a_shared_int8_conv_is_an_int8_matter_and_a_plan_never_samples_it() -> None:
    """The mark only an ONNX split sets: in the key of an INT8 conv, dropped in another
    precision, refused when misspelled, and dropped from the forms a plan measures."""
    spec = OpSpec("conv", h=8, w=8, cin=16, cout=32, kernel=3, dtype="int8",
                  mode=CONV_SHARED_S8)
    assert spec.key() == "conv:n=1,h=8,w=8,cin=16,cout=32,k=3,s=1,p=1,g=1,act=none," \
                         "mode=shared-s8,dtype=int8"
    assert OpSpec.from_key(spec.key()) == spec
    assert spec.with_(dtype="float32").mode == ""
    assert precision_forms(spec.with_(mode="", dtype="float32"), "int8") == [
        spec.with_(mode="")]
    assert precision_forms(spec, "int8") == [spec.with_(mode="")]  # timed alone: unshared
    with pytest.raises(SpecError, match="conv mode must be '' \\(the default\\) or "
                                        "'shared-s8', got 'shared'"):
        OpSpec("conv", h=8, w=8, cin=16, kernel=3, dtype="int8", mode="shared")


def test_an_int8_bmm_has_two_forms_and_other_precisions_one() -> None:
    spec = OpSpec("bmm", heads=4, tokens=197, cin=32, cout=197)
    int8 = precision_forms(spec, "int8")
    assert [s.key() for s in int8] == [
        "bmm:n=1,heads=4,t=197,cin=32,cout=197,dtype=int8",
        "bmm:n=1,heads=4,t=197,cin=32,cout=197,mode=symmetric,dtype=int8"]
    # the form is an INT8 matter: another precision drops it, and keeps one kernel
    assert int8[1].with_(dtype="float32") == spec
    assert precision_forms(int8[1], "float16") == [spec.with_(dtype="float16")]
    assert precision_forms(OpSpec("softmax", heads=4, tokens=197, cin=197), "int8") == [
        OpSpec("softmax", heads=4, tokens=197, cin=197, dtype="int8")]
    with pytest.raises(SpecError, match="bmm mode must be one of '' \\(the default\\), "
                                        "symmetric, got 'sym'"):
        OpSpec("bmm", heads=4, tokens=197, cin=32, dtype="int8", mode="sym")


def test_golden_keys_cover_every_kind() -> None:
    assert {spec.kind for spec, _ in GOLDEN} == set(OP_KINDS)
    assert {spec.kind for spec, _ in GOLDEN_OPTIONAL} == {
        kind for kind, names in OPTIONAL_FIELDS.items() if set(names) - {"alpha"}} | {"act"}


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
             "expand": "e", "tokens": "t", "dilation": "d", "kernel_w": "kw", "pad_w": "pw",
             "out_pad": "op"}
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
    (dict(kind="conv", act="celu"), "unknown activation 'celu'"),
    (dict(kind="pool", pool="lp"), "unknown pool type 'lp'"),
    (dict(kind="conv", dtype="bfloat16"), "unsupported dtype 'bfloat16'"),
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
        OpSpec("warp")
    for kind in OP_KINDS:
        assert kind in str(info.value)
    with pytest.raises(SpecError) as info:
        OpSpec("conv", act="softsign")
    for act in ALL_ACTIVATIONS:
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


# --- the kinds and fields added later -----------------------------------------------------------
@pytest.mark.parametrize(("spec", "key"), GOLDEN_OPTIONAL, ids=[k[:60] for _, k in GOLDEN_OPTIONAL])
def test_optional_fields_golden_key_and_round_trip(spec: OpSpec, key: str) -> None:
    assert spec.key() == key
    back = OpSpec.from_key(key)
    assert back == spec and back.key() == key
    assert back.output_shape == spec.output_shape
    names = [item.split("=")[0] for item in key.partition(":")[2].split(",")]
    fixed = len(KEY_FIELDS[spec.kind])
    assert names[-1] == "dtype" and len(names) > fixed + 1  # something optional is written
    long = {"d": "dilation", "kw": "kernel_w", "pw": "pad_w", "op": "out_pad"}
    assert {long.get(n, n) for n in names[fixed:-1]} <= set(OPTIONAL_FIELDS[spec.kind])


def _dataset_keys() -> set[str]:
    """Every op key of the committed datasets."""
    keys: set[str] = set()
    for part in ROOT.glob("datasets/*/records/*.parquet"):
        frame = pd.read_parquet(part, columns=["key", "subject"])
        keys |= set(frame.loc[frame["subject"] == "op", "key"])
    return keys


def _fixture_keys() -> set[str]:
    """Every op key in the saved predictor fixtures (expected kernels and networks, training
    ranges, lookup tables, calibration networks)."""
    pattern = re.compile(r"\b(?:{}):n=[^\"'|\s]*dtype=float32".format("|".join(OP_KINDS)))
    keys: set[str] = set()
    for path in (ROOT / "tests" / "data" / "predictors").rglob("*.json"):
        keys |= set(pattern.findall(path.read_text()))
    return keys


def test_committed_keys_round_trip_unchanged() -> None:
    """Keys written before the new kinds and fields existed parse to the same spec and print
    byte for byte as they were stored."""
    dataset, fixtures = _dataset_keys(), _fixture_keys()
    assert len(dataset) > 400 and len(fixtures) > 20
    expected = json.loads((ROOT / "tests/data/predictors/v2/xgboost/expected.json").read_text())
    assert {k["key"] for k in expected["kernels"]} <= fixtures  # the pattern finds them
    kinds = {key.partition(":")[0] for key in dataset | fixtures}
    assert {"conv", "dwconv", "mbconv", "linear", "pool", "add"} <= kinds
    defaults = {f.name: f.default for f in fields(OpSpec)}
    for key in sorted(dataset | fixtures):
        spec = OpSpec.from_key(key)
        assert spec.key() == key
        for name in OPTIONAL_FIELDS[spec.kind]:  # every optional field sits at its default
            assert getattr(spec, name) == defaults[name], (key, name)


@pytest.mark.parametrize(("a", "b"), [
    # a square kernel, a symmetric pad and dilation 1 given explicitly are the plain conv
    (dict(kind="conv", h=8, w=8, cin=16, kernel=3, kernel_w=3, pad_w=1, dilation=1),
     dict(kind="conv", h=8, w=8, cin=16, kernel=3)),
    (dict(kind="conv", h=8, w=8, cin=16, kernel=3, pad=0, pad_w=0),
     dict(kind="conv", h=8, w=8, cin=16, kernel=3, pad=0)),
    (dict(kind="dwconv", h=8, w=8, cin=16, kernel=5, kernel_w=5, dilation=1),
     dict(kind="dwconv", h=8, w=8, cin=16, kernel=5)),
    # alpha matters only to leakyrelu, and its default is not written
    (dict(kind="conv", h=8, w=8, cin=16, kernel=3, act="relu", alpha=0.3),
     dict(kind="conv", h=8, w=8, cin=16, kernel=3, act="relu")),
    (dict(kind="act", h=8, w=8, cin=16, act="leakyrelu", alpha=0.01),
     dict(kind="act", h=8, w=8, cin=16, act="leakyrelu")),
    (dict(kind="concat", h=8, w=8, cin=16, groups=2, axes="1"),
     dict(kind="concat", h=8, w=8, cin=16, groups=2)),
    # fields a new kind ignores are reset; defaults are filled in
    (dict(kind="tlinear", tokens=49, cin=96, h=7, w=7, kernel=3, heads=3, dilation=2),
     dict(kind="tlinear", tokens=49, cin=96, cout=96)),
    (dict(kind="bmm", heads=4, tokens=49, cin=32, h=3, axes="0213"),
     dict(kind="bmm", heads=4, tokens=49, cin=32, cout=32)),
    (dict(kind="softmax", heads=4, tokens=49, cin=49, act="gelu", groups=4),
     dict(kind="softmax", heads=4, tokens=49, cin=49)),
    (dict(kind="transpose", h=4, w=5, cin=6, axes="0231", tokens=9, mode="reflect"),
     dict(kind="transpose", h=4, w=5, cin=6, axes="0231")),
    (dict(kind="resize", h=4, w=4, cin=8, scale=2, pad=3),
     dict(kind="resize", h=4, w=4, cin=8, scale=2, mode="nearest")),
    (dict(kind="pad", h=4, w=4, cin=8, pad=1, scale=3),
     dict(kind="pad", h=4, w=4, cin=8, pad=1, mode="constant")),
    (dict(kind="convt", h=4, w=4, cin=8, kernel=2, stride=2, pad=-1),
     dict(kind="convt", h=4, w=4, cin=8, cout=8, kernel=2, stride=2, pad=0)),
    (dict(kind="reduce", h=4, w=4, cin=8, axes="23", groups=2),
     dict(kind="reduce", h=4, w=4, cin=8, axes="23")),
])
def test_new_fields_normalise(a: dict, b: dict) -> None:
    sa, sb = OpSpec(**a), OpSpec(**b)
    assert sa.key() == sb.key()
    assert sa == sb


def test_non_square_and_dilated_padding_defaults() -> None:
    spec = OpSpec("conv", h=10, w=12, cin=4, cout=8, kernel=1, kernel_w=7)
    assert (spec.pad, spec.pad_w, spec.kernel_w) == (0, 3, 7)
    assert spec.output_shape == (1, 8, 10, 12)
    dilated = OpSpec("dwconv", h=10, w=10, cin=4, kernel=3, dilation=4)
    assert dilated.pad == 4 and dilated.output_shape == (1, 4, 10, 10)
    explicit = OpSpec("conv", h=10, w=10, cin=4, kernel=3, pad_w=0)  # pad default, pad_w given
    assert (explicit.pad, explicit.pad_w) == (1, 0) and explicit.output_shape == (1, 4, 10, 8)
    assert "pw=0" in explicit.key() and OpSpec.from_key(explicit.key()) == explicit
    valid = OpSpec("conv", h=10, w=10, cin=4, kernel=3, dilation=2, pad=0, stride=2)
    assert valid.output_shape == (1, 4, 3, 3)  # (10 - 2 * 2 - 1) // 2 + 1


@pytest.mark.parametrize(("spec", "inputs", "output"), [
    (OpSpec("tlinear", tokens=50, cin=64, cout=256, batch=2), [(2, 50, 64)], (2, 50, 256)),
    (OpSpec("bmm", heads=3, tokens=50, cin=16, cout=50), [(1, 3, 50, 16), (1, 3, 16, 50)],
     (1, 3, 50, 50)),
    (OpSpec("bmm", heads=3, tokens=50, cin=50, cout=16), [(1, 3, 50, 50), (1, 3, 50, 16)],
     (1, 3, 50, 16)),
    (OpSpec("softmax", heads=3, tokens=50, cin=50), [(1, 3, 50, 50)], (1, 3, 50, 50)),
    (OpSpec("layernorm", tokens=50, cin=64), [(1, 50, 64)], (1, 50, 64)),
    (OpSpec("transpose", h=3, w=16, cin=50, axes="0213"), [(1, 50, 3, 16)], (1, 3, 50, 16)),
    (OpSpec("transpose", h=3, w=16, cin=50, axes="0132"), [(1, 50, 3, 16)], (1, 50, 16, 3)),
    (OpSpec("clstoken", tokens=49, cin=64), [(1, 49, 64)], (1, 50, 64)),
    (OpSpec("gather", tokens=50, cin=64, batch=3), [(3, 50, 64)], (3, 64)),
    (OpSpec("posembed", tokens=50, cin=64), [(1, 50, 64)], (1, 50, 64)),
    (OpSpec("convt", h=7, w=9, cin=8, cout=4, kernel=3, stride=2, pad=1, out_pad=1),
     [(1, 8, 7, 9)], (1, 4, 14, 18)),
    (OpSpec("resize", h=7, w=9, cin=8, scale=3), [(1, 8, 7, 9)], (1, 8, 21, 27)),
    (OpSpec("pad", h=7, w=9, cin=8, pad=2, mode="reflect"), [(1, 8, 7, 9)], (1, 8, 11, 13)),
    (OpSpec("slice", h=7, w=9, cin=8, cout=3), [(1, 8, 7, 9)], (1, 3, 7, 9)),
    (OpSpec("instnorm", h=7, w=9, cin=8), [(1, 8, 7, 9)], (1, 8, 7, 9)),
    (OpSpec("reduce", h=7, w=9, cin=8, axes="23"), [(1, 8, 7, 9)], (1, 8, 1, 1)),
    (OpSpec("reduce", h=7, w=9, cin=8, axes="1"), [(1, 8, 7, 9)], (1, 1, 7, 9)),
    (OpSpec("shuffle", h=7, w=9, cin=8, groups=4), [(1, 8, 7, 9)], (1, 8, 7, 9)),
    (OpSpec("concat", h=8, w=9, cin=6, groups=2, axes="2"), [(1, 6, 4, 9)] * 2, (1, 6, 8, 9)),
    (OpSpec("concat", h=8, w=9, cin=6, groups=3, axes="3"), [(1, 6, 8, 3)] * 3, (1, 6, 8, 9)),
])
def test_new_kind_shapes(spec: OpSpec, inputs: list, output: tuple) -> None:
    assert spec.input_shapes == inputs
    assert spec.input_shape == (output if spec.kind == "concat" else inputs[0])
    assert spec.output_shape == output
    if len(output) == 4 and spec.kind != "bmm" and spec.kind != "softmax":
        assert (spec.out_c, spec.out_h, spec.out_w) == output[1:]


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(kind="tlinear", tokens=0), "field tokens must be a positive integer"),
    (dict(kind="bmm", heads=0), "field heads must be a positive integer"),
    (dict(kind="conv", dilation=0), "field dilation must be a positive integer"),
    (dict(kind="conv", kernel_w=-1), "field kernel_w must be an integer >= 0"),
    (dict(kind="conv", pad_w=1.5), "field pad_w must be an integer"),
    (dict(kind="convt", out_pad=-1), "field out_pad must be an integer >= 0"),
    (dict(kind="resize", scale=0), "field scale must be a positive integer"),
    (dict(kind="act", act="leakyrelu", alpha=float("nan")), "field alpha must be a finite"),
    (dict(kind="act", act="leakyrelu", alpha="0.1"), "field alpha must be a finite"),
    (dict(kind="resize", mode=3), "field mode must be a string"),
    (dict(kind="resize", h=4, w=4, scale=2, mode="cubic"), "resize mode must be one of"),
    (dict(kind="pad", h=4, w=4, pad=1, mode="edge"), "pad mode must be one of"),
    (dict(kind="pad", h=4, w=4), "field pad must be a positive integer"),
    (dict(kind="pad", h=4, w=8, pad=4, mode="reflect"), "reflect pad 4 must be smaller"),
    (dict(kind="transpose", h=2, w=2, cin=2, axes="0123"), "permutation of '0123'"),
    (dict(kind="transpose", h=2, w=2, cin=2, axes="021"), "permutation of '0123'"),
    (dict(kind="reduce", h=2, w=2, cin=2, axes=""), "reduce axes"),
    (dict(kind="reduce", h=2, w=2, cin=2, axes="32"), "reduce axes"),
    (dict(kind="reduce", h=2, w=2, cin=2, axes="0"), "reduce axes"),
    (dict(kind="concat", h=4, w=4, cin=8, groups=2, axes="4"), "concat axes"),
    (dict(kind="concat", h=5, w=4, cin=8, groups=2, axes="2"), "h=5 divisible by groups"),
    (dict(kind="slice", h=4, w=4, cin=8, cout=8), "need 1 <= cout < cin"),
    (dict(kind="slice", h=4, w=4, cin=8), "need 1 <= cout < cin"),
    (dict(kind="shuffle", h=4, w=4, cin=9, groups=2), "shuffle groups=2"),
    (dict(kind="shuffle", h=4, w=4, cin=8, groups=1), "shuffle groups=1"),
    (dict(kind="convt", h=4, w=4, cin=8, cout=6, groups=4), "convt groups=4 must divide"),
    (dict(kind="convt", h=4, w=4, cin=8, kernel=3, stride=2, out_pad=2), "out_pad must be"),
    (dict(kind="convt", h=1, w=1, cin=8, kernel=1, pad=1), "empty output"),
    (dict(kind="conv", h=4, w=4, cin=8, kernel=3, dilation=3, pad=0), "empty output"),
    (dict(kind="conv", h=4, w=4, cin=8, kernel=1, kernel_w=7, pad=0), "empty output"),
])
def test_bad_new_fields_raise_spec_error(kwargs: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        OpSpec(**kwargs)


@pytest.mark.parametrize(("key", "match"), [
    ("conv:n=1,h=8,w=8,cin=8,cout=8,k=3,s=1,p=1,g=1,act=none,d=1,dtype=float32",
     "not canonical"),  # a default optional field is never written
    ("conv:n=1,h=8,w=8,cin=8,cout=8,k=3,s=1,p=2,g=1,act=none,d=2,kw=3,dtype=float32",
     "not canonical"),
    ("conv:n=1,h=8,w=8,cin=8,cout=8,k=3,s=1,p=2,g=1,act=none,dtype=float32,d=2",
     "not canonical"),  # optional fields come before dtype
    ("act:n=1,h=8,w=8,cin=8,act=relu,alpha=0.2,dtype=float32", "not canonical"),
    ("act:n=1,h=8,w=8,cin=8,act=leakyrelu,alpha=x,dtype=float32", "alpha must be a number"),
    ("tlinear:n=1,t=x,cin=8,cout=8,act=none,dtype=float32", "tokens must be an integer"),
    ("transpose:n=1,h=2,w=2,cin=2,axes=0213,kind=conv,dtype=float32", "bad field 'kind=conv'"),
])
def test_from_key_refuses_non_canonical_new_fields(key: str, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        OpSpec.from_key(key)


def test_every_activation_is_accepted_by_act_kinds() -> None:
    assert ALL_ACTIVATIONS[:len(ACTIVATIONS)] == ACTIVATIONS  # indices never move
    for act in ALL_ACTIVATIONS:
        for kind in ("conv", "tlinear", "convt", "act"):
            spec = OpSpec(kind, h=4, w=4, cin=4, tokens=3, act=act)
            assert OpSpec.from_key(spec.key()) == spec


def test_committed_dataset_rebuilds_its_specs_through_the_store(tmp_path: Path) -> None:
    """A dataset written before the new OpSpec fields had columns reads them as null and
    rebuilds every op record's spec with those fields at their defaults."""
    import shutil

    from latbench.bench.store import LatencyDataset, LatencyRecord

    folder = next(ROOT.glob("datasets/*/card.json")).parent
    shutil.copytree(folder, tmp_path / "ds", ignore=shutil.ignore_patterns(".*"))
    frame = LatencyDataset.open(tmp_path / "ds").records()
    ops = frame[frame["subject"] == "op"]
    assert len(ops) > 400 and ops["tokens"].isna().all() and ops["alpha"].isna().all()
    for row in ops.to_dict("records"):
        assert LatencyRecord.from_row(row).spec().key() == row["key"]
