"""Runners: model files -> timed samples on a device with one runtime.

Importing this package registers the built-in runners (onnxruntime, litert) in `RUNNERS`.
"""

from __future__ import annotations

from bench.runners.base import (
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
    RunSettings,
    get_runner,
    register_runner,
)
from bench.runners.litert import LiteRTRunner
from bench.runners.onnxruntime import OnnxRuntimeRunner

__all__ = [
    "OVERHEAD_ID",
    "OVERHEAD_SPEC",
    "PROBES",
    "REFERENCE_ID",
    "REFERENCE_SPEC",
    "RUNNERS",
    "AgentRunner",
    "BatchResult",
    "LiteRTRunner",
    "Measurement",
    "ModelFile",
    "OnnxRuntimeRunner",
    "RunSettings",
    "Runner",
    "get_runner",
    "register_runner",
]
