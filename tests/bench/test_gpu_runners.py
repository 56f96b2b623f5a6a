"""GPU runners on a machine without a GPU (this one): every path reports "unavailable: no
CUDA device" cleanly - the agent, the runner, local_device, `devices check`, the CLI. What can be
checked without a GPU is checked for real: the TorchScript export computes the graph."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latbench.bench.export.graph import chain_graph, spec_graph
from latbench.bench.export.reference import run_reference
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.export.to_pt2 import to_pt2
from latbench.bench.ops import OpSpec
from latbench.bench.runners import RUNNERS, ModelFile, RunSettings, get_runner
from latbench.cli import main
from latbench.device_agents import AGENT_SCRIPT, Device, LocalTransport, local_device
from latbench.device_agents.agent import latbench_agent as agent
from latbench.device_agents.fleet import _problems
from latbench.errors import RunnerError

SPEC = OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3, act="relu")
# Every registered runtime that needs a CUDA device.
GPU_RUNTIMES = [name for name, runner in RUNNERS.items() if runner.needs.cuda]


def test_this_machine_has_no_cuda_device() -> None:
    """The premise of the tests below (they would need changing on a GPU machine)."""
    assert agent.cuda_device_nodes() == []
    assert "no CUDA device" in agent.cuda_unavailable("torch-cuda")


@pytest.mark.parametrize("runtime", GPU_RUNTIMES)
def test_agent_reports_unavailable(tmp_path: Path, runtime: str) -> None:
    script = tmp_path / "dev" / "latbench_agent.py"
    script.parent.mkdir()
    shutil.copyfile(AGENT_SCRIPT, script)
    model = tmp_path / "m.onnx"
    model.write_bytes(to_onnx(spec_graph(SPEC)))
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"runtime": runtime, "threads": 1, "warmup": 1, "runs": 2,
                                   "rounds": 1, "models": [{"id": "m", "path": str(model)}]}))
    proc = subprocess.run([sys.executable, str(script), "measure", str(request)],
                          capture_output=True, text=True, timeout=120)
    reply = json.loads(proc.stdout)
    assert proc.returncode == agent.EXIT_RUNTIME_MISSING
    assert reply["status"] == "error" and reply["kind"] == "runtime_missing"
    assert f"runtime {runtime} unavailable: no CUDA device" in reply["error"]


@pytest.mark.parametrize("runtime", GPU_RUNTIMES)
def test_runner_raises_runner_error(tmp_path: Path, runtime: str) -> None:
    runner = get_runner(runtime)
    data = runner.export(spec_graph(SPEC))
    # the local device does not list GPU runtimes here: refused before anything runs
    local = local_device(str(tmp_path / "local"))
    assert runtime not in local.runtimes
    with pytest.raises(RunnerError, match=f"runtime {runtime} unavailable: no CUDA device.*"
                                          "device local"):
        runner.measure(local, [ModelFile("m", data)], RunSettings(warmup=1, runs=2, rounds=1))
    # a device that claims the runtime (an inventory's word): the agent finds no GPU
    claims = Device("gpubox", LocalTransport(), (runtime,), str(tmp_path / "w"),
                    python=sys.executable)
    with pytest.raises(RunnerError, match=f"{runtime} is not usable on device gpubox.*"
                                          "no CUDA device"):
        runner.measure(claims, [ModelFile("m", data)], RunSettings(warmup=1, runs=2, rounds=1),
                       timeout_s=120)
    assert list(Path(claims.work_dir).iterdir()) == []  # batch dir cleaned up


def test_devices_check_names_the_problem(tmp_path: Path) -> None:
    box = Device("gpubox", LocalTransport(), ("onnxruntime", "torch-cuda"), str(tmp_path))
    facts = {"source": "agent", "cuda_devices": [], "runtimes": {"onnxruntime": "1.32.0",
                                                               "torch": "2.13.0"}}
    assert _problems(box, facts) == ["runtime torch-cuda unavailable: no CUDA device"]
    assert _problems(box, {**facts, "cuda_devices": ["/dev/nvidia0"]}) == []


def test_cli_reports_unavailable_in_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "ops", "--plan", "quick", "--limit", "1", "--runtime",
                 "onnxruntime-cuda", "--out", str(tmp_path / "ds")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "onnxruntime-cuda unavailable: no CUDA device" in err
    assert not (tmp_path / "ds").exists()


def test_pt2_export_loads_in_the_agent_and_computes_the_graph(tmp_path: Path) -> None:
    """The host's exported program, read by the agent's own loader (on the CPU here: the
    torch-cuda backend does the same with "cuda"), computes what the reference computes."""
    import torch

    graph = chain_graph([SPEC, OpSpec("dwconv", h=8, w=8, cin=8, kernel=3, act="hswish"),
                         OpSpec("pool", h=8, w=8, cin=8, pool="gavg"),
                         OpSpec("linear", cin=8, cout=5)], seed=3)
    path = tmp_path / "m.pt2"
    path.write_bytes(get_runner("torch-cuda").export(graph))
    assert path.read_bytes() == to_pt2(graph)  # deterministic
    module, shapes = agent.load_exported(torch, str(path), "cpu")
    assert shapes == [list(graph.shapes[n]) for n in graph.inputs]
    inputs = graph.random_inputs(1)
    got = module(*(torch.from_numpy(inputs[n]) for n in graph.inputs)).detach().numpy()
    want = run_reference(graph, inputs)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
