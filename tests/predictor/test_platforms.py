"""Platforms in predictors: a dataset measured at 1 and 2 threads by a real campaign fits one
predictor per platform into one folder; loading, predicting, evaluating and searching name the
platform they use, and asking for one the predictor lacks is a one-line error naming what it has.
Predictors saved before platforms keep loading as their one platform."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_run import run

from latbench.bench.campaign import CampaignConfig, Subject, measure_into_dataset
from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.ops import OpSpec
from latbench.bench.platform import Platform, PlatformChoice
from latbench.bench.runners import RunSettings
from latbench.bench.store import LatencyDataset, LatencyRecord
from latbench.cli import main
from latbench.device_agents import local_device
from latbench.errors import DatasetError, PlatformError
from latbench.predictor.evaluate import evaluate, write_report
from latbench.predictor.io import MANIFEST, PLATFORMS, read_platforms
from latbench.predictor.latency_predictor import (
    LatencyPredictor,
    fit_platforms,
    save_platforms,
)
from latbench.predictor.training import select_records

OLD = Path(__file__).resolve().parents[1] / "data" / "predictors" / "v2" / "linear"
SETTINGS = RunSettings(threads=1, warmup=1, runs=3, rounds=2)
CONVS = [OpSpec("conv", h=h, w=h, cin=c, cout=c, kernel=3)
         for h in (8, 16) for c in (8, 16, 24)]
LINEARS = [OpSpec("linear", cin=c, cout=10) for c in (32, 64, 128, 256)]
NETWORKS = {f"chain:{i}": [CONVS[i], CONVS[i]] for i in range(3)}
ONE, TWO = (Platform("local", "onnxruntime", threads=n) for n in (1, 2))


def config(**changes) -> CampaignConfig:
    return CampaignConfig(**{"settings": SETTINGS, "drift_pause_s": 0.01, "calibration_runs": 0,
                             "max_load": None, **changes})


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Ten kernels and three two-conv networks, each measured at 1 and 2 threads."""
    out = tmp_path_factory.mktemp("mixed") / "data"
    subjects = [Subject.op(s) for s in CONVS + LINEARS]
    subjects += [Subject.chain(key, "chain", specs) for key, specs in NETWORKS.items()]
    summary = measure_into_dataset(subjects, local_device(str(out.parent / "work")),
                                   "onnxruntime", out, config(thread_counts=(1, 2)))
    assert summary.failed == 0 and summary.measured == 2 * len(subjects)
    return out


@pytest.fixture(scope="module")
def folder(mixed: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "pred"
    assert main(["predictor", "fit", "--data", str(mixed), "--out", str(out), "--predictor",
                 "linear", "--cv-folds", "0"]) == 0
    return out


def one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latbench: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- fitting ------------------------------------------------------------------------------------
def test_a_mixed_thread_dataset_fits_one_predictor_per_platform(mixed: Path) -> None:
    template = LatencyPredictor("linear", cv_folds=0)
    fitted = fit_platforms(template, mixed)
    assert [p.platform for p in fitted] == [ONE, TWO]
    assert not hasattr(template, "kernels_")  # the template stays unfitted
    for predictor in fitted:
        threads = predictor.platform.threads
        assert predictor.run_settings().threads == threads
        assert predictor.info_["settings"].startswith(f"threads={threads},")
        assert predictor.info_["dataset"]["n_records"] == len(CONVS) + len(LINEARS)
        # calibrated on its own platform's networks only
        assert sorted(predictor.calibration_keys) == sorted(NETWORKS)
    records = LatencyDataset.open(mixed).records()
    nets = records[records["subject"] == "network"]
    assert set(nets["dtype"]) == {"float32"}  # a network record names its kernels' precision
    assert sorted(nets["threads"]) == [1, 1, 1, 2, 2, 2]
    # each is the predictor a fit on its platform alone makes
    alone = LatencyPredictor("linear", cv_folds=0).fit(mixed, platform=TWO.choice())
    assert alone.predict(CONVS).predicted_ms == fitted[1].predict(CONVS).predicted_ms


def test_fitting_one_predictor_on_a_mixed_dataset_names_the_choice(mixed: Path) -> None:
    with pytest.raises(PlatformError) as error:
        LatencyPredictor("linear", cv_folds=0).fit(mixed)
    text = str(error.value)
    assert f"holds 2 platforms ({ONE}; {TWO}); choose one with --threads 1|2" in text
    with pytest.raises(PlatformError, match=r"no platform for --threads 4; it has: "
                                            r"local · onnxruntime · fp32 · 1 thread; "):
        select_records(LatencyDataset.open(mixed).records(), choice=PlatformChoice(threads=4))
    with pytest.raises(PlatformError, match="no platform for --precision int8"):
        fit_platforms(LatencyPredictor("linear"), mixed, platform=PlatformChoice(
            precision="int8"))
    only = LatencyPredictor("linear", cv_folds=0).fit(mixed, platform=PlatformChoice(threads=2))
    assert only.platform == TWO


def test_one_platform_measured_with_two_protocols_is_refused(tmp_path: Path) -> None:
    dataset = LatencyDataset.create(tmp_path / "d", {})
    dataset.append([LatencyRecord.for_op(CONVS[0], device="box", runtime="onnxruntime",
                                         settings=f"threads=1,warmup={w}", threads=1,
                                         min_ms=0.1) for w in (1, 10)])
    with pytest.raises(DatasetError, match=r"box · onnxruntime · fp32 · 1 thread with several "
                                           r"protocols \(\[threads=1,warmup=1\]"):
        select_records(dataset.records())


# --- one folder, several platforms ----------------------------------------------------------------
def test_one_folder_serves_every_platform(folder: Path) -> None:
    assert (folder / PLATFORMS).is_file() and not (folder / MANIFEST).exists()
    assert set(read_platforms(folder)) == {ONE, TWO}
    for platform in (ONE, TWO):
        loaded = LatencyPredictor.load(folder, PlatformChoice(threads=platform.threads))
        assert loaded.platform == platform and loaded.path == folder / platform.slug()
        # a platform's sub-folder is a predictor folder of its own
        assert LatencyPredictor.load(folder / platform.slug()).platform == platform
    with pytest.raises(PlatformError, match=r"holds 2 platforms .*choose one with --threads 1\|2"):
        LatencyPredictor.load(folder)
    with pytest.raises(PlatformError, match=f"has no platform for --threads 3; it has: {ONE}; "
                                            f"{TWO}"):
        LatencyPredictor.load(folder, PlatformChoice(threads=3))


def test_a_single_platform_keeps_the_plain_layout(mixed: Path, tmp_path: Path) -> None:
    [two] = fit_platforms(LatencyPredictor("linear", cv_folds=0), mixed,
                          platform=PlatformChoice(threads=2))
    path = save_platforms([two], tmp_path / "p")
    assert (path / MANIFEST).is_file() and not (path / PLATFORMS).exists()
    assert LatencyPredictor.load(path).platform == TWO
    assert LatencyPredictor.load(path, PlatformChoice(threads=2)).platform == TWO
    with pytest.raises(PlatformError, match=f"has no platform for --threads 1; it has: {TWO}"):
        LatencyPredictor.load(path, PlatformChoice(threads=1))


def test_a_predictor_saved_before_platforms_is_its_one_platform() -> None:
    old = LatencyPredictor.load(OLD)
    assert "platform" not in old.info_
    assert old.platform == Platform(old.device, old.runtime,
                                    threads=old.info_["run_settings"]["threads"])
    assert LatencyPredictor.load(OLD, PlatformChoice(threads=1, precision="float32")).platform \
        == old.platform
    with pytest.raises(PlatformError, match="has no platform for --threads 2"):
        LatencyPredictor.load(OLD, PlatformChoice(threads=2))


def test_a_tampered_platforms_index_is_refused(folder: Path, tmp_path: Path) -> None:
    import shutil

    from latbench.errors import PredictorError

    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    index = json.loads((copy / PLATFORMS).read_text())
    index["platforms"][0]["folder"] = "../elsewhere"
    (copy / PLATFORMS).write_text(json.dumps(index))
    with pytest.raises(PredictorError, match=r"platforms\.json: field 'platforms\[0\]\.folder'"):
        read_platforms(copy)
    index["platforms"][0] = {"folder": "x", "platform": {"device": "d", "runtime": "r",
                                                         "threads": 0}}
    (copy / PLATFORMS).write_text(json.dumps(index))
    with pytest.raises(PredictorError, match="platform threads must be an integer >= 1"):
        read_platforms(copy)


# --- the command line -----------------------------------------------------------------------------
def test_fit_json_names_every_platform(mixed: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = run(capsys, "predictor", "fit", "--data", str(mixed), "--out",
                       str(tmp_path / "p"), "--predictor", "linear", "--cv-folds", "0", "--json")
    assert code == 0
    printed = json.loads(out)
    assert [p["platform"]["threads"] for p in printed["platforms"]] == [1, 2]
    assert printed["platforms"][1]["label"] == "local · onnxruntime · fp32 · 2 threads"
    assert printed["platforms"][1]["folder"] == str(tmp_path / "p" / TWO.slug())
    code, out, _ = run(capsys, "predictor", "fit", "--data", str(mixed), "--out",
                       str(tmp_path / "q"), "--predictor", "linear", "--cv-folds", "0",
                       "--threads", "1", "--json")
    printed = json.loads(out)
    assert code == 0 and printed["platform"] == ONE.to_json() and len(printed["platforms"]) == 1
    code, _, err = run(capsys, "predictor", "fit", "--data", str(mixed), "--out",
                       str(tmp_path / "r"), "--threads", "8")
    one_line_error(code, err, "has no platform for --threads 8; it has: ", str(ONE), str(TWO))
    assert not (tmp_path / "r").exists()


def test_predict_needs_a_platform_of_the_predictor(folder: Path, tmp_path: Path,
                                                   capsys) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(to_onnx(chain_graph([CONVS[0], CONVS[0]])))
    code, _, err = run(capsys, "predict", str(model), "--predictor", str(folder))
    one_line_error(code, err, "holds 2 platforms", "choose one with --threads 1|2")
    code, _, err = run(capsys, "predict", str(model), "--predictor", str(folder), "--threads",
                       "4")
    one_line_error(code, err, "no platform for --threads 4; it has: "
                              "local · onnxruntime · fp32 · 1 thread; "
                              "local · onnxruntime · fp32 · 2 threads")
    code, _, err = run(capsys, "predict", str(model), "--predictor", str(folder), "--threads",
                       "2", "--precision", "fp64")
    one_line_error(code, err, "unknown precision 'fp64'; known: fp32, fp16, int8")
    code, _, err = run(capsys, "predict", str(model), "--predictor", str(folder), "--threads",
                       "2", "--device", "phone")
    one_line_error(code, err, "no platform for --device phone --threads 2")
    code, out, _ = run(capsys, "predict", str(model), "--predictor", str(folder), "--threads",
                       "2", "--precision", "fp32", "--json")
    assert code == 0
    printed = json.loads(out)
    assert printed["platform"] == TWO.to_json()
    two = LatencyPredictor.load(folder, PlatformChoice(threads=2))
    assert printed["predicted_ms"] == two.predict(model).predicted_ms
    code, out, _ = run(capsys, "predict", str(model), "--predictor", str(folder), "--threads",
                       "1")
    assert code == 0 and "m.onnx on local · onnxruntime · fp32 · 1 thread" in out


def test_a_model_in_another_precision_is_refused(folder: Path, tmp_path: Path,
                                                 capsys) -> None:
    """An INT8 model priced by an FP32 predictor would be several times off: refused, naming
    both precisions."""
    model = tmp_path / "q.onnx"
    model.write_bytes(to_onnx(chain_graph([CONVS[0].with_(dtype="int8")] * 2)))
    code, _, err = run(capsys, "predict", str(model), "--predictor", str(folder), "--threads",
                       "1")
    one_line_error(code, err, "the network computes in int8", "is fitted for fp32",
                   "--precision int8")
    one = LatencyPredictor.load(folder, PlatformChoice(threads=1))
    with pytest.raises(PlatformError, match="computes in fp16"):
        one.predict([CONVS[0].with_(dtype="float16")] * 2)
    assert one.predict(CONVS[:2]).predicted_ms > 0


def test_eval_measures_at_the_platforms_thread_count(folder: Path, tmp_path: Path) -> None:
    """Held-out networks are measured with the chosen platform's threads, and the report
    says which platform it scored."""
    two = LatencyPredictor.load(folder, PlatformChoice(threads=2))
    held_out = [Subject.chain("held:0", "chain", [CONVS[3], CONVS[3]]),
                Subject.chain("held:1", "chain", [CONVS[4], CONVS[4]])]
    report = evaluate(two, held_out, local_device(str(tmp_path / "work")), tmp_path / "eval",
                      config=config())
    records = LatencyDataset.open(tmp_path / "eval" / "networks").records()
    assert set(records["threads"]) == {2} and len(records) == 2
    assert all(s.startswith("threads=2,") for s in records["settings"])
    assert report.platform == TWO
    paths = write_report(report, tmp_path / "eval")
    assert json.loads(paths["json"].read_text())["platform"] == TWO.to_json()
    assert f"Platform: {TWO}." in paths["markdown"].read_text()


def test_eval_and_search_refuse_an_unnamed_platform(folder: Path, capsys) -> None:
    code, _, err = run(capsys, "predictor", "eval", "--predictor", str(folder), "--networks",
                       "nasbench-macro:1")
    one_line_error(code, err, "holds 2 platforms", "--threads 1|2")
    code, _, err = run(capsys, "search", "--predictor", str(folder), "--budget-ms", "5",
                       "--threads", "3")
    one_line_error(code, err, "no platform for --threads 3; it has: ")
    code, _, err = run(capsys, "search", "--predictor", "flops", "--budget-ms", "5",
                       "--threads", "2")
    one_line_error(code, err, "--threads 2 chooses a predictor's platform; the flops table "
                              "has none")
