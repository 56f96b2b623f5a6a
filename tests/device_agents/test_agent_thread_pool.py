"""ONNX Runtime at threads > 1: the agent, a process of its own per batch, runs every session of
the batch on one process-wide intra-op pool. With a pool per session the idle pools' workers
compete with the timed one's for the cores and some sessions ran every call at one thread's
speed (BENCHMARKS.md, *platform_matrix*, ONNX Runtime fp32 2t); shared, each times as it does
alone. Run as a device runs the agent: a subprocess, real ONNX Runtime and LiteRT."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latbench.bench.network_sets import resolve_networks
from latbench.bench.runners import get_runner
from latbench.device_agents import AGENT_SCRIPT
from latbench.device_agents.agent import latbench_agent as agent


def measure(tmp_path: Path, runtime: str, threads: int) -> dict:
    script = tmp_path / "dev" / "latbench_agent.py"
    script.parent.mkdir(exist_ok=True)
    shutil.copyfile(AGENT_SCRIPT, script)
    runner = get_runner(runtime)
    models = []
    for index, network in enumerate(resolve_networks("nasbench-macro:2", 0)):
        path = tmp_path / f"net{index}{runner.suffix}"
        path.write_bytes(network.model_bytes(runner))
        models.append({"id": f"net{index}", "path": str(path)})
    request = tmp_path / f"{runtime}-{threads}.json"
    request.write_text(json.dumps({"runtime": runtime, "threads": threads, "warmup": 2,
                                   "runs": 5, "rounds": 2, "models": models}))
    proc = subprocess.run([sys.executable, str(script), "measure", str(request)],
                          capture_output=True, text=True, timeout=300)
    reply = json.loads(proc.stdout)
    assert proc.returncode == 0 and reply["status"] == "ok", reply
    assert [r["status"] for r in reply["results"]] == ["ok", "ok"]
    assert all(len(r["samples_ms"]) == 2 for r in reply["results"])
    return reply


def test_onnxruntime_sessions_share_one_pool_at_several_threads(tmp_path: Path) -> None:
    reply = measure(tmp_path, "onnxruntime", 2)
    assert reply["settings"]["threads"] == 2
    assert reply["settings"]["thread_pool"] == "process"


@pytest.mark.parametrize("runtime, threads", [("onnxruntime", 1), ("litert", 2)])
def test_a_pool_per_model_elsewhere(tmp_path: Path, runtime: str, threads: int) -> None:
    assert measure(tmp_path, runtime, threads)["settings"]["thread_pool"] == "per model"


def test_measuring_in_process_keeps_a_pool_per_session() -> None:
    """`measure` called in a process that made sessions before (a test, a notebook) cannot
    have a process-wide pool any more; only the agent's own command asks for one."""
    assert agent.ORT_PROCESS_POOL == []
