"""Plans, network sets and fusion pairs in a precision: `bench ops / networks / fusion
--precision` measure the same kernels and networks with their dtype switched; network keys name
their precision so one dataset can hold a network in several."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from latbench.bench.fusion import FusionRules, apply_attach, default_pairs
from latbench.bench.kernels import DEFAULT_ATTACH, onnx_to_kernels
from latbench.bench.network_sets import (
    network_from_key,
    precision_key,
    resolve_networks,
    split_precision_key,
)
from latbench.bench.ops import OpSpec
from latbench.bench.plans import Plan, plan_subjects
from latbench.cli import main


def test_a_plan_measures_its_kernels_and_networks_in_the_precision_asked() -> None:
    plan = Plan(name="p", specs=(OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3).key(),
                                 OpSpec("add", h=8, w=8, cin=4).key()),
                networks=("nasbench-macro:1",))
    fp32 = plan_subjects(plan)
    int8 = plan_subjects(plan, "int8")
    assert [s.key for s in int8 if s.subject == "op"] == \
        [s.spec.with_(dtype="int8").key() for s in fp32 if s.subject == "op"]
    (net,) = [s for s in int8 if s.subject == "network"]
    assert net.key == f"{[s for s in fp32 if s.subject == 'network'][0].key}@int8"
    assert net.graph().dtype == "int8" and {k.dtype for k in net.kernels} == {"int8"}


def test_space_networks_in_a_precision_and_back_from_their_keys() -> None:
    nets = resolve_networks("nasbench-macro:3", seed=2, precision="float16")
    assert all(n.key.endswith("@float16") for n in nets)
    again = network_from_key(nets[0].key)
    assert again is not None and again.kernels == nets[0].kernels
    assert again.graph().dtype == "float16"
    assert split_precision_key(nets[0].key) == (nets[0].key[:-len("@float16")], "float16")
    assert split_precision_key("nasbench-macro:0123") == ("nasbench-macro:0123", "float32")
    assert precision_key("resnet:r18", "float32") == "resnet:r18"
    # excluding a network in one precision leaves it drawable in another
    fp32 = resolve_networks("nasbench-macro:3", seed=2)
    assert [n.key for n in fp32] == [split_precision_key(n.key)[0] for n in nets]
    left = resolve_networks("nasbench-macro:3", seed=2, precision="float16",
                            exclude={n.key for n in fp32})
    assert [n.key for n in left] == [n.key for n in nets]


def test_family_networks_are_the_torch_export_quantized() -> None:
    pytest.importorskip("torch")
    (net,) = resolve_networks("resnet:1", seed=5, with_kernels=True, dynamo=False,
                              precision="int8")
    model = net.model()
    ops = Counter(n.op_type for n in onnx.load_from_string(model).graph.node)
    assert ops["QuantizeLinear"] > 10 and ops["Conv"] > 5
    assert net.key.endswith("@int8") and net.kernels is not None
    assert list(net.kernels) == onnx_to_kernels(model)
    assert {k.dtype for k in net.kernels} == {"int8"}
    assert net.graph().dtype == "int8"  # what a runtime that does not run ONNX converts
    (fp32,) = resolve_networks("resnet:1", seed=5, with_kernels=True, dynamo=False)
    assert Counter(k.with_(dtype="float32").key() for k in net.kernels) == \
        Counter(k.key() for k in fp32.kernels)


def test_fusion_pairs_and_the_split_keep_their_precision() -> None:
    pairs = default_pairs(["conv"], ["relu", "add"], precision="int8")
    assert {p.a.dtype for p in pairs} == {p.b.dtype for p in pairs} == {"int8"}
    assert pairs[0].graph().dtype == "int8"
    conv = OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3, act="hswish", dtype="int8")
    split = apply_attach([conv], DEFAULT_ATTACH - {("conv", "hswish")})
    assert [k.dtype for k in split] == ["int8", "int8"] and split[1].act == "hswish"
    rules = FusionRules(0.5, frozenset({("conv", "relu")}), frozenset({("conv", "relu")}),
                        precision="int8")
    assert FusionRules.from_json(rules.to_json()).precision == "int8"
    old = {k: v for k, v in rules.to_json().items() if k != "precision"}
    assert FusionRules.from_json(old).precision == "float32"  # rules written before


def test_bench_refuses_an_unknown_precision_in_one_line(capsys, tmp_path) -> None:
    code = main(["bench", "ops", "--plan", "quick", "--out", str(tmp_path / "d"),
                 "--precision", "int4"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.splitlines() == [err]
    assert "unknown precision 'int4'" in err and not (tmp_path / "d").exists()


def test_precision_defaults_keep_float32_subjects_unchanged() -> None:
    plan = Plan(name="p", specs=(OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3).key(),))
    (subject,) = plan_subjects(plan)
    assert subject.key.endswith("dtype=float32") and subject.graph().dtype == "float32"
