"""Runner protocol, run settings, results, the runner registry, and the shared agent runner.

A runner turns model files into timed samples on a device with one runtime. Runtimes differ only
in how a model is exported and which agent backend times it, so the host-side work (push a
batch, run the agent, parse its JSON, clean up) lives once here in `AgentRunner`.

A runner class describes its runtime (timm style): `needs` (what a device must offer: Python
modules, CUDA, a native tool), `settings_fields` (the RunSettings fields that belong in its
settings key) and `formats` (the model file suffixes it runs; the first is what `export`
writes). `@register_runner(name)` is the one registration: it also enters the needs in the
device layer's runtime registry, which fleet validation, `local_runtimes()` and the health
checks read.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import statistics
import tempfile
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from latbench.bench.export.graph import LayerGraph, spec_graph
from latbench.bench.ops import DTYPES, OpSpec
from latbench.bench.stats import STOP_REASONS, Quality, Stats, quality, round_medians, summarize
from latbench.device_agents import (
    AGENT_SCRIPT,
    RUNTIMES,
    CommandResult,
    Device,
    LocalTransport,
    RuntimeNeeds,
    register_runtime,
)
from latbench.device_agents.agent.latbench_agent import cuda_unavailable, parse_progress
from latbench.errors import AgentError, ConfigError, RunnerError, TransportError
from latbench.registry import Registry

log = logging.getLogger(__name__)

GRAPH_OPTS = ("disable", "basic", "extended", "all")
DELEGATES = ("xnnpack", "builtin", "gpu")  # "gpu": native tools only (benchmark_model)

_COMMON_SETTINGS = ("threads", "warmup", "runs", "rounds")
# With the stopping rule, "rounds" is decided by the rule, and the rule's parameters are keyed.
_ADAPTIVE_SETTINGS = (("threads", "threads"), ("warmup", "warmup"), ("runs", "runs"),
                      ("target_ci", "target_ci"), ("confidence", "confidence"),
                      ("min_runs", "min_runs"), ("max_runs", "max_runs"),
                      ("max_seconds", "max_s"), ("futility", "futility"))

# Probes appended to every batch and measured interleaved with it; user ids may not take them.
# The empty-work model gives the per-call runtime overhead (what makes kernel times additive);
# the reference kernel, the same in every batch, shows how fast the device was during the
# batch, so a campaign can tell a slow phase (throttling, a noisy neighbour) from a slow kernel.
OVERHEAD_ID = "__overhead__"
OVERHEAD_SPEC = OpSpec("act", h=1, w=1, cin=1, act="relu")
REFERENCE_ID = "__reference__"
REFERENCE_SPEC = OpSpec("mbconv", h=16, w=16, cin=32, cout=32, kernel=5, expand=6, act="relu")
# The reference kernel works in cache and misses what slows memory-bound work: another tenant
# of a VM's host or a neighbour core streaming through the shared cache. The memory probe, an
# activation over 8 MB (16 MB streamed per call), shows that speed beside it.
MEMORY_ID = "__memory__"
MEMORY_SPEC = OpSpec("act", h=256, w=256, cin=32, act="relu")
PROBES = {OVERHEAD_ID: OVERHEAD_SPEC, REFERENCE_ID: REFERENCE_SPEC, MEMORY_ID: MEMORY_SPEC}
TRACKED_PROBES = frozenset({REFERENCE_ID, MEMORY_ID})  # measured in every round

# Seconds allowed for removing a batch dir on the device after a batch.
CLEANUP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RunSettings:
    """How to time: threads, untimed warm-up calls per model, timed calls per round, rounds,
    ONNX Runtime graph optimisation level and LiteRT delegate.

    Fixed protocol (`target_ci=None`, the default): `rounds` interleaved rounds of `runs` calls.
    Stopping rule (`target_ci` set, e.g. 0.02): interleaved rounds of `runs` calls continue
    over the models not yet done; a model is done when the `confidence` interval of its median
    is within `target_ci` of the median (relative width), but never before `min_runs` samples,
    or when it reaches `max_runs` samples or `max_seconds` of timing, or - with `futility` F -
    as soon as reaching the target is projected to take more than F times `max_seconds` (the
    interval narrows like 1/sqrt(n)): seconds that would end short of the target anyway are
    not spent.
    `rounds` is then unused.

    Single stream (`queries` set, MLPerf-style, for whole models): each model alone, one query
    after the other, until it has `queries` queries and `min_query_s` seconds; `replicates`
    such runs per model, `replicate_pause_s` apart, which must agree (`stats.
    replication_spread`). `runs`, `rounds` and the stopping rule are then unused.

    Either way, with one thread a timed call whose thread was descheduled (another process ran
    on its core) is timed again (`retake_descheduled`); off, such calls are only counted.

    `settle`: a whole network gets untimed calls at each visit until its times stop falling
    (a LiteRT MobileNetV2 takes ~20 calls after other models ran; the agent's `settle`), on
    the runners that can (`settles_networks`). Off by default here, so run settings stored
    before it existed read as what they were; the CLI turns it on (`--no-settle` to resume
    a dataset measured without it).
    """

    threads: int = 1
    warmup: int = 10
    runs: int = 20
    rounds: int = 5
    graph_opt: str = "all"
    delegate: str = "xnnpack"
    target_ci: float | None = None
    confidence: float = 0.95
    min_runs: int = 20
    max_runs: int = 1000
    max_seconds: float = 5.0
    futility: float | None = 4.0
    retake_descheduled: bool = True
    queries: int | None = None
    min_query_s: float = 60.0
    replicates: int = 3
    replicate_pause_s: float = 5.0
    settle: bool = False

    def __post_init__(self) -> None:
        for name, minimum in (("threads", 1), ("warmup", 0), ("runs", 1), ("rounds", 1),
                              ("min_runs", 1), ("max_runs", 1), ("replicates", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"run setting {name} must be an integer >= {minimum}, "
                                  f"got {value!r}")
        if self.graph_opt not in GRAPH_OPTS:
            raise ConfigError(f"unknown graph_opt {self.graph_opt!r}; known: "
                              f"{', '.join(GRAPH_OPTS)}")
        if self.delegate not in DELEGATES:
            raise ConfigError(f"unknown delegate {self.delegate!r}; known: {', '.join(DELEGATES)}")
        if self.target_ci is not None and not _number_in(self.target_ci, 0.0, 1.0):
            raise ConfigError(f"run setting target_ci must be null (fixed protocol) or a "
                              f"relative width in (0, 1), got {self.target_ci!r}")
        if not _number_in(self.confidence, 0.5, 1.0):
            raise ConfigError(f"run setting confidence must be in (0.5, 1), got "
                              f"{self.confidence!r}")
        if self.max_runs < self.min_runs:
            raise ConfigError(f"run setting max_runs ({self.max_runs}) is below min_runs "
                              f"({self.min_runs})")
        if not _number_in(self.max_seconds, 0.0, math.inf):
            raise ConfigError(f"run setting max_seconds must be > 0, got {self.max_seconds!r}")
        if self.futility is not None and not _number_in(self.futility, 1.0 - 1e-12, math.inf):
            raise ConfigError(f"run setting futility must be null (off) or a factor >= 1, got "
                              f"{self.futility!r}")
        if self.queries is not None:
            if not isinstance(self.queries, int) or isinstance(self.queries, bool) \
                    or self.queries < 1:
                raise ConfigError(f"run setting queries must be null or an integer >= 1, got "
                                  f"{self.queries!r}")
            if self.target_ci is not None:
                raise ConfigError("a single stream (queries) and the stopping rule (target_ci) "
                                  "exclude each other")
        if not _number_in(self.min_query_s, 0.0, math.inf):
            raise ConfigError(f"run setting min_query_s must be > 0, got {self.min_query_s!r}")
        if not _number_in(self.replicate_pause_s, -1e-12, math.inf):
            raise ConfigError(f"run setting replicate_pause_s must be >= 0, got "
                              f"{self.replicate_pause_s!r}")
        object.__setattr__(self, "min_query_s", float(self.min_query_s))
        object.__setattr__(self, "replicate_pause_s", float(self.replicate_pause_s))
        if not isinstance(self.settle, bool):
            raise ConfigError(f"run setting settle must be true or false, got {self.settle!r}")
        if not isinstance(self.retake_descheduled, bool):
            raise ConfigError(f"run setting retake_descheduled must be true or false, got "
                              f"{self.retake_descheduled!r}")
        if self.futility is not None:
            object.__setattr__(self, "futility", float(self.futility))
        if self.target_ci is not None:
            object.__setattr__(self, "target_ci", float(self.target_ci))
        object.__setattr__(self, "confidence", float(self.confidence))
        object.__setattr__(self, "max_seconds", float(self.max_seconds))

    @property
    def adaptive(self) -> bool:
        """True when the stopping rule decides how many runs each model gets."""
        return self.target_ci is not None

    @property
    def single_stream(self) -> bool:
        """True for the MLPerf-style single stream (`queries` set)."""
        return self.queries is not None

    def settles(self, runtime: str) -> bool:
        """Whether `runtime`'s networks are settled at each visit: asked for, the runner can,
        and not a single stream (whose queries run back to back anyway)."""
        return (self.settle and not self.single_stream
                and getattr(RUNNERS.get(runtime), "settles_networks", False))

    def stream_request(self) -> dict[str, Any] | None:
        """The agent request's "single_stream" entry (None: not a single stream)."""
        if self.queries is None:
            return None
        return {"queries": self.queries, "min_seconds": self.min_query_s,
                "replicates": self.replicates, "pause_s": self.replicate_pause_s}

    def stop_rule(self) -> dict[str, Any] | None:
        """The agent request's "stop" entry (None: fixed protocol)."""
        if self.target_ci is None:
            return None
        return {"target_rel_width": self.target_ci, "confidence": self.confidence,
                "min_runs": self.min_runs, "max_runs": self.max_runs,
                "max_seconds": self.max_seconds, "futility": self.futility}

    def key(self, runtime: str) -> str:
        """Canonical settings string with only the fields that matter for `runtime`, e.g.
        "threads=1,warmup=10,runs=20,rounds=5,opt=all"; it is stored with every record.
        With the stopping rule: "threads=1,warmup=10,runs=10,target_ci=0.02,confidence=0.95,
        min_runs=20,max_runs=1000,max_s=5,futility=4,opt=all" (futility=off without it). The
        fixed protocol's key is unchanged, so datasets measured before the rule still resume.
        The runtime-specific fields are those its runner declares (`settings_fields`);
        ",settle=on" follows where networks are settled (`settles`), ",retake=off" ends the key
        of runs that keep descheduled calls."""
        if runtime not in RUNNERS:
            raise ConfigError(f"no settings key defined for runtime {runtime!r}; known: "
                              f"{RUNNERS.known()}")
        if self.single_stream:
            parts = [f"threads={self.threads}", f"warmup={self.warmup}",
                     f"queries={self.queries}", f"min_s={_key_value(self.min_query_s)}",
                     f"replicates={self.replicates}",
                     f"pause_s={_key_value(self.replicate_pause_s)}"]
        elif self.adaptive:
            parts = [f"{short}={_key_value(getattr(self, name))}"
                     for name, short in _ADAPTIVE_SETTINGS]
        else:
            parts = [f"{name}={getattr(self, name)}" for name in _COMMON_SETTINGS]
        parts += [f"{short}={getattr(self, name)}"
                  for name, short in RUNNERS[runtime].settings_fields]
        if self.settles(runtime):
            parts.append("settle=on")
        if not self.retake_descheduled:
            parts.append("retake=off")
        return ",".join(parts)


def _key_value(value: object) -> str:
    if value is None:
        return "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _number_in(value: object, low: float, high: float) -> bool:
    """A finite real number strictly between low and high (high may be inf)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(float(value)) and low < float(value) < high)


@dataclass(frozen=True)
class ModelFile:
    """One exported model to measure; `id` is the caller's handle (e.g. a spec key). With
    `memory`, the runner also measures the model's peak memory (whole networks: a kernel's
    figure would be the runtime's own memory, not the kernel's); with `settle` (whole
    networks), it is settled at each visit when the settings say so (`RunSettings.settle`)."""

    id: str
    data: bytes
    memory: bool = False
    settle: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError(f"model id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.data, (bytes, bytearray)) or not self.data:
            raise ConfigError(f"model {self.id}: data must be non-empty bytes")


@dataclass(frozen=True)
class Measurement:
    """Timed samples of one model, per round; `status` is "ok" or "failed" (then `error` says
    why and there are no samples).

    A native tool (benchmark_model, onnxruntime_perf_test) reports statistics, not samples: its
    figures go in `summary` (NaN where the tool does not report one), its untouched output in
    `raw_output` and the exact flags in `tool_flags`, so every number can be traced back.
    """

    id: str
    status: str
    samples_ms: tuple[tuple[float, ...], ...]
    error: str = ""
    summary: Stats | None = None
    round_min_median: float = math.nan
    raw_output: str = ""
    tool_flags: str = ""
    stop_reason: str = ""  # "fixed", or the stopping rule's: converged, max_runs, max_seconds
    # Timed calls taken again because the timing thread was descheduled, and such calls kept
    # once the retakes ran out; None where the runner could not check (a thread pool, a native
    # tool, a device timing itself).
    descheduled_retaken: int | None = None
    descheduled_kept: int | None = None
    energy_mj: float = math.nan  # energy per inference, where the device has a sensor
    # Peak memory the model added to its process (None: not asked for, or not measurable) and
    # how it was measured ("" when not asked for; "not available (...)" says why not).
    peak_memory_bytes: int | None = None
    memory_method: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def stats(self) -> Stats | None:
        if not self.ok:
            return None
        if any(self.samples_ms):
            return summarize(self.samples_ms)
        return self.summary

    def quality(self, confidence: float = 0.95) -> Quality | None:
        """Precision and shape flags of the samples; None without samples (failed, or a
        native tool that reports statistics only)."""
        if not self.ok or not any(self.samples_ms):
            return None
        return quality(self.samples_ms, confidence)

    @property
    def round_min_median_ms(self) -> float:
        """Best round's median: from the samples, else what the tool gave (often NaN)."""
        if any(self.samples_ms):
            return min(round_medians(self.samples_ms))
        return self.round_min_median


@dataclass(frozen=True)
class BatchResult:
    """Everything one agent call gave back. `overhead_ms` is the median time of the empty-work
    model measured in the same batch: the fixed per-call cost of the runtime. `reference_ms` is
    the reference kernel's best-round median (fixed protocol) or median round median (stopping
    rule): the device's speed during the batch."""

    measurements: list[Measurement]
    runtime: str
    runtime_version: str
    overhead_ms: float
    reference_ms: float = float("nan")
    facts_before: dict[str, Any] = field(default_factory=dict)
    facts_after: dict[str, Any] = field(default_factory=dict)
    device: str = ""
    energy_method: str = ""  # the device's energy source, "not available", "" (not asked)
    memory_reference_ms: float = float("nan")  # the memory probe's, taken as reference_ms

    def get(self, model_id: str) -> Measurement:
        for m in self.measurements:
            if m.id == model_id:
                return m
        raise KeyError(model_id)


# Called by a runner with the number of models finished since its last call (fractional while
# models are part-way through their rounds).
ProgressCallback = Callable[[float], None]


@runtime_checkable
class Runner(Protocol):
    name: str
    suffix: str
    formats: tuple[str, ...]
    precisions: tuple[str, ...]
    needs: RuntimeNeeds
    settings_fields: tuple[tuple[str, str], ...]

    def export(self, graph: LayerGraph) -> bytes:
        """Model file bytes for this runtime."""
        ...

    def measure(self, device: Device, models: Sequence[ModelFile], settings: RunSettings,
                timeout_s: float, progress: ProgressCallback | None = None) -> BatchResult:
        """Time `models` on `device`; per-model failures are in the result, not raised.
        `progress`, if given, is called as models finish, with increments that add up to
        len(models) once the batch has returned; after an error what was reported stands."""
        ...


# name -> Runner class; filled by @register_runner.
RUNNERS: Registry[type] = Registry("runner")

T = TypeVar("T", bound=type)
_SETTINGS_FIELDS = {f.name for f in fields(RunSettings)}


def register_runner(name: str) -> Callable[[T], T]:
    """Class decorator adding a runner under `name` (also set as its `name`, and its `suffix`
    set to its first format) and its needs to the device layer's runtime registry; a taken
    name, or a class that does not describe itself, is refused."""

    def decorator(cls: T) -> T:
        if name not in RUNNERS and name not in RUNTIMES:  # `add` refuses a taken name
            _check_description(name, cls)
        RUNNERS.add(name, cls)
        try:
            register_runtime(name, cls.needs)  # type: ignore[attr-defined]
        except ConfigError:
            del RUNNERS[name]
            raise
        cls.name = name  # type: ignore[attr-defined]
        cls.suffix = cls.formats[0]  # type: ignore[attr-defined]
        return cls

    return decorator


def _check_description(name: str, cls: type) -> None:
    where = f"runner {name!r} ({cls.__qualname__})"
    if not isinstance(getattr(cls, "needs", None), RuntimeNeeds):
        raise ConfigError(f"{where} must declare `needs = RuntimeNeeds(...)`")
    formats = getattr(cls, "formats", None)
    if (not isinstance(formats, tuple) or not formats
            or any(not isinstance(f, str) or not f.startswith(".") or len(f) < 2
                   for f in formats)):
        raise ConfigError(f"{where} must declare `formats`, a non-empty tuple of model file "
                          f"suffixes such as '.onnx', got {formats!r}")
    settings = getattr(cls, "settings_fields", None)
    if not isinstance(settings, tuple) or any(
            not isinstance(pair, tuple) or len(pair) != 2 or pair[0] not in _SETTINGS_FIELDS
            or not isinstance(pair[1], str) or not pair[1] for pair in settings):
        raise ConfigError(f"{where} must declare `settings_fields`, a tuple of (RunSettings "
                          f"field, short key name) pairs, got {settings!r}")


def unregister_runner(name: str) -> None:
    """Remove a runner and its runtime needs (plug-in tests register throwaway runners)."""
    RUNNERS.pop(name, None)
    RUNTIMES.pop(name, None)


def get_runner(name: str) -> Runner:
    """A fresh runner instance by name; ConfigError lists the known runners."""
    return RUNNERS.lookup(name)()


def require_runtime(device: Device, runtime: str) -> None:
    """RunnerError when `runtime` needs a CUDA device and `device` does not list it, saying why
    (on this machine: no CUDA device node, or the runtime's module missing)."""
    runner = RUNNERS.get(runtime)
    if runner is None or not runner.needs.cuda or runtime in device.runtimes:
        return
    reason = cuda_unavailable(runtime) if isinstance(device.transport, LocalTransport) else None
    raise RunnerError(f"{reason or f'runtime {runtime} unavailable'} on device {device.name} "
                      f"(it has: {', '.join(device.runtimes) or 'none'})")


class RunnerBase:
    """What the agent runner and the native-tool runners share: the probe models (exported once
    per runner), checking a batch's model ids, and removing a batch dir on the device.

    Subclasses declare `needs`, `settings_fields` and `formats` (see the module docstring)
    and implement `export`; @register_runner sets `name` and `suffix`.
    """

    name: ClassVar[str] = ""
    suffix: ClassVar[str] = ""
    needs: ClassVar[RuntimeNeeds]
    settings_fields: ClassVar[tuple[tuple[str, str], ...]] = ()
    formats: ClassVar[tuple[str, ...]] = ()
    # What the runner's exported models can compute in (bench.ops.DTYPES names).
    precisions: ClassVar[tuple[str, ...]] = DTYPES
    # Whether the runtime runs convolutions and pooling in a blocked channel layout it converts
    # into and out of (ONNX Runtime's NCHWc on the CPU): the composition's layout terms
    # (predictor/model_level.py, LAYOUT_TERMS) apply to its networks only then.
    blocked_layout: ClassVar[bool] = False
    # The delegates (settings) under which its CPU kernels run matrix products and depthwise
    # convolutions in two thread pools (TFLite's built-in kernels: ruy for GEMMs, the
    # cpu_backend threadpool for depthwise): the composition's pool-switch term
    # (predictor/model_level.py, POOL_TERMS) applies to its networks at several threads only.
    split_pool_delegates: ClassVar[frozenset[str]] = frozenset()
    # Whether it can settle a whole network at each visit (RunSettings.settle; the agent can).
    settles_networks: ClassVar[bool] = False

    def __init__(self) -> None:
        self._probes: dict[str, bytes] = {}

    @classmethod
    def kernel_refusal(cls, precision: str, facts: Mapping[str, Any]) -> str | None:
        """Why kernels of `precision` timed alone would not predict networks on a device with
        `facts` (fetch_facts: machine, cores, ...), or None when they would."""
        return None

    def export(self, graph: LayerGraph) -> bytes:
        raise NotImplementedError

    def probe_models(self) -> list[tuple[str, bytes]]:
        """The probe models (overhead, reference), exported once per runner."""
        if not self._probes:
            self._probes = {pid: self.export(spec_graph(spec, seed=0))
                            for pid, spec in PROBES.items()}
        return list(self._probes.items())

    @staticmethod
    def _batch_ids(device: Device, models: Sequence[ModelFile]) -> list[str]:
        """The batch's model ids: at least one, unique, none taken by a probe."""
        if not models:
            raise ConfigError(f"no models to measure on device {device.name}")
        ids = [m.id for m in models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConfigError(f"duplicate model ids in batch: {', '.join(dupes)}")
        reserved = sorted(set(ids) & set(PROBES))
        if reserved:
            raise ConfigError(f"model id {reserved[0]!r} is reserved for a probe model")
        return ids

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


class AgentRunner(RunnerBase):
    """Host side of the device agent, shared by every runtime the agent supports."""

    delegates: ClassVar[tuple[str, ...]] = ("xnnpack", "builtin")  # what the agent can do
    stopping_rule: ClassVar[bool] = True  # the agent applies RunSettings' stopping rule
    settles_networks: ClassVar[bool] = True  # and settles networks (RunSettings.settle)

    def request(self, settings: RunSettings, device: Device,
                models: Sequence[tuple[str, str]], memory: Collection[str] = (),
                settle: Collection[str] = ()) -> dict[str, Any]:
        """The agent's request JSON for (id, remote path) pairs; the ids in `memory` have their
        peak memory measured too, those in `settle` are settled at each visit when the
        settings settle this runtime's networks."""
        settle = set(settle) if settings.settles(self.name) else set()
        return {"runtime": self.name, "threads": settings.threads, "warmup": settings.warmup,
                "runs": settings.runs, "rounds": settings.rounds,
                "graph_opt": settings.graph_opt, "delegate": settings.delegate,
                "affinity": list(device.cpu_affinity) if device.cpu_affinity else None,
                "stop": settings.stop_rule(),
                "retake_descheduled": settings.retake_descheduled,
                "single_stream": settings.stream_request(),
                # the reference probe runs in every round, so it sees the whole batch's speed
                "models": [{"id": i, "path": p,
                            **({"track": True} if i in TRACKED_PROBES else {}),
                            **({"probe": True} if i in PROBES else {}),
                            **({"memory": True} if i in memory else {}),
                            **({"settle": True} if i in settle else {})}
                           for i, p in models]}

    def measure(self, device: Device, models: Sequence[ModelFile],
                settings: RunSettings | None = None, timeout_s: float = 600.0,
                progress: ProgressCallback | None = None) -> BatchResult:
        # No settings: the defaults, with the device's own thread count.
        settings = settings or RunSettings(threads=device.threads)
        require_runtime(device, self.name)
        if device.python is None:
            raise RunnerError(f"runtime {self.name} runs through the Python agent, but device "
                              f"{device.name} has no python")
        uses_delegate = any(f == "delegate" for f, _ in self.settings_fields)
        if uses_delegate and settings.delegate not in self.delegates:
            raise RunnerError(f"delegate {settings.delegate} is not available with runtime "
                              f"{self.name} (it has {', '.join(self.delegates)}); use "
                              "tflite-benchmark-model for the GPU delegate")
        if self.name not in device.runtimes:
            raise RunnerError(f"runtime {self.name} is not installed on device {device.name} "
                              f"(it has: {', '.join(device.runtimes) or 'none'})")
        models = list(models)
        ids = self._batch_ids(device, models)
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
                json.dumps(self.request(settings, device, pairs,
                                        {m.id for m in models if m.memory},
                                        {m.id for m in models if m.settle}), indent=1),
                encoding="utf-8")
            uploads.append((local_dir / "request.json", request_path))
            # Made before the try: a device that cannot even create it (down, unreachable)
            # has nothing to clean up, and retrying a dead connection for `rm` only costs time.
            self._check(device, transport.run(["mkdir", "-p", remote_dir], CLEANUP_TIMEOUT_S),
                        "creating the batch dir")
            try:
                for local, remote in uploads:
                    transport.push(local, remote)
                argv = [device.python, uploads[0][1], "measure", request_path]
                log.info("measuring %d models with %s on %s", len(models), self.name,
                         device.name)
                lines = _AgentProgress(progress, len(models))
                result = transport.run(argv, timeout_s, on_stderr=lines.line)
            finally:
                self._cleanup(device, remote_dir)
        batch_result = self._parse(device, result, settings, ids)
        lines.finish()
        return batch_result

    @staticmethod
    def _check(device: Device, result: CommandResult, what: str) -> None:
        if not result.ok:
            raise RunnerError(f"{what} on device {device.name} failed (exit {result.returncode}):"
                              f" {result.stderr.strip()[-500:]}")

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
        checked = reply.get("descheduling_checked") is True
        energy = reply.get("energy")
        energy_method = str(energy.get("method") or "") if isinstance(energy, dict) else ""
        measurements: dict[str, Measurement] = {}
        for item in raw:
            m = self._measurement(where, item, settings, checked)
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
        overhead = probes[OVERHEAD_ID]

        def level(probe: Measurement) -> float:
            # Fixed protocol: the best round (as many rounds in every batch). Under the stopping
            # rule a batch has as many reference rounds as its slowest model needs, and a
            # minimum over more rounds is lower by itself; the median round does not drift.
            rounds = round_medians(probe.samples_ms)
            return float(statistics.median(rounds)) if settings.adaptive else min(rounds)
        return BatchResult(
            measurements=[measurements[i] for i in ids],
            runtime=self.name,
            runtime_version=str(reply.get("runtime_version") or "unknown"),
            overhead_ms=overhead.stats.median_ms,
            reference_ms=level(probes[REFERENCE_ID]),
            memory_reference_ms=level(probes[MEMORY_ID]),
            facts_before=_as_dict(reply.get("facts_before")),
            facts_after=_as_dict(reply.get("facts_after")),
            device=device.name,
            energy_method=energy_method,
        )

    @staticmethod
    def _measurement(where: str, item: object, settings: RunSettings,
                     checked: bool = False) -> Measurement:
        if (not isinstance(item, dict) or not isinstance(item.get("id"), str)
                or item.get("status") not in ("ok", "failed")
                or not isinstance(item.get("samples_ms"), list)):
            raise AgentError(f"{where}: malformed result entry {str(item)[:200]}")
        model_id, status = item["id"], item["status"]
        if status == "failed":
            return Measurement(model_id, "failed", (), str(item.get("error") or "failed"))
        rounds = item["samples_ms"]
        reason = "fixed"
        if settings.single_stream:
            stop = item.get("stop")
            reason = stop.get("reason") if isinstance(stop, dict) else None
            if reason != "single_stream":
                raise AgentError(f"{where}: model {model_id} has no single-stream entry "
                                 f"(got {stop!r})")
            least = settings.queries or 1
            if len(rounds) != settings.replicates or any(
                    not isinstance(r, list) or len(r) < least for r in rounds):
                raise AgentError(f"{where}: model {model_id} has samples that are not "
                                 f"{settings.replicates} replicates of >= {least} queries")
        elif not settings.adaptive:
            if len(rounds) != settings.rounds or any(
                    not isinstance(r, list) or len(r) != settings.runs for r in rounds):
                raise AgentError(f"{where}: model {model_id} has samples that are not "
                                 f"{settings.rounds} rounds x {settings.runs} runs")
        else:
            stop = item.get("stop")
            reason = stop.get("reason") if isinstance(stop, dict) else None
            tracked = model_id in TRACKED_PROBES
            if reason not in (("tracked",) if tracked else STOP_REASONS):
                raise AgentError(f"{where}: model {model_id} has no valid stopping-rule entry "
                                 f"(got {stop!r})")
            if not rounds or any(not isinstance(r, list) or not 1 <= len(r) <= settings.runs
                                 for r in rounds):
                raise AgentError(f"{where}: model {model_id} has rounds that are not 1.."
                                 f"{settings.runs} runs each")
            n = sum(len(r) for r in rounds)
            if not tracked and not settings.min_runs <= n <= settings.max_runs:
                raise AgentError(f"{where}: model {model_id} stopped after {n} runs, outside "
                                 f"the rule's {settings.min_runs}..{settings.max_runs}")
        try:
            samples = tuple(tuple(float(x) for x in r) for r in rounds)
        except (TypeError, ValueError):
            raise AgentError(f"{where}: model {model_id} has non-numeric samples") from None
        if any(x < 0 or x != x for r in samples for x in r):
            raise AgentError(f"{where}: model {model_id} has negative or NaN samples")
        retaken = kept = None
        if checked:
            counts = item.get("descheduled")
            if (not isinstance(counts, dict) or any(
                    not isinstance(counts.get(k), int) or isinstance(counts.get(k), bool)
                    or counts[k] < 0 for k in ("retaken", "kept"))):
                raise AgentError(f"{where}: model {model_id} has no valid descheduled counts "
                                 f"(got {counts!r})")
            retaken, kept = counts["retaken"], counts["kept"]
        peak, method = _peak_memory(where, model_id, item.get("memory"))
        return Measurement(model_id, "ok", samples, "", stop_reason=reason,
                           descheduled_retaken=retaken, descheduled_kept=kept,
                           energy_mj=_energy_per_call_mj(item.get("energy")),
                           peak_memory_bytes=peak, memory_method=method)


def _peak_memory(where: str, model_id: str, memory: object) -> tuple[int | None, str]:
    """(peak bytes or None, method) from a result's "memory" entry; (None, "") when the model's
    memory was not asked for. A figure that failed keeps its error in the method."""
    if memory is None:
        return None, ""
    peak = memory.get("peak_bytes") if isinstance(memory, dict) else "?"
    method = memory.get("method") if isinstance(memory, dict) else None
    if not isinstance(method, str) or not (
            peak is None or (isinstance(peak, int) and not isinstance(peak, bool) and peak >= 0)):
        raise AgentError(f"{where}: model {model_id} has a malformed memory entry {memory!r:.200}")
    if peak is None and memory.get("error"):  # type: ignore[union-attr]
        method = f"{method}: {str(memory['error'])[:300]}"  # type: ignore[index]
    return peak, method


def _energy_per_call_mj(energy: object) -> float:
    """Millijoules per call from the agent's {"joules", "calls"} (NaN without a reading)."""
    if not isinstance(energy, dict):
        return math.nan
    joules, calls = energy.get("joules"), energy.get("calls")
    if (not isinstance(joules, (int, float)) or not isinstance(calls, int)
            or isinstance(calls, bool) or calls <= 0 or not math.isfinite(joules)):
        return math.nan
    return 1000.0 * joules / calls


class _AgentProgress:
    """The agent's progress lines -> the caller's increments. The agent counts every model of
    the batch, probes included; the caller counts only its own models, so the agent's fraction
    done is scaled to them. Progress lines are consumed (left out of the command's stderr)."""

    def __init__(self, progress: ProgressCallback | None, models: int) -> None:
        self.progress, self.models, self.reported = progress, models, 0.0

    def line(self, text: str) -> bool:
        parsed = parse_progress(text)
        if parsed is None:
            return False
        done, total = parsed
        self._report_up_to(self.models * done / total)
        return True

    def finish(self) -> None:
        """Every model is done: report what the lines left over."""
        self._report_up_to(float(self.models))

    def _report_up_to(self, target: float) -> None:
        if self.progress is not None and target > self.reported:
            step, self.reported = target - self.reported, target
            self.progress(step)


def _as_dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}
