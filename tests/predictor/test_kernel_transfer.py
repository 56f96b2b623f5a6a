"""Kernel transfer (predictor/kernel_transfer.py) on synthetic platforms with a known relation:
the map recovers it from a small sample and beats the sample fitted alone on held-out kernels;
the sampler covers every kind within the budget; sources that cannot serve are refused; a
transferred predictor saves and loads as a normal predictor folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

import latbench.predictor.kernel_transfer as kernel_transfer
from latbench.bench.ops import OpSpec
from latbench.bench.platform import Platform
from latbench.errors import ConfigError, PredictorError
from latbench.predictor.features import feature_matrix, kernel_cost
from latbench.predictor.kernel_transfer import (
    KernelTransferPredictor,
    MeasureCost,
    TransferSource,
    check_sources,
    load_source,
    matrix_unit_advice,
    sample_transfer,
    transfer_predictor,
)
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.lut import LookupTablePredictor
from latbench.predictor.models import LinearKernelPredictor, RandomForestKernelPredictor

SOURCE = Platform("box", "onnxruntime")
TARGET = Platform("box", "litert", "xnnpack", "float32", 2)
# target ms = FACTOR[kind] * source ms ** 0.9, with a little noise
FACTOR = {"conv": 1.7, "dwconv": 2.5, "linear": 0.8, "pool": 1.2}
POWER = 0.9


def kernels(rng: np.random.Generator, n: int) -> list[OpSpec]:
    """Random kernels of four kinds, each at most once."""
    out: dict[str, OpSpec] = {}
    while len(out) < n:
        h = int(rng.choice([7, 14, 28, 56]))
        c = int(rng.choice([16, 24, 32, 48, 64, 96, 128]))
        kind = str(rng.choice(list(FACTOR)))
        if kind == "conv":
            spec = OpSpec("conv", h=h, w=h, cin=c, cout=int(rng.choice([16, 32, 64, 96])),
                          kernel=int(rng.choice([1, 3])))
        elif kind == "dwconv":
            spec = OpSpec("dwconv", h=h, w=h, cin=c, cout=c, kernel=int(rng.choice([3, 5])),
                          groups=c)
        elif kind == "linear":
            spec = OpSpec("linear", cin=c * 4, cout=int(rng.choice([10, 100, 1000])))
        else:
            spec = OpSpec("pool", h=h, w=h, cin=c, pool="gavg")
        out[spec.key()] = spec
    return list(out.values())


def source_ms(spec: OpSpec) -> float:
    """A source platform with shape effects a log-linear fit in FLOPs cannot see: channel
    counts off the 32-block cost extra."""
    flops = kernel_cost(spec).flops
    ragged = 1.0 + 0.6 * ((spec.cin % 32) != 0) + 0.4 * ((spec.cout % 32) != 0)
    return 0.002 + 3e-9 * flops * ragged


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    specs = kernels(rng, 250)  # of the 329 distinct ones `kernels` can draw
    src = np.array([source_ms(s) for s in specs])
    noise = np.exp(rng.normal(0.0, 0.03, len(specs)))
    target = np.array([FACTOR[s.kind] for s in specs]) * src ** POWER * noise
    table = LookupTablePredictor.from_entries({s.key(): ms for s, ms in zip(specs, src,
                                                                              strict=True)})
    source = TransferSource("synthetic", SOURCE, table)
    train = np.zeros(len(specs), dtype=bool)
    for kind in FACTOR:  # eight kernels of each kind
        train[np.flatnonzero([s.kind == kind for s in specs])[:8]] = True
    return specs, target, source, train


def median_error(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(np.median(np.abs(predicted / measured - 1)))


def test_the_map_recovers_a_known_relation_and_beats_the_sample_alone(synthetic):
    specs, target, source, train = synthetic
    sample = [s for s, keep in zip(specs, train, strict=True) if keep]
    held = [s for s, keep in zip(specs, train, strict=True) if not keep]
    model = KernelTransferPredictor().fit(sample, target[train], sources=[source])
    transfer_error = median_error(model.predict(held), target[~train])
    alone = LinearKernelPredictor().fit(sample, target[train])
    alone_error = median_error(alone.predict(held), target[~train])
    assert transfer_error < 0.05
    assert transfer_error < alone_error / 2
    # where the source's shape effects matter the map is kept (the sample alone may win on a
    # kind that is log-linear in FLOPs anyway)
    assert model.models_["conv"].mode == "map"
    for kind, factor in FACTOR.items():  # log t = log FACTOR + 0.9 log s
        m = model.models_[kind]
        if m.mode != "map":
            continue
        assert m.slopes[0] == pytest.approx(POWER, abs=0.08)
        assert m.intercept == pytest.approx(np.log(factor), abs=0.6)
    assert model.cv_["map_loo_pct"] < model.cv_["alone_loo_pct"]


def test_each_kind_leans_on_the_source_that_follows_the_target_for_it(synthetic):
    """Two sources, each with shape effects of its own: convolutions and linears follow the
    first, depthwise convolutions and pools the second (an int8 target's convolutions follow
    another runtime's int8, its depthwise ones its own fp32). A slope per source shared by
    every kind is pulled between them; per kind deviations find each kind's source."""
    specs, _, first, train = synthetic
    rng = np.random.default_rng(3)
    ragged = {s.key(): 1.0 + 0.8 * ((s.h % 14) != 0) + 0.5 * ((s.cin % 48) != 0) for s in specs}
    second_ms = np.array([0.001 + 2e-9 * kernel_cost(s).flops * ragged[s.key()] for s in specs])
    first_ms = np.array([source_ms(s) for s in specs])
    follows_first = np.array([s.kind in ("conv", "linear") for s in specs])
    target = np.where(follows_first, 1.5 * first_ms, 0.7 * second_ms) * np.exp(
        rng.normal(0.0, 0.03, len(specs)))
    second = TransferSource("second", Platform("box", "litert"), LookupTablePredictor.from_entries(
        {s.key(): ms for s, ms in zip(specs, second_ms, strict=True)}))
    sample = [s for s, keep in zip(specs, train, strict=True) if keep]
    held = [s for s, keep in zip(specs, train, strict=True) if not keep]
    model = KernelTransferPredictor().fit(sample, target[train], sources=[first, second])
    errors = np.abs(model.predict(held) / target[~train] - 1)
    assert float(np.median(errors)) < 0.05
    for kind in ("conv", "linear", "dwconv", "pool"):
        m = model.models_[kind]
        if m.mode == "map":  # the slope goes to the source the kind follows
            leading = 0 if kind in ("conv", "linear") else 1
            assert m.slopes[leading] > m.slopes[1 - leading], (kind, m.slopes)
    for kind, leading in (("conv", 0), ("dwconv", 1)):  # the kinds with the clearest effects
        slopes = model.models_[kind].slopes
        assert slopes[leading] > 0.6 > 0.3 > slopes[1 - leading], (kind, slopes)
    assert model.models_["conv"].mode == "map" and model.models_["dwconv"].mode == "map"


def test_a_fit_without_sources_is_the_sample_alone(synthetic):
    specs, target, _, train = synthetic
    sample = [s for s, keep in zip(specs, train, strict=True) if keep]
    model = KernelTransferPredictor().fit(sample, target[train])
    alone = LinearKernelPredictor().fit(sample, target[train])
    assert {m.mode for m in model.models_.values()} == {"alone"}
    assert np.allclose(model.predict(specs), alone.predict(specs))


def test_the_sampler_covers_every_kind_within_the_budget(synthetic):
    specs, _, source, _ = synthetic
    cost = MeasureCost()
    costs = cost.seconds(np.exp(source.log_ms(specs)))
    budget = 40.0
    sample = sample_transfer(specs, source.log_ms(specs)[None, :], costs, budget,
                             network_costs=[2.0, 3.0, 50.0], network_families=["a", "b", "a"],
                             cost=cost)
    chosen = [specs[i] for i in sample.kernels]
    assert {s.kind for s in chosen} == set(FACTOR)
    assert sample.reasons[:len(FACTOR)] == ("cover",) * len(FACTOR)
    assert len({s.kind for s in chosen[:len(FACTOR)]}) == len(FACTOR)  # one per kind first
    spent = cost.campaign_overhead_s + costs[list(sample.kernels)].sum() + sum(
        [2.0, 3.0, 50.0][j] for j in sample.networks)
    assert spent == pytest.approx(sample.estimated_s)
    assert spent <= budget
    assert sorted(sample.networks) == [0, 1]  # the 50 s network exceeds the network share
    assert len(sample.kernels) > 3 * len(FACTOR)  # the rest of the budget was spent
    assert len(set(sample.kernels)) == len(sample.kernels)


def test_no_network_takes_more_than_a_third_of_the_networks_share():
    """Two large networks listed first would fill the networks' share alone; capped at a
    third of it each, the share holds four, enough to choose what prices networks."""
    costs = [5.5, 5.5, 0.5, 0.5, 0.4, 0.6]
    families = ["big", "big", "big", "small", "small", "small"]
    for seed in range(4):
        taken = kernel_transfer.take_networks(costs, families, 6.0,
                                              np.random.default_rng(seed))
        assert sorted(taken) == [2, 3, 4, 5]


def test_the_sampler_prices_each_round_from_what_was_measured(synthetic):
    """A target four times slower on convolutions than the sources say (an int8 target priced
    from an fp32 source, the other way round): measured as it is chosen - the covering kernels
    and networks first, then the rest in rounds - the sample keeps to its budget, where
    priced from the sources alone it overspends; every kernel is measured once."""
    specs, _, source, _ = synthetic
    cost = MeasureCost()
    estimated = cost.seconds(np.exp(source.log_ms(specs)))
    real = estimated * np.array([4.0 if s.kind == "conv" else 1.0 for s in specs])
    network_s = np.array([2.0, 3.0, 50.0])
    calls = []

    def measure(kernels: list[int], networks: list[int]) -> tuple[np.ndarray, np.ndarray]:
        calls.append((list(kernels), list(networks)))
        return real[kernels], network_s[networks]

    budget = 30.0
    options = {"network_costs": list(network_s), "network_families": ["a", "b", "a"],
               "cost": cost}
    guessed = sample_transfer(specs, source.log_ms(specs)[None, :], estimated, budget, **options)
    measured = sample_transfer(specs, source.log_ms(specs)[None, :], estimated, budget,
                               measure=measure, **options)

    def real_spend(sample) -> float:
        return cost.campaign_overhead_s + real[list(sample.kernels)].sum() + network_s[
            list(sample.networks)].sum()

    assert real_spend(guessed) > 1.2 * budget
    assert real_spend(measured) <= budget
    assert real_spend(measured) == pytest.approx(measured.estimated_s)
    first, networks = calls[0]
    assert networks == list(measured.networks) and all(not n for _, n in calls[1:])
    assert first == list(measured.kernels[:len(first)])
    assert set(measured.reasons[:len(first)]) == {"cover"}
    assert len(calls) >= 3  # the covering round, then rounds of what was left
    assert [i for kernels, _ in calls for i in kernels] == list(measured.kernels)
    assert budget - real_spend(measured) < real[list(measured.kernels)].max() + 1.0


def test_networks_the_sources_overprice_are_repriced_and_more_are_taken(synthetic):
    """Networks that run in a third of what the sources say (a 2-thread target priced from a
    1-thread source): once the first ones are measured the rest are repriced by what those
    took and more are taken, up to the networks' share of the budget, each measured once."""
    specs, _, source, _ = synthetic
    cost = MeasureCost()
    estimated = cost.seconds(np.exp(source.log_ms(specs)))
    guessed_s = np.full(24, 1.5)
    real_s = guessed_s / 3
    families = ["a", "b", "c"] * 8
    calls = []

    def measure(kernels: list[int], networks: list[int]) -> tuple[np.ndarray, np.ndarray]:
        calls.append(list(networks))
        return estimated[kernels], real_s[networks]

    budget = 40.0
    options = {"network_costs": list(guessed_s), "network_families": families, "cost": cost}
    priced = sample_transfer(specs, source.log_ms(specs)[None, :], estimated, budget, **options)
    measured = sample_transfer(specs, source.log_ms(specs)[None, :], estimated, budget,
                               measure=measure, **options)
    first = len(calls[0])
    assert first == len(priced.networks) >= kernel_transfer.MIN_CHOICE_NETWORKS
    assert len(measured.networks) >= 2 * first  # the share, repriced, holds more
    assert sorted(i for c in calls for i in c) == sorted(measured.networks)  # each once
    assert len(set(measured.networks)) == len(measured.networks)
    share = kernel_transfer.NETWORK_SHARE * budget
    assert real_s[list(measured.networks)].sum() <= share
    assert measured.estimated_s <= budget


def test_the_sampler_spends_more_where_sources_disagree(synthetic):
    specs, _, source, _ = synthetic
    logs = source.log_ms(specs)
    other = logs.copy()
    conv = np.array([s.kind == "conv" for s in specs])
    other[conv] += np.random.default_rng(1).normal(0, 1.0, conv.sum())  # disagree on convs
    costs = np.full(len(specs), 1.0)
    agreeing = sample_transfer(specs, np.array([logs, logs]), costs, 40.0, cost=MeasureCost())
    split = sample_transfer(specs, np.array([logs, other]), costs, 40.0, cost=MeasureCost())
    share = [np.mean([specs[i].kind == "conv" for i in s.kernels]) for s in (agreeing, split)]
    assert share[1] > share[0]


def test_a_budget_below_one_kernel_per_kind_names_the_minimum(synthetic):
    specs, _, source, _ = synthetic
    costs = MeasureCost().seconds(np.exp(source.log_ms(specs)))
    with pytest.raises(ConfigError, match=r"the least is [0-9.]+ min \(--budget-minutes"):
        sample_transfer(specs, source.log_ms(specs)[None, :], costs, 3.5)


def test_sources_that_cannot_serve_are_refused(synthetic, tmp_path):
    specs, _, source, _ = synthetic
    partial = LookupTablePredictor.from_entries({s.key(): 1.0 for s in specs
                                                 if s.kind != "pool"})
    with pytest.raises(ConfigError, match="no model for kernel kind.*pool.*plan quick"):
        check_sources([TransferSource("p", SOURCE, partial)], specs, TARGET, "plan quick")
    unseen = OpSpec("conv", h=9, w=9, cin=5, cout=7, kernel=3)
    with pytest.raises(ConfigError, match="cannot price"):
        check_sources([source], [*specs, unseen], TARGET)
    with pytest.raises(ConfigError, match="does not exist"):
        load_source(str(tmp_path / "nowhere"))


def test_int8_kernels_are_asked_of_an_fp32_source_at_fp32(synthetic):
    specs, target, source, train = synthetic
    int8 = [s.with_(dtype="int8") for s in specs]
    check_sources([source], int8, Platform("box", "onnxruntime", precision="int8"))
    assert np.allclose(source.log_ms(int8), source.log_ms(specs))


def test_a_matrix_unit_for_the_targets_precision_draws_advice_for_a_source_of_another(
        synthetic):
    _, _, fp32_source, _ = synthetic
    int8 = Platform("box", "litert", "xnnpack", "int8")
    int8_source = TransferSource("q", Platform("box", "onnxruntime", precision="int8"),
                                 fp32_source.kernels)
    advice = matrix_unit_advice([fp32_source], int8, ["avx512_vnni", "amx_tile", "amx_int8"])
    assert advice is not None and "int8 on a matrix unit (amx_int8)" in advice
    assert "a source in int8" in advice
    assert matrix_unit_advice([fp32_source, int8_source], int8, ["amx_int8"]) is None
    assert matrix_unit_advice([fp32_source], int8, ["avx512_vnni"]) is None  # no matrix unit
    assert matrix_unit_advice([fp32_source], int8, None) is None  # facts without features
    assert matrix_unit_advice([fp32_source], TARGET, ["amx_int8"]) is None  # an fp32 target


def transfer_with_networks(source: TransferSource, specs: list[OpSpec], target: np.ndarray,
                           train: np.ndarray) -> LatencyPredictor:
    """The synthetic target's sample transferred from `source`, with seven calibration
    networks made of sampled kernels (10% slower than their sum)."""
    sample = [s for s, keep in zip(specs, train, strict=True) if keep]
    networks = [(f"net{i}", sample[i::7], float(target[train][i::7].sum() * 1.1))
                for i in range(7)]
    return transfer_predictor([source], sample, target[train], 0.01, networks,
                              info={"platform": TARGET.to_json(), "device": "box",
                                    "runtime": "litert"}, ranges_from=specs)


def test_a_transferred_predictor_saves_and_loads_self_contained(synthetic, tmp_path):
    specs, target, _, train = synthetic
    src_ms = np.array([source_ms(s) for s in specs])
    forest = RandomForestKernelPredictor(n_estimators=5).fit(specs, src_ms)  # has baselines
    source = TransferSource("forest", SOURCE, forest)
    predictor = transfer_with_networks(source, specs, target, train)
    before = predictor.predict(specs[:20]).predicted_ms
    path = predictor.save(tmp_path / "pred")
    files = {p.name for p in (path / "kernels").iterdir()}
    assert "conv.json" in files and "conv__source0.npz" in files
    assert "conv__source0.baseline.json" in files
    loaded = LatencyPredictor.load(path)
    assert loaded.platform == TARGET
    saved_bounds = predictor.kernels_.models_["conv"].source_bounds
    assert saved_bounds.shape == (2, 1) and saved_bounds[0, 0] < saved_bounds[1, 0]
    assert loaded.kernels_.models_["conv"].source_bounds == pytest.approx(saved_bounds)
    assert loaded.predict(specs[:20]).predicted_ms == pytest.approx(before, rel=1e-9)
    assert loaded.composition_.summary["networks"] == 7
    assert loaded.info_["transfer"]["cv"]["kinds"]["conv"]["kernels"] == 8


def test_a_transfer_saved_with_other_residual_features_loads_and_predicts_the_same(
        synthetic, tmp_path, monkeypatch):
    # a predictor folder written when the residual had two columns (log FLOPs and bytes)
    # predicts what it predicted then, whatever columns later versions fit
    specs, target, source, train = synthetic
    current = kernel_transfer.RESIDUAL_FEATURES
    monkeypatch.setattr(kernel_transfer, "RESIDUAL_FEATURES", ("log_flops", "log_bytes"))
    monkeypatch.setattr(kernel_transfer, "RESIDUAL_RIDGES", (0.3,))  # always a residual
    predictor = transfer_with_networks(source, specs, target, train)
    before = predictor.predict(specs).predicted_ms
    path = predictor.save(tmp_path / "pred")
    monkeypatch.setattr(kernel_transfer, "RESIDUAL_FEATURES", current)
    loaded = LatencyPredictor.load(path)
    conv = loaded.kernels_.models_["conv"]
    assert conv.residual_features == ("log_flops", "log_bytes") and len(conv.residual) == 2
    assert loaded.predict(specs).predicted_ms == pytest.approx(before, rel=1e-9)
    # a file whose residual does not match its columns is refused, naming the mismatch
    saved = path / "kernels" / "conv.json"
    content = json.loads(saved.read_text())
    content["residual_features"].append("log_out_pixels")
    saved.write_text(json.dumps(content))
    with pytest.raises(PredictorError, match="2 residual coefficients for 3 features"):
        LatencyPredictor.load(path)


def test_a_step_with_kernel_size_is_learned_per_shape_group(synthetic, tmp_path, monkeypatch):
    """Runtimes pick algorithms per kernel size: here the target runs 1x1 convolutions at 0.6x
    and 3x3 at 1.5x of the relation the other kinds follow. The map learns one offset per
    shape group; without group offsets (GROUP_RIDGES = (None,)) it cannot."""
    specs, target, source, _ = synthetic
    step = {1: 0.6, 3: 1.5}
    stepped = np.array([t * (step[s.kernel] if s.kind == "conv" else 1.0)
                        for s, t in zip(specs, target, strict=True)])
    train = np.zeros(len(specs), dtype=bool)
    for kind in FACTOR:
        rows = [i for i, s in enumerate(specs) if s.kind == kind]
        groups = {specs[i].kernel for i in rows}
        for group in groups:  # four kernels of each shape group
            train[[i for i in rows if specs[i].kernel == group][:4]] = True
    sample = [s for s, keep in zip(specs, train, strict=True) if keep]
    held = [s for s, keep in zip(specs, train, strict=True)
            if not keep and s.kind == "conv"]
    truth = stepped[~train & np.array([s.kind == "conv" for s in specs])]
    model = KernelTransferPredictor().fit(sample, stepped[train], sources=[source])
    conv = model.models_["conv"]
    assert conv.mode == "map"
    offsets = conv.groups
    assert offsets["k3x3s1"] - offsets["k1x1s1"] == pytest.approx(np.log(1.5 / 0.6), abs=0.25)
    grouped_error = median_error(model.predict(held), truth)
    assert grouped_error < 0.06
    path = tmp_path / "conv"
    path.mkdir()
    loaded = KernelTransferPredictor().load_kind(path / model.save_kind(conv, path / "conv"))
    assert loaded.groups == pytest.approx(offsets)
    monkeypatch.setattr(kernel_transfer, "GROUP_RIDGES", (None,))
    flat = KernelTransferPredictor().fit(sample, stepped[train], sources=[source])
    assert flat.models_["conv"].groups == {}
    assert grouped_error < median_error(flat.predict(held), truth) / 2


def test_beyond_the_sampled_range_the_target_follows_the_sources_in_proportion(synthetic):
    """A small budget buys the cheap kernels only, where the target's relation to the source
    can be steeper than it is overall (here slope 1.3 up to the sample's most expensive
    kernel, proportional beyond). A kernel past the sample keeps the ratio of the sample's
    edge instead of riding the fitted slope decades further; without the bounds the same fit
    prices the expensive kernels far over."""
    specs, _, source, _ = synthetic
    src = np.array([source_ms(s) for s in specs])
    edge = np.quantile(src, 0.4)
    truth = np.array([FACTOR[s.kind] for s in specs]) * np.where(
        src <= edge, src ** 1.3 * edge ** -0.3, src)
    cheap = src <= edge
    sample = [s for s, keep in zip(specs, cheap, strict=True) if keep]
    held = [s for s, keep in zip(specs, cheap, strict=True) if not keep]
    model = KernelTransferPredictor().fit(sample, truth[cheap], sources=[source])
    assert all(m.mode == "map" for m in model.models_.values())
    assert model.models_["conv"].slopes[0] > 1.15  # the sample's local slope
    bounded = median_error(model.predict(held), truth[~cheap])
    for m in model.models_.values():
        m.source_bounds = np.zeros((2, 0))
    unbounded = median_error(model.predict(held), truth[~cheap])
    assert bounded < 0.12
    assert unbounded > 2 * bounded


def thread_ratio(src: np.ndarray) -> np.ndarray:
    """Two threads against one: slower on tiny kernels (the pool's cost), half the time on
    large ones, a smooth bend between - LiteRT INT8's measured shape."""
    return 0.5 + 0.75 / (1.0 + (src / 0.01) ** 1.5)


def test_a_ratio_that_bends_with_kernel_size_is_learned_by_the_hinges(synthetic, tmp_path,
                                                                        monkeypatch):
    """One thread -> two: the ratio falls from 1.25x to 0.5x as kernels grow. The straight
    map (HINGE_RIDGES = (None,)) cannot bend with it; the hinges on the sources' prediction
    can, and leave-one-out keeps them. They save and load with the kind."""
    specs, _, source, train = synthetic
    src = np.array([source_ms(s) for s in specs])
    truth = src * thread_ratio(src) * np.exp(np.random.default_rng(2).normal(0, 0.02,
                                                                             len(specs)))
    train = np.zeros(len(specs), dtype=bool)
    train[::4] = True
    sample = [s for s, keep in zip(specs, train, strict=True) if keep]
    held = [s for s, keep in zip(specs, train, strict=True) if not keep]
    model = KernelTransferPredictor().fit(sample, truth[train], sources=[source])
    assert model.cv_["hinge_ridge"] is not None
    bent = median_error(model.predict(held), truth[~train])
    assert bent < 0.05
    conv = model.models_["conv"]
    path = tmp_path / "conv"
    path.mkdir()
    loaded = KernelTransferPredictor().load_kind(path / model.save_kind(conv, path / "conv"))
    assert loaded.hinges == pytest.approx(conv.hinges)
    assert loaded.knots_ms == pytest.approx(kernel_transfer.HINGE_KNOTS_MS)
    assert len(conv.hinges) == len(kernel_transfer.HINGE_KNOTS_MS)
    convs = [s for s in held if s.kind == "conv"]
    assert loaded.log_ms(convs, feature_matrix(convs)) == pytest.approx(
        conv.log_ms(convs, feature_matrix(convs)))
    monkeypatch.setattr(kernel_transfer, "HINGE_RIDGES", (None,))
    straight = KernelTransferPredictor().fit(sample, truth[train], sources=[source])
    assert len(straight.models_["conv"].hinges) == 0
    assert bent < median_error(straight.predict(held), truth[~train]) / 2


def test_an_int8_bmm_form_is_its_own_group():
    """The builtin and the XNNPACK form of an INT8 bmm scale differently with threads."""
    bmm = OpSpec("bmm", heads=4, tokens=197, cin=32, cout=197, dtype="int8")
    symmetric = bmm.with_(mode="symmetric")
    assert kernel_transfer.shape_group(symmetric) == \
        kernel_transfer.shape_group(bmm) + "/symmetric"
    assert kernel_transfer.shape_group(OpSpec("conv", h=8, w=8, cin=8, cout=8, kernel=3)) \
        == "k3x3s1"


def ratio_case(synthetic, network_ms):
    """A source with a whole predictor (composition, call overhead) and the synthetic sample
    with nine calibration networks whose measured ms is `network_ms(kernels, source's
    prediction)`; the transfer and the source predictor."""
    from latbench.predictor.model_level import Composition

    specs, target, source, train = synthetic
    full = LatencyPredictor.from_kernels(
        source.kernels, call_overhead_ms=0.02,
        composition=Composition({"conv": 1.1, "dwconv": 0.9}, {}, {"networks": 9}),
        info={"platform": SOURCE.to_json()}, ranges_from=specs)
    whole = TransferSource("whole", SOURCE, source.kernels, full)
    sample = [s for s, keep in zip(specs, train, strict=True) if keep]
    networks = [(f"net{i}", sample[i::9], network_ms(sample[i::9],
                                                     full.predict(sample[i::9]).predicted_ms))
                for i in range(9)]
    predictor = transfer_predictor([whole], sample, target[train], 0.01, networks,
                                   info={"platform": TARGET.to_json(), "device": "box",
                                         "runtime": "litert"}, ranges_from=specs)
    return predictor, full


def test_networks_at_a_constant_ratio_of_the_source_are_priced_by_it(synthetic, tmp_path):
    # kernels timed alone follow FACTOR * source ** 0.9 per kind, whole networks 0.6x the
    # source's prediction (a second thread: networks speed up, lone kernels barely)
    rng = np.random.default_rng(1)
    predictor, full = ratio_case(synthetic,
                                 lambda _, ms: float(0.6 * ms * np.exp(rng.normal(0, 0.01))))
    chosen = predictor.info_["transfer"]["networks_priced_by"]
    assert chosen["chosen"] == "whole times a ratio" and chosen["folds"] == 8
    assert chosen["ratios"]["whole times a ratio"] == pytest.approx(0.6, rel=0.02)
    errors = chosen["errors_pct"]
    assert errors["whole times a ratio"] < 3 < min(errors["kernel map"], errors["sample alone"])
    # a search's margin comes from the ratio's own leave-one-out under-prediction
    assert 0 < predictor.safety_margin() < 0.04
    assert predictor.safety_margin() == pytest.approx(
        predictor.composition_.summary["underprediction_p95_loo_pct"] / 100)
    specs = synthetic[0]
    for start in range(0, 60, 6):  # networks of kernels never measured on the target
        held = specs[start + 100:start + 106]
        assert predictor.predict(held).predicted_ms == pytest.approx(
            0.6 * full.predict(held).predicted_ms, rel=0.02)
    path = predictor.save(tmp_path / "pred")
    loaded = LatencyPredictor.load(path)
    assert loaded.predict(specs[:12]).predicted_ms == pytest.approx(
        predictor.predict(specs[:12]).predicted_ms, rel=1e-9)
    assert loaded.composition_.summary["network_ratio"] == pytest.approx(
        chosen["ratios"]["whole times a ratio"])
    assert loaded.platform == TARGET


def test_networks_that_follow_their_kernels_keep_the_kernel_map(synthetic, monkeypatch):
    """The calibration networks here are made of measured kernels. Trees fitted on those
    kernels price such a network from memory; the choice refits each candidate without the
    held-out networks' kernels, so the map, which generalises, is kept."""
    specs, target, _, train = synthetic
    measured = dict(zip((s.key() for s in specs), target, strict=True))
    predictor, _ = ratio_case(synthetic,
                              lambda kernels, _: 1.1 * sum(measured[k.key()] for k in kernels))
    chosen = predictor.info_["transfer"]["networks_priced_by"]
    assert chosen["chosen"] == "kernel map"
    errors = chosen["errors_pct"]
    assert errors["kernel map"] < min(errors["sample alone"], errors["whole times a ratio"])
    assert "network_ratio" not in predictor.composition_.summary
    # refitted on every kernel instead, the remembered kernels would have won
    monkeypatch.setattr(kernel_transfer, "kernels_kept",
                        lambda specs, held: np.ones(len(specs), dtype=bool))
    remembered, _ = ratio_case(synthetic,
                               lambda kernels, _: 1.1 * sum(measured[k.key()] for k in kernels))
    errors = remembered.info_["transfer"]["networks_priced_by"]["errors_pct"]
    assert errors["sample alone"] < errors["kernel map"]


def test_networks_of_kernels_the_source_misprices_are_priced_by_the_sample_alone():
    """A source whose kernels bear no relation to the target's (another runtime, another
    kernel library): the sample alone prices the networks, which are made of kernels never
    measured on the target."""
    rng = np.random.default_rng(3)
    specs = kernels(rng, 300)
    truth = np.array([FACTOR[s.kind] * source_ms(s) ** POWER for s in specs])
    truth *= np.exp(rng.normal(0.0, 0.02, len(specs)))
    unrelated = LookupTablePredictor.from_entries(
        {s.key(): float(ms) for s, ms in zip(specs, np.exp(rng.normal(-3, 1, len(specs))),
                                             strict=True)})
    sample, rest = specs[:200], specs[200:]
    networks = [(f"net{i}", rest[i::10], 1.05 * float(truth[200:][i::10].sum()))
                for i in range(10)]
    predictor = transfer_predictor([TransferSource("unrelated", SOURCE, unrelated)], sample,
                                   truth[:200], 0.0, networks,
                                   info={"platform": TARGET.to_json(), "device": "box",
                                         "runtime": "litert"}, ranges_from=specs)
    chosen = predictor.info_["transfer"]["networks_priced_by"]
    assert chosen["chosen"] == "sample alone" and chosen["folds"] == 8
    assert chosen["errors_pct"]["sample alone"] < chosen["errors_pct"]["kernel map"]
    assert predictor.kernels_.registry_name == kernel_transfer.ALONE_KERNEL_MODEL
    assert predictor.predict(rest[:6]).predicted_ms == pytest.approx(
        1.05 * truth[200:206].sum(), rel=0.1)


def test_folds_hold_out_every_network_once_and_their_kernels_from_the_refit():
    assert kernel_transfer.choice_folds(3) == [[0], [1], [2]]
    folds = kernel_transfer.choice_folds(20)
    assert len(folds) == kernel_transfer.CHOICE_FOLDS
    assert sorted(j for fold in folds for j in fold) == list(range(20))
    conv = OpSpec("conv", h=8, w=8, cin=8, cout=8, kernel=3)
    other = conv.with_(cout=16)
    pool = OpSpec("pool", h=8, w=8, cin=8, pool="gavg")
    keep = kernel_transfer.kernels_kept([conv, other, pool], [[conv, pool]])
    # the held-out network's conv goes; its pool stays: no other kernel covers that kind
    assert keep.tolist() == [False, True, True]


def test_the_choice_needs_three_networks(synthetic):
    specs, target, source, train = synthetic
    predictor, full = ratio_case(synthetic, lambda _, ms: 0.6 * ms)
    whole = TransferSource("whole", SOURCE, source.kernels, full)
    sample = [s for s, keep in zip(specs, train, strict=True) if keep]
    two = [(f"net{i}", sample[i::9], 0.6 * full.predict(sample[i::9]).predicted_ms)
           for i in range(2)]
    info = {"platform": TARGET.to_json(), "device": "box", "runtime": "litert"}
    few = transfer_predictor([whole], sample, target[train], 0.01, two, info=info,
                             ranges_from=specs)
    assert few.info_["transfer"]["networks_priced_by"] == {"chosen": "kernel map",
                                                          "networks": 2}
    nine = [(f"net{i}", sample[i::9], 0.6 * full.predict(sample[i::9]).predicted_ms)
            for i in range(9)]
    kernels_only = transfer_predictor([source], sample, target[train], 0.01, nine, info=info,
                                      ranges_from=specs)  # a lookup table: no whole predictor
    errors = kernels_only.info_["transfer"]["networks_priced_by"]["errors_pct"]
    assert sorted(errors) == ["kernel map", "sample alone"]
