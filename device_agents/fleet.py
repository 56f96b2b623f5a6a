"""Device records: which machine, how to reach it, what it can run and how to pin it.

Inventory files (many devices, health checks) come later; for now `local_device()` builds the
record for the machine latbench itself runs on, which tests and `make demo` measure.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import posixpath
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agents.local import LocalTransport
from device_agents.transport import Transport, check_remote_path
from latbench.errors import AgentError, ConfigError, TransportError

log = logging.getLogger(__name__)

# The standalone script pushed to devices; runners copy it next to each batch.
AGENT_SCRIPT = Path(__file__).resolve().parent / "agent" / "latbench_agent.py"

# Runtime name (as runners call it) -> Python modules any one of which provides it on a device.
RUNTIME_MODULES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime",),
    "litert": ("ai_edge_litert", "tflite_runtime"),
}


@dataclass(frozen=True)
class Device:
    """One device to measure on.

    `threads` and `cpu_affinity` are the device's defaults for pinning (e.g. the big cores of a
    phone); `work_dir` is an absolute directory on the device where batches are written;
    `python` is the interpreter that runs the agent there.
    """

    name: str
    transport: Transport
    runtimes: tuple[str, ...]
    work_dir: str
    threads: int = 1
    cpu_affinity: tuple[int, ...] | None = None
    python: str = "python3"

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
        if not self.python:
            raise ConfigError(f"device {self.name}: python interpreter must be given")


def local_runtimes() -> tuple[str, ...]:
    """Runtimes importable by this interpreter, without importing them (that is slow)."""
    return tuple(name for name, modules in RUNTIME_MODULES.items()
                 if any(importlib.util.find_spec(m) is not None for m in modules))


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
    free space in its work dir) for the dataset card and health checks."""
    remote_dir = posixpath.join(device.work_dir, f"facts-{uuid.uuid4().hex}")
    script = posixpath.join(remote_dir, AGENT_SCRIPT.name)
    transport = device.transport
    try:
        made = transport.run(["mkdir", "-p", remote_dir], timeout_s)
        if not made.ok:
            raise TransportError(f"cannot create {remote_dir} on device {device.name}: "
                                 f"{made.stderr.strip()}")
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
