"""Runners that drive a native benchmark tool on the device instead of the Python agent.

`tflite-benchmark-model` runs TFLite's `benchmark_model` (Android phones, boards without
Python); `onnxruntime-perf-test` runs `onnxruntime_perf_test`. The user's binary (its local path
is in the fleet inventory, in the field the runner's `needs.tool` names) is pushed with the
models of a batch, run once per model and round (rounds interleave the models, as the agent
does, so a slow phase spreads over all of them), its output parsed by the pure parsers in
device_agents.tools, and the batch dir removed. Progress is reported as each run ends.

What a record holds, since a tool reports statistics rather than samples:
- min_ms: the smallest run; mean_ms: the mean over all runs; std_ms: the pooled standard
  deviation of all runs (from the tool's per-round figures, as a sample std);
- median_ms: the tool's median (benchmark_model prints one only in newer versions, as
  "median="; onnxruntime_perf_test as "P50 Latency"), the median of the rounds' medians when
  there are several rounds, NaN when the tool prints none; p90_ms: likewise ("P90 Latency"),
  NaN for benchmark_model; round_min_median_ms: the best round's median, or NaN;
- raw_output: the tool's untouched output of every round; tool_flags: the exact flags;
- peak_memory_bytes (models measured with `memory`): what the tool reports, the method says
  which figure: benchmark_model gets one extra, untimed run with
  --report_peak_memory_footprint=true; onnxruntime_perf_test prints its process's peak working
  set with every run.
The per-call overhead probe's median (its mean where the tool gives no median) is the batch's
overhead_ms, as for agent runs. Temperatures and CPU clock are read through the shell before and
after each batch. CPU affinity is applied with `taskset`.
"""

from __future__ import annotations

import logging
import math
import posixpath
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from latbench.bench.export.graph import LayerGraph
from latbench.bench.runners.base import (
    CLEANUP_TIMEOUT_S,
    MEMORY_ID,
    OVERHEAD_ID,
    PROBES,
    REFERENCE_ID,
    BatchResult,
    Measurement,
    ModelFile,
    ProgressCallback,
    RunnerBase,
    RunSettings,
    register_runner,
)
from latbench.bench.stats import Stats
from latbench.device_agents import Device, RuntimeNeeds
from latbench.device_agents.agent.latbench_agent import MEMORY_RUNS
from latbench.device_agents.facts import dynamic_facts
from latbench.errors import ConfigError, ParseError, RunnerError, TransportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundFigures:
    """One tool run's figures in ms; NaN where the tool does not report one."""

    n: int
    min_ms: float
    mean_ms: float
    std_ms: float  # population std, as tools report it
    median_ms: float = math.nan
    p90_ms: float = math.nan


def combine_rounds(rounds: Sequence[RoundFigures]) -> tuple[Stats, float]:
    """Pool several runs' figures: (Stats, best round's median or NaN). See the module doc."""
    if not rounds:
        raise ParseError("no rounds to combine")
    n = sum(r.n for r in rounds)
    mean = sum(r.n * r.mean_ms for r in rounds) / n
    pop_var = sum(r.n * (r.std_ms ** 2 + (r.mean_ms - mean) ** 2) for r in rounds) / n
    std = math.sqrt(pop_var * n / (n - 1)) if n > 1 else 0.0

    def middle(values: list[float]) -> float:
        return statistics.median(values) if values and all(math.isfinite(v) for v in values) \
            else math.nan

    medians = [r.median_ms for r in rounds]
    mins = [r.min_ms for r in rounds]
    stats = Stats(median_ms=middle(medians),
                  min_ms=min(mins) if all(math.isfinite(m) for m in mins) else math.nan,
                  mean_ms=mean, std_ms=std, p90_ms=middle([r.p90_ms for r in rounds]), n_runs=n)
    best = min(medians) if all(math.isfinite(m) for m in medians) else math.nan
    return stats, best


class NativeToolRunner(RunnerBase):
    """Shared host side of tool-based runtimes. Subclasses declare `needs` with the tool's
    inventory field (`RuntimeNeeds(tool=...)`), `settings_fields` and `formats`, and implement
    `export`, `flags` (-> object with argv(binary, model) and text()) and `figures` (raw
    output -> RoundFigures, ParseError when the run failed)."""

    delegates: ClassVar[tuple[str, ...]] = ()
    stopping_rule: ClassVar[bool] = False  # a tool reports statistics, not samples

    @property
    def tool(self) -> str:
        """The tool's inventory field (also the key of Device.tools and Device.tool_args)."""
        tool = self.needs.tool
        if tool is None:
            raise ConfigError(f"runner {self.name} drives a native tool but its needs name "
                              "none")
        return tool

    def flags(self, settings: RunSettings, device: Device) -> Any:
        raise NotImplementedError

    def figures(self, output: str) -> RoundFigures:
        raise NotImplementedError

    def memory_flags(self, settings: RunSettings, device: Device) -> Any | None:
        """Flags of an extra, untimed run that reports a model's peak memory; None when the
        timed runs' own output reports it, or the tool cannot."""
        return None

    def memory_figure(self, outputs: Sequence[str]) -> tuple[int | None, str]:
        """(peak bytes or None, method) from a model's memory run (or its timed runs)."""
        return None, f"not available ({self.tool} reports no memory)"

    def _prefix(self, device: Device) -> list[str]:
        if not device.cpu_affinity:
            return []
        mask = sum(1 << cpu for cpu in device.cpu_affinity)
        return ["taskset", format(mask, "x")]

    def measure(self, device: Device, models: Sequence[ModelFile],
                settings: RunSettings | None = None, timeout_s: float = 600.0,
                progress: ProgressCallback | None = None) -> BatchResult:
        settings = settings or RunSettings(threads=device.threads)
        if self.name not in device.runtimes:
            raise RunnerError(f"runtime {self.name} is not listed for device {device.name} "
                              f"(it has: {', '.join(device.runtimes) or 'none'})")
        tool = self.tool
        binary = device.tools.get(tool)
        if not binary or not Path(binary).is_file():
            raise RunnerError(f"runtime {self.name} on device {device.name} needs the local path "
                              f"of its {tool} binary (fleet field {tool!r}); got {binary!r}")
        if self.delegates and settings.delegate not in self.delegates:
            raise RunnerError(f"delegate {settings.delegate} is not available with {self.name}")
        models = list(models)
        ids = self._batch_ids(device, models)
        flags = self.flags(settings, device)
        deadline = time.monotonic() + timeout_s
        transport = device.transport
        remote_dir = posixpath.join(device.work_dir, f"batch-{uuid.uuid4().hex}")
        remote_tool = posixpath.join(remote_dir, Path(binary).name)
        cpu = device.cpu_affinity[0] if device.cpu_affinity else 0
        items = [(m.id, m.data) for m in models] + self.probe_models()
        outputs: dict[str, list[str]] = {i: [] for i, _ in items}
        rounds: dict[str, list[RoundFigures]] = {i: [] for i, _ in items}
        errors: dict[str, str] = {}
        # The caller's models count for progress: 1/rounds per run, the rest when one fails.
        share = {m.id: 0 for m in models}

        def advance(model_id: str, runs: int) -> None:
            if progress is not None and model_id in share and runs > 0:
                share[model_id] += runs
                progress(runs / settings.rounds)

        with tempfile.TemporaryDirectory(prefix="latbench-tool-batch-") as tmp:
            made = transport.run(["mkdir", "-p", remote_dir], CLEANUP_TIMEOUT_S)
            if not made.ok:
                raise RunnerError(f"creating {remote_dir} on device {device.name} failed: "
                                  f"{made.stderr.strip()[-300:]}")
            try:
                transport.push(Path(binary), remote_tool)
                chmod = transport.run(["chmod", "755", remote_tool], CLEANUP_TIMEOUT_S)
                if not chmod.ok:
                    raise RunnerError(f"cannot make {remote_tool} executable on device "
                                      f"{device.name}: {chmod.stderr.strip()[-300:]}")
                remote_models = []
                for index, (model_id, data) in enumerate(items):
                    local = Path(tmp) / f"m{index:04d}{self.suffix}"
                    local.write_bytes(data)
                    remote = posixpath.join(remote_dir, local.name)
                    transport.push(local, remote)
                    remote_models.append((model_id, remote))
                memory_out = self._memory_runs(device, settings, remote_tool, remote_models,
                                               {m.id for m in models if m.memory}, deadline)
                facts_before = dynamic_facts(transport, cpu)
                for round_index in range(settings.rounds):
                    for model_id, remote in remote_models:
                        if model_id in errors:
                            continue
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise TransportError(f"batch on device {device.name} ran past its "
                                                 f"timeout of {timeout_s:g} s")
                        argv = [*self._prefix(device), *flags.argv(remote_tool, remote)]
                        result = transport.run(argv, remaining)
                        text = result.stdout + ("\n" if result.stdout else "") + result.stderr
                        outputs[model_id].append(f"--- round {round_index + 1} (exit "
                                                 f"{result.returncode}) ---\n{text.strip()}")
                        try:
                            if not result.ok:
                                raise ParseError(f"{tool} exited {result.returncode}")
                            rounds[model_id].append(self.figures(text))
                            advance(model_id, 1)
                        except ParseError as exc:
                            tail = " | ".join(text.strip().splitlines()[-3:])
                            errors[model_id] = f"{exc} (output ends: {tail[-300:]!r})"
                            advance(model_id, settings.rounds - share.get(model_id, 0))
                facts_after = dynamic_facts(transport, cpu)
            finally:
                self._cleanup(device, remote_dir)
        flag_text = " ".join(filter(None, [" ".join(self._prefix(device)), flags.text()]))
        measurements = {}
        for model_id, _ in items:
            raw = "\n".join(outputs[model_id])
            if model_id in errors or not rounds[model_id]:
                measurements[model_id] = Measurement(
                    model_id, "failed", (), errors.get(model_id, "no output"), raw_output=raw,
                    tool_flags=flag_text)
                continue
            stats, best = combine_rounds(rounds[model_id])
            peak, method = None, ""
            if model_id in memory_out:
                peak, method = self.memory_figure(memory_out[model_id] or outputs[model_id])
            measurements[model_id] = Measurement(model_id, "ok", (), "", summary=stats,
                                                 round_min_median=best, raw_output=raw,
                                                 tool_flags=flag_text, peak_memory_bytes=peak,
                                                 memory_method=method)
        for pid in PROBES:
            if measurements[pid].stats is None:
                raise RunnerError(f"the {pid.strip('_')} probe model failed with {self.name} on "
                                  f"device {device.name}: {measurements[pid].error}")
        overhead = measurements[OVERHEAD_ID].stats

        def level(probe_id: str) -> float:
            return min(r.median_ms if math.isfinite(r.median_ms) else r.mean_ms
                       for r in rounds[probe_id])

        return BatchResult(
            measurements=[measurements[i] for i in ids],
            runtime=self.name,
            runtime_version=_binary_version(tool, Path(binary)),
            overhead_ms=overhead.median_ms if math.isfinite(overhead.median_ms)
            else overhead.mean_ms,
            reference_ms=level(REFERENCE_ID), memory_reference_ms=level(MEMORY_ID),
            facts_before=facts_before, facts_after=facts_after, device=device.name)


    def _memory_runs(self, device: Device, settings: RunSettings, remote_tool: str,
                     remote_models: Sequence[tuple[str, str]], wanted: set[str],
                     deadline: float) -> dict[str, list[str]]:
        """Model id -> output of its memory run (`memory_flags`), for the `wanted` ids; an empty
        list where the timed runs report memory themselves. A failed memory run is kept as
        its output: `memory_figure` then finds no figure and says so."""
        flags = self.memory_flags(settings, device) if wanted else None
        out: dict[str, list[str]] = {}
        for model_id, remote in remote_models:
            if model_id not in wanted:
                continue
            out[model_id] = []
            if flags is None:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError(f"batch on device {device.name} ran past its timeout")
            result = device.transport.run([*self._prefix(device),
                                           *flags.argv(remote_tool, remote)], remaining)
            out[model_id].append(result.stdout + "\n" + result.stderr)
        return out


def _binary_version(tool: str, path: Path) -> str:
    """Tools print no version, so the binary is named by its content: 'benchmark_model
    sha256:0123456789ab'. Two datasets agree on it only if they used the very same binary."""
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{tool} sha256:{digest}"


@register_runner("tflite-benchmark-model")
class BenchmarkModelRunner(NativeToolRunner):
    """TFLite models timed by the user's `benchmark_model` binary (delegate xnnpack, builtin
    = --use_xnnpack=false, or gpu = --use_gpu=true)."""

    needs = RuntimeNeeds(tool="benchmark_model")
    settings_fields = (("delegate", "delegate"),)
    formats = (".tflite",)
    delegates = ("xnnpack", "builtin", "gpu")
    split_pool_delegates = frozenset({"builtin"})  # as LiteRTRunner

    def export(self, graph: LayerGraph) -> bytes:
        from latbench.bench.export.to_tflite import to_tflite

        return to_tflite(graph)

    def flags(self, settings: RunSettings, device: Device) -> Any:
        from latbench.device_agents.tools.benchmark_model import BenchmarkModelFlags

        return BenchmarkModelFlags(
            num_threads=settings.threads, warmup_runs=settings.warmup, num_runs=settings.runs,
            use_xnnpack=settings.delegate == "xnnpack", use_gpu=settings.delegate == "gpu",
            extra=tuple(device.tool_args.get(self.tool, ())))

    def figures(self, output: str) -> RoundFigures:
        from latbench.device_agents.tools.benchmark_model import parse_benchmark_model

        s = parse_benchmark_model(output).inference
        return RoundFigures(n=s.count, min_ms=s.min_us / 1e3, mean_ms=s.avg_us / 1e3,
                            std_ms=s.std_us / 1e3,
                            median_ms=s.median_us / 1e3 if s.median_us is not None else math.nan)

    def memory_flags(self, settings: RunSettings, device: Device) -> Any:
        return replace(self.flags(settings, device), warmup_runs=1, num_runs=MEMORY_RUNS,
                       report_peak_memory_footprint=True)

    def memory_figure(self, outputs: Sequence[str]) -> tuple[int | None, str]:
        from latbench.device_agents.tools.benchmark_model import memory_figure

        return memory_figure(outputs[-1]) if outputs else (None, "not available (no output)")


@register_runner("onnxruntime-perf-test")
class PerfTestRunner(NativeToolRunner):
    """ONNX models timed by the user's `onnxruntime_perf_test` binary (CPU provider). The tool
    has no warm-up count: its untimed first inference is the only warm-up."""

    needs = RuntimeNeeds(tool="onnxruntime_perf_test")
    settings_fields = (("graph_opt", "opt"),)
    formats = (".onnx",)
    blocked_layout = True  # ONNX Runtime's CPU provider, as the Python runner

    def export(self, graph: LayerGraph) -> bytes:
        from latbench.bench.export.to_onnx import to_onnx

        return to_onnx(graph)

    def flags(self, settings: RunSettings, device: Device) -> Any:
        from latbench.device_agents.tools.ort_perf_test import PerfTestFlags

        return PerfTestFlags(threads=settings.threads, runs=settings.runs,
                             graph_opt=settings.graph_opt,
                             extra=tuple(device.tool_args.get(self.tool, ())))

    def figures(self, output: str) -> RoundFigures:
        from latbench.device_agents.tools.ort_perf_test import parse_perf_test

        r = parse_perf_test(output)
        nan = math.nan
        return RoundFigures(n=r.requests, min_ms=r.min_ms if r.min_ms is not None else nan,
                            mean_ms=r.average_ms, std_ms=nan,
                            median_ms=r.p50_ms if r.p50_ms is not None else nan,
                            p90_ms=r.p90_ms if r.p90_ms is not None else nan)

    def memory_figure(self, outputs: Sequence[str]) -> tuple[int | None, str]:
        from latbench.device_agents.tools.ort_perf_test import PEAK_METHOD, parse_perf_test

        peaks = []
        for output in outputs:
            try:
                peak = parse_perf_test(output).peak_bytes
            except ParseError:
                continue
            if peak is not None:
                peaks.append(peak)
        if not peaks:
            return None, "not available (onnxruntime_perf_test printed no peak working set)"
        return max(peaks), PEAK_METHOD
