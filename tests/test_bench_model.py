"""`latbench bench model MODEL`: a table for a user's model on a device in one command - the
model's kernels and the model end to end measured in one resumable campaign, a predictor fitted
with the model as its calibration network, predicted vs measured and the per-kernel table - on
the local CPU (ONNX and TFLite), on an SSH device, and refusals of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_any_device import FAST, Board, board, ran_on_the_board  # noqa: F401 (fixture)

from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_tflite import to_tflite
from latbench.bench.ops import OpSpec
from latbench.bench.store import LatencyDataset
from latbench.cli import main
from latbench.predictor.latency_predictor import LatencyPredictor

SETTINGS = ["--fixed-runs", "--warmup", "1", "--runs", "3", "--rounds", "1",
            "--calibration-runs", "0", "--drift-tolerance", "10"]


@pytest.fixture(scope="module")
def user_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN as a user writes it in PyTorch, exported with the default exporter (once,
    outside any test's output capture: torch keeps the stream its logging first wrote to)."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1),
                                            torch.nn.BatchNorm2d(16), torch.nn.ReLU())
            self.dw = torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16)
            self.pw = torch.nn.Conv2d(16, 32, 1)
            self.head = torch.nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            x = torch.relu(self.pw(torch.relu(self.dw(x)) + x))
            return self.head(x.mean((2, 3)))

    path = tmp_path_factory.mktemp("user") / "user.onnx"
    torch.manual_seed(0)
    program = torch.onnx.export(Net().eval(), (torch.zeros(1, 3, 32, 32),), dynamo=True,
                                external_data=False, verbose=False)
    program.save(str(path))
    return path


def bench_model(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code = main(["bench", "model", *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_a_table_for_my_model_on_this_machine(user_model: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    model = user_model
    out = tmp_path / "table"
    table = bench_model(capsys, str(model), "--out", str(out), *SETTINGS)
    assert table["device"] == "local" and table["runtime"] == "onnxruntime"
    assert table["measured_ms"] > 0 and table["predicted_ms"] > 0
    assert table["campaign"]["failed"] == 0 and table["campaign"]["measured"] > 0

    predictor = LatencyPredictor.load(out / "predictor")
    assert predictor.calibration_keys == ["onnx:user.onnx"]  # the model calibrates it
    priced = predictor.predict(model)
    assert table["predicted_ms"] == pytest.approx(priced.predicted_ms)
    rows = table["kernels"]
    assert sum(r["count"] for r in rows) == len(priced.kernels)
    assert {r["key"] for r in rows} == {s.key() for s, _ in priced.kernels}
    assert {r["kind"] for r in rows} >= {"conv", "dwconv", "add", "pool", "linear"}
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert [r["share"] for r in rows] == sorted((r["share"] for r in rows), reverse=True)
    assert all(r["measured_ms"] > 0 for r in rows)
    assert table["kernel_sum_ms"] == pytest.approx(
        table["call_overhead_ms"] + sum(r["count"] * r["measured_ms"] for r in rows))

    records = LatencyDataset.open(out / "dataset").records()
    network = records[records["subject"] == "network"]
    assert list(network["key"]) == ["onnx:user.onnx"]
    assert network["min_ms"].iloc[0] == pytest.approx(table["measured_ms"])
    # the model's peak memory, measured with it, and its file's size
    assert table["peak_memory_bytes"] == network["peak_memory_bytes"].iloc[0] > 0
    assert table["memory_method"].startswith("rss-")
    assert table["model_size_bytes"] == model.stat().st_size
    assert {r["key"] for r in rows} <= set(records.loc[records["subject"] == "op", "key"])

    again = bench_model(capsys, str(model), "--out", str(out), *SETTINGS)  # resumes
    assert again["campaign"]["measured"] == 0 and again["campaign"]["skipped"] > 0
    assert again["kernels"] == rows and again["measured_ms"] == table["measured_ms"]

    assert main(["bench", "model", str(model), "--out", str(out), *SETTINGS]) == 0
    shown = capsys.readouterr().out
    assert "measured end to end" in shown and "most expensive first" in shown
    assert "peak memory (MiB)" in shown


def test_around_adds_neighbours_to_the_dataset(user_model: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    table = bench_model(capsys, str(user_model), "--out", str(tmp_path / "t"), "--around", "1",
                        *SETTINGS)
    ops = LatencyDataset.open(tmp_path / "t" / "dataset").records()
    ops = ops[ops["subject"] == "op"]
    assert len(ops) > len(table["kernels"])  # the model's kernels and their neighbours


def test_single_stream_times_the_model_mlperf_style(user_model: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t"
    table = bench_model(capsys, str(user_model), "--out", str(out), *SETTINGS,
                        "--single-stream", "--queries", "40", "--min-query-seconds", "0.2",
                        "--replicates", "2", "--replicate-pause", "0")
    stream = table["single_stream"]
    assert stream["key"] == "onnx:user.onnx" and stream["queries"] >= 80
    assert 0 < stream["p50_ms"] <= stream["p90_ms"] <= stream["p99_ms"]
    assert isinstance(stream["replication_ok"], bool)
    # the kernels keep their own protocol; only the model runs as a single stream
    kernels = LatencyDataset.open(out / "dataset").records()
    assert "stop_reason" in kernels and set(kernels["stop_reason"]) == {"fixed"}
    streamed = LatencyDataset.open(out / "single_stream").records()
    assert list(streamed["stop_reason"]) == ["single_stream"]
    assert main(["bench", "model", str(user_model), "--out", str(out), *SETTINGS,
                 "--single-stream", "--queries", "40", "--min-query-seconds", "0.2",
                 "--replicates", "2", "--replicate-pause", "0"]) == 0
    assert "single stream: p50 / p90 / p99" in capsys.readouterr().out


def test_a_tflite_model_measured_by_litert(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "chain.tflite"
    path.write_bytes(to_tflite(chain_graph([
        OpSpec("conv", h=16, w=16, cin=3, cout=16, kernel=3, stride=2, act="relu"),
        OpSpec("pool", h=8, w=8, cin=16, pool="gavg"), OpSpec("linear", cin=16, cout=10)])))
    table = bench_model(capsys, str(path), "--runtime", "litert", "--out",
                        str(tmp_path / "t"), *SETTINGS)
    assert table["runtime"] == "litert" and table["measured_ms"] > 0
    assert [r["kind"] for r in sorted(table["kernels"], key=lambda r: r["key"])] == \
        ["conv", "linear", "pool"]


def test_on_an_ssh_device(board: Board, user_model: Path,  # noqa: F811 (fixture)
                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = bench_model(capsys, str(user_model), "--out", str(tmp_path / "t"), "--fixed-runs",
                        *FAST, *board.fleet_args)
    assert table["device"] == "board" and table["measured_ms"] > 0
    records = LatencyDataset.open(tmp_path / "t" / "dataset").records()
    assert set(records["device"]) == {"board"}
    assert len(ran_on_the_board(board, set())) >= len(records)


@pytest.mark.parametrize("name, argv, match", [
    ("broken.onnx", [], "broken.onnx"),
    ("absent.onnx", [], "absent.onnx does not exist"),
    ("chain.tflite", [], "tflite:chain.tflite is a .tflite model; runtime onnxruntime runs "
                         ".onnx"),
    ("user.onnx", ["--input-shape", "nope=1x3x32x32"], "has no input 'nope'"),
])
def test_bad_input_is_one_line_and_writes_nothing(
        user_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
        argv: list[str], match: str) -> None:
    data = user_model.read_bytes()
    (tmp_path / "user.onnx").write_bytes(data)
    (tmp_path / "broken.onnx").write_bytes(data[:len(data) // 3])  # truncated
    (tmp_path / "chain.tflite").write_bytes(to_tflite(chain_graph([OpSpec("linear", cin=8)])))
    out = tmp_path / "table"
    code = main(["bench", "model", str(tmp_path / name), "--out", str(out), *argv, *SETTINGS])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert match in err
    assert not out.exists()
