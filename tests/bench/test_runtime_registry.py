"""The runtime registry: every registered runner describes what it needs, its settings and its
formats; a throwaway runtime registered here is seen everywhere from that one registration
(fleet files, `local_runtimes`, `devices check`, the settings key, --runtime choices, the
native-tool driver), and is gone again once unregistered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

from latbench.bench.export.graph import spec_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.ops import OpSpec
from latbench.bench.runners import (
    RUNNERS,
    AgentRunner,
    BenchmarkModelRunner,
    ModelFile,
    RunSettings,
    get_runner,
    register_runner,
    unregister_runner,
)
from latbench.bench.store import LatencyDataset
from latbench.cli import build_parser, main
from latbench.device_agents import (
    RUNTIMES,
    RuntimeNeeds,
    load_fleet,
    local_device,
    local_runtimes,
    parse_fleet,
)
from latbench.device_agents.agent import latbench_agent as agent
from latbench.device_agents.fleet import device_fields
from latbench.errors import ConfigError, RunnerError

SPEC = OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3)
ADAPTIVE = RunSettings(target_ci=0.02)
# Settings keys are stored with every record and join resumed campaigns to their datasets: a
# built-in runtime's key must never change. A new runtime adds its keys here.
KEYS = {
    "onnxruntime": "opt=all", "onnxruntime-cuda": "opt=all", "onnxruntime-perf-test": "opt=all",
    "litert": "delegate=xnnpack", "tflite-benchmark-model": "delegate=xnnpack",
    "torch-cuda": "",
}
FIXED_KEY = "threads=1,warmup=10,runs=20,rounds=5"
ADAPTIVE_KEY = ("threads=1,warmup=10,runs=20,target_ci=0.02,confidence=0.95,min_runs=20,"
                "max_runs=1000,max_s=5,futility=4")


def is_model(suffix: str, data: bytes) -> bool:
    """Whether `data` looks like a model file of the format `suffix` names."""
    if suffix == ".onnx":
        return bool(onnx.load_from_string(data).graph.node)
    if suffix == ".tflite":
        return data[4:8] == b"TFL3"
    if suffix == ".pt2":
        return data[:2] == b"PK"  # a zip archive
    raise AssertionError(f"no check for model format {suffix}")


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_every_runner_describes_its_runtime(name: str, tmp_path: Path) -> None:
    cls = RUNNERS[name]
    runner = get_runner(name)
    assert runner.name == name and RUNTIMES[name] is cls.needs
    assert isinstance(cls.needs, RuntimeNeeds) and cls.needs.agent != bool(cls.needs.tool)
    assert cls.formats and runner.suffix == cls.formats[0]
    assert is_model(runner.suffix, runner.export(spec_graph(SPEC)))
    # The settings key: the common part, then exactly the fields the runner declares.
    assert name in KEYS, f"add the settings key of runtime {name!r} to KEYS"
    extra = f",{KEYS[name]}" if KEYS[name] else ""
    assert RunSettings().key(name) == FIXED_KEY + extra
    assert ADAPTIVE.key(name) == ADAPTIVE_KEY + extra
    for field, short in cls.settings_fields:
        changed = RunSettings(**{field: "basic" if field == "graph_opt" else "builtin"})
        assert changed.key(name) != RunSettings().key(name) and f"{short}=" in changed.key(name)
    # What it needs decides where it is offered.
    if cls.needs.tool is not None:
        assert {cls.needs.tool, cls.needs.args_field} <= set(device_fields())
        assert name not in local_runtimes()
    else:
        import importlib.util

        importable = any(importlib.util.find_spec(m) for m in cls.needs.modules)
        usable = importable and (not cls.needs.cuda or bool(agent.cuda_device_nodes()))
        assert (name in local_runtimes()) == usable
    if cls.needs.cuda and not agent.cuda_device_nodes():
        local = local_device(str(tmp_path / "local"))
        with pytest.raises(RunnerError, match=f"runtime {name} unavailable: no CUDA device"):
            runner.measure(local, [ModelFile("m", runner.export(spec_graph(SPEC)))],
                           RunSettings(warmup=1, runs=2, rounds=1), 60)


class JsonRuntime(AgentRunner):
    """A throwaway agent runtime provided by a module every Python has."""

    needs = RuntimeNeeds(modules=("json",))
    settings_fields = (("delegate", "dlg"),)
    formats = (".onnx",)

    def export(self, graph):  # type: ignore[no-untyped-def]
        return to_onnx(graph)


class AbsentRuntime(JsonRuntime):
    needs = RuntimeNeeds(modules=("latbench_no_such_module",))


class OwnToolRuntime(BenchmarkModelRunner):
    """A throwaway native-tool runtime with its own inventory field for its binary."""

    needs = RuntimeNeeds(tool="own_bench_tool")


THROWAWAY = {"throwaway-json": JsonRuntime, "throwaway-absent": AbsentRuntime,
             "throwaway-tool": OwnToolRuntime}


@pytest.fixture
def throwaway() -> Iterator[None]:
    for name, cls in THROWAWAY.items():
        register_runner(name)(cls)
    yield
    for name in THROWAWAY:
        unregister_runner(name)


def test_a_new_runtime_is_one_registration(throwaway: None, benchmark_model_binary: Path,
                                           tmp_path: Path, capsys) -> None:
    assert "throwaway-json" in local_runtimes() and "throwaway-absent" not in local_runtimes()
    assert RunSettings(delegate="builtin").key("throwaway-json") == FIXED_KEY + ",dlg=builtin"
    parsed = build_parser().parse_args(["bench", "ops", "--runtime", "throwaway-tool",
                                        "--out", "x"])
    assert parsed.runtime == ["throwaway-tool"]
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[devices.here]\ntransport = "local"\n'
        'runtimes = ["onnxruntime", "throwaway-json", "throwaway-absent"]\n'
        f'work_dir = "{tmp_path / "here"}"\n\n'
        '[devices.tool]\ntransport = "local"\nruntimes = ["throwaway-tool"]\n'
        f'own_bench_tool = "{benchmark_model_binary}"\n'
        'own_bench_tool_args = ["--enable_op_profiling=false"]\n'
        f'work_dir = "{tmp_path / "tool"}"\n')
    here, tool = load_fleet(fleet)
    assert tool.tools == {"own_bench_tool": str(benchmark_model_binary)}
    assert tool.tool_args == {"own_bench_tool": ("--enable_op_profiling=false",)}
    with pytest.raises(ConfigError, match="runtime throwaway-tool needs field 'own_bench_tool'"):
        parse_fleet({"devices": {"d": {"transport": "local", "runtimes": ["throwaway-tool"]}}})
    # devices check asks the agent about the registered modules.
    assert main(["devices", "check", "--fleet", str(fleet), "--json"]) == 0
    checks = {c["device"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["here"]["facts"]["runtimes"]["json"] == "installed"
    assert checks["here"]["problems"] == [
        "runtime throwaway-absent is listed but not importable on the device"]
    assert checks["tool"]["problems"] == [] and checks["tool"]["facts"]["tools"] == {
        "own_bench_tool": benchmark_model_binary.name}
    # The native-tool driver reads the runtime's own field, through the whole CLI.
    out = tmp_path / "ds"
    assert main(["bench", "ops", "--fleet", str(fleet), "--device", "tool", "--runtime",
                 "throwaway-tool", "--limit", "2", "--fixed-runs", "--runs", "3", "--rounds",
                 "1", "--calibration-runs", "1", "--out", str(out)]) == 0
    records = LatencyDataset.open(out).records()
    assert len(records) == 2 and set(records["runtime"]) == {"throwaway-tool"}
    assert set(records["settings"]) == {"threads=1,warmup=10,runs=3,rounds=1,delegate=xnnpack"}
    assert all("--enable_op_profiling=false" in flags for flags in records["tool_flags"])


def test_unregistered_runtime_is_gone(throwaway: None) -> None:
    unregister_runner("throwaway-json")
    assert "throwaway-json" not in RUNNERS and "throwaway-json" not in RUNTIMES
    with pytest.raises(ConfigError, match=r"unknown runtime\(s\) \['throwaway-json'\]"):
        parse_fleet({"devices": {"d": {"transport": "local", "runtimes": ["throwaway-json"]}}})
    with pytest.raises(ConfigError, match="no settings key defined for runtime"):
        RunSettings().key("throwaway-json")


@pytest.mark.parametrize("attrs, match", [
    ({"needs": None}, r"must declare `needs = RuntimeNeeds\(...\)`"),
    ({"formats": ()}, "must declare `formats`"),
    ({"formats": ("onnx",)}, "must declare `formats`"),
    ({"settings_fields": (("optimisation", "opt"),)}, "must declare `settings_fields`"),
    ({"settings_fields": ("graph_opt",)}, "must declare `settings_fields`"),
])
def test_a_runner_that_does_not_describe_itself_is_refused(attrs: dict, match: str) -> None:
    base = {"needs": RuntimeNeeds(modules=("json",)), "formats": (".onnx",),
            "settings_fields": ()}
    cls = type("Vague", (AgentRunner,), {**base, **attrs})
    with pytest.raises(ConfigError, match=match):
        register_runner("vague")(cls)
    assert "vague" not in RUNNERS and "vague" not in RUNTIMES


@pytest.mark.parametrize("kwargs, match", [
    ({}, "either through the agent"),
    ({"modules": ("onnxruntime",), "tool": "benchmark_model"}, "either through the agent"),
    ({"modules": ("ai_edge_litert.interpreter",)}, "not a top-level module name"),
    ({"tool": "bench-tool"}, "not a valid field name"),
])
def test_runtime_needs_are_checked(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RuntimeNeeds(**kwargs)

