"""Campaigns: subjects x devices x runtimes -> durable records, one worker per device, resumable.

Each job has an idempotent key (subject, device, runtime, settings). A rerun skips jobs already
stored and retries failed ones. With several thread counts (`CampaignConfig.thread_counts`) every
subject is measured at each, one platform (bench.platform) after the other on a device: their
settings keys differ, so each count keeps its own records and resumes on its own.

Jobs are measured in batches; every batch carries the runner's probes, and a batch whose
reference probe ran markedly slower than the device's best (a slow phase: throttling, a noisy
neighbour) is measured again after a pause rather than stored, up to a retry limit - otherwise a
minute of contention becomes a permanent error in the dataset.

Every record keeps what the batch's reference probe said: `drift_ratio` (the batch's reference
time / the best reference time the device showed so far, calibration included; 1.0 = full
speed) and `drift_flag` (still above the tolerance after the retries). With `drift_correct`
the statistics scaled by best / batch reference (i.e. divided by drift_ratio) are stored too,
next to the raw ones. The summary keeps every stored batch's drift, and `drift_report` says
whether the device slowed down over the campaign (throttling) - see docs/measurement.md.

A campaign holds the dataset's campaign lock (`bench.store.campaign_lock`) for its whole run: a
second campaign on the same dataset waits for it (`CampaignConfig.lock_wait_s`) or refuses,
instead of measuring the jobs the first one is measuring. Progress advances per job: the
runner's `progress` callback reports models as they finish, and the bar never counts a batch
twice when it is measured again after a slow phase.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from latbench.bench.affinity import CorePin
from latbench.bench.export.graph import LayerGraph, chain_graph, spec_graph
from latbench.bench.load import LoadControl, default_max_load, foreign_cores, steal_share
from latbench.bench.memory import network_memory
from latbench.bench.ops import OpSpec
from latbench.bench.platform import precision_of_kernels
from latbench.bench.runners import (
    OVERHEAD_SPEC,
    RUNNERS,
    BatchResult,
    Measurement,
    ModelFile,
    RunSettings,
    get_runner,
)
from latbench.bench.stats import REPLICATION_TOLERANCE, flatten, replication_spread
from latbench.bench.store import (
    LatencyDataset,
    LatencyRecord,
    campaign_lock,
    make_job_key,
    utc_now,
)
from latbench.bench.thermal import GovernorPin, ThermalControl
from latbench.device_agents import Device
from latbench.device_agents.temperatures import describe_reading, hottest
from latbench.errors import AgentError, ConfigError, LatbenchError, RunnerError, TransportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subject:
    """Something to measure: one kernel, or a whole network given as a graph or as the bytes of
    a model file (`model`, in the format of the file suffix `model_format`: ".onnx",
    ".tflite").

    A graph is exported for whatever runtime measures it; a model file runs only on a runtime
    whose `formats` list its format - unless the subject also has a graph converted from it
    (`onnx_model(convert=True)`), which other runtimes measure. A network's `kernels`, when
    known (a chain of specs, or a model file already split), are kept with the dataset so a
    predictor can learn how kernels compose into networks (`kernels_for`: those of the model a
    runtime measures).
    """

    key: str
    subject: str  # "op" | "network"
    family: str = ""
    spec: OpSpec | None = None
    graph: Callable[[], LayerGraph] | None = None
    model: Callable[[], bytes] | None = None
    model_format: str = ""
    kernels: tuple[OpSpec, ...] | None = None

    @classmethod
    def op(cls, spec: OpSpec, seed: int = 0) -> Subject:
        return cls(spec.key(), "op", spec=spec, graph=lambda: spec_graph(spec, seed))

    @classmethod
    def chain(cls, key: str, family: str, specs: Sequence[OpSpec], seed: int = 0) -> Subject:
        specs = tuple(specs)
        return cls(key, "network", family, graph=lambda: chain_graph(specs, seed), kernels=specs)

    @classmethod
    def model_file(cls, key: str, family: str, make: Callable[[], bytes], model_format: str,
                   kernels: Sequence[OpSpec] | None = None) -> Subject:
        """A network given as model file bytes (`make` reads or exports them when needed)."""
        if not model_format.startswith("."):
            raise ConfigError(f"network {key}: model format must be a file suffix such as "
                              f"'.onnx', got {model_format!r}")
        return cls(key, "network", family, model=make, model_format=model_format,
                   kernels=None if kernels is None else tuple(kernels))

    @classmethod
    def onnx_model(cls, key: str, family: str, make: Callable[[], bytes],
                   kernels: Sequence[OpSpec] | None = None, convert: bool = False) -> Subject:
        """An ONNX model; `convert` adds its LayerGraph (`bench.export.from_onnx`, same
        weights), so a runtime that does not run ONNX measures it in its own format."""
        subject = cls.model_file(key, family, make, ".onnx", kernels)
        if not convert:
            return subject
        return replace(subject, graph=lambda: _converted(make()))

    def runs_model(self, runner: Any) -> bool:
        """Whether `runner` measures the model file itself (not a graph export)."""
        return self.model is not None and self.model_format in tuple(getattr(runner, "formats",
                                                                             ()))

    def kernels_for(self, runner: Any) -> tuple[OpSpec, ...] | None:
        """The kernels of what `runner` measures, when known: `kernels`, except for a model
        file measured through its converted graph, whose export is split by its own parser
        (a runtime format latbench cannot split keeps `kernels`)."""
        from latbench.bench.model_files import MODEL_FORMATS, model_kernels

        formats = {s for fmt in MODEL_FORMATS.values() for s in fmt.suffixes}
        if self.kernels is None or self.model is None or self.graph is None \
                or self.runs_model(runner) or runner.formats[0] not in formats:
            return self.kernels
        return model_kernels(self.model_bytes(runner)).kernels

    def refusal(self, runner: Any) -> str | None:
        """Why `runner` (a runner or its class) cannot measure this subject - a model file in a
        format it does not list, with no graph to export - or None when it can."""
        formats = tuple(getattr(runner, "formats", ()))
        if self.model is None or self.model_format in formats or self.graph is not None:
            return None
        return (f"{self.key} is a {self.model_format} model; runtime "
                f"{getattr(runner, 'name', runner)} runs {', '.join(formats) or 'no model files'}")

    def model_bytes(self, runner: Any) -> bytes:
        if self.graph is not None and not self.runs_model(runner):
            return runner.export(self.graph())
        if self.model is None:
            raise RunnerError(f"{self.key} has neither a graph nor a model file to measure")
        refused = self.refusal(runner)
        if refused:
            raise RunnerError(refused)
        return self.model()


def _converted(onnx_bytes: bytes) -> LayerGraph:
    from latbench.bench.export.from_onnx import onnx_to_graph

    return onnx_to_graph(onnx_bytes)


class ProgressSink(Protocol):
    """Where long work reports how far it is: one lane per device/runtime (or phase); `advance`
    adds jobs done since the last call (fractions allowed, never negative), `note` says
    something about a lane."""

    def start(self, lane: str, total: int) -> None: ...

    def advance(self, lane: str, done: float) -> None: ...

    def note(self, lane: str, text: str) -> None: ...


class _Silent:
    def start(self, lane: str, total: int) -> None:
        pass

    def advance(self, lane: str, done: float) -> None:
        pass

    def note(self, lane: str, text: str) -> None:
        pass


@dataclass(frozen=True)
class CampaignConfig:
    settings: RunSettings = field(default_factory=RunSettings)
    batch_size: int = 40
    timeout_s: float | None = None  # per batch; None = estimated from the batch
    drift_tolerance: float = 0.10   # a batch whose reference probe is this much slower is redone
    drift_retries: int = 3
    drift_pause_s: float = 5.0
    cooldown_s: float = 0.0         # pause between batches
    max_temp_c: float | None = None  # before a batch, wait until the device is this cool
    max_cool_wait_s: float = 300.0  # ... for at most this long (then measure, with a warning)
    pin_governor: bool = False      # CPU governors to `performance` for the campaign
    pin_affinity: bool = False      # pin each lane to cores (pin_cpus, the fleet's, the fastest)
    pin_cpus: tuple[int, ...] | None = None  # the cores to pin to (implies pin_affinity)
    # Cores other programs may keep busy while a batch is timed (bench.load; None: not checked);
    # over it the batch is measured again once the device is quiet, waiting at most
    # `max_load_wait_s` over the campaign, and a batch still disturbed is not stored.
    max_load: float | None = field(default_factory=default_max_load)
    max_load_wait_s: float = 300.0
    max_device_failures: int = 3    # consecutive failed batches before a device is given up
    calibration_runs: int = 3       # probe-only batches before the first (0: none)
    drift_correct: bool = False     # also store statistics scaled by best / batch reference
    keep_samples: bool = False      # store every raw sample (a list column)
    # Seed of the job order (see `plan_batches`); None keeps the given order in batches.
    shuffle_seed: int | None = 0
    # Seconds to wait for another campaign holding the dataset (0: refuse at once; inf: wait).
    # A property of this run, not of the dataset: cards do not keep it.
    lock_wait_s: float = 0.0
    # Thread counts to measure every subject at, each a platform of its own (empty: only
    # settings.threads; given, settings.threads is replaced by each in turn).
    thread_counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(f"batch timeout must be > 0 seconds, got {self.timeout_s}")
        if self.calibration_runs < 0 or self.max_device_failures < 1:
            raise ConfigError("calibration_runs must be >= 0 and max_device_failures >= 1")
        if self.drift_tolerance <= 0:
            raise ConfigError(f"drift tolerance must be > 0, got {self.drift_tolerance}")
        if self.max_temp_c is not None and not -50 < self.max_temp_c < 150:
            raise ConfigError(f"--max-temp must be a temperature in Celsius, got "
                              f"{self.max_temp_c}")
        if not self.max_cool_wait_s >= 0:
            raise ConfigError(f"the cooling wait limit must be >= 0 seconds, got "
                              f"{self.max_cool_wait_s}")
        if self.max_load is not None and not self.max_load > 0:
            raise ConfigError(f"--max-load must be a positive number of cores, got "
                              f"{self.max_load}")
        if not self.max_load_wait_s >= 0:
            raise ConfigError(f"--max-load-wait must be >= 0 seconds, got "
                              f"{self.max_load_wait_s}")
        if self.pin_cpus is not None and (
                not self.pin_cpus or any(not isinstance(c, int) or isinstance(c, bool) or c < 0
                                         for c in self.pin_cpus)):
            raise ConfigError(f"--cpus must name CPU ids >= 0, got {self.pin_cpus!r}")
        if not self.lock_wait_s >= 0:  # also refuses NaN
            raise ConfigError("the wait for another campaign on the dataset must be >= 0 "
                              f"seconds (inf: as long as it takes), got {self.lock_wait_s}")
        counts = self.thread_counts
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in counts):
            raise ConfigError(f"--threads must be integers >= 1, got {list(counts)}")
        if len(set(counts)) != len(counts):
            raise ConfigError(f"--threads lists a thread count twice: {list(counts)}")

    def lane_settings(self) -> list[RunSettings]:
        """The run settings of each thread count measured, in the order given."""
        if not self.thread_counts:
            return [self.settings]
        return [replace(self.settings, threads=n) for n in self.thread_counts]

    def card(self) -> dict[str, Any]:
        """The campaign settings a dataset card keeps (run settings are kept apart; the thread
        counts measured are the records' own, and a repeat measures the card's settings)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("settings", "lock_wait_s", "thread_counts")}


@dataclass(frozen=True)
class BatchDrift:
    """How fast the device was during one stored batch, by its reference probe: `ratio` =
    reference_ms / best_ms (the best reference time seen on this device so far), `flagged` when
    still above the tolerance after `redone` retries. Temperatures and clocks around the batch
    (NaN where unreadable) help tell throttling from a noisy neighbour."""

    device: str
    runtime: str
    batch_id: str
    reference_ms: float
    best_ms: float
    ratio: float
    flagged: bool
    redone: int = 0
    temp_before_c: float = math.nan
    temp_after_c: float = math.nan
    freq_before_khz: float = math.nan
    freq_after_khz: float = math.nan
    steal_share: float = math.nan  # of the machine's CPU time during the batch, on a VM
    time_unix: float = math.nan   # host clock when the stored attempt started
    seconds: float = math.nan     # how long the stored attempt took
    temp_source: str = ""         # where the hottest reading came from, 'thermalservice:AP'
    foreign_cores: float = math.nan  # cores other programs kept busy (bench.load)
    disturbed: bool = False       # still over --max-load: its records were not stored
    threads: int = 1              # the runtime's threads: lanes of other counts drift apart
    settled: bool = False         # stored at the device's settled slow level without retries
    attempts: tuple[float, ...] = ()  # every attempt's reference / the best then, in order


@dataclass
class CampaignSummary:
    total: int = 0
    skipped: int = 0
    measured: int = 0
    failed: int = 0
    redone_batches: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (device, key, error)
    seconds: float = 0.0
    drift: list[BatchDrift] = field(default_factory=list)  # every stored batch, in order
    drift_tolerance: float = 0.10
    # Timed calls of stored records checked for descheduling, those taken again, those kept
    # (retakes ran out) and in how many records; records whose runner could not check.
    checked_runs: int = 0
    retaken_runs: int = 0
    kept_descheduled_runs: int = 0
    records_with_kept: int = 0
    unchecked_records: int = 0
    # per device/runtime lane: what the thermal control and the governor pinning did
    control: dict[str, dict[str, Any]] = field(default_factory=dict)
    control_lines: list[str] = field(default_factory=list)
    drift_plots: list[Path] = field(default_factory=list)  # drawn next to dataset cards

    def count_record(self, record: LatencyRecord) -> None:
        """Count a stored record: measured or failed, and what the descheduling check saw."""
        if record.status != "ok":
            self.failed += 1
            self.failures.append((record.device, record.key, record.error))
            return
        self.measured += 1
        if record.descheduled_retaken is None:
            self.unchecked_records += 1
            return
        self.checked_runs += record.n_runs + record.descheduled_retaken
        self.retaken_runs += record.descheduled_retaken
        self.kept_descheduled_runs += record.descheduled_kept or 0
        self.records_with_kept += bool(record.descheduled_kept)

    def descheduling_report(self) -> str:
        """How much of the timing another process disturbed, and what was done, or "" when
        nothing was checked."""
        if not self.checked_runs:
            return ""
        text = (f"descheduled calls: {self.retaken_runs:,} of {self.checked_runs:,} timed calls "
                f"({self.retaken_runs / self.checked_runs:.1%}) found their thread descheduled "
                "(another process on its core) and were timed again")
        if self.kept_descheduled_runs:
            text += (f"; {self.kept_descheduled_runs:,} had to be kept, in "
                     f"{self.records_with_kept} records (their figures are high)")
        if self.unchecked_records:
            text += f"; {self.unchecked_records} records could not be checked (thread pool)"
        return text

    def merge(self, other: CampaignSummary) -> None:
        """Add another summary's counts: a device worker's, or a later campaign's."""
        self.checked_runs += other.checked_runs
        self.retaken_runs += other.retaken_runs
        self.kept_descheduled_runs += other.kept_descheduled_runs
        self.records_with_kept += other.records_with_kept
        self.unchecked_records += other.unchecked_records
        self.control.update(other.control)
        self.control_lines.extend(other.control_lines)
        self.drift_plots.extend(other.drift_plots)
        self.total += other.total
        self.skipped += other.skipped
        self.seconds += other.seconds
        self.measured += other.measured
        self.failed += other.failed
        self.redone_batches += other.redone_batches
        self.failures.extend(other.failures)
        self.drift.extend(other.drift)

    @property
    def drifted_batches(self) -> int:
        """Stored batches whose reference was still over the tolerance after the retries."""
        return sum(1 for d in self.drift if d.flagged)

    def drift_report(self) -> list[str]:
        """One line per device/runtime lane: the reference probe's range over the campaign,
        batches flagged, and a slowdown over the campaign (throttling) if there was one."""
        lanes: dict[tuple[str, str, int], list[BatchDrift]] = {}
        for d in self.drift:
            lanes.setdefault((d.device, d.runtime, d.threads), []).append(d)
        several = len({threads for _, _, threads in lanes}) > 1
        lines = []
        for (device, runtime, threads), batches in lanes.items():
            ratios = [b.ratio for b in batches]
            lane = f"{device}/{runtime}" + (f"/{threads}t" if several else "")
            text = (f"{lane}: {len(batches)} batches, reference probe "
                    f"{min(ratios):.2f}-{max(ratios):.2f}x its best (median "
                    f"{float(np.median(ratios)):.2f}x); "
                    f"{sum(b.flagged for b in batches)} batches flagged as drifted (over "
                    f"{self.drift_tolerance:.0%} after retries)")
            settled = sum(b.settled for b in batches)
            if settled:
                text += (f", {settled} of them stored at the device's settled level without "
                         "retries")
            for finding in (detect_slowdown(batches, self.drift_tolerance),
                            detect_bursts(batches, self.drift_tolerance)):
                if finding:
                    text += f"; {finding}"
            steal = [b.steal_share for b in batches if math.isfinite(b.steal_share)]
            if steal and max(steal) > 0:
                text += (f"; hypervisor steal {float(np.median(steal)):.1%} of CPU time (median "
                         f"batch), up to {max(steal):.1%}")
            lines.append(text)
        return lines + self.control_lines

    def drift_json(self) -> dict[str, Any]:
        """What a dataset card keeps of the last run's drift."""
        return {"tolerance": self.drift_tolerance, "flagged_batches": self.drifted_batches,
                "report": self.drift_report(),
                "control": self.control,
                "descheduling": {"checked_runs": self.checked_runs,
                                 "retaken_runs": self.retaken_runs,
                                 "kept_runs": self.kept_descheduled_runs,
                                 "records_with_kept": self.records_with_kept,
                                 "unchecked_records": self.unchecked_records,
                                 "report": self.descheduling_report()},
                "batches": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                             for k, v in asdict(d).items()} for d in self.drift]}


def detect_slowdown(batches: Sequence[BatchDrift], tolerance: float) -> str:
    """A slowdown over the campaign, or "": the median reference ratio of the last third of the
    batches against the first third (at least 3 batches), beyond half the tolerance; with the
    temperature rise and clock drop where the device reports them (throttling shows as both)."""
    if len(batches) < 3:
        return ""
    third = max(1, len(batches) // 3)
    first = float(np.median([b.ratio for b in batches[:third]]))
    last = float(np.median([b.ratio for b in batches[-third:]]))
    if not last > first * (1 + tolerance / 2):
        return ""
    text = (f"slowdown over the campaign: last third of the batches {last:.2f}x vs first third "
            f"{first:.2f}x")
    temps = [(b.temp_before_c, b.temp_after_c) for b in batches]
    if math.isfinite(temps[0][0]) and math.isfinite(temps[-1][1]):
        text += f", temperature {temps[0][0]:.0f} -> {temps[-1][1]:.0f} C"
    freqs = [(b.freq_before_khz, b.freq_after_khz) for b in batches]
    if math.isfinite(freqs[0][0]) and math.isfinite(freqs[-1][1]) and freqs[0][0] > 0:
        text += f", clock {freqs[0][0] / 1e3:.0f} -> {freqs[-1][1] / 1e3:.0f} MHz"
    return text + " (throttling or a growing background load)"


# Speed moving in bursts, not phases: at least BURST_BATCHES batches stored over the tolerance
# after their retries, whose attempts read (median) more than half the tolerance apart - a
# settled level reads the same on every attempt, a passing phase ends at speed. Found on a VM
# whose speed moved within the second (docs/measurement.md): 83 retries in 51 batches, and
# the campaign's figures 57-71% within 10% where a quiet run of the machine gave 94-99%.
BURST_BATCHES = 3


def detect_bursts(batches: Sequence[BatchDrift], tolerance: float) -> str:
    """Why retries did not help, or "": the device's speed moved in bursts."""
    stuck = [b for b in batches if b.flagged and not b.settled and len(b.attempts) > 1]
    spreads = [max(b.attempts) / min(b.attempts) for b in stuck]
    if len(stuck) < BURST_BATCHES or not np.median(spreads) > 1 + tolerance / 2:
        return ""
    return (f"speed moving in bursts: {len(stuck)} batches never came back to speed, their "
            f"attempts {float(np.median(spreads)):.2f}x apart (median; up to "
            f"{max(spreads):.2f}x), so measuring again seldom helps and the figures carry "
            "that noise - a quieter machine measures better")


def median_probe_ms(records: Any) -> float | None:
    """Median reference-probe time over stored records (a frame with `reference_ms`): the
    machine's speed level while they were measured; None when no record has a probe. Two
    campaigns on the same machine compare by it: a machine's level moves between sessions
    (docs/measurement.md)."""
    if "reference_ms" not in getattr(records, "columns", ()):
        return None
    probe = np.asarray(records["reference_ms"], dtype=np.float64)
    probe = probe[np.isfinite(probe) & (probe > 0)]
    return float(np.median(probe)) if len(probe) else None


def _estimate_timeout(n_models: int, settings: RunSettings) -> float:
    if settings.single_stream:
        # each replicate runs at least min_query_s; `queries` calls of a slow model take longer
        # (up to 30 minutes per model allowed), and the probes run their queries too
        return 300.0 + n_models * (settings.replicates * (2.0 * settings.min_query_s
                                                          + settings.replicate_pause_s)
                                   + 1800.0)
    # a network's untimed settling calls per visit: at most 40, or 2 s (the agent's `settle`),
    # so at most ~4x its timed calls of 10 a visit
    settling = settings.settle
    if settings.adaptive:
        # each model stops by max_seconds of timing at the latest (plus one round over it);
        # max_runs caps cheap models, whose calls are short
        return 120.0 + n_models * (5.0 + settings.warmup * 0.2 + 2.0 * settings.max_seconds
                                   + settings.runs * 0.2
                                   + (4.0 * settings.max_seconds if settling else 0.0))
    calls = settings.warmup + settings.runs * settings.rounds
    return 120.0 + n_models * (5.0 + calls * 0.2 + (2.0 * settings.rounds if settling else 0.0))


def _max_temp(facts: dict[str, Any]) -> float:
    temps = facts.get("temps_c") or []
    values = [t.get("celsius") for t in temps if isinstance(t, dict)]
    values = [float(v) for v in values if isinstance(v, (int, float))]
    return max(values) if values else math.nan


def _temp_source(*facts: dict[str, Any]) -> str:
    """Where the hottest temperature around a batch was read ('thermal_zone:thermal_zone3',
    'thermalservice:AP', 'battery:battery'), or "" when none was."""
    readings = [t for f in facts for t in (f.get("temps_c") or []) if isinstance(t, dict)]
    reading = hottest(readings)
    return describe_reading(reading) if reading is not None else ""


def _freq(facts: dict[str, Any]) -> float:
    value = facts.get("cur_freq_khz")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else math.nan


def _record(subject: Subject, device: Device, runner_name: str, settings_key: str,
            result: BatchResult, measurement: Measurement, batch_id: str, threads: int,
            *, drift: BatchDrift | None = None, confidence: float = 0.95,
            drift_correct: bool = False, keep_samples: bool = False,
            model_size_bytes: int | None = None) -> LatencyRecord:
    """One record from a batch: statistics, the samples' precision and shape flags, how the
    run stopped, the batch's drift (and, if asked, drift-corrected statistics), the model
    file's size and (networks) its peak memory."""
    common: dict[str, Any] = dict(
        device=device.name, runtime=runner_name, runtime_version=result.runtime_version,
        settings=settings_key, threads=threads, overhead_ms=result.overhead_ms,
        reference_ms=result.reference_ms, memory_reference_ms=result.memory_reference_ms,
        batch_id=batch_id,
        temp_before_c=_max_temp(result.facts_before), temp_after_c=_max_temp(result.facts_after),
        freq_before_khz=_freq(result.facts_before), freq_after_khz=_freq(result.facts_after),
        raw_output=measurement.raw_output, tool_flags=measurement.tool_flags,
        energy_mj=measurement.energy_mj, energy_method=result.energy_method,
        peak_memory_bytes=measurement.peak_memory_bytes,
        memory_method=measurement.memory_method, model_size_bytes=model_size_bytes)
    if drift is not None:
        common.update(drift_ratio=drift.ratio, drift_flag=drift.flagged)
    stats = measurement.stats
    if stats is None:
        common.update(status="failed", error=measurement.error or "failed")
        return _new_record(subject, common)
    common.update(median_ms=stats.median_ms, min_ms=stats.min_ms, mean_ms=stats.mean_ms,
                  std_ms=stats.std_ms, p90_ms=stats.p90_ms, p99_ms=stats.p99_ms,
                  n_runs=stats.n_runs,
                  round_min_median_ms=measurement.round_min_median_ms,
                  stop_reason=measurement.stop_reason or "fixed",
                  descheduled_retaken=measurement.descheduled_retaken,
                  descheduled_kept=measurement.descheduled_kept)
    if measurement.stop_reason == "single_stream" and len(measurement.samples_ms) > 1:
        spread = replication_spread(measurement.samples_ms)
        common.update(replication_spread=spread,
                      replication_ok=bool(spread <= REPLICATION_TOLERANCE))
    shape = measurement.quality(confidence)
    if shape is not None:
        common.update(ci_rel_width=shape.ci_rel_width, bimodality=shape.bimodality,
                      bimodal=shape.bimodal, tail_ratio=shape.tail_ratio,
                      heavy_tail=shape.heavy_tail)
        if keep_samples:
            common.update(samples_ms=tuple(flatten(measurement.samples_ms)))
    if drift_correct and drift is not None and drift.ratio > 0 and math.isfinite(drift.ratio):
        common.update(min_corrected_ms=stats.min_ms / drift.ratio,
                      median_corrected_ms=stats.median_ms / drift.ratio,
                      mean_corrected_ms=stats.mean_ms / drift.ratio,
                      p90_corrected_ms=stats.p90_ms / drift.ratio)
    return _new_record(subject, common)


def _new_record(subject: Subject, fields_: dict[str, Any]) -> LatencyRecord:
    if subject.spec is not None:
        return LatencyRecord.for_op(subject.spec, **fields_)
    # a network's precision is its kernels' (a platform of its own: bench.platform)
    dtype = precision_of_kernels(subject.kernels) if subject.kernels else None
    return LatencyRecord.for_network(subject.key, subject.family, dtype=dtype, **fields_)


def _failed_record(subject: Subject, device: Device, runner_name: str, settings_key: str,
                   error: str, batch_id: str, threads: int) -> LatencyRecord:
    return _new_record(subject, dict(device=device.name, runtime=runner_name,
                                     settings=settings_key, threads=threads, status="failed",
                                     error=error, batch_id=batch_id))


# Networks go in batches of at most this many: a batch of 40 networks takes minutes, and one
# slow phase of the machine during it (which the reference probe may miss) moved every
# calibration network of a dataset alike - and with them every prediction (docs/measurement.md).
NETWORK_BATCH_SIZE = 8


def plan_batches(jobs: Sequence[Subject], size: int, seed: int | None = 0
                 ) -> list[list[Subject]]:
    """Cut the jobs into batches of at most `size` (networks: NETWORK_BATCH_SIZE), in a
    seeded random order.

    A plan lists subjects in groups (the kernels of one kind, the networks of one family) and a
    batch takes about as long as a slow phase lasts (a noisy neighbour, a burst of throttling):
    measured in the order given, a slow phase biases a whole group. Shuffled, it lands on a
    random mix. Kernels and networks still go in separate batches, the batches in random order:
    a network's time depends a little on what it is measured beside (docs/measurement.md), so
    calibration networks in a dataset and held-out networks measured later see the same
    company. `seed=None` keeps the order given, cut in consecutive slices.
    """
    jobs = list(jobs)
    if seed is None:
        return [jobs[i:i + size] for i in range(0, len(jobs), size)]
    order = random.Random(seed)
    order.shuffle(jobs)
    groups: dict[str, list[Subject]] = {}
    for job in jobs:
        groups.setdefault(job.subject, []).append(job)
    batches = []
    for kind, group in groups.items():
        step = min(size, NETWORK_BATCH_SIZE) if kind == "network" else size
        batches += [group[i:i + step] for i in range(0, len(group), step)]
    order.shuffle(batches)
    return batches


class _BatchBar:
    """One batch's share of its lane's bar: models finished advance it as the runner reports
    them, an attempt measured again after a slow phase advances it only past what the earlier
    attempt showed, and `finish` adds what was never reported (failed or exported-failed jobs,
    runners that report nothing), so a batch counts exactly its size once."""

    def __init__(self, progress: ProgressSink, lane: str, size: int) -> None:
        self.progress, self.lane, self.size = progress, lane, size
        self.models = size
        self.shown = 0.0     # advanced on the bar for this batch
        self.reported = 0.0  # finished models the current attempt reported
        self._lock = threading.Lock()

    def attempt(self, models: int) -> None:
        """A (new) attempt over `models` models starts: its reports count from zero."""
        with self._lock:
            self.models, self.reported = models, 0.0

    def __call__(self, finished: float) -> None:
        """The runner's callback: `finished` more models are done in this attempt."""
        if not finished > 0:
            return
        with self._lock:
            self.reported += finished
            step = min(self.reported, self.models) - self.shown
            if step > 0:
                self.shown += step
                self.progress.advance(self.lane, step)

    def finish(self) -> None:
        with self._lock:
            step, self.shown = self.size - self.shown, float(self.size)
        if step > 0:
            self.progress.advance(self.lane, step)


# A slow phase passes; a speed level does not. When SETTLED_BATCHES batches in a row stayed
# slow through every retry, all attempts within SETTLED_SPREAD of one another, the device has
# settled at that level (a VM moved to a slower host share, a clock that will not come back):
# measuring again only reads the same level, so later batches at it are stored at once
# (flagged as before); one slower than it is still measured again, one at full speed ends it.
# Found on a LiteRT campaign that ran every batch at 1.10-1.11x its calibration's best, four
# attempts each: the campaign took about four times as long and stored the same figures.
SETTLED_BATCHES = 2
SETTLED_SPREAD = 0.03


@dataclass
class SpeedLevel:
    """Tracks whether a device has settled at a slow speed level (see SETTLED_BATCHES)."""

    tolerance: float
    level: float | None = None  # the settled reference ratio, or None
    steady: list[float] = field(default_factory=list)  # recent batches' steady slow levels

    def holds(self, ratio: float) -> bool:
        """Whether a slow reading is the settled level (or faster), not a phase on top of it."""
        return self.level is not None and ratio <= self.level * (1 + SETTLED_SPREAD)

    def observe(self, ratios: Sequence[float]) -> str:
        """Take a stored batch's attempts' reference ratios; a note when the level starts or
        ends, else ""."""
        if min(ratios) <= 1 + self.tolerance:  # back at speed
            self.steady.clear()
            if self.level is None:
                return ""
            self.level = None
            return f"back to speed (reference {min(ratios):.2f}x its best)"
        if self.holds(min(ratios)):  # at the settled level (after a phase on top of it)
            return ""
        if len(ratios) < 2 or max(ratios) > min(ratios) * (1 + SETTLED_SPREAD):
            self.steady.clear()  # a single reading, or retries that moved: a phase
            return ""
        self.steady = [*self.steady, float(np.median(ratios))][-SETTLED_BATCHES:]
        if (len(self.steady) < SETTLED_BATCHES
                or max(self.steady) > min(self.steady) * (1 + SETTLED_SPREAD)):
            return ""
        self.level = max(self.steady)  # a first level, or a slower one than the last
        return (f"the device has settled at {self.level:.2f}x its best reference "
                f"({len(self.steady)} batches in a row read it on every retry): a speed level, "
                "not a passing phase; batches at it are stored without measuring them again "
                "(still flagged)")


@dataclass(frozen=True)
class _Attempt:
    """One measurement of a batch: the runner's result, when it started (host clock), how
    long it took, and the cores other programs kept busy meanwhile when over --max-load."""

    result: BatchResult
    started: float
    took: float
    load: float | None


class _DeviceWorker:
    """Measures one device's jobs batch by batch and writes each batch as it arrives."""

    def __init__(self, device: Device, runtime: str, jobs: list[Subject], dataset: LatencyDataset,
                 config: CampaignConfig, progress: ProgressSink, stop: threading.Event,
                 settings: RunSettings | None = None) -> None:
        self.device, self.runtime, self.jobs = device, runtime, jobs
        self.batches = plan_batches(jobs, config.batch_size, config.shuffle_seed)
        self.dataset, self.config, self.progress, self.stop = dataset, config, progress, stop
        self.runner = get_runner(runtime)
        self.settings = settings or config.settings
        self.settings_key = self.settings.key(runtime)
        self.lane = _lane(device, runtime, self.settings, config)
        self.best_reference = math.inf
        self.speed = SpeedLevel(config.drift_tolerance)
        self.load = (LoadControl(device, config.max_load, config.max_load_wait_s)
                     if config.max_load is not None else None)

    def calibrate(self, tries: int | None = None) -> None:
        """Learn the device's best reference-probe time before the first batch, so that a
        campaign starting in a slow phase does not take the slow phase as its baseline."""
        probe = [ModelFile("calibration", self.runner.export(spec_graph(OVERHEAD_SPEC)))]
        # a single stream's minutes per model are for the models, not for calibration
        settings = replace(self.settings, queries=None) if self.settings.single_stream \
            else self.settings
        timeout = self.config.timeout_s or _estimate_timeout(1, settings)
        tries = self.config.calibration_runs if tries is None else tries
        for attempt in range(tries):
            result = self.runner.measure(self.device, probe, settings, timeout)
            self.best_reference = min(self.best_reference, result.reference_ms)
            if attempt + 1 < tries:
                time.sleep(self.config.drift_pause_s / 5)

    def run(self) -> CampaignSummary:
        summary = CampaignSummary(drift_tolerance=self.config.drift_tolerance)
        self.progress.start(self.lane, len(self.jobs))
        pin = GovernorPin(self.device) if self.config.pin_governor else None
        thermal = (ThermalControl(self.device, self.config.max_temp_c,
                                  self.config.max_cool_wait_s)
                   if self.config.max_temp_c is not None else None)
        cores = (CorePin(self.device, self.runtime, self.settings.threads, self.config.pin_cpus)
                 if self.config.pin_affinity or self.config.pin_cpus else None)
        if pin is not None:
            pin.pin()
            self.progress.note(self.lane, pin.describe())
        if cores is not None:  # a process's mask: nothing on the device to put back
            self.device = cores.pin()
            self.progress.note(self.lane, cores.describe())
        try:
            self._run(summary, thermal)
        finally:
            if pin is not None:
                pin.restore()
        control = {}
        for name, part in (("pin", pin), ("affinity", cores), ("thermal", thermal),
                           ("load", self.load)):
            if part is not None:
                control[name] = part.report()
                summary.control_lines.append(f"{self.lane}: {part.describe()}")
        if control:
            summary.control[self.lane] = control
        return summary

    def _run(self, summary: CampaignSummary, thermal: ThermalControl | None) -> None:
        try:
            self.calibrate()
        except (TransportError, AgentError, RunnerError, OSError) as exc:
            log.warning("calibration on %s failed: %s", self.lane, exc)
        consecutive_failures = 0
        for number, batch in enumerate(self.batches):
            if self.stop.is_set():
                break
            if thermal is not None:
                thermal.before_batch(lambda text: self.progress.note(self.lane, text))
            batch_id = uuid.uuid4().hex[:12]
            bar = _BatchBar(self.progress, self.lane, len(batch))
            try:
                records, redone, drift = self._measure_batch(batch, batch_id, bar)
                summary.redone_batches += redone
                if drift is not None:
                    summary.drift.append(drift)
                    if drift.flagged:
                        self.progress.note(self.lane, f"batch {batch_id} stored drifted "
                                                      f"(reference {drift.ratio:.2f}x its best)")
                consecutive_failures = 0
            except (TransportError, AgentError, RunnerError, OSError) as exc:
                consecutive_failures += 1
                error = f"{type(exc).__name__}: {exc}"
                log.warning("batch %s on %s failed: %s", batch_id, self.lane, error)
                records = [_failed_record(s, self.device, self.runtime, self.settings_key, error,
                                          batch_id, self.settings.threads) for s in batch]
            self.dataset.append(records)
            for rec in records:
                summary.count_record(rec)
            bar.finish()
            if consecutive_failures >= self.config.max_device_failures:
                rest = [job for later in self.batches[number + 1:] for job in later]
                error = (f"device {self.device.name} gave up after {consecutive_failures} "
                         "failed batches in a row")
                self.progress.note(self.lane, error)
                failed = [_failed_record(s, self.device, self.runtime, self.settings_key, error,
                                         "", self.settings.threads) for s in rest]
                self.dataset.append(failed)
                summary.failed += len(failed)
                summary.failures.extend((self.device.name, r.key, error) for r in failed)
                self.progress.advance(self.lane, len(rest))
                break
            if self.config.cooldown_s > 0:
                time.sleep(self.config.cooldown_s)

    def _measure_batch(self, batch: list[Subject], batch_id: str, bar: _BatchBar
                       ) -> tuple[list[LatencyRecord], int, BatchDrift | None]:
        models, export_failed = [], {}
        for index, subject in enumerate(batch):
            try:
                # a network's peak memory is measured with it, and it is settled at each
                # visit where the settings say so (docs/measurement.md)
                network = subject.subject == "network"
                models.append(ModelFile(f"j{index}", subject.model_bytes(self.runner),
                                        memory=network, settle=network))
            except LatbenchError as exc:
                export_failed[index] = f"{type(exc).__name__}: {exc}"
        redone = 0
        stored: _Attempt | None = None  # the attempt whose figures become the records
        ratios: list[float] = []  # every attempt's reference / best
        fastest: _Attempt | None = None  # the undisturbed attempt whose reference read fastest
        settled = False
        if models:
            timeout = self.config.timeout_s or _estimate_timeout(len(models), self.settings)
            for attempt in range(self.config.drift_retries + 1):
                bar.attempt(len(models))
                started, clock = time.time(), time.perf_counter()
                result = self.runner.measure(self.device, models, self.settings, timeout,
                                             progress=bar)
                load = (self.load.disturbed(result.facts_before, result.facts_after)
                        if self.load is not None else None)
                stored = _Attempt(result, started, time.perf_counter() - clock, load)
                ratio = result.reference_ms / self.best_reference
                self.best_reference = min(self.best_reference, result.reference_ms)
                ratios.append(ratio)
                if load is None and (fastest is None
                                     or result.reference_ms < fastest.result.reference_ms):
                    fastest = stored
                if load is None and not ratio > 1 + self.config.drift_tolerance:
                    break
                if attempt == self.config.drift_retries:
                    break
                if load is None and self.speed.holds(ratio):
                    settled = True
                    break
                if self.stop.is_set():
                    break  # interrupted: this batch keeps what it measured, as if out of retries
                note = lambda text: self.progress.note(self.lane, text)  # noqa: E731
                if load is not None:
                    note(f"other programs kept {load:.2f} cores busy while the batch was timed "
                         f"(--max-load {self.config.max_load:g}); measuring it again once the "
                         "device is quiet")
                    if not self.load.wait_quiet(note, self.stop.is_set):
                        break  # still busy and no waiting time left: measuring again is moot
                else:
                    note(f"slow phase (reference {ratio:.2f}x its best); measuring the batch "
                         "again")
                    self.stop.wait(self.config.drift_pause_s)
                redone += 1
            if fastest is not None and fastest is not stored:
                # retries that never reached the device's speed: the attempt measured nearest
                # to it is stored, not the last one (on a VM whose speed moved in bursts the
                # last of four attempts was often the slowest: 1.31x where one read 1.14x)
                stored = fastest
                self.progress.note(self.lane, f"stored the fastest of the batch's {len(ratios)} "
                                              "attempts, not the last")
        sizes = {m.id: len(m.data) for m in models}
        drift = None
        if stored is not None and stored.load is None:
            change = self.speed.observe(ratios)
            if change:
                self.progress.note(self.lane, change)
        if stored is not None:
            result = stored.result
            best = self.best_reference
            ratio = result.reference_ms / best if math.isfinite(best) and best > 0 else 1.0
            drift = BatchDrift(
                self.device.name, self.runtime, batch_id, result.reference_ms, best, ratio,
                flagged=bool(ratio > 1 + self.config.drift_tolerance), redone=redone,
                temp_before_c=_max_temp(result.facts_before),
                temp_after_c=_max_temp(result.facts_after),
                freq_before_khz=_freq(result.facts_before),
                freq_after_khz=_freq(result.facts_after),
                steal_share=steal_share(result.facts_before, result.facts_after),
                time_unix=stored.started, seconds=stored.took,
                temp_source=_temp_source(result.facts_before, result.facts_after),
                foreign_cores=foreign_cores(result.facts_before, result.facts_after),
                disturbed=stored.load is not None, threads=self.settings.threads, settled=settled,
                attempts=tuple(ratios))
            if drift.disturbed:
                self.load.refused += 1
                error = (f"measured under load: other programs kept {drift.foreign_cores:.2f} "
                         f"cores busy (--max-load {self.config.max_load:g}) and "
                         f"{self.device.name} did not quiet down; not stored - run the same "
                         "command again when it is quiet (it resumes), or raise --max-load")
                export_failed.update({i: error for i in range(len(batch))
                                      if i not in export_failed})
        records = []
        for index, subject in enumerate(batch):
            if index in export_failed:
                records.append(_failed_record(subject, self.device, self.runtime,
                                              self.settings_key, export_failed[index], batch_id,
                                              self.settings.threads))
                continue
            assert stored is not None
            records.append(_record(subject, self.device, self.runtime, self.settings_key,
                                   stored.result, stored.result.get(f"j{index}"), batch_id,
                                   self.settings.threads,
                                   drift=drift, confidence=self.settings.confidence,
                                   drift_correct=self.config.drift_correct,
                                   keep_samples=self.config.keep_samples,
                                   model_size_bytes=sizes[f"j{index}"]))
        return records, redone, drift


def _check_thread_counts(config: CampaignConfig, facts: Mapping[str, dict[str, Any]]) -> None:
    """A thread count above a device's cores (`facts`: by device name) measures the
    scheduler, not the runtime: refused before anything is written."""
    most = max(config.thread_counts or (config.settings.threads,))
    for device, known in facts.items():
        cores = known.get("cores")
        if isinstance(cores, int) and most > cores:
            raise ConfigError(f"--threads {most} is more than the {cores} cores of device "
                              f"{device}")


def split_pool_advice(runtime: str, config: CampaignConfig, facts: Mapping[str, Any]) -> str:
    """Why a campaign of TFLite's built-in kernels at as many threads as the device has cores
    measures a noisy platform ("" otherwise): their two thread pools' workers and the calling
    thread outnumber the cores, the pools collide, and a network's fastest call moved up to
    3.8x between runs on a 2-core machine (docs/predictors.md, *Two thread pools*)."""
    runner = RUNNERS.get(runtime)
    threads = max(config.thread_counts or (config.settings.threads,))
    cores = facts.get("cores")
    if (runner is None or config.settings.delegate not in runner.split_pool_delegates
            or threads < 2 or not isinstance(cores, int) or threads < cores):
        return ""
    return (f"{runtime}'s {config.settings.delegate} kernels run two thread pools: at "
            f"{threads} threads on {cores} cores they collide (about 0.4 ms per switch, priced) "
            "and a network's time moves between runs by more than predictions can follow; "
            f"fewer threads than cores, or the XNNPACK delegate, measure a steadier platform")


def _note_split_pools(config: CampaignConfig,
                      lanes: Mapping[str, tuple[Mapping[str, Any], Sequence[str]]],
                      progress: ProgressSink) -> None:
    """Says `split_pool_advice` for each device and runtime to be measured (`lanes`: device
    name -> (its facts, the runtimes measuring it), as `_check_kernel_precisions` takes)."""
    for device, (facts, runtimes) in lanes.items():
        for runtime in runtimes:
            if advice := split_pool_advice(runtime, config, facts):
                log.info("%s: %s", device, advice)
                progress.note(device, advice)


def _check_kernel_precisions(subjects: Sequence[Subject],
                             lanes: Mapping[str, tuple[Mapping[str, Any], Sequence[str]]]
                             ) -> None:
    """Kernels a runtime would time in another computation than inside a network (ONNX
    Runtime's float16 off ARM64) predict nothing: refused before anything is written. `lanes`:
    device name -> (its facts, the runtimes measuring it)."""
    from latbench.bench.platform import precision_name

    dtypes = sorted({s.spec.dtype for s in subjects if s.subject == "op" and s.spec is not None})
    for device, (facts, runtimes) in lanes.items():
        for runtime in runtimes:
            refusal = getattr(RUNNERS.get(runtime), "kernel_refusal", None)
            for dtype in dtypes:
                why = refusal(dtype, facts) if refusal else None
                if why:
                    raise ConfigError(f"runtime {runtime} cannot measure "
                                      f"{precision_name(dtype)} kernels on device {device} "
                                      f"({facts.get('machine')}): {why}")


def run_campaign(subjects: Sequence[Subject], devices: Sequence[Device],
                 runtimes: Sequence[str] | None, dataset: LatencyDataset,
                 config: CampaignConfig | None = None, progress: ProgressSink | None = None,
                 *, skip_missing_runtimes: bool = False,
                 unreachable: Mapping[str, str] | None = None) -> CampaignSummary:
    """Measure every (subject, device, runtime) job not already in `dataset`.

    Devices run in parallel (one worker each); a device's failures never stop the others.
    `runtimes=None` measures each device with all its runtimes; with a list, a device lacking
    one is an error unless `skip_missing_runtimes` (fleets mixing phones and boards).
    Devices named in `unreachable` (name -> error, e.g. from a health check) are not
    contacted: their missing jobs are stored as failed at once, so a rerun retries them.
    The dataset's campaign lock is held from reading which jobs are done to the last record
    (see `bench.store.campaign_lock`; `config.lock_wait_s` says how long to wait for it).
    """
    config = config or CampaignConfig()
    progress = progress or _Silent()
    keys = [s.key for s in subjects]
    if len(set(keys)) != len(keys):
        raise ConfigError("campaign subjects have duplicate keys")
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise ConfigError(f"campaign devices have duplicate names: {sorted(names)}")
    lanes: list[tuple[Device, str]] = []
    for device in devices:
        wanted = device.runtimes if runtimes is None else runtimes
        for runtime in wanted:
            if runtime not in device.runtimes:
                if skip_missing_runtimes:
                    continue
                raise ConfigError(f"device {device.name} has no runtime {runtime} "
                                  f"(it has {', '.join(device.runtimes) or 'none'})")
            protocol = ("the stopping rule (target_ci)" if config.settings.adaptive else
                        "a single stream (queries)" if config.settings.single_stream else "")
            if protocol and not getattr(RUNNERS.get(runtime), "stopping_rule", False):
                raise ConfigError(f"runtime {runtime} (device {device.name}) runs a native tool "
                                  f"that reports statistics, not samples, so it cannot apply "
                                  f"{protocol}; measure it with the fixed protocol "
                                  "(--fixed-runs)")
            lanes.append((device, runtime))
    if not lanes:
        raise ConfigError(f"no device has any of the runtimes {', '.join(runtimes or [])}")
    with campaign_lock(dataset.root, config.lock_wait_s, _lock_note(progress, dataset.root)):
        return _run_lanes(subjects, lanes, dataset, config, progress, dict(unreachable or {}))


def _missing(subjects: Sequence[Subject], device: str, runtime: str, settings_key: str,
             done: set[str]) -> list[Subject]:
    """The subjects with no ok record on (device, runtime) under `settings_key`."""
    return [s for s in subjects if make_job_key(s.key, device, runtime, settings_key) not in done]


def _check_settling_matches(subjects: Sequence[Subject], todo: Sequence[Subject], device: str,
                            runtime: str, settings: RunSettings, done: set[str],
                            root: Path) -> None:
    """Refuse to resume a dataset measured the other way round on settling networks (`todo`:
    what this campaign's own key still misses): it would measure everything again under a
    second settings key, which `predictor fit` then refuses to mix. Whatever is stored under
    this campaign's own key is resumed as usual."""
    other_key = replace(settings, settle=not settings.settle).key(runtime)
    if other_key == settings.key(runtime) or len(todo) < len(subjects):
        return  # one key either way (the runtime does not settle), or resuming its own records
    if len(_missing(subjects, device, runtime, other_key, done)) < len(subjects):
        how, resume = (("without settling networks", "with --no-settle") if settings.settle
                       else ("settling networks", "without --no-settle"))
        raise ConfigError(f"dataset {root} was measured on {device} ({runtime}) {how}; resume "
                          f"it {resume}, or measure into a new folder")


def _lock_note(progress: ProgressSink, root: Path) -> Callable[[str], None]:
    """Says on the progress sink (and in the log) that a campaign waits for the dataset."""
    def note(text: str) -> None:
        log.info("%s", text)
        progress.note(str(root), text)
    return note


def _run_lanes(subjects: Sequence[Subject], lanes: Sequence[tuple[Device, str]],
               dataset: LatencyDataset, config: CampaignConfig, progress: ProgressSink,
               unreachable: Mapping[str, str]) -> CampaignSummary:
    """`run_campaign` once it holds the dataset: what is missing, measured device by device."""
    done = dataset.done_keys()
    planned = []  # every lane's missing subjects, checked before anything is written
    for (device, runtime), settings in ((lane, s) for lane in lanes
                                        for s in config.lane_settings()):
        todo = _missing(subjects, device.name, runtime, settings.key(runtime), done)
        _check_settling_matches(subjects, todo, device.name, runtime, settings, done,
                                dataset.root)
        planned.append((device, runtime, settings, todo))
    summary = CampaignSummary(drift_tolerance=config.drift_tolerance)
    work: list[tuple[Device, str, RunSettings, list[Subject]]] = []
    for device, runtime, settings, todo in planned:
        settings_key = settings.key(runtime)
        summary.total += len(subjects)
        summary.skipped += len(subjects) - len(todo)
        if device.name not in unreachable:
            work.append((device, runtime, settings, todo))
            continue
        lane = _lane(device, runtime, settings, config)
        error = f"device {device.name} unreachable: {unreachable[device.name]}"
        failed = [_failed_record(s, device, runtime, settings_key, error, "",
                                 settings.threads) for s in todo]
        dataset.append(failed)
        summary.failed += len(failed)
        summary.failures.extend((device.name, r.key, error) for r in failed)
        progress.start(lane, len(todo))
        progress.advance(lane, len(todo))
        progress.note(lane, error)
    started = time.perf_counter()
    stop = threading.Event()
    by_device: dict[str, list[tuple[Device, str, RunSettings, list[Subject]]]] = {}
    for lane in work:
        by_device.setdefault(lane[0].name, []).append(lane)

    def device_work(device_lanes: list[tuple[Device, str, RunSettings, list[Subject]]]
                    ) -> CampaignSummary:
        out = CampaignSummary()
        for device, runtime, settings, todo in device_lanes:
            if todo:
                out.merge(_DeviceWorker(device, runtime, todo, dataset, config, progress,
                                        stop, settings).run())
        return out

    if not by_device:
        summary.seconds = time.perf_counter() - started
        return summary
    with ThreadPoolExecutor(max_workers=max(1, len(by_device))) as pool:
        futures = [pool.submit(device_work, lanes_) for lanes_ in by_device.values()]
        try:
            for future in futures:
                summary.merge(future.result())
        except BaseException:
            stop.set()
            raise
    summary.seconds = time.perf_counter() - started
    return summary


def _lane(device: Device, runtime: str, settings: RunSettings, config: CampaignConfig) -> str:
    """A lane's name on progress bars and in control reports: `local/onnxruntime`, with the
    thread count when the campaign measures several."""
    lane = f"{device.name}/{runtime}"
    return f"{lane}/{settings.threads}t" if len(config.thread_counts) > 1 else lane


def network_kernels(subjects: Sequence[Subject], card: dict[str, Any] | None = None,
                    runner: Any = None) -> dict[str, list[str]]:
    """Kernel keys of every network subject that has them, merged with a card's earlier ones;
    with `runner`, those of the model it measures (`Subject.kernels_for`)."""
    known = dict((card or {}).get("network_kernels") or {})
    for s in subjects:
        kernels = s.kernels if runner is None else s.kernels_for(runner)
        if s.subject == "network" and kernels is not None:
            known[s.key] = [k.key() for k in kernels]
    return known


def software_versions() -> dict[str, str]:
    """Host-side library versions that shape the generated models."""
    from importlib import metadata

    out = {}
    for dist in ("latbench", "onnx", "onnxruntime", "ai-edge-litert", "numpy", "flatbuffers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def measure_into_dataset(subjects: Sequence[Subject], device: Device, runtime: str, out: Path,
                         config: CampaignConfig, card: dict[str, Any] | None = None,
                         progress: ProgressSink | None = None) -> CampaignSummary:
    """Measure subjects on one device into the dataset at `out` (created or resumed), keeping a
    card with the device's facts, software versions and the exact run settings. The dataset's
    campaign lock is held throughout, so a refused second campaign writes nothing."""
    from latbench.device_agents import fetch_facts

    progress = progress or _Silent()
    with campaign_lock(out, config.lock_wait_s, _lock_note(progress, Path(out))):
        facts = fetch_facts(device)
        _check_thread_counts(config, {device.name: facts})
        lanes = {device.name: (facts, [runtime])}
        _check_kernel_precisions(subjects, lanes)
        _note_split_pools(config, lanes, progress)
        dataset = LatencyDataset.create(out, {
            **(card or {}),
            "device": device.name,
            "runtime": runtime,
            "device_facts": facts,
            "host_software": software_versions(),
            "run_settings": asdict(config.settings),
            "settings": config.settings.key(runtime),
            "campaign": config.card(),
        })
        dataset.update_card(network_kernels=network_kernels(subjects, dataset.card,
                                                            get_runner(runtime)),
                            network_memory=network_memory(subjects, dataset.card))
        summary = run_campaign(subjects, [device], [runtime], dataset, config, progress)
        versions = sorted(set(dataset.records()["runtime_version"].dropna()))
        after = fetch_facts(device)
        dataset.update_card(runtime_versions=versions, temps_after=after.get("temps_c"),
                            governor_after=after.get("governor"),
                            drift_last_run=summary.drift_json())
        _draw_drift(dataset, summary)
    return summary


def _draw_drift(dataset: LatencyDataset, summary: CampaignSummary) -> None:
    """The run's drift as a figure next to the dataset's card (bench.drift_plot), named in the
    summary; nothing when no batch was measured. A figure that cannot be drawn is a warning:
    the measurements are stored already."""
    from latbench.bench.drift_plot import DRIFT_PLOT, plot_drift

    devices = ", ".join(sorted({d.device for d in summary.drift}))
    try:
        path = plot_drift(summary.drift_json(), dataset.root / DRIFT_PLOT,
                          f"{dataset.root.name}: drift over the last campaign ({devices})")
    except (OSError, ValueError, RuntimeError) as exc:
        log.warning("drift figure for %s not drawn: %s", dataset.root, exc)
        return
    if path is not None:
        summary.drift_plots.append(path)


def measure_fleet_into_dataset(subjects: Sequence[Subject], devices: Sequence[Device],
                               runtimes: Sequence[str] | None, out: Path,
                               config: CampaignConfig, card: dict[str, Any] | None = None,
                               progress: ProgressSink | None = None,
                               check_timeout_s: float = 60.0) -> tuple[CampaignSummary, list[Any]]:
    """Measure subjects on every device of a fleet into one dataset at `out` (created or
    resumed); returns the campaign summary and the devices' health checks.

    Devices are checked first, in parallel: the card keeps each reachable device's facts
    (earlier facts of a device that is down now are kept), and a device that cannot be reached
    has its missing jobs stored as failed at once instead of being retried batch after batch;
    rerunning the same command retries them. With `runtimes=None` each device is measured with
    every runtime it lists; otherwise with those of `runtimes` it has.
    """
    from latbench.device_agents import check_devices

    progress = progress or _Silent()
    with campaign_lock(out, config.lock_wait_s, _lock_note(progress, Path(out))):
        checks = check_devices(devices, check_timeout_s)
        _check_thread_counts(config, {c.device: c.facts for c in checks if c.reachable})
        by_name = {d.name: d for d in devices}
        measured = {c.device: (c.facts, [r for r in by_name[c.device].runtimes
                                         if runtimes is None or r in runtimes])
                    for c in checks if c.reachable}
        _check_kernel_precisions(subjects, measured)
        _note_split_pools(config, measured, progress)
        dataset = LatencyDataset.create(out, {
            **(card or {}),
            "host_software": software_versions(),
            "run_settings": asdict(config.settings),
            "campaign": config.card(),
        })
        known = dict(dataset.card.get("device_facts") or {})
        for check in checks:
            entry = {"address": check.address, "checked": utc_now()}
            if check.reachable:
                known[check.device] = {**entry, **check.facts, "problems": list(check.problems)}
            else:
                known.setdefault(check.device, {**entry, "error": check.error})
        dataset.update_card(device_facts=known,
                            network_kernels=network_kernels(subjects, dataset.card),
                            network_memory=network_memory(subjects, dataset.card))
        unreachable = {c.device: c.error for c in checks if not c.reachable}
        summary = run_campaign(subjects, devices, runtimes, dataset, config, progress,
                               skip_missing_runtimes=runtimes is not None,
                               unreachable=unreachable)
        records = dataset.records()
        versions: dict[str, dict[str, list[str]]] = {}
        for (device, runtime), group in records.groupby(["device", "runtime"]):
            versions.setdefault(str(device), {})[str(runtime)] = sorted(
                set(group["runtime_version"].dropna()))
        after = check_devices([d for d in devices if d.name not in unreachable],
                              check_timeout_s)
        dataset.update_card(runtime_versions=versions, drift_last_run=summary.drift_json(),
                            facts_after={
            c.device: {"temps_c": c.facts.get("temps_c"), "governor": c.facts.get("governor"),
                       "cur_freq_khz": c.facts.get("cur_freq_khz")}
            for c in after if c.reachable})
        _draw_drift(dataset, summary)
    return summary, checks
