"""The command line: every --help, one-line errors that write nothing, and a small real flow
(measure a plan twice, fit, predict an ONNX file)."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_run import run
from onnx import TensorProto, helper

from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.ops import OpSpec
from latbench.bench.runners.onnxruntime import ARM64_MACHINES
from latbench.bench.store import LatencyDataset
from latbench.cli import main
from latbench.predictor.features import kernel_cost
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.models import XGBoostKernelPredictor

REPO = Path(__file__).resolve().parents[1]

COMMANDS = [[], ["bench"], ["bench", "ops"], ["bench", "plan"], ["predictor"],
            ["predictor", "fit"], ["predictor", "eval"], ["predict"], ["search"], ["demo"]]

# A tiny network and the kernels it is made of (plus one more conv, to have 6 plan kernels).
CHAIN = [OpSpec("conv", h=16, w=16, cin=3, cout=8, kernel=3, act="relu"),
         OpSpec("dwconv", h=16, w=16, cin=8, kernel=3, act="relu"),
         OpSpec("conv", h=16, w=16, cin=8, cout=16, kernel=1),
         OpSpec("pool", h=16, w=16, cin=16, pool="gavg"),
         OpSpec("linear", cin=16, cout=10)]
PLAN_SPECS = [*CHAIN, OpSpec("conv", h=16, w=16, cin=8, cout=32, kernel=1)]


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("latbench: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def synthetic_predictor(tmp_path_factory) -> Path:
    """A predictor of every kind the tiny network has, fitted on made-up latencies."""
    rng = np.random.default_rng(0)
    specs = [*PLAN_SPECS]
    for _ in range(20):
        c = int(rng.integers(4, 64))
        specs += [OpSpec("conv", h=16, w=16, cin=c, cout=c, kernel=3),
                  OpSpec("dwconv", h=16, w=16, cin=c, kernel=3)]
    model = XGBoostKernelPredictor(n_estimators=10, n_jobs=1).fit(
        specs, [0.01 + 1e-9 * kernel_cost(s).flops for s in specs])
    return LatencyPredictor.from_kernels(
        model, call_overhead_ms=0.02, info={"device": "local", "runtime": "onnxruntime"},
    ).save(tmp_path_factory.mktemp("cli") / "predictor")


# --- help ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "latbench")
def test_help(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: latbench {' '.join(command)}".rstrip())
    assert "--help" in out


def test_eval_help_says_calibration_networks_are_drawn_past(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`predictor eval --networks resnet:3` gives three held-out ResNets even where the
    predictor was calibrated on ResNets drawn with the same seed; `bench networks` measures
    what it is given."""
    helps = {}
    for command in (["predictor", "eval"], ["bench", "networks"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        helps[" ".join(command)] = " ".join(capsys.readouterr().out.split())
    assert "not calibrated on" in helps["predictor eval"]
    assert "drawn in their place" in helps["predictor eval"]
    assert "not calibrated on" not in helps["bench networks"]


def test_help_in_a_real_process() -> None:
    result = subprocess.run([str(Path(sys.executable).parent / "latbench"), "--help"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    for command in ("bench", "predictor", "predict", "search", "demo"):
        assert command in result.stdout
    assert result.stderr == ""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert re.match(r"latbench \d+\.\d+", capsys.readouterr().out)


# --- one-line errors that write nothing ---------------------------------------------------------
def test_unknown_kind_in_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan = tmp_path / "bad.yaml"
    plan.write_text("random:\n  - {kind: conv3d, count: 4}\n")
    out = tmp_path / "dataset"
    code, _, err = run(capsys, "bench", "ops", "--plan", str(plan), "--out", str(out))
    assert_one_line_error(code, err, "conv3d", str(plan))
    assert not out.exists()
    code, _, err = run(capsys, "bench", "plan", str(plan))
    assert_one_line_error(code, err, "conv3d")
    plan.write_text("specs: ['warp:n=1,h=8,w=8,cin=8,dtype=float32']\n")
    code, _, err = run(capsys, "bench", "ops", "--plan", str(plan), "--out", str(out))
    assert_one_line_error(code, err, "unknown op kind 'warp'")
    assert not out.exists()


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_bench_ops_limit_must_be_positive(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          limit: str) -> None:
    out = tmp_path / "dataset"
    code, stdout, err = run(capsys, "bench", "ops", "--plan", "quick", "--limit", limit,
                            "--out", str(out))
    assert_one_line_error(code, err, "--limit must be a positive number of kernels",
                          f"got {limit}")
    assert stdout == "" and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_bench_ops_refuses_more_threads_than_cores(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    import os

    out, cores = tmp_path / "dataset", os.cpu_count() or 1
    code, stdout, err = run(capsys, "bench", "ops", "--plan", "quick", "--limit", "1",
                            "--threads", "1", str(cores + 1), "--out", str(out))
    assert_one_line_error(code, err, f"--threads {cores + 1} is more than the {cores} cores "
                                     "of device local")
    assert stdout == "" and list(tmp_path.iterdir()) == []


def test_bench_ops_says_when_builtin_pools_fill_the_cores(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    """LiteRT's built-in kernels at as many threads as the machine has cores: the campaign
    measures, and says first why that platform is noisy (never below 2 threads)."""
    import os

    cores = os.cpu_count() or 1
    out = tmp_path / "dataset"
    code, stdout, err = run(capsys, "bench", "ops", "--plan", "quick", "--limit", "1",
                            "--runtime", "litert", "--delegate", "builtin", "--threads",
                            str(cores), "--out", str(out))
    assert code == 0, err
    said = f"litert's builtin kernels run two thread pools: at {cores} threads on {cores} cores"
    assert (said in stdout + err) == (cores >= 2)
    assert len(LatencyDataset.open(out).records()) == 1


@pytest.mark.skipif(platform.machine().lower() in ARM64_MACHINES,
                    reason="ONNX Runtime computes float16 on ARM64: nothing is refused")
def test_bench_ops_refuses_onnxruntime_fp16_kernels_off_arm64(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    code, stdout, err = run(capsys, "bench", "ops", "--plan", "quick", "--limit", "1",
                            "--precision", "fp16", "--out", str(out))
    assert_one_line_error(code, err, "runtime onnxruntime cannot measure fp16 kernels on device "
                                     f"local ({platform.machine()})", "`bench networks`")
    assert stdout == "" and list(tmp_path.iterdir()) == []


def test_bench_ops_refuses_a_precision_the_runtime_lacks(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    code, stdout, err = run(capsys, "bench", "ops", "--plan", "quick", "--runtime",
                            "torch-cuda", "--precision", "int8", "--out", str(out))
    assert_one_line_error(code, err, "runtime torch-cuda cannot measure --precision int8: it "
                                     "computes in float32 only")
    assert stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("alpha", ["0", "1.5", "nan", "-0.5", "inf"])
def test_bench_fusion_alpha_must_be_in_0_1(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           alpha: str) -> None:
    out = tmp_path / "fusion"
    code, stdout, err = run(capsys, "bench", "fusion", "--alpha", alpha, "--out", str(out))
    assert_one_line_error(code, err, "--alpha must be in (0, 1]", f"got {float(alpha)}")
    assert stdout == "" and list(tmp_path.iterdir()) == []


def test_impossible_plan_entry_names_file_and_entry(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    plan = tmp_path / "phone.yaml"
    plan.write_text("random:\n  - {kind: conv, count: 4, h: [8], cin: [16]}\n"
                    "  - {kind: conv, count: 4, h: [4], cin: [16], kernel: [7], pad: [0]}\n")
    out = tmp_path / "dataset"
    for command in (["bench", "ops", "--plan", str(plan), "--out", str(out)],
                    ["bench", "plan", str(plan)]):
        code, stdout, err = run(capsys, *command)
        assert_one_line_error(code, err, f"plan file {plan}: random entry 1 (conv): kernel 7 "
                                         "is larger than every padded input")
        assert stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phone.yaml"]


def test_bad_lock_wait(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    code, _, err = run(capsys, "bench", "ops", "--plan", "quick", "--limit", "1",
                       "--lock-wait", "-1", "--out", str(out))
    assert_one_line_error(code, err, "must be >= 0 seconds", "got -1.0")
    assert not out.exists()


def test_predict_malformed_onnx(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                synthetic_predictor: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x00definitely not onnx\xff" * 20)
    before = sorted(p.name for p in synthetic_predictor.rglob("*"))
    code, out, err = run(capsys, "predict", str(model), "--predictor", str(synthetic_predictor))
    assert_one_line_error(code, err, "could not be parsed as ONNX")
    assert out == ""
    assert sorted(p.name for p in synthetic_predictor.rglob("*")) == before
    code, _, err = run(capsys, "predict", str(tmp_path / "absent.onnx"), "--predictor",
                       str(synthetic_predictor))
    assert_one_line_error(code, err, "absent.onnx", "does not exist")


def test_predict_unsupported_op(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                synthetic_predictor: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    values = helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, 4])
    indices = helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 4])
    k = helper.make_tensor("k", TensorProto.INT64, [1], [4])
    graph = helper.make_graph([helper.make_node("TopK", ["x", "k"], ["values", "indices"])],
                              "topk", [x], [values, indices], initializer=[k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path / "topk.onnx"
    path.write_bytes(model.SerializeToString())
    code, out, err = run(capsys, "predict", str(path), "--predictor", str(synthetic_predictor),
                         "--json")
    assert_one_line_error(code, err, "TopK", "unsupported ONNX ops")
    assert out == ""


def test_fit_on_missing_or_empty_data(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    out = tmp_path / "predictor"
    code, _, err = run(capsys, "predictor", "fit", "--data", str(tmp_path / "nothing"),
                       "--out", str(out))
    assert_one_line_error(code, err, str(tmp_path / "nothing"), "does not exist")
    assert not out.exists()
    LatencyDataset.create(tmp_path / "empty", {"purpose": "test"})
    code, _, err = run(capsys, "predictor", "fit", "--data", str(tmp_path / "empty"),
                       "--out", str(out))
    assert_one_line_error(code, err, str(tmp_path / "empty"), "no records")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_search_with_missing_data_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      synthetic_predictor: Path) -> None:
    out = tmp_path / "search"
    code, _, err = run(capsys, "search", "--predictor", str(synthetic_predictor),
                       "--budget-ms", "1.0", "--data-dir", str(tmp_path / "no-data"),
                       "--measure", "--out", str(out))
    assert_one_line_error(code, err, str(tmp_path / "no-data"), "does not exist")
    assert not out.exists()
    assert not (synthetic_predictor / "search").exists()


def test_bad_params_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "predictor", "fit", "--data", str(tmp_path), "--out",
                       str(tmp_path / "p"), "--params", "{max_depth: 4")
    assert_one_line_error(code, err, "--params is not valid JSON")
    assert not (tmp_path / "p").exists()


# --- a small real flow --------------------------------------------------------------------------
def summary_value(out: str, label: str) -> int:
    match = re.search(rf"{re.escape(label)}\s*[│|]\s*(\d+)", out)
    assert match, out
    return int(match.group(1))


def test_measure_fit_predict(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan = tmp_path / "tiny.yaml"
    plan.write_text("name: tiny\nspecs:\n" + "".join(f"  - '{s.key()}'\n" for s in PLAN_SPECS))
    data = tmp_path / "data"
    measure = ["bench", "ops", "--plan", str(plan), "--out", str(data), "--runs", "3",
               "--rounds", "2", "--warmup", "1", "--fixed-runs"]
    code, out, err = run(capsys, *measure)
    assert code == 0, err
    assert summary_value(out, "jobs") == 6 and summary_value(out, "measured") == 6
    assert summary_value(out, "already stored") == 0
    records = LatencyDataset.open(data).records()
    assert sorted(records["key"]) == sorted(s.key() for s in PLAN_SPECS)
    assert set(records["settings"]) == {"threads=1,warmup=1,runs=3,rounds=2,opt=all,settle=on"}
    card = LatencyDataset.open(data).card
    assert card["plan"]["name"] == "tiny" and card["run_settings"]["runs"] == 3

    code, out, err = run(capsys, *measure)
    assert code == 0, err
    assert summary_value(out, "already stored") == 6 and summary_value(out, "measured") == 0
    assert len(LatencyDataset.open(data).records()) == 6
    # resuming it the other way round on settling would measure it all again under a second key
    code, out, err = run(capsys, *measure, "--no-settle")
    assert code != 0 and "measured on local (onnxruntime) settling networks" in err
    assert "resume it without --no-settle" in err and "Traceback" not in err
    assert len(LatencyDataset.open(data).records()) == 6

    predictor = tmp_path / "predictor"
    code, out, err = run(capsys, "predictor", "fit", "--data", str(data), "--out",
                         str(predictor), "--params", '{"n_estimators": 20, "n_jobs": 1}')
    assert code == 0, err
    assert (predictor / "manifest.json").is_file()
    assert "device local, runtime onnxruntime" in out

    model = tmp_path / "model.onnx"
    model.write_bytes(to_onnx(chain_graph(CHAIN)))
    code, out, err = run(capsys, "predict", str(model), "--predictor", str(predictor), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["predicted_ms"] > result["overhead_ms"] > 0
    assert result["n_kernels"] == len(CHAIN)
    assert [k["key"] for k in result["kernels"]] == [s.key() for s in CHAIN]
    assert result["device"] == "local" and result["runtime"] == "onnxruntime"

    code, out, err = run(capsys, "predict", str(model), "--predictor", str(predictor))
    assert code == 0, err
    assert "predicted latency:" in out


# --- --json -------------------------------------------------------------------------------------
def test_bench_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "bench", "plan", "quick", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["plan"] == "quick" and report["keys"] is None
    assert report["kernels"] == sum(report["by_kind"].values()) > 0
    code, out, err = run(capsys, "bench", "plan", "quick", "--json", "--keys")
    assert code == 0, err
    keys = json.loads(out)["keys"]
    assert len(keys) == len(set(keys)) == report["kernels"]
    assert all(OpSpec.from_key(k).key() == k for k in keys)


def test_bench_ops_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan = tmp_path / "tiny.yaml"
    plan.write_text("name: tiny\nspecs:\n" + "".join(f"  - '{s.key()}'\n" for s in CHAIN[:2]))
    data = tmp_path / "data"
    measure = ["bench", "ops", "--plan", str(plan), "--out", str(data), "--runs", "3",
               "--rounds", "1", "--warmup", "1", "--fixed-runs", "--calibration-runs", "0",
               "--json"]
    code, out, err = run(capsys, *measure)
    assert code == 0, err
    report = json.loads(out)  # stdout holds the JSON and nothing else (bars go to stderr)
    assert (report["jobs"], report["already_stored"], report["measured"], report["failed"]) \
        == (2, 0, 2, 0)
    assert report["failures"] == [] and report["seconds"] > 0
    code, out, err = run(capsys, *measure)
    assert code == 0, err
    assert (json.loads(out)["already_stored"], json.loads(out)["measured"]) == (2, 0)
