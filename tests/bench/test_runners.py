"""Runners on the local device with real runtimes, plus the host side's error handling."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from latbench.bench.export.graph import spec_graph
from latbench.bench.ops import OpSpec
from latbench.bench.runners import (
    MEMORY_ID,
    OVERHEAD_ID,
    REFERENCE_ID,
    RUNNERS,
    AgentRunner,
    BatchResult,
    Measurement,
    ModelFile,
    Runner,
    RunSettings,
    get_runner,
    register_runner,
)
from latbench.device_agents import (
    CommandResult,
    Device,
    LineCallback,
    LocalTransport,
    local_device,
)
from latbench.errors import AgentError, ConfigError, RunnerError, TransportError

BIG = OpSpec("conv", h=32, w=32, cin=64, cout=64, kernel=3)
SMALL = OpSpec("conv", h=8, w=8, cin=8, cout=8, kernel=3)
QUICK = RunSettings(warmup=3, runs=10, rounds=3)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return local_device(str(tmp_path / "work"))


def leftovers(device: Device) -> list[str]:
    return sorted(os.listdir(device.work_dir))


@pytest.mark.parametrize("runtime", ["onnxruntime", "litert"])
def test_local_measurement_is_sane(device: Device, runtime: str) -> None:
    runner = get_runner(runtime)
    models = [ModelFile("big", runner.export(spec_graph(BIG))),
              ModelFile("small", runner.export(spec_graph(SMALL))),
              ModelFile("corrupt", b"\x00not a model\xff" * 64)]
    result = runner.measure(device, models, QUICK, timeout_s=300)
    assert isinstance(result, BatchResult)
    assert [m.id for m in result.measurements] == ["big", "small", "corrupt"]
    assert result.runtime == runtime and result.device == "local"
    if runtime == "onnxruntime":
        import onnxruntime

        assert result.runtime_version == onnxruntime.__version__
    else:
        import ai_edge_litert

        assert result.runtime_version == ai_edge_litert.__version__
    big, small, corrupt = result.measurements
    for m in (big, small):
        assert m.ok and m.error == ""
        assert len(m.samples_ms) == QUICK.rounds
        assert all(len(r) == QUICK.runs for r in m.samples_ms)
        s = m.stats
        assert s is not None
        assert 0 < s.min_ms <= s.median_ms <= s.p90_ms
        assert s.n_runs == QUICK.rounds * QUICK.runs
    # 37.7 M vs 37 k multiply-adds: orders of magnitude apart, so a 3x margin is safe yet failable.
    assert big.stats.median_ms > 3 * small.stats.median_ms  # type: ignore[union-attr]
    assert 0 < result.overhead_ms < big.stats.median_ms  # type: ignore[union-attr]
    assert corrupt.status == "failed" and corrupt.stats is None and corrupt.samples_ms == ()
    assert "load failed" in corrupt.error
    assert "temps_c" in result.facts_before and "temps_c" in result.facts_after
    assert result.get("small") is small
    assert leftovers(device) == []  # the batch dir was removed from the device


def test_settings_key() -> None:
    s = RunSettings()
    assert s.key("onnxruntime") == "threads=1,warmup=10,runs=20,rounds=5,opt=all"
    assert s.key("litert") == "threads=1,warmup=10,runs=20,rounds=5,delegate=xnnpack"
    t = RunSettings(threads=4, warmup=0, runs=7, rounds=2, graph_opt="basic", delegate="builtin")
    assert t.key("onnxruntime") == "threads=4,warmup=0,runs=7,rounds=2,opt=basic"
    assert t.key("litert") == "threads=4,warmup=0,runs=7,rounds=2,delegate=builtin"
    # A field irrelevant to a runtime does not change its key.
    assert RunSettings(delegate="builtin").key("onnxruntime") == s.key("onnxruntime")
    with pytest.raises(ConfigError, match="tvm"):
        s.key("tvm")


@pytest.mark.parametrize("kwargs, match", [
    ({"threads": 0}, "threads"), ({"runs": 0}, "runs"), ({"rounds": 1.5}, "rounds"),
    ({"warmup": -1}, "warmup"), ({"graph_opt": "O3"}, "graph_opt"),
    ({"delegate": "nnapi"}, "delegate"),
])
def test_settings_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RunSettings(**kwargs)


def test_registry() -> None:
    assert {"onnxruntime", "litert"} <= set(RUNNERS)
    ort, lite = get_runner("onnxruntime"), get_runner("litert")
    assert (ort.name, ort.suffix) == ("onnxruntime", ".onnx")
    assert (lite.name, lite.suffix) == ("litert", ".tflite")
    assert isinstance(ort, Runner) and isinstance(lite, Runner)
    with pytest.raises(ConfigError, match=r"unknown runner 'tensorrt'.*litert, onnxruntime"):
        get_runner("tensorrt")
    with pytest.raises(ConfigError, match="already registered"):
        register_runner("onnxruntime")(type("Dup", (AgentRunner,), {}))
    assert RUNNERS["onnxruntime"] is type(ort)


def test_runtime_not_on_device(tmp_path: Path) -> None:
    device = Device("pi4", LocalTransport(), ("onnxruntime",), str(tmp_path))
    runner = get_runner("litert")
    with pytest.raises(RunnerError, match="litert.*pi4"):
        runner.measure(device, [ModelFile("m", b"x")], QUICK, timeout_s=10)


def test_bad_batches_are_refused(device: Device) -> None:
    runner = get_runner("onnxruntime")
    with pytest.raises(ConfigError, match="no models"):
        runner.measure(device, [], QUICK, 10)
    with pytest.raises(ConfigError, match="duplicate model ids in batch: a"):
        runner.measure(device, [ModelFile("a", b"x"), ModelFile("a", b"y")], QUICK, 10)
    with pytest.raises(ConfigError, match="reserved"):
        runner.measure(device, [ModelFile(OVERHEAD_ID, b"x")], QUICK, 10)
    with pytest.raises(ConfigError):
        ModelFile("", b"x")
    with pytest.raises(ConfigError):
        ModelFile("a", b"")


def test_garbage_stdout_is_an_agent_error(tmp_path: Path) -> None:
    # "python" that just echoes its arguments: stdout is text, not the agent's JSON.
    device = Device("echo-box", LocalTransport(), ("onnxruntime",), str(tmp_path / "w"),
                    python="echo")
    runner = get_runner("onnxruntime")
    with pytest.raises(AgentError, match="echo-box.*did not print its JSON"):
        runner.measure(device, [ModelFile("m", runner.export(spec_graph(SMALL)))], QUICK, 30)
    assert leftovers(device) == []


def test_timeout_raises_and_cleans_up(tmp_path: Path) -> None:
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    device = Device("slowpoke", LocalTransport(), ("onnxruntime",), str(tmp_path / "w"),
                    python=str(slow))
    runner = get_runner("onnxruntime")
    with pytest.raises(TransportError, match="timed out"):
        runner.measure(device, [ModelFile("m", runner.export(spec_graph(SMALL)))], QUICK, 0.5)
    assert leftovers(device) == []


class CannedTransport(LocalTransport):
    """Runs mkdir/rm for real but answers the agent call with a canned reply, after recording
    the request the runner wrote."""

    def __init__(self, reply: object, returncode: int = 0) -> None:
        super().__init__()
        self.reply = reply
        self.returncode = returncode
        self.request: dict | None = None

    def run(self, argv: Sequence[str], timeout_s: float,
            on_stderr: LineCallback | None = None) -> CommandResult:
        if "measure" not in argv:
            return super().run(argv, timeout_s, on_stderr)
        self.request = json.loads(Path(argv[-1]).read_text())
        reply = self.reply(self.request) if callable(self.reply) else self.reply
        stdout = reply if isinstance(reply, str) else json.dumps(reply)
        return CommandResult(tuple(argv), self.returncode, stdout, "", 0.01)


def ok_reply(request: dict, rounds: int = 3, runs: int = 10) -> dict:
    return {"status": "ok", "runtime": request["runtime"], "runtime_version": "9.9",
            "facts_before": {"temps_c": None}, "facts_after": {"temps_c": None},
            "results": [{"id": m["id"], "status": "ok", "error": "",
                         "samples_ms": [[1.0 + i] * runs for i in range(rounds)]}
                        for m in request["models"]]}


def failed_probe_reply(request: dict, probe_id: str, error: str) -> dict:
    reply = ok_reply(request)
    reply["results"] = [{"id": probe_id, "status": "failed", "samples_ms": [], "error": error}
                        if item["id"] == probe_id else item for item in reply["results"]]
    return reply


def canned_device(tmp_path: Path, transport: CannedTransport, **kw: object) -> Device:
    return Device("canned", transport, ("onnxruntime", "litert"), str(tmp_path / "w"), **kw)


def test_request_carries_settings_and_affinity(tmp_path: Path) -> None:
    transport = CannedTransport(ok_reply)
    device = canned_device(tmp_path, transport, cpu_affinity=(1,))
    settings = RunSettings(threads=2, warmup=4, runs=10, rounds=3, graph_opt="extended")
    result = get_runner("onnxruntime").measure(
        device, [ModelFile("a", b"1"), ModelFile("b", b"2")], settings, 10)
    req = transport.request
    assert req is not None
    assert {k: req[k] for k in ("runtime", "threads", "warmup", "runs", "rounds", "graph_opt",
                                "affinity")} == {
        "runtime": "onnxruntime", "threads": 2, "warmup": 4, "runs": 10, "rounds": 3,
        "graph_opt": "extended", "affinity": [1]}
    assert [m["id"] for m in req["models"]] == ["a", "b", OVERHEAD_ID, REFERENCE_ID, MEMORY_ID]
    assert [m.get("track", False) for m in req["models"]] == [False, False, False, True, True]
    assert all(m["path"].startswith(device.work_dir + "/batch-") for m in req["models"])
    assert all(m["path"].endswith(".onnx") for m in req["models"])
    assert [m.id for m in result.measurements] == ["a", "b"]
    assert result.overhead_ms == 2.0  # median of rounds [1]*10, [2]*10, [3]*10
    assert result.reference_ms == 1.0  # the fastest round's median
    assert result.runtime_version == "9.9"
    assert leftovers(device) == []


def test_default_settings_use_device_threads(tmp_path: Path) -> None:
    transport = CannedTransport(lambda r: ok_reply(r, rounds=5, runs=20))
    device = canned_device(tmp_path, transport, threads=3)
    get_runner("litert").measure(device, [ModelFile("a", b"1")], timeout_s=10)
    assert transport.request is not None and transport.request["threads"] == 3
    assert transport.request["delegate"] == "xnnpack"


@pytest.mark.parametrize("reply, error, match", [
    ({"status": "error", "kind": "runtime_missing", "error": "no module onnxruntime"},
     RunnerError, "onnxruntime.*canned.*no module"),
    ({"status": "error", "kind": "bad_request", "error": "runs must be >= 1"},
     AgentError, "canned.*runs must be"),
    ([1, 2, 3], AgentError, "not an agent reply"),
    ("", AgentError, "did not print"),
    (lambda r: {**ok_reply(r), "results": ok_reply(r)["results"][:1]}, AgentError, "ids"),
    (lambda r: ok_reply(r, rounds=2), AgentError, "3 rounds x 10 runs"),
    (lambda r: {**ok_reply(r), "results": "none"}, AgentError, "results"),
    (lambda r: failed_probe_reply(r, OVERHEAD_ID, "boom"),
     RunnerError, "overhead probe model failed.*boom"),
    (lambda r: failed_probe_reply(r, REFERENCE_ID, "bang"),
     RunnerError, "reference probe model failed.*bang"),
])
def test_bad_agent_replies(tmp_path: Path, reply: object, error: type, match: str) -> None:
    device = canned_device(tmp_path, CannedTransport(reply, returncode=0))
    with pytest.raises(error, match=match):
        get_runner("onnxruntime").measure(device, [ModelFile("a", b"1")], QUICK, 10)
    assert leftovers(device) == []


def test_ok_reply_with_nonzero_exit_is_an_agent_error(tmp_path: Path) -> None:
    device = canned_device(tmp_path, CannedTransport(ok_reply, returncode=1))
    with pytest.raises(AgentError, match="exited 1"):
        get_runner("onnxruntime").measure(device, [ModelFile("a", b"1")], QUICK, 10)


def test_failed_measurement_has_no_stats() -> None:
    m = Measurement("x", "failed", (), "load failed: bad file")
    assert not m.ok and m.stats is None
    ok = Measurement("y", "ok", ((2.0, 4.0), (3.0,)))
    assert ok.stats is not None and ok.stats.median_ms == 3.0 and ok.stats.n_runs == 3


class ProgressLog:
    """A progress callback that also notes whether the batch was still on the device (its
    folder in the work dir) when it was called: then it was streamed, not reported at the end."""

    def __init__(self, work_dir: str) -> None:
        self.work_dir = work_dir
        self.steps: list[float] = []
        self.during_batch = 0

    def __call__(self, step: float) -> None:
        assert step > 0
        self.steps.append(step)
        self.during_batch += any(n.startswith("batch-") for n in os.listdir(self.work_dir))


def test_local_batch_reports_progress_per_model(device: Device) -> None:
    runner = get_runner("onnxruntime")
    models = [ModelFile(f"m{i}", runner.export(spec_graph(SMALL))) for i in range(3)]
    models.append(ModelFile("corrupt", b"\x00not a model" * 8))
    log = ProgressLog(device.work_dir)
    result = runner.measure(device, models, QUICK, timeout_s=300, progress=log)
    assert [m.ok for m in result.measurements] == [True, True, True, False]
    assert sum(log.steps) == pytest.approx(len(models))
    assert len(log.steps) > len(models) and log.during_batch >= len(models)


def test_ssh_batch_reports_progress_per_model(sshd_hosts, client_key, known_hosts) -> None:
    import sys

    from latbench.device_agents import SSHTransport

    host = sshd_hosts("a")
    transport = SSHTransport("127.0.0.1", port=host.port, key_file=client_key,
                             known_hosts=known_hosts(host), connect_retries=1)
    board = Device("board", transport, ("onnxruntime",), str(host.work_dir),
                   python=sys.executable)
    runner = get_runner("onnxruntime")
    models = [ModelFile(f"m{i}", runner.export(spec_graph(SMALL))) for i in range(4)]
    log = ProgressLog(board.work_dir)
    with transport:
        result = runner.measure(board, models, RunSettings(warmup=1, runs=3, target_ci=0.5,
                                                           min_runs=3, max_runs=9),
                                timeout_s=300, progress=log)
    assert all(m.ok for m in result.measurements)
    assert sum(log.steps) == pytest.approx(len(models)) and log.during_batch >= 1
    assert leftovers(board) == []


def test_native_tool_reports_progress_as_each_run_ends(benchmark_model_binary,
                                                       tmp_path: Path) -> None:
    phone = Device("phone", LocalTransport(), ("tflite-benchmark-model",), str(tmp_path / "w"),
                   python=None, tools={"benchmark_model": str(benchmark_model_binary)})
    runner = get_runner("tflite-benchmark-model")
    models = [ModelFile(f"m{i}", runner.export(spec_graph(SMALL))) for i in range(3)]
    steps: list[float] = []
    result = runner.measure(phone, models, RunSettings(warmup=1, runs=3, rounds=2), 300,
                            progress=steps.append)
    assert all(m.ok for m in result.measurements)
    assert steps == [0.5] * 6  # one step per model and round, probes not counted


def test_progress_lines_never_reach_errors(tmp_path: Path) -> None:
    """The agent's progress lines are consumed even when nobody listens: a failing batch's
    error shows the agent's own stderr only."""
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\necho 'latbench-progress 1.000000 3' >&2\n"
                      "echo 'real trouble' >&2\nexit 5\n")
    script.chmod(0o755)
    device = Device("fake", LocalTransport(), ("onnxruntime",), str(tmp_path / "w"),
                    python=str(script))
    with pytest.raises(AgentError, match="real trouble") as info:
        get_runner("onnxruntime").measure(device, [ModelFile("a", b"1")], QUICK, 30)
    assert "latbench-progress" not in str(info.value)
