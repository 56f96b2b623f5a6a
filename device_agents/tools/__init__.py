"""Drivers and pure output parsers for native benchmark tools run on devices.

A tool-based runtime pushes the user's own binary (its path is given in the fleet inventory) and
parses what it prints; the raw output and the exact flags are kept with every record, so a
number can always be traced back to the text it came from.
"""

from __future__ import annotations

# Runtime name (as runners and inventories call it) -> the inventory field naming its binary.
TOOL_RUNTIMES: dict[str, str] = {
    "tflite-benchmark-model": "benchmark_model",
    "onnxruntime-perf-test": "onnxruntime_perf_test",
}

__all__ = ["TOOL_RUNTIMES"]
