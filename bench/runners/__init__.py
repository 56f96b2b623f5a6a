"""Runners: model files -> timed samples on a device with one runtime.

Importing this package registers the built-in runners in `RUNNERS` (and their needs in the
device layer's runtime registry): onnxruntime and litert (through the Python agent),
tflite-benchmark-model and onnxruntime-perf-test (native tools), onnxruntime-cuda and torch-cuda
(GPU, through the agent; unavailable without a CUDA device). A new runtime is one class with
`@register_runner(name)`; see base.py.
"""

from __future__ import annotations

from latbench.bench.runners.base import (
    MEMORY_ID,
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
    ProgressCallback,
    Runner,
    RunnerBase,
    RunSettings,
    get_runner,
    register_runner,
    require_runtime,
    unregister_runner,
)
from latbench.bench.runners.gpu import OnnxRuntimeCudaRunner, TorchCudaRunner
from latbench.bench.runners.litert import LiteRTRunner
from latbench.bench.runners.native import BenchmarkModelRunner, NativeToolRunner, PerfTestRunner
from latbench.bench.runners.onnxruntime import OnnxRuntimeRunner

__all__ = [
    "MEMORY_ID",
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
    "ProgressCallback",
    "RunSettings",
    "Runner",
    "RunnerBase",
    "TorchCudaRunner",
    "get_runner",
    "register_runner",
    "require_runtime",
    "unregister_runner",
]
