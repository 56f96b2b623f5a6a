"""`latbench predict` as a user runs it on a model file: the range check on stderr and the
coverage in --json, symbolic input dims and --input-shape, --allow-partial, and files it must
refuse in one line without writing anything."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_run import run
from onnx import TensorProto, helper, numpy_helper

from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.ops import OpSpec
from latbench.bench.runners import RunSettings
from latbench.bench.store import LatencyDataset, LatencyRecord
from latbench.predictor.features import kernel_cost
from latbench.predictor.latency_predictor import LatencyPredictor

OLD_PREDICTOR = Path(__file__).resolve().parent / "data" / "predictors" / "v2" / "linear"
SMALL = OpSpec("conv", h=16, w=16, cin=16, cout=16, kernel=3)
LARGE = OpSpec("conv", h=224, w=224, cin=16, cout=16, kernel=3)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Path:
    """Fitted on small 3x3 convs (8x8 and 16x16 maps, 8-48 channels), one pool, one linear."""
    root = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(0)
    specs = [OpSpec("conv", h=int(h), w=int(h), cin=int(c), cout=int(c), kernel=3, act=act)
             for h, c, act in zip(rng.choice([8, 16], 40), rng.integers(8, 48, 40),
                                  ["none", "relu"] * 20, strict=True)]
    specs += [OpSpec("pool", h=16, w=16, cin=16, pool="gavg"), OpSpec("linear", cin=16, cout=10)]
    records = [LatencyRecord.for_op(s, device="box", runtime="onnxruntime", settings="t1",
                                    runtime_version="1.0",
                                    min_ms=0.02 + 2e-9 * kernel_cost(s).flops,
                                    median_ms=0.03 + 2e-9 * kernel_cost(s).flops,
                                    overhead_ms=0.01) for s in specs]
    dataset = LatencyDataset.create(root / "data", {"run_settings": RunSettings().__dict__})
    dataset.append(records)
    return LatencyPredictor("linear", cv_folds=0).fit(root / "data").save(root / "predictor")


def model_file(folder: Path, name: str, *specs: OpSpec) -> Path:
    path = folder / name
    path.write_bytes(to_onnx(chain_graph(list(specs))))
    return path


def graph_file(folder: Path, name: str, nodes, inputs, outputs, initializers=(),
               opset: int = 17, ir_version: int | None = None) -> Path:
    model = helper.make_model(helper.make_graph(nodes, "m", inputs, outputs, list(initializers)),
                              opset_imports=[helper.make_opsetid("", opset)])
    if ir_version is not None:
        model.ir_version = ir_version
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def value(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def weight(name: str, shape) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def one_line_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("latbench: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def warnings_of(err: str) -> list[str]:
    lines = err.strip().splitlines()
    assert all(line.startswith("latbench: warning: ") for line in lines), err
    return lines


# --- the range check ---------------------------------------------------------------------------
def test_an_in_range_model_has_full_coverage_and_no_warning(predictor, tmp_path, capsys):
    model = model_file(tmp_path, "small.onnx", SMALL, OpSpec("pool", h=16, w=16, cin=16,
                                                             pool="gavg"))
    code, out, err = run(capsys, "predict", str(model), "--predictor", str(predictor), "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["coverage"] == 1.0 and result["out_of_range"] == []
    assert [(k["kind"], k["key"], k["in_range"]) for k in result["kernels"]] == [
        ("conv", SMALL.key(), True), ("pool", OpSpec("pool", h=16, w=16, cin=16,
                                                     pool="gavg").key(), True)]
    assert all(k["predicted_ms"] > 0 for k in result["kernels"])
    assert result["partial"] is False and result["skipped_ops"] == {}
    code, out, err = run(capsys, "predict", str(model), "--predictor", str(predictor))
    assert code == 0 and err == ""
    assert "coverage: 100.0% of the predicted kernel time" in out


def test_kernels_outside_the_range_are_warned_about(predictor, tmp_path, capsys):
    large = LARGE.with_(stride=14)  # 224x224 in, 16x16 out
    wide = SMALL.with_(cout=96)
    model = model_file(tmp_path, "large.onnx", large, SMALL, wide)
    code, out, err = run(capsys, "predict", str(model), "--predictor", str(predictor), "--json")
    assert code == 0
    result = json.loads(out)
    flags = [k["in_range"] for k in result["kernels"]]
    assert flags == [False, True, False]
    ms = [k["predicted_ms"] for k in result["kernels"]]
    assert result["coverage"] == pytest.approx(ms[1] / sum(ms))
    (warning,) = warnings_of(err)
    assert "2 of 3 kernels lie outside the predictor's training range (conv 2)" in warning
    assert f"{result['coverage']:.0%} of the predicted kernel time" in warning
    # the worst first: a 224x224 map where the predictor saw 16x16 at most
    worst = warning.split("worst: ")[1]
    assert worst.startswith("conv h 224 (trained 8-16)") or \
        worst.startswith("conv w 224 (trained 8-16)"), worst
    assert "conv cout 96 (trained" in worst or "MFLOPs" in worst
    outside = {(o["kernel"], o["feature"]) for o in result["out_of_range"]}
    assert (large.key(), "h") in outside and (wide.key(), "cout") in outside
    code, out, err = run(capsys, "predict", str(model), "--predictor", str(predictor))
    assert code == 0 and len(warnings_of(err)) == 1
    assert "outside range" in out and "coverage: " in out


def test_a_pool_type_never_trained_is_outside_the_range(predictor, tmp_path, capsys):
    # The pool kind was trained on a global average pool only: a 3x3 max pool is another
    # computation, named as the worst excess of all, before its kernel size.
    max_pool = OpSpec("pool", h=16, w=16, cin=16, pool="max", kernel=3, stride=1, pad=1)
    model = model_file(tmp_path, "maxpool.onnx", SMALL, max_pool)
    code, out, err = run(capsys, "predict", str(model), "--predictor", str(predictor), "--json")
    assert code == 0
    result = json.loads(out)
    assert [k["in_range"] for k in result["kernels"]] == [True, False]
    assert {"kernel": max_pool.key(), "feature": "pool", "value": "max",
            "trained_values": ["gavg"]} in result["out_of_range"]
    (warning,) = warnings_of(err)
    assert "1 of 2 kernels lie outside the predictor's training range (pool 1)" in warning
    assert warning.split("worst: ")[1] == "pool pool max (trained gavg)"
    # the same pool type in range: nothing named
    gavg = OpSpec("pool", h=16, w=16, cin=16, pool="gavg")
    code, out, err = run(capsys, "predict", str(model_file(tmp_path, "gavg.onnx", SMALL, gavg)),
                         "--predictor", str(predictor), "--json")
    assert code == 0 and json.loads(out)["out_of_range"] == [] and err == ""
    loaded = LatencyPredictor.load(predictor)
    assert loaded.training_values_ == {"pool": {"pool": ["gavg"]}}


def test_a_predictor_without_ranges_says_it_cannot_tell(tmp_path, capsys):
    model = model_file(tmp_path, "m.onnx", OpSpec("conv", h=16, w=16, cin=3, cout=16,
                                                  kernel=3, act="relu"))
    code, out, err = run(capsys, "predict", str(model), "--predictor", str(OLD_PREDICTOR),
                         "--json")
    assert code == 0 and json.loads(out)["coverage"] is None
    (warning,) = warnings_of(err)
    assert "records no training ranges" in warning


# --- symbolic input dims -----------------------------------------------------------------------
def _symbolic(tmp_path: Path) -> Path:
    return graph_file(tmp_path, "dynamic.onnx",
                      [helper.make_node("Conv", ["image", "w"], ["y"], kernel_shape=[3, 3],
                                        pads=[1] * 4)],
                      [value("image", ["N", 16, "H", "W"])], [value("y", ["N", 16, "H", "W"])],
                      [weight("w", (16, 16, 3, 3))])


def test_symbolic_dims_need_the_input_shape(predictor, tmp_path, capsys):
    model = _symbolic(tmp_path)
    before = sorted(tmp_path.iterdir())
    code, out, err = run(capsys, "predict", str(model), "--predictor", str(predictor), "--json")
    one_line_error(code, err, str(model), "input 'image' has symbolic dims H (axis 2), "
                   "W (axis 3)", "--input-shape image=1x16x<H>x<W>")
    assert out == "" and sorted(tmp_path.iterdir()) == before
    for shape in ("image=1x16x16x16", "image=16x16x16"):
        code, out, err = run(capsys, "predict", str(model), "--predictor", str(predictor),
                             "--input-shape", shape, "--json")
        assert code == 0, err
        assert [k["key"] for k in json.loads(out)["kernels"]] == [SMALL.key()]


@pytest.mark.parametrize(("shapes", "needles"), [
    (["img=1x16x8x8"], ("has no input 'img'; its inputs: image",)),
    (["image=16x8"], ("input 'image' has 4 dims",)),
    (["image=1x3x8x8"], ("fixed at Nx16xHxW", "axis 1 differs")),
    (["image=1x16x8x8", "image=1x16x8x8"], ("gives input 'image' twice",)),
    (["image=1x16xHx8"], ("must be NAME=DIMS",)),
])
def test_bad_input_shapes_are_one_line(predictor, tmp_path, capsys, shapes, needles):
    model = _symbolic(tmp_path)
    argv = [arg for shape in shapes for arg in ("--input-shape", shape)]
    code, out, err = run(capsys, "predict", str(model), "--predictor", str(predictor), *argv)
    one_line_error(code, err, *needles)
    assert out == ""


# --- --allow-partial ---------------------------------------------------------------------------
def test_allow_partial_predicts_the_rest_and_names_what_it_left_out(predictor, tmp_path,
                                                                     capsys):
    model = graph_file(
        tmp_path, "partial.onnx",
        [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
         helper.make_node("Softmax", ["c"], ["s"], axis=1),
         helper.make_node("Erf", ["s"], ["e"]),
         helper.make_node("Softmax", ["e"], ["y"], axis=1)],
        [value("x", [1, 16, 16, 16])], [value("y", [1, 16, 16, 16])], [weight("w", (16, 16, 3, 3))])
    code, out, err = run(capsys, "predict", str(model), "--predictor", str(predictor), "--json")
    one_line_error(code, err, str(model), "Erf (1 node), Softmax (2 nodes)")
    assert out == ""
    code, out, err = run(capsys, "predict", str(model), "--predictor", str(predictor), "--json",
                         "--allow-partial")
    assert code == 0
    result = json.loads(out)
    assert result["partial"] is True and result["skipped_ops"] == {"Erf": 1, "Softmax": 2}
    assert [k["key"] for k in result["kernels"]] == [SMALL.key()]
    (warning,) = warnings_of(err)
    assert f"partial prediction of {model}: 3 nodes left out" in warning
    assert "Erf (1 node), Softmax (2 nodes)" in warning
    code, out, err = run(capsys, "predict", str(model), "--predictor", str(predictor),
                         "--allow-partial")
    assert code == 0 and "partial" in out and "partial prediction" in err


# --- files to refuse ----------------------------------------------------------------------------
def _bad_files(folder: Path) -> dict[str, tuple[Path, tuple[str, ...]]]:
    good = to_onnx(chain_graph([SMALL]))
    truncated = folder / "truncated.onnx"
    truncated.write_bytes(good[:len(good) // 2])
    text = folder / "notes.onnx"
    text.write_text("these are not the weights you are looking for\n" * 20)
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    io = ([value("x", [1, 16])], [value("y", [1, 16])])
    topk = graph_file(folder, "topk.onnx",
                      [helper.make_node("TopK", ["x", "k"], ["v", "i"]),
                       helper.make_node("LpNormalization", ["v"], ["y"])],
                      [value("x", [1, 16])],
                      [value("y", [1, 4]), helper.make_tensor_value_info("i", TensorProto.INT64,
                                                                         [1, 4])],
                      [helper.make_tensor("k", TensorProto.INT64, [1], [4])])
    other = folder / "model.pb"
    other.write_bytes(good)
    return {
        "truncated": (truncated, ("truncated.onnx", "could not be parsed as ONNX")),
        "not-onnx": (text, ("notes.onnx", "could not be parsed as ONNX")),
        "new-opset": (graph_file(folder, "opset99.onnx", relu, *io, opset=99),
                      ("opset99.onnx", "uses ONNX opset 99", "latbench reads opsets")),
        "old-opset": (graph_file(folder, "opset5.onnx", relu, *io, opset=5),
                      ("opset5.onnx", "uses ONNX opset 5")),
        "new-ir": (graph_file(folder, "ir99.onnx", relu, *io, ir_version=99),
                   ("ir99.onnx", "IR version 99")),
        "unsupported-ops": (topk, ("topk.onnx", "LpNormalization (1 node)", "TopK (1 node)")),
        "other-format": (other, ("model.pb", "no reader for '.pb' model files")),
    }


@pytest.mark.parametrize("case", ["truncated", "not-onnx", "new-opset", "old-opset", "new-ir",
                                  "unsupported-ops", "other-format"])
def test_bad_model_files_are_one_line_and_write_nothing(predictor, tmp_path, capsys, case):
    path, needles = _bad_files(tmp_path)[case]
    files = sorted(p for p in tmp_path.rglob("*"))
    predictor_files = sorted(p for p in predictor.rglob("*"))
    for extra in ([], ["--json"], ["--allow-partial"]):
        code, out, err = run(capsys, "predict", str(path), "--predictor", str(predictor), *extra)
        if case == "unsupported-ops" and extra == ["--allow-partial"]:
            needles = (*needles, "nothing else is left to predict")
        one_line_error(code, err, *needles)
        assert out == ""
    assert sorted(p for p in tmp_path.rglob("*")) == files
    assert sorted(p for p in predictor.rglob("*")) == predictor_files
