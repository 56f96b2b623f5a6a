"""Device records and fleet inventories: which machines, how to reach them, what they run.

An inventory is a TOML file with one `[devices.NAME]` table per device (plus optional
`[defaults]` applied to all); `load_fleet` turns it into `Device` records with live (lazily
connecting) transports, and `check_devices` asks every device for its facts in parallel and keeps
each device's error next to its result (pyinfra/fabric style), so one dead board never hides the
state of the others. `local_device()` builds the record for the machine latbench runs on.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import posixpath
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latbench.device_agents.local import LocalTransport
from latbench.device_agents.tools import TOOL_RUNTIMES
from latbench.device_agents.transport import Transport, check_remote_path
from latbench.errors import AgentError, ConfigError, LatbenchError, TransportError

log = logging.getLogger(__name__)

# The standalone script pushed to devices; runners copy it next to each batch.
AGENT_SCRIPT = Path(__file__).resolve().parent / "agent" / "latbench_agent.py"

# Runtime name (as runners call it) -> Python modules any one of which provides it on a device.
RUNTIME_MODULES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime",),
    "litert": ("ai_edge_litert", "tflite_runtime"),
    "onnxruntime-cuda": ("onnxruntime",),
    "torch-cuda": ("torch",),
}
# Runtimes that need a CUDA device besides their module (see bench/runners/gpu.py).
CUDA_RUNTIMES = ("onnxruntime-cuda", "torch-cuda")


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
        agent_runtimes = [r for r in self.runtimes if r in RUNTIME_MODULES]
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
            tool = TOOL_RUNTIMES.get(runtime)
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
    """Runtimes importable by this interpreter, without importing them (that is slow); GPU
    runtimes only when this machine has a CUDA device node."""
    from latbench.device_agents.agent.latbench_agent import cuda_device_nodes

    has_cuda = bool(cuda_device_nodes())
    return tuple(name for name, modules in RUNTIME_MODULES.items()
                 if (has_cuda or name not in CUDA_RUNTIMES)
                 and any(importlib.util.find_spec(m) is not None for m in modules))


def local_device(work_dir: str | None = None, threads: int = 1,
                 cpu_affinity: tuple[int, ...] | None = None) -> Device:
    """This machine as a Device: LocalTransport, this interpreter (so the agent sees the same
    runtimes as latbench), and a fresh temporary work dir unless one is given."""
    if work_dir is None:
        work_dir = tempfile.mkdtemp(prefix="latbench-local-")
    work_dir = os.path.abspath(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    return Device(name="local", transport=LocalTransport(), runtimes=local_runtimes(),
                  work_dir=work_dir, threads=threads, cpu_affinity=cpu_affinity,
                  python=sys.executable)


def fetch_facts(device: Device, timeout_s: float = 120.0) -> dict[str, Any]:
    """Run the agent's `facts` on the device (CPU, governor, temperatures, runtime versions,
    free space in its work dir) for the dataset card and health checks. A device without
    Python is asked through its shell instead (see device_agents.facts)."""
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
        result = transport.run([device.python, script, "facts", "--work-dir", device.work_dir],
                               timeout_s)
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
TRANSPORT_KINDS = ("local", "ssh", "adb")
DEFAULT_WORK_DIRS = {"ssh": "/tmp/latbench", "adb": "/data/local/tmp/latbench"}
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class _Bad(ValueError):
    """A field value is invalid; the message says how (the caller adds device and field)."""


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"must be a non-empty string, got {value!r}")
    return value


def _int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if (not isinstance(value, int) or isinstance(value, bool) or value < lo
                or (hi is not None and value > hi)):
            bounds = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise _Bad(f"must be an integer {bounds}, got {value!r}")
        return value
    return check


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise _Bad(f"must be a number > 0, got {value!r}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {value!r}")
    return value


def _str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or any(not isinstance(v, str) or not v for v in value):
        raise _Bad(f"must be a list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise _Bad(f"lists a name twice: {value!r}")
    return tuple(value)


def _cpu_list(value: Any) -> tuple[int, ...]:
    if (not isinstance(value, list) or not value
            or any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in value)):
        raise _Bad(f"must be a non-empty list of CPU ids >= 0, got {value!r}")
    return tuple(value)


def _remote_dir(value: Any) -> str:
    try:
        return check_remote_path(_str(value)).rstrip("/") or "/"
    except TransportError as exc:
        raise _Bad(str(exc)) from None


_Field = Callable[[Any], Any]
COMMON_FIELDS: dict[str, _Field] = {
    "transport": _str, "runtimes": _str_list, "threads": _int(1), "cpu_affinity": _cpu_list,
    "work_dir": _remote_dir, "python": _str, "description": _str,
    **{tool: _str for tool in TOOL_RUNTIMES.values()},  # local paths of tool binaries
    **{f"{tool}_args": _str_list for tool in TOOL_RUNTIMES.values()},  # their extra flags
}
TRANSPORT_FIELDS: dict[str, dict[str, _Field]] = {
    "local": {},
    "ssh": {"host": _str, "port": _int(1, 65535), "user": _str, "key_file": _str,
            "known_hosts": _str, "insecure_accept_unknown_host_key": _bool,
            "password_env": _str, "connect_timeout_s": _positive, "connect_retries": _int(1)},
    "adb": {"serial": _str, "adb": _str, "adb_server_port": _int(1, 65535),
            "connect_timeout_s": _positive, "connect_retries": _int(1)},
}
REQUIRED_FIELDS = {"local": (), "ssh": ("host",), "adb": ("serial",)}
PATH_FIELDS = ("key_file", "known_hosts", *TOOL_RUNTIMES.values())


def _known_runtimes() -> tuple[str, ...]:
    return (*RUNTIME_MODULES, *TOOL_RUNTIMES)


def parse_fleet(data: Mapping[str, Any], *, base_dir: str | os.PathLike[str] = ".",
                source: str = "<fleet>", insecure_accept_unknown_host_key: bool = False,
                env: Mapping[str, str] | None = None) -> list[Device]:
    """Inventory data (a parsed TOML document) -> Device records, in file order.

    Relative paths (key files, known_hosts, tool binaries) are taken relative to `base_dir`,
    the inventory's folder. Every error names the inventory, the device and the field.
    `insecure_accept_unknown_host_key` (the CLI flag) turns the flag on for every SSH device.
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
    every_field = set(COMMON_FIELDS).union(*TRANSPORT_FIELDS.values())
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
    if kind not in TRANSPORT_KINDS:
        raise ConfigError(f"{here}: field 'transport' must be one of "
                          f"{', '.join(TRANSPORT_KINDS)}, got {kind!r}")
    allowed = {**COMMON_FIELDS, **TRANSPORT_FIELDS[kind]}
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{here}: unknown field(s) {unknown} for a {kind} device; known: "
                          f"{', '.join(sorted(allowed))}")
    merged = {k: v for k, v in defaults.items() if k in allowed}
    merged.update(table)
    values: dict[str, Any] = {}
    for key, value in merged.items():
        try:
            values[key] = allowed[key](value)
        except _Bad as exc:
            raise ConfigError(f"{here}: field {key!r} {exc}") from None
    for key in REQUIRED_FIELDS[kind]:
        if key not in values:
            raise ConfigError(f"{here}: field {key!r} is required for a {kind} device")
    for key in PATH_FIELDS:
        if key in values:
            path = Path(values[key]).expanduser()
            values[key] = str(path if path.is_absolute() else (base_dir / path).resolve())
    tools = {tool: values[tool] for tool in TOOL_RUNTIMES.values() if tool in values}
    tool_args = {tool: values[f"{tool}_args"] for tool in TOOL_RUNTIMES.values()
                 if f"{tool}_args" in values}
    for tool, path in tools.items():
        if not Path(path).is_file():
            raise ConfigError(f"{here}: field {tool!r}: binary {path} does not exist")
    runtimes = values.get("runtimes")
    if runtimes is None:
        runtimes = (local_runtimes() if kind == "local" else
                    tuple(r for r, tool in TOOL_RUNTIMES.items() if tool in tools) or
                    (("onnxruntime",) if kind == "ssh" else ()))
    unknown_rt = [r for r in runtimes if r not in _known_runtimes()]
    if unknown_rt:
        raise ConfigError(f"{here}: field 'runtimes': unknown runtime(s) {unknown_rt}; known: "
                          f"{', '.join(_known_runtimes())}")
    for runtime in runtimes:
        tool = TOOL_RUNTIMES.get(runtime)
        if tool is not None and tool not in tools:
            raise ConfigError(f"{here}: field 'runtimes': runtime {runtime} needs field "
                              f"{tool!r} (the local path of the binary latbench pushes)")
    python = values.get("python")
    if python is None:
        python = {"local": sys.executable, "ssh": "python3"}.get(kind)
    work_dir = values.get("work_dir") or DEFAULT_WORK_DIRS.get(kind)
    if work_dir is None:
        work_dir = os.path.join(tempfile.gettempdir(), f"latbench-{name}")
    transport = _make_transport(kind, values, here, insecure, env)
    try:
        return Device(name=name, transport=transport, runtimes=runtimes, work_dir=work_dir,
                      threads=values.get("threads", 1), cpu_affinity=values.get("cpu_affinity"),
                      python=python, tools=tools, tool_args=tool_args)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _make_transport(kind: str, values: Mapping[str, Any], here: str, insecure: bool,
                    env: Mapping[str, str]) -> Transport:
    if kind == "local":
        return LocalTransport()
    retry = {k: values[k] for k in ("connect_timeout_s", "connect_retries") if k in values}
    if kind == "ssh":
        from latbench.device_agents.ssh import SSHTransport

        password = None
        if "password_env" in values:
            password = env.get(values["password_env"])
            if password is None:
                raise ConfigError(f"{here}: field 'password_env': environment variable "
                                  f"{values['password_env']} is not set")
        return SSHTransport(
            values["host"], port=values.get("port", 22), user=values.get("user"),
            key_file=values.get("key_file"), known_hosts=values.get("known_hosts"),
            insecure_accept_unknown_host_key=(
                insecure or values.get("insecure_accept_unknown_host_key", False)),
            password=password, **retry)
    from latbench.device_agents.adb import ADBTransport

    return ADBTransport(values["serial"], adb=values.get("adb", "adb"),
                        server_port=values.get("adb_server_port"), **retry)


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
        problems.append(f"agent cannot run with {device.python}: {facts['agent_error'][:200]}")
    versions = facts.get("runtimes") or {}
    for runtime in device.runtimes:
        modules = RUNTIME_MODULES.get(runtime)
        if modules and facts.get("source") == "agent" and not any(versions.get(m)
                                                                   for m in modules):
            problems.append(f"runtime {runtime} is listed but not importable on the device")
        if runtime in CUDA_RUNTIMES and facts.get("cuda_devices") == []:
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


def max_temperature(facts: Mapping[str, Any]) -> float | None:
    temps = [t.get("celsius") for t in facts.get("temps_c") or [] if isinstance(t, dict)]
    values = [float(t) for t in temps if isinstance(t, (int, float))]
    return max(values) if values else None


def check_row(check: DeviceCheck) -> tuple[str, ...]:
    """One table row (CHECK_HEADER order) for a check."""
    f = check.facts
    if not check.reachable:
        error = check.error if len(check.error) <= 160 else check.error[:157] + "..."
        return (check.device, check.address, "NO", "-", "-", "-", "-", "-", "-", "-", error)
    os_text = " ".join(str(x) for x in (f.get("os"), f.get("kernel")) if x) or "-"
    if f.get("android"):
        os_text = f"Android {f['android'].get('android') or '?'} ({os_text})"
    temp = max_temperature(f)
    return (check.device, check.address, "yes", os_text, str(f.get("cpu_model") or "-"),
            str(f.get("cores") or "-"), runtime_summary(f), _fmt_bytes(f.get("free_bytes")),
            str(f.get("governor") or "-"), f"{temp:.1f} C" if temp is not None else "-",
            "; ".join(check.problems) or "-")
