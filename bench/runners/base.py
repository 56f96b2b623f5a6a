"""Runner protocol, run settings, results, the runner registry, and the shared agent runner.

A runner turns model files into timed samples on a device with one runtime. Runtimes differ only
in how a model is exported and which agent backend times it, so the host-side work (push a
batch, run the agent, parse its JSON, clean up) lives once here in `AgentRunner`.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from bench.export.graph import LayerGraph, spec_graph
from bench.ops import OpSpec
from bench.stats import Stats, round_medians, summarize
from device_agents import AGENT_SCRIPT, CommandResult, Device
from latbench.errors import AgentError, ConfigError, RunnerError, TransportError

log = logging.getLogger(__name__)

GRAPH_OPTS = ("disable", "basic", "extended", "all")
DELEGATES = ("xnnpack", "builtin")

# Settings fields that matter per runtime beyond the common ones, with their short key names.
RUNTIME_SETTINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "onnxruntime": (("graph_opt", "opt"),),
    "litert": (("delegate", "delegate"),),
}
_COMMON_SETTINGS = ("threads", "warmup", "runs", "rounds")

# Probes appended to every batch and measured interleaved with it; user ids may not take them.
# The empty-work model gives the per-call runtime overhead (what makes kernel times additive);
# the reference kernel, the same in every batch, shows how fast the device was during the
# batch, so a campaign can tell a slow phase (throttling, a noisy neighbour) from a slow kernel.
OVERHEAD_ID = "__overhead__"
OVERHEAD_SPEC = OpSpec("act", h=1, w=1, cin=1, act="relu")
REFERENCE_ID = "__reference__"
REFERENCE_SPEC = OpSpec("mbconv", h=16, w=16, cin=32, cout=32, kernel=5, expand=6, act="relu")
PROBES = {OVERHEAD_ID: OVERHEAD_SPEC, REFERENCE_ID: REFERENCE_SPEC}

# Seconds allowed for removing a batch dir on the device after a batch.
CLEANUP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RunSettings:
    """How to time: threads, untimed warm-up calls per model, timed calls per round, rounds,
    ONNX Runtime graph optimisation level and LiteRT delegate."""

    threads: int = 1
    warmup: int = 10
    runs: int = 20
    rounds: int = 5
    graph_opt: str = "all"
    delegate: str = "xnnpack"

    def __post_init__(self) -> None:
        for name, minimum in (("threads", 1), ("warmup", 0), ("runs", 1), ("rounds", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"run setting {name} must be an integer >= {minimum}, "
                                  f"got {value!r}")
        if self.graph_opt not in GRAPH_OPTS:
            raise ConfigError(f"unknown graph_opt {self.graph_opt!r}; known: "
                              f"{', '.join(GRAPH_OPTS)}")
        if self.delegate not in DELEGATES:
            raise ConfigError(f"unknown delegate {self.delegate!r}; known: {', '.join(DELEGATES)}")

    def key(self, runtime: str) -> str:
        """Canonical settings string with only the fields that matter for `runtime`, e.g.
        "threads=1,warmup=10,runs=20,rounds=5,opt=all"; it is stored with every record."""
        if runtime not in RUNTIME_SETTINGS:
            raise ConfigError(f"no settings key defined for runtime {runtime!r}; known: "
                              f"{', '.join(sorted(RUNTIME_SETTINGS))}")
        parts = [f"{name}={getattr(self, name)}" for name in _COMMON_SETTINGS]
        parts += [f"{short}={getattr(self, name)}" for name, short in RUNTIME_SETTINGS[runtime]]
        return ",".join(parts)


@dataclass(frozen=True)
class ModelFile:
    """One exported model to measure; `id` is the caller's handle (e.g. a spec key)."""

    id: str
    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError(f"model id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.data, (bytes, bytearray)) or not self.data:
            raise ConfigError(f"model {self.id}: data must be non-empty bytes")


@dataclass(frozen=True)
class Measurement:
    """Timed samples of one model, per round; `status` is "ok" or "failed" (then `error` says
    why and there are no samples)."""

    id: str
    status: str
    samples_ms: tuple[tuple[float, ...], ...]
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def stats(self) -> Stats | None:
        if not self.ok or not any(self.samples_ms):
            return None
        return summarize(self.samples_ms)


@dataclass(frozen=True)
class BatchResult:
    """Everything one agent call gave back. `overhead_ms` is the median time of the empty-work
    model measured in the same batch: the fixed per-call cost of the runtime. `reference_ms` is
    the best-round median of the reference kernel: the device's speed during the batch."""

    measurements: list[Measurement]
    runtime: str
    runtime_version: str
    overhead_ms: float
    reference_ms: float = float("nan")
    facts_before: dict[str, Any] = field(default_factory=dict)
    facts_after: dict[str, Any] = field(default_factory=dict)
    device: str = ""

    def get(self, model_id: str) -> Measurement:
        for m in self.measurements:
            if m.id == model_id:
                return m
        raise KeyError(model_id)


@runtime_checkable
class Runner(Protocol):
    name: str
    suffix: str

    def export(self, graph: LayerGraph) -> bytes:
        """Model file bytes for this runtime."""
        ...

    def measure(self, device: Device, models: Sequence[ModelFile], settings: RunSettings,
                timeout_s: float) -> BatchResult:
        """Time `models` on `device`; per-model failures are in the result, not raised."""
        ...


# name -> Runner class; filled by @register_runner.
RUNNERS: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register_runner(name: str) -> Callable[[T], T]:
    """Class decorator adding a runner under `name` (also set as its `name`); duplicates are
    refused."""

    def decorator(cls: T) -> T:
        if name in RUNNERS:
            raise ConfigError(f"runner {name!r} is already registered "
                              f"(by {RUNNERS[name].__qualname__})")
        cls.name = name  # type: ignore[attr-defined]
        RUNNERS[name] = cls
        return cls

    return decorator


def get_runner(name: str) -> Runner:
    """A fresh runner instance by name; ConfigError lists the known runners."""
    try:
        cls = RUNNERS[name]
    except KeyError:
        known = ", ".join(sorted(RUNNERS)) or "none"
        raise ConfigError(f"unknown runner {name!r}; known runners: {known}") from None
    return cls()


class AgentRunner:
    """Host side of the device agent, shared by every runtime the agent supports.

    Subclasses set `name` (via @register_runner) and `suffix`, and implement `export`.
    """

    name: ClassVar[str] = ""
    suffix: ClassVar[str] = ""

    def __init__(self) -> None:
        self._probes: dict[str, bytes] = {}

    def export(self, graph: LayerGraph) -> bytes:
        raise NotImplementedError

    def probe_models(self) -> list[tuple[str, bytes]]:
        """The probe models (overhead, reference), exported once per runner."""
        if not self._probes:
            self._probes = {pid: self.export(spec_graph(spec, seed=0))
                            for pid, spec in PROBES.items()}
        return list(self._probes.items())

    def request(self, settings: RunSettings, device: Device,
                models: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """The agent's request JSON for (id, remote path) pairs."""
        return {"runtime": self.name, "threads": settings.threads, "warmup": settings.warmup,
                "runs": settings.runs, "rounds": settings.rounds,
                "graph_opt": settings.graph_opt, "delegate": settings.delegate,
                "affinity": list(device.cpu_affinity) if device.cpu_affinity else None,
                "models": [{"id": i, "path": p} for i, p in models]}

    def measure(self, device: Device, models: Sequence[ModelFile],
                settings: RunSettings | None = None, timeout_s: float = 600.0) -> BatchResult:
        # No settings: the defaults, with the device's own thread count.
        settings = settings or RunSettings(threads=device.threads)
        if self.name not in device.runtimes:
            raise RunnerError(f"runtime {self.name} is not installed on device {device.name} "
                              f"(it has: {', '.join(device.runtimes) or 'none'})")
        models = list(models)
        if not models:
            raise ConfigError(f"no models to measure on device {device.name}")
        ids = [m.id for m in models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConfigError(f"duplicate model ids in batch: {', '.join(dupes)}")
        reserved = sorted(set(ids) & set(PROBES))
        if reserved:
            raise ConfigError(f"model id {reserved[0]!r} is reserved for a probe model")
        batch = [(m.id, m.data) for m in models] + self.probe_models()

        remote_dir = posixpath.join(device.work_dir, f"batch-{uuid.uuid4().hex}")
        transport = device.transport
        with tempfile.TemporaryDirectory(prefix="latbench-batch-") as tmp:
            local_dir = Path(tmp)
            pairs = []
            uploads = [(AGENT_SCRIPT, posixpath.join(remote_dir, AGENT_SCRIPT.name))]
            for index, (model_id, data) in enumerate(batch):
                fname = f"m{index:04d}{self.suffix}"
                (local_dir / fname).write_bytes(data)
                remote = posixpath.join(remote_dir, fname)
                uploads.append((local_dir / fname, remote))
                pairs.append((model_id, remote))
            request_path = posixpath.join(remote_dir, "request.json")
            (local_dir / "request.json").write_text(
                json.dumps(self.request(settings, device, pairs), indent=1), encoding="utf-8")
            uploads.append((local_dir / "request.json", request_path))
            try:
                self._check(device, transport.run(["mkdir", "-p", remote_dir], CLEANUP_TIMEOUT_S),
                            "creating the batch dir")
                for local, remote in uploads:
                    transport.push(local, remote)
                argv = [device.python, uploads[0][1], "measure", request_path]
                log.info("measuring %d models with %s on %s", len(models), self.name,
                         device.name)
                result = transport.run(argv, timeout_s)
            finally:
                self._cleanup(device, remote_dir)
        return self._parse(device, result, settings, ids)

    @staticmethod
    def _check(device: Device, result: CommandResult, what: str) -> None:
        if not result.ok:
            raise RunnerError(f"{what} on device {device.name} failed (exit {result.returncode}):"
                              f" {result.stderr.strip()[-500:]}")

    @staticmethod
    def _cleanup(device: Device, remote_dir: str) -> None:
        """Remove the batch dir; a failure is logged, never raised (it must not hide the
        measurement's own error)."""
        try:
            result = device.transport.run(["rm", "-rf", remote_dir], CLEANUP_TIMEOUT_S)
        except (TransportError, OSError) as exc:
            log.warning("could not remove %s on device %s: %s", remote_dir, device.name, exc)
            return
        if not result.ok:
            log.warning("could not remove %s on device %s: %s", remote_dir, device.name,
                        result.stderr.strip())

    def _parse(self, device: Device, result: CommandResult, settings: RunSettings,
               ids: list[str]) -> BatchResult:
        where = f"agent on device {device.name}"
        tail = (f"(exit {result.returncode}; stdout: {result.stdout.strip()[-300:]!r}; "
                f"stderr: {result.stderr.strip()[-500:]!r})")
        try:
            reply = json.loads(result.stdout)
        except ValueError:
            raise AgentError(f"{where} did not print its JSON reply {tail}") from None
        if not isinstance(reply, dict) or reply.get("status") not in ("ok", "error"):
            raise AgentError(f"{where} printed JSON that is not an agent reply {tail}")
        if reply["status"] == "error":
            message = str(reply.get("error", "unknown error"))
            if reply.get("kind") == "runtime_missing":
                raise RunnerError(f"runtime {self.name} is not usable on device {device.name}: "
                                  f"{message}")
            raise AgentError(f"{where} failed: {message} (exit {result.returncode})")
        if not result.ok:
            raise AgentError(f"{where} reported ok but exited {result.returncode} {tail}")

        raw = reply.get("results")
        if not isinstance(raw, list):
            raise AgentError(f"{where}: reply has no results list")
        measurements: dict[str, Measurement] = {}
        for item in raw:
            m = self._measurement(where, item, settings)
            measurements[m.id] = m
        expected = set(ids) | set(PROBES)
        if set(measurements) != expected or len(raw) != len(expected):
            raise AgentError(f"{where}: results are for ids {sorted(measurements)}, expected "
                             f"{sorted(expected)}")
        probes = {pid: measurements.pop(pid) for pid in PROBES}
        for pid, probe in probes.items():
            if probe.stats is None:
                raise RunnerError(f"the {pid.strip('_')} probe model failed with {self.name} on "
                                  f"device {device.name}: {probe.error}")
        overhead, reference = probes[OVERHEAD_ID], probes[REFERENCE_ID]
        return BatchResult(
            measurements=[measurements[i] for i in ids],
            runtime=self.name,
            runtime_version=str(reply.get("runtime_version") or "unknown"),
            overhead_ms=overhead.stats.median_ms,
            reference_ms=min(round_medians(reference.samples_ms)),
            facts_before=_as_dict(reply.get("facts_before")),
            facts_after=_as_dict(reply.get("facts_after")),
            device=device.name,
        )

    @staticmethod
    def _measurement(where: str, item: object, settings: RunSettings) -> Measurement:
        if (not isinstance(item, dict) or not isinstance(item.get("id"), str)
                or item.get("status") not in ("ok", "failed")
                or not isinstance(item.get("samples_ms"), list)):
            raise AgentError(f"{where}: malformed result entry {str(item)[:200]}")
        model_id, status = item["id"], item["status"]
        if status == "failed":
            return Measurement(model_id, "failed", (), str(item.get("error") or "failed"))
        rounds = item["samples_ms"]
        if len(rounds) != settings.rounds or any(
                not isinstance(r, list) or len(r) != settings.runs for r in rounds):
            raise AgentError(f"{where}: model {model_id} has samples that are not "
                             f"{settings.rounds} rounds x {settings.runs} runs")
        try:
            samples = tuple(tuple(float(x) for x in r) for r in rounds)
        except (TypeError, ValueError):
            raise AgentError(f"{where}: model {model_id} has non-numeric samples") from None
        if any(x < 0 or x != x for r in samples for x in r):
            raise AgentError(f"{where}: model {model_id} has negative or NaN samples")
        return Measurement(model_id, "ok", samples, "")


def _as_dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}
