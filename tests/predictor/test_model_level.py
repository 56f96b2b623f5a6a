"""Whole-network prediction: the composition fit recovers known per-kind scales, the safety
margin from its summary, and ONNX prediction agreeing with the kernel-level sum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.ops import OpSpec, decompose
from latbench.bench.spaces import get_space
from latbench.errors import PredictorError
from latbench.predictor.features import kernel_cost
from latbench.predictor.latency_predictor import LatencyPredictor, fit_composition
from latbench.predictor.model_level import (
    COMPOSITION_TERMS,
    LAYOUT_TERMS,
    POOL_SWITCHES,
    SCALE_BOUNDS,
    Composition,
    pool_switches,
    runtime_terms,
    solve_composition,
)
from latbench.predictor.models import XGBoostKernelPredictor

OVERHEAD_MS = 0.04


def synthetic_ms(spec: OpSpec) -> float:
    return 0.01 + 3e-9 * kernel_cost(spec).flops


@pytest.fixture(scope="module")
def macro():
    return get_space("nasbench-macro")


@pytest.fixture(scope="module")
def predictor(macro) -> XGBoostKernelPredictor:
    """Fitted on the space's fused kernels and their primitives (what ONNX graphs show)."""
    specs = macro.layer_specs()
    specs = list({s.key(): s for s in [*specs, *(p for s in specs for p in decompose(s))]}
                 .values())
    model = XGBoostKernelPredictor(n_estimators=40, max_depth=3, n_jobs=1).fit(
        specs, [synthetic_ms(s) for s in specs])
    model.train_specs = specs  # test-only attribute: the kernels bags are drawn from
    return model


def composed(predictor, calibration, **options) -> LatencyPredictor:
    """The network-level predictor with the composition fitted on `calibration` (networks
    paying OVERHEAD_MS once)."""
    composition = solve_composition(predictor, calibration, OVERHEAD_MS, **options)
    return LatencyPredictor.from_kernels(predictor, call_overhead_ms=OVERHEAD_MS,
                                         composition=composition)


def predict_network(predictor, kernels: list[OpSpec]):
    """The plain sum (no composition) plus the call overhead."""
    return LatencyPredictor.from_kernels(predictor, call_overhead_ms=OVERHEAD_MS).predict(kernels)


def networks(macro, n: int, seed: int) -> list[list[OpSpec]]:
    rng = np.random.default_rng(seed)
    return [macro.ops(macro.sample(rng)) for _ in range(n)]


def true_latency(predictor, kernels: list[OpSpec], scale: dict[str, float]) -> float:
    raw = predictor.predict(kernels)
    return OVERHEAD_MS + float(sum(ms * scale.get(s.kind, 1.0)
                                   for s, ms in zip(kernels, raw, strict=True)))


def bags(predictor, n: int, seed: int) -> list[list[OpSpec]]:
    """Networks as random bags of conv, dwconv and mbconv kernels (plus a pooled head), so that
    every kind's share of the latency varies a lot from network to network."""
    rng = np.random.default_rng(seed)
    pool = [s for s in predictor.train_specs if s.kind in ("conv", "dwconv", "mbconv")]
    head = [s for s in predictor.train_specs if s.kind in ("pool", "linear")]
    out = []
    for _ in range(n):
        picks = rng.choice(len(pool), size=int(rng.integers(3, 12)), replace=True)
        out.append([pool[i] for i in picks] + head)
    return out


def test_layout_terms_only_for_a_runtime_with_a_blocked_layout(predictor) -> None:
    """LiteRT computes in NHWC throughout: a composition fitted on its networks has no term for
    conversions into a blocked layout it never makes, whatever the networks' residuals say."""
    every_but_pools = tuple(t for t in COMPOSITION_TERMS if t != POOL_SWITCHES)
    assert runtime_terms(COMPOSITION_TERMS, "onnxruntime") == every_but_pools
    assert runtime_terms(COMPOSITION_TERMS, "onnxruntime-perf-test") == every_but_pools
    for runtime in ("litert", "tflite-benchmark-model", "onnxruntime-cuda", "torch-cuda"):
        assert runtime_terms(COMPOSITION_TERMS, runtime) == (
            "per_kernel", "weight_mb", "streamed_weight_mb", "shared_s8_conv_gflops",
            "quantize_io_mb")
    # a runtime latbench does not know, or none: every term, as before
    assert runtime_terms(COMPOSITION_TERMS, "my-npu") == COMPOSITION_TERMS
    assert runtime_terms(COMPOSITION_TERMS, None) == COMPOSITION_TERMS
    # networks whose time grows with their layout bytes: ONNX Runtime's fit takes the term
    calibration = []
    for i, kernels in enumerate(bags(predictor, 30, seed=3)):
        layout = sum(kernel_cost(s).input_bytes + kernel_cost(s).output_bytes for s in kernels
                     if s.kind in ("conv", "dwconv", "pool")) / 1e6
        calibration.append((f"n{i}", kernels,
                            true_latency(predictor, kernels, {}) + 0.05 * layout))
    ort = fit_composition(predictor, calibration, OVERHEAD_MS, runtime="onnxruntime")
    assert ort.terms["layout_bytes"] == pytest.approx(0.05, rel=0.2)
    assert ort.summary["terms_not_for_runtime"] == [POOL_SWITCHES]  # one thread pool
    litert = fit_composition(predictor, calibration, OVERHEAD_MS, runtime="litert")
    assert {"per_kernel", "weight_mb"} <= set(litert.terms)
    assert not set(litert.terms) & LAYOUT_TERMS
    assert sorted(litert.summary["terms_not_for_runtime"]) == sorted(LAYOUT_TERMS
                                                                     | {POOL_SWITCHES})


def test_pool_switches_count_each_change_of_thread_pool_in_execution_order() -> None:
    """GEMMs and depthwise convolutions run in two pools on LiteRT's built-in kernels: a
    kernel switches where its pool differs from the one before it; a kernel without a pool
    (an Add) breaks the chain; a fused mbconv block switches twice inside."""
    conv = OpSpec("conv", h=16, w=16, cin=32, cout=32, kernel=1)
    dw = OpSpec("dwconv", h=16, w=16, cin=32, kernel=3, pad=1)
    add = OpSpec("add", h=16, w=16, cin=32)
    block = OpSpec("mbconv", h=16, w=16, cin=32, cout=32, kernel=3, pad=1, expand=4)
    assert pool_switches([conv, dw, conv, add, conv, block, dw]).tolist() == \
        [0, 1, 1, 0, 0, 2, 1]
    assert pool_switches([conv, conv, add, add]).tolist() == [0, 0, 0, 0]
    assert pool_switches([]).tolist() == []


def test_pool_switch_term_only_on_built_in_litert_kernels_at_several_threads() -> None:
    """A switch costs only where a pool that just finished spins on a core the other pool
    needs: TFLite's built-in kernels at 2+ threads, not XNNPACK's one pool, not 1 thread, not
    ONNX Runtime."""
    assert POOL_SWITCHES in runtime_terms(COMPOSITION_TERMS, "litert", delegate="builtin",
                                          threads=2)
    assert POOL_SWITCHES in runtime_terms(COMPOSITION_TERMS, "tflite-benchmark-model",
                                          delegate="builtin", threads=4)
    for runtime, delegate, threads in [("litert", "builtin", 1), ("litert", "xnnpack", 2),
                                       ("litert", "", 2), ("onnxruntime", "", 2)]:
        assert POOL_SWITCHES not in runtime_terms(COMPOSITION_TERMS, runtime,
                                                  delegate=delegate, threads=threads)


def test_fit_composition_recovers_the_cost_of_a_pool_switch(predictor) -> None:
    """Networks that pay 0.4 ms per switch between the two pools (MobileNetV2s on LiteRT's
    built-in int8 kernels at 2 threads ran 2.2-7x their kernels alone): the fit at 2 threads
    finds the cost and prices networks it never saw; at 1 thread the term is not offered."""
    def measured(kernels: list[OpSpec]) -> float:
        return true_latency(predictor, kernels, {}) + 0.4 * float(pool_switches(kernels).sum())

    calibration = [(f"n{i}", k, measured(k)) for i, k in enumerate(bags(predictor, 30, seed=4))]
    fitted = fit_composition(predictor, calibration, OVERHEAD_MS, runtime="litert",
                             delegate="builtin", threads=2)
    assert fitted.terms[POOL_SWITCHES] == pytest.approx(0.4, rel=0.1)
    model = LatencyPredictor.from_kernels(predictor, call_overhead_ms=OVERHEAD_MS,
                                          composition=fitted)
    for kernels in bags(predictor, 10, seed=5):
        switches = pool_switches(kernels).sum()
        assert switches > 0
        assert model.predict(kernels).predicted_ms == pytest.approx(measured(kernels),
                                                                    rel=0.05)
    # a lookup table's layers, or kernels each on their own, are no neighbours of each other
    layers = bags(predictor, 3, seed=6)
    each = model.group_ms(layers)
    assert each.tolist() == pytest.approx([model.kernel_ms(k).sum() for k in layers])
    flat = model.kernel_ms([s for k in layers for s in k]).sum()
    assert flat - each.sum() == pytest.approx(0.4 * (
        pool_switches([s for k in layers for s in k]).sum()
        - sum(pool_switches(k).sum() for k in layers)), rel=0.1, abs=1e-6)
    one_thread = fit_composition(predictor, calibration, OVERHEAD_MS, runtime="litert",
                                 delegate="builtin", threads=1)
    assert POOL_SWITCHES not in one_thread.terms
    assert POOL_SWITCHES in one_thread.summary["terms_not_for_runtime"]


@pytest.mark.parametrize("kind", ["mbconv", "conv", "dwconv"])
def test_fit_composition_recovers_a_kind_scale(predictor, kind: str) -> None:
    truth = {kind: 1.1}
    calibration = [(k, true_latency(predictor, k, truth)) for k in bags(predictor, 80, seed=1)]
    # a weak prior: the least-squares fit itself must find the scales
    network = composed(predictor, calibration, ridge=1e-4)
    summary, found = network.composition_.summary, network.composition_.kind_scale
    assert set(found) == {"conv", "dwconv", "add", "mbconv", "pool", "linear"}
    assert found[kind] == pytest.approx(1.1, abs=0.005)
    for other in ("conv", "dwconv", "mbconv"):
        if other != kind:
            assert found[other] == pytest.approx(1.0, abs=0.005), other
    # a kind no calibration network contains stays at exactly 1 (the ridge prior)
    assert found["add"] == 1.0
    assert summary["kind_scale"] == found and summary["networks"] == 80
    assert summary["rmspe_pct_composed"] < 0.5 < summary["rmspe_pct_sum"]
    assert summary["underprediction_p90_pct"] >= 0
    # leave-one-out: an exact composition predicts left-out networks exactly too
    assert summary["rmspe_pct_loo"] < 0.5
    assert 0 <= summary["underprediction_p95_loo_pct"] < 0.5
    # the fitted composition generalises to networks it was not fitted on
    for kernels in bags(predictor, 10, seed=2):
        got = network.predict(kernels).predicted_ms
        assert got == pytest.approx(true_latency(predictor, kernels, truth), rel=0.005)
    # the default prior pulls towards 1 but never past the truth
    assert 1.0 < composed(predictor, calibration).composition_.kind_scale[kind] <= 1.1


def test_robust_fit_shrugs_off_networks_measured_in_a_slow_phase(predictor) -> None:
    """Calibration networks with a little measurement noise, three of 40 measured 30% high (a
    slow phase the reference probe missed): the least-squares scale follows them, the robust
    (Huber) one stays near the truth, and with the outliers down-weighted it predicts new
    networks closer."""
    from latbench.predictor.model_level import huber_weights

    truth = {"conv": 1.1}
    rng = np.random.default_rng(5)
    calibration = [(k, true_latency(predictor, k, truth) * (1 + rng.normal(0, 0.01)))
                   for k in bags(predictor, 40, seed=3)]
    for i in (0, 7, 19):
        calibration[i] = (calibration[i][0], calibration[i][1] * 1.3)
    plain = composed(predictor, calibration, ridge=1e-4, robust=False)
    robust = composed(predictor, calibration, ridge=1e-4)
    plain_conv = plain.composition_.kind_scale["conv"]
    robust_conv = robust.composition_.kind_scale["conv"]
    assert abs(robust_conv - 1.1) < 0.02 < abs(plain_conv - 1.1)
    fresh = bags(predictor, 20, seed=4)

    def error(network) -> float:
        return float(np.mean([abs(network.predict(k).predicted_ms
                                  / true_latency(predictor, k, truth) - 1) for k in fresh]))

    assert error(robust) < error(plain)
    weights = robust.composition_.summary["weights"]
    assert len(weights) == 40 and all(weights[i] < 0.5 for i in (0, 7, 19))
    assert sorted(weights)[3] > 0.5 and plain.composition_.summary["weights"] == [1.0] * 40
    weights = huber_weights(np.array([0.01, -0.02, 0.0, 0.015, -0.01, 0.3]))
    assert weights[-1] < 0.2 and np.all(weights[:-1] == 1.0)
    # too few networks to tell an outlier: the plain fit
    few = calibration[:5]
    assert composed(predictor, few).composition_.kind_scale == composed(
        predictor, few, robust=False).composition_.kind_scale


def test_fit_composition_on_space_networks(macro, predictor) -> None:
    """NAS-Bench-Macro networks are mostly mbconv time: its scale is found, the rest stay ~1."""
    truth = {"mbconv": 1.1}
    calibration = [(k, true_latency(predictor, k, truth)) for k in networks(macro, 60, seed=1)]
    scales = composed(predictor, calibration).composition_.kind_scale
    assert scales["mbconv"] == pytest.approx(1.1, abs=0.015)
    for other in ("conv", "pool", "linear"):
        assert scales[other] == pytest.approx(1.0, abs=0.03), other
    assert scales["dwconv"] == scales["add"] == 1.0


def test_composition_scales_are_bounded(macro, predictor) -> None:
    calibration = [(k, true_latency(predictor, k, {"mbconv": 5.0, "conv": 5.0}))
                   for k in networks(macro, 30, seed=3)]
    fitted = composed(predictor, calibration)
    scales = fitted.composition_.kind_scale
    assert max(scales.values()) <= SCALE_BOUNDS[1]
    assert scales["mbconv"] == SCALE_BOUNDS[1]
    # what `predictor fit` warns of: the kinds left at the bound, and only those
    at_bound = fitted.composition_.scales_at_bound()
    assert "mbconv" in at_bound and all(s in SCALE_BOUNDS for s in at_bound.values())
    assert set(at_bound) == {k for k, s in scales.items() if s in SCALE_BOUNDS}
    from latbench.cli.predictor import _at_bound_text

    assert _at_bound_text(at_bound).startswith("warning: ") and "mbconv x2.00" in \
        _at_bound_text(at_bound)


def test_no_scale_at_bound_when_networks_compose(macro, predictor) -> None:
    calibration = [(k, true_latency(predictor, k, {"mbconv": 1.3})) for k in networks(macro, 30, 5)]
    assert composed(predictor, calibration).composition_.scales_at_bound() == {}


def test_composition_refusals(macro, predictor) -> None:
    kernels = networks(macro, 1, seed=4)[0]
    with pytest.raises(PredictorError, match="no calibration networks"):
        composed(predictor, [])
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(PredictorError, match="finite and positive"):
            composed(predictor, [(kernels, 1.0), (kernels, bad)])


def test_predict_network_parts(macro, predictor) -> None:
    kernels = networks(macro, 1, seed=5)[0]
    plain = predict_network(predictor, kernels)
    assert plain.overhead_ms == OVERHEAD_MS
    assert plain.predicted_ms == pytest.approx(OVERHEAD_MS + predictor.predict(kernels).sum())
    assert sum(plain.by_kind().values()) == pytest.approx(plain.predicted_ms - OVERHEAD_MS)
    as_json = plain.to_json()
    assert as_json["n_kernels"] == len(kernels)
    assert [k["key"] for k in as_json["kernels"]] == [s.key() for s in kernels]
    scaled_predictor = LatencyPredictor.from_kernels(predictor, call_overhead_ms=OVERHEAD_MS,
                                                     composition=Composition({"mbconv": 2.0}))
    scaled = scaled_predictor.predict(kernels)
    assert scaled.by_kind()["mbconv"] == pytest.approx(2 * plain.by_kind()["mbconv"])
    assert scaled.by_kind()["conv"] == pytest.approx(plain.by_kind()["conv"])
    np.testing.assert_allclose(scaled_predictor.kernel_ms(kernels),
                               [ms for _, ms in scaled.kernels])
    assert scaled_predictor.kernel_ms([]).shape == (0,)
    empty = predict_network(predictor, [])
    assert empty.predicted_ms == OVERHEAD_MS and empty.kernels == ()


def test_safety_margin() -> None:
    assert Composition(summary={"underprediction_p90_pct": 4.5}).safety_margin() == \
        pytest.approx(0.045)
    # the leave-one-out figure, when present, is what a search must cover
    assert Composition(summary={"underprediction_p90_pct": 4.5,
                                "underprediction_p95_loo_pct": 6.0}).safety_margin() == 0.06
    assert Composition(summary={"underprediction_p90_pct": 0.0}).safety_margin() == 0.0
    assert Composition(summary={"networks": 0}).safety_margin() == 0.03
    assert Composition().safety_margin() == 0.03
    assert Composition().safety_margin(default=0.07) == 0.07


@pytest.mark.parametrize("code", ["12012012", "00000000", "22222222"])
def test_predict_onnx_equals_predict_network(tmp_path: Path, macro, predictor,
                                             code: str) -> None:
    specs = macro.ops(macro.decode(code))
    onnx_bytes = to_onnx(chain_graph(specs))
    primitives = [p for s in specs for p in decompose(s)]
    scaled = LatencyPredictor.from_kernels(
        predictor, call_overhead_ms=OVERHEAD_MS, composition=Composition({"conv": 1.05,
                                                                          "dwconv": 1.1}))
    from_onnx = scaled.predict(onnx_bytes)
    assert [s.key() for s, _ in from_onnx.kernels] == [p.key() for p in primitives]
    expected = scaled.predict(primitives)
    assert from_onnx.predicted_ms == pytest.approx(expected.predicted_ms, rel=1e-12)
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_bytes)
    assert scaled.predict(path).predicted_ms == from_onnx.predicted_ms
    assert scaled.predict(str(path)).predicted_ms == from_onnx.predicted_ms
