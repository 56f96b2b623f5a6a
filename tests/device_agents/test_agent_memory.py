"""The agent's peak memory: the resident-set arithmetic and its fallbacks, and the real agent
measuring real ONNX Runtime models in processes of their own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latbench.bench.export.graph import spec_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.memory import profile_model
from latbench.bench.ops import OpSpec
from latbench.device_agents import AGENT_SCRIPT
from latbench.device_agents.agent import latbench_agent as agent

MIB = 1 << 20
SMALL = OpSpec("act", h=32, w=32, cin=32, act="relu")    # 128 KiB in, 128 KiB out
LARGE = OpSpec("act", h=512, w=512, cin=32, act="relu")  # 32 MiB in, 32 MiB out


class FakeProc:
    """A process whose /proc/self/status reads the scripted (VmRSS, VmHWM) pairs in turn."""

    def __init__(self, readings: list[tuple[int, int]], resettable: bool = True) -> None:
        self.readings = list(readings)
        self.resettable = resettable
        self.loaded = self.calls = 0

    def status(self) -> dict | None:
        rss, hwm = self.readings.pop(0)
        return {"VmRSS": rss, "VmHWM": hwm}

    def reset(self) -> bool:
        return self.resettable

    def load(self):
        self.loaded += 1

        def run() -> None:
            self.calls += 1
        return run


def test_high_water_mark_above_the_rss_before_loading() -> None:
    # before loading: rss 100, hwm reset to 100; the load and calls peak at 180, settle at 150
    proc = FakeProc([(100, 100), (150, 180), (150, 180), (150, 180)])
    out = agent.peak_memory_here(proc.load, 2, proc.status, proc.reset)
    assert (out["peak_bytes"], out["baseline_bytes"]) == (80, 100)
    assert out["method"].startswith("rss-hwm:") and "reset" in out["method"]
    assert (proc.loaded, proc.calls) == (1, 2)


def test_an_unresettable_mark_still_counts_when_the_load_passed_it() -> None:
    # the imports left a mark of 120 above the rss of 100; the load passed it (to 170)
    proc = FakeProc([(100, 120), (140, 170), (140, 170)], resettable=False)
    out = agent.peak_memory_here(proc.load, 1, proc.status, proc.reset)
    assert out["peak_bytes"] == 70 and "not resettable; passed" in out["method"]


def test_an_unresettable_mark_not_passed_falls_back_to_samples() -> None:
    # the mark (300) stays the imports': only the sampled rss says something (peak 160)
    proc = FakeProc([(100, 300), (130, 300), (160, 300), (150, 300)], resettable=False)
    out = agent.peak_memory_here(proc.load, 2, proc.status, proc.reset)
    assert out["peak_bytes"] == 60 and out["method"].startswith("rss-samples:")


def test_no_proc_status_is_not_available() -> None:
    out = agent.peak_memory_here(lambda: None, 1, lambda: None, lambda: False)
    assert out["peak_bytes"] is None and out["method"].startswith("not available")


def test_memory_status_reads_kib_lines(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    assert agent.memory_status(str(status)) == {"VmHWM": 2 * MIB, "VmRSS": MIB}
    status.write_text("VmRSS:\t1024 kB\n")
    assert agent.memory_status(str(status)) is None
    assert agent.memory_status(str(tmp_path / "missing")) is None


def test_request_refuses_a_memory_flag_that_is_not_a_bool() -> None:
    req = {"runtime": "onnxruntime", "threads": 1, "warmup": 0, "runs": 1, "rounds": 1,
           "models": [{"id": "a", "path": "a.onnx", "memory": "yes"}]}
    with pytest.raises(agent.AgentFailure, match="'memory': bool"):
        agent.validate_request(req)


@pytest.mark.skipif(agent.memory_status() is None, reason="no /proc/self/status here")
def test_real_agent_peak_grows_with_the_activations(tmp_path: Path) -> None:
    """The agent copied as on a device measures both models in processes of their own: the
    large model's peak exceeds the small one's by about the extra activation bytes its graph
    holds live (the runtime may add a copy or two), and models not asked for get no figure."""
    script = tmp_path / "dev" / "latbench_agent.py"
    script.parent.mkdir()
    shutil.copyfile(AGENT_SCRIPT, script)
    models = {}
    for name, spec in (("small", SMALL), ("large", LARGE)):
        data = to_onnx(spec_graph(spec))
        (tmp_path / f"{name}.onnx").write_bytes(data)
        models[name] = profile_model(data)
    request = {"runtime": "onnxruntime", "threads": 1, "warmup": 1, "runs": 2, "rounds": 1,
               "models": [{"id": "small", "path": "small.onnx", "memory": True},
                          {"id": "large", "path": "large.onnx", "memory": True},
                          {"id": "plain", "path": "small.onnx"}]}
    (tmp_path / "request.json").write_text(json.dumps(request))
    proc = subprocess.run([sys.executable, str(script), "measure", "request.json"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    reply = json.loads(proc.stdout)
    assert proc.returncode == 0, reply
    results = {r["id"]: r for r in reply["results"]}
    assert "memory" not in results["plain"]
    small, large = results["small"]["memory"], results["large"]["memory"]
    assert small["method"].startswith("rss-") and large["method"] == small["method"]
    grew = large["peak_bytes"] - small["peak_bytes"]
    extra = models["large"].activation_peak_bytes - models["small"].activation_peak_bytes
    assert extra > 60 * MIB
    assert 0.9 * extra <= grew <= 3 * extra, (grew, extra)
    assert all(r["status"] == "ok" and r["samples_ms"] for r in reply["results"])


def test_a_model_that_cannot_load_gets_a_null_figure_with_its_error(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"\x00not a model" * 16)
    req = agent.validate_request({"runtime": "onnxruntime", "threads": 1, "warmup": 0,
                                  "runs": 1, "rounds": 1,
                                  "models": [{"id": "bad", "path": "bad.onnx", "memory": True}]})
    out = agent.measure_peak_memory(req, {"bad": str(tmp_path / "bad.onnx")})
    assert out["bad"]["peak_bytes"] is None and out["bad"]["error"]
    assert out["bad"]["method"].startswith("not available")
