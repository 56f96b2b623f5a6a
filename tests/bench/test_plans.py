"""Sampling plans: presets, YAML and TOML files, determinism, dedup, and refusals that name the
problem."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from latbench.bench.ops import OpSpec, decompose
from latbench.bench.plans import (
    PRESETS,
    Plan,
    RandomKernels,
    build_specs,
    load_plan,
    perturb,
    random_spec,
)
from latbench.errors import ConfigError

EXTRA_KEY = "pool:n=1,h=8,w=8,cin=256,pool=gavg,k=1,s=1,p=0,dtype=float32"
# A fake space of two kernels: an mbconv (so primitives and around have work) and a conv.
TOY_SPACE = [OpSpec("mbconv", h=16, w=16, cin=32, cout=32, kernel=3, expand=6, act="relu"),
             OpSpec("conv", h=16, w=16, cin=32, cout=64, kernel=3, stride=2, act="relu")]


def toy_resolver(name: str) -> list[OpSpec]:
    if name != "toy":
        raise ConfigError(f"unknown search space {name!r}")
    return list(TOY_SPACE)


@functools.cache
def real_resolver(name: str) -> list[OpSpec]:
    """The CLI's resolver, except that family kernel sets ("family:NAME:COUNT", each network
    exported with torch and split) are cut to one network, to keep the test fast."""
    from latbench.bench.network_sets import space_kernels

    if name.startswith("family:"):
        family = name.split(":")[1]
        return space_kernels(f"family:{family}:1")
    return space_kernels(name)


YAML_PLAN = f"""\
name: my-phone
seed: 3
spaces: [toy]
primitives: true
around: 2
random:
  - {{kind: conv, count: 12, h: [8, 16], cin: {{min: 8, max: 64}}, cout: {{min: 8, max: 64}},
     kernel: [1, 3], stride: [1, 2], act: [relu, none]}}
  - {{kind: pool, count: 4, h: [8], cin: [16, 32], pool: [max, avg], kernel: [2, 3]}}
specs: ["{EXTRA_KEY}"]
networks: ["nasbench-macro:3"]
"""

TOML_PLAN = f"""\
[plan]
name = "my-phone"
seed = 3
spaces = ["toy"]
primitives = true
around = 2
specs = ["{EXTRA_KEY}"]
networks = ["nasbench-macro:3"]

[[plan.random]]
kind = "conv"
count = 12
h = [8, 16]
cin = {{min = 8, max = 64}}
cout = {{min = 8, max = 64}}
kernel = [1, 3]
stride = [1, 2]
act = ["relu", "none"]

[[plan.random]]
kind = "pool"
count = 4
h = [8]
cin = [16, 32]
pool = ["max", "avg"]
kernel = [2, 3]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build(name: str) -> None:
    plan = load_plan(name)
    assert plan.name == name
    specs = build_specs(plan, real_resolver)
    assert len(specs) >= 50
    keys = [s.key() for s in specs]
    assert len(set(keys)) == len(keys)
    for space in plan.spaces:  # every real kernel of the space is in the plan
        assert {s.key() for s in real_resolver(space)} <= set(keys)
    if plan.primitives and plan.spaces:
        assert {p.key() for s in real_resolver(plan.spaces[0]) for p in decompose(s)} <= set(keys)
    for entry in plan.random:  # a random entry of N kernels adds about N of its kind
        assert Counter(s.kind for s in specs)[entry.kind] >= entry.count * 0.8


def test_yaml_and_toml_files_give_the_same_plan(tmp_path: Path) -> None:
    from_yaml = load_plan(write(tmp_path, "my-phone.yaml", YAML_PLAN))
    from_toml = load_plan(write(tmp_path, "my-phone.toml", TOML_PLAN))
    assert from_yaml == from_toml
    assert from_yaml.seed == 3 and from_yaml.around == 2 and from_yaml.spaces == ("toy",)
    assert from_yaml.networks == ("nasbench-macro:3",)
    assert from_yaml.specs == (EXTRA_KEY,)
    assert [r.kind for r in from_yaml.random] == ["conv", "pool"]
    a = [s.key() for s in build_specs(from_yaml, toy_resolver)]
    b = [s.key() for s in build_specs(from_toml, toy_resolver)]
    assert a == b


def test_yml_suffix_and_name_from_file(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, "tiny.yml", f"specs: ['{EXTRA_KEY}']\n"))
    assert plan.name == "tiny"
    assert [s.key() for s in build_specs(plan)] == [EXTRA_KEY]


def test_plan_contents(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, "p.yaml", YAML_PLAN))
    specs = build_specs(plan, toy_resolver)
    keys = [s.key() for s in specs]
    # real kernels first, each followed by its primitives; the explicit spec is last
    assert keys[0] == TOY_SPACE[0].key()
    assert keys[1:4] == [p.key() for p in decompose(TOY_SPACE[0])][:3]
    assert keys[-1] == EXTRA_KEY
    assert {s.key() for s in TOY_SPACE} <= set(keys)
    kinds = Counter(s.kind for s in specs)
    assert kinds["pool"] >= 2  # 4 draws from 2 x 2 x 2 = 8 combos, plus the explicit one
    # random kernels honour their value lists and ranges
    random_only = Plan("r", seed=1, random=(RandomKernels(
        "conv", 30, {"h": [8, 16], "cin": {"min": 8, "max": 64}, "cout": {"min": 8, "max": 64},
                     "kernel": [1, 3], "stride": [1, 2], "act": ["relu", "none"]}),))
    drawn = build_specs(random_only)
    assert len(drawn) >= 25
    for s in drawn:
        assert s.h == s.w and s.h in (8, 16) and s.kernel in (1, 3) and s.stride in (1, 2)
        assert 8 <= s.cin <= 64 and 8 <= s.cout <= 64 and s.act in ("relu", "none")
    assert len({s.cin for s in drawn}) > 5  # ranges really are sampled


def test_around_without_primitives() -> None:
    base = build_specs(Plan("a", spaces=("toy",), primitives=False), toy_resolver)
    assert [s.key() for s in base] == [s.key() for s in TOY_SPACE]
    around = build_specs(Plan("a", spaces=("toy",), primitives=False, around=3), toy_resolver)
    assert 2 < len(around) <= 2 + 2 * 3
    assert {s.kind for s in around} == {"mbconv", "conv"}


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", YAML_PLAN)
    first = [s.key() for s in build_specs(load_plan(path), toy_resolver)]
    again = [s.key() for s in build_specs(load_plan(path), toy_resolver)]
    assert first == again
    other_seed = write(tmp_path, "q.yaml", YAML_PLAN.replace("seed: 3", "seed: 4"))
    assert [s.key() for s in build_specs(load_plan(other_seed), toy_resolver)] != first


def test_dedup_by_key(tmp_path: Path) -> None:
    mb = TOY_SPACE[0]
    project = decompose(mb)[2].key()  # a primitive of the space kernel, listed again
    path = write(tmp_path, "d.yaml", f"spaces: [toy]\nspecs: ['{EXTRA_KEY}', '{EXTRA_KEY}', "
                                     f"'{mb.key()}', '{project}']\n")
    specs = build_specs(load_plan(path), toy_resolver)
    keys = [s.key() for s in specs]
    assert len(keys) == len(set(keys))
    assert keys.count(EXTRA_KEY) == 1 and keys.count(mb.key()) == 1
    # toy kernels + the mbconv's 4 primitives (the conv is its own primitive) + the pool
    assert len(keys) == 2 + 4 + 1
    # a random entry with a single possible kernel gives it once however many are drawn
    one = Plan("one", random=(RandomKernels("add", 10, {"h": 4, "cin": 8}),))
    assert [s.key() for s in build_specs(one)] == [OpSpec("add", h=4, w=4, cin=8).key()]


def test_perturb_and_random_spec_stay_valid() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for spec in [*TOY_SPACE, OpSpec("linear", cin=64, cout=10), OpSpec("dwconv", h=8, w=8,
                                                                      cin=16, kernel=3)]:
        for _ in range(10):
            variant = perturb(spec, rng)
            assert variant.kind == spec.kind
    with pytest.raises(ConfigError, match="produced no valid kernel"):
        random_spec(RandomKernels("conv", 1, {"h": [1], "kernel": [5], "pad": [0]}), rng)


def test_a_grouped_conv_neighbour_keeps_its_group_structure() -> None:
    """Neighbours of a RegNet block's 3x3 conv (24 channels per group, as many out as in):
    other sizes and group counts, but the kernel, the out/in ratio and a group width of 12, 24
    or 48 - the things its time follows - stay."""
    import numpy as np

    rng = np.random.default_rng(3)
    spec = OpSpec("conv", h=28, w=28, cin=240, cout=240, kernel=3, pad=1, groups=10)
    variants = [perturb(spec, rng) for _ in range(40)]
    assert all(v.kernel == 3 and v.cin == v.cout and v.groups > 1 for v in variants)
    assert {v.cin // v.groups for v in variants} == {12, 24, 48}
    assert len({(v.h, v.cin) for v in variants}) > 10
    wider = perturb(OpSpec("conv", h=14, w=14, cin=64, cout=128, kernel=3, pad=1, groups=4),
                    rng)
    assert wider.cout == 2 * wider.cin and wider.groups > 1


def test_vision_preset_holds_regnet_style_grouped_convs() -> None:
    from latbench.bench.plans import load_plan

    keys = set(load_plan("vision").specs)
    grouped = [OpSpec.from_key(k) for k in keys if ",g=" in k and ",g=1," not in k]
    widths = {s.cin // s.groups for s in grouped if s.cin == s.cout and s.kernel == 3}
    assert {8, 16, 24, 32, 48, 64} <= widths and len(grouped) >= 100


# --- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "text", "match"), [
    ("a.yaml", "name: x\nsamples: 3\n", r"unknown plan key\(s\) samples"),
    ("a.toml", "[plan]\nname = 'x'\nsamples = 3\n", r"unknown plan key\(s\) samples"),
    ("b.yaml", "random:\n  - {kind: conv3d, count: 4}\n", "unknown kind 'conv3d'"),
    ("c.yaml", "random:\n  - {kind: conv}\n", "random entry 0 needs 'kind' and 'count'"),
    ("c2.yaml", "random:\n  - conv\n", "random entry 0 needs 'kind' and 'count'"),
    ("c3.yaml", "random: {kind: conv, count: 3}\n", "'random' must be a list"),
    ("c4.yaml", "random:\n  - {kind: conv, count: ten}\n", "count must be an integer"),
    ("d.yaml", "specs: ['conv:n=1,h=8']\n", "not canonical"),
    ("d2.yaml", "specs: ['warp:n=1,dtype=float32']\n", "unknown op kind 'warp'"),
    ("d3.yaml", "specs: 'conv:n=1,h=8'\n", "'specs' must be a list of strings"),
    ("e.yaml", "random:\n  - {kind: linear, count: 3, kernel: [3]}\n",
     "random linear entry cannot set kernel"),
    ("e2.yaml", "random:\n  - {kind: dwconv, count: 3, cout: [8]}\n",
     "random dwconv entry cannot set cout"),
    ("f.yaml", "- conv\n- pool\n", "must hold a mapping"),
    ("f2.yaml", "just words\n", "must hold a mapping"),
    ("g.yaml", "name: [unclosed\n", "not valid YAML"),
    ("g2.toml", "name = \n", "is not valid"),
    ("h.yaml", "spaces: nasbench-macro\n", "'spaces' must be a list of strings"),
    ("h2.yaml", "seed: abc\n", "seed must be an integer"),
    ("h3.yaml", "around: -1\n", "around must be >= 0"),
    ("h4.yaml", "primitives: maybe\n", "'primitives' must be true or false"),
    ("plan.json", "{}", r"must end in \.yaml, \.yml or \.toml"),
])
def test_bad_plan_files(tmp_path: Path, name: str, text: str, match: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_plan(path)
    if name != "plan.json":
        assert str(path) in str(info.value)  # the message names the file


def test_missing_plan_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="neither a preset") as info:
        load_plan(missing)
    assert str(missing) in str(info.value)
    for preset in PRESETS:
        assert preset in str(info.value)


@pytest.mark.parametrize(("text", "match"), [
    ("random:\n  - {kind: conv, count: 2, cin: {min: 0, max: 8}}\n", "need 1 <= min <= max"),
    ("random:\n  - {kind: conv, count: 2, cin: {min: 8}}\n", "a range is"),
    ("random:\n  - {kind: conv, count: 2, cin: []}\n", "empty list of choices"),
    ("random:\n  - {kind: conv, count: 2, act: [celu]}\n", "produced no valid kernel"),
    ("spaces: [nowhere]\n", "unknown search space 'nowhere'"),
    ("primitives: true\n", "produces no kernels"),
])
def test_bad_plans_fail_when_built(tmp_path: Path, text: str, match: str) -> None:
    plan = load_plan(write(tmp_path, "p.yaml", text))
    with pytest.raises(ConfigError, match=match):
        build_specs(plan, toy_resolver)


def test_unknown_space_is_named() -> None:
    """bench resolves plan spaces itself (no callback from above); an unknown one is named."""
    with pytest.raises(ConfigError, match="unknown search space 'toy'; known: nasbench-macro"):
        build_specs(Plan("p", spaces=("toy",)))


def test_to_dict_round_trips(tmp_path: Path) -> None:
    import yaml

    plan = load_plan(write(tmp_path, "my-phone.yaml", YAML_PLAN))
    again = load_plan(write(tmp_path, "again.yaml", yaml.safe_dump(plan.to_dict())))
    assert again == plan


# --- impossible sizes: refused before anything is measured, naming the file and the entry ----
@pytest.mark.parametrize(("entries", "match"), [
    ("  - {kind: conv, count: 2, h: [8], kernel: [7], pad: [0], cin: [8]}\n"
     "  - {kind: conv, count: 2, h: [4], kernel: [7], pad: [0], cin: [8]}\n",
     r"random entry 1 \(conv\): kernel 7 is larger than every padded input of the entry "
     r"\(h at most 4, pad \[0\]\)"),
    ("  - {kind: pool, count: 2, h: [2, 8], kernel: [5], pad: [0], cin: [8], pool: [max]}\n",
     r"random entry 0 \(pool\): h 2 is smaller than every kernel of the entry"),
    ("  - {kind: conv, count: 2, h: {min: 1, max: 3}, kernel: [5], pad: [0]}\n",
     r"random entry 0 \(conv\): kernel 5 is larger than every padded input of the entry "
     r"\(h at most 3"),
    ("  - {kind: conv, count: 2, h: [0, 8], cin: [8]}\n",
     r"random entry 0 \(conv\): h 0 is impossible: h must be an integer >= 1"),
    ("  - {kind: dwconv, count: 2, h: [8], w: [-4], cin: [8]}\n",
     r"random entry 0 \(dwconv\): w -4 is impossible"),
    ("  - {kind: linear, count: 2, cin: [0]}\n",
     r"random entry 0 \(linear\): cin 0 is impossible"),
    ("  - {kind: conv, count: 2, h: [8], cin: [8], stride: [1, 0]}\n",
     r"random entry 0 \(conv\): stride 0 is impossible: stride must be an integer >= 1"),
    ("  - {kind: conv, count: 2, h: [8], cin: [8], kernel: [3.5]}\n",
     r"random entry 0 \(conv\): kernel 3.5 is impossible"),
    ("  - {kind: conv, count: 2, h: [8], cin: {min: 64, max: 8}}\n",
     r"random entry 0 \(conv\): bad cin range .*need 1 <= min <= max \(min 64 > max 8\)"),
    ("  - {kind: conv, count: 2, h: [8], cin: [8, 16], cout: [8], groups: [3]}\n",
     r"random entry 0 \(conv\): groups 3 divides none of the cin values \(\[8, 16\]\)"),
    ("  - {kind: conv, count: 2, h: [8], cin: [12], cout: {min: 4, max: 5}, groups: [3]}\n",
     r"random entry 0 \(conv\): groups 3 divides none of the cout values"),
    ("  - {kind: mbconv, count: 2, h: [8], cin: [8], expand: [0]}\n",
     r"random entry 0 \(mbconv\): expand 0 is impossible: it must be a number > 0"),
])
def test_impossible_random_entries_are_refused_naming_file_and_entry(
        tmp_path: Path, entries: str, match: str) -> None:
    path = write(tmp_path, "phone.yaml", "random:\n" + entries)
    plan = load_plan(path)
    with pytest.raises(ConfigError, match=match) as info:
        build_specs(plan, toy_resolver)
    assert str(info.value).startswith(f"plan file {path}: random entry ")


@pytest.mark.parametrize(("key", "match"), [
    ("conv:n=1,h=4,w=4,cin=8,cout=8,k=7,s=1,p=0,g=1,act=none,dtype=float32", "empty output"),
    ("conv:n=1,h=8,w=8,cin=8,cout=8,k=3,s=1,p=1,g=3,act=none,dtype=float32",
     "groups=3 must divide cin=8"),
    ("conv:n=1,h=0,w=8,cin=8,cout=8,k=3,s=1,p=1,g=1,act=none,dtype=float32",
     "h must be a positive integer"),
    ("dwconv:n=1,h=8,w=8,cin=8,k=3,s=0,p=1,act=none,dtype=float32",
     "stride must be a positive integer"),
])
def test_impossible_spec_entries_are_refused_naming_file_and_entry(
        tmp_path: Path, key: str, match: str) -> None:
    path = write(tmp_path, "phone.toml", f"specs = ['{EXTRA_KEY}', '{key}']\n")
    with pytest.raises(ConfigError, match=match) as info:
        load_plan(path)
    assert str(info.value).startswith(f"plan file {path}: specs entry 1: ")


def test_entries_with_some_impossible_combinations_still_build(tmp_path: Path) -> None:
    """Only values no combination can use are refused: a 7x7 kernel over [4, 16] inputs fits
    the 16s, groups 4 divides some of the channel range."""
    plan = load_plan(write(tmp_path, "ok.yaml", (
        "random:\n"
        "  - {kind: conv, count: 6, h: [4, 16], kernel: [3, 7], pad: [0], cin: {min: 8, max: 64},"
        " cout: [16, 32], groups: [1, 4]}\n")))
    specs = build_specs(plan, toy_resolver)
    assert specs and all(s.h + 2 * s.pad >= s.kernel for s in specs)
    assert all(s.cin % s.groups == 0 == s.cout % s.groups for s in specs)


def test_refusals_while_building_name_the_plan_and_entry(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "spaces: [toy, nowhere]\n")
    with pytest.raises(ConfigError, match=r"spaces entry 1: unknown search space 'nowhere'") \
            as info:
        build_specs(load_plan(path), toy_resolver)
    assert str(info.value).startswith(f"plan file {path}: ")
    with pytest.raises(ConfigError, match=r"random entry 0 \(conv\) produced no valid kernel"):
        build_specs(Plan("p", random=(RandomKernels("conv", 1, {"act": ["celu"]}),)))
    with pytest.raises(ConfigError, match=r"^plan 'p': random entry 0 \(conv\)"):
        build_specs(Plan("p", random=(RandomKernels("conv", 1, {"stride": 0}),)))


def test_platforms_preset_spans_the_mobilenetv2_family_depthwise_shapes() -> None:
    """Every map size, stride and kernel size a MobileNetV2 of the family gives a depthwise
    conv (5x5 and 7x7 included, whose time on LiteRT jumps between neighbouring shapes) is
    measured by the `platforms` plan, at channel counts reaching the family's least and most
    there within a factor of 2."""
    from latbench.bench.families import MobileNetV2Family
    from latbench.bench.plans import load_plan

    family, rng = MobileNetV2Family(), np.random.default_rng(3)
    wanted: dict[tuple[int, int, int], set[int]] = {}
    for _ in range(400):
        _, config = family.sample(rng)
        h = config.resolution // 2
        for block in config.blocks:
            wanted.setdefault((block.kernel, block.stride, h), set()).add(block.mid)
            h = -(-h // block.stride)
    planned: dict[tuple[int, int, int], set[int]] = {}
    for spec in map(OpSpec.from_key, load_plan("platforms").specs):
        if spec.kind == "dwconv":
            planned.setdefault((spec.kernel, spec.stride, spec.h), set()).add(spec.cin)
    assert {kernel for kernel, _, _ in wanted} == {3, 5, 7}
    missing = sorted(set(wanted) - set(planned))
    assert not missing, f"depthwise shapes the plan lacks (kernel, stride, h): {missing}"
    for shape, channels in wanted.items():
        assert min(planned[shape]) <= 2 * min(channels), shape
        assert max(planned[shape]) >= max(channels) / 2, shape
