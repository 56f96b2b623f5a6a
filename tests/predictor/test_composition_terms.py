"""Composition terms: a per-kernel dispatch cost, the layout conversions a kernel timed alone
pays and the cost of cold weights are recovered from networks built with them, persist with the
predictor, and keep a network's estimate a sum over its kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latbench.bench.ops import CONV_SHARED_S8, OpSpec
from latbench.errors import PredictorError
from latbench.predictor.features import kernel_cost
from latbench.predictor.io import read_manifest
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.model_level import (
    MIN_SHARE,
    MIN_TERM_NETWORKS,
    QUANTIZE_FREE_BYTES,
    QUANTIZE_IO,
    SHARED_S8,
    SPILL_BYTES,
    solve_composition,
    term_values,
)
from latbench.predictor.models import get_predictor_class

PER_KERNEL = 0.004
PER_MB = -0.02
OVERHEAD_MS = 0.01


def solve(table, calibration, **options):
    """The composition of networks that pay OVERHEAD_MS once."""
    return solve_composition(table, calibration, OVERHEAD_MS, **options)


def composed(table, calibration, **options) -> LatencyPredictor:
    """The network-level predictor around `table` with the composition fitted on
    `calibration`."""
    return LatencyPredictor.from_kernels(table, call_overhead_ms=OVERHEAD_MS,
                                         composition=solve(table, calibration, **options))


def kernels(rng: np.random.Generator) -> list[OpSpec]:
    out = []
    for _ in range(int(rng.integers(3, 30))):
        h = int(rng.choice([4, 8, 16, 32, 56]))
        c = int(rng.choice([16, 32, 64, 96]))
        kind = rng.choice(["conv", "dwconv", "add"])
        if kind == "conv":
            out.append(OpSpec("conv", h=h, w=h, cin=c, cout=c, kernel=int(rng.choice([1, 3]))))
        elif kind == "dwconv":
            out.append(OpSpec("dwconv", h=h, w=h, cin=c, kernel=3))
        else:
            out.append(OpSpec("add", h=h, w=h, cin=c))
    return out


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    nets = [kernels(rng) for _ in range(80)]
    specs = list({s.key(): s for net in nets for s in net}.values())
    table = get_predictor_class("lut")().fit(
        specs, [0.01 + 0.002 * term_values(s, ["layout_bytes"])[0] * 50 + 1e-4 * s.cin
                for s in specs])

    def truth(net: list[OpSpec]) -> float:
        raw = table.predict(net)
        extra = [PER_KERNEL + PER_MB * term_values(s, ["layout_bytes"])[0] for s in net]
        return 0.01 + float(np.sum(np.maximum(raw + np.array(extra), MIN_SHARE * raw)))

    return table, nets, truth


def test_terms_are_recovered_and_predict_new_networks(setup) -> None:
    table, nets, truth = setup
    predictor = composed(table, [(n, truth(n)) for n in nets[:60]],
                         terms=["per_kernel", "layout_bytes"])
    summary = predictor.composition_.summary
    assert summary["terms"]["per_kernel"] == pytest.approx(PER_KERNEL, rel=0.05)
    assert summary["terms"]["layout_bytes"] == pytest.approx(PER_MB, rel=0.05)
    assert summary["rmspe_pct_composed"] < 0.5 < summary["rmspe_pct_sum"]
    for net in nets[60:]:
        assert predictor.predict(net).predicted_ms == pytest.approx(truth(net), rel=0.01)
        # still a sum over kernels (what a per-layer latency table relies on)
        assert predictor.kernel_ms(net).sum() + 0.01 == pytest.approx(
            predictor.predict(net).predicted_ms)


def test_without_terms_nothing_changes(setup) -> None:
    table, nets, truth = setup
    predictor = composed(table, [(n, truth(n)) for n in nets[:60]])
    assert predictor.composition_.terms == {}
    raw = table.predict(nets[0])
    scale = np.array([predictor.composition_.kind_scale[s.kind] for s in nets[0]])
    np.testing.assert_array_equal(predictor.kernel_ms(nets[0]), raw * scale)


def test_terms_persist(setup, tmp_path: Path) -> None:
    table, nets, truth = setup
    predictor = composed(table, [(n, truth(n)) for n in nets[:60]], terms=["per_kernel"])
    predictor.save(tmp_path / "p")
    loaded, manifest = LatencyPredictor.load(tmp_path / "p"), read_manifest(tmp_path / "p")
    assert manifest["composition_terms"] == predictor.composition_.terms
    assert loaded.predict(nets[70]).predicted_ms == predictor.predict(nets[70]).predicted_ms


def test_unknown_term_is_refused(setup) -> None:
    table, nets, truth = setup
    with pytest.raises(PredictorError, match="unknown composition term 'cache'"):
        solve(table, [(n, truth(n)) for n in nets[:5]], terms=["cache"])


def test_weight_term_prices_cold_weights(setup) -> None:
    """Networks whose kernels pay for their weights in MB are recovered with that cost."""
    table, nets, _ = setup
    per_weight_mb = 0.05
    conv = OpSpec("conv", h=4, w=4, cin=96, cout=96, kernel=3)
    assert term_values(conv, ["weight_mb"]) == [pytest.approx((96 * 96 * 9 + 96) * 4 / 1e6)]
    assert term_values(OpSpec("add", h=4, w=4, cin=96), ["weight_mb"]) == [0.0]

    def truth(net: list[OpSpec]) -> float:
        weights = sum(term_values(s, ["weight_mb"])[0] for s in net)
        return 0.01 + float(np.sum(table.predict(net))) + per_weight_mb * weights

    predictor = composed(table, [(n, truth(n)) for n in nets[:60]], terms=["weight_mb"])
    assert predictor.composition_.summary["terms"]["weight_mb"] == pytest.approx(
        per_weight_mb, rel=0.05)
    for net in nets[60:]:
        assert predictor.predict(net).predicted_ms == pytest.approx(truth(net), rel=0.01)


def test_aligned_conv_term_counts_only_block_aligned_convolutions() -> None:
    """GFLOPs of convolutions whose channels fill whole layout blocks; others get 0."""
    aligned = OpSpec("conv", h=8, w=8, cin=32, cout=16, kernel=3)
    flops = kernel_cost(aligned).flops / 1e9
    assert flops > 0
    assert term_values(aligned, ["aligned_conv_gflops"]) == [pytest.approx(flops)]
    for other in (OpSpec("conv", h=8, w=8, cin=24, cout=16, kernel=3),
                  OpSpec("conv", h=8, w=8, cin=32, cout=40, kernel=1),
                  OpSpec("dwconv", h=8, w=8, cin=32, kernel=3),
                  OpSpec("add", h=8, w=8, cin=32)):
        assert term_values(other, ["aligned_conv_gflops"]) == [0.0]



def mixed_width_nets(rng: np.random.Generator, count: int) -> list[list[OpSpec]]:
    """Chains of convolutions, some with channels in whole 16-blocks, some not."""
    nets = []
    for _ in range(count):
        net = []
        for _ in range(int(rng.integers(3, 12))):
            c = int(rng.choice([16, 24, 32, 40, 48, 56, 64]))
            net.append(OpSpec("conv", h=16, w=16, cin=c, cout=c, kernel=3))
        nets.append(net)
    return nets


@pytest.fixture(scope="module")
def conv_table():
    rng = np.random.default_rng(1)
    nets = mixed_width_nets(rng, 40)
    specs = list({s.key(): s for net in nets for s in net}.values())
    table = get_predictor_class("lut")().fit(
        specs, [0.02 + 30 * kernel_cost(s).flops / 1e9 for s in specs])
    return table, nets


@pytest.mark.parametrize("aligned_ms_per_gflop", [-8.0, 0.0])
def test_optional_term_kept_only_when_it_lowers_leave_one_out_error(
        conv_table, aligned_ms_per_gflop: float) -> None:
    """A network set where aligned convolutions really run faster keeps the term (and recovers
    its cost); one where they don't drops it, and the predictor carries only the kept terms."""
    table, nets = conv_table
    noise = np.random.default_rng(2).normal(1.0, 0.01, len(nets))

    def truth(net: list[OpSpec]) -> float:
        aligned = sum(term_values(s, ["aligned_conv_gflops"])[0] for s in net)
        return 0.01 + float(np.sum(table.predict(net))) + aligned_ms_per_gflop * aligned

    calibration = [(n, truth(n) * e) for n, e in zip(nets, noise, strict=True)]
    fit = solve(table, calibration, terms=["per_kernel", "aligned_conv_gflops"],
                optional={"aligned_conv_gflops"})
    forced = solve(table, calibration, terms=["per_kernel", "aligned_conv_gflops"])
    plain = solve(table, calibration, terms=["per_kernel"])
    assert "optional_terms_dropped" not in forced.summary
    if aligned_ms_per_gflop:
        assert fit.summary["optional_terms_dropped"] == []
        assert fit.terms["aligned_conv_gflops"] == pytest.approx(aligned_ms_per_gflop, rel=0.1)
        assert fit.summary["rmspe_pct_loo"] == forced.summary["rmspe_pct_loo"] \
            < plain.summary["rmspe_pct_loo"]
    else:
        assert fit.summary["optional_terms_dropped"] == ["aligned_conv_gflops"]
        assert set(fit.terms) == {"per_kernel"}
        assert fit.summary["rmspe_pct_loo"] == plain.summary["rmspe_pct_loo"] \
            <= forced.summary["rmspe_pct_loo"]
    # the network-level predictor carries what was chosen
    predictor = composed(table, calibration, terms=["per_kernel", "aligned_conv_gflops"],
                         optional={"aligned_conv_gflops"})
    assert predictor.composition_.terms == fit.terms
    assert predictor.composition_.summary == fit.summary
    assert predictor.predict(nets[0]).predicted_ms == pytest.approx(
        0.01 + predictor.kernel_ms(nets[0]).sum())


def test_spilled_layout_term_counts_bytes_past_the_threshold() -> None:
    """Bytes of each input and output tensor beyond SPILL_BYTES, for blocked-layout kinds."""
    big = OpSpec("conv", h=96, w=96, cin=16, cout=64, kernel=1)  # in 0.59 MB, out 2.36 MB
    cost = kernel_cost(big)
    assert cost.input_bytes < SPILL_BYTES < cost.output_bytes
    assert term_values(big, ["spilled_layout_mb"]) == [
        pytest.approx((cost.output_bytes - SPILL_BYTES) / 1e6)]
    assert term_values(OpSpec("conv", h=16, w=16, cin=64, cout=64, kernel=1),
                       ["spilled_layout_mb"]) == [0.0]
    assert term_values(OpSpec("add", h=96, w=96, cin=64), ["spilled_layout_mb"]) == [0.0]


def test_each_optional_term_is_chosen_on_its_own() -> None:
    """With two optional terms, one real and one not, the fit keeps the real one only."""
    rng = np.random.default_rng(3)
    nets = []
    for _ in range(40):
        nets.append([OpSpec("conv", h=int(h), w=int(h), cin=int(c), cout=int(c), kernel=3)
                     for h, c in zip(rng.choice([16, 96], 8), rng.choice([16, 24, 32, 40, 48], 8),
                                     strict=True)])
    specs = list({s.key(): s for net in nets for s in net}.values())
    table = get_predictor_class("lut")().fit(
        specs, [0.02 + 30 * kernel_cost(s).flops / 1e9 for s in specs])
    noise = np.random.default_rng(4).normal(1.0, 0.01, len(nets))

    def truth(net: list[OpSpec]) -> float:
        aligned = sum(term_values(s, ["aligned_conv_gflops"])[0] for s in net)
        return 0.01 + float(np.sum(table.predict(net))) - 3.0 * aligned

    calibration = [(n, truth(n) * e) for n, e in zip(nets, noise, strict=True)]
    assert any(term_values(s, ["spilled_layout_mb"])[0] > 0 for n in nets for s in n)
    terms = ["per_kernel", "aligned_conv_gflops", "spilled_layout_mb"]
    fit = solve(table, calibration, terms=terms,
                optional={"aligned_conv_gflops", "spilled_layout_mb"})
    assert fit.summary["optional_terms_dropped"] == ["spilled_layout_mb"]
    assert set(fit.terms) == {"per_kernel", "aligned_conv_gflops"}
    every = solve(table, calibration, terms=terms)
    assert fit.summary["rmspe_pct_loo"] <= every.summary["rmspe_pct_loo"]


def test_unaligned_add_pool_term_counts_adds_and_pools_off_the_channel_block() -> None:
    """In + out MB of Add and pooling kernels whose channels are not whole 16-blocks."""
    add = OpSpec("add", h=24, w=24, cin=24)
    pool = OpSpec("pool", h=48, w=48, cin=40, pool="max", kernel=3, stride=2)
    for spec in (add, pool):
        cost = kernel_cost(spec)
        assert term_values(spec, ["unaligned_add_pool_mb"]) == [
            pytest.approx((cost.input_bytes + cost.output_bytes) / 1e6)]
    for other in (OpSpec("add", h=24, w=24, cin=32),
                  OpSpec("pool", h=48, w=48, cin=16, pool="max", kernel=3, stride=2),
                  OpSpec("conv", h=24, w=24, cin=24, cout=24, kernel=3)):
        assert term_values(other, ["unaligned_add_pool_mb"]) == [0.0]


def test_unaligned_add_pool_term_is_kept_where_those_kernels_cost_more() -> None:
    """ResNet-like chains of mixed widths whose unaligned Add and pool kernels pay extra in the
    network (as ONNX Runtime's reorders do): the term is kept and its cost recovered, and an
    optional term that says nothing here is dropped."""
    rng = np.random.default_rng(5)
    nets = []
    for _ in range(40):
        c = int(rng.choice([16, 24, 32, 40, 48]))
        h = int(rng.choice([16, 24, 32]))
        net = [OpSpec("pool", h=2 * h, w=2 * h, cin=c, pool="max", kernel=3, stride=2)]
        for _ in range(int(rng.integers(2, 6))):
            net += [OpSpec("conv", h=h, w=h, cin=c, cout=c, kernel=3), OpSpec("add", h=h, w=h,
                                                                             cin=c)]
        nets.append(net)
    specs = list({s.key(): s for net in nets for s in net}.values())
    table = get_predictor_class("lut")().fit(
        specs, [0.005 + 30 * kernel_cost(s).flops / 1e9 for s in specs])
    per_mb = 0.08
    noise = np.random.default_rng(6).normal(1.0, 0.005, len(nets))

    def truth(net: list[OpSpec]) -> float:
        unaligned = sum(term_values(s, ["unaligned_add_pool_mb"])[0] for s in net)
        return 0.01 + float(np.sum(table.predict(net))) + per_mb * unaligned

    assert any(term_values(s, ["unaligned_add_pool_mb"])[0] > 0 for n in nets for s in n)
    calibration = [(n, truth(n) * e) for n, e in zip(nets, noise, strict=True)]
    terms = ["per_kernel", "aligned_conv_gflops", "unaligned_add_pool_mb"]
    fit = solve(table, calibration, terms=terms,
                optional={"aligned_conv_gflops", "unaligned_add_pool_mb"})
    assert fit.summary["optional_terms_dropped"] == ["aligned_conv_gflops"]
    assert fit.terms["unaligned_add_pool_mb"] == pytest.approx(per_mb, rel=0.1)
    without = solve(table, calibration, terms=["per_kernel"])
    assert fit.summary["rmspe_pct_loo"] < 0.5 * without.summary["rmspe_pct_loo"]


def test_quantize_io_term_counts_int8_tensor_bytes_past_the_threshold() -> None:
    """MB of each input and output tensor of an INT8 kernel beyond QUANTIZE_FREE_BYTES (what
    its single-kernel model converts from and to float); float kernels carry none."""
    big = OpSpec("conv", h=56, w=56, cin=16, cout=64, kernel=1, dtype="int8")
    cost = kernel_cost(big)  # in 50 KB, out 200 KB (one byte per element)
    assert cost.input_bytes < QUANTIZE_FREE_BYTES < cost.output_bytes
    assert term_values(big, [QUANTIZE_IO]) == [
        pytest.approx((cost.output_bytes - QUANTIZE_FREE_BYTES) / 1e6)]
    add = OpSpec("add", h=112, w=112, cin=32, dtype="int8")  # two inputs, one output
    past = sum(max(0.0, b - QUANTIZE_FREE_BYTES)
               for b in (kernel_cost(add).input_bytes, kernel_cost(add).output_bytes))
    assert past > 0 and term_values(add, [QUANTIZE_IO]) == [pytest.approx(past / 1e6)]
    assert term_values(big.with_(dtype="float32"), [QUANTIZE_IO]) == [0.0]
    assert term_values(OpSpec("conv", h=8, w=8, cin=64, cout=64, kernel=3, dtype="int8"),
                       [QUANTIZE_IO]) == [0.0]


def test_quantize_io_term_is_kept_where_int8_kernels_convert_big_tensors_alone() -> None:
    """INT8 networks whose kernels were timed with float conversions of their big tensors
    (their alone times exceed what they cost in the network by a per-MB amount): the optional
    term lowers the leave-one-out error, is kept with its coefficient recovered, and the same
    networks in float32 never carry it."""
    rng = np.random.default_rng(11)
    nets = []
    for _ in range(40):
        h = int(rng.choice([8, 16, 28, 56]))
        c = int(rng.choice([16, 32, 64]))
        nets.append([OpSpec("conv", h=h, w=h, cin=c, cout=c, kernel=int(rng.choice([1, 3])),
                            dtype="int8") for _ in range(int(rng.integers(3, 10)))])
    specs = list({s.key(): s for net in nets for s in net}.values())
    table = get_predictor_class("lut")().fit(
        specs, [0.01 + 5 * kernel_cost(s).flops / 1e9 + term_values(s, [QUANTIZE_IO])[0]
                for s in specs])
    per_mb = -0.8  # most of the conversions a kernel alone paid, which the network does not
    noise = np.random.default_rng(12).normal(1.0, 0.005, len(nets))

    def truth(net: list[OpSpec]) -> float:
        converted = sum(term_values(s, [QUANTIZE_IO])[0] for s in net)
        return OVERHEAD_MS + float(np.sum(table.predict(net))) + per_mb * converted

    assert sum(any(term_values(s, [QUANTIZE_IO])[0] > 0 for s in n) for n in nets) \
        >= MIN_TERM_NETWORKS
    calibration = [(n, truth(n) * e) for n, e in zip(nets, noise, strict=True)]
    fit = solve(table, calibration, terms=["per_kernel", QUANTIZE_IO], optional={QUANTIZE_IO})
    assert fit.terms[QUANTIZE_IO] == pytest.approx(per_mb, rel=0.1)
    without = solve(table, calibration, terms=["per_kernel"])
    assert fit.summary["rmspe_pct_loo"] < 0.5 * without.summary["rmspe_pct_loo"]
    floats = [([s.with_(dtype="float32") for s in n], ms) for n, ms in calibration]
    float_table = get_predictor_class("lut")().fit(
        [s.with_(dtype="float32") for s in specs], list(table.predict(specs)))
    assert QUANTIZE_IO not in solve(float_table, floats, terms=["per_kernel", QUANTIZE_IO],
                                    optional={QUANTIZE_IO}).terms


def test_shared_int8_convs_are_priced_by_their_flops_where_networks_carry_them() -> None:
    """INT8 networks whose convs on either side of a shared int8 tensor run slower in the
    network than timed alone (ONNX Runtime runs them in float): the term counts only those
    convs' GFLOPs, is kept whenever networks carry it and recovers the extra cost; float
    networks never carry it."""
    shared = OpSpec("conv", h=16, w=16, cin=32, cout=32, kernel=3, dtype="int8",
                    mode=CONV_SHARED_S8)
    assert term_values(shared, [SHARED_S8]) == [pytest.approx(kernel_cost(shared).flops / 1e9)]
    assert term_values(shared.with_(mode=""), [SHARED_S8]) == [0.0]
    assert term_values(shared.with_(dtype="float32"), [SHARED_S8]) == [0.0]
    rng = np.random.default_rng(11)
    nets = []
    for _ in range(40):
        c, h = int(rng.choice([16, 32, 48])), int(rng.choice([8, 16, 32]))
        conv = OpSpec("conv", h=h, w=h, cin=c, cout=c, kernel=3, dtype="int8")
        net = [OpSpec("pool", h=2 * h, w=2 * h, cin=c, pool="max", kernel=3, stride=2,
                      dtype="int8")]
        for _ in range(int(rng.integers(1, 5))):
            net += [conv.with_(mode=CONV_SHARED_S8) if rng.random() < 0.5 else conv, conv,
                    OpSpec("add", h=h, w=h, cin=c, dtype="int8")]
        nets.append(net)
    specs = list({s.key(): s for net in nets for s in net}.values())
    table = get_predictor_class("lut")().fit(
        specs, [0.005 + 20 * kernel_cost(s).flops / 1e9 for s in specs])
    per_gflop = 15.0

    def truth(net: list[OpSpec]) -> float:
        extra = sum(term_values(s, [SHARED_S8])[0] for s in net)
        return 0.01 + float(np.sum(table.predict(net))) + per_gflop * extra

    noise = np.random.default_rng(12).normal(1.0, 0.005, len(nets))
    calibration = [(n, truth(n) * e) for n, e in zip(nets, noise, strict=True)]
    fit = solve(table, calibration, terms=["per_kernel", SHARED_S8], optional=set())
    assert fit.terms[SHARED_S8] == pytest.approx(per_gflop, rel=0.1)
    without = solve(table, calibration, terms=["per_kernel"])
    assert fit.summary["rmspe_pct_loo"] < 0.5 * without.summary["rmspe_pct_loo"]
    # a carried term stays where it says nothing new (no leave-one-out test): its coefficient
    # goes to about 0 instead of leaving the choice to a few hundredths of a percent of error
    free = [(n, (0.01 + float(np.sum(table.predict(n)))) * e)
            for n, e in zip(nets, noise, strict=True)]
    fit = solve(table, free, terms=["per_kernel", SHARED_S8], optional={SHARED_S8})
    assert SHARED_S8 in fit.terms and abs(fit.terms[SHARED_S8]) < 0.1 * per_gflop
    floats = [[s.with_(dtype="float32") for s in n] for n in nets]
    specs = list({s.key(): s for net in floats for s in net}.values())
    table = get_predictor_class("lut")().fit(
        specs, [0.005 + 20 * kernel_cost(s).flops / 1e9 for s in specs])
    fit = solve(table, [(n, 0.01 + float(np.sum(table.predict(n)))) for n in floats],
                terms=["per_kernel", SHARED_S8], optional=set())
    assert SHARED_S8 not in fit.terms
    assert fit.summary["optional_terms_dropped"] == [SHARED_S8]  # no network carries it


def test_optional_term_carried_by_too_few_networks_is_not_tried() -> None:
    """Two of forty networks carry spilled tensors, and their residuals are large: fitted, the
    term would take those two networks' error as its coefficient and apply it to every large
    model; with fewer than MIN_TERM_NETWORKS carriers it is dropped before the fit."""
    rng = np.random.default_rng(7)
    nets = [[OpSpec("conv", h=16, w=16, cin=int(c), cout=int(c), kernel=3)
             for c in rng.choice([16, 32, 48], 6)] for _ in range(38)]
    big = [OpSpec("conv", h=96, w=96, cin=16, cout=64, kernel=1)]
    nets += [big, big + [OpSpec("conv", h=16, w=16, cin=32, cout=32, kernel=3)]]
    specs = list({s.key(): s for net in nets for s in net}.values())
    table = get_predictor_class("lut")().fit(
        specs, [0.02 + 30 * kernel_cost(s).flops / 1e9 for s in specs])
    truth = [0.01 + float(np.sum(table.predict(n))) * (3.0 if n[0] is big[0] else 1.0)
             for n in nets]
    assert sum(any(term_values(s, ["spilled_layout_mb"])[0] > 0 for s in n) for n in nets) \
        == 2 < MIN_TERM_NETWORKS
    fit = solve(table, list(zip(nets, truth, strict=True)),
                terms=["per_kernel", "spilled_layout_mb"], optional={"spilled_layout_mb"})
    assert fit.summary["optional_terms_dropped"] == ["spilled_layout_mb"]
    assert set(fit.terms) == {"per_kernel"}


def test_streamed_weights_are_priced_once_a_network_outgrows_the_cache(tmp_path: Path) -> None:
    """Networks whose weights pass 16 MB pay for every MB beyond what the cache keeps (the
    kernels' sum priced a 100 MB ResNet-50 10 ms low on LiteRT); smaller ones pay nothing. The
    fit finds the cache size among its candidates and the cost per MB, prices a larger
    network it never saw, and the predictor keeps both through save and load."""
    from latbench.predictor.model_level import STREAMED, network_weight_mb

    rng = np.random.default_rng(11)
    nets = []
    for _ in range(40):
        c, depth = int(rng.choice([32, 64, 128, 256, 384, 512])), int(rng.integers(4, 12))
        nets.append([OpSpec("conv", h=4, w=4, cin=c, cout=c, kernel=3, pad=1)
                     for _ in range(depth)])
    specs = list({s.key(): s for net in nets for s in net}.values())
    table = get_predictor_class("lut")().fit(
        specs, [0.01 + 20 * kernel_cost(s).flops / 1e9 for s in specs])
    per_mb, cache_mb = 0.12, 16.0

    def truth(net: list[OpSpec]) -> float:
        total = network_weight_mb(net)
        return OVERHEAD_MS + float(np.sum(table.predict(net))) + per_mb * max(0.0,
                                                                              total - cache_mb)

    assert sum(network_weight_mb(n) > cache_mb for n in nets) >= MIN_TERM_NETWORKS
    assert sum(network_weight_mb(n) < cache_mb for n in nets) >= 10
    noise = np.random.default_rng(12).normal(1.0, 0.005, len(nets))
    calibration = [(n, truth(n) * e) for n, e in zip(nets, noise, strict=True)]
    fit = solve(table, calibration, terms=["per_kernel", STREAMED], optional={STREAMED})
    assert fit.weight_cache_mb == cache_mb and fit.summary["weight_cache_mb"] == cache_mb
    assert fit.terms[STREAMED] == pytest.approx(per_mb, rel=0.1)
    plain = solve(table, calibration, terms=["per_kernel"])
    assert fit.summary["rmspe_pct_loo"] < 0.5 * plain.summary["rmspe_pct_loo"]
    big = [OpSpec("conv", h=4, w=4, cin=512, cout=512, kernel=3, pad=1)] * 16  # 151 MB
    predictor = composed(table, calibration, terms=["per_kernel", STREAMED],
                         optional={STREAMED})
    assert predictor.predict(big).predicted_ms == pytest.approx(truth(big), rel=0.03)
    predictor.save(tmp_path / "p")
    again = LatencyPredictor.load(tmp_path / "p")
    assert again.predict(big).predicted_ms == pytest.approx(predictor.predict(big).predicted_ms)
    # a saved composition with the term but no cache size is refused, not silently wrong
    manifest = tmp_path / "p" / "manifest.json"
    text = manifest.read_text().replace('"weight_cache_mb"', '"weight_cache_was"')
    manifest.write_text(text)
    with pytest.raises(PredictorError, match="weight_cache_mb"):
        LatencyPredictor.load(tmp_path / "p")
