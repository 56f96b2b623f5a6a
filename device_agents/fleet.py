"""Device records and fleet inventories: which machines, how to reach them, what they run.

An inventory is a TOML file with one `[devices.NAME]` table per device (plus optional
`[defaults]` applied to all); `load_fleet` turns it into `Device` records with live (lazily
connecting) transports, and `check_devices` asks every device for its facts in parallel and keeps
each device's error next to its result (pyinfra/fabric style), so one dead board never hides the
state of the others. `local_device()` builds the record for the machine latbench runs on.

Which runtimes exist and what they need comes from the runtime registry (device_agents.runtimes,
filled by registering runners); which transports exist and what their tables hold, from the
transport registry (each transport class declares its inventory fields).
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import posixpath
import shutil
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latbench.device_agents.inventory import (
    BadField,
    Check,
    InventoryFields,
    integer,
    names,
    text,
)
from latbench.device_agents.local import LocalTransport
from latbench.device_agents.runtimes import RUNTIMES, tool_fields
from latbench.device_agents.transport import TRANSPORTS, Transport, check_remote_path
from latbench.errors import AgentError, ConfigError, LatbenchError, TransportError

log = logging.getLogger(__name__)

# The standalone script pushed to devices; runners copy it next to each batch.
AGENT_SCRIPT = Path(__file__).resolve().parent / "agent" / "latbench_agent.py"


@dataclass(frozen=True)
class Device:
    """One device to measure on.

    `threads` and `cpu_affinity` are the device's defaults for pinning (e.g. the big cores of a
    phone); `work_dir` is an absolute directory on the device where batches are written;
    `python` is the interpreter that runs the agent there (None on devices without Python,
    e.g. phones, which are measured with native tools only); `tools` maps a native tool
    ("benchmark_model", "onnxruntime_perf_test") to the local path of its binary, which is
    pushed to the device with each batch, and `tool_args` to extra flags the user wants it run
    with (e.g. ["--enable_op_profiling=true"]); they are kept with every record.
    """

    name: str
    transport: Transport
    runtimes: tuple[str, ...]
    work_dir: str
    threads: int = 1
    cpu_affinity: tuple[int, ...] | None = None
    python: str | None = "python3"
    tools: Mapping[str, str] = field(default_factory=dict, hash=False)
    tool_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"device name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "runtimes", tuple(self.runtimes))
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1:
            raise ConfigError(f"device {self.name}: threads must be a positive integer, "
                              f"got {self.threads!r}")
        if self.cpu_affinity is not None:
            cpus = tuple(self.cpu_affinity)
            if not cpus or any(not isinstance(c, int) or isinstance(c, bool) or c < 0
                               for c in cpus):
                raise ConfigError(f"device {self.name}: cpu_affinity must be a non-empty list of "
                                  f"CPU ids >= 0, got {self.cpu_affinity!r}")
            object.__setattr__(self, "cpu_affinity", cpus)
        try:
            check_remote_path(self.work_dir)
        except TransportError as exc:
            raise ConfigError(f"device {self.name}: bad work_dir: {exc}") from None
        if self.python is not None and (not isinstance(self.python, str) or not self.python):
            raise ConfigError(f"device {self.name}: python must be an interpreter name or path, "
                              f"got {self.python!r}")
        agent_runtimes = [r for r in self.runtimes if r in RUNTIMES and RUNTIMES[r].agent]
        if agent_runtimes and self.python is None:
            raise ConfigError(f"device {self.name}: runtimes {', '.join(agent_runtimes)} run "
                              "through the Python agent, but the device has no python set")
        object.__setattr__(self, "tools", dict(self.tools))
        object.__setattr__(self, "tool_args", {k: tuple(v) for k, v in self.tool_args.items()})
        for tool, args in self.tool_args.items():
            if any(not isinstance(a, str) or not a.startswith("-") or "\0" in a or "\n" in a
                   for a in args):
                raise ConfigError(f"device {self.name}: {tool} flags must be strings starting "
                                  f"with '-', got {list(args)!r}")
        for runtime in self.runtimes:
            tool = RUNTIMES[runtime].tool if runtime in RUNTIMES else None
            if tool is not None and not self.tools.get(tool):
                raise ConfigError(f"device {self.name}: runtime {runtime} needs the path of its "
                                  f"{tool} binary")

    @property
    def address(self) -> str:
        """How the device is reached, for tables and messages (never holds secrets)."""
        return describe_transport(self.transport)


def describe_transport(transport: Transport) -> str:
    address = getattr(transport, "address", "")
    return f"{transport.name} {address}".strip()


def local_runtimes() -> tuple[str, ...]:
    """Registered agent runtimes importable by this interpreter, found without importing them
    (that is slow); runtimes that need CUDA only when this machine has a CUDA device node."""
    from latbench.device_agents.agent.latbench_agent import cuda_device_nodes

    has_cuda = bool(cuda_device_nodes())
    return tuple(name for name, needs in RUNTIMES.items()
                 if needs.agent and (has_cuda or not needs.cuda)
                 and any(importlib.util.find_spec(m) is not None for m in needs.modules))


def local_device(work_dir: str | None = None, threads: int = 1,
                 cpu_affinity: tuple[int, ...] | None = None) -> Device:
    """This machine as a Device: LocalTransport, this interpreter (so the agent sees the same
    runtimes as latbench), and a fresh temporary work dir unless one is given.

    A temporary work dir is removed when this process exits, also after KeyboardInterrupt or
    (through the CLI, which turns SIGTERM into an interrupt) termination; batches remove their
    own folders in it as they end."""
    if work_dir is None:
        work_dir = tempfile.mkdtemp(prefix="latbench-local-")
        atexit.register(_remove_work_dir, work_dir, os.getpid())
    work_dir = os.path.abspath(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    return Device(name="local", transport=LocalTransport(), runtimes=local_runtimes(),
                  work_dir=work_dir, threads=threads, cpu_affinity=cpu_affinity,
                  python=sys.executable)


def _remove_work_dir(path: str, owner: int) -> None:
    """Remove a temporary work dir at exit, in the process that made it only (a forked child
    inherits the exit hook but not the folder's ownership)."""
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def fetch_facts(device: Device, timeout_s: float = 120.0) -> dict[str, Any]:
    """Run the agent's `facts` on the device (CPU, governor, temperatures, runtime versions,
    free space in its work dir) for the dataset card and health checks; the agent also reports
    the modules the device's registered runtimes need. A device without Python is asked
    through its shell instead (see device_agents.facts)."""
    if device.python is None:
        from latbench.device_agents.facts import shell_facts

        return {"status": "ok", **shell_facts(device.transport, device.work_dir, timeout_s)}
    remote_dir = posixpath.join(device.work_dir, f"facts-{uuid.uuid4().hex}")
    script = posixpath.join(remote_dir, AGENT_SCRIPT.name)
    transport = device.transport
    made = transport.run(["mkdir", "-p", remote_dir], timeout_s)
    if not made.ok:
        raise TransportError(f"cannot create {remote_dir} on device {device.name}: "
                             f"{made.stderr.strip()}")
    try:
        transport.push(AGENT_SCRIPT, script)
        modules = dict.fromkeys(m for r in device.runtimes if r in RUNTIMES
                                for m in RUNTIMES[r].modules)
        argv = [device.python, script, "facts", "--work-dir", device.work_dir]
        for module in modules:
            argv += ["--module", module]
        result = transport.run(argv, timeout_s)
    finally:
        try:
            transport.run(["rm", "-rf", remote_dir], timeout_s)
        except (TransportError, OSError) as exc:
            log.warning("could not remove %s on device %s: %s", remote_dir, device.name, exc)
    try:
        reply = json.loads(result.stdout)
    except ValueError:
        raise AgentError(f"agent facts on device {device.name} did not print its JSON reply "
                         f"(exit {result.returncode}; stderr: {result.stderr.strip()[-500:]!r})"
                         ) from None
    if not isinstance(reply, dict) or reply.get("status") != "ok" or not result.ok:
        error = reply.get("error") if isinstance(reply, dict) else reply
        raise AgentError(f"agent facts on device {device.name} failed (exit "
                         f"{result.returncode}): {error}")
    return reply


# --- inventories ------------------------------------------------------------------------------
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
# The runtime of a device that has a Python but lists no runtimes and no tools.
DEFAULT_AGENT_RUNTIME = "onnxruntime"


def _cpu_list(value: Any) -> tuple[int, ...]:
    if (not isinstance(value, list) or not value
            or any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in value)):
        raise BadField(f"must be a non-empty list of CPU ids >= 0, got {value!r}")
    return tuple(value)


def _remote_dir(value: Any) -> str:
    try:
        return check_remote_path(text(value)).rstrip("/") or "/"
    except TransportError as exc:
        raise BadField(str(exc)) from None


# Fields every device may have, whatever its transport.
COMMON_FIELDS: dict[str, Check] = {
    "transport": text, "runtimes": names, "threads": integer(1),
    "cpu_affinity": _cpu_list, "work_dir": _remote_dir, "python": text, "description": text,
}


def device_fields() -> dict[str, Check]:
    """The common fields plus, for each registered native tool, the local path of its binary
    and `{tool}_args`, its extra flags."""
    tools = tool_fields()
    return {**COMMON_FIELDS, **{tool: text for tool in tools},
            **{f"{tool}_args": names for tool in tools}}


def parse_fleet(data: Mapping[str, Any], *, base_dir: str | os.PathLike[str] = ".",
                source: str = "<fleet>", insecure_accept_unknown_host_key: bool = False,
                env: Mapping[str, str] | None = None) -> list[Device]:
    """Inventory data (a parsed TOML document) -> Device records, in file order.

    Relative paths (key files, known_hosts, tool binaries) are taken relative to `base_dir`,
    the inventory's folder. Every error names the inventory, the device and the field.
    `insecure_accept_unknown_host_key` (the CLI flag) turns that field on for every device
    whose transport has it (SSH).
    """
    env = os.environ if env is None else env
    where = f"fleet {source}"
    unknown = sorted(set(data) - {"defaults", "devices", "fleet"})
    if unknown:
        raise ConfigError(f"{where}: unknown top-level table(s) {unknown}; expected "
                          "[defaults] and [devices.NAME]")
    defaults = data.get("defaults", {})
    devices = data.get("devices")
    if not isinstance(defaults, Mapping):
        raise ConfigError(f"{where}: [defaults] must be a table")
    if not isinstance(devices, Mapping) or not devices:
        raise ConfigError(f"{where}: no devices; add one [devices.NAME] table per device")
    every_field = set(device_fields()).union(
        *(cls.inventory.fields for cls in TRANSPORTS.values()))
    bad_defaults = sorted(set(defaults) - every_field)
    if bad_defaults:
        raise ConfigError(f"{where}: [defaults]: unknown field(s) {bad_defaults}; known: "
                          f"{', '.join(sorted(every_field))}")
    out = []
    for name, table in devices.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: devices.{name} must be a table")
        out.append(_parse_device(str(name), table, defaults, Path(base_dir), where,
                                 insecure_accept_unknown_host_key, env))
    return out


def _parse_device(name: str, table: Mapping[str, Any], defaults: Mapping[str, Any],
                  base_dir: Path, where: str, insecure: bool, env: Mapping[str, str]) -> Device:
    here = f"{where}: device {name!r}"
    if not set(name) <= _NAME_CHARS:
        raise ConfigError(f"{here}: device names may hold only letters, digits, '.', '_' and "
                          "'-'")
    kind = table.get("transport", defaults.get("transport"))
    if not isinstance(kind, str) or kind not in TRANSPORTS:
        raise ConfigError(f"{here}: field 'transport' must be one of {TRANSPORTS.known()}, "
                          f"got {kind!r}")
    transport_class = TRANSPORTS[kind]
    spec: InventoryFields = transport_class.inventory
    common = device_fields()
    allowed = {**common, **spec.fields}
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{here}: unknown field(s) {unknown} for a {kind} device; known: "
                          f"{', '.join(sorted(allowed))}")
    merged = {k: v for k, v in defaults.items() if k in allowed}
    merged.update(table)
    if insecure and "insecure_accept_unknown_host_key" in spec.fields:
        merged["insecure_accept_unknown_host_key"] = True
    values: dict[str, Any] = {}
    for key, value in merged.items():
        try:
            values[key] = allowed[key](value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{here}: field {key!r} {exc}") from None
    for key in spec.required:
        if key not in values:
            raise ConfigError(f"{here}: field {key!r} is required for a {kind} device")
    tools_known = tool_fields()
    for key in (*spec.paths, *tools_known):
        if key in values:
            path = Path(values[key]).expanduser()
            values[key] = str(path if path.is_absolute() else (base_dir / path).resolve())
    tools = {tool: values[tool] for tool in tools_known if tool in values}
    tool_args = {tool: values[f"{tool}_args"] for tool in tools_known
                 if f"{tool}_args" in values}
    for tool, path in tools.items():
        if not Path(path).is_file():
            raise ConfigError(f"{here}: field {tool!r}: binary {path} does not exist")
    python = values.get("python", spec.python)
    runtimes = values.get("runtimes")
    if runtimes is None:
        runtimes = (local_runtimes() if spec.here else
                    tuple(r for r, needs in RUNTIMES.items() if needs.tool in tools) or
                    ((DEFAULT_AGENT_RUNTIME,) if python is not None else ()))
    unknown_rt = [r for r in runtimes if r not in RUNTIMES]
    if unknown_rt:
        raise ConfigError(f"{here}: field 'runtimes': unknown runtime(s) {unknown_rt}; known: "
                          f"{RUNTIMES.known()}")
    for runtime in runtimes:
        tool = RUNTIMES[runtime].tool
        if tool is not None and tool not in tools:
            raise ConfigError(f"{here}: field 'runtimes': runtime {runtime} needs field "
                              f"{tool!r} (the local path of the binary latbench pushes)")
    work_dir = values.get("work_dir") or spec.work_dir
    if work_dir is None:
        work_dir = os.path.join(tempfile.gettempdir(), f"latbench-{name}")
    try:
        transport = transport_class.from_inventory(
            {k: v for k, v in values.items() if k in spec.fields}, env)
    except ConfigError as exc:
        raise ConfigError(f"{here}: {exc}") from None
    try:
        return Device(name=name, transport=transport, runtimes=runtimes, work_dir=work_dir,
                      threads=values.get("threads", 1), cpu_affinity=values.get("cpu_affinity"),
                      python=python, tools=tools, tool_args=tool_args)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_fleet(path: str | os.PathLike[str], *, insecure_accept_unknown_host_key: bool = False,
               only: Sequence[str] | None = None) -> list[Device]:
    """Read an inventory TOML file (see docs/fleet.md); `only` keeps the named devices."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"fleet file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read fleet file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"fleet file {path} is not valid TOML: {exc}") from None
    devices = parse_fleet(data, base_dir=path.resolve().parent, source=str(path),
                          insecure_accept_unknown_host_key=insecure_accept_unknown_host_key)
    if only:
        names = {d.name for d in devices}
        missing = [n for n in only if n not in names]
        if missing:
            raise ConfigError(f"fleet {path} has no device(s) {missing}; it has "
                              f"{', '.join(sorted(names))}")
        devices = [d for d in devices if d.name in set(only)]
    return devices


# --- health checks ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceCheck:
    """One device's health check: its facts, or the error that kept us from reading them.
    `problems` are things that will make measurements fail or mislead although the device
    answers (a declared runtime that is missing, a nearly full disk)."""

    device: str
    address: str
    reachable: bool
    facts: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    problems: tuple[str, ...] = ()
    seconds: float = 0.0


CHECK_HEADER = ("device", "address", "reachable", "OS", "CPU", "cores", "runtimes", "free",
                "governor", "temp", "problems")
LOW_FREE_BYTES = 200 * 1024 * 1024


def device_facts(device: Device, timeout_s: float = 60.0) -> dict[str, Any]:
    """Facts through the agent where Python runs, else (or if the agent fails) the shell."""
    from latbench.device_agents.facts import shell_facts

    facts: dict[str, Any]
    if device.python is not None:
        try:
            facts = fetch_facts(device, timeout_s)
            facts["source"] = "agent"
        except AgentError as exc:
            facts = shell_facts(device.transport, device.work_dir, timeout_s)
            facts["agent_error"] = str(exc)
    else:
        facts = shell_facts(device.transport, device.work_dir, timeout_s)
    facts.pop("status", None)
    facts["tools"] = {tool: Path(path).name for tool, path in device.tools.items()}
    return facts


def _problems(device: Device, facts: Mapping[str, Any]) -> list[str]:
    problems = []
    if facts.get("agent_error"):
        problems.append(f"agent cannot run with {device.python}: {facts['agent_error']}")
    versions = facts.get("runtimes") or {}
    for runtime in device.runtimes:
        needs = RUNTIMES.get(runtime)
        if needs is None:
            continue
        if needs.agent and facts.get("source") == "agent" and not any(versions.get(m)
                                                                       for m in needs.modules):
            problems.append(f"runtime {runtime} is listed but not importable on the device")
        if needs.cuda and facts.get("cuda_devices") == []:
            problems.append(f"runtime {runtime} unavailable: no CUDA device")
    free = facts.get("free_bytes")
    if isinstance(free, int) and free < LOW_FREE_BYTES:
        problems.append(f"only {free / 2**20:.0f} MiB free in {device.work_dir}")
    return problems


def check_device(device: Device, timeout_s: float = 60.0) -> DeviceCheck:
    """Reach one device and read its facts; errors are kept in the result, never raised."""
    started = time.perf_counter()
    try:
        facts = device_facts(device, timeout_s)
    except (LatbenchError, OSError) as exc:
        return DeviceCheck(device.name, device.address, False, error=f"{type(exc).__name__}: "
                           f"{exc}", seconds=time.perf_counter() - started)
    return DeviceCheck(device.name, device.address, True, facts,
                       problems=tuple(_problems(device, facts)),
                       seconds=time.perf_counter() - started)


def check_devices(devices: Sequence[Device], timeout_s: float = 60.0,
                  max_workers: int = 8) -> list[DeviceCheck]:
    """Check every device in parallel; results in the order of `devices`."""
    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(devices)))) as pool:
        return list(pool.map(lambda d: check_device(d, timeout_s), devices))


def _fmt_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def runtime_summary(facts: Mapping[str, Any]) -> str:
    """'onnxruntime 1.32.0, ai_edge_litert 2.3.0, benchmark_model (pushed)' for a table cell."""
    parts = [f"{name} {version}" for name, version in (facts.get("runtimes") or {}).items()
             if version]
    parts += [f"{tool} (pushed)" for tool in facts.get("tools") or {}]
    return ", ".join(parts) or "-"


# Of the facts' cpu_features, those a check table shows: the ones that decide which int8 and
# fp16 kernels a runtime picks (a dot-product or matrix unit), where two CPUs of one name differ.
SHOWN_CPU_FEATURES = ("avx_vnni", "avx512_vnni", "avx512_fp16", "amx_int8", "amx_fp16",
                      "asimdhp", "asimddp", "i8mm", "sve", "sme")


def cpu_summary(facts: Mapping[str, Any]) -> str:
    """'Intel(R) Xeon(R) Processor (avx512_vnni, amx_int8)' for a table cell."""
    shown = [f for f in facts.get("cpu_features") or () if f in SHOWN_CPU_FEATURES]
    model = str(facts.get("cpu_model") or "-")
    return f"{model} ({', '.join(shown)})" if shown else model


def max_temperature(facts: Mapping[str, Any]) -> float | None:
    temps = [t.get("celsius") for t in facts.get("temps_c") or [] if isinstance(t, dict)]
    values = [float(t) for t in temps if isinstance(t, (int, float))]
    return max(values) if values else None


def check_row(check: DeviceCheck) -> tuple[str, ...]:
    """One table row (CHECK_HEADER order) for a check."""
    f = check.facts
    if not check.reachable:
        return (check.device, check.address, "NO", "-", "-", "-", "-", "-", "-", "-",
                check.error)
    os_text = " ".join(str(x) for x in (f.get("os"), f.get("kernel")) if x) or "-"
    if f.get("android"):
        os_text = f"Android {f['android'].get('android') or '?'} ({os_text})"
    temp = max_temperature(f)
    return (check.device, check.address, "yes", os_text, cpu_summary(f),
            str(f.get("cores") or "-"), runtime_summary(f), _fmt_bytes(f.get("free_bytes")),
            str(f.get("governor") or "-"), f"{temp:.1f} C" if temp is not None else "-",
            "; ".join(check.problems) or "-")
