"""The agent's stopping rule: interleaved rounds continue over the models not yet done, the
reference probe is tracked through the whole batch, caps hold - on synthetic streams (a
self-timed fake backend returns chosen samples) and on real tiny models with ONNX Runtime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from latbench.bench.export.graph import spec_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.ops import OpSpec
from latbench.device_agents import AGENT_SCRIPT
from latbench.device_agents.agent import latbench_agent as agent

RULE = {"target_rel_width": 0.02, "confidence": 0.95, "min_runs": 20, "max_runs": 200,
        "max_seconds": 30.0}


class StreamBackend:
    """Self-timed fake runtime: model "steady" returns ~1 ms +- 0.1%, "noisy" lognormal
    sigma 0.5, "slow" too but sleeps 5 ms per call, "ref" a constant; every call is logged."""

    self_timed = True
    version = "0-stream"
    log: list[str] = []

    def __init__(self, req: dict) -> None:
        self.req = req

    def load(self, path: str, rng: object):
        name = Path(path).name
        gen = np.random.default_rng(len(name))

        def run() -> float:
            StreamBackend.log.append(name)
            if name == "steady":
                return float(gen.normal(1.0, 0.001))
            if name == "noisy":
                return float(gen.lognormal(0.0, 0.5))
            if name == "slow":
                time.sleep(0.005)
                return float(gen.lognormal(np.log(5.0), 0.5))
            return 2.0

        return run


def measure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, names: list[str], rule: dict,
            runs: int = 10, track: tuple[str, ...] = ()) -> dict:
    StreamBackend.log = []
    monkeypatch.setitem(agent.BACKENDS, "onnxruntime", StreamBackend)
    req = agent.validate_request({
        "runtime": "onnxruntime", "threads": 1, "warmup": 0, "runs": runs, "rounds": 1,
        "stop": rule, "models": [{"id": n, "path": f"/m/{n}", "track": n in track}
                                 for n in names]})
    reply = agent.measure(req, str(tmp_path))
    return {r["id"]: r for r in reply["results"]}


def test_rounds_continue_over_models_not_yet_done(monkeypatch, tmp_path: Path) -> None:
    res = measure(monkeypatch, tmp_path, ["steady", "noisy", "ref"], RULE, track=("ref",))
    steady, noisy, ref = res["steady"], res["noisy"], res["ref"]
    # steady converges at its minimum (2 rounds of 10); noisy runs to the 200-run cap
    assert steady["stop"]["reason"] == "converged" and steady["stop"]["n"] == 20
    assert [len(r) for r in steady["samples_ms"]] == [10, 10]
    assert steady["stop"]["ci_rel_width"] <= 0.02
    assert noisy["stop"]["reason"] == "max_runs" and noisy["stop"]["n"] == 200
    assert len(noisy["samples_ms"]) == 20 and noisy["stop"]["ci_rel_width"] > 0.02
    # the tracked reference runs in every round while anything else does, then stops
    assert ref["stop"]["reason"] == "tracked" and len(ref["samples_ms"]) == 20
    # interleaved: rounds 1-2 visit all three (in a shuffled order, 10 calls each);
    # afterwards only noisy and the reference
    log = StreamBackend.log
    for start in (0, 30):
        assert sorted(log[start:start + 30:10]) == ["noisy", "ref", "steady"]
        assert all(len(set(log[i:i + 10])) == 1 for i in range(start, start + 30, 10))
    assert set(log[60:]) == {"noisy", "ref"} and sorted(log[60:80:10]) == ["noisy", "ref"]


def test_time_cap_and_partial_last_round(monkeypatch, tmp_path: Path) -> None:
    rule = {**RULE, "max_seconds": 0.2, "max_runs": 1000, "target_rel_width": 1e-9}
    res = measure(monkeypatch, tmp_path, ["slow"], rule)
    stop = res["slow"]["stop"]
    # 5 ms per call: the 0.2 s cap is hit after ~40 calls, checked at round ends
    assert stop["reason"] == "max_seconds" and 20 <= stop["n"] <= 60
    assert stop["seconds"] >= 0.2
    rule = {**RULE, "max_runs": 25, "target_rel_width": 1e-9}
    res = measure(monkeypatch, tmp_path, ["noisy"], rule)
    assert [len(r) for r in res["noisy"]["samples_ms"]] == [10, 10, 5]  # capped exactly
    assert res["noisy"]["stop"] == {**res["noisy"]["stop"], "reason": "max_runs", "n": 25}


def test_tracked_model_alone_still_gets_a_round(monkeypatch, tmp_path: Path) -> None:
    res = measure(monkeypatch, tmp_path, ["ref"], RULE, track=("ref",))
    assert [len(r) for r in res["ref"]["samples_ms"]] == [10]


def test_fixed_protocol_is_unchanged(monkeypatch, tmp_path: Path) -> None:
    StreamBackend.log = []
    monkeypatch.setitem(agent.BACKENDS, "onnxruntime", StreamBackend)
    req = agent.validate_request({"runtime": "onnxruntime", "threads": 1, "warmup": 0,
                                  "runs": 4, "rounds": 3,
                                  "models": [{"id": "noisy", "path": "/m/noisy"}]})
    reply = agent.measure(req, str(tmp_path))
    (res,) = reply["results"]
    assert [len(r) for r in res["samples_ms"]] == [4, 4, 4] and "stop" not in res
    assert reply["settings"]["stop"] is None


def test_real_tiny_models_report_their_widths(tmp_path: Path) -> None:
    """The agent as a device runs it (a subprocess, real ONNX Runtime, stopping rule)."""
    script = tmp_path / "dev" / "latbench_agent.py"
    script.parent.mkdir()
    shutil.copyfile(AGENT_SCRIPT, script)
    models = []
    for name, spec in (("conv", OpSpec("conv", h=16, w=16, cin=16, cout=16, kernel=3)),
                       ("relu", OpSpec("act", h=8, w=8, cin=8, act="relu"))):
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(to_onnx(spec_graph(spec)))
        models.append({"id": name, "path": str(path)})
    models[0]["track"] = False
    rule = {"target_rel_width": 0.05, "confidence": 0.95, "min_runs": 30, "max_runs": 300,
            "max_seconds": 2.0}
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"runtime": "onnxruntime", "threads": 1, "warmup": 3,
                                   "runs": 10, "rounds": 1, "stop": rule, "models": models}))
    proc = subprocess.run([sys.executable, str(script), "measure", str(request)],
                          capture_output=True, text=True, timeout=120)
    reply = json.loads(proc.stdout)
    assert proc.returncode == 0 and reply["status"] == "ok", reply
    assert reply["settings"]["stop"] == {**rule, "futility": None}
    for res in reply["results"]:
        stop = res["stop"]
        n = sum(len(r) for r in res["samples_ms"])
        assert stop["n"] == n and 30 <= n <= 300
        assert stop["reason"] in agent.STOP_REASONS
        width = agent.ci_rel_width([x for r in res["samples_ms"] for x in r], 0.95)
        assert stop["ci_rel_width"] == pytest.approx(width)
        assert (stop["reason"] == "converged") == (width <= 0.05)
