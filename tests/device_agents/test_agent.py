"""The standalone device agent: facts, measure with real runtimes, errors, stdout discipline."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latbench.bench.export.graph import spec_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.export.to_tflite import to_tflite
from latbench.bench.ops import OpSpec
from latbench.device_agents import AGENT_SCRIPT
from latbench.device_agents.agent import latbench_agent as agent

SPEC = OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """A copy of the agent outside the repository, as it sits on a device."""
    dst = tmp_path / "dev" / "latbench_agent.py"
    dst.parent.mkdir()
    shutil.copyfile(AGENT_SCRIPT, dst)
    return dst


def run_agent(script: Path, *args: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> tuple[int, dict, str]:
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)
    reply = json.loads(proc.stdout)  # exactly one JSON object, nothing else
    assert isinstance(reply, dict)
    return proc.returncode, reply, proc.stderr


def write_request(tmp_path: Path, model_paths: list[tuple[str, Path]],
                  **overrides: object) -> Path:
    req = {"runtime": "onnxruntime", "threads": 1, "warmup": 2, "runs": 4, "rounds": 3,
           "graph_opt": "all", "delegate": "xnnpack", "affinity": None,
           "models": [{"id": i, "path": str(p)} for i, p in model_paths]}
    req.update(overrides)
    path = tmp_path / "request.json"
    path.write_text(json.dumps(req))
    return path


def test_agent_imports_nothing_of_latbench() -> None:
    tree = ast.parse(AGENT_SCRIPT.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    # torch is the torch-cuda runtime's, imported only by that backend
    allowed_third_party = {"numpy", "onnxruntime", "ai_edge_litert", "tflite_runtime", "torch"}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert modules - stdlib <= allowed_third_party, modules - stdlib


def test_facts(script: Path, tmp_path: Path) -> None:
    code, facts, _ = run_agent(script, "facts", "--work-dir", str(tmp_path))
    assert code == 0 and facts["status"] == "ok"
    expected = {"agent_version", "os", "kernel", "machine", "cpu_model", "cpu_features", "cores",
                "cores_online",
                "governor", "cur_freq_khz", "max_freq_khz", "temps_c", "load_avg", "python",
                "numpy", "runtimes", "work_dir", "free_bytes"}
    assert expected <= set(facts)
    assert facts["agent_version"] == agent.AGENT_VERSION
    assert facts["os"] == "Linux"
    assert isinstance(facts["cpu_model"], str) and facts["cpu_model"]
    assert facts["cpu_features"] == agent.parse_cpu_features(Path("/proc/cpuinfo").read_text())
    assert isinstance(facts["cores"], int) and facts["cores"] >= 1
    assert facts["cores_online"] is None or 1 <= facts["cores_online"] <= facts["cores"]
    for key in ("governor",):
        assert facts[key] is None or isinstance(facts[key], str)
    for key in ("cur_freq_khz", "max_freq_khz"):
        assert facts[key] is None or (isinstance(facts[key], int) and facts[key] > 0)
    temps = facts["temps_c"]
    assert temps is None or all(isinstance(t["name"], str) and isinstance(t["celsius"], float)
                                for t in temps)
    assert facts["python"] == ".".join(map(str, sys.version_info[:3]))
    import numpy
    import onnxruntime

    assert facts["numpy"] == numpy.__version__
    assert facts["runtimes"]["onnxruntime"] == onnxruntime.__version__
    assert isinstance(facts["runtimes"]["ai_edge_litert"], str)
    assert set(facts["runtimes"]) == {"onnxruntime", "ai_edge_litert", "tflite_runtime", "torch"}
    import torch

    assert facts["runtimes"]["torch"] == torch.__version__.split("+")[0] or \
        facts["runtimes"]["torch"] == torch.__version__
    assert facts["cuda_devices"] == []  # this machine has no GPU
    assert facts["work_dir"] == str(tmp_path)
    assert isinstance(facts["free_bytes"], int) and facts["free_bytes"] > 0


def test_facts_default_work_dir_is_cwd(script: Path, tmp_path: Path) -> None:
    code, facts, _ = run_agent(script, "facts", cwd=tmp_path)
    assert code == 0 and facts["work_dir"] == str(tmp_path)


@pytest.mark.parametrize("cpuinfo, model", [
    ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i7\n",
     "Intel(R) Core(TM) i7"),
    ("processor\t: 0\nBogoMIPS\t: 38.40\n\nHardware\t: BCM2835\nModel\t: Raspberry Pi 4\n",
     "BCM2835"),
    ("Processor\t: AArch64 Processor rev 4 (aarch64)\nprocessor\t: 0\n",
     "AArch64 Processor rev 4 (aarch64)"),
    ("processor\t: 0\nprocessor\t: 1\n", None),
    ("", None),
    (None, None),
])
def test_parse_cpu_model(cpuinfo: str | None, model: str | None) -> None:
    assert agent.parse_cpu_model(cpuinfo) == model


XEON_FLAGS = ("flags\t\t: fpu vme sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni "
              "avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16\n")


@pytest.mark.parametrize("cpuinfo, features", [
    (f"processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\n{XEON_FLAGS}processor\t: 1\n"
     "flags\t\t: fpu\n",  # the first CPU's line, in CPU_FEATURES order
     ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
      "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"]),
    ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimdhp asimddp i8mm bf16 sve\n",
     ["asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve"]),
    ("processor\t: 0\nflags\t\t: fpu sse2\n", []),  # listed, none that matter
    ("processor\t: 0\nHardware\t: BCM2835\n", None),  # no flags line
    (None, None),
])
def test_parse_cpu_features(cpuinfo: str | None, features: list[str] | None) -> None:
    assert agent.parse_cpu_features(cpuinfo) == features


@pytest.mark.parametrize("text, cpus", [
    ("0-3", [0, 1, 2, 3]), ("0-1,4,6-7\n", [0, 1, 4, 6, 7]), ("5", [5]), ("", None),
    (None, None), ("zero", None),
])
def test_parse_cpu_list(text: str | None, cpus: list[int] | None) -> None:
    assert agent.parse_cpu_list(text) == cpus


def test_measure_onnx_good_and_corrupt(script: Path, tmp_path: Path) -> None:
    good = tmp_path / "good model.onnx"  # a space in the path on purpose
    good.write_bytes(to_onnx(spec_graph(SPEC)))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf" * 20)
    req = write_request(tmp_path, [("good", good), ("bad", bad)], graph_opt="basic")
    code, reply, _ = run_agent(script, "measure", str(req))
    assert code == 0 and reply["status"] == "ok"
    import onnxruntime

    assert reply["runtime"] == "onnxruntime"
    assert reply["runtime_version"] == onnxruntime.__version__
    assert reply["settings"]["graph_opt"] == "basic"
    assert {"temps_c", "cur_freq_khz"} <= set(reply["facts_before"])
    assert {"temps_c", "cur_freq_khz"} <= set(reply["facts_after"])
    res = {r["id"]: r for r in reply["results"]}
    assert [r["id"] for r in reply["results"]] == ["good", "bad"]
    assert res["good"]["status"] == "ok" and res["good"]["error"] == ""
    rounds = res["good"]["samples_ms"]
    assert len(rounds) == 3 and all(len(r) == 4 for r in rounds)
    assert all(isinstance(x, float) and x > 0 for r in rounds for x in r)
    assert res["bad"]["status"] == "failed" and res["bad"]["samples_ms"] == []
    assert "load failed" in res["bad"]["error"]


@pytest.mark.parametrize("delegate", ["xnnpack", "builtin"])
def test_measure_litert_good_and_missing(script: Path, tmp_path: Path, delegate: str) -> None:
    good = tmp_path / "good.tflite"
    good.write_bytes(to_tflite(spec_graph(SPEC)))
    req = write_request(tmp_path, [("missing", tmp_path / "nope.tflite"), ("good", good)],
                        runtime="litert", delegate=delegate, threads=2, rounds=2, runs=3)
    code, reply, _ = run_agent(script, "measure", str(req))
    assert code == 0 and reply["status"] == "ok", reply
    assert reply["runtime"] == "litert" and reply["runtime_version"]
    res = {r["id"]: r for r in reply["results"]}
    assert res["missing"]["status"] == "failed" and "nope.tflite" in res["missing"]["error"]
    assert res["good"]["status"] == "ok"
    assert [len(r) for r in res["good"]["samples_ms"]] == [3, 3]


def test_measure_relative_model_path_and_affinity(script: Path, tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(to_onnx(spec_graph(SPEC)))
    req = write_request(tmp_path, [("m", Path("m.onnx"))], affinity=[0], rounds=1, runs=2)
    code, reply, _ = run_agent(script, "measure", str(req))
    assert code == 0 and reply["results"][0]["status"] == "ok", reply
    assert reply["settings"]["affinity"] == [0]


@pytest.mark.parametrize("overrides, match", [
    ({"runtime": "tensorrt"}, "unknown runtime"),
    ({"runs": 0}, "runs"),
    ({"threads": "2"}, "threads"),
    ({"graph_opt": "max"}, "graph_opt"),
    ({"delegate": "gpu"}, "delegate"),
    ({"affinity": "0-3"}, "affinity"),
    ({"models": []}, "models"),
    ({"models": [{"id": "a", "path": "/x"}, {"id": "a", "path": "/y"}]}, "duplicate"),
    ({"affinity": [100000]}, "affinity"),
])
def test_bad_request_is_a_fatal_error(script: Path, tmp_path: Path, overrides: dict,
                                      match: str) -> None:
    req = write_request(tmp_path, [("a", tmp_path / "a.onnx")], **overrides)
    code, reply, _ = run_agent(script, "measure", str(req))
    assert code == agent.EXIT_BAD_REQUEST
    assert reply["status"] == "error" and reply["kind"] == "bad_request"
    assert match in reply["error"]


@pytest.mark.parametrize("args", [[], ["measure"], ["measure", "/no/such/request.json"],
                                  ["explode"], ["facts", "--verbose"]])
def test_bad_command_line(script: Path, args: list[str]) -> None:
    code, reply, _ = run_agent(script, *args)
    assert code == agent.EXIT_BAD_REQUEST and reply["status"] == "error"


def test_runtime_missing_and_stdout_noise(script: Path, tmp_path: Path) -> None:
    """A runtime that prints to stdout (at the fd level too) and fails to import: the reply is
    still exactly one JSON object and says the runtime is missing."""
    fake = tmp_path / "fake" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os\nprint('NOISE-PRINT')\nos.write(1, b'NOISE-FD\\n')\n"
        "raise ImportError('fake onnxruntime is broken')\n")
    req = write_request(tmp_path, [("a", tmp_path / "a.onnx")])
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(fake.parent)}
    code, reply, stderr = run_agent(script, "measure", str(req), env=env)
    assert code == agent.EXIT_RUNTIME_MISSING
    assert reply["kind"] == "runtime_missing" and "fake onnxruntime" in reply["error"]
    assert "NOISE-PRINT" in stderr and "NOISE-FD" in stderr


class _FakeBackend:
    """Records calls so the order of warm-up and timed runs can be checked."""

    log: list[str] = []
    version = "0.0-fake"

    def __init__(self, req: dict) -> None:
        self.req = req

    def load(self, path: str, rng: object):
        name = Path(path).name
        if name == "unloadable":
            raise RuntimeError("cannot parse")
        calls = {"n": 0}

        def run() -> None:
            calls["n"] += 1
            _FakeBackend.log.append(name)
            if name == "flaky" and calls["n"] > 3:
                raise RuntimeError("kernel crashed")

        return run


def test_measure_interleaves_rounds_and_isolates_failures(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    _FakeBackend.log = []
    monkeypatch.setitem(agent.BACKENDS, "onnxruntime", _FakeBackend)
    req = agent.validate_request({
        "runtime": "onnxruntime", "threads": 1, "warmup": 1, "runs": 2, "rounds": 3,
        "models": [{"id": i, "path": f"/m/{i}"} for i in ("a", "flaky", "unloadable", "b")]})
    reply = agent.measure(req, str(tmp_path))
    # warm-up a, flaky, b in load order; then 3 rounds, each visiting every live model once
    # for `runs` consecutive calls, in a shuffled order: round 1 a a flaky flaky b b (in some
    # order), round 2 the same but flaky fails on its first call, round 3 a a b b
    log = _FakeBackend.log
    assert log[:3] == ["a", "flaky", "b"]
    rounds = [log[3:9], log[9:14], log[14:]]
    assert sorted(rounds[0]) == ["a", "a", "b", "b", "flaky", "flaky"]
    assert sorted(rounds[1]) == ["a", "a", "b", "b", "flaky"]
    assert sorted(rounds[2]) == ["a", "a", "b", "b"]
    for chunk in rounds:  # a model's calls of one round are consecutive
        names = [n for i, n in enumerate(chunk) if i == 0 or chunk[i - 1] != n]
        assert len(names) == len(set(names))
    res = {r["id"]: r for r in reply["results"]}
    assert res["a"]["status"] == res["b"]["status"] == "ok"
    assert len(res["a"]["samples_ms"]) == 3 and len(res["b"]["samples_ms"]) == 3
    assert res["flaky"]["status"] == "failed" and "kernel crashed" in res["flaky"]["error"]
    assert res["flaky"]["samples_ms"] == []
    assert res["unloadable"]["status"] == "failed"
    assert "load failed" in res["unloadable"]["error"]
    assert reply["runtime_version"] == "0.0-fake"


def test_rounds_visit_models_in_changing_orders(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """A fixed order would give each model the same predecessor in every round (its state
    biases the timing); the order is reshuffled per round, reproducibly."""
    names = [f"m{i}" for i in range(6)]
    orders = []
    for _ in range(2):
        _FakeBackend.log = []
        monkeypatch.setitem(agent.BACKENDS, "onnxruntime", _FakeBackend)
        req = agent.validate_request({
            "runtime": "onnxruntime", "threads": 1, "warmup": 0, "runs": 1, "rounds": 8,
            "models": [{"id": n, "path": f"/m/{n}"} for n in names]})
        agent.measure(req, str(tmp_path))
        log = _FakeBackend.log
        rounds = [tuple(log[i:i + 6]) for i in range(0, 48, 6)]
        assert all(sorted(r) == names for r in rounds)
        assert len(set(rounds)) > 4  # not one order repeated
        predecessors = {rounds[i][rounds[i].index("m3") - 1] for i in range(8)
                        if rounds[i][0] != "m3"}
        assert len(predecessors) > 1
        orders.append(rounds)
    assert orders[0] == orders[1]  # seeded: the same request gives the same schedule


def test_facts_reports_the_modules_the_host_asks_about(script: Path, tmp_path: Path) -> None:
    code, facts, _ = run_agent(script, "facts", "--module", "json", "--work-dir", str(tmp_path),
                               "--module", "latbench_no_such_module")
    assert code == 0 and facts["work_dir"] == str(tmp_path)
    assert facts["runtimes"]["json"] == "installed"  # stdlib: no distribution, no version
    assert facts["runtimes"]["latbench_no_such_module"] is None
    import onnxruntime

    assert facts["runtimes"]["onnxruntime"] == onnxruntime.__version__
    code, reply, _ = run_agent(script, "facts", "--module")
    assert code == agent.EXIT_BAD_REQUEST and reply["status"] == "error"


def progress_lines(stderr: str) -> list[tuple[float, int]]:
    parsed = [agent.parse_progress(line) for line in stderr.splitlines()]
    return [p for p in parsed if p is not None]


@pytest.mark.parametrize("stop", [None, {"target_rel_width": 0.5, "confidence": 0.9,
                                         "min_runs": 3, "max_runs": 9, "max_seconds": 5.0,
                                         "futility": None}])
def test_measure_reports_progress_on_stderr(script: Path, tmp_path: Path, stop) -> None:
    good = tmp_path / "good.onnx"
    good.write_bytes(to_onnx(spec_graph(SPEC)))
    models = [("a", good), ("b", good), ("broken", tmp_path / "missing.onnx"), ("c", good)]
    req = write_request(tmp_path, models, rounds=3, runs=3, stop=stop)
    code, reply, stderr = run_agent(script, "measure", str(req))
    assert code == 0 and reply["status"] == "ok"
    lines = progress_lines(stderr)
    assert lines and all(total == 4 for _, total in lines)
    done = [d for d, _ in lines]
    assert done == sorted(done) and done[-1] == 4.0 and done[0] >= 1.0  # the broken one first
    if stop is None:  # a third of a model per round: fractional steps
        assert any(d != int(d) for d in done) and len(done) == 1 + 3 * 3


@pytest.mark.parametrize("line", ["latbench-progress 1.5", "latbench-progress x 4",
                                  "latbench-progress 5 4", "latbench-progress 1 0",
                                  "latbench-progress nan 4", "latbench-progressed 1 4",
                                  "INFO: latbench-progress 1 4"])
def test_parse_progress_refuses_other_lines(line: str) -> None:
    assert agent.parse_progress(line) is None
    assert agent.parse_progress("latbench-progress 1.500000 4") == (1.5, 4)
