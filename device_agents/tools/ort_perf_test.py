"""ONNX Runtime's `onnxruntime_perf_test`: the flags latbench drives it with and a pure parser.

latbench pushes the user's binary with the .onnx files of a batch and runs, per model and round,

    onnxruntime_perf_test -I -m times -r RUNS -x THREADS -e cpu -o LEVEL MODEL.onnx

(-I: generate random inputs, so no test-data folder is needed; -o: graph optimisation level 0,
1, 2 or 99). The tool prints (ORT 1.x; the "Average" line reads "cost total:" in newer
versions, and the latency lines come only from versions that record per-run times):

    Session creation time cost: 0.0507 s
    First inference time cost: 3 ms
    Total inference time cost: 0.994 s
    Total inference requests: 300
    Average inference time cost: 3.31333 ms
    Total inference run time: 1.0003 s
    Number of inferences per second: 299.91
    Avg CPU usage: 98 %
    Peak working set size: 33554432 bytes
    Min Latency: 0.0029 s
    Max Latency: 0.0098 s
    P50 Latency: 0.0032 s
    P90 Latency: 0.0037 s
    P95 Latency: 0.0039 s
    P99 Latency: 0.0056 s
    P999 Latency: 0.0098 s

The tool reports no standard deviation; latbench records NaN for it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from latbench.errors import ParseError

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_FIELDS = {
    "session_s": rf"Session creation time cost:\s*({_NUM})\s*s",
    "first_ms": rf"First inference time cost:\s*({_NUM})\s*ms",
    "total_s": rf"Total inference time cost:\s*({_NUM})\s*s",
    "requests": r"Total inference requests:\s*(\d+)",
    "average_ms": rf"Average inference time cost(?: total)?:\s*({_NUM})\s*ms",
    "run_s": rf"Total inference run time:\s*({_NUM})\s*s",
    "min_s": rf"Min Latency:\s*({_NUM})\s*s",
    "max_s": rf"Max Latency:\s*({_NUM})\s*s",
    "p50_s": rf"P50 Latency:\s*({_NUM})\s*s",
    "p90_s": rf"P90 Latency:\s*({_NUM})\s*s",
    "p95_s": rf"P95 Latency:\s*({_NUM})\s*s",
    "p99_s": rf"P99 Latency:\s*({_NUM})\s*s",
    "peak_bytes": r"Peak working set size:\s*(\d+)",
}
OPT_LEVELS = {"disable": 0, "basic": 1, "extended": 2, "all": 99}
PEAK_METHOD = ("onnxruntime_perf_test: the tool process's peak working set (its largest "
               "resident set, whole process)")


@dataclass(frozen=True)
class PerfTestResult:
    """Figures of one run in milliseconds (None where this version does not print them)."""

    requests: int
    average_ms: float
    first_ms: float | None = None
    session_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    peak_bytes: int | None = None


def parse_perf_test(text: str) -> PerfTestResult:
    """Parse onnxruntime_perf_test output; ParseError if the run's figures are missing."""
    found: dict[str, str] = {}
    for name, pattern in _FIELDS.items():
        matches = re.findall(pattern, text)
        if matches:
            found[name] = matches[-1]  # the last run's figures
    if "average_ms" not in found or "requests" not in found:
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
        raise ParseError("onnxruntime_perf_test output has no 'Average inference time cost' "
                         f"or 'Total inference requests' line (last lines: {tail!r})")

    def ms(name: str, scale: float) -> float | None:
        return float(found[name]) * scale if name in found else None

    return PerfTestResult(
        requests=int(found["requests"]), average_ms=float(found["average_ms"]),
        first_ms=ms("first_ms", 1.0), session_ms=ms("session_s", 1e3),
        min_ms=ms("min_s", 1e3), max_ms=ms("max_s", 1e3), p50_ms=ms("p50_s", 1e3),
        p90_ms=ms("p90_s", 1e3), p95_ms=ms("p95_s", 1e3), p99_ms=ms("p99_s", 1e3),
        peak_bytes=int(found["peak_bytes"]) if "peak_bytes" in found else None)


@dataclass(frozen=True)
class PerfTestFlags:
    """The flags of one run; `extra` (the user's, from the inventory) go before the model."""

    threads: int = 1
    runs: int = 20
    graph_opt: str = "all"
    extra: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        if self.graph_opt not in OPT_LEVELS:
            raise ParseError(f"unknown graph_opt {self.graph_opt!r} for onnxruntime_perf_test")
        return ["-I", "-m", "times", "-r", str(self.runs), "-x", str(self.threads), "-e", "cpu",
                "-o", str(OPT_LEVELS[self.graph_opt]), *self.extra]

    def argv(self, binary: str, model: str) -> list[str]:
        return [binary, *self.flags(), model]

    def text(self) -> str:
        return shlex.join(self.flags())
