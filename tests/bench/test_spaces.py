"""Search spaces: NAS-Bench-Macro checked against the benchmark's own table (parameter counts,
the set of architecture codes), and the ProxylessNAS space's encoding, skips, kernels and
PyTorch model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latbench.bench.ops import OpSpec
from latbench.bench.spaces import SPACES, Arch, get_space, register_space
from latbench.bench.spaces.nasbench_macro import (
    PUBLIC_SOURCE,
    NasBenchMacro,
    accuracy_table_path,
    load_accuracy_table,
)
from latbench.bench.spaces.proxyless import ProxylessSpace
from latbench.errors import ConfigError, DatasetError, SearchError

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO.parent / "shared" / "data"
TABLE = accuracy_table_path(DATA_DIR)
CODES = ("00000000", "22222222", "12012012", "02012100", "11111221", "20102101")


@pytest.fixture(scope="module")
def raw_table() -> dict:
    # Fails (never skips) when the reference data is missing: these checks are the only proof
    # that the space is the benchmark's.
    assert TABLE.is_file(), f"NAS-Bench-Macro table missing at {TABLE}; get it from {PUBLIC_SOURCE}"
    return json.loads(TABLE.read_text())


@pytest.fixture(scope="module")
def macro() -> NasBenchMacro:
    space = get_space("nasbench-macro")
    assert isinstance(space, NasBenchMacro)
    return space


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def assert_chain(specs: list[OpSpec]) -> None:
    """Each kernel consumes exactly what the one before it produced (a pooled NxCx1x1 map
    feeds a linear layer as NxC)."""
    for before, after in zip(specs, specs[1:], strict=False):
        out = before.output_shape
        if after.kind == "linear" and len(out) == 4:
            assert out[2:] == (1, 1), (before.key(), after.key())
            out = out[:2]
        assert out == after.input_shape, (before.key(), after.key())


def assert_torch_matches_specs(space, arch: Arch) -> None:
    """Run the PyTorch model and compare every kernel module's output with its spec's shape."""
    import torch

    model = space.to_torch(arch).eval()
    specs = space.ops(arch)
    assert len(model) == len(specs)
    shapes: list[tuple[int, ...]] = []
    hooks = [m.register_forward_hook(lambda _m, _a, out: shapes.append(tuple(out.shape)))
             for m in model]
    with torch.no_grad():
        y = model(torch.randn(space.input_shape))
    for h in hooks:
        h.remove()
    assert y.shape == (1, space.num_classes)
    assert torch.isfinite(y).all()
    for spec, shape in zip(specs, shapes, strict=True):
        assert int(np.prod(shape)) == int(np.prod(spec.output_shape)), spec.key()
        assert shape[:2] == spec.output_shape[:2], spec.key()


# --- NAS-Bench-Macro ---------------------------------------------------------------------------
@pytest.mark.parametrize("code", CODES)
def test_macro_param_count_matches_benchmark(macro: NasBenchMacro, raw_table: dict,
                                             code: str) -> None:
    assert n_params(macro.to_torch(macro.decode(code))) == raw_table[code]["params"]


def test_macro_codes_are_the_benchmarks(macro: NasBenchMacro, raw_table: dict) -> None:
    archs = macro.all_archs()
    codes = [macro.encode(a) for a in archs]
    assert len(archs) == macro.size == 6561
    assert len(set(archs)) == 6561
    assert set(codes) == set(raw_table)


def test_macro_structure(macro: NasBenchMacro) -> None:
    assert macro.n_layers == 8
    assert [macro.n_candidates(i) for i in range(8)] == [3] * 8
    # identity is no kernel inside a stage, a strided 1x1 conv where the shape changes
    assert [len(macro.candidates(i)[0]) for i in range(8)] == [1, 0, 1, 0, 0, 1, 0, 0]
    prefix, suffix = macro.fixed_ops()
    assert [s.kind for s in prefix] == ["conv"]
    assert [s.kind for s in suffix] == ["conv", "pool", "linear"]
    assert suffix[-1].cout == 10
    keys = [s.key() for s in macro.layer_specs()]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("code", CODES)
def test_macro_ops_chain(macro: NasBenchMacro, code: str) -> None:
    specs = macro.ops(macro.decode(code))
    assert specs[0].input_shape == macro.input_shape
    assert_chain(specs)
    assert specs[-1].output_shape == (1, 10)


def test_macro_random_archs_chain(macro: NasBenchMacro) -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        assert_chain(macro.ops(macro.sample(rng)))


def test_macro_torch_matches_specs(macro: NasBenchMacro) -> None:
    assert_torch_matches_specs(macro, macro.decode("12012012"))


def test_macro_other_resolution_and_classes() -> None:
    space = get_space("nasbench-macro", resolution=16, num_classes=100)
    specs = space.ops(space.decode("21021021"))
    assert specs[0].input_shape == (1, 3, 16, 16)
    assert_chain(specs)
    assert specs[-1].output_shape == (1, 100)
    with pytest.raises(SearchError, match="multiple of 8"):
        get_space("nasbench-macro", resolution=30)


def test_macro_encode_decode(macro: NasBenchMacro) -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        arch = macro.sample(rng)
        code = macro.encode(arch)
        assert len(code) == 8 and set(code) <= set("012")
        assert macro.decode(code) == arch
    assert macro.decode("01201201") == Arch("nasbench-macro", (0, 1, 2, 0, 1, 2, 0, 1))


@pytest.mark.parametrize("text", ["0120120", "012012012", "01201203", "0120120a", ""])
def test_macro_decode_errors(macro: NasBenchMacro, text: str) -> None:
    with pytest.raises(SearchError, match="8 characters of 0/1/2"):
        macro.decode(text)


@pytest.mark.parametrize(("arch", "match"), [
    (Arch("proxyless", (0,) * 8), "space 'proxyless' given to space 'nasbench-macro'"),
    (Arch("nasbench-macro", (0,) * 7), "have 8 layers, got 7"),
    (Arch("nasbench-macro", (0, 0, 0, 3, 0, 0, 0, 0)), "layer 3 has no candidate 3"),
    (Arch("nasbench-macro", (0, 0, 0, 0, 0, 0, 0, -1)), "layer 7 has no candidate -1"),
])
def test_macro_rejects_foreign_archs(macro: NasBenchMacro, arch: Arch, match: str) -> None:
    for use in (macro.encode, macro.ops, lambda a: macro.mutate(a, np.random.default_rng(0))):
        with pytest.raises(SearchError, match=match):
            use(arch)


def test_macro_sample_and_mutate(macro: NasBenchMacro) -> None:
    rng = np.random.default_rng(0)
    samples = [macro.sample(rng) for _ in range(200)]
    assert len(set(samples)) > 150
    assert {c for a in samples for c in a.choices} == {0, 1, 2}
    for arch in samples[:100]:
        child = macro.mutate(arch, rng)
        changed = sum(a != b for a, b in zip(arch.choices, child.choices, strict=True))
        assert changed >= 1
        macro.check(child)
    everything = macro.mutate(samples[0], rng, rate=1.0)
    assert all(a != b for a, b in zip(samples[0].choices, everything.choices, strict=True))


def test_sampling_is_seeded(macro: NasBenchMacro) -> None:
    def run(seed: int) -> list[Arch]:
        rng = np.random.default_rng(seed)
        archs = [macro.sample(rng) for _ in range(20)]
        return archs + [macro.mutate(a, rng) for a in archs]

    assert run(3) == run(3)
    assert run(3) != run(4)


# --- accuracy table ------------------------------------------------------------------------------
def test_load_accuracy_table(raw_table: dict) -> None:
    from_dir = load_accuracy_table(DATA_DIR)
    from_file = load_accuracy_table(TABLE)
    assert from_dir == from_file
    assert len(from_dir) == 6561
    assert from_dir["00000000"] == pytest.approx(raw_table["00000000"]["mean_acc"])
    assert 0 < min(from_dir.values()) < max(from_dir.values()) < 100


def test_accuracy_table_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_accuracy_table(tmp_path)
    message = str(info.value)
    assert str(accuracy_table_path(tmp_path)) in message
    assert "github.com/xiusu/NAS-Bench-Macro" in message and "--data-dir" in message
    with pytest.raises(DatasetError, match="not found"):
        load_accuracy_table(tmp_path / "absent.json")


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", "is not a NAS-Bench-Macro accuracy table"),
    ("[1, 2, 3]", "is not a NAS-Bench-Macro accuracy table"),
    ('{"00000000": {"params": 3}}', "is not a NAS-Bench-Macro accuracy table"),
    ('{"00000000": {"mean_acc": "high"}}', "is not a NAS-Bench-Macro accuracy table"),
    ('{"00000000": {"mean_acc": 91.0}}', "holds 1 architectures, expected 6561"),
])
def test_accuracy_table_malformed(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "table.json"
    path.write_text(text)
    with pytest.raises(DatasetError, match=match) as info:
        load_accuracy_table(path)
    assert str(path) in str(info.value)


# --- ProxylessNAS ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def proxyless() -> ProxylessSpace:
    space = get_space("proxyless", resolution=64, num_classes=10)
    assert isinstance(space, ProxylessSpace)
    return space


def test_proxyless_structure(proxyless: ProxylessSpace) -> None:
    assert proxyless.n_layers == 21
    skippable = [proxyless.layers[i].skippable for i in range(21)]
    # the first layer of each stage changes shape, so it may not be skipped
    first_of_stage = {0, 4, 8, 12, 16, 20}
    assert skippable == [i not in first_of_stage for i in range(21)]
    for i in range(21):
        names = proxyless.candidate_names(i)
        cands = proxyless.candidates(i)
        assert len(names) == len(cands) == (7 if skippable[i] else 6)
        assert ("skip" in names) == skippable[i]
        assert [c for c in cands if not c] == ([[]] if skippable[i] else [])
    assert proxyless.size == 6 ** 6 * 7 ** 15


def test_proxyless_encode_decode(proxyless: ProxylessSpace) -> None:
    rng = np.random.default_rng(2)
    for _ in range(30):
        arch = proxyless.sample(rng)
        text = proxyless.encode(arch)
        assert len(text.split("-")) == 21
        assert proxyless.decode(text) == arch
    assert proxyless.decode("-".join(["k3_e3"] * 21)).choices == (0,) * 21


@pytest.mark.parametrize(("text", "match"), [
    ("-".join(["skip"] + ["k3_e3"] * 20), "layer 0 has no choice 'skip'"),
    ("-".join(["k3_e3"] * 4 + ["skip"] + ["k3_e3"] * 16), "layer 4 has no choice 'skip'"),
    ("-".join(["k9_e3"] * 21), "layer 0 has no choice 'k9_e3'"),
    ("-".join(["k3_e3"] * 20), "needs 21 '-'-separated layer choices, got 20"),
])
def test_proxyless_decode_errors(proxyless: ProxylessSpace, text: str, match: str) -> None:
    with pytest.raises(SearchError, match=match):
        proxyless.decode(text)


def test_proxyless_skip_where_allowed(proxyless: ProxylessSpace) -> None:
    names = ["k5_e6" if not proxyless.layers[i].skippable else "skip" for i in range(21)]
    arch = proxyless.decode("-".join(names))
    full = proxyless.ops(proxyless.decode("-".join(["k5_e6"] * 21)))
    skipped = proxyless.ops(arch)
    assert len(full) - len(skipped) == 15
    assert_chain(skipped)


def test_proxyless_ops_chain(proxyless: ProxylessSpace) -> None:
    rng = np.random.default_rng(4)
    for _ in range(30):
        specs = proxyless.ops(proxyless.sample(rng))
        assert specs[0].input_shape == (1, 3, 64, 64)
        assert_chain(specs)
        assert specs[-1].output_shape == (1, 10)


def test_proxyless_torch_forward(proxyless: ProxylessSpace) -> None:
    rng = np.random.default_rng(6)
    arch = proxyless.sample(rng)
    assert_torch_matches_specs(proxyless, arch)
    with pytest.raises(SearchError, match="num_classes"):
        proxyless.to_torch(arch, num_classes=5)


def test_proxyless_mutate(proxyless: ProxylessSpace) -> None:
    rng = np.random.default_rng(8)
    arch = proxyless.sample(rng)
    for _ in range(50):
        child = proxyless.mutate(arch, rng)
        assert child != arch
        proxyless.check(child)
        arch = child


def test_proxyless_options() -> None:
    with pytest.raises(SearchError, match="multiple of 32"):
        ProxylessSpace(resolution=48)
    slim = ProxylessSpace(resolution=96, width_mult=0.5, num_classes=10)
    assert slim.layers[0].cin == 8 and slim.stem_channels == 16
    assert_chain(slim.ops(slim.sample(np.random.default_rng(0))))


# --- registry --------------------------------------------------------------------------------
def test_registry() -> None:
    assert {"nasbench-macro", "proxyless"} <= set(SPACES)
    with pytest.raises(ConfigError, match="registered twice"):
        register_space("proxyless")(ProxylessSpace)
    with pytest.raises(ConfigError, match="unknown search space 'nope'"):
        get_space("nope")


# --- every registered space --------------------------------------------------------------------
# Small options for the spaces a test would otherwise build large; a space registered without an
# entry here is tested with its defaults.
SMALL_SPACES = {
    "nasbench-macro": {"resolution": 8},
    "nasbench201": {"resolution": 8, "channels": 4, "cells": 1},
    "proxyless": {"resolution": 32, "width_mult": 0.35, "num_classes": 10,
                  "stages": ((16, 2, 2), (24, 2, 2))},
}


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_round_trips_and_builds(name: str) -> None:
    import torch

    space = get_space(name, **SMALL_SPACES.get(name, {}))
    counts = [space.n_candidates(i) for i in range(space.n_layers)]
    assert space.size == int(np.prod(counts)) and min(counts) >= 1
    assert all(len(space.candidate_names(i)) == counts[i] for i in range(space.n_layers))
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(5)]
    for arch in archs:
        text = space.encode(arch)
        assert isinstance(text, str) and space.decode(text) == arch
        specs = space.ops(arch)
        assert specs and all(isinstance(s, OpSpec) for s in specs)
        assert specs[0].input_shape == space.input_shape
        if space.is_chain:
            assert_chain(specs)
        child = space.mutate(arch, rng)
        assert child != arch and space.check(child) == child
    model = space.to_torch(archs[0]).eval()
    with torch.no_grad():
        y = model(torch.randn(2, *space.input_shape[1:]))
    assert tuple(y.shape) == (2, space.num_classes) and torch.isfinite(y).all()
