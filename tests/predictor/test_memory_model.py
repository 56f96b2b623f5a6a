"""predictor/memory.py: the peak-memory model's fit on calibration networks (the phases' maximum,
priors kept where the networks cannot tell), its uncalibrated prior, its JSON (and the sum-form
JSON saved before the phases), how a LatencyPredictor fits, saves and loads it, `latbench
predict` reporting peak memory beside latency (text and --json), and held-out scoring of
memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_run import run

from latbench.bench.campaign import Subject
from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.memory import CARD_KEY, MemoryProfile, network_memory, profile_model
from latbench.bench.ops import OpSpec
from latbench.bench.runners import RunSettings
from latbench.bench.store import LatencyDataset, LatencyRecord
from latbench.errors import PredictorError
from latbench.predictor.evaluate import memory_evaluation
from latbench.predictor.features import kernel_cost
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.memory import PHASES, RESIDENT, MemoryModel, fit_memory

OLD_PREDICTOR = Path(__file__).resolve().parents[1] / "data" / "predictors" / "v2" / "linear"
MIB = 1 << 20


def profile(conv: float, other: float, live: float, total: float, max_conv: float = 0.0,
            max_weight: float = 0.0, ops: int = 1) -> MemoryProfile:
    return MemoryProfile(weight_bytes=int(conv + other), conv_weight_bytes=int(conv),
                         max_weight_bytes=int(max(max_weight, max_conv)),
                         max_conv_weight_bytes=int(max_conv),
                         activation_peak_bytes=int(live), activation_total_bytes=int(total),
                         input_bytes=0, output_bytes=0, steps=ops, peak_step="x",
                         model_size_bytes=int(conv + other))


# A runtime like ONNX Runtime on x86 (docs/predictors.md, "Peak memory"): its peaks come from
# loading for weight-heavy networks and from running for activation-heavy ones.
TRUTH = MemoryModel(20 * MIB, {"weight_bytes": 1.0, "ops": 8000.0},
                    {"rewrite": {"conv_weight_bytes": 1.0, "max_conv_weight_bytes": 3.0},
                     "load": {"max_weight_bytes": 1.0},
                     "run": {"activation_peak_bytes": 1.5, "activation_total_bytes": 0.1}})


def draw(rng: np.random.Generator) -> MemoryProfile:
    conv, other, live = rng.uniform(0.5, 40, 3) * MIB
    max_conv = conv * rng.uniform(0.05, 0.4)
    return profile(conv, other, live, live * rng.uniform(2, 10), max_conv,
                   other * rng.uniform(0.1, 0.6), int(rng.integers(20, 400)))


def test_uncalibrated_prior_is_weights_plus_the_larger_of_tensor_and_activations() -> None:
    model = fit_memory([], [])
    assert not model.calibrated and model.constant_bytes == 0
    p = model.predict_profile(profile(3 * MIB, MIB, 2 * MIB, 9 * MIB, MIB, MIB))
    assert p.peak_bytes == 6 * MIB and not p.calibrated  # 3 + 1 weights + 2 live
    assert p.peak_phase == "run" and "uncalibrated" in p.text()
    big = model.predict_profile(profile(3 * MIB, MIB, 2 * MIB, 9 * MIB, 3 * MIB, 3 * MIB))
    assert big.peak_bytes == 7 * MIB and big.peak_phase == "load"  # its 3 MiB tensor's copy


def test_fit_recovers_known_coefficients_and_the_peaking_phase() -> None:
    """Peaks made by a model of known coefficients (loading peaks some networks, running the
    others) come back from the fit, and new networks are predicted within 0.1%."""
    rng = np.random.default_rng(0)
    profiles = [draw(rng) for _ in range(40)]
    peaks = [TRUTH.predict_profile(p).peak_bytes for p in profiles]
    phases = [TRUTH.predict_profile(p).peak_phase for p in profiles]
    assert 5 < phases.count("run") < 35  # both phases are seen
    model = fit_memory(profiles, peaks, [f"n:{i}" for i in range(40)], "rss-hwm")
    assert model.calibrated and len(model.calibration["fitted"]) == 7
    assert model.calibration["peak_phases"] == {p: phases.count(p) for p in set(phases)}
    assert model.constant_bytes == pytest.approx(TRUTH.constant_bytes, rel=1e-3)
    for name, scales in TRUTH.phases.items():
        if name in model.calibration["peak_phases"]:
            for term, value in scales.items():
                assert model.phases[name][term] == pytest.approx(value, rel=0.01, abs=1e-3)
    assert model.calibration["rmspe_pct"] < 0.1 and model.calibration["rmspe_pct_loo"] < 0.1
    for new in [draw(rng) for _ in range(10)]:
        assert model.predict_profile(new).peak_bytes == pytest.approx(
            TRUTH.predict_profile(new).peak_bytes, rel=1e-3)


def test_a_phase_no_network_reaches_stays_near_its_prior() -> None:
    """Convolution networks whose loading always outweighs their activations tell nothing of
    the running phase: its coefficients stay near the prior, not at whatever fits best."""
    rng = np.random.default_rng(1)
    profiles = [profile(c * MIB, 0.1 * MIB, 0.3 * MIB * rng.uniform(1, 3), MIB * rng.uniform(2, 6),
                        c * MIB / 6, ops=int(rng.integers(20, 60)))
                for c in rng.uniform(2, 20, 30)]
    peaks = [TRUTH.predict_profile(p).peak_bytes for p in profiles]
    assert all(TRUTH.predict_profile(p).peak_phase == "rewrite" for p in profiles)
    model = fit_memory(profiles, peaks)
    assert model.calibration["peak_phases"] == {"rewrite": 30}
    assert model.phases["run"]["activation_peak_bytes"] == pytest.approx(
        PHASES["run"]["activation_peak_bytes"], abs=0.1)
    assert model.calibration["rmspe_pct"] < 0.5


def test_a_term_that_does_not_vary_keeps_its_prior_and_few_networks_fit_the_constant() -> None:
    """Networks sharing one classifier (other weights all equal, so weights move with the conv
    weights alone) cannot tell ops from the constant: a term that does not vary keeps its
    prior, and with two networks only the constant is fitted."""
    profiles = [profile(c * MIB, MIB, 2 * MIB, 8 * MIB, c * MIB / 4, ops=30)
                for c in range(1, 11)]
    peaks = [15 * MIB + p.weight_bytes + 3 * p.max_conv_weight_bytes for p in profiles]
    model = fit_memory(profiles, peaks)
    assert "ops" not in model.calibration["fitted"]
    assert "run:activation_peak_bytes" not in model.calibration["fitted"]  # all 2 MiB
    assert model.scales["ops"] == RESIDENT["ops"]
    assert model.calibration["rmspe_pct"] < 0.5
    two = fit_memory(profiles[:2], peaks[:2])  # too few networks for any scale
    assert two.calibration["fitted"] == [] and two.calibrated
    assert dict(two.scales) == RESIDENT and two.phases == PHASES
    with pytest.raises(PredictorError, match="positive"):
        fit_memory(profiles[:2], [1.0, -5.0])


def test_json_round_trip_bad_fields_and_the_sum_form_saved_before() -> None:
    rng = np.random.default_rng(2)
    profiles = [draw(rng) for _ in range(12)]
    model = fit_memory(profiles, [TRUTH.predict_profile(p).peak_bytes for p in profiles], [], "m")
    back = MemoryModel.from_json(json.loads(json.dumps(model.to_json())))
    assert back == model
    with pytest.raises(PredictorError, match="scales"):
        MemoryModel.from_json({"constant_bytes": 1.0, "scales": {"flops": 1.0}})
    with pytest.raises(PredictorError, match="phases"):
        MemoryModel.from_json({"constant_bytes": 1.0, "scales": {"weight_bytes": 1.0},
                               "phases": {"run": {"activation_peak_bytes": "x"}}})
    with pytest.raises(PredictorError, match="JSON object"):
        MemoryModel.from_json([1, 2])
    # a model fitted before the phases: one sum of four terms, predicting as it did then
    old = MemoryModel.from_json({
        "constant_bytes": 12 * MIB, "calibration": {"networks": 34, "method": "rss-hwm"},
        "scales": {"conv_weight_bytes": 2.0, "other_weight_bytes": 1.2,
                   "activation_peak_bytes": 0.4, "activation_total_bytes": 0.1}})
    p = profile(10 * MIB, 5 * MIB, 4 * MIB, 20 * MIB, 2 * MIB)
    predicted = old.predict_profile(p)
    assert predicted.peak_bytes == pytest.approx((12 + 20 + 6 + 1.6 + 2) * MIB)
    assert predicted.calibrated and predicted.peak_phase == "" and predicted.phase_bytes == {}
    assert "runtime constant 12.0" in predicted.text()


def calibrated_dataset(root: Path) -> tuple[Path, list[Subject], dict[str, float]]:
    """Op records of 3x3 convs and pools, plus 8 chain networks of them whose "measured" peaks
    are 12 MiB + 2 x their weights (their weights, and a rewritten copy of them while loading:
    the activations of 8x8 maps never outweigh it), with their figures in the card, as a
    campaign writes them."""
    rng = np.random.default_rng(1)
    ops = [OpSpec("conv", h=8, w=8, cin=int(c), cout=int(c), kernel=3) for c in
           rng.integers(8, 512, 30)] + [OpSpec("pool", h=8, w=8, cin=16, pool="gavg")]
    records = [LatencyRecord.for_op(s, device="box", runtime="onnxruntime", settings="t1",
                                    min_ms=0.01 + 1e-3 * s.cin, overhead_ms=0.005) for s in ops]
    nets = []
    for i, width in enumerate((64, 128, 192, 256, 320, 384, 448, 512)):
        specs = [OpSpec("conv", h=8, w=8, cin=width, cout=width, kernel=3)] * (1 + i % 3)
        nets.append(Subject.chain(f"chain:{i}", "chain", specs))
    figures = network_memory(nets)
    peaks = {}
    for net in nets:
        f = figures[net.key]
        peaks[net.key] = 12 * MIB + 2 * f["weight_bytes"]
        records.append(LatencyRecord.for_network(
            net.key, "chain", device="box", runtime="onnxruntime", settings="t1", min_ms=1.0,
            peak_memory_bytes=int(peaks[net.key]), memory_method="rss-hwm: test",
            model_size_bytes=f["model_size_bytes"]))
    dataset = LatencyDataset.create(root, {"run_settings": RunSettings().__dict__,
                                           CARD_KEY: figures})
    dataset.append(records)
    return root, nets, peaks


def test_latency_predictor_fits_saves_and_loads_its_memory_model(tmp_path: Path) -> None:
    data, nets, peaks = calibrated_dataset(tmp_path / "data")
    predictor = LatencyPredictor("linear", cv_folds=0).fit(data)
    memory = predictor.memory_
    assert memory.calibrated and memory.calibration["networks"] == 8
    assert memory.calibration["method"] == "rss-hwm"
    assert sorted(memory.calibration["keys"]) == sorted(peaks)
    assert memory.calibration["rmspe_pct"] < 0.5 and memory.calibration["peak_phases"] == {
        "rewrite": 8}
    # 1 x weights held + 1 x conv weights while rewriting (the prior draws a little on each)
    assert memory.scales["weight_bytes"] + memory.phases["rewrite"]["conv_weight_bytes"] \
        == pytest.approx(2.0, rel=0.02)
    assert memory.constant_bytes == pytest.approx(12 * MIB, rel=0.02)
    assert predictor.fit_summary_["memory"]["networks"] == 8
    predictor.save(tmp_path / "p")
    loaded = LatencyPredictor.load(tmp_path / "p")
    assert loaded.memory_ == memory
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["memory"]["calibration"]["networks"] == 8


def test_predictors_saved_before_the_memory_model_predict_uncalibrated(tmp_path: Path) -> None:
    old = LatencyPredictor.load(OLD_PREDICTOR)
    assert not old.memory_.calibrated and dict(old.memory_.scales) == RESIDENT
    assert old.memory_.phases == PHASES
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in OLD_PREDICTOR.rglob("*"):
        if path.is_file():
            target = bad / path.relative_to(OLD_PREDICTOR)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["memory"] = {"constant_bytes": "lots", "scales": {}}
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PredictorError, match="manifest.json: memory"):
        LatencyPredictor.load(bad)


CONV = OpSpec("conv", h=16, w=16, cin=16, cout=16, kernel=3)


@pytest.fixture(scope="module")
def uncalibrated(tmp_path_factory) -> Path:
    """A predictor whose dataset holds kernels only: no network peak to calibrate on."""
    root = tmp_path_factory.mktemp("uncalibrated")
    rng = np.random.default_rng(0)
    specs = [OpSpec("conv", h=16, w=16, cin=int(c), cout=int(c), kernel=3)
             for c in rng.integers(8, 48, 30)]
    records = [LatencyRecord.for_op(s, device="box", runtime="onnxruntime", settings="t1",
                                    min_ms=0.02 + 2e-9 * kernel_cost(s).flops, overhead_ms=0.01)
               for s in specs]
    dataset = LatencyDataset.create(root / "data", {"run_settings": RunSettings().__dict__})
    dataset.append(records)
    return LatencyPredictor("linear", cv_folds=0).fit(root / "data").save(root / "predictor")


def test_uncalibrated_memory_is_the_graphs_own(capsys, uncalibrated: Path, tmp_path: Path) -> None:
    model = tmp_path / "conv.onnx"
    model.write_bytes(to_onnx(chain_graph([CONV])))
    code, out, _ = run(capsys, "predict", str(model), "--predictor", str(uncalibrated), "--json")
    assert code == 0
    reply = json.loads(out)
    memory = reply["memory"]
    weights = (16 * 16 * 9 + 16) * 4          # 9280 bytes of conv weights and bias
    activations = 2 * 16 * 16 * 16 * 4       # the input and the conv's output, live together
    assert memory["calibrated"] is False
    assert memory["peak_bytes"] == weights + activations == 42048
    assert reply["model_size_bytes"] == model.stat().st_size == memory["model_size_bytes"]
    assert reply["predicted_ms"] > 0  # latency is still there
    code, out, _ = run(capsys, "predict", str(model), "--predictor", str(uncalibrated))
    assert code == 0 and "predicted latency:" in out
    line = next(x for x in out.splitlines() if x.startswith("predicted peak memory:"))
    assert "uncalibrated" in line and "model file" in line


def test_calibrated_memory_follows_the_measured_peaks(capsys, tmp_path: Path) -> None:
    data, _, _ = calibrated_dataset(tmp_path / "data")
    LatencyPredictor("linear", cv_folds=0).fit(data).save(tmp_path / "predictor")
    model = tmp_path / "wide.onnx"
    model.write_bytes(to_onnx(chain_graph([OpSpec("conv", h=8, w=8, cin=300, cout=300,
                                                  kernel=3)] * 2)))
    figures = profile_model(model)
    # the dataset's peaks are 12 MiB + 2 x weights
    expected = 12 * MIB + 2 * figures.weight_bytes
    code, out, _ = run(capsys, "predict", str(model), "--predictor", str(tmp_path / "predictor"),
                       "--json")
    memory = json.loads(out)["memory"]
    assert code == 0 and memory["calibrated"] is True
    assert memory["peak_bytes"] == pytest.approx(expected, rel=0.01)
    assert memory["constant_bytes"] == pytest.approx(12 * MIB, rel=0.01)
    code, out, _ = run(capsys, "predict", str(model), "--predictor", str(tmp_path / "predictor"))
    assert "predicted peak memory:" in out and "runtime constant" in out


def test_held_out_memory_scores_per_family(tmp_path: Path) -> None:
    data, nets, peaks = calibrated_dataset(tmp_path / "data")
    predictor = LatencyPredictor("linear", cv_folds=0).fit(data)
    # four measured as predicted, four 25% above: half within 10%, the rest -20% each
    measured = {n.key: peaks[n.key] * (1.0 if i % 2 else 1.25) for i, n in enumerate(nets)}
    result = memory_evaluation(predictor, nets, measured)
    assert result is not None and result.calibrated
    m = result.metrics["chain"]
    assert m["n"] == 8 and m["within10"] == pytest.approx(0.5)
    assert m["bias_pct"] == pytest.approx(-10.0, abs=0.5)
    assert memory_evaluation(predictor, nets, {}) is None  # nothing measured: no memory report
