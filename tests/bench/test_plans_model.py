"""Plans of a user's model: `models` entries whose kernels join the real kernels (and so get
`around` neighbours), `plan_from_model` and the YAML file `bench plan --from MODEL` writes,
neighbours of every kernel kind, and refusals of bad model entries naming the plan and entry."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.export.to_tflite import to_tflite
from latbench.bench.kernels import onnx_to_kernels
from latbench.bench.ops import OP_KINDS, OpSpec, decompose
from latbench.bench.plans import (
    ModelEntry,
    Plan,
    build_specs,
    load_plan,
    perturb,
    plan_from_model,
    plan_networks,
    plan_yaml,
)
from latbench.cli import main
from latbench.errors import ConfigError

# A small CNN as a user's model: a stem conv, an MBConv block (read whole), pool, classifier.
MODEL_SPECS = [OpSpec("conv", h=16, w=16, cin=3, cout=16, kernel=3, stride=2, act="relu"),
               OpSpec("mbconv", h=8, w=8, cin=16, cout=16, kernel=3, expand=4, act="relu"),
               OpSpec("pool", h=8, w=8, cin=16, pool="gavg"), OpSpec("linear", cin=16, cout=10)]

# One kernel of every kind, as real models hold them (token tensors for the elementwise kinds
# of a transformer: h = tokens, w = 1).
EVERY_KIND = {
    "conv": OpSpec("conv", h=28, w=28, cin=32, cout=64, kernel=3, dilation=2, act="relu"),
    "dwconv": OpSpec("dwconv", h=14, w=14, cin=96, kernel=5, stride=2, act="relu6"),
    "mbconv": OpSpec("mbconv", h=16, w=16, cin=24, cout=24, kernel=3, expand=6, act="swish",
                     se=True),
    "linear": OpSpec("linear", cin=384, cout=1000),
    "pool": OpSpec("pool", h=56, w=56, cin=64, pool="max", kernel=3, stride=2),
    "add": OpSpec("add", h=197, w=1, cin=384),
    "mul": OpSpec("mul", h=14, w=14, cin=96),
    "act": OpSpec("act", h=197, w=1, cin=1536, act="gelu"),
    "se": OpSpec("se", h=14, w=14, cin=96, expand=0.25),
    "concat": OpSpec("concat", h=28, w=28, cin=64, groups=2),
    "tlinear": OpSpec("tlinear", tokens=197, cin=384, cout=1152),
    "bmm": OpSpec("bmm", heads=6, tokens=197, cin=64, cout=197),
    "softmax": OpSpec("softmax", heads=6, tokens=197, cin=197),
    "layernorm": OpSpec("layernorm", tokens=197, cin=384),
    "transpose": OpSpec("transpose", h=6, w=64, cin=197, axes="0213"),
    "clstoken": OpSpec("clstoken", tokens=196, cin=384),
    "gather": OpSpec("gather", tokens=197, cin=384),
    "posembed": OpSpec("posembed", tokens=197, cin=384),
    "convt": OpSpec("convt", h=14, w=14, cin=64, cout=32, kernel=2, stride=2),
    "resize": OpSpec("resize", h=14, w=14, cin=64, scale=2, mode="bilinear"),
    "pad": OpSpec("pad", h=16, w=16, cin=32, pad=2, mode="reflect"),
    "slice": OpSpec("slice", h=28, w=28, cin=116, cout=58),
    "instnorm": OpSpec("instnorm", h=32, w=32, cin=64),
    "reduce": OpSpec("reduce", h=14, w=14, cin=96, axes="23"),
    "shuffle": OpSpec("shuffle", h=28, w=28, cin=116, groups=2),
}


def write_model(folder: Path, name: str = "tiny.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    graph = chain_graph(MODEL_SPECS)
    path.write_bytes(to_tflite(graph) if name.endswith(".tflite") else to_onnx(graph))
    return path


def test_every_kind_has_an_example() -> None:
    assert set(EVERY_KIND) == set(OP_KINDS)


@pytest.mark.parametrize("kind", OP_KINDS)
def test_every_kind_perturbs_into_valid_specs(kind: str) -> None:
    spec = EVERY_KIND[kind]
    rng = np.random.default_rng(0)
    variants = [perturb(spec, rng) for _ in range(30)]
    for variant in variants:
        assert variant.kind == kind
        assert OpSpec.from_key(variant.key()) == variant  # a valid, normalised kernel
    keys = {v.key() for v in variants}
    assert len(keys - {spec.key()}) >= 5, keys


def test_neighbours_keep_what_ties_a_kernel_together() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        qk = perturb(EVERY_KIND["bmm"], rng)  # Q K^T: the scores have one column per token
        assert qk.cout == qk.tokens
        av = perturb(OpSpec("bmm", heads=6, tokens=197, cin=197, cout=64), rng)
        assert av.cin == av.tokens
        scores = perturb(EVERY_KIND["softmax"], rng)
        assert scores.cin == scores.tokens
        part = perturb(EVERY_KIND["slice"], rng)
        assert 1 <= part.cout < part.cin
        tokens = perturb(EVERY_KIND["add"], rng)  # a token tensor stays one
        assert tokens.w == 1
    patches = {perturb(OpSpec("conv", h=224, w=224, cin=3, cout=384, kernel=16, stride=16,
                                  pad=0), rng) for _ in range(30)}
    for conv in patches:  # a patch embedding stays one: same patch, RGB in, whole patches
        assert (conv.kernel, conv.stride, conv.pad, conv.cin) == (16, 16, 0, 3)
        assert conv.h == conv.w and conv.h % 16 == 0
    assert len({c.h for c in patches}) >= 3 and len({c.cout for c in patches}) >= 3
    long = {perturb(EVERY_KIND["act"], rng).h for _ in range(30)}
    assert max(long) > 224  # token tensors are not cut at the image size limit


def test_models_join_the_real_kernels(tmp_path: Path) -> None:
    model = write_model(tmp_path)
    plan = Plan("m", models=(ModelEntry(str(model)),), around=3)
    specs = build_specs(plan)
    keys = {s.key() for s in specs}
    own = {s.key() for s in MODEL_SPECS}
    parts = {p.key() for s in MODEL_SPECS for p in decompose(s)}
    assert own | parts <= keys  # the MBConv block whole, and the primitives it runs as
    kinds = Counter(s.kind for s in specs if s.key() not in own | parts)
    assert kinds["mbconv"] >= 2 and kinds["conv"] >= 2 and kinds["linear"] >= 1  # neighbours
    without = build_specs(Plan("m", models=(ModelEntry(str(model)),)))
    assert {s.key() for s in without} == own | parts
    # a kernel the model runs twice (repeated blocks) gets its neighbours once
    twice = tmp_path / "twice.onnx"
    twice.write_bytes(to_onnx(chain_graph([*MODEL_SPECS[:2], MODEL_SPECS[1], *MODEL_SPECS[2:]])))
    assert build_specs(Plan("m", models=(ModelEntry(str(twice)),), around=3)) == specs


def test_plan_file_round_trip_keeps_the_kernels(tmp_path: Path) -> None:
    model = write_model(tmp_path / "work")
    plan = plan_from_model(model, around=2)
    assert plan.networks == (str(model),) and plan.models == (ModelEntry(str(model)),)
    out = tmp_path / "work" / "plan.yaml"
    out.write_text(plan_yaml(plan, relative_to=out.parent))
    raw = yaml.safe_load(out.read_text())
    assert raw["models"] == ["tiny.onnx"] and raw["networks"] == ["tiny.onnx"]  # relative
    assert raw["around"] == 2 and "random" not in raw  # empty keys left out
    keys = [s.key() for s in build_specs(load_plan(out))]
    assert keys == [s.key() for s in build_specs(plan)]
    # the folder moves as a whole: paths are relative to the plan file, not the working dir
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "work", moved)
    shutil.rmtree(tmp_path / "work")
    again = load_plan(moved / "plan.yaml")
    assert [s.key() for s in build_specs(again)] == keys
    (network,) = plan_networks(again)
    assert network.key == "onnx:tiny.onnx" and network.subject == "network"
    assert [k.key() for k in network.kernels] == [s.key() for s in MODEL_SPECS]


def test_a_tflite_model_gives_the_plan_of_its_onnx_twin(tmp_path: Path) -> None:
    onnx_plan = plan_from_model(write_model(tmp_path, "tiny.onnx"), around=1)
    tflite_plan = plan_from_model(write_model(tmp_path, "tiny.tflite"), around=1)
    assert [s.key() for s in build_specs(tflite_plan)] == \
        [s.key() for s in build_specs(onnx_plan)]
    (network,) = plan_networks(tflite_plan)
    assert network.key == "tflite:tiny.tflite" and network.model_format == ".tflite"


def symbolic_model(folder: Path) -> Path:
    """The tiny model with its input's batch, height and width symbolic."""
    model = onnx.load_from_string(to_onnx(chain_graph(MODEL_SPECS)))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, name in zip(dims, ("N", None, "H", "W"), strict=True):
        if name:
            dim.Clear()
            dim.dim_param = name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "symbolic.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_symbolic_dims_need_an_input_shape(tmp_path: Path) -> None:
    path = symbolic_model(tmp_path)
    name = onnx.load(str(path)).graph.input[0].name
    with pytest.raises(ConfigError, match=f"plan of .*symbolic.onnx.*{name}"):
        plan_from_model(path)
    plan = plan_from_model(path, around=0, input_shape=[f"{name}=3x32x32"])
    keys = [s.key() for s in build_specs(plan)]
    assert MODEL_SPECS[0].with_(h=32, w=32).key() in keys
    (network,) = plan_networks(plan)
    measured = onnx.load_from_string(network.model())  # measured at the shape given
    assert [d.dim_value for d in measured.graph.input[0].type.tensor_type.shape.dim] == \
        [1, 3, 32, 32]
    out = tmp_path / "plan.yaml"
    out.write_text(plan_yaml(plan, relative_to=tmp_path))
    raw = yaml.safe_load(out.read_text())
    assert raw["models"] == [{"path": "symbolic.onnx", "input_shape": [f"{name}=3x32x32"]}]
    assert [s.key() for s in build_specs(load_plan(out))] == keys


@pytest.mark.parametrize("models, match", [
    ("models: tiny.onnx\n", "'models' must be a list"),
    ("models: [{file: tiny.onnx}]\n", "models entry 0 must be a path"),
    ("models: [{path: tiny.onnx, input_shape: [x=a]}]\n", "models entry 0: --input-shape"),
    ("models: [tiny.onnx, missing.onnx]\n", "models entry 1: model file .*missing.onnx does not"),
    ("models: [notes.onnx]\n", "models entry 0: .*notes.onnx.* could not be parsed as ONNX"),
])
def test_bad_model_entries_are_refused_naming_file_and_entry(
        tmp_path: Path, models: str, match: str) -> None:
    write_model(tmp_path)
    (tmp_path / "notes.onnx").write_text("not a model")
    path = tmp_path / "plan.yaml"
    path.write_text(f"name: p\n{models}")
    with pytest.raises(ConfigError, match=f"plan file {path}: {match}"):
        build_specs(load_plan(path))


def test_bench_plan_from_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_model(tmp_path)
    out = tmp_path / "plans" / "mine.yaml"
    assert main(["bench", "plan", "--from", str(model), "--around", "1", "--out", str(out),
                 "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    plan = load_plan(out)
    assert plan.around == 1 and shown["kernels"] == len(build_specs(plan))
    assert shown["written"] == str(out) and shown["networks"] == [str(model)]
    assert main(["bench", "plan", "--from", str(model), "--no-network"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)  # without --out: the plan itself
    assert printed["around"] == 2 and "networks" not in printed
    assert printed["models"] == [str(model.resolve())]


@pytest.mark.parametrize("argv, match", [
    (["--from", "{dir}/broken.onnx", "--out", "{dir}/p.yaml"], "broken.onnx"),
    (["--from", "{dir}/absent.onnx", "--out", "{dir}/p.yaml"], "absent.onnx does not exist"),
    (["quick", "--around", "2"], "go with --from MODEL"),
    (["quick", "--from", "{dir}/tiny.onnx"], "not both"),
    (["--from", "{dir}/tiny.onnx", "--out", "{dir}/p.txt"], "must end in .yaml"),
])
def test_bench_plan_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             argv: list[str], match: str) -> None:
    write_model(tmp_path)
    data = to_onnx(chain_graph(MODEL_SPECS))
    (tmp_path / "broken.onnx").write_bytes(data[:len(data) // 2])  # truncated
    assert main(["bench", "plan", *(a.format(dir=tmp_path) for a in argv)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert match in err
    assert not (tmp_path / "p.yaml").exists() and not (tmp_path / "p.txt").exists()


def test_model_kernels_are_read_as_the_plan_reads_them(tmp_path: Path) -> None:
    """The plan reads its models with fused blocks whole: the same kernels `onnx_to_kernels`
    gives with grouping, so a predictor fitted on the plan prices the blocks whole."""
    model = write_model(tmp_path)
    plan = Plan("m", models=(ModelEntry(str(model)),), primitives=False)
    assert [s.key() for s in build_specs(plan)] == \
        [s.key() for s in onnx_to_kernels(model, group=True)]
