"""LatencyPredictor: one object fitted on a dataset (kernel models, composition, fusion rules,
call overhead, training ranges, fit summary), saved and loaded in one call each, predicting
networks with what lay outside the training range; and a predictor folder as untrusted input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from cli_run import run
from sklearn.model_selection import KFold

from latbench.bench.fusion import FusionRules
from latbench.bench.ops import OpSpec
from latbench.bench.runners import RunSettings
from latbench.bench.store import LatencyDataset, LatencyRecord
from latbench.cli.predictor import _range_text
from latbench.errors import DatasetError, PredictorError
from latbench.predictor.evaluate import error_metrics
from latbench.predictor.features import kernel_cost, training_pairs
from latbench.predictor.io import FORMAT_VERSION, MANIFEST, read_manifest
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.model_level import Composition
from latbench.predictor.models import LinearKernelPredictor, get_predictor_class
from latbench.predictor.training import select_records

ROOT = Path(__file__).resolve().parents[2]
MACRO = ROOT / "datasets" / "xeon-2core-onnxruntime-1t-nasbench-macro"
TINY_ONNX = ROOT / "tests" / "data" / "predictors" / "tiny.onnx"


def small_dataset(path: Path, seed: int = 0) -> Path:
    """Op records of convs (30) and linears (4, too few to cross-validate), no networks."""
    rng = np.random.default_rng(seed)
    specs = [OpSpec("conv", h=int(h), w=int(h), cin=int(c), cout=int(c), kernel=3)
             for h, c in zip(rng.choice([8, 16], 30), rng.integers(8, 48, 30), strict=True)]
    specs += [OpSpec("linear", cin=int(c), cout=10) for c in (64, 128, 256, 512)]
    records = [LatencyRecord.for_op(s, device="box", runtime="onnxruntime", settings="t1",
                                    runtime_version="1.0",
                                    min_ms=0.02 + 2e-9 * kernel_cost(s).flops,
                                    median_ms=0.03 + 2e-9 * kernel_cost(s).flops,
                                    overhead_ms=0.01)
               for s in specs]
    dataset = LatencyDataset.create(path, {"run_settings": RunSettings(threads=1).__dict__})
    dataset.append(records)
    return path


@pytest.fixture(scope="module")
def macro_linear(tmp_path_factory) -> tuple[LatencyPredictor, Path]:
    predictor = LatencyPredictor("linear").fit(MACRO)
    return predictor, predictor.save(tmp_path_factory.mktemp("lp") / "linear")


@pytest.fixture(scope="module")
def xgboost_dir(tmp_path_factory) -> Path:
    """A small xgboost predictor saved from the small dataset (for the loading tests)."""
    root = tmp_path_factory.mktemp("xgb")
    predictor = LatencyPredictor("xgboost", {"n_estimators": 10, "max_depth": 3, "n_jobs": 1},
                                 cv_folds=0)
    return predictor.fit(small_dataset(root / "data")).save(root / "pred")


# --- fit ----------------------------------------------------------------------------------------
def test_fit_learns_everything_and_summarises_it(macro_linear) -> None:
    predictor, path = macro_linear
    summary = predictor.fit_summary_
    ops = select_records(LatencyDataset.open(MACRO).records())
    specs, ms, overhead = training_pairs(ops, "min_ms")
    kinds = sorted({s.kind for s in specs})
    assert predictor.kinds == kinds == ["add", "conv", "dwconv", "linear", "mbconv", "pool"]
    assert predictor.call_overhead_ms_ == overhead > 0
    assert predictor.statistic == "min_ms" and predictor.device and predictor.runtime
    assert predictor.run_settings() == RunSettings(**LatencyDataset.open(MACRO).card[
        "run_settings"])
    # per kind: kernels, 5-fold error of the kernel model on that kind's records, the range
    for kind in kinds:
        rows = [i for i, s in enumerate(specs) if s.kind == kind]
        entry = summary["kinds"][kind]
        assert entry["kernels"] == len(rows) == predictor.n_train[kind]
        predicted = np.empty(len(rows))
        for train, test in KFold(5, shuffle=True, random_state=0).split(rows):
            model = LinearKernelPredictor().fit([specs[rows[i]] for i in train],
                                                ms[[rows[i] for i in train]])
            predicted[test] = model.predict([specs[rows[i]] for i in test])
        expected = error_metrics(predicted, ms[rows])
        assert entry["cv"] == {"folds": 5, "rmspe_pct": pytest.approx(expected["rmspe_pct"]),
                               "within10": pytest.approx(expected["within10"])}
        flops = [kernel_cost(specs[i]).flops for i in rows]
        assert entry["range"]["flops"] == [min(flops), max(flops)]
        if kind != "linear":
            assert entry["range"]["h"] == [min(specs[i].h for i in rows),
                                           max(specs[i].h for i in rows)]
    # the composition's calibration on the dataset's 60 networks, and the search margin
    composition = predictor.composition_.summary
    assert summary["calibration"]["networks"] == 60 == len(predictor.calibration_keys)
    assert summary["calibration"]["rmspe_pct_loo"] == composition["rmspe_pct_loo"]
    assert summary["calibration"]["terms"] == predictor.composition_.terms
    assert "per_kernel" in summary["calibration"]["terms"]
    assert summary["safety_margin"] == predictor.safety_margin() == \
        composition["underprediction_p95_loo_pct"] / 100
    # all of it in the manifest
    manifest = read_manifest(path)
    assert manifest["format_version"] == FORMAT_VERSION == 2
    assert manifest["fit_summary"] == json.loads(json.dumps(summary))
    assert manifest["training_ranges"]["conv"]["cin"] == list(
        predictor.training_ranges_["conv"]["cin"])


def test_fit_keeps_how_each_budget_statistic_runs_above_the_learned_one(macro_linear,
                                                                        tmp_path: Path) -> None:
    """The median and p90 of the dataset's 60 networks sit above their minimum; the search
    scales a min_ms predictor by the 95th percentile of that ratio. A reloaded predictor keeps
    it."""
    predictor, saved = macro_linear
    records = LatencyDataset.open(MACRO).records()
    nets = records[records["subject"] == "network"]
    gaps = predictor.info_["statistic_gaps"]
    for statistic in ("median_ms", "p90_ms", "mean_ms"):
        ratio = (nets[statistic] / nets["min_ms"]).to_numpy()
        assert gaps[statistic]["source"] == "networks" and gaps[statistic]["n"] == len(nets)
        assert gaps[statistic]["p95"] == pytest.approx(np.percentile(ratio, 95))
        assert predictor.statistic_gap(statistic) == pytest.approx(np.percentile(ratio, 95))
    assert predictor.statistic_gap("min_ms") == 1.0
    assert 1.0 < predictor.statistic_gap("median_ms") < predictor.statistic_gap("p90_ms")
    assert LatencyPredictor.load(saved).statistic_gap("p90_ms") == \
        predictor.statistic_gap("p90_ms")


def test_a_p90_predictor_learns_the_p90(tmp_path: Path) -> None:
    p90 = LatencyPredictor("linear", cv_folds=0).fit(MACRO, statistic="p90_ms")
    median = LatencyPredictor("linear", cv_folds=0).fit(MACRO, statistic="median_ms")
    assert p90.statistic == "p90_ms"
    assert p90.statistic_gap("median_ms") < 1.0  # the median runs below the p90
    from latbench.bench.spaces import get_space

    space = get_space("nasbench-macro")
    for code in _macro_archs():
        ops = space.ops(space.decode(code))
        assert p90.predict(ops).predicted_ms > median.predict(ops).predicted_ms


def test_a_predictor_without_gaps_names_the_fix(tmp_path: Path) -> None:
    predictor = LatencyPredictor("linear", cv_folds=0).fit(small_dataset(tmp_path / "d"))
    assert predictor.info_["statistic_gaps"]["median_ms"]["source"] == "kernels"
    del predictor.info_["statistic_gaps"]
    with pytest.raises(PredictorError, match="learned min_ms and does not know how p90_ms "
                                             "relates to it .*refit it"):
        predictor.statistic_gap("p90_ms")


def test_a_statistic_no_record_carries_is_refused(tmp_path: Path) -> None:
    """benchmark_model prints no p90: a dataset without it cannot train a p90 predictor."""
    records = LatencyDataset.open(small_dataset(tmp_path / "d")).records()
    with pytest.raises(DatasetError, match="no operator record carries p90_ms"):
        training_pairs(records, "p90_ms")


def test_save_load_round_trip(macro_linear, tmp_path: Path) -> None:
    predictor, path = macro_linear
    loaded = LatencyPredictor.load(path)
    assert loaded.path == path
    for name in ("call_overhead_ms_", "training_ranges_", "info_", "fit_summary_", "attach_"):
        assert getattr(loaded, name) == getattr(predictor, name), name
    assert loaded.composition_ == predictor.composition_
    nets = LatencyDataset.open(MACRO).card["network_kernels"]
    for keys in list(nets.values())[:5]:
        kernels = [OpSpec.from_key(k) for k in keys]
        assert loaded.predict(kernels) == predictor.predict(kernels)
    assert loaded.predict(TINY_ONNX) == predictor.predict(TINY_ONNX.read_bytes())
    again = loaded.save(tmp_path / "again")
    first, second = read_manifest(path), read_manifest(again)
    first.pop("created"), second.pop("created")
    assert first == second


def test_fit_resets_what_an_earlier_fit_learned(tmp_path: Path) -> None:
    rules = FusionRules(alpha=0.5, fused=frozenset(), tested=frozenset({("linear", "relu")}))
    predictor = LatencyPredictor("linear", cv_folds=0).fit(MACRO, fusion=rules)
    predictor.save(tmp_path / "first")
    assert predictor.attach_ is not None and predictor.calibration_keys
    assert predictor.composition_.kind_scale and predictor.path == tmp_path / "first"

    other = small_dataset(tmp_path / "other")
    predictor.fit(other, statistic="median_ms")
    fresh = LatencyPredictor("linear", cv_folds=0).fit(other, statistic="median_ms")
    assert predictor.kinds == fresh.kinds == ["conv", "linear"]
    assert predictor.composition_ == fresh.composition_ == Composition()
    assert predictor.attach_ is None and predictor.fusion_rules_ is None
    assert predictor.path is None
    assert predictor.training_ranges_ == fresh.training_ranges_
    assert predictor.info_ == fresh.info_ and predictor.device == "box"
    assert predictor.manifest() == fresh.manifest()
    probe = [OpSpec("conv", h=8, w=8, cin=16, cout=16, kernel=3), OpSpec("linear", cin=64,
                                                                        cout=10)]
    assert predictor.predict(probe) == fresh.predict(probe)
    # a fit that fails leaves nothing of the one before
    with pytest.raises(PredictorError, match="unknown statistic"):
        predictor.fit(other, statistic="p99_ms")
    assert not hasattr(predictor, "kernels_")
    with pytest.raises(PredictorError, match="not fitted"):
        predictor.predict(probe)


def test_too_few_records_are_not_cross_validated(tmp_path: Path, capsys) -> None:
    data = small_dataset(tmp_path / "data")
    predictor = LatencyPredictor("linear").fit(data)
    cv = predictor.fit_summary_["kinds"]
    assert cv["conv"]["cv"]["folds"] == 5
    assert cv["linear"]["cv"] == {"skipped": "4 records, 5-fold needs 10"}
    assert predictor.fit_summary_["calibration"] == {"networks": 0}
    assert predictor.safety_margin() == 0.03
    # a lookup table cannot price what it did not see: not cross-validated, and said so
    table = LatencyPredictor("lut").fit(data)
    assert table.fit_summary_["kinds"]["conv"]["cv"] == {
        "skipped": "the model cannot price kernels it was not fitted on"}


def test_predict_names_kernels_outside_the_training_range(macro_linear) -> None:
    predictor, _ = macro_linear
    conv_range = predictor.training_ranges_["conv"]
    inside = OpSpec("conv", h=16, w=16, cin=int(conv_range["cin"][0]),
                    cout=int(conv_range["cout"][0]), kernel=3)
    wide = OpSpec("conv", h=16, w=16, cin=int(conv_range["cin"][1]) * 2,
                  cout=int(conv_range["cout"][0]), kernel=3)
    large = OpSpec("conv", h=int(conv_range["h"][1]) * 4, w=int(conv_range["w"][1]) * 4,
                   cin=int(conv_range["cin"][0]), cout=int(conv_range["cout"][0]), kernel=3)
    prediction = predictor.predict([inside, wide, large])
    outside = {(o.kernel, o.feature) for o in prediction.out_of_range}
    assert (wide.key(), "cin") in outside and (large.key(), "h") in outside
    assert (large.key(), "w") in outside
    assert not {o for o in outside if o[0] == inside.key()}
    cin = next(o for o in prediction.out_of_range if o.feature == "cin")
    assert cin.value == wide.cin and [cin.low, cin.high] == list(conv_range["cin"])
    assert f"cin {wide.cin} > {conv_range['cin'][1]:g}" in cin.describe()
    as_json = prediction.to_json()["out_of_range"]
    assert {"kernel": wide.key(), "feature": "cin", "value": float(wide.cin),
            "trained_range": list(conv_range["cin"])} in as_json


def test_constructor_refusals() -> None:
    with pytest.raises(PredictorError, match="unknown predictor 'nope'"):
        LatencyPredictor("nope")
    with pytest.raises(PredictorError, match="'xgboost' has no parameter 'max_dept'"):
        LatencyPredictor("xgboost", {"max_dept": 3})
    with pytest.raises(PredictorError, match="'xgboost' parameter 'max_depth' must be int"):
        LatencyPredictor("xgboost", {"max_depth": "3"})
    with pytest.raises(PredictorError, match="not with a KernelPredictor"):
        LatencyPredictor(LinearKernelPredictor(), {"ridge": 1.0})
    with pytest.raises(PredictorError, match="cv_folds"):
        LatencyPredictor("linear", cv_folds=1)


def test_a_kernel_predictor_instance_is_cloned(tmp_path: Path) -> None:
    template = get_predictor_class("xgboost")(n_estimators=5, n_jobs=1)
    predictor = LatencyPredictor(template, cv_folds=0).fit(small_dataset(tmp_path / "d"))
    assert predictor.kernels_ is not template and not hasattr(template, "models_")
    assert predictor.kernels_.get_params() == template.get_params()


# --- model files: the space path and the file path agree; the range check --------------------
def _macro_archs() -> list[str]:
    """A seeded sample of NAS-Bench-Macro plus identity-only, all-e3, all-e6 and the issue's."""
    from latbench.bench.spaces import get_space

    space = get_space("nasbench-macro")
    rng = np.random.default_rng(5)
    return [space.encode(space.sample(rng)) for _ in range(5)] + \
        ["00000000", "11111111", "22222222", "12120022"]


@pytest.mark.parametrize("code", _macro_archs())
def test_space_and_onnx_file_give_the_same_prediction(macro_linear, tmp_path: Path,
                                                      code: str) -> None:
    """A predictor fitted on a plan that measured the space's blocks (here the committed
    nasbench-macro dataset, calibrated on 60 networks) prices an architecture's ONNX export
    exactly as its space description: the same kernels, the same milliseconds."""
    from latbench.bench.spaces import get_space

    _, path = macro_linear
    predictor = LatencyPredictor.load(path)  # what decides the grouping survives saving
    space = get_space("nasbench-macro")
    arch = space.decode(code)
    model = tmp_path / f"{code}.onnx"
    model.write_bytes(space.to_onnx(arch))
    from_space, from_file = predictor.predict(space.ops(arch)), predictor.predict(model)
    assert [s.key() for s, _ in from_file.kernels] == [s.key() for s in space.ops(arch)]
    assert from_file.predicted_ms == from_space.predicted_ms
    assert from_file.coverage == from_space.coverage == 1.0


def test_the_demo_plan_measures_every_block_of_its_space() -> None:
    """The demo's `quick` plan holds every NAS-Bench-Macro block, so a predictor fitted on it
    prices the space's exports whole (`block_keys_` are the mbconv kernels it trained on)."""
    from latbench.bench.plans import build_specs, load_plan
    from latbench.bench.spaces import get_space
    from latbench.predictor.latency_predictor import _block_keys

    blocks = {s.key() for s in get_space("nasbench-macro").layer_specs() if s.kind == "mbconv"}
    assert len(blocks) == 12 and blocks <= _block_keys(build_specs(load_plan("quick")))


def test_blocks_are_whole_only_where_the_predictor_measured_them(macro_linear,
                                                                  tmp_path: Path) -> None:
    predictor, _ = macro_linear
    parsed = predictor.parse(TINY_ONNX)  # its two MBConv blocks are not in the dataset
    assert [s.kind for s in parsed.kernels].count("dwconv") == 2
    assert not {s.key() for s in parsed.kernels} & predictor.block_keys_
    assert predictor.block_keys_ == {s.key() for s in training_pairs(
        select_records(LatencyDataset.open(MACRO).records()), "min_ms")[0] if s.kind == "mbconv"}
    blocks = [OpSpec("mbconv", h=16, w=16, cin=16, cout=24, kernel=3, stride=2, expand=3,
                     act="relu"),
              OpSpec("mbconv", h=8, w=8, cin=24, cout=24, kernel=5, expand=3, act="relu")]
    data = small_dataset(tmp_path / "data")
    records = [LatencyRecord.for_op(s, device="box", runtime="onnxruntime", settings="t1",
                                    runtime_version="1.0", min_ms=0.1, median_ms=0.1,
                                    overhead_ms=0.01)
               for s in [*blocks, OpSpec("pool", h=8, w=8, cin=24, pool="gavg")]]
    LatencyDataset.open(data).append(records)
    with_blocks = LatencyPredictor("linear", cv_folds=0).fit(data)
    assert with_blocks.block_keys_ == {b.key() for b in blocks}
    kernels = [s for s, _ in with_blocks.predict(TINY_ONNX).kernels]
    assert [s.kind for s in kernels] == ["conv", "mbconv", "mbconv", "pool", "linear"]
    assert kernels[1:3] == blocks
    loaded = LatencyPredictor.load(with_blocks.save(tmp_path / "pred"))
    assert loaded.block_keys_ == with_blocks.block_keys_
    assert read_manifest(tmp_path / "pred")["block_keys"] == sorted(loaded.block_keys_)


def _conv_model(*specs: OpSpec) -> bytes:
    from latbench.bench.export.graph import chain_graph
    from latbench.bench.export.to_onnx import to_onnx

    return to_onnx(chain_graph(list(specs)))


def test_range_check_flags_a_large_conv_and_passes_a_small_one(tmp_path: Path) -> None:
    predictor = LatencyPredictor("linear", cv_folds=0).fit(small_dataset(tmp_path / "d"))
    conv_range = predictor.training_ranges_["conv"]
    assert conv_range["h"] == (8.0, 16.0) and conv_range["cin"][1] < 64
    small = OpSpec("conv", h=16, w=16, cin=16, cout=16, kernel=3)
    large = OpSpec("conv", h=224, w=224, cin=16, cout=16, kernel=3)

    inside = predictor.predict(_conv_model(small))
    assert inside.in_range == (True,) and inside.out_of_range == () and inside.coverage == 1.0
    outside = predictor.predict(_conv_model(large))
    assert outside.in_range == (False,) and outside.coverage == 0.0
    assert {o.feature for o in outside.out_of_range} == {"h", "w", "flops"}
    both = predictor.predict(_conv_model(small, large.with_(h=16, w=16, cin=16, cout=96)))
    (ms_in, ms_out) = (ms for _, ms in both.kernels)
    assert both.in_range == (True, False)
    assert both.coverage == pytest.approx(ms_in / (ms_in + ms_out))
    as_json = both.to_json()
    assert as_json["coverage"] == both.coverage and not as_json["partial"]
    assert [(k["kind"], k["in_range"]) for k in as_json["kernels"]] == [("conv", True),
                                                                         ("conv", False)]
    assert as_json["kernels"][0]["key"] == small.key()


def test_a_predictor_without_ranges_cannot_tell() -> None:
    old = LatencyPredictor.load(ROOT / "tests" / "data" / "predictors" / "v2" / "linear")
    prediction = old.predict(TINY_ONNX)
    assert prediction.coverage is None and set(prediction.in_range) == {None}
    assert {k["in_range"] for k in prediction.to_json()["kernels"]} == {None}


def test_partial_predictions_name_what_they_left_out(macro_linear) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from latbench.errors import UnsupportedModelError

    predictor, _ = macro_linear
    weights = [numpy_helper.from_array(np.ones(shape, np.float32), name)
               for name, shape in (("w", (32, 3, 3, 3)), ("w2", (32, 32, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Softmax", ["r"], ["s"], axis=1),
             helper.make_node("Conv", ["s", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Softmax", ["c2"], ["y"], axis=1)]
    graph = helper.make_graph(
        nodes, "partial", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 32, 32])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = model.SerializeToString()
    with pytest.raises(UnsupportedModelError, match=r"Softmax \(2 nodes\)"):
        predictor.predict(data)
    partial = predictor.predict(data, allow_partial=True)
    assert partial.partial and partial.skipped_ops == (("Softmax", 2),)
    assert [(s.kind, s.act) for s, _ in partial.kernels] == [("conv", "relu"), ("conv", "none")]
    assert partial.to_json()["skipped_ops"] == {"Softmax": 2}
    assert partial.predicted_ms == predictor.predict([s for s, _ in partial.kernels]).predicted_ms


# --- the command line ---------------------------------------------------------------------------

def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("latbench: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_fit_command_prints_the_summary(tmp_path: Path, capsys) -> None:
    out = tmp_path / "pred"
    code, text, _ = run(capsys, "predictor", "fit", "--data", str(MACRO), "--out", str(out),
                        "--predictor", "linear")
    assert code == 0
    for needle in ("CV RMSPE %", "CV within 10%", "training range", "mbconv", "MFLOPs",
                   "calibration on 60 measured networks", "leave-one-out",
                   "composition terms kept: ", "per_kernel ", " ms per kernel",
                   "safety margin for searches: "):
        assert needle in text, needle
    code, text, _ = run(capsys, "predictor", "fit", "--data", str(MACRO), "--out", str(out),
                        "--predictor", "linear", "--json", "--cv-folds", "3")
    printed = json.loads(text)
    assert printed["predictor"] == str(out) and printed["statistic"] == "min_ms"
    assert printed["summary"]["kinds"]["conv"]["cv"]["folds"] == 3
    # the computations trained on: pool types of the dataset's pools, none for a conv
    pools = printed["summary"]["kinds"]["pool"]["values"]["pool"]
    assert pools and set(pools) <= {"avg", "max", "gavg"} and pools == sorted(pools)
    assert printed["summary"]["kinds"]["conv"]["values"] == {}
    assert _range_text({"h": [8.0, 32.0]}, {"pool": ["gavg", "max"]}) == "pool gavg/max, h 8-32"
    # every calibration network the robust fit down-weighted is listed with its weight, and
    # appears in the printed summary
    weights = LatencyPredictor.load(out).composition_.summary["weights"]
    downweighted = printed["summary"]["calibration"]["downweighted"]
    assert len(weights) == 60 and len(downweighted) == sum(w < 0.5 for w in weights)
    assert all(0 <= w < 0.5 for w in downweighted.values())
    assert printed["summary"] == read_manifest(out)["fit_summary"]


def test_fit_says_which_kinds_were_not_cross_validated(tmp_path: Path, capsys) -> None:
    code, text, _ = run(capsys, "predictor", "fit", "--data",
                        str(small_dataset(tmp_path / "d")), "--out", str(tmp_path / "p"),
                        "--predictor", "linear")
    assert code == 0
    assert "not cross-validated: linear (4 records, 5-fold needs 10)" in text
    assert "the dataset holds no measured networks" in text


def test_predict_command_json(macro_linear, capsys) -> None:
    _, path = macro_linear
    code, text, _ = run(capsys, "predict", str(TINY_ONNX), "--predictor", str(path), "--json")
    assert code == 0
    printed = json.loads(text)
    assert printed["predicted_ms"] == LatencyPredictor.load(path).predict(TINY_ONNX).predicted_ms
    assert isinstance(printed["out_of_range"], list) and printed["n_kernels"] == 10


@pytest.mark.parametrize(("params", "needles"), [
    ('{"max_dept": 3}', ("predictor 'xgboost' has no parameter 'max_dept'",)),
    ('{"n_estimators": "many"}', ("'xgboost' parameter 'n_estimators' must be int",
                                  "'many'")),
    ('[3]', ("parameters of predictor 'xgboost' must be a JSON object",)),
])
def test_fit_refuses_bad_params(tmp_path: Path, capsys, params: str, needles) -> None:
    code, _, err = run(capsys, "predictor", "fit", "--data", str(MACRO), "--out",
                       str(tmp_path / "p"), "--params", params)
    one_line_error(code, err, *needles)
    assert not (tmp_path / "p").exists()


def test_library_refusals_of_a_value_are_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "predictor", "fit", "--data", str(MACRO), "--out",
                       str(tmp_path / "p"), "--predictor", "rf", "--params",
                       '{"n_estimators": 0}')
    one_line_error(code, err, "rf could not be fitted", "n_estimators")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(("params", "needles"), [
    ('{"linear": {"ridge": "big"}}', ("'linear' parameter 'ridge' must be float",)),
    ('{"xgboost": {"max_depth": 2}}', ("parameters given for 'xgboost'", "linear")),
    ('["linear"]', ("must be a JSON object",)),
])
def test_compare_refuses_bad_params_before_measuring(tmp_path: Path, capsys, params: str,
                                                     needles) -> None:
    code, _, err = run(capsys, "predictor", "compare", "--data", str(MACRO), "--predictors",
                       "linear", "--networks", "nasbench-macro:2", "--out",
                       str(tmp_path / "cmp"), "--params", params)
    one_line_error(code, err, *needles)
    assert not (tmp_path / "cmp" / "networks").exists()


def test_adapt_refuses_bad_params_before_measuring(tmp_path: Path, capsys) -> None:
    data = small_dataset(tmp_path / "data")
    before = len(LatencyDataset.open(data).records())
    code, _, err = run(capsys, "predictor", "adapt", "--data", str(data), "--out",
                       str(tmp_path / "p"), "--predictor", "linear", "--params",
                       '{"alpha": 1.0}')
    one_line_error(code, err, "predictor 'linear' has no parameter 'alpha'", "ridge")
    assert len(LatencyDataset.open(data).records()) == before
    assert not (tmp_path / "p").exists()


# --- loading an untrusted folder ----------------------------------------------------------------
def _edit(path: Path, change) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    change(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


BAD_MANIFESTS = {
    "kinds-as-list": (lambda m: m.update(kinds=list(m["kinds"])),
                      ("field 'kinds' must be a non-empty object", "got a list")),
    "kinds-missing": (lambda m: m.pop("kinds"), ("field 'kinds' is missing",)),
    "overhead-text": (lambda m: m.update(call_overhead_ms="fast"),
                      ("field 'call_overhead_ms' must be a finite, non-negative number",
                       "got a string")),
    "overhead-negative": (lambda m: m.update(call_overhead_ms=-1),
                          ("field 'call_overhead_ms'",)),
    "n_train-text": (lambda m: m["kinds"]["conv"].update(n_train="30"),
                     ("field 'kinds.conv.n_train' must be a non-negative integer", "'30'")),
    "n_train-float": (lambda m: m["kinds"]["conv"].update(n_train=30.5),
                      ("field 'kinds.conv.n_train'",)),
    "entry-not-object": (lambda m: m["kinds"].update(conv="kernels/conv.json"),
                         ("field 'kinds.conv' must be an object",)),
    "unknown-kind": (lambda m: m["kinds"].update(gelu=m["kinds"]["conv"]),
                     ("unknown kernel kind 'gelu'",)),
    "kind-scale-text": (lambda m: m.update(kind_scale={"conv": "1.1"}),
                        ("field 'kind_scale'",)),
    "params-list": (lambda m: m.update(params=[1]), ("field 'params' must be an object",)),
    "params-unknown": (lambda m: m["params"].update(depth=3),
                       ("field 'params'", "'xgboost' has no parameter 'depth'")),
    "feature-version-text": (lambda m: m.update(feature_version="2"),
                             ("field 'feature_version' must be an integer",)),
    "unknown-term": (lambda m: m.update(composition_terms={"cache_mb": 0.1}),
                     ("field 'composition_terms' names unknown term 'cache_mb'",)),
    "attach-text": (lambda m: m.update(fusion={"attach": "conv+relu"}), ("field 'fusion'",)),
    "absolute-file": (lambda m: m["kinds"]["conv"].update(file="/etc/passwd"),
                      ("field 'kinds.conv.file'", "'/etc/passwd'",
                       "must be a relative path inside the predictor folder")),
    "dotdot-file": (lambda m: m["kinds"]["conv"].update(file="../other/kernels/conv.json"),
                    ("field 'kinds.conv.file'", "relative path inside")),
    "manifest-a-list": (lambda m: (m.clear(),), ("is not a latbench predictor manifest",)),
    "block-keys-text": (lambda m: m.update(block_keys="mbconv:n=1"),
                        ("field 'block_keys' must be a list of kernel keys", "got str")),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_is_one_line_naming_the_field(xgboost_dir: Path, tmp_path: Path, capsys,
                                                    case: str) -> None:
    change, needles = BAD_MANIFESTS[case]
    folder = _copy(xgboost_dir, tmp_path / "pred")
    _copy(xgboost_dir, tmp_path / "other")  # a real model a `..` entry could reach
    _edit(folder, change)
    with pytest.raises(PredictorError) as info:
        LatencyPredictor.load(folder)
    for needle in needles:
        assert needle in str(info.value)
    code, _, err = run(capsys, "predict", str(TINY_ONNX), "--predictor", str(folder))
    one_line_error(code, err, *needles)


def test_a_model_file_linked_from_outside_is_refused(xgboost_dir: Path, tmp_path: Path,
                                                     capsys) -> None:
    folder = _copy(xgboost_dir, tmp_path / "pred")
    other = _copy(xgboost_dir, tmp_path / "other")
    (folder / "kernels" / "conv.json").unlink()
    os.symlink(other / "kernels" / "conv.json", folder / "kernels" / "conv.json")
    code, _, err = run(capsys, "predict", str(TINY_ONNX), "--predictor", str(folder))
    one_line_error(code, err, "field 'kinds.conv.file'", "points outside the predictor folder")


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "is not a saved xgboost model"),
    ('{"learner": 1}', "is not a saved xgboost model"),
    ("[1, 2, 3]", "is not a saved xgboost model"),
    ("", "is not a saved xgboost model"),
])
def test_corrupted_xgboost_file_is_one_line(xgboost_dir: Path, tmp_path: Path, capsys,
                                            content: str, needle: str) -> None:
    folder = _copy(xgboost_dir, tmp_path / "pred")
    (folder / "kernels" / "conv.json").write_text(content)
    code, _, err = run(capsys, "predict", str(TINY_ONNX), "--predictor", str(folder))
    one_line_error(code, err, "conv.json", needle)


@pytest.mark.parametrize("name", ["rf", "linear", "lut"])
def test_corrupted_model_files_of_other_members(tmp_path: Path, name: str, capsys) -> None:
    predictor = LatencyPredictor(name, {"n_estimators": 3} if name == "rf" else None,
                                 cv_folds=0)
    folder = predictor.fit(small_dataset(tmp_path / "d")).save(tmp_path / "pred")
    (model,) = [p for p in (folder / "kernels").iterdir() if p.name.startswith("conv.")
                and "baseline" not in p.name]
    model.write_bytes(b"\x00garbage")
    code, _, err = run(capsys, "predict", str(TINY_ONNX), "--predictor", str(folder))
    one_line_error(code, err, str(model))
