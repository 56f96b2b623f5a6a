"""Fusion rules by measurement: detection on a synthetic timing function with known fused pairs,
the rules as data (card -> manifest -> kernel split), and one real measurement on the local CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latbench.bench.campaign import CampaignConfig, Subject
from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.fusion import (
    FusionPair,
    FusionRules,
    apply_attach,
    attach_from_rules,
    decide,
    default_pairs,
    detect_fusion,
    measure_fusion,
    rules_from_card,
)
from latbench.bench.kernels import DEFAULT_ATTACH, onnx_to_kernels
from latbench.bench.ops import OpSpec
from latbench.bench.runners import RunSettings
from latbench.bench.store import LatencyDataset, LatencyRecord
from latbench.errors import ConfigError
from latbench.predictor.features import kernel_cost
from latbench.predictor.io import read_manifest
from latbench.predictor.latency_predictor import LatencyPredictor

FUSED = {("conv", "relu"), ("conv", "relu6"), ("dwconv", "relu"), ("add", "relu"),
         ("conv", "add")}
PARTIAL = {("linear", "sigmoid"): 0.3}  # saves 30% of the cheaper op: fused only if alpha < 0.3


def cost_ms(spec: OpSpec) -> float:
    c = kernel_cost(spec)
    return 0.005 + 1e-9 * c.flops + 2e-9 * (c.input_bytes + c.output_bytes)


def synthetic_measure(fused: set[tuple[str, str]], noise: float = 0.03, seed: int = 0):
    """Times every subject: ops by a cost model, pairs as A + B minus the cheaper op when
    fused (or a share of it for PARTIAL pairs), each with multiplicative noise."""
    rng = np.random.default_rng(seed)

    def measure(subjects: list[Subject]) -> dict[str, float]:
        pairs = {p.key: p for p in default_pairs()}
        out = {}
        for s in subjects:
            jitter = float(np.exp(rng.normal(0, noise)))
            if s.subject == "op":
                out[s.key] = cost_ms(s.spec) * jitter
                continue
            pair = pairs[s.key]
            t_a, t_b = cost_ms(pair.a), cost_ms(pair.b)
            saved = min(t_a, t_b) * (1.0 if pair.rule in fused else PARTIAL.get(pair.rule, 0.0))
            out[s.key] = (t_a + t_b - saved) * jitter
        return out

    return measure


def test_detects_exactly_the_fused_pairs() -> None:
    pairs = default_pairs()
    rules = detect_fusion(pairs, synthetic_measure(FUSED), alpha=0.5)
    assert rules.fused == FUSED
    # Every producer x follower that makes sense was tested (24 act pairs + 2 conv/dwconv+add).
    assert len(rules.tested) == 4 * 6 + 2
    savings = rules.savings()
    assert savings[("conv", "relu")] > 0.8 and abs(savings[("conv", "swish")]) < 0.3


def test_alpha_decides_a_partial_saving() -> None:
    pairs = default_pairs(["linear"], ["sigmoid", "relu"])
    strict = detect_fusion(pairs, synthetic_measure(set(), noise=0.01), alpha=0.5)
    loose = detect_fusion(pairs, synthetic_measure(set(), noise=0.01), alpha=0.15)
    assert ("linear", "sigmoid") not in strict.fused
    assert loose.fused == {("linear", "sigmoid")}
    with pytest.raises(ConfigError, match="alpha"):
        decide(pairs, {}, alpha=0.0)


def test_missing_measurements_leave_the_pair_untested() -> None:
    pairs = default_pairs(["conv"], ["relu", "swish"])
    times = synthetic_measure({("conv", "relu")})(
        [Subject.op(p.a) for p in pairs] + [Subject.op(p.b) for p in pairs]
        + [Subject(p.key, "network", "fusion") for p in pairs if p.rule == ("conv", "relu")])
    rules = decide(pairs, times)
    assert rules.tested == {("conv", "relu")} and rules.fused == {("conv", "relu")}


def test_rules_round_trip_as_json() -> None:
    rules = detect_fusion(default_pairs(), synthetic_measure(FUSED))
    again = FusionRules.from_json(rules.to_json())
    assert again.fused == rules.fused and again.tested == rules.tested
    assert again.savings() == rules.savings()
    with pytest.raises(ConfigError, match="malformed"):
        FusionRules.from_json({"alpha": 0.5})


def test_pair_graph_shapes() -> None:
    conv = OpSpec("conv", h=8, w=8, cin=4, cout=6, kernel=3)
    pair = FusionPair(conv, OpSpec("add", h=8, w=8, cin=6))
    graph = pair.graph()
    assert len(graph.inputs) == 2 and graph.output_shape == (1, 6, 8, 8)
    linear = FusionPair(OpSpec("linear", cin=16, cout=8), OpSpec("act", cin=8, act="hswish"))
    assert linear.graph().output_shape == (1, 8)
    with pytest.raises(ConfigError, match="no activation"):
        FusionPair(conv.with_(act="relu"), OpSpec("act", h=8, w=8, cin=6, act="relu"))


def test_attach_set_follows_the_rules() -> None:
    rules = detect_fusion(default_pairs(), synthetic_measure(FUSED))
    attach = attach_from_rules(rules)
    assert ("conv", "relu") in attach and ("conv", "swish") not in attach
    assert ("conv", "bn") in attach  # folding is not a runtime choice
    assert ("conv", "add") not in attach  # no kernel kind holds a conv with a residual input
    # An untested pair keeps its default.
    only_conv = detect_fusion(default_pairs(["conv"]), synthetic_measure(FUSED))
    assert ("dwconv", "swish") in attach_from_rules(only_conv)
    # The ONNX split and the spec-level split agree.
    specs = [OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3, act="swish"),
             OpSpec("conv", h=8, w=8, cin=8, cout=8, kernel=1, act="relu")]
    onnx_split = onnx_to_kernels(to_onnx(chain_graph(specs)), attach=attach)
    assert [s.key() for s in onnx_split] == [s.key() for s in apply_attach(specs, attach)]
    assert [s.kind for s in onnx_split] == ["conv", "act", "conv"]
    assert onnx_to_kernels(to_onnx(chain_graph(specs)), attach=DEFAULT_ATTACH) == specs


def _synthetic_dataset(path: Path, rules: FusionRules) -> None:
    """Op records for convs (with and without activations) and act kernels, plus the rules."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(60):
        h = int(rng.choice([8, 16]))
        spec = OpSpec("conv", h=h, w=h, cin=int(rng.integers(4, 64)),
                      cout=int(rng.integers(4, 64)), kernel=int(rng.choice([1, 3])),
                      act=["none", "relu", "swish"][i % 3])
        act = OpSpec("act", h=h, w=h, cin=spec.cout, act=["relu", "swish"][i % 2])
        for s in (spec, act):
            records.append(LatencyRecord.for_op(s, device="d", runtime="onnxruntime",
                                                settings="x", min_ms=cost_ms(s) + 0.01,
                                                median_ms=cost_ms(s) + 0.01, overhead_ms=0.01))
    ds = LatencyDataset.create(path, {"run_settings": RunSettings().__dict__})
    ds.append(records)
    ds.update_card(fusion=rules.to_json())


def test_fit_reads_the_rules_from_the_card(tmp_path: Path) -> None:
    rules = detect_fusion(default_pairs(["conv"]), synthetic_measure(FUSED))
    _synthetic_dataset(tmp_path / "data", rules)
    assert rules_from_card(LatencyDataset.open(tmp_path / "data").card).fused == rules.fused
    LatencyPredictor("linear").fit(tmp_path / "data").save(tmp_path / "pred")
    predictor, manifest = LatencyPredictor.load(tmp_path / "pred"), read_manifest(tmp_path / "pred")
    assert manifest["fusion"]["rules"]["fused"] == sorted([list(r) for r in rules.fused])
    assert predictor.attach_ == attach_from_rules(rules)
    net = to_onnx(chain_graph([OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3, act="swish")]))
    prediction = predictor.predict(net)
    assert [s.kind for s, _ in prediction.kernels] == ["conv", "act"]


def test_measure_fusion_on_the_local_cpu(tmp_path: Path) -> None:
    from latbench.device_agents import local_device

    pairs = default_pairs(["conv"], ["hswish"])[:1]
    config = CampaignConfig(settings=RunSettings(warmup=2, runs=5, rounds=2), drift_retries=0)
    rules = measure_fusion(local_device(threads=1), "onnxruntime", tmp_path / "fusion", config,
                           pairs=pairs)
    assert rules.tested == {("conv", "hswish")}
    assert rules.device and rules.runtime == "onnxruntime"
    (evidence,) = rules.evidence
    assert min(evidence.t_a_ms, evidence.t_b_ms, evidence.t_ab_ms) > 0
    card = LatencyDataset.open(tmp_path / "fusion").card
    assert rules_from_card(card).tested == rules.tested
    assert len(LatencyDataset.open(tmp_path / "fusion").records()) == 3


def test_bench_fusion_command(tmp_path: Path, capsys) -> None:
    from latbench.cli import main

    assert main(["bench", "fusion", "--out", str(tmp_path / "f"), "--producers", "dwconv",
                 "--warmup", "1", "--runs", "3", "--rounds", "1", "--drift-tolerance",
                 "10"]) == 0
    out = capsys.readouterr().out
    assert "dwconv" in out and "median saving" in out
    rules = rules_from_card(LatencyDataset.open(tmp_path / "f").card)
    assert rules is not None and {p for p, _ in rules.tested} <= {"dwconv"}
    assert main(["predictor", "fit", "--data", str(tmp_path / "f"), "--out",
                 str(tmp_path / "p"), "--predictor", "linear"]) == 0
    manifest = read_manifest(tmp_path / "p")
    assert manifest["fusion"]["rules"]["tested"] == sorted([list(r) for r in rules.tested])


def test_tiny_kernels_are_not_evidence() -> None:
    pairs = default_pairs(["linear"], ["relu"])[:1]
    times = {pairs[0].a.key(): 0.05, pairs[0].b.key(): 0.0004, pairs[0].key: 0.02}
    rules = decide(pairs, times)
    assert not rules.tested and not rules.evidence
