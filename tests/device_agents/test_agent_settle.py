"""Settling whole networks: untimed calls at each visit until a model's times stop falling
(the agent's `settle`), asked for per model by the host when `RunSettings.settle` is on - on a
synthetic stream whose model warms up after every other model's call, and on a real network
through ONNX Runtime."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latbench.bench.network_sets import resolve_networks
from latbench.bench.runners import RunSettings, get_runner
from latbench.cli.common import add_run_settings, run_settings
from latbench.device_agents import AGENT_SCRIPT, Device, LocalTransport
from latbench.device_agents.agent import latbench_agent as agent
from latbench.errors import ConfigError

RULE = {"target_rel_width": 0.02, "confidence": 0.95, "min_runs": 20, "max_runs": 60,
        "max_seconds": 30.0}
STEADY_MS = 1.0
COLD_EXCESS = 0.3  # a visit's first call runs 1.3x its steady time ...
DECAY = 0.8  # ... and the excess shrinks by this factor with every consecutive call


class WarmingBackend:
    """Self-timed fake runtime: "net" runs COLD_EXCESS above its steady time on the first call
    after another model ran, the excess decaying by DECAY per consecutive call, like a LiteRT
    MobileNetV2 (docs/measurement.md); "kernel" is always 0.1 ms."""

    self_timed = True
    version = "0-warming"
    last = ""
    streak = 0

    def __init__(self, req: dict) -> None:
        self.req = req

    def load(self, path: str, rng: object):
        name = Path(path).name

        def run() -> float:
            cls = WarmingBackend
            cls.streak = cls.streak + 1 if cls.last == name else 0
            cls.last = name
            if name == "net":
                return STEADY_MS * (1.0 + COLD_EXCESS * DECAY ** cls.streak)
            return 0.1

        return run


def measure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settle: bool,
            rule: dict | None = RULE) -> dict:
    monkeypatch.setitem(agent.BACKENDS, "onnxruntime", WarmingBackend)
    WarmingBackend.last, WarmingBackend.streak = "", 0
    req = agent.validate_request({
        "runtime": "onnxruntime", "threads": 1, "warmup": 0, "runs": 10, "rounds": 3,
        "stop": rule, "models": [{"id": "net", "path": "/m/net", "settle": settle},
                                 {"id": "kernel", "path": "/m/kernel"}]})
    reply = agent.measure(req, str(tmp_path))
    return {r["id"]: r for r in reply["results"]}


@pytest.mark.parametrize("rule", [RULE, None], ids=["stopping-rule", "fixed"])
def test_a_settled_network_is_timed_at_its_steady_speed(monkeypatch, tmp_path: Path,
                                                        rule: dict | None) -> None:
    cold = measure(monkeypatch, tmp_path, settle=False, rule=rule)["net"]
    warm = measure(monkeypatch, tmp_path, settle=True, rule=rule)["net"]
    cold_samples = np.concatenate(cold["samples_ms"])
    warm_samples = np.concatenate(warm["samples_ms"])
    # unsettled, every visit starts on the cold call; settled, no timed call is 3% off
    assert cold_samples.max() == pytest.approx(STEADY_MS * (1 + COLD_EXCESS))
    assert warm_samples.max() < STEADY_MS * 1.03
    assert np.median(cold_samples) > np.median(warm_samples)
    # one settling per visit, each at least two windows and within the cap, none on the kernel
    visits = warm["settle_calls"]
    assert len(visits) == len(warm["samples_ms"])
    assert all(2 * agent.SETTLE_WINDOW <= n <= agent.SETTLE_MAX_CALLS for n in visits)
    assert "settle_calls" not in cold


def test_settling_stops_at_the_cap_for_a_model_that_keeps_falling(monkeypatch) -> None:
    times = iter(np.geomspace(100.0, 1.0, 500))
    calls = agent.settle(lambda: float(next(times)), True, lambda: 0)
    assert calls == agent.SETTLE_MAX_CALLS


def test_a_model_already_steady_settles_in_two_windows() -> None:
    assert agent.settle(lambda: 1.0, True, lambda: 0) == 2 * agent.SETTLE_WINDOW


def test_the_request_checks_settle_is_a_flag() -> None:
    with pytest.raises(agent.AgentFailure, match="settle"):
        agent.validate_request({"runtime": "onnxruntime", "threads": 1, "warmup": 0,
                                "runs": 1, "rounds": 1,
                                "models": [{"id": "a", "path": "a", "settle": "yes"}]})


def test_settings_key_and_request_say_whether_networks_settle(tmp_path: Path) -> None:
    plain, settled = RunSettings(), RunSettings(settle=True)
    assert plain.key("litert") == "threads=1,warmup=10,runs=20,rounds=5,delegate=xnnpack"
    assert settled.key("litert") == plain.key("litert") + ",settle=on"
    assert settled.key("onnxruntime").endswith(",opt=all,settle=on")
    # a native tool reports statistics of calls it times itself: nothing to settle
    assert settled.key("tflite-benchmark-model") == plain.key("tflite-benchmark-model")
    stream = RunSettings(settle=True, queries=8)
    assert "settle" not in stream.key("litert")
    with pytest.raises(ConfigError, match="settle"):
        RunSettings(settle="on")  # type: ignore[arg-type]
    device = Device("local", LocalTransport(), ("onnxruntime",), str(tmp_path))
    runner = get_runner("onnxruntime")
    pairs = [("net", "/d/net.onnx"), ("op", "/d/op.onnx")]
    asked = runner.request(settled, device, pairs, settle={"net"})
    assert [m.get("settle", False) for m in asked["models"]] == [True, False]
    off = runner.request(plain, device, pairs, settle={"net"})
    assert not any("settle" in m for m in off["models"])


def test_the_cli_settles_unless_told_not_to() -> None:
    parser = argparse.ArgumentParser()
    add_run_settings(parser)
    assert run_settings(parser.parse_args([])).settle is True
    assert run_settings(parser.parse_args(["--no-settle"])).settle is False


def test_stored_settings_from_before_settling_read_as_unsettled() -> None:
    stored = {"threads": 1, "warmup": 10, "runs": 10, "target_ci": 0.02}
    assert RunSettings(**stored).settle is False


def test_a_real_network_is_settled_at_every_visit(tmp_path: Path) -> None:
    """The agent as a device runs it: a subprocess, real ONNX Runtime, a NAS-Bench-Macro
    network."""
    script = tmp_path / "dev" / "latbench_agent.py"
    script.parent.mkdir()
    shutil.copyfile(AGENT_SCRIPT, script)
    net = tmp_path / "net.onnx"
    network = resolve_networks("nasbench-macro:1", 0)[0]
    net.write_bytes(network.model_bytes(get_runner("onnxruntime")))
    rule = {"target_rel_width": 0.05, "confidence": 0.95, "min_runs": 20, "max_runs": 60,
            "max_seconds": 2.0}
    request = tmp_path / "request.json"
    request.write_text(json.dumps({
        "runtime": "onnxruntime", "threads": 1, "warmup": 2, "runs": 10, "rounds": 1,
        "stop": rule, "models": [{"id": "net", "path": str(net), "settle": True},
                                 {"id": "also", "path": str(net)}]}))
    proc = subprocess.run([sys.executable, str(script), "measure", str(request)],
                          capture_output=True, text=True, timeout=120)
    reply = json.loads(proc.stdout)
    assert proc.returncode == 0 and reply["status"] == "ok", reply
    results = {r["id"]: r for r in reply["results"]}
    settled = results["net"]
    assert len(settled["settle_calls"]) == len(settled["samples_ms"]) >= 2
    assert all(n >= 2 * agent.SETTLE_WINDOW for n in settled["settle_calls"])
    assert "settle_calls" not in results["also"]
    assert reply["agent_version"] == agent.AGENT_VERSION == "8"
