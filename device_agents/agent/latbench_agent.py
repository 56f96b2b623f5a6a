#!/usr/bin/env python3
"""latbench device agent: report device facts and time models with one runtime.

Pushed to a device and run there as a standalone script (Python >= 3.7, stdlib + numpy + one
runtime; nothing of latbench is importable on a device):

    python3 latbench_agent.py facts [--work-dir DIR] [--module NAME ...]
    python3 latbench_agent.py measure REQUEST.json
    python3 latbench_agent.py peak-memory SPEC_JSON   (run by `measure` itself, see below)

It prints exactly one JSON object on stdout. Success: exit 0 with {"status": "ok", ...}. A fatal
error (bad request, runtime missing) exits non-zero with {"status": "error", "kind": ...,
"error": ...}. Anything the runtime itself prints to stdout (native logging) is diverted to
stderr so it cannot corrupt that object. While measuring, it reports on stderr how far the
batch is, one line `latbench-progress DONE TOTAL` each time a model gets further (DONE counts
models, fractional under the fixed protocol: a model is 1/rounds further after each round).

A model the request marks `"memory": true` also gets its peak memory measured before the timing
starts: the agent runs itself again (`peak-memory`) in a fresh process that loads only that
model with the same runtime and settings, runs it MEMORY_RUNS times and reports how far its
resident set rose above what it was before the model was loaded (see `peak_memory_here`). A
fresh process makes the figure independent of the other models of the batch and of the order
they were loaded in; the timed process is not touched.

The agent never executes anything it receives: it only loads model files into the runtime.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from functools import lru_cache

# 4: descheduled calls re-taken (CPU time vs wall time); 5: peak memory, and its own CPU time
# and the online CPUs in the facts (other programs' load, bench.load); 6: "settle" models get
# untimed calls at each visit until their times stop falling (`settle`); 7: ONNX Runtime at
# threads > 1 runs every session of a batch on one process-wide pool (`use_process_pool`);
# 8: the CPU's vector and matrix extensions in the facts (`cpu_features`)
AGENT_VERSION = "8"

RUNTIMES = ("onnxruntime", "litert", "onnxruntime-cuda", "torch-cuda")
GRAPH_OPTS = ("disable", "basic", "extended", "all")
DELEGATES = ("xnnpack", "builtin")

EXIT_INTERNAL = 1
EXIT_BAD_REQUEST = 2
EXIT_RUNTIME_MISSING = 3


class AgentFailure(Exception):
    """A fatal error: reported as {"status": "error"} with a kind and an exit code."""

    def __init__(self, kind: str, message: str, code: int) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code


# --------------------------------------------------------------------------------------------
# facts: every reader returns None when something is missing or unreadable, never raises.

def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def read_int(path: str) -> int | None:
    text = read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def parse_cpu_model(cpuinfo: str | None) -> str | None:
    """CPU name from /proc/cpuinfo: x86 'model name', ARM 'Hardware' or 'Processor' lines."""
    if not cpuinfo:
        return None
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if sep and value and key not in fields:
            fields[key] = value
    for key in ("model name", "hardware", "processor", "cpu model", "cpu"):
        value = fields.get(key)
        # On x86 'processor' is the CPU index; skip bare numbers.
        if value and not value.isdigit():
            return value
    return None


# The /proc/cpuinfo flags (x86 "flags", ARM "Features") that decide which kernels a runtime
# picks, in this order. A matrix unit changes what a precision costs: on a Xeon with AMX,
# XNNPACK's int8 convolutions ran 0.02-5.4x their fp32 time, at up to 1,190 GMAC/s on one core
# (AVX512-VNNI peaks near 350), so two CPUs of one name can differ by 10x in int8.
CPU_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
                "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme", "sme2")


def parse_cpu_features(cpuinfo: str | None) -> list[str] | None:
    """The CPU_FEATURES a /proc/cpuinfo lists (its first 'flags' or 'Features' line), None
    where it lists none of the two lines."""
    for line in (cpuinfo or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            present = set(value.split())
            return [f for f in CPU_FEATURES if f in present]
    return None


def parse_cpu_list(text: str | None) -> list[int] | None:
    """'0-3,6' (sysfs cpu list) -> [0, 1, 2, 3, 6]."""
    if not text:
        return None
    cpus: list[int] = []
    try:
        for part in text.strip().split(","):
            lo, sep, hi = part.partition("-")
            cpus.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        return None
    return cpus


def temperatures() -> list[dict] | None:
    """Thermal zones as [{"zone", "name", "celsius", "source"}]; None when there are none
    (VMs)."""
    zones = []
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        milli = read_int(os.path.join(zone, "temp"))
        if milli is None:
            continue
        zones.append({"zone": os.path.basename(zone),
                      "name": read_text(os.path.join(zone, "type")) or os.path.basename(zone),
                      "celsius": milli / 1000.0, "source": "thermal_zone"})
    return zones or None


def cpufreq(cpu: int, item: str) -> int | None:
    return read_int(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/{item}")


def load_average() -> list[float] | None:
    try:
        return [round(x, 3) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def sysfs_root() -> str:
    """Where sensor files are read from: /sys, or $LATBENCH_AGENT_SYSFS (a folder laid out
    like /sys, which is how the tests serve a power sensor with known values)."""
    return os.environ.get("LATBENCH_AGENT_SYSFS", "/sys")


def energy_method(meter) -> str:
    return meter.method if meter is not None else "not available"


class EnergyMeter:
    """The device's energy source, read around each round of timed calls: a cumulative energy
    counter in microjoules that wraps at `wrap` (RAPL), or an instantaneous power reading in
    watts integrated over the round's wall time (hwmon power, battery current x voltage)."""

    def __init__(self, method: str, resolution: str, read, counter: bool,
                 wrap: int | None = None) -> None:
        self.method, self.resolution = method, resolution
        self.read, self.counter, self.wrap = read, counter, wrap

    def start(self):
        return time.perf_counter(), self.read()

    def joules(self, start) -> float:
        """Energy since `start` (from `start()`); NaN when a reading failed."""
        t0, v0 = start
        t1, v1 = time.perf_counter(), self.read()
        if v0 is None or v1 is None:
            return float("nan")
        if not self.counter:
            return 0.5 * (v0 + v1) * (t1 - t0)
        delta = v1 - v0
        if delta < 0 and self.wrap:
            delta += self.wrap
        return delta * 1e-6


def _scaled(path: str, scale: float):
    def read() -> float | None:
        value = read_int(path)
        return None if value is None else value * scale
    return read


def _battery_watts(folder: str):
    def read() -> float | None:
        current = read_int(os.path.join(folder, "current_now"))  # uA (sign: vendor-specific)
        voltage = read_int(os.path.join(folder, "voltage_now"))  # uV
        if current is None or voltage is None:
            return None
        return abs(current) * voltage * 1e-12
    return read


def energy_meter() -> EnergyMeter | None:
    """The first readable energy source: RAPL package energy, an hwmon power sensor, or a
    battery's current and voltage; None when the device exposes none (most VMs)."""
    root = sysfs_root()
    for zone in sorted(glob.glob(os.path.join(root, "class", "powercap", "*"))):
        name = read_text(os.path.join(zone, "name")) or ""
        counter = os.path.join(zone, "energy_uj")
        if name.startswith("package") and read_int(counter) is not None:
            return EnergyMeter(f"rapl:{os.path.basename(zone)}:{name} (whole package, every "
                               "process on it)", "1 uJ counter, updated about every 1 ms",
                               _scaled(counter, 1.0), True,
                               read_int(os.path.join(zone, "max_energy_range_uj")))
    for hwmon in sorted(glob.glob(os.path.join(root, "class", "hwmon", "hwmon*"))):
        for power in sorted(glob.glob(os.path.join(hwmon, "power*_input"))):
            if read_int(power) is not None:
                name = read_text(os.path.join(hwmon, "name")) or os.path.basename(hwmon)
                return EnergyMeter(f"hwmon:{name}/{os.path.basename(power)}",
                                   "instantaneous power (uW) read before and after each round",
                                   _scaled(power, 1e-6), False)
    for supply in sorted(glob.glob(os.path.join(root, "class", "power_supply", "*"))):
        if (read_text(os.path.join(supply, "type")) or "").lower() == "battery":
            read = _battery_watts(supply)
            if read() is not None:
                return EnergyMeter(f"battery:{os.path.basename(supply)} (whole device)",
                                   "current x voltage read before and after each round",
                                   read, False)
    return None


def cpu_times() -> list[int] | None:
    """The machine's CPU time so far in clock ticks, /proc/stat's first line (user nice system
    idle iowait irq softirq steal): steal is what a VM's hypervisor gave to other tenants."""
    line = (read_text("/proc/stat") or "").split("\n", 1)[0].split()
    try:
        return [int(x) for x in line[1:9]] if line[:1] == ["cpu"] and len(line) >= 9 else None
    except ValueError:
        return None


def online_cpus() -> int | None:
    """CPUs /proc/stat counts now (its cpuN lines): what its aggregate line's times cover."""
    lines = (read_text("/proc/stat") or "").split("\n")
    count = sum(1 for line in lines if line[:3] == "cpu" and line[3:4].isdigit())
    return count or None


def own_cpu_seconds() -> float:
    """CPU time this process and the tools it ran (once waited for) have used: what the
    machine's CPU time minus it says other programs used during a batch (bench.load)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def dynamic_facts(cpu: int = 0) -> dict:
    """What drifts during a measurement: temperatures, clock, load, CPU time (steal included,
    this process's own apart). Taken before and after."""
    return {"time_unix": time.time(), "temps_c": temperatures(), "freq_cpu": cpu,
            "cur_freq_khz": cpufreq(cpu, "scaling_cur_freq"), "load_avg": load_average(),
            "cpu_times": cpu_times(), "n_cpus": online_cpus(),
            "own_cpu_s": own_cpu_seconds()}


def module_version(module: str, dist: str) -> str | None:
    """Version of an importable module, None if it cannot be imported."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except Exception:  # a broken install is "not importable", not a crash
        return None
    try:
        from importlib import metadata

        return metadata.version(dist)
    except Exception:
        return str(getattr(mod, "__version__", "unknown"))


def installed_version(module: str, dist: str) -> str | None:
    """Version of an installed module found WITHOUT importing it (torch takes seconds)."""
    import importlib.util

    try:
        if importlib.util.find_spec(module) is None:
            return None
        from importlib import metadata

        return metadata.version(dist)
    except Exception:  # a broken install or missing metadata is "unknown", not a crash
        return None


def runtime_versions(modules=()) -> dict[str, str | None]:
    """Versions of the runtimes the agent has backends for, plus any other `modules` the host
    asks about (found without importing them; "installed" when they carry no version)."""
    versions = {"onnxruntime": module_version("onnxruntime", "onnxruntime"),
                "ai_edge_litert": module_version("ai_edge_litert", "ai-edge-litert"),
                "tflite_runtime": module_version("tflite_runtime", "tflite-runtime"),
                "torch": installed_version("torch", "torch")}
    for module in modules:
        if module not in versions:
            versions[module] = extra_module_version(module)
    return versions


def extra_module_version(module: str) -> str | None:
    """Version of a top-level module the host asked about, None when it is not installed."""
    import importlib.util

    try:
        if not module.isidentifier() or importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    for dist in (module, module.replace("_", "-")):
        version = installed_version(module, dist)
        if version:
            return version
    return "installed"


def cuda_device_nodes() -> list[str]:
    """NVIDIA GPU device nodes: /dev/nvidia0.. (desktop/server drivers), /dev/nvhost-gpu (Jetson),
    /dev/dxg (WSL2). Cheap to read, unlike importing a CUDA runtime; empty means no CUDA device."""
    nodes = glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/nvhost-gpu") + glob.glob("/dev/dxg")
    return sorted(nodes)


def cuda_unavailable(runtime: str) -> str | None:
    """Why `runtime` cannot run here because no CUDA device is visible, or None."""
    if cuda_device_nodes():
        return None
    return (f"runtime {runtime} unavailable: no CUDA device (no /dev/nvidia*, /dev/nvhost-gpu "
            "or /dev/dxg device node on this machine)")


def free_bytes(path: str) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def facts(work_dir: str, modules=()) -> dict:
    try:
        import numpy

        numpy_version: str | None = numpy.__version__
    except ImportError:
        numpy_version = None
    online = parse_cpu_list(read_text("/sys/devices/system/cpu/online"))
    cpuinfo = read_text("/proc/cpuinfo")
    return {
        "agent_version": AGENT_VERSION,
        "os": platform.system() or None,
        "kernel": platform.release() or None,
        "machine": platform.machine() or None,
        "cpu_model": parse_cpu_model(cpuinfo) or platform.processor() or None,
        "cpu_features": parse_cpu_features(cpuinfo),
        "cores": os.cpu_count(),
        "cores_online": len(online) if online else None,
        "governor": read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cur_freq_khz": cpufreq(0, "scaling_cur_freq"),
        "max_freq_khz": cpufreq(0, "cpuinfo_max_freq"),
        "temps_c": temperatures(),
        "load_avg": load_average(),
        "energy": energy_method(energy_meter()),
        "python": platform.python_version(),
        "numpy": numpy_version,
        "runtimes": runtime_versions(modules),
        "cuda_devices": cuda_device_nodes(),
        "work_dir": os.path.abspath(work_dir),
        "free_bytes": free_bytes(work_dir),
    }


# --------------------------------------------------------------------------------------------
# stopping rule: the one implementation (bench.stats re-exports these functions)

STOP_REASONS = ("converged", "max_runs", "max_seconds", "futile")


@lru_cache(maxsize=4096)
def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """0-based ranks (lo, hi) of the sorted samples that bracket the median with probability
    >= `confidence` for ANY continuous distribution, or None when n is too small.

    The number of samples below the true median is Binomial(n, 1/2), so [x_(l), x_(n-l+1)]
    (1-based) covers it with probability 1 - 2 P(B <= l - 1); l is the largest rank keeping
    that >= confidence. Computed in log space so large n does not underflow.
    """
    if n < 1 or not 0.0 < confidence < 1.0:
        return None
    alpha_half = (1.0 - confidence) / 2.0
    log_total = n * math.log(2.0)
    lgn = math.lgamma(n + 1)
    cdf = 0.0
    best = 0  # the largest l (1-based) with P(B <= l - 1) <= alpha/2; 0 = none
    for k in range(0, n // 2 + 1):
        cdf += math.exp(lgn - math.lgamma(k + 1) - math.lgamma(n - k + 1) - log_total)
        if cdf <= alpha_half:
            best = k + 1
        else:
            break
    if best == 0:
        return None
    return best - 1, n - best


def median_ci(samples, confidence: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval (lo, hi) of the median, None if too few samples."""
    values = sorted(float(x) for x in samples)
    ranks = median_ci_ranks(len(values), confidence)
    if ranks is None:
        return None
    return values[ranks[0]], values[ranks[1]]


def sample_median(values) -> float:
    v = sorted(float(x) for x in values)
    n = len(v)
    if n == 0:
        return float("nan")
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2.0


def ci_rel_width(samples, confidence: float = 0.95) -> float:
    """(hi - lo) / median of the median's confidence interval: the achieved relative precision;
    inf when there are too few samples for an interval at this confidence."""
    values = [float(x) for x in samples]
    ci = median_ci(values, confidence)
    if ci is None:
        return float("inf")
    width = ci[1] - ci[0]
    centre = sample_median(values)
    if centre <= 0.0:
        return 0.0 if width == 0.0 else float("inf")
    return width / centre


def stop_reason(samples, elapsed_s: float, rule: dict) -> str | None:
    """Whether a model whose samples so far are `samples` (taking `elapsed_s` seconds) is done:
    "converged" (CI of the median within the target relative width), "max_runs", "max_seconds",
    "futile", or None (measure another round). Never stops before rule["min_runs"] samples.

    "futile" (when rule["futility"] is a factor F, not None): the interval narrows like
    1/sqrt(n), so reaching the target needs about n (width / target)^2 samples; when taking
    them would need more than F times max_seconds, the target is out of reach within the time
    cap and the seconds until the cap would be spent short of it. Only time is saved this way:
    a cheap model (microseconds per call) keeps going to max_runs, where more samples still
    sharpen its figures at little cost.
    """
    n = len(samples)
    if n < rule["min_runs"]:
        return None
    width = ci_rel_width(samples, rule["confidence"])
    target = rule["target_rel_width"]
    if width <= target:
        return "converged"
    if n >= rule["max_runs"]:
        return "max_runs"
    if elapsed_s >= rule["max_seconds"]:
        return "max_seconds"
    factor = rule.get("futility")
    if factor is not None and math.isfinite(width):
        needed = n * (width / target) ** 2
        if elapsed_s * needed / n > factor * rule["max_seconds"]:
            return "futile"
    return None


def validate_stop(raw: object) -> dict | None:
    """The request's stopping rule: null (fixed protocol) or its parameters."""
    if raw is None:
        return None

    def bad(message: str) -> AgentFailure:
        return AgentFailure("bad_request", f"stopping rule: {message}", EXIT_BAD_REQUEST)

    if not isinstance(raw, dict):
        raise bad(f"must be null or an object, got {raw!r}")
    out = {}
    for name, lo, hi in (("target_rel_width", 0.0, 1.0), ("confidence", 0.5, 1.0)):
        value = raw.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not lo < value < hi:
            raise bad(f"{name} must be a number in ({lo:g}, {hi:g}), got {value!r}")
        out[name] = float(value)
    for name in ("min_runs", "max_runs"):
        value = raw.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad(f"{name} must be an integer >= 1, got {value!r}")
        out[name] = value
    if out["max_runs"] < out["min_runs"]:
        raise bad(f"max_runs {out['max_runs']} is below min_runs {out['min_runs']}")
    seconds = raw.get("max_seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise bad(f"max_seconds must be a number > 0, got {seconds!r}")
    out["max_seconds"] = float(seconds)
    factor = raw.get("futility")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                               or not factor >= 1):
        raise bad(f"futility must be null (off) or a factor >= 1, got {factor!r}")
    out["futility"] = None if factor is None else float(factor)
    return out


def validate_single_stream(raw: object) -> dict | None:
    """The request's single-stream protocol: null, or {"queries", "min_seconds",
    "replicates", "pause_s"}."""
    if raw is None:
        return None

    def bad(message: str) -> AgentFailure:
        return AgentFailure("bad_request", f"single stream: {message}", EXIT_BAD_REQUEST)

    if not isinstance(raw, dict):
        raise bad(f"must be null or an object, got {raw!r}")
    out = {}
    for name in ("queries", "replicates"):
        value = raw.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad(f"{name} must be an integer >= 1, got {value!r}")
        out[name] = value
    for name, positive in (("min_seconds", True), ("pause_s", False)):
        value = raw.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                value > 0 if positive else value >= 0) or value != value:
            raise bad(f"{name} must be a number {'>' if positive else '>='} 0, got {value!r}")
        out[name] = float(value)
    return out


# --------------------------------------------------------------------------------------------
# measure

PROGRESS_MARKER = "latbench-progress"


class Progress:
    """How far a batch is, as `latbench-progress DONE TOTAL` lines on stderr (see the module
    docstring), so the host can move its progress bar while a batch of many models runs.

    Each model has `steps` steps (its rounds under the fixed protocol, one under a stopping
    rule); DONE is the steps taken over all models divided by `steps`, so it is exact once
    every model is finished. A failed model is finished at once.
    """

    def __init__(self, ids, steps: int, stream=None) -> None:
        self.taken = {model_id: 0 for model_id in ids}
        self.steps = steps
        self.stream = stream
        self.total_taken = 0

    def advance(self, model_id, steps: int = 1) -> None:
        before = self.taken[model_id]
        after = min(self.steps, before + steps)
        if after > before:
            self.taken[model_id] = after
            self.total_taken += after - before
            stream = self.stream or sys.stderr
            stream.write(f"{PROGRESS_MARKER} {self.total_taken / self.steps:.6f} "
                         f"{len(self.taken)}\n")
            stream.flush()

    def finish(self, model_id) -> None:
        self.advance(model_id, self.steps)


def parse_progress(line: str):
    """(done, total) from one of the agent's progress lines; None for any other line."""
    parts = line.split()
    if len(parts) != 3 or parts[0] != PROGRESS_MARKER:
        return None
    try:
        done, total = float(parts[1]), int(parts[2])
    except ValueError:
        return None
    if total < 1 or not 0.0 <= done <= total + 1e-6:
        return None
    return min(done, float(total)), total


def _int_field(req: dict, name: str, minimum: int) -> int:
    value = req.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise AgentFailure("bad_request", f"request field {name!r} must be an integer >= "
                           f"{minimum}, got {value!r}", EXIT_BAD_REQUEST)
    return value


def validate_request(req: object) -> dict:
    """Check the request's form; the host wrote it, so any deviation is a fatal bad_request."""
    def bad(message: str) -> AgentFailure:
        return AgentFailure("bad_request", message, EXIT_BAD_REQUEST)

    if not isinstance(req, dict):
        raise bad("request is not a JSON object")
    runtime = req.get("runtime")
    if runtime not in RUNTIMES:
        raise bad(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    out = {"runtime": runtime,
           "threads": _int_field(req, "threads", 1),
           "warmup": _int_field(req, "warmup", 0),
           "runs": _int_field(req, "runs", 1),
           "rounds": _int_field(req, "rounds", 1),
           "graph_opt": req.get("graph_opt", "all"),
           "delegate": req.get("delegate", "xnnpack"),
           "affinity": req.get("affinity"),
           "stop": validate_stop(req.get("stop")),
           "retake_descheduled": req.get("retake_descheduled", True),
           "single_stream": validate_single_stream(req.get("single_stream"))}
    if out["stop"] is not None and out["single_stream"] is not None:
        raise bad("a request has a stopping rule or a single stream, not both")
    if not isinstance(out["retake_descheduled"], bool):
        raise bad(f"retake_descheduled must be true or false, got "
                  f"{out['retake_descheduled']!r}")
    if out["graph_opt"] not in GRAPH_OPTS:
        raise bad(f"unknown graph_opt {out['graph_opt']!r}; known: {', '.join(GRAPH_OPTS)}")
    if out["delegate"] not in DELEGATES:
        raise bad(f"unknown delegate {out['delegate']!r}; known: {', '.join(DELEGATES)}")
    affinity = out["affinity"]
    if affinity is not None and (
            not isinstance(affinity, list) or not affinity
            or any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in affinity)):
        raise bad(f"affinity must be null or a non-empty list of CPU ids, got {affinity!r}")
    models = req.get("models")
    if not isinstance(models, list) or not models:
        raise bad("request field 'models' must be a non-empty list")
    seen = set()
    for m in models:
        if (not isinstance(m, dict) or not isinstance(m.get("id"), str)
                or not isinstance(m.get("path"), str) or not m["id"] or not m["path"]
                or not isinstance(m.get("track", False), bool)
                or not isinstance(m.get("probe", False), bool)
                or not isinstance(m.get("memory", False), bool)
                or not isinstance(m.get("settle", False), bool)):
            raise bad(f"each model must be {{'id': str, 'path': str[, 'track': bool]"
                      f"[, 'probe': bool][, 'memory': bool][, 'settle': bool]}}, got {m!r}")
        if m["id"] in seen:
            raise bad(f"duplicate model id {m['id']!r}")
        seen.add(m["id"])
    # A tracked model (the reference probe) is measured in every round while any other model
    # is still being measured, so it samples the device's speed over the whole batch. A probe
    # (the host's overhead and reference models) is timed to the query count only in a single
    # stream: its seconds are not what the user asked about. A model with "memory" has its peak
    # memory measured in a process of its own before the timing (`measure_peak_memory`). A
    # model with "settle" (a whole network) gets untimed calls at each visit until its times
    # stop falling (`settle`).
    out["models"] = [{"id": m["id"], "path": m["path"], "track": m.get("track", False),
                      "probe": m.get("probe", False), "memory": m.get("memory", False),
                      "settle": m.get("settle", False)}
                     for m in models]
    return out


def static_dim(dim) -> int:
    """A fixed size for one input dimension; symbolic or unknown dims (None, "batch", -1) -> 1."""
    try:
        value = int(dim)
    except (TypeError, ValueError):
        return 1
    return value if value > 0 else 1


def random_array(rng, shape, dtype):
    import numpy as np

    shape = tuple(static_dim(d) for d in shape)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 4, shape).astype(dtype)
    raise ValueError(f"unsupported input dtype {dtype}")


ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16",
             "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32",
             "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


# The intra-op thread count of the process-wide ONNX Runtime pool, once `use_process_pool` made
# it (before the process's first session); empty: every session has a pool of its own.
ORT_PROCESS_POOL: list[int] = []


def use_process_pool(threads: int) -> None:
    """Give every ONNX Runtime session of this process one shared pool of `threads`.

    A batch keeps all its models' sessions alive and visits them in turn. With a pool per
    session, at threads > 1 the idle pools' workers compete with the timed session's for the
    cores - a state a user running one model never sees; sessions sharing one pool time as each
    alone does (docs/measurement.md, section 2a). Must run before the first session of the
    process; the agent process measures one request, so `run_command` calls it before
    `measure`."""
    import onnxruntime.capi._pybind_state as ort_state

    ort_state.set_global_thread_pool_sizes(threads, 1)
    ORT_PROCESS_POOL[:] = [threads]


class OrtBackend:
    name = "onnxruntime"

    def __init__(self, req: dict) -> None:
        try:
            import onnxruntime as ort
        except Exception as exc:  # any import failure means "missing"
            raise AgentFailure("runtime_missing", f"runtime onnxruntime cannot be imported: "
                               f"{type(exc).__name__}: {exc}", EXIT_RUNTIME_MISSING) from exc
        self.ort = ort
        self.version = ort.__version__
        self.req = req

    def session_options(self):
        """Options both ONNX Runtime backends share: threads, graph optimisation, quiet log."""
        ort = self.ort
        opts = ort.SessionOptions()
        if ORT_PROCESS_POOL == [self.req["threads"]]:
            opts.use_per_session_threads = False
        else:
            opts.intra_op_num_threads = self.req["threads"]
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.req["graph_opt"]]
        opts.log_severity_level = 3
        return opts

    @staticmethod
    def random_feeds(sess, rng) -> dict:
        """Random numpy arrays for every input of the session, by input name."""
        feeds = {}
        for inp in sess.get_inputs():
            if inp.type not in ORT_TYPES:
                raise ValueError(f"input {inp.name} has unsupported type {inp.type}")
            feeds[inp.name] = random_array(rng, inp.shape, ORT_TYPES[inp.type])
        return feeds

    def load(self, path: str, rng):
        """Return a zero-argument callable doing one timed inference."""
        ort = self.ort
        opts = self.session_options()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        feeds = self.random_feeds(sess, rng)
        run = sess.run
        return lambda: run(None, feeds)


class OrtCudaBackend(OrtBackend):
    """ONNX Runtime's CUDA execution provider. Inputs and outputs are bound on the GPU (IO
    binding), so a timed call is the device work without host<->device copies; ORT synchronises
    the CUDA stream at the end of each run, so the host clock sees the finished work."""

    name = "onnxruntime-cuda"

    def __init__(self, req: dict) -> None:
        reason = cuda_unavailable(self.name)
        if reason is not None:
            raise AgentFailure("runtime_missing", reason, EXIT_RUNTIME_MISSING)
        super().__init__(req)
        providers = self.ort.get_available_providers()
        if "CUDAExecutionProvider" not in providers:
            raise AgentFailure("runtime_missing", f"runtime {self.name} unavailable: onnxruntime "
                               f"{self.version} has no CUDAExecutionProvider (it has "
                               f"{', '.join(providers)}; install onnxruntime-gpu)",
                               EXIT_RUNTIME_MISSING)

    def load(self, path: str, rng):
        ort = self.ort
        sess = ort.InferenceSession(path, sess_options=self.session_options(),
                                    providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        if sess.get_providers()[:1] != ["CUDAExecutionProvider"]:
            raise RuntimeError(f"ONNX Runtime did not enable the CUDA provider for {path} "
                               f"(session providers: {sess.get_providers()})")
        binding = sess.io_binding()
        for name, array in self.random_feeds(sess, rng).items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        for out in sess.get_outputs():
            binding.bind_output(out.name, "cuda", 0)
        run = sess.run_with_iobinding
        return lambda: run(binding)


def load_exported(torch, path: str, device: str):
    """(module on `device`, input shapes) from a .pt2 file written by latbench's exporter."""
    extra = {"latbench.json": ""}
    program = torch.export.load(path, extra_files=extra)
    try:
        shapes = json.loads(extra["latbench.json"])["input_shapes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} has no latbench.json with input_shapes") from exc
    move = getattr(getattr(torch.export, "passes", None), "move_to_device_pass", None)
    if move is not None:
        return move(program, device).module(), shapes
    return program.module().to(device), shapes


class TorchCudaBackend:
    """PyTorch exported programs (.pt2) on a CUDA GPU, timed with CUDA events (the GPU's own
    clock): the callable returns the elapsed milliseconds between an event recorded before and
    one after the forward pass, so host-side launch jitter is not counted."""

    name = "torch-cuda"
    self_timed = True

    def __init__(self, req: dict) -> None:
        reason = cuda_unavailable(self.name)
        if reason is not None:
            raise AgentFailure("runtime_missing", reason, EXIT_RUNTIME_MISSING)
        try:
            import torch
        except Exception as exc:  # any import failure means "missing"
            raise AgentFailure("runtime_missing", f"runtime torch-cuda cannot import torch: "
                               f"{type(exc).__name__}: {exc}", EXIT_RUNTIME_MISSING) from exc
        if not torch.cuda.is_available():
            raise AgentFailure("runtime_missing", f"runtime {self.name} unavailable: no CUDA "
                               f"device usable by torch {torch.__version__} "
                               "(torch.cuda.is_available() is False)", EXIT_RUNTIME_MISSING)
        torch.set_num_threads(req["threads"])
        self.torch = torch
        self.version = torch.__version__
        self.req = req

    def load(self, path: str, rng):
        torch = self.torch
        module, shapes = load_exported(torch, path, "cuda")
        inputs = [torch.from_numpy(random_array(rng, shape, "float32")).cuda()
                  for shape in shapes]
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)

        def run() -> float:
            with torch.inference_mode():
                start.record()
                module(*inputs)
                end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return run


class LiteRTBackend:
    name = "litert"

    def __init__(self, req: dict) -> None:
        errors = []
        self.interpreter_cls = self.resolver = None
        for module, dist in (("ai_edge_litert.interpreter", "ai-edge-litert"),
                             ("tflite_runtime.interpreter", "tflite-runtime")):
            try:
                import importlib

                mod = importlib.import_module(module)
            except Exception as exc:
                errors.append(f"{module}: {type(exc).__name__}: {exc}")
                continue
            self.interpreter_cls = mod.Interpreter
            self.resolver = getattr(mod, "OpResolverType", None)
            self.version = module_version(module.split(".")[0], dist) or "unknown"
            break
        if self.interpreter_cls is None:
            raise AgentFailure("runtime_missing", "runtime litert cannot be imported ("
                               + "; ".join(errors) + ")", EXIT_RUNTIME_MISSING)
        if req["delegate"] == "builtin" and self.resolver is None:
            raise AgentFailure("runtime_missing", "this LiteRT/tflite_runtime has no "
                               "OpResolverType, so delegate 'builtin' is unavailable",
                               EXIT_RUNTIME_MISSING)
        self.req = req

    def load(self, path: str, rng):
        kwargs = {"model_path": path, "num_threads": self.req["threads"]}
        if self.req["delegate"] == "builtin":
            kwargs["experimental_op_resolver_type"] = (
                self.resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp = self.interpreter_cls(**kwargs)
        interp.allocate_tensors()
        for detail in interp.get_input_details():
            interp.set_tensor(detail["index"],
                              random_array(rng, detail["shape"], detail["dtype"]))
        return interp.invoke


BACKENDS = {"onnxruntime": OrtBackend, "litert": LiteRTBackend,
            "onnxruntime-cuda": OrtCudaBackend, "torch-cuda": TorchCudaBackend}


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 2000 else text[:1997] + "..."


# --------------------------------------------------------------------------------------------
# peak memory: one model in a fresh process (`peak-memory`), asked for by `measure`

# Calls after loading. ONNX Runtime plans its memory pattern during the first call and allocates
# it from the second, so the steady state is reached within three.
MEMORY_RUNS = 3
MEMORY_TIMEOUT_S = 600.0  # for one model's peak-memory process
# The memory of these runtimes' models lives on the GPU, which the resident set does not show.
GPU_RUNTIMES = ("onnxruntime-cuda", "torch-cuda")
# glibc adapts its mmap threshold to the sizes freed so far, so whether a large buffer is mapped
# (and unmapped when freed) or carved from the heap (and kept resident) depends on the process's
# history (docs/measurement.md, section 2f). Fixed at glibc's default 128 KiB, every buffer of
# that size or more comes and goes with its use, and the peak is what the runtime held. Other C
# libraries ignore the variable.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
MEMORY_METHODS = {
    "rss-hwm": "rss-hwm: fresh process (glibc mmap threshold fixed), VmHWM (reset before "
               "loading) - VmRSS before loading, load + {runs} calls",
    "rss-hwm-unreset": "rss-hwm: fresh process (glibc mmap threshold fixed), VmHWM (not "
                       "resettable; passed during the load) - VmRSS before loading, load + "
                       "{runs} calls",
    "rss-samples": "rss-samples: fresh process (glibc mmap threshold fixed), VmHWM not "
                   "resettable, VmRSS after loading and each of {runs} calls - VmRSS before (a "
                   "peak inside a call is missed)",
}


def memory_status(path: str = "/proc/self/status") -> dict | None:
    """This process's resident set (VmRSS) and its high-water mark (VmHWM) in bytes, from
    /proc; None where the file or a field is missing (not Linux)."""
    text = read_text(path)
    if text is None:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            parts = value.split()
            if len(parts) != 2 or parts[1] != "kB" or not parts[0].isdigit():
                return None
            out[key] = int(parts[0]) * 1024
    return out if len(out) == 2 else None


def reset_peak_rss(path: str = "/proc/self/clear_refs") -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0: "5" written to clear_refs);
    False where the kernel or its policy refuses."""
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_here(load, runs: int, status=memory_status, reset=reset_peak_rss) -> dict:
    """Load a model (`load()` returns its one-call runner), call it `runs` times, and return
    how far this process's resident set rose above what it was before loading:
    {"peak_bytes", "baseline_bytes", "method"}. The high-water mark VmHWM is reset first; where
    it cannot be, it still gives the peak when the load passed the mark set before it, and
    otherwise the resident set sampled after the load and each call stands in (the method
    says which). Without /proc, peak_bytes is None and the method says "not available"."""
    gc.collect()
    was_reset = reset()
    before = status()
    if before is None:
        return {"peak_bytes": None, "baseline_bytes": None,
                "method": "not available (no VmRSS/VmHWM in /proc/self/status)"}
    run = load()
    seen = [status()]
    for _ in range(runs):
        run()
        seen.append(status())
    if any(s is None for s in seen):
        return {"peak_bytes": None, "baseline_bytes": None,
                "method": "not available (/proc/self/status became unreadable)"}
    base = before["VmRSS"]
    if was_reset or seen[-1]["VmHWM"] > before["VmHWM"]:
        peak = max(s["VmHWM"] for s in seen) - base
        method = "rss-hwm" if was_reset else "rss-hwm-unreset"
    else:
        peak = max(s["VmRSS"] for s in seen) - base
        method = "rss-samples"
    return {"peak_bytes": max(0, peak), "baseline_bytes": base,
            "method": MEMORY_METHODS[method].format(runs=runs)}


def peak_memory_command(raw: str) -> dict:
    """`peak-memory SPEC_JSON`: the peak memory of one model in this (fresh) process. SPEC has
    the runtime settings of the request it comes from and the model's path."""
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        raise AgentFailure("bad_request", f"peak-memory: spec is not JSON: {error_text(exc)}",
                           EXIT_BAD_REQUEST) from exc
    if not isinstance(spec, dict):
        raise AgentFailure("bad_request", "peak-memory: spec is not a JSON object",
                           EXIT_BAD_REQUEST)
    req = validate_request({**{k: spec.get(k) for k in ("runtime", "threads", "graph_opt",
                                                        "delegate")},
                            "warmup": 0, "runs": 1, "rounds": 1,
                            "models": [{"id": "model", "path": spec.get("path")}]})
    runs = _int_field(spec, "runs", 1)
    import numpy as np  # before the baseline: the timed process has it loaded too

    backend = BACKENDS[req["runtime"]](req)
    rng = np.random.default_rng(0)
    path = req["models"][0]["path"]
    return {"status": "ok", "agent_version": AGENT_VERSION,
            **peak_memory_here(lambda: backend.load(path, rng), runs)}


def measure_peak_memory(req: dict, paths: dict) -> dict:
    """Model id -> {"peak_bytes", "baseline_bytes", "method"[, "error"]} for every model id in
    `paths` (id -> model file), each measured by `peak-memory` in a process of its own with the
    request's runtime settings; a failure is that model's null figure with its error."""
    out = {}
    for model_id, path in paths.items():
        if req["runtime"] in GPU_RUNTIMES:
            out[model_id] = {"peak_bytes": None, "baseline_bytes": None,
                             "method": "not available (a GPU runtime: the model's memory is "
                                       "on the device, not in the process's resident set)"}
            continue
        spec = {k: req[k] for k in ("runtime", "threads", "graph_opt", "delegate")}
        spec.update(path=path, runs=MEMORY_RUNS)
        argv = [sys.executable, os.path.abspath(__file__), "peak-memory", json.dumps(spec)]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=MEMORY_TIMEOUT_S,
                                  check=False, env={**os.environ, **MEMORY_ENV})
        except (OSError, subprocess.SubprocessError) as exc:
            error = error_text(exc)
        else:
            reply = parse_reply(done.stdout)
            if reply.get("status") == "ok":
                out[model_id] = {k: reply.get(k) for k in ("peak_bytes", "baseline_bytes",
                                                           "method")}
                continue
            tail = done.stderr.decode("utf-8", "replace").strip()[-300:]
            error = str(reply.get("error") or f"exit {done.returncode}: {tail}")
        out[model_id] = {"peak_bytes": None, "baseline_bytes": None,
                         "method": "not available (its process failed)", "error": error}
    return out


def parse_reply(stdout: bytes) -> dict:
    """The one JSON object an agent process printed, or {} when it printed none."""
    try:
        reply = json.loads(stdout.decode("utf-8", "replace"))
    except ValueError:
        return {}
    return reply if isinstance(reply, dict) else {}


# A timed call whose thread ran for less CPU time than the call's wall time, by more than this
# share of the call plus a floor, was descheduled: another process ran on its core meanwhile
# (a time slice is milliseconds, so a call longer than one is slowed by it as a whole while a
# microsecond probe slips between slices). Such a call says nothing about the model.
DESCHEDULED_SHARE = 0.10
DESCHEDULED_FLOOR_NS = 50_000


def descheduled(wall_ns: int, cpu_ns: int) -> bool:
    """Whether a call of `wall_ns` whose thread got `cpu_ns` of CPU was descheduled."""
    return wall_ns - cpu_ns > DESCHEDULED_SHARE * wall_ns + DESCHEDULED_FLOOR_NS


def cpu_clock_for(threads: int, self_timed: bool):
    """The clock that checks timed calls for descheduling, or None where it cannot: with one
    thread the runtime computes on the calling thread, so its CPU time is the call's work; with
    a thread pool (or a device that times itself) the calling thread's CPU time says nothing."""
    clock = getattr(time, "thread_time_ns", None)
    if threads != 1 or self_timed or clock is None:
        return None
    try:
        clock()
    except OSError:  # a platform without a per-thread CPU clock
        return None
    return clock


def time_calls(run, count: int, self_timed: bool, clock, cpu_clock=None,
               tally: dict | None = None, retake: bool = True) -> list[float]:
    """`count` timed calls in ms: the host clock around each call, or what a self-timed backend
    (device events) returns. With `cpu_clock`, a descheduled call (see `descheduled`) is timed
    again (`retake`), up to `count` extra calls; past that it is kept. `tally` counts both
    ("retaken", "kept")."""
    samples = [0.0] * count
    if self_timed:
        for i in range(count):
            samples[i] = float(run())
        return samples
    if cpu_clock is None:
        for i in range(count):
            t0 = clock()
            run()
            samples[i] = (clock() - t0) / 1e6
        return samples
    retakes = count if retake else 0
    i = 0
    while i < count:
        c0 = cpu_clock()
        t0 = clock()
        run()
        wall = clock() - t0
        cpu = cpu_clock() - c0
        if descheduled(wall, cpu):
            if retakes > 0:
                retakes -= 1
                if tally is not None:
                    tally["retaken"] += 1
                continue
            if tally is not None:
                tally["kept"] += 1
        samples[i] = wall / 1e6
        i += 1
    return samples


SETTLE_WINDOW = 3  # calls per window: settled when a window is not faster than the one before
SETTLE_DROP = 0.02  # ... by more than this fraction of the earlier window's median
SETTLE_MAX_CALLS = 40  # a visit's untimed calls at most (a network settles within ~20 here)
SETTLE_MAX_S = 2.0  # and at most this long


def settle(run, self_timed: bool, clock) -> int:
    """Untimed calls until the model's times stop falling; how many were made.

    A whole network does not run at its steady speed on the first calls after other models
    ran: on LiteRT a MobileNetV2 of 7 ms takes ~20 consecutive calls to come down from 1.25x
    (after a memory sweep or a 1 s pause, 1.15-1.3x), ONNX Runtime's networks 3-5 calls from
    1.2-1.7x; single kernels 1-2 calls. Timed from a visit's first call, a network's record
    depended on how many visits the stopping rule allowed and on what ran before it
    (docs/measurement.md, section 1). Settled when the median of the last SETTLE_WINDOW calls
    is not SETTLE_DROP below the median of the window before."""
    times: list[float] = []
    started = clock()
    while len(times) < SETTLE_MAX_CALLS and (clock() - started) / 1e9 < SETTLE_MAX_S:
        times.extend(time_calls(run, 1, self_timed, clock))
        if len(times) >= 2 * SETTLE_WINDOW:
            recent = sorted(times[-SETTLE_WINDOW:])[SETTLE_WINDOW // 2]
            before = sorted(times[-2 * SETTLE_WINDOW:-SETTLE_WINDOW])[SETTLE_WINDOW // 2]
            if recent >= before * (1.0 - SETTLE_DROP):
                break
    return len(times)


class Timer:
    """Times `count` calls of one model (`time_calls`) and keeps its result's books: the
    descheduled calls, the untimed calls that settled it first (models in `settling`, see
    `settle`), and the energy the device's sensor saw over the timed calls made (retakes
    included) where there is a sensor."""

    def __init__(self, by_id: dict, self_timed: bool, clock, cpu_clock=None,
                 retake: bool = True, meter: EnergyMeter | None = None,
                 settling: frozenset = frozenset()) -> None:
        self.by_id, self.self_timed, self.clock = by_id, self_timed, clock
        self.cpu_clock, self.retake, self.meter = cpu_clock, retake, meter
        self.settling = settling

    def __call__(self, model_id, run, count: int) -> list:
        result = self.by_id[model_id]
        if model_id in self.settling:
            result.setdefault("settle_calls", []).append(settle(run, self.self_timed,
                                                                self.clock))
        tally = result["descheduled"]
        retaken = tally["retaken"]
        start = self.meter.start() if self.meter is not None else None
        samples = time_calls(run, count, self.self_timed, self.clock, self.cpu_clock, tally,
                             self.retake)
        if start is not None:
            energy = result.setdefault("energy", {"joules": 0.0, "calls": 0})
            energy["joules"] += self.meter.joules(start)
            energy["calls"] += count + tally["retaken"] - retaken
        return samples


def measure(req: dict, base_dir: str) -> dict:
    """Load every model, warm each up, then time them in interleaved rounds.

    Interleaving spreads slow drifts (thermal throttling, a noisy neighbour) over all models of
    the batch instead of biasing whichever model happened to run during the drift. Each round
    visits the models in a new random order: a microsecond kernel's speed depends on which
    model ran just before it (cache, allocator and predictor state it leaves behind) by up to
    ~10% here, so a fixed order would bake one neighbour's effect into every sample and two
    measurements in different batches would disagree; shuffled, the effect averages out and
    what remains shows up honestly in the spread of the samples.

    Fixed protocol (no "stop" in the request): `rounds` rounds of `runs` calls per model. With
    a stopping rule: rounds of `runs` calls continue over the models that are not done yet; a
    model is done once it has min_runs samples and the confidence interval of its median is
    within the target relative width, or when it hits max_runs or max_seconds. Tracked models
    (the reference probe) keep going while any other model does. Each result then says why it
    stopped and the width it achieved.
    """
    import numpy as np

    backend = BACKENDS[req["runtime"]](req)
    affinity = req["affinity"]
    if affinity is not None:
        try:
            os.sched_setaffinity(0, set(affinity))
        except (OSError, AttributeError, ValueError) as exc:
            raise AgentFailure("bad_request", f"cannot set CPU affinity {affinity}: "
                               f"{error_text(exc)}", EXIT_BAD_REQUEST) from exc
    cpu = affinity[0] if affinity else 0
    memory = measure_peak_memory(req, {m["id"]: model_path(m, base_dir)
                                       for m in req["models"] if m["memory"]})
    rng = np.random.default_rng(0)
    order_rng = random.Random(0)  # the order of models within each round
    rule = req.get("stop")
    stream = req.get("single_stream")
    steps = stream["replicates"] if stream else 1 if rule else req["rounds"]
    progress = Progress([m["id"] for m in req["models"]], steps)
    results = []
    runners = {}
    tracked = {m["id"] for m in req["models"] if m.get("track")}
    for m in req["models"]:
        results.append({"id": m["id"], "status": "ok", "samples_ms": [], "error": "",
                        "descheduled": {"retaken": 0, "kept": 0}})
        if m["id"] in memory:
            results[-1]["memory"] = memory[m["id"]]
        try:
            runners[m["id"]] = backend.load(model_path(m, base_dir), rng)
        except Exception as exc:  # one bad model must not stop the batch
            results[-1].update(status="failed", error=f"load failed: {error_text(exc)}")
            progress.finish(m["id"])
    by_id = {r["id"]: r for r in results}

    def fail(model_id: str, stage: str, exc: BaseException) -> None:
        by_id[model_id].update(status="failed", samples_ms=[],
                               error=f"{stage} failed: {error_text(exc)}")
        by_id[model_id].pop("stop", None)
        by_id[model_id].pop("settle_calls", None)
        runners.pop(model_id, None)
        progress.finish(model_id)

    for model_id, run in list(runners.items()):
        try:
            for _ in range(req["warmup"]):
                run()
        except Exception as exc:
            fail(model_id, "warmup", exc)

    facts_before = dynamic_facts(cpu)
    clock = time.perf_counter_ns
    runs = req["runs"]
    self_timed = bool(getattr(backend, "self_timed", False))
    cpu_clock = cpu_clock_for(req["threads"], self_timed)
    meter = energy_meter()
    # a single stream times each model's queries back to back: nothing to settle between them
    settling = frozenset() if stream is not None else frozenset(
        m["id"] for m in req["models"] if m["settle"])
    timer = Timer(by_id, self_timed, clock, cpu_clock, req["retake_descheduled"], meter,
                  settling)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed call is noise, not model latency
    try:
        if stream is not None:
            probes = {m["id"] for m in req["models"] if m["probe"]}
            measure_single_stream(runners, by_id, probes, stream, timer, clock, fail,
                                  order_rng, progress)
        elif rule is None:
            for _ in range(req["rounds"]):
                order = list(runners.items())
                order_rng.shuffle(order)
                for model_id, run in order:
                    try:
                        samples = timer(model_id, run, runs)
                    except Exception as exc:
                        fail(model_id, "run", exc)
                        continue
                    by_id[model_id]["samples_ms"].append(samples)
                    progress.advance(model_id)
        else:
            measure_until_stop(runners, by_id, tracked, rule, runs, timer, clock, fail,
                               order_rng, progress)
    finally:
        if gc_was_enabled:
            gc.enable()
    for model_id in by_id:
        progress.finish(model_id)
    facts_after = dynamic_facts(cpu)
    return {"status": "ok", "agent_version": AGENT_VERSION, "runtime": req["runtime"],
            "runtime_version": backend.version,
            "settings": {**{k: req[k] for k in ("threads", "warmup", "runs", "rounds",
                                                 "graph_opt", "delegate", "affinity", "stop",
                                                 "retake_descheduled", "single_stream")},
                         "thread_pool": "process" if ORT_PROCESS_POOL else "per model"},
            "descheduling_checked": cpu_clock is not None,
            "energy": {"method": energy_method(meter),
                       "resolution": meter.resolution if meter is not None else None},
            "facts_before": facts_before, "facts_after": facts_after, "results": results}


def model_path(model: dict, base_dir: str) -> str:
    """A request model's file: its path, relative to the request's folder unless absolute."""
    path = model["path"]
    return path if os.path.isabs(path) else os.path.join(base_dir, path)


def measure_until_stop(runners: dict, by_id: dict, tracked: set, rule: dict, runs: int,
                       timer: Timer, clock, fail, order_rng, progress=None) -> None:
    """Interleaved rounds under a stopping rule (see `measure`); fills each result's samples
    and its "stop" entry {"reason", "n", "ci_rel_width", "seconds"}."""
    pooled = {model_id: [] for model_id in runners}
    seconds = {model_id: 0.0 for model_id in runners}
    active = list(runners)
    first = True  # every model gets at least one round, tracked ones included
    while first or any(model_id not in tracked for model_id in active):
        first = False
        order = list(active)
        order_rng.shuffle(order)
        for model_id in order:
            run = runners.get(model_id)
            if run is None:  # failed meanwhile
                active.remove(model_id)
                continue
            is_tracked = model_id in tracked
            count = runs if is_tracked else min(runs, rule["max_runs"] - len(pooled[model_id]))
            t0 = clock()
            try:
                samples = timer(model_id, run, count)
            except Exception as exc:
                fail(model_id, "run", exc)
                active.remove(model_id)
                continue
            seconds[model_id] += (clock() - t0) / 1e9
            by_id[model_id]["samples_ms"].append(samples)
            pooled[model_id].extend(samples)
            reason = None if is_tracked else stop_reason(pooled[model_id], seconds[model_id],
                                                         rule)
            if reason is not None:
                active.remove(model_id)
                by_id[model_id]["stop"] = stop_entry(reason, pooled[model_id], seconds[model_id],
                                                     rule)
                if progress is not None:
                    progress.finish(model_id)
    for model_id in active:  # tracked models: stopped because every other model stopped
        by_id[model_id]["stop"] = stop_entry("tracked", pooled[model_id], seconds[model_id],
                                             rule)


STREAM_CHUNK = 16  # queries between checks of a single stream's minimums


def measure_single_stream(runners: dict, by_id: dict, probes: set, stream: dict,
                          timer: Timer, clock, fail, order_rng, progress=None) -> None:
    """MLPerf-style single stream: each model alone, one query after the other, until it has
    answered stream["queries"] queries and run stream["min_seconds"] seconds (probes: the
    queries only); `replicates` such runs per model, each a round of samples, the models
    visited in a shuffled order per replicate and replicates `pause_s` apart, so a replicate
    meets the device in another state. Fills each result's "stop" entry."""
    seconds = {model_id: 0.0 for model_id in runners}
    for replicate in range(stream["replicates"]):
        if replicate:
            time.sleep(stream["pause_s"])
        order = list(runners)
        order_rng.shuffle(order)
        for model_id in order:
            run = runners.get(model_id)
            if run is None:  # failed meanwhile
                continue
            minimum_ns = 0 if model_id in probes else stream["min_seconds"] * 1e9
            samples: list = []
            t0 = clock()
            try:
                while len(samples) < stream["queries"] or clock() - t0 < minimum_ns:
                    samples.extend(timer(model_id, run, STREAM_CHUNK))
            except Exception as exc:
                fail(model_id, "run", exc)
                continue
            seconds[model_id] += (clock() - t0) / 1e9
            by_id[model_id]["samples_ms"].append(samples)
            if progress is not None:
                progress.advance(model_id)
    for model_id, result in by_id.items():
        if result["status"] == "ok":
            pooled = [x for r in result["samples_ms"] for x in r]
            result["stop"] = {"reason": "single_stream", "n": len(pooled),
                              "ci_rel_width": None, "seconds": round(seconds[model_id], 6)}


def stop_entry(reason: str, samples: list, seconds: float, rule: dict) -> dict:
    width = ci_rel_width(samples, rule["confidence"])
    return {"reason": reason, "n": len(samples),
            "ci_rel_width": width if math.isfinite(width) else None,
            "seconds": round(seconds, 6)}


# --------------------------------------------------------------------------------------------
# entry point

USAGE = ("usage: latbench_agent.py facts [--work-dir DIR] [--module NAME ...] | "
         "measure REQUEST.json | peak-memory SPEC_JSON")


def run_command(argv: list[str]) -> dict:
    if not argv:
        raise AgentFailure("bad_request", USAGE, EXIT_BAD_REQUEST)
    command, args = argv[0], argv[1:]
    if command == "facts":
        work_dir = os.getcwd()
        modules = []
        if len(args) % 2:
            raise AgentFailure("bad_request", USAGE, EXIT_BAD_REQUEST)
        for index in range(0, len(args), 2):
            option, value = args[index], args[index + 1]
            if option == "--work-dir":
                work_dir = value
            elif option == "--module":
                modules.append(value)
            else:
                raise AgentFailure("bad_request", USAGE, EXIT_BAD_REQUEST)
        return {"status": "ok", **facts(work_dir, modules)}
    if command == "measure":
        if len(args) != 1:
            raise AgentFailure("bad_request", USAGE, EXIT_BAD_REQUEST)
        try:
            with open(args[0], encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, ValueError) as exc:
            raise AgentFailure("bad_request", f"cannot read request {args[0]}: "
                               f"{error_text(exc)}", EXIT_BAD_REQUEST) from exc
        req = validate_request(raw)
        if req["runtime"] == "onnxruntime" and req["threads"] > 1:
            with contextlib.suppress(ImportError):  # OrtBackend reports the runtime missing
                use_process_pool(req["threads"])
        return measure(req, os.path.dirname(os.path.abspath(args[0])))
    if command == "peak-memory":
        if len(args) != 1:
            raise AgentFailure("bad_request", USAGE, EXIT_BAD_REQUEST)
        return peak_memory_command(args[0])
    raise AgentFailure("bad_request", f"unknown command {command!r}; {USAGE}", EXIT_BAD_REQUEST)


def main(argv: list[str] | None = None) -> int:
    # Keep the real stdout for our one JSON object; everything else written to fd 1 (native
    # runtime logs, stray prints) goes to stderr.
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    code = 0
    try:
        result = run_command(sys.argv[1:] if argv is None else argv)
    except AgentFailure as exc:
        result = {"status": "error", "kind": exc.kind, "error": str(exc),
                  "agent_version": AGENT_VERSION}
        code = exc.code
    except Exception as exc:  # report any crash in the protocol, not a traceback
        result = {"status": "error", "kind": "internal", "error": error_text(exc),
                  "agent_version": AGENT_VERSION}
        code = EXIT_INTERNAL
    sys.stdout.flush()
    data = (json.dumps(result) + "\n").encode("utf-8")
    try:
        while data:
            data = data[os.write(out_fd, data):]
    finally:
        os.dup2(out_fd, 1)
        os.close(out_fd)
    return code


if __name__ == "__main__":
    sys.exit(main())
