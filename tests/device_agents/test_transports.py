"""The transport registry: every registered transport describes its inventory fields and builds
itself from a fleet entry; a plug-in transport registered here works from a fleet file, with
its own fields checked; stderr lines reach a callback while a command runs."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from standins.procs import HANDSHAKE, handshake

import latbench.bench.runners  # noqa: F401  (registers the runtimes fleets are checked against)
from latbench.bench.export.graph import spec_graph
from latbench.bench.ops import OpSpec
from latbench.bench.runners import ModelFile, RunSettings, get_runner
from latbench.device_agents import (
    TRANSPORTS,
    CommandResult,
    InventoryFields,
    LineCallback,
    LocalTransport,
    load_fleet,
    parse_fleet,
    register_transport,
)
from latbench.device_agents.inventory import integer, text
from latbench.device_agents.transport import LineFilter
from latbench.errors import ConfigError

# A minimal inventory entry per registered transport; a new transport adds its own here.
EXAMPLES: dict[str, dict[str, Any]] = {
    "local": {},
    "ssh": {"host": "board.lan", "user": "pi"},
    "adb": {"serial": "28011FDH2000AB"},
}


@pytest.mark.parametrize("name", sorted(TRANSPORTS))
def test_every_transport_describes_its_fields_and_builds_from_an_entry(name: str,
                                                                       tmp_path: Path) -> None:
    cls = TRANSPORTS[name]
    spec = cls.inventory
    assert isinstance(spec, InventoryFields) and callable(cls.from_inventory)
    assert set(spec.required) <= set(spec.fields) and set(spec.paths) <= set(spec.fields)
    assert name in EXAMPLES, f"add a minimal inventory entry for transport {name!r} to EXAMPLES"
    entry = {"transport": name, **EXAMPLES[name]}
    (device,) = parse_fleet({"devices": {"d": entry}}, base_dir=tmp_path, source="f.toml",
                            env={})
    assert type(device.transport) is cls and device.transport.name == name
    assert device.python == spec.python
    assert device.work_dir == (spec.work_dir or os.path.join(tempfile.gettempdir(),
                                                             "latbench-d"))
    for field in spec.required:  # each required field is named when it is missing
        partial = {k: v for k, v in entry.items() if k != field}
        with pytest.raises(ConfigError, match=f"field '{field}' is required for a {name}"):
            parse_fleet({"devices": {"d": partial}}, source="f.toml", env={})
    with pytest.raises(ConfigError, match=rf"unknown field\(s\) \['colour'\] for a {name} "
                                          "device; known: .*runtimes"):
        parse_fleet({"devices": {"d": {**entry, "colour": "red"}}}, source="f.toml", env={})


class NicedLocal(LocalTransport):
    """A plug-in transport: this machine, every command run under `nice` with a label in its
    environment; its two inventory fields are its own."""

    inventory = InventoryFields(fields={"label": text, "niceness": integer(0, 19)},
                                required=("label",), python=sys.executable)

    @classmethod
    def from_inventory(cls, values: Mapping[str, Any], env: Mapping[str, str]) -> NicedLocal:
        return cls(values["label"], values.get("niceness", 10))

    def __init__(self, label: str, niceness: int) -> None:
        super().__init__(env={**os.environ, "LATBENCH_TEST_LABEL": label})
        self.label, self.niceness = label, niceness

    def run(self, argv: Sequence[str], timeout_s: float,
            on_stderr: LineCallback | None = None) -> CommandResult:
        return super().run(["nice", "-n", str(self.niceness), *argv], timeout_s, on_stderr)


@pytest.fixture
def niced() -> Iterator[type]:
    register_transport("niced")(NicedLocal)
    yield NicedLocal
    del TRANSPORTS["niced"]


def test_a_plugin_transport_works_from_a_fleet_file(niced: type, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[defaults]\nlabel = "lab-default"\n\n[devices.box]\ntransport = "niced"\n'
                     f'label = "lab-7"\nniceness = 5\nruntimes = ["onnxruntime"]\n'
                     f'work_dir = "{tmp_path / "work"}"\n\n[devices.other]\n'
                     'transport = "niced"\nruntimes = ["onnxruntime"]\n')
    box, other = load_fleet(fleet)
    assert isinstance(box.transport, NicedLocal) and box.transport.niceness == 5
    assert (box.transport.label, other.transport.label) == ("lab-7", "lab-default")
    assert box.python == sys.executable and other.transport.niceness == 10
    shown = box.transport.run(["sh", "-c", 'echo "$LATBENCH_TEST_LABEL"'], 30)
    assert shown.stdout == "lab-7\n"
    # A real batch through the plug-in, with the agent's progress streamed through it.
    runner = get_runner("onnxruntime")
    steps: list[float] = []
    spec = OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3)
    result = runner.measure(box, [ModelFile("m", runner.export(spec_graph(spec)))],
                            RunSettings(warmup=1, runs=3, rounds=2), 120, progress=steps.append)
    assert result.measurements[0].ok and sum(steps) == pytest.approx(1.0)


@pytest.mark.parametrize("table, match", [
    ({"niceness": 5}, "field 'label' is required for a niced device"),
    ({"label": "x", "niceness": 40}, "field 'niceness' must be an integer in 0..19, got 40"),
    ({"label": ""}, "field 'label' must be a non-empty string"),
    ({"label": "x", "host": "h"},
     r"unknown field\(s\) \['host'\] for a niced device; known: .*label, niceness"),
])
def test_a_plugin_transports_fields_are_checked(niced: type, table: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_fleet({"devices": {"d": {"transport": "niced", **table}}}, source="f.toml",
                    env={})
    assert "fleet f.toml: device 'd'" in str(info.value)


def test_unknown_transport_names_the_registered_ones(niced: type) -> None:
    with pytest.raises(ConfigError, match="field 'transport' must be one of adb, local, niced, "
                                          "ssh, got 'telnet'"):
        parse_fleet({"devices": {"d": {"transport": "telnet"}}}, source="f.toml", env={})


def test_a_transport_that_does_not_describe_itself_is_refused() -> None:
    with pytest.raises(ConfigError, match="must declare `inventory = InventoryFields"):
        register_transport("bare")(type("Bare", (LocalTransport,), {"inventory": None}))
    assert "bare" not in TRANSPORTS
    with pytest.raises(ConfigError, match="required or paths but have no check"):
        InventoryFields(fields={"a": text}, required=("b",))


def test_line_filter_keeps_the_stream_minus_consumed_lines() -> None:
    seen: list[str] = []
    lines = LineFilter(lambda line: seen.append(line) or line.startswith("drop"))
    for chunk in (b"keep \xc3", b"\xa9 1\r\ndro", b"p me\nkeep 2\n", b"drop tail"):
        lines.feed(chunk)
    assert lines.finish() == b"keep \xc3\xa9 1\r\nkeep 2\n"
    assert seen == ["keep é 1", "drop me", "keep 2", "drop tail"]
    unfiltered = LineFilter(None)
    unfiltered.feed(b"a\nb")
    assert unfiltered.finish() == b"a\nb"


def test_local_streams_stderr_lines_while_the_command_runs(tmp_path: Path) -> None:
    seen, on_line = handshake(tmp_path / "flag")
    result = LocalTransport().run(["sh", "-c", HANDSHAKE, "sh", str(tmp_path / "flag")], 60,
                                  on_stderr=on_line)
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "keep-1\nkeep-2\n")
    assert seen == ["keep-1", "latbench-test ping", "keep-2"]
