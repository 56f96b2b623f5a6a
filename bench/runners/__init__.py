"""Runners: model files -> timed samples on a device with one runtime.

Importing this package registers the built-in runners in `RUNNERS`: onnxruntime and litert
(through the Python agent), tflite-benchmark-model and onnxruntime-perf-test (native tools),
onnxruntime-cuda and torch-cuda (GPU, through the agent; unavailable without a CUDA device).
"""

from __future__ import annotations

from latbench.bench.runners.base import (
    OVERHEAD_ID,
    OVERHEAD_SPEC,
    PROBES,
    REFERENCE_ID,
    REFERENCE_SPEC,
    RUNNERS,
    AgentRunner,
    BatchResult,
    Measurement,
    ModelFile,
    Runner,
    RunnerBase,
    RunSettings,
    get_runner,
    register_runner,
)
from latbench.bench.runners.gpu import (
    GPU_RUNTIMES,
    OnnxRuntimeCudaRunner,
    TorchCudaRunner,
    require_runtime,
)
from latbench.bench.runners.litert import LiteRTRunner
from latbench.bench.runners.native import BenchmarkModelRunner, NativeToolRunner, PerfTestRunner
from latbench.bench.runners.onnxruntime import OnnxRuntimeRunner

__all__ = [
    "GPU_RUNTIMES",
    "OVERHEAD_ID",
    "OVERHEAD_SPEC",
    "PROBES",
    "REFERENCE_ID",
    "REFERENCE_SPEC",
    "RUNNERS",
    "AgentRunner",
    "BatchResult",
    "BenchmarkModelRunner",
    "LiteRTRunner",
    "Measurement",
    "ModelFile",
    "NativeToolRunner",
    "OnnxRuntimeCudaRunner",
    "OnnxRuntimeRunner",
    "PerfTestRunner",
    "RunSettings",
    "Runner",
    "RunnerBase",
    "TorchCudaRunner",
    "get_runner",
    "register_runner",
    "require_runtime",
]
