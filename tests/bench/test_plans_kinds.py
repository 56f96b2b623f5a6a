"""Plans and the kernel kinds added for transformers and the common op set: random entries
sample every new kind and field, the transformer and vision presets, and refusals of impossible
values of the new fields before anything is measured, naming the plan file and the entry."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from latbench.bench.families import VIT_ACTIVATIONS
from latbench.bench.ops import OP_KINDS, OpSpec
from latbench.bench.plans import (
    COMMON_OPS_RANDOM,
    TRANSFORMER_RANDOM,
    Plan,
    RandomKernels,
    build_specs,
    load_plan,
    perturb,
)
from latbench.errors import ConfigError

NEW_KINDS = OP_KINDS[OP_KINDS.index("tlinear"):]


def test_existing_presets_keep_their_kernels() -> None:
    """The new kinds change nothing a plan drew before: the `random` preset's keys, in order,
    hash as they did before the new kinds existed."""
    keys = [s.key() for s in build_specs(load_plan("random"))]
    assert len(keys) == 185
    assert hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16] == "5c024a50c2b22e03"


def one_network_per_family(name: str) -> list[OpSpec]:
    """The presets' resolver with each family kernel set cut to one network (fast)."""
    from latbench.bench.network_sets import space_kernels

    if name.startswith("family:"):
        return space_kernels(f"family:{name.split(':')[1]}:1")
    return space_kernels(name)


def test_vision_preset_samples_every_kind() -> None:
    specs = build_specs(load_plan("vision"), one_network_per_family)
    kinds = Counter(s.kind for s in specs)
    # mul and se are not drawn at random: they come from the family networks' kernels
    assert set(kinds) >= set(OP_KINDS) - {"mul", "se"}
    assert all(kinds[kind] >= 5 for kind in NEW_KINDS), kinds
    # the values below come from the random entries (what the families' neighbours draw
    # before them changes with the family kernel sets)
    specs = build_specs(Plan("v", random=load_plan("vision").random))
    convs = [s for s in specs if s.kind == "conv"]
    assert any(s.dilation > 1 for s in convs) and any(s.kernel_w for s in convs)
    assert {s.mode for s in specs if s.kind == "resize"} == {"nearest", "bilinear"}
    assert {s.axes for s in specs if s.kind == "concat"} == {"", "2", "3"}
    assert {s.act for s in specs if s.kind == "act"} >= {"leakyrelu", "prelu", "tanh", "mish"}


def test_transformer_preset_has_vit_ranges() -> None:
    """The preset's random kernels span the ViT/DeiT ranges (its family kernels and their
    neighbours: tests/bench/test_plans_presets.py)."""
    specs = build_specs(Plan("t", random=load_plan("transformer").random))
    token_kinds = [s for s in specs if s.kind in ("tlinear", "bmm", "softmax", "layernorm",
                                                   "clstoken", "gather", "posembed")]
    assert len(token_kinds) > 150
    assert all(49 <= s.tokens <= 1024 for s in token_kinds)
    assert min(s.tokens for s in token_kinds) < 100 and max(s.tokens for s in token_kinds) > 500
    assert all(64 <= s.cin <= 768 for s in specs if s.kind == "layernorm")
    assert {s.heads for s in specs if s.kind in ("bmm", "softmax")} <= {1, 2, 3, 4, 6, 8, 12}
    assert len({s.heads for s in specs if s.kind == "bmm"}) >= 5
    assert {s.act for s in specs if s.kind == "tlinear"} == {"none", *VIT_ACTIVATIONS}
    qk = [s for s in specs if s.kind == "bmm" and s.cin <= 96]
    av = [s for s in specs if s.kind == "bmm" and s.cout <= 96]
    assert qk and av


@pytest.mark.parametrize("preset", ["platforms", "transformer", "vision"])
def test_transformer_kernels_span_the_vit_family_tokens(preset: str) -> None:
    """A plan that prices ViTs measures attention at the family's largest token count (784
    patches and a class token): the attention matmuls and softmax grow with the square of the
    tokens, and priced from 290 tokens a 785-token ViT came out at half their time."""
    from latbench.bench.families import VIT_RESOLUTIONS

    most_tokens = (max(VIT_RESOLUTIONS) // 8) ** 2 + 1
    specs = build_specs(Plan("p", random=load_plan(preset).random))
    for kind in ("bmm", "softmax"):  # linear kinds extrapolate along their baseline
        assert max(s.tokens for s in specs if s.kind == kind) >= most_tokens, kind


def _entry_id(entry: dict) -> str:
    return "-".join([entry["kind"], *sorted(set(entry) - {"kind", "count"})])


@pytest.mark.parametrize("entry", [*TRANSFORMER_RANDOM, *COMMON_OPS_RANDOM], ids=_entry_id)
def test_every_random_entry_draws_its_values(entry: dict) -> None:
    fields = {k: v for k, v in entry.items() if k not in ("kind", "count")}
    specs = build_specs(Plan("p", seed=1, random=(RandomKernels(entry["kind"], 20, fields),)))
    assert len(specs) >= 10
    for spec in specs:
        assert spec.kind == entry["kind"]
        for name, value in fields.items():
            got = getattr(spec, name)
            if isinstance(value, dict):
                assert value["min"] <= got <= value["max"], (spec.key(), name)
            elif name == "axes" and spec.kind == "concat":  # "1", the channels, is written ""
                assert got in [a if a != "1" else "" for a in value]
            elif name == "cout" and got == 0:
                continue
            else:
                assert got in value, (spec.key(), name)


def test_perturb_moves_the_new_kinds() -> None:
    rng = np.random.default_rng(0)
    for spec in [OpSpec("tlinear", tokens=197, cin=384, cout=1536, act="gelu"),
                 OpSpec("bmm", heads=6, tokens=197, cin=64, cout=197),
                 OpSpec("convt", h=14, w=14, cin=64, cout=32, kernel=2, stride=2),
                 OpSpec("slice", h=28, w=28, cin=116, cout=58),
                 OpSpec("pad", h=8, w=8, cin=16, pad=3, mode="reflect")]:
        variants = {perturb(spec, rng).key() for _ in range(12)}
        assert len(variants) > 3, spec.key()
        assert all(OpSpec.from_key(k).kind == spec.kind for k in variants)
    tokens = {perturb(OpSpec("layernorm", tokens=100, cin=64), rng).tokens for _ in range(20)}
    assert tokens == {50, 100, 200}


def test_optional_fields_may_be_set_by_their_kinds_only(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("random:\n  - {kind: conv, count: 4, h: [16], cin: [8], kernel: [3], "
                    "dilation: [2], kernel_w: [1, 5], alpha: [0.2], act: [leakyrelu]}\n")
    specs = build_specs(load_plan(path))
    assert all(s.dilation == 2 and s.alpha == 0.2 and s.kernel_w in (0, 1, 5) for s in specs)
    path.write_text("random:\n  - {kind: tlinear, count: 4, tokens: [8], dilation: [2]}\n")
    with pytest.raises(ConfigError, match="random tlinear entry cannot set dilation"):
        load_plan(path)


@pytest.mark.parametrize(("entry", "match"), [
    ("{kind: tlinear, count: 2, tokens: [0, 8]}", r"tokens 0 is impossible: tokens must be an "
                                                  r"integer >= 1"),
    ("{kind: bmm, count: 2, heads: [2.5]}", "heads 2.5 is impossible"),
    ("{kind: conv, count: 2, h: [8], dilation: [0]}", "dilation 0 is impossible"),
    ("{kind: conv, count: 2, h: [8], kernel_w: [-1]}", "kernel_w -1 is impossible"),
    ("{kind: resize, count: 2, h: [8], scale: [0]}", "scale 0 is impossible"),
    ("{kind: convt, count: 2, h: [8], out_pad: [-1]}", "out_pad -1 is impossible"),
    ("{kind: act, count: 2, h: [8], act: [leakyrelu], alpha: [.nan]}",
     "alpha nan is impossible: it must be a finite number"),
    ("{kind: resize, count: 2, h: [8], scale: [2], mode: [nearest, cubic]}",
     "mode 'cubic' is impossible for resize: one of nearest, bilinear"),
    ("{kind: pad, count: 2, h: [8], pad: [1], mode: [edge]}", "mode 'edge' is impossible for pad"),
    ("{kind: transpose, count: 2, h: [8], axes: ['0213', '0123']}",
     "axes '0123' is impossible: transpose axes must be a permutation"),
    ("{kind: reduce, count: 2, h: [8], axes: [23, 0]}", "axes 0 is impossible: reduce axes"),
    ("{kind: concat, count: 2, h: [8], groups: [2], axes: [4]}", "axes 4 is impossible"),
    ("{kind: conv, count: 2, h: [4], kernel: [3], dilation: [3], pad: [0]}",
     r"kernel 3 is larger than every padded input of the entry \(h at most 4, pad \[0\]\)"),
    ("{kind: conv, count: 2, h: [8], w: [4], kernel: [1], kernel_w: [7], pad_w: [0]}",
     r"kernel 7 is larger than every padded input of the entry \(w at most 4"),
    ("{kind: convt, count: 2, h: [8], stride: [1, 2], out_pad: [0, 2]}",
     r"out_pad 2 is not smaller than any stride of the entry \(\[1, 2\]\)"),
    ("{kind: slice, count: 2, h: [8], cin: [8, 16], cout: [16]}",
     r"cout 16 fits no cin of the entry \(\[8, 16\]\)"),
    ("{kind: pad, count: 2, h: [4, 8], pad: [8], mode: [reflect]}",
     r"reflect pad 8 is not smaller than any size of the entry \(\[4, 8\]\)"),
    ("{kind: shuffle, count: 2, h: [8], cin: [6, 10], groups: [4]}",
     r"groups 4 divides none of the cin values \(\[6, 10\]\)"),
    ("{kind: convt, count: 2, h: [8], cin: [8], cout: [6], groups: [4]}",
     r"groups 4 divides none of the cout values"),
])
def test_impossible_new_fields_are_refused_naming_file_and_entry(
        tmp_path: Path, entry: str, match: str) -> None:
    path = tmp_path / "phone.yaml"
    path.write_text(f"random:\n  - {{kind: add, count: 1, h: [4], cin: [4]}}\n  - {entry}\n")
    with pytest.raises(ConfigError, match=match) as info:
        build_specs(load_plan(path))
    kind = entry.split("kind: ")[1].split(",")[0]
    assert str(info.value).startswith(f"plan file {path}: random entry 1 ({kind}): ")


def test_axes_may_be_written_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("random:\n  - {kind: reduce, count: 3, h: [8], cin: [8], axes: [23, 1]}\n"
                    "  - {kind: concat, count: 2, h: [8], cin: [8], groups: [2], axes: [1, 3]}\n")
    specs = build_specs(load_plan(path))
    assert {s.axes for s in specs if s.kind == "reduce"} <= {"23", "1"}
    assert {s.axes for s in specs if s.kind == "concat"} <= {"", "3"}
