#!/usr/bin/env python3
"""latbench device agent: report device facts and time models with one runtime.

Pushed to a device and run there as a standalone script (Python >= 3.7, stdlib + numpy + one
runtime; nothing of latbench is importable on a device):

    python3 latbench_agent.py facts [--work-dir DIR]
    python3 latbench_agent.py measure REQUEST.json

It prints exactly one JSON object on stdout. Success: exit 0 with {"status": "ok", ...}. A fatal
error (bad request, runtime missing) exits non-zero with {"status": "error", "kind": ...,
"error": ...}. Anything the runtime itself prints to stdout (native logging) is diverted to
stderr so it cannot corrupt that object.

The agent never executes anything it receives: it only loads model files into the runtime.
"""

from __future__ import annotations

import gc
import glob
import json
import os
import platform
import shutil
import sys
import time

AGENT_VERSION = "1"

RUNTIMES = ("onnxruntime", "litert")
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
    """Thermal zones as [{"zone", "name", "celsius"}]; None when there are none (VMs)."""
    zones = []
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        milli = read_int(os.path.join(zone, "temp"))
        if milli is None:
            continue
        zones.append({"zone": os.path.basename(zone),
                      "name": read_text(os.path.join(zone, "type")) or os.path.basename(zone),
                      "celsius": milli / 1000.0})
    return zones or None


def cpufreq(cpu: int, item: str) -> int | None:
    return read_int(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/{item}")


def load_average() -> list[float] | None:
    try:
        return [round(x, 3) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def dynamic_facts(cpu: int = 0) -> dict:
    """What drifts during a measurement: temperatures, clock, load. Taken before and after."""
    return {"time_unix": time.time(), "temps_c": temperatures(), "freq_cpu": cpu,
            "cur_freq_khz": cpufreq(cpu, "scaling_cur_freq"), "load_avg": load_average()}


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


def runtime_versions() -> dict[str, str | None]:
    return {"onnxruntime": module_version("onnxruntime", "onnxruntime"),
            "ai_edge_litert": module_version("ai_edge_litert", "ai-edge-litert"),
            "tflite_runtime": module_version("tflite_runtime", "tflite-runtime")}


def free_bytes(path: str) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def facts(work_dir: str) -> dict:
    try:
        import numpy

        numpy_version: str | None = numpy.__version__
    except ImportError:
        numpy_version = None
    online = parse_cpu_list(read_text("/sys/devices/system/cpu/online"))
    return {
        "agent_version": AGENT_VERSION,
        "os": platform.system() or None,
        "kernel": platform.release() or None,
        "machine": platform.machine() or None,
        "cpu_model": parse_cpu_model(read_text("/proc/cpuinfo")) or platform.processor() or None,
        "cores": os.cpu_count(),
        "cores_online": len(online) if online else None,
        "governor": read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cur_freq_khz": cpufreq(0, "scaling_cur_freq"),
        "max_freq_khz": cpufreq(0, "cpuinfo_max_freq"),
        "temps_c": temperatures(),
        "load_avg": load_average(),
        "python": platform.python_version(),
        "numpy": numpy_version,
        "runtimes": runtime_versions(),
        "work_dir": os.path.abspath(work_dir),
        "free_bytes": free_bytes(work_dir),
    }


# --------------------------------------------------------------------------------------------
# measure

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
           "affinity": req.get("affinity")}
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
                or not isinstance(m.get("path"), str) or not m["id"] or not m["path"]):
            raise bad(f"each model must be {{'id': str, 'path': str}}, got {m!r}")
        if m["id"] in seen:
            raise bad(f"duplicate model id {m['id']!r}")
        seen.add(m["id"])
    out["models"] = [{"id": m["id"], "path": m["path"]} for m in models]
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

    def load(self, path: str, rng):
        """Return a zero-argument callable doing one timed inference."""
        ort = self.ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.req["threads"]
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.req["graph_opt"]]
        opts.log_severity_level = 3
        sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        feeds = {}
        for inp in sess.get_inputs():
            if inp.type not in ORT_TYPES:
                raise ValueError(f"input {inp.name} has unsupported type {inp.type}")
            feeds[inp.name] = random_array(rng, inp.shape, ORT_TYPES[inp.type])
        run = sess.run
        return lambda: run(None, feeds)


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


BACKENDS = {"onnxruntime": OrtBackend, "litert": LiteRTBackend}


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 2000 else text[:1997] + "..."


def measure(req: dict, base_dir: str) -> dict:
    """Load every model, warm each up, then time them in interleaved rounds.

    Interleaving spreads slow drifts (thermal throttling, a noisy neighbour) over all models of
    the batch instead of biasing whichever model happened to run during the drift.
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
    rng = np.random.default_rng(0)
    results = []
    runners = {}
    for m in req["models"]:
        results.append({"id": m["id"], "status": "ok", "samples_ms": [], "error": ""})
        path = m["path"] if os.path.isabs(m["path"]) else os.path.join(base_dir, m["path"])
        try:
            runners[m["id"]] = backend.load(path, rng)
        except Exception as exc:  # one bad model must not stop the batch
            results[-1].update(status="failed", error=f"load failed: {error_text(exc)}")
    by_id = {r["id"]: r for r in results}

    def fail(model_id: str, stage: str, exc: BaseException) -> None:
        by_id[model_id].update(status="failed", samples_ms=[],
                               error=f"{stage} failed: {error_text(exc)}")
        runners.pop(model_id, None)

    for model_id, run in list(runners.items()):
        try:
            for _ in range(req["warmup"]):
                run()
        except Exception as exc:
            fail(model_id, "warmup", exc)

    facts_before = dynamic_facts(cpu)
    clock = time.perf_counter_ns
    runs = req["runs"]
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed call is noise, not model latency
    try:
        for _ in range(req["rounds"]):
            for model_id, run in list(runners.items()):
                samples = [0.0] * runs
                try:
                    for i in range(runs):
                        t0 = clock()
                        run()
                        samples[i] = (clock() - t0) / 1e6
                except Exception as exc:
                    fail(model_id, "run", exc)
                    continue
                by_id[model_id]["samples_ms"].append(samples)
    finally:
        if gc_was_enabled:
            gc.enable()
    facts_after = dynamic_facts(cpu)
    return {"status": "ok", "agent_version": AGENT_VERSION, "runtime": req["runtime"],
            "runtime_version": backend.version,
            "settings": {k: req[k] for k in ("threads", "warmup", "runs", "rounds",
                                              "graph_opt", "delegate", "affinity")},
            "facts_before": facts_before, "facts_after": facts_after, "results": results}


# --------------------------------------------------------------------------------------------
# entry point

USAGE = "usage: latbench_agent.py facts [--work-dir DIR] | measure REQUEST.json"


def run_command(argv: list[str]) -> dict:
    if not argv:
        raise AgentFailure("bad_request", USAGE, EXIT_BAD_REQUEST)
    command, args = argv[0], argv[1:]
    if command == "facts":
        work_dir = os.getcwd()
        if args[:1] == ["--work-dir"] and len(args) == 2:
            work_dir = args[1]
        elif args:
            raise AgentFailure("bad_request", USAGE, EXIT_BAD_REQUEST)
        return {"status": "ok", **facts(work_dir)}
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
        return measure(req, os.path.dirname(os.path.abspath(args[0])))
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
