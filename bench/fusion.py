"""Fusion rules by measurement: which (producer, follower) op pairs a runtime runs as one kernel.

Whether ONNX Runtime fuses Conv+HardSwish, or LiteRT's XNNPACK fuses Add+ReLU6, depends on the
runtime, its version and the device; guessing wrong makes a network's kernels either double-count
a fused activation or miss an unfused one. So the rules are measured: for each pair, time A
alone, B alone and the two-op graph A->B (each minus the per-call overhead measured in the same
batch), and call the pair fused when

    T_A + T_B - T_AB > alpha * min(T_A, T_B)

i.e. chaining them saves most of the cheaper op (alpha = 0.5 by default). Each pair is measured
at a few shapes and decided on the median saving. The rules are data (`FusionRules.to_json`),
stored in the dataset card under "fusion".

The rules become the `attach` set of the kernel split (`bench.kernels.onnx_to_kernels(attach=
...)`), are written into a predictor's manifest, and are applied to kernel lists that did not
come from ONNX (search-space chains), so every network is split the way the runtime executes
it. Pairs the rules did not test keep their default (`DEFAULT_ATTACH`); BatchNorm folding is not
a runtime choice (exporters fold it) and always stays. A measured "add" follower (a conv with a
residual input) is kept as evidence but not used for splitting: no latbench kernel kind holds a
conv with a second input, so the add stays a kernel of its own.

Rules are measured per precision (`default_pairs(precision=...)`, `bench fusion --precision`):
which activation a runtime folds into a kernel differs between float and int8. ONNX Runtime's
int8 kernels take ReLU and ReLU6 into the requantization of QLinearConv / QGemm / QLinearAdd
(the quantizer drops the node, the kernel split reads the clamp from the output range:
`bench.onnx_quant`), while hard-swish, hard-sigmoid and sigmoid run after them as ops of their
own (float32 ONNX Runtime fuses sigmoid and hard-sigmoid into Conv, not relu into Add). Its
quantizer has no int8 form of ReLU, ReLU6, hard-swish or hard-sigmoid alone, so those int8
pairs lack T_B and stay undecided: the split keeps them with their producer, which is how their
int8 kernels are measured.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latbench.bench.campaign import CampaignConfig, ProgressSink, Subject, measure_into_dataset
from latbench.bench.export.graph import GraphBuilder, LayerGraph, emit_spec
from latbench.bench.kernels import DEFAULT_ATTACH
from latbench.bench.ops import ACTIVATIONS, ALL_ACTIVATIONS, OpSpec
from latbench.bench.stats import DEFAULT_STATISTIC
from latbench.bench.store import LatencyDataset
from latbench.device_agents import Device
from latbench.errors import ConfigError, DatasetError, PredictorError

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.5
RESOLUTION_MS = 0.002  # below this a kernel time after the call overhead is noise
FOLLOWER_ACTS = tuple(a for a in ACTIVATIONS if a != "none")
# Producers measured by default; "tlinear" (a transformer MLP's first layer and the activation
# after it) is measured when asked for by name (`default_pairs(["tlinear"])`, `bench fusion
# --producers tlinear`).
PRODUCERS = ("conv", "dwconv", "linear", "add")
# Followers measured after each producer unless others are asked for.
DEFAULT_FOLLOWERS: dict[str, tuple[str, ...]] = {
    **{producer: (*FOLLOWER_ACTS, "add") for producer in PRODUCERS},
    "tlinear": ("gelu", "gelu_tanh", "swish", "relu"),
}
FAMILY = "fusion"


@dataclass(frozen=True)
class FusionPair:
    """Producer kernel `a` (its activation "none") followed by `b`: an "act" kernel, or an
    "add" of a's output with a second input (a residual)."""

    a: OpSpec
    b: OpSpec

    def __post_init__(self) -> None:
        if self.a.act != "none":
            raise ConfigError(f"fusion producer {self.a.key()} must have no activation")
        if self.b.kind not in ("act", "add"):
            raise ConfigError(f"fusion follower must be an act or add kernel, got {self.b.key()}")
        if self.b.kind == "add" and self.b.act != "none":
            raise ConfigError(f"fusion follower add must have no activation: {self.b.key()}")

    @property
    def rule(self) -> tuple[str, str]:
        """(producer kind, follower): the follower is an activation name or "add"."""
        return self.a.kind, self.b.act if self.b.kind == "act" else "add"

    @property
    def key(self) -> str:
        return f"{FAMILY}:{self.a.key()}|{self.b.key()}"

    def graph(self, seed: int = 0) -> LayerGraph:
        """The two-op model A->B (for an add follower, a's output plus a second input)."""
        builder = GraphBuilder(np.random.default_rng(seed))
        if self.a.kind == "add":
            x = builder.add(builder.input(self.a.input_shape), builder.input(self.a.input_shape))
        else:
            x = emit_spec(builder, self.a, builder.input(self.a.input_shape))
        if self.b.kind == "act":
            y = builder.act(x, self.b.act)
        else:
            y = builder.add(x, builder.input(builder.shapes[x]))
        return builder.finish(y, self.a.dtype)


def follower_dims(a: OpSpec) -> dict[str, int]:
    """batch, h, w, cin of the tensor a producer kernel writes, as an act or add kernel reads
    it (a token tensor [N, T, C] is h = T, w = 1, as the kernel split reads it)."""
    if a.kind == "linear":
        h, w = 1, 1
    elif a.kind == "tlinear":
        h, w = a.tokens, 1
    else:
        h, w = a.out_h, a.out_w
    return {"batch": a.batch, "h": h, "w": w, "cin": a.out_c}


def _follower(a: OpSpec, follower: str) -> OpSpec:
    if follower == "add":
        return OpSpec("add", **follower_dims(a), dtype=a.dtype)
    return OpSpec("act", **follower_dims(a), act=follower, dtype=a.dtype)


# Producer shapes each pair is measured at: small, medium and large maps, so a rule does not
# hinge on one shape where the kernel is overhead-bound.
_SHAPES: dict[str, tuple[dict[str, int], ...]] = {
    "conv": ({"h": 56, "w": 56, "cin": 16, "cout": 16, "kernel": 1},
             {"h": 28, "w": 28, "cin": 32, "cout": 32, "kernel": 3},
             {"h": 14, "w": 14, "cin": 96, "cout": 96, "kernel": 1}),
    "dwconv": ({"h": 56, "w": 56, "cin": 32, "kernel": 3},
               {"h": 28, "w": 28, "cin": 96, "kernel": 3},
               {"h": 14, "w": 14, "cin": 192, "kernel": 5}),
    "linear": ({"cin": 256, "cout": 256}, {"cin": 1024, "cout": 512},
               {"cin": 1280, "cout": 1000}),
    "add": ({"h": 56, "w": 56, "cin": 24}, {"h": 28, "w": 28, "cin": 64},
            {"h": 14, "w": 14, "cin": 160}),
    # a ViT-Tiny MLP at 196 tokens, a ViT-Small one at 49, a MobileViT one at 256
    "tlinear": ({"tokens": 197, "cin": 192, "cout": 768},
                {"tokens": 50, "cin": 384, "cout": 1536},
                {"tokens": 256, "cin": 96, "cout": 192}),
}


def default_pairs(producers: Sequence[str] = PRODUCERS,
                  followers: Sequence[str] | None = None,
                  precision: str = "float32") -> list[FusionPair]:
    """Every producer x follower pair at the default shapes, computing in `precision` (an
    OpSpec dtype); followers default to each producer's DEFAULT_FOLLOWERS (conv/dwconv + add
    included; linear + add, add + add and tlinear + add are not kernels anyone fuses and are
    skipped)."""
    pairs = []
    for producer in producers:
        if producer not in _SHAPES:
            raise ConfigError(f"no fusion shapes for producer {producer!r}; known: "
                              f"{', '.join(_SHAPES)}")
        for follower in DEFAULT_FOLLOWERS[producer] if followers is None else followers:
            if follower == "add" and producer in ("linear", "add", "tlinear"):
                continue
            if follower != "add" and (follower == "none" or follower not in ALL_ACTIVATIONS):
                raise ConfigError(f"unknown fusion follower {follower!r}")
            for shape in _SHAPES[producer]:
                a = OpSpec(producer, **shape, dtype=precision)
                pairs.append(FusionPair(a, _follower(a, follower)))
    return pairs


def pair_subjects(pairs: Sequence[FusionPair], seed: int = 0) -> list[Subject]:
    """What to measure: every distinct A and B as an op, and every A->B as a network."""
    subjects: dict[str, Subject] = {}
    for pair in pairs:
        for spec in (pair.a, pair.b):
            subjects.setdefault(spec.key(), Subject.op(spec, seed))
        subjects.setdefault(pair.key, Subject(pair.key, "network", FAMILY,
                                              graph=lambda p=pair: p.graph(seed)))
    return list(subjects.values())


@dataclass(frozen=True)
class PairEvidence:
    producer: str
    follower: str
    a: str
    b: str
    t_a_ms: float
    t_b_ms: float
    t_ab_ms: float

    @property
    def saving(self) -> float:
        """(T_A + T_B - T_AB) / min(T_A, T_B): 1 = B is free after A, 0 = no saving."""
        return (self.t_a_ms + self.t_b_ms - self.t_ab_ms) / min(self.t_a_ms, self.t_b_ms)


@dataclass
class FusionRules:
    """Measured rules: the fused (producer, follower) pairs, and the evidence behind them."""

    alpha: float
    fused: frozenset[tuple[str, str]]
    tested: frozenset[tuple[str, str]]
    evidence: list[PairEvidence] = field(default_factory=list)
    statistic: str = DEFAULT_STATISTIC
    device: str = ""
    runtime: str = ""
    settings: str = ""
    precision: str = "float32"

    def savings(self) -> dict[tuple[str, str], float]:
        """Median saving per tested pair (what the decision used)."""
        by_rule: dict[tuple[str, str], list[float]] = {}
        for e in self.evidence:
            by_rule.setdefault((e.producer, e.follower), []).append(e.saving)
        return {rule: statistics.median(v) for rule, v in sorted(by_rule.items())}

    def to_json(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha, "statistic": self.statistic, "device": self.device,
            "runtime": self.runtime, "settings": self.settings, "precision": self.precision,
            "fused": sorted([list(r) for r in self.fused]),
            "tested": sorted([list(r) for r in self.tested]),
            "savings": [[p, f, round(s, 4)] for (p, f), s in self.savings().items()],
            "evidence": [{"producer": e.producer, "follower": e.follower, "a": e.a, "b": e.b,
                          "t_a_ms": e.t_a_ms, "t_b_ms": e.t_b_ms, "t_ab_ms": e.t_ab_ms}
                         for e in self.evidence],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FusionRules:
        try:
            return cls(
                alpha=float(raw["alpha"]),
                fused=frozenset((str(p), str(f)) for p, f in raw["fused"]),
                tested=frozenset((str(p), str(f)) for p, f in raw["tested"]),
                evidence=[PairEvidence(e["producer"], e["follower"], e["a"], e["b"],
                                       float(e["t_a_ms"]), float(e["t_b_ms"]),
                                       float(e["t_ab_ms"])) for e in raw.get("evidence", [])],
                statistic=str(raw.get("statistic", DEFAULT_STATISTIC)),
                device=str(raw.get("device", "")), runtime=str(raw.get("runtime", "")),
                settings=str(raw.get("settings", "")),
                precision=str(raw.get("precision", "float32")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"fusion rules are malformed: {exc}") from exc


def decide(pairs: Sequence[FusionPair], kernel_ms: Mapping[str, float],
           alpha: float = DEFAULT_ALPHA, resolution_ms: float = RESOLUTION_MS) -> FusionRules:
    """Rules from kernel times (subject key -> ms after the per-call overhead).

    A pair is fused when its median saving over the measured shapes exceeds `alpha`. A shape
    where the cheaper op takes less than `resolution_ms` says nothing (its saving is timing
    noise divided by almost zero - e.g. an activation on a linear layer's 1000 outputs) and is
    dropped; a pair left without evidence, or with a missing measurement, is not in `tested`
    and the kernel split keeps its default for it (it hardly matters for latency anyway).
    """
    if not 0 < alpha < 2:
        raise ConfigError(f"fusion alpha must be in (0, 2), got {alpha}")
    evidence = []
    for pair in pairs:
        times = [kernel_ms.get(k) for k in (pair.a.key(), pair.b.key(), pair.key)]
        if any(t is None for t in times):
            log.warning("fusion pair %s lacks a measurement; skipped", pair.key)
            continue
        t_a, t_b, t_ab = (float(t) for t in times)  # type: ignore[arg-type]
        if min(t_a, t_b) < resolution_ms:
            log.info("fusion pair %s: cheaper op below %g ms; not evidence", pair.key,
                     resolution_ms)
            continue
        evidence.append(PairEvidence(*pair.rule, pair.a.key(), pair.b.key(), t_a, t_b, t_ab))
    rules = FusionRules(alpha, frozenset(), frozenset(), evidence)
    savings = rules.savings()
    rules.tested = frozenset(savings)
    rules.fused = frozenset(rule for rule, s in savings.items() if s > alpha)
    return rules


def detect_fusion(pairs: Sequence[FusionPair],
                  measure: Callable[[Sequence[Subject]], Mapping[str, float]],
                  alpha: float = DEFAULT_ALPHA) -> FusionRules:
    """Measure every pair's subjects with `measure` (subjects -> key -> kernel ms) and decide."""
    return decide(pairs, measure(pair_subjects(pairs)), alpha)


def kernel_times(records: Any, statistic: str = DEFAULT_STATISTIC) -> dict[str, float]:
    """Subject key -> statistic minus the per-call overhead of its batch, from dataset records."""
    ok = records[records["status"] == "ok"]
    overhead = ok["overhead_ms"].astype(float).fillna(0.0)
    values = (ok[statistic].astype(float) - overhead).clip(lower=1e-6)
    return dict(zip(ok["key"], values, strict=True))


def measure_fusion(device: Device, runtime: str, out: Path, config: CampaignConfig | None = None,
                   alpha: float = DEFAULT_ALPHA, statistic: str = DEFAULT_STATISTIC,
                   pairs: Sequence[FusionPair] | None = None,
                   progress: ProgressSink | None = None) -> FusionRules:
    """Measure the pairs on `device` into the dataset at `out` (created or resumed; it may be
    the operator dataset itself) and store the rules in its card under "fusion"."""
    config = config or CampaignConfig()
    pairs = list(pairs or default_pairs())
    subjects = pair_subjects(pairs)
    summary = measure_into_dataset(subjects, device, runtime, Path(out), config,
                                   card={}, progress=progress)
    if summary.failed:
        log.warning("%d fusion measurements failed on %s/%s", summary.failed, device.name,
                    runtime)
    dataset = LatencyDataset.open(out)
    records = dataset.records()
    settings = config.settings.key(runtime)
    records = records[(records["device"] == device.name) & (records["runtime"] == runtime)
                      & (records["settings"] == settings)]
    if records.empty:
        raise DatasetError(f"no fusion measurements of {device.name}/{runtime} in {out}")
    rules = decide(pairs, kernel_times(records, statistic), alpha)
    rules.statistic, rules.device, rules.runtime, rules.settings = (statistic, device.name,
                                                                     runtime, settings)
    rules.precision = pairs[0].a.dtype
    dataset.update_card(fusion=rules.to_json())
    return rules


# --- rules -> the kernel split ------------------------------------------------------------
Attach = frozenset[tuple[str, str]]


def attach_from_rules(rules: FusionRules, base: Collection[tuple[str, str]] = DEFAULT_ATTACH
                      ) -> Attach:
    """The split's attach set: measured pairs decide, untested pairs keep `base`."""
    acts = set(ALL_ACTIVATIONS) - {"none"}
    kept = {pair for pair in base if pair not in rules.tested}
    fused = {pair for pair in rules.fused if pair[1] in acts}
    return frozenset(kept | fused)


def rules_from_card(card: dict[str, Any]) -> FusionRules | None:
    raw = card.get("fusion")
    return None if not raw else FusionRules.from_json(raw)


def attach_to_json(attach: Iterable[tuple[str, str]]) -> list[list[str]]:
    return sorted([list(pair) for pair in attach])


def attach_from_json(raw: Any) -> Attach:
    try:
        return frozenset((str(p), str(f)) for p, f in raw)
    except (TypeError, ValueError) as exc:
        raise PredictorError(f"fusion attach list is malformed: {raw!r}") from exc


def apply_attach(specs: Sequence[OpSpec], attach: Collection[tuple[str, str]]) -> list[OpSpec]:
    """Split kernels whose activation the runtime does not fuse: `conv act=relu` becomes
    `conv act=none` + an "act" kernel when (conv, relu) is not in `attach`. Fused blocks
    (mbconv, se) are priced whole and pass through."""
    out: list[OpSpec] = []
    for spec in specs:
        if spec.kind in ("conv", "dwconv", "linear", "add", "tlinear", "convt") \
                and spec.act != "none" and (spec.kind, spec.act) not in attach:
            out.append(spec.with_(act="none"))
            out.append(OpSpec("act", **follower_dims(spec), act=spec.act, alpha=spec.alpha,
                              dtype=spec.dtype))
        else:
            out.append(spec)
    return out
