"""TFLite's `benchmark_model`: the flags latbench drives it with and a pure parser of its output.

The binary is the user's (built for the phone's ABI; its local path is in the fleet inventory);
latbench pushes it with the .tflite files of a batch and runs it once per model and round:

    benchmark_model --graph=M.tflite --num_threads=T --warmup_runs=W --warmup_min_secs=0
                    --num_runs=R --min_secs=0 --use_xnnpack=true|false --use_gpu=true|false
                    --enable_op_profiling=true|false

(`--*_min_secs=0` makes the counts exact; otherwise the tool keeps running until half a second
has passed.) The tool logs through TFLITE_LOG, i.e. mostly on stderr, so the parser reads both
streams. What it understands (TF 2.x formats; a leading "INFO: " is optional everywhere):

    Running benchmark for at least 10 iterations and at least 0 seconds ...
    count=10 first=1711 curr=1525 min=1498 max=1711 avg=1546.1 std=61
    Running benchmark for at least 20 iterations and at least 0 seconds ...
    count=20 first=1530 curr=1503 min=1490 max=1611 avg=1519.3 std=27 p5=1492 median=1510 p95=1599
    The input model file size (MB): 4.27635
    Inference timings in us: Init: 3512, First inference: 1711, Warmup (avg): 1546.1,
        Inference (avg): 1519.3                                  (one line)
    Memory footprint delta from the start of the tool (MB): init=2.1 overall=3.4
    Overall peak memory footprint (MB) via periodic monitoring: 93.2383

The memory delta line reads "Peak memory footprint (MB): init=... overall=..." in older versions
(the largest resident set above the tool's start, after init and overall); the periodic peak
(the tool process's largest resident set, sampled every 50 ms by a monitor thread) only comes
with --report_peak_memory_footprint=true.

A stat line is written by TensorFlow's Stat<T>::OutputToStream: "count=N curr=X(all same)" when
every sample is equal, and " p5= median= p95=" appended by newer versions. With
--enable_op_profiling the tool also prints the "Run Order" and "Summary by node type" tables,
which are parsed into rows. The parser is pure (text in, dataclasses out): it never runs the
tool and is tested on sample outputs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from latbench.errors import ParseError

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|-?inf"
_STAT_RE = re.compile(
    rf"count=(?P<count>\d+)"
    rf"(?: first=(?P<first>{_NUM}))?"
    rf"(?: curr=(?P<curr>{_NUM}))?"
    rf"(?P<same>\(all same\))?"
    rf"(?: min=(?P<min>{_NUM}) max=(?P<max>{_NUM}) avg=(?P<avg>{_NUM}) std=(?P<std>{_NUM}))?"
    rf"(?: p5=(?P<p5>{_NUM}) median=(?P<median>{_NUM}) p95=(?P<p95>{_NUM}))?")
_PREFIX_RE = re.compile(r"^\s*(?:INFO|WARNING|VERBOSE):\s*")
_TIMINGS_RE = re.compile(
    rf"Inference timings in us: Init: (?P<init>{_NUM}), First inference: (?P<first>{_NUM}), "
    rf"Warmup \(avg\): (?P<warmup>{_NUM}), Inference \(avg\): (?P<inference>{_NUM})")
_OLD_TIMINGS_RE = re.compile(  # TF 1.x: "Average inference timings in us: Warmup: ..."
    rf"Average inference timings in us: Warmup: (?P<warmup>{_NUM}), Init: (?P<init>{_NUM}), "
    rf"(?:no stats|Inference): (?P<inference>{_NUM})")
_MEMORY_RE = re.compile(
    rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
    rf"init=(?P<init>{_NUM}) overall=(?P<overall>{_NUM})")
_PEAK_RE = re.compile(
    rf"Overall peak memory footprint \(MB\) via periodic monitoring:\s*(?P<peak>{_NUM})")
_MODEL_SIZE_RE = re.compile(rf"The input model file size \(MB\):\s*(?P<size>{_NUM})")
_TABLE_TITLE_RE = re.compile(r"^=+ (?P<title>.+?) =+$")
_ERROR_RE = re.compile(r"^\s*(?:ERROR:|E\s|Failed|.*[Ee]rror)")


@dataclass(frozen=True)
class RunStats:
    """One stat line, in microseconds; `first`/min/max/avg/std are the tool's own figures
    (std is the population std). Percentiles only from newer versions of the tool."""

    count: int
    curr_us: float
    first_us: float | None
    min_us: float
    max_us: float
    avg_us: float
    std_us: float
    p5_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None


@dataclass(frozen=True)
class OpRow:
    """One row of the op-profiling "Run Order" table (times in ms, as printed)."""

    node_type: str
    first_ms: float
    avg_ms: float
    percent: float
    cdf_percent: float
    mem_kb: float
    times_called: int
    name: str


@dataclass(frozen=True)
class NodeTypeRow:
    """One row of the op-profiling "Summary by node type" table."""

    node_type: str
    count: int
    avg_ms: float
    percent: float
    cdf_percent: float
    mem_kb: float
    times_called: int


@dataclass(frozen=True)
class BenchmarkModelResult:
    """What one benchmark_model run reported."""

    inference: RunStats
    warmup: RunStats | None = None
    init_us: float | None = None
    first_inference_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    memory_init_mb: float | None = None
    memory_overall_mb: float | None = None
    peak_memory_mb: float | None = None  # periodic monitoring (--report_peak_memory_footprint)
    model_size_mb: float | None = None
    ops: tuple[OpRow, ...] = ()
    node_types: tuple[NodeTypeRow, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def _strip(line: str) -> str:
    return _PREFIX_RE.sub("", line.rstrip("\r\n"))


def parse_stat_line(line: str) -> RunStats | None:
    """A 'count=...' line -> RunStats; None for 'count=0' or a line that is not a stat line."""
    text = _strip(line).strip()
    if not text.startswith("count="):
        return None
    m = _STAT_RE.match(text)
    if m is None or int(m["count"]) == 0 or m["curr"] is None:
        return None
    count, curr = int(m["count"]), float(m["curr"])
    if m["min"] is None:  # "(all same)" or a single sample: every figure is curr
        return RunStats(count, curr, curr, curr, curr, curr, 0.0, _float(m["p5"]),
                        _float(m["median"]), _float(m["p95"]))
    return RunStats(count, curr, _float(m["first"]), float(m["min"]), float(m["max"]),
                    float(m["avg"]), float(m["std"]), _float(m["p5"]), _float(m["median"]),
                    _float(m["p95"]))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("\t") if c.strip()]


def _tables(lines: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """Op-profiling tables after 'Regular Benchmark Runs' (else the last ones printed):
    title -> rows as {header: cell}."""
    start = 0
    for i, line in enumerate(lines):
        if "Profiling Info for Regular Benchmark Runs" in line:
            start = i
    tables: dict[str, list[dict[str, str]]] = {}
    i = start
    while i < len(lines):
        m = _TABLE_TITLE_RE.match(lines[i].strip())
        if m is None or i + 1 >= len(lines):
            i += 1
            continue
        header = [h.strip("[]").strip().lower() for h in _cells(lines[i + 1])]
        rows = []
        i += 2
        while i < len(lines) and lines[i].strip() and "\t" in lines[i]:
            cells = _cells(lines[i])
            if len(cells) >= len(header):
                # the name (last column) may hold spaces but no tabs
                rows.append(dict(zip(header, cells[:len(header) - 1] + ["\t".join(
                    cells[len(header) - 1:])], strict=True)))
            i += 1
        tables[m["title"]] = rows
    return tables


def _pct(text: str) -> float:
    return float(text.rstrip("%"))


def _op_rows(rows: list[dict[str, str]]) -> tuple[OpRow, ...]:
    out = []
    for r in rows:
        try:
            out.append(OpRow(r["node type"], float(r["first"]), float(r["avg ms"]),
                             _pct(r["%"]), _pct(r["cdf%"]), float(r["mem kb"]),
                             int(float(r["times called"])), r.get("name", "")))
        except (KeyError, ValueError) as exc:
            raise ParseError(f"benchmark_model op-profiling row {r} is malformed: {exc}") \
                from None
    return tuple(out)


def _type_rows(rows: list[dict[str, str]]) -> tuple[NodeTypeRow, ...]:
    out = []
    for r in rows:
        try:
            out.append(NodeTypeRow(r["node type"], int(r["count"]), float(r["avg ms"]),
                                   _pct(r["avg %"]), _pct(r["cdf %"]), float(r["mem kb"]),
                                   int(float(r["times called"]))))
        except (KeyError, ValueError) as exc:
            raise ParseError(f"benchmark_model node-type row {r} is malformed: {exc}") from None
    return tuple(out)


def parse_benchmark_model(text: str) -> BenchmarkModelResult:
    """Parse benchmark_model's output (stdout and stderr together); ParseError says what is
    missing and quotes the tool's own error lines when it failed."""
    lines = [_strip(line) for line in text.splitlines()]
    # Stat lines that are not inside the profiling summary ("Timings (microseconds): count=").
    stats = [s for s in (parse_stat_line(line) for line in lines) if s is not None]
    if not stats:
        errors = [ln.strip() for ln in lines if _ERROR_RE.match(ln)][-5:]
        hint = f"; its errors: {' | '.join(errors)}" if errors else ""
        raise ParseError(f"benchmark_model output has no timing line (count=...){hint}")
    joined = "\n".join(lines)
    timings = _TIMINGS_RE.search(joined) or _OLD_TIMINGS_RE.search(joined)
    memory = _MEMORY_RE.search(joined)
    peak = _PEAK_RE.search(joined)
    size = _MODEL_SIZE_RE.search(joined)
    tables = _tables(lines)
    notes = tuple(ln.strip() for ln in lines if ln.strip().startswith(("WARNING", "Note:")))
    gd = timings.groupdict() if timings else {}
    return BenchmarkModelResult(
        inference=stats[-1],
        warmup=stats[-2] if len(stats) >= 2 else None,
        init_us=_float(gd.get("init")),
        first_inference_us=_float(gd.get("first")),
        warmup_avg_us=_float(gd.get("warmup")),
        inference_avg_us=_float(gd.get("inference")),
        memory_init_mb=_float(memory["init"]) if memory else None,
        memory_overall_mb=_float(memory["overall"]) if memory else None,
        peak_memory_mb=_float(peak["peak"]) if peak else None,
        model_size_mb=_float(size["size"]) if size else None,
        ops=_op_rows(tables.get("Run Order", [])),
        node_types=_type_rows(tables.get("Summary by node type", [])),
        notes=notes,
    )


MIB = 1 << 20  # the tool's "MB" is KB / 1024


def memory_figure(output: str) -> tuple[int | None, str]:
    """(peak bytes or None, method) from a run's output: the periodic peak when the run had
    --report_peak_memory_footprint=true, else the largest resident set above the tool's start,
    else None with what was missing."""
    try:
        result = parse_benchmark_model(output)
    except ParseError as exc:
        return None, f"not available (benchmark_model memory run: {exc})"
    # 0 (or less) is what a tool that cannot read memory on its platform prints
    if result.peak_memory_mb is not None and result.peak_memory_mb > 0:
        return round(result.peak_memory_mb * MIB), PEAK_METHOD
    if result.memory_overall_mb is not None and result.memory_overall_mb > 0:
        return round(result.memory_overall_mb * MIB), DELTA_METHOD
    return None, "not available (benchmark_model printed no memory footprint)"


PEAK_METHOD = ("benchmark_model --report_peak_memory_footprint: the tool process's peak "
               "resident set, sampled every 50 ms (whole process)")
DELTA_METHOD = ("benchmark_model: the tool process's largest resident set above its start "
                "(memory footprint delta, overall)")


@dataclass(frozen=True)
class BenchmarkModelFlags:
    """The flags of one run. `extra` are the user's own flags (from the inventory); a flag
    given there replaces latbench's flag of the same name."""

    num_threads: int = 1
    warmup_runs: int = 10
    num_runs: int = 20
    use_xnnpack: bool = True
    use_gpu: bool = False
    enable_op_profiling: bool = False
    report_peak_memory_footprint: bool = False  # given only when set: older tools lack it
    extra: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        ours = {"num_threads": self.num_threads, "warmup_runs": self.warmup_runs,
                "warmup_min_secs": 0, "num_runs": self.num_runs, "min_secs": 0,
                "use_xnnpack": _bool(self.use_xnnpack), "use_gpu": _bool(self.use_gpu),
                "enable_op_profiling": _bool(self.enable_op_profiling)}
        if self.report_peak_memory_footprint:
            ours["report_peak_memory_footprint"] = "true"
        theirs = {flag.split("=", 1)[0].lstrip("-") for flag in self.extra}
        return [f"--{k}={v}" for k, v in ours.items() if k not in theirs] + list(self.extra)

    def argv(self, binary: str, graph: str) -> list[str]:
        return [binary, f"--graph={graph}", *self.flags()]

    def text(self) -> str:
        """The flags as one line (without the binary and model paths), kept with records."""
        return shlex.join(self.flags())


def _bool(value: bool) -> str:
    return "true" if value else "false"
