"""Campaigns: subjects x devices x runtimes -> durable records, one worker per device, resumable.

Each job has an idempotent key (subject, device, runtime, settings). A rerun skips jobs already
stored and retries failed ones. Jobs are measured in batches; every batch carries the runner's
probes, and a batch whose reference probe ran markedly slower than the device's best (a slow
phase: throttling, a noisy neighbour) is measured again after a pause rather than stored, up to
a retry limit - otherwise a minute of contention becomes a permanent error in the dataset.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.export.graph import LayerGraph, chain_graph, spec_graph
from bench.ops import OpSpec
from bench.runners import (
    OVERHEAD_SPEC,
    BatchResult,
    Measurement,
    ModelFile,
    RunSettings,
    get_runner,
)
from bench.stats import round_medians
from bench.store import LatencyDataset, LatencyRecord, make_job_key
from device_agents import Device
from latbench.errors import AgentError, ConfigError, LatbenchError, RunnerError, TransportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subject:
    """Something to measure: one kernel, or a whole network given as a graph or as ONNX bytes.

    A network's `kernels`, when known (a chain of specs, or an ONNX graph already split), are
    kept with the dataset so a predictor can learn how kernels compose into networks.
    """

    key: str
    subject: str  # "op" | "network"
    family: str = ""
    spec: OpSpec | None = None
    graph: Callable[[], LayerGraph] | None = None
    onnx: Callable[[], bytes] | None = None
    kernels: tuple[OpSpec, ...] | None = None

    @classmethod
    def op(cls, spec: OpSpec, seed: int = 0) -> Subject:
        return cls(spec.key(), "op", spec=spec, graph=lambda: spec_graph(spec, seed))

    @classmethod
    def chain(cls, key: str, family: str, specs: Sequence[OpSpec], seed: int = 0) -> Subject:
        specs = tuple(specs)
        return cls(key, "network", family, graph=lambda: chain_graph(specs, seed), kernels=specs)

    @classmethod
    def onnx_model(cls, key: str, family: str, make: Callable[[], bytes],
                   kernels: Sequence[OpSpec] | None = None) -> Subject:
        return cls(key, "network", family, onnx=make,
                   kernels=None if kernels is None else tuple(kernels))

    def model_bytes(self, runner: Any) -> bytes:
        if self.graph is not None:
            return runner.export(self.graph())
        if self.onnx is not None and runner.name == "onnxruntime":
            return self.onnx()
        raise RunnerError(f"{self.key} exists only as ONNX; runtime {runner.name} cannot run it")


class ProgressSink(Protocol):
    def start(self, lane: str, total: int) -> None: ...

    def advance(self, lane: str, done: int) -> None: ...

    def note(self, lane: str, text: str) -> None: ...


class _Silent:
    def start(self, lane: str, total: int) -> None:
        pass

    def advance(self, lane: str, done: int) -> None:
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
    max_device_failures: int = 3    # consecutive failed batches before a device is given up

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.drift_tolerance <= 0:
            raise ConfigError(f"drift tolerance must be > 0, got {self.drift_tolerance}")


@dataclass
class CampaignSummary:
    total: int = 0
    skipped: int = 0
    measured: int = 0
    failed: int = 0
    redone_batches: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (device, key, error)
    seconds: float = 0.0

    def merge(self, other: CampaignSummary) -> None:
        self.measured += other.measured
        self.failed += other.failed
        self.redone_batches += other.redone_batches
        self.failures.extend(other.failures)


def _estimate_timeout(n_models: int, settings: RunSettings) -> float:
    calls = settings.warmup + settings.runs * settings.rounds
    return 120.0 + n_models * (5.0 + calls * 0.2)


def _max_temp(facts: dict[str, Any]) -> float:
    temps = facts.get("temps_c") or []
    values = [t.get("celsius") for t in temps if isinstance(t, dict)]
    values = [float(v) for v in values if isinstance(v, (int, float))]
    return max(values) if values else math.nan


def _record(subject: Subject, device: Device, runner_name: str, settings_key: str,
            result: BatchResult, measurement: Measurement, batch_id: str, threads: int
            ) -> LatencyRecord:
    common: dict[str, Any] = dict(
        device=device.name, runtime=runner_name, runtime_version=result.runtime_version,
        settings=settings_key, threads=threads, overhead_ms=result.overhead_ms,
        reference_ms=result.reference_ms, batch_id=batch_id,
        temp_before_c=_max_temp(result.facts_before), temp_after_c=_max_temp(result.facts_after))
    stats = measurement.stats
    if stats is None:
        common.update(status="failed", error=measurement.error or "failed")
    else:
        common.update(median_ms=stats.median_ms, min_ms=stats.min_ms, mean_ms=stats.mean_ms,
                      std_ms=stats.std_ms, p90_ms=stats.p90_ms, n_runs=stats.n_runs,
                      round_min_median_ms=min(round_medians(measurement.samples_ms)))
    return _new_record(subject, common)


def _new_record(subject: Subject, fields_: dict[str, Any]) -> LatencyRecord:
    if subject.spec is not None:
        return LatencyRecord.for_op(subject.spec, **fields_)
    return LatencyRecord.for_network(subject.key, subject.family, **fields_)


def _failed_record(subject: Subject, device: Device, runner_name: str, settings_key: str,
                   error: str, batch_id: str, threads: int) -> LatencyRecord:
    return _new_record(subject, dict(device=device.name, runtime=runner_name,
                                     settings=settings_key, threads=threads, status="failed",
                                     error=error, batch_id=batch_id))


class _DeviceWorker:
    """Measures one device's jobs batch by batch and writes each batch as it arrives."""

    def __init__(self, device: Device, runtime: str, jobs: list[Subject], dataset: LatencyDataset,
                 config: CampaignConfig, progress: ProgressSink, stop: threading.Event) -> None:
        self.device, self.runtime, self.jobs = device, runtime, jobs
        self.dataset, self.config, self.progress, self.stop = dataset, config, progress, stop
        self.runner = get_runner(runtime)
        self.settings = config.settings
        self.settings_key = self.settings.key(runtime)
        self.lane = f"{device.name}/{runtime}"
        self.best_reference = math.inf

    def calibrate(self, tries: int = 3) -> None:
        """Learn the device's best reference-probe time before the first batch, so that a
        campaign starting in a slow phase does not take the slow phase as its baseline."""
        probe = [ModelFile("calibration", self.runner.export(spec_graph(OVERHEAD_SPEC)))]
        timeout = self.config.timeout_s or _estimate_timeout(1, self.settings)
        for attempt in range(tries):
            result = self.runner.measure(self.device, probe, self.settings, timeout)
            self.best_reference = min(self.best_reference, result.reference_ms)
            if attempt + 1 < tries:
                time.sleep(self.config.drift_pause_s / 5)

    def run(self) -> CampaignSummary:
        summary = CampaignSummary()
        self.progress.start(self.lane, len(self.jobs))
        try:
            self.calibrate()
        except (TransportError, AgentError, RunnerError, OSError) as exc:
            log.warning("calibration on %s failed: %s", self.lane, exc)
        consecutive_failures = 0
        size = self.config.batch_size
        for start in range(0, len(self.jobs), size):
            if self.stop.is_set():
                break
            batch = self.jobs[start:start + size]
            batch_id = uuid.uuid4().hex[:12]
            try:
                records, redone = self._measure_batch(batch, batch_id)
                summary.redone_batches += redone
                consecutive_failures = 0
            except (TransportError, AgentError, RunnerError, OSError) as exc:
                consecutive_failures += 1
                error = f"{type(exc).__name__}: {exc}"
                log.warning("batch %s on %s failed: %s", batch_id, self.lane, error)
                records = [_failed_record(s, self.device, self.runtime, self.settings_key, error,
                                          batch_id, self.settings.threads) for s in batch]
            self.dataset.append(records)
            for rec in records:
                if rec.status == "ok":
                    summary.measured += 1
                else:
                    summary.failed += 1
                    summary.failures.append((self.device.name, rec.key, rec.error))
            self.progress.advance(self.lane, len(batch))
            if consecutive_failures >= self.config.max_device_failures:
                rest = self.jobs[start + size:]
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
        return summary

    def _measure_batch(self, batch: list[Subject], batch_id: str
                       ) -> tuple[list[LatencyRecord], int]:
        models, export_failed = [], {}
        for index, subject in enumerate(batch):
            try:
                models.append(ModelFile(f"j{index}", subject.model_bytes(self.runner)))
            except LatbenchError as exc:
                export_failed[index] = f"{type(exc).__name__}: {exc}"
        redone = 0
        result = None
        if models:
            timeout = self.config.timeout_s or _estimate_timeout(len(models), self.settings)
            for attempt in range(self.config.drift_retries + 1):
                result = self.runner.measure(self.device, models, self.settings, timeout)
                ratio = result.reference_ms / self.best_reference
                self.best_reference = min(self.best_reference, result.reference_ms)
                if not ratio > 1 + self.config.drift_tolerance:
                    break
                if attempt < self.config.drift_retries:
                    redone += 1
                    self.progress.note(self.lane, f"slow phase (reference {ratio:.2f}x its best);"
                                                  " measuring the batch again")
                    time.sleep(self.config.drift_pause_s)
        records = []
        for index, subject in enumerate(batch):
            if index in export_failed:
                records.append(_failed_record(subject, self.device, self.runtime,
                                              self.settings_key, export_failed[index], batch_id,
                                              self.settings.threads))
                continue
            assert result is not None
            records.append(_record(subject, self.device, self.runtime, self.settings_key, result,
                                   result.get(f"j{index}"), batch_id, self.settings.threads))
        return records, redone


def run_campaign(subjects: Sequence[Subject], devices: Sequence[Device], runtimes: Sequence[str],
                 dataset: LatencyDataset, config: CampaignConfig | None = None,
                 progress: ProgressSink | None = None) -> CampaignSummary:
    """Measure every (subject, device, runtime) job not already in `dataset`.

    Devices run in parallel (one worker each); a device's failures never stop the others.
    """
    config = config or CampaignConfig()
    progress = progress or _Silent()
    keys = [s.key for s in subjects]
    if len(set(keys)) != len(keys):
        raise ConfigError("campaign subjects have duplicate keys")
    done = dataset.done_keys()
    summary = CampaignSummary()
    lanes = []
    for device in devices:
        for runtime in runtimes:
            if runtime not in device.runtimes:
                raise ConfigError(f"device {device.name} has no runtime {runtime} "
                                  f"(it has {', '.join(device.runtimes) or 'none'})")
            settings_key = config.settings.key(runtime)
            todo = [s for s in subjects
                    if make_job_key(s.key, device.name, runtime, settings_key) not in done]
            summary.total += len(subjects)
            summary.skipped += len(subjects) - len(todo)
            lanes.append((device, runtime, todo))
    started = time.perf_counter()
    stop = threading.Event()
    by_device: dict[str, list[tuple[Device, str, list[Subject]]]] = {}
    for lane in lanes:
        by_device.setdefault(lane[0].name, []).append(lane)

    def device_work(device_lanes: list[tuple[Device, str, list[Subject]]]) -> CampaignSummary:
        out = CampaignSummary()
        for device, runtime, todo in device_lanes:
            if todo:
                out.merge(_DeviceWorker(device, runtime, todo, dataset, config, progress,
                                        stop).run())
        return out

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


def network_kernels(subjects: Sequence[Subject], card: dict[str, Any] | None = None
                    ) -> dict[str, list[str]]:
    """Kernel keys of every network subject that has them, merged with a card's earlier ones."""
    known = dict((card or {}).get("network_kernels") or {})
    for s in subjects:
        if s.subject == "network" and s.kernels is not None:
            known[s.key] = [k.key() for k in s.kernels]
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
    card with the device's facts, software versions and the exact run settings."""
    from device_agents import fetch_facts

    facts = fetch_facts(device)
    dataset = LatencyDataset.create(out, {
        **(card or {}),
        "device": device.name,
        "runtime": runtime,
        "device_facts": facts,
        "host_software": software_versions(),
        "run_settings": asdict(config.settings),
        "settings": config.settings.key(runtime),
        "campaign": {k: v for k, v in asdict(config).items() if k != "settings"},
    })
    dataset.update_card(network_kernels=network_kernels(subjects, dataset.card))
    summary = run_campaign(subjects, [device], [runtime], dataset, config, progress)
    versions = sorted(set(dataset.records()["runtime_version"].dropna()))
    after = fetch_facts(device)
    dataset.update_card(runtime_versions=versions,
                        temps_after=after.get("temps_c"), governor_after=after.get("governor"))
    return summary
