"""Peak memory from the device into records: the native tools' memory lines, the runners'
requests and replies, a campaign's network records and card, and datasets of schema version 4
read with the memory columns empty."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latbench.bench.campaign import CampaignConfig, Subject, measure_into_dataset
from latbench.bench.export.graph import chain_graph, spec_graph
from latbench.bench.memory import CARD_KEY
from latbench.bench.ops import OpSpec
from latbench.bench.runners import ModelFile, RunSettings, get_runner
from latbench.bench.store import SCHEMA, LatencyDataset, LatencyRecord
from latbench.device_agents import Device, LocalTransport, local_device
from latbench.device_agents.tools.benchmark_model import (
    DELTA_METHOD,
    MIB,
    PEAK_METHOD,
    BenchmarkModelFlags,
    memory_figure,
    parse_benchmark_model,
)
from latbench.device_agents.tools.ort_perf_test import PEAK_METHOD as PERF_PEAK_METHOD
from latbench.errors import AgentError

# benchmark_model 2.x with --report_peak_memory_footprint=true, as it logs (stderr, INFO:)
WITH_PEAK = """\
INFO: STARTING!
INFO: Graph: [/data/local/tmp/m.tflite]
INFO: Loaded model /data/local/tmp/m.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 4.27635
INFO: Initialized session in 3.337ms.
INFO: count=9 first=81913 curr=55502 min=55502 max=81913 avg=58984.7 std=8115
INFO: count=3 first=56576 curr=56299 min=54669 max=60236 avg=56265.8 std=982
INFO: Inference timings in us: Init: 3337, First inference: 81913, Warmup (avg): 58984.7, \
Inference (avg): 56265.8
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only \
APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at \
your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=9.41406 overall=20.543
INFO: Overall peak memory footprint (MB) via periodic monitoring: 93.2383
INFO: Memory status at the end of exeution:
INFO: - VmRSS              : 25 MB
"""


def test_benchmark_model_memory_lines_are_parsed() -> None:
    r = parse_benchmark_model(WITH_PEAK)
    assert (r.peak_memory_mb, r.memory_init_mb, r.memory_overall_mb, r.model_size_mb) == (
        93.2383, 9.41406, 20.543, 4.27635)
    assert memory_figure(WITH_PEAK) == (round(93.2383 * MIB), PEAK_METHOD)
    without_peak = WITH_PEAK.replace("Overall peak", "Something else")
    assert memory_figure(without_peak) == (round(20.543 * MIB), DELTA_METHOD)
    zeros = "count=3 curr=5(all same)\nPeak memory footprint (MB): init=0 overall=0\n"
    peak, method = memory_figure(zeros)  # a tool that cannot read memory prints zeros
    assert peak is None and "no memory footprint" in method
    peak, method = memory_figure("ERROR: Could not open 'x'.")
    assert peak is None and method.startswith("not available")


def test_the_peak_flag_is_given_only_when_asked() -> None:
    assert not any("report_peak" in f for f in BenchmarkModelFlags().flags())
    assert "--report_peak_memory_footprint=true" in BenchmarkModelFlags(
        report_peak_memory_footprint=True).flags()


SMALL = OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3)
NET = [OpSpec("conv", h=32, w=32, cin=3, cout=32, kernel=3, act="relu"),
       OpSpec("conv", h=32, w=32, cin=32, cout=64, kernel=3, stride=2)]


def test_benchmark_model_runner_measures_memory_in_a_run_of_its_own(
        benchmark_model_binary: Path, tmp_path: Path) -> None:
    phone = Device("phone", LocalTransport(), ("tflite-benchmark-model",), str(tmp_path / "w"),
                   python=None, tools={"benchmark_model": str(benchmark_model_binary)})
    runner = get_runner("tflite-benchmark-model")
    models = [ModelFile("net", runner.export(chain_graph(NET)), memory=True),
              ModelFile("kernel", runner.export(spec_graph(SMALL)))]
    result = runner.measure(phone, models, RunSettings(warmup=1, runs=3, rounds=2), 300)
    net, kernel = result.measurements
    assert net.ok and kernel.ok
    assert net.memory_method == PEAK_METHOD and net.peak_memory_bytes > 10 * MIB  # a process
    assert (kernel.peak_memory_bytes, kernel.memory_method) == (None, "")
    # the timed runs are the ones they were: without the monitor thread's flag
    assert "report_peak" not in net.tool_flags and "Overall peak" not in net.raw_output


def test_perf_test_runner_reads_the_peak_working_set(perf_test_binary: Path,
                                                     tmp_path: Path) -> None:
    box = Device("box", LocalTransport(), ("onnxruntime-perf-test",), str(tmp_path / "w"),
                 python=None, tools={"onnxruntime_perf_test": str(perf_test_binary)})
    runner = get_runner("onnxruntime-perf-test")
    models = [ModelFile("net", runner.export(chain_graph(NET)), memory=True),
              ModelFile("kernel", runner.export(spec_graph(SMALL)))]
    net, kernel = runner.measure(box, models, RunSettings(runs=3, rounds=2), 300).measurements
    assert net.memory_method == PERF_PEAK_METHOD and net.peak_memory_bytes > 10 * MIB
    assert kernel.peak_memory_bytes is None


class CannedAgent(LocalTransport):
    """Answers the agent call with a reply made from the request the runner wrote."""

    def __init__(self, memory: object) -> None:
        super().__init__()
        self.memory = memory
        self.request: dict | None = None

    def run(self, argv, timeout_s, on_stderr=None):
        from latbench.device_agents import CommandResult

        if "measure" not in argv:
            return super().run(argv, timeout_s, on_stderr)
        self.request = json.loads(Path(argv[-1]).read_text())
        results = []
        for m in self.request["models"]:
            item = {"id": m["id"], "status": "ok", "error": "", "samples_ms": [[1.0] * 10] * 3}
            if m.get("memory"):
                item["memory"] = self.memory
            results.append(item)
        reply = {"status": "ok", "runtime_version": "1", "results": results}
        return CommandResult(tuple(argv), 0, json.dumps(reply), "", 0.01)


def test_agent_runner_asks_for_memory_and_reads_it(tmp_path: Path) -> None:
    transport = CannedAgent({"peak_bytes": 123456, "baseline_bytes": 1, "method": "rss-hwm: x"})
    device = Device("canned", transport, ("onnxruntime",), str(tmp_path / "w"))
    result = get_runner("onnxruntime").measure(
        device, [ModelFile("net", b"1", memory=True), ModelFile("op", b"2")],
        RunSettings(warmup=1, runs=10, rounds=3), 10)
    assert transport.request is not None
    asked = [m["id"] for m in transport.request["models"] if m.get("memory")]
    assert asked == ["net"]  # probes and kernels are not asked
    net, op = result.measurements
    assert (net.peak_memory_bytes, net.memory_method) == (123456, "rss-hwm: x")
    assert (op.peak_memory_bytes, op.memory_method) == (None, "")
    failed = CannedAgent({"peak_bytes": None, "method": "not available (its process failed)",
                          "error": "boom"})
    device = Device("canned", failed, ("onnxruntime",), str(tmp_path / "w2"))
    net = get_runner("onnxruntime").measure(device, [ModelFile("net", b"1", memory=True)],
                                            RunSettings(warmup=1, runs=10, rounds=3),
                                            10).measurements[0]
    assert net.peak_memory_bytes is None and net.memory_method.endswith(": boom")
    bad = Device("canned", CannedAgent({"peak_bytes": -3, "method": "x"}), ("onnxruntime",),
                 str(tmp_path / "w3"))
    with pytest.raises(AgentError, match="malformed memory entry"):
        get_runner("onnxruntime").measure(bad, [ModelFile("net", b"1", memory=True)],
                                          RunSettings(warmup=1, runs=10, rounds=3), 10)


def test_campaign_stores_network_memory_and_model_size(tmp_path: Path) -> None:
    """A network's record carries its measured peak and file size, a kernel's only its size;
    the card keeps the network's graph figures for calibration."""
    network = Subject.chain("chain:two-convs", "chain", NET)
    kernel = Subject.op(SMALL)
    config = CampaignConfig(settings=RunSettings(threads=1, warmup=1, runs=2, rounds=1),
                            calibration_runs=0, max_load=None)
    summary = measure_into_dataset([network, kernel], local_device(threads=1), "onnxruntime",
                                   tmp_path / "ds", config)
    assert summary.failed == 0
    ds = LatencyDataset.open(tmp_path / "ds")
    rows = ds.records().set_index("key")
    runner = get_runner("onnxruntime")
    net, op = rows.loc["chain:two-convs"], rows.loc[SMALL.key()]
    assert net["model_size_bytes"] == len(network.model_bytes(runner))
    assert op["model_size_bytes"] == len(kernel.model_bytes(runner))
    assert net["memory_method"].startswith("rss-") and net["peak_memory_bytes"] > 0
    assert op["memory_method"] == "" and op["peak_memory_bytes"] is pd.NA
    figures = ds.card[CARD_KEY]["chain:two-convs"]
    assert figures["conv_weight_bytes"] == (32 * 3 * 9 + 32 + 64 * 32 * 9 + 64) * 4


def test_version_4_files_read_with_empty_memory_columns(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    ds = LatencyDataset.create(root, {})
    old = LatencyRecord.for_network("n:old", "n", device="d", runtime="onnxruntime", min_ms=1.0)
    new = LatencyRecord.for_network("n:new", "n", device="d", runtime="onnxruntime", min_ms=1.0,
                                    peak_memory_bytes=5 * MIB, model_size_bytes=4096,
                                    memory_method="rss-hwm: x")
    v4 = pa.Table.from_pylist([old.as_row()], schema=SCHEMA).drop_columns(
        ["peak_memory_bytes", "model_size_bytes", "memory_method"])
    pq.write_table(v4, root / "records" / "part-00000000000000000001-v4.parquet")
    assert ds.append([new]) == 1
    frame = ds.records().set_index("key")
    assert frame.loc["n:old", "peak_memory_bytes"] is pd.NA
    assert frame.loc["n:old", "model_size_bytes"] is pd.NA
    assert frame.loc["n:old", "memory_method"] == ""
    assert frame.loc["n:new", "peak_memory_bytes"] == 5 * MIB
    back = LatencyRecord.from_row(frame.reset_index().set_index("key", drop=False).loc["n:old"])
    assert back.peak_memory_bytes is None and back.model_size_bytes is None
    assert not math.isnan(frame.loc["n:new", "min_ms"])
