"""Pure parsers of native tools' output (benchmark_model, onnxruntime_perf_test), tested on
sample outputs written in the tools' real formats, and the flags latbench runs them with."""

from __future__ import annotations

import math

import pytest

from latbench.device_agents.facts import parse_df_free_bytes, parse_dynamic_facts, parse_shell_facts
from latbench.device_agents.tools.benchmark_model import (
    BenchmarkModelFlags,
    parse_benchmark_model,
    parse_stat_line,
)
from latbench.device_agents.tools.ort_perf_test import PerfTestFlags, parse_perf_test
from latbench.errors import ParseError

# TF 2.16-style run on a phone: TFLITE_LOG lines with "INFO: ", percentiles on stat lines,
# op profiling enabled (profiling tables are one log message: only its first line is prefixed).
MODERN = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [4]
INFO: Graph: [/data/local/tmp/latbench/batch-1/m0000.tflite]
INFO: Enable op profiling: [1]
INFO: #threads used for CPU inference: [4]
INFO: Loaded model /data/local/tmp/latbench/batch-1/m0000.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 0.021
INFO: Initialized session in 3.512ms.
INFO: Running benchmark for at least 10 iterations and at least 0 seconds but terminate if \
exceeding 150 seconds.
INFO: count=10 first=1711 curr=1525 min=1498 max=1711 avg=1546.1 std=61 p5=1498 median=1525 \
p95=1711

INFO: Running benchmark for at least 20 iterations and at least 0 seconds but terminate if \
exceeding 150 seconds.
INFO: count=20 first=1530 curr=1503 min=1490 max=1611 avg=1519.3 std=27 p5=1491 median=1510 \
p95=1599

INFO: Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Run Order ==============================
\t             [node type]\t          [first]\t         [avg ms]\t             [%]\t\
          [cdf%]\t          [mem KB]\t      [times called]\t[Name]
\t                 CONV_2D\t            1.101\t            1.087\t         71.935%\t\
         71.935%\t             0.000\t               1\t[model/conv 1/Relu]:0
\t       DEPTHWISE_CONV_2D\t            0.431\t            0.424\t         28.065%\t\
        100.000%\t             0.000\t               1\t[model/dw]:1

============================== Summary by node type ==============================
\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t\
[times called]
\t                 CONV_2D\t        1\t     1.087\t    71.935%\t    71.935%\t     0.000\t        1
\t       DEPTHWISE_CONV_2D\t        1\t     0.424\t    28.065%\t   100.000%\t     0.000\t        1

Timings (microseconds): count=20 first=1529 curr=1500 min=1488 max=1609 avg=1511.5 std=27
Memory (bytes): count=0
2 nodes observed

INFO: Inference timings in us: Init: 3512, First inference: 1711, Warmup (avg): 1546.1, \
Inference (avg): 1519.3
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only \
APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at \
your one's own risk.
INFO: Memory footprint delta from the start of the tool (MB): init=2.125 overall=3.375
"""

# TF 2.4-style: no log prefix, no percentiles, every warm-up sample equal.
OLDER = """\
STARTING!
Num runs: [5]
Graph: [/data/local/tmp/m.tflite]
Loaded model /data/local/tmp/m.tflite
Initialized session in 0.94ms.
Running benchmark for at least 3 iterations and at least 0.5 seconds but terminate if exceeding \
150 seconds.
count=3 curr=812(all same)

Running benchmark for at least 5 iterations and at least 1 seconds but terminate if exceeding \
150 seconds.
count=5 first=815 curr=799 min=790 max=815 avg=801.4 std=9

Inference timings in us: Init: 940, First inference: 812, Warmup (avg): 812, Inference (avg): 801.4
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE.
Peak memory footprint (MB): init=0 overall=0
"""

# TF 1.15-style summary line.
TF1 = """\
Running benchmark for at least 50 iterations and at least 1 seconds
count=50 first=79760 curr=79101 min=78802 max=81005 avg=79760.9 std=512
Average inference timings in us: Warmup: 83235, Init: 38467, no stats: 79760.9
"""

FAILED = """\
INFO: STARTING!
INFO: Graph: [/data/local/tmp/m.tflite]
INFO: Loaded model /data/local/tmp/m.tflite
ERROR: Didn't find op for builtin opcode 'CONV_2D' version '6'. An older version of this \
builtin might be supported. Are you using an old TFLite binary with a newer model?
ERROR: Registration failed.
Failed to initialize the interpreter
Benchmarking failed.
"""


def test_benchmark_model_modern_output_with_percentiles_and_op_profile() -> None:
    r = parse_benchmark_model(MODERN)
    s = r.inference
    assert (s.count, s.first_us, s.curr_us, s.min_us, s.max_us, s.avg_us, s.std_us) == \
        (20, 1530, 1503, 1490, 1611, 1519.3, 27)
    assert (s.p5_us, s.median_us, s.p95_us) == (1491, 1510, 1599)
    assert r.warmup is not None and r.warmup.count == 10 and r.warmup.median_us == 1525
    assert (r.init_us, r.first_inference_us, r.warmup_avg_us, r.inference_avg_us) == \
        (3512, 1711, 1546.1, 1519.3)
    assert (r.memory_init_mb, r.memory_overall_mb) == (2.125, 3.375)
    # the profiling summary's "Timings (microseconds): count=..." is not the run's stat line
    assert s.avg_us != 1511.5
    assert [(o.node_type, o.avg_ms, o.percent, o.times_called, o.name) for o in r.ops] == [
        ("CONV_2D", 1.087, 71.935, 1, "[model/conv 1/Relu]:0"),
        ("DEPTHWISE_CONV_2D", 0.424, 28.065, 1, "[model/dw]:1")]
    assert [(t.node_type, t.count, t.avg_ms, t.cdf_percent) for t in r.node_types] == [
        ("CONV_2D", 1, 1.087, 71.935), ("DEPTHWISE_CONV_2D", 1, 0.424, 100.0)]


def test_benchmark_model_older_output_without_percentiles() -> None:
    r = parse_benchmark_model(OLDER)
    assert r.inference.count == 5 and r.inference.min_us == 790 and r.inference.std_us == 9
    assert r.inference.median_us is None and r.ops == () and r.node_types == ()
    assert r.warmup is not None and (r.warmup.count, r.warmup.min_us, r.warmup.std_us) == \
        (3, 812, 0.0)
    assert r.inference_avg_us == 801.4 and r.peak_memory_mb is None
    # the older name of the memory delta line (0: the tool could not read it)
    assert (r.memory_init_mb, r.memory_overall_mb) == (0.0, 0.0)


def test_benchmark_model_tf1_summary_line() -> None:
    r = parse_benchmark_model(TF1)
    assert r.warmup is None and r.inference.count == 50
    assert (r.warmup_avg_us, r.init_us, r.inference_avg_us) == (83235, 38467, 79760.9)


def test_benchmark_model_failure_quotes_the_tools_errors() -> None:
    with pytest.raises(ParseError, match="no timing line.*Didn't find op for builtin opcode"):
        parse_benchmark_model(FAILED)
    with pytest.raises(ParseError):
        parse_benchmark_model("")


@pytest.mark.parametrize("line, expected", [
    ("count=1 curr=42", (1, 42, 42, 42, 0.0)),
    ("INFO: count=4 curr=7(all same) p5=7 median=7 p95=7", (4, 7, 7, 7, 0.0)),
    ("count=2 first=1e3 curr=2.5e3 min=1e3 max=2.5e3 avg=1750 std=750", (2, 1000, 2500, 1750,
                                                                          750)),
])
def test_stat_line_variants(line: str, expected: tuple) -> None:
    s = parse_stat_line(line)
    assert s is not None and (s.count, s.min_us, s.max_us, s.avg_us, s.std_us) == expected


@pytest.mark.parametrize("line", ["count=0", "Timings (microseconds): count=3 curr=1",
                                  "accounts=3", "count=x curr=1"])
def test_non_stat_lines(line: str) -> None:
    assert parse_stat_line(line) is None


def test_benchmark_model_flags_exact_counts_and_user_overrides() -> None:
    flags = BenchmarkModelFlags(num_threads=4, warmup_runs=5, num_runs=30, use_xnnpack=False,
                                use_gpu=True, extra=("--enable_op_profiling=true",))
    argv = flags.argv("/d/benchmark_model", "/d/m.tflite")
    assert argv[:2] == ["/d/benchmark_model", "--graph=/d/m.tflite"]
    assert {"--num_threads=4", "--warmup_runs=5", "--num_runs=30", "--warmup_min_secs=0",
            "--min_secs=0", "--use_xnnpack=false", "--use_gpu=true"} <= set(argv)
    assert argv.count("--enable_op_profiling=true") == 1
    assert not any(a == "--enable_op_profiling=false" for a in argv)
    assert "/d/m.tflite" not in flags.text() and "--num_runs=30" in flags.text()


ORT_OLD = """\
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
"""

ORT_NEW_NO_LATENCIES = """\
Setting intra_op_num_threads to 1
Session creation time cost: 0.217932 s
First inference time cost: 196 ms
Total inference time cost: 0.49481 s
Total inference requests: 5
Average inference time cost total: 98.961997 ms
Total inference run time: 0.494854 s
Number of inferences per second: 10.104
Avg CPU usage: 11 %
Peak working set size: 271122432 bytes
"""


def test_ort_perf_test_output() -> None:
    r = parse_perf_test(ORT_OLD)
    assert (r.requests, r.average_ms, r.first_ms) == (300, 3.31333, 3.0)
    assert math.isclose(r.session_ms, 50.7) and math.isclose(r.min_ms, 2.9)
    assert math.isclose(r.p50_ms, 3.2) and math.isclose(r.p90_ms, 3.7)
    assert math.isclose(r.p99_ms, 5.6) and r.peak_bytes == 33554432
    new = parse_perf_test(ORT_NEW_NO_LATENCIES)
    assert (new.requests, new.average_ms) == (5, 98.961997)
    assert new.min_ms is None and new.p50_ms is None


def test_ort_perf_test_failure() -> None:
    with pytest.raises(ParseError, match="Average inference time cost"):
        parse_perf_test("Load model from m.onnx failed: Protobuf parsing failed.\n")


def test_ort_perf_test_flags() -> None:
    flags = PerfTestFlags(threads=2, runs=40, graph_opt="basic", extra=("-y", "1"))
    assert flags.argv("/d/perf", "/d/m.onnx") == [
        "/d/perf", "-I", "-m", "times", "-r", "40", "-x", "2", "-e", "cpu", "-o", "1", "-y", "1",
        "/d/m.onnx"]


# --- shell facts (devices without Python) ------------------------------------------------------
ANDROID_FACTS = """\
@os
Linux
@kernel
5.10.157-android13-4-00001
@machine
aarch64
@cpuinfo
processor\t: 0
BogoMIPS\t: 49.15
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm bf16
processor\t: 1
Hardware\t: Tensor G2
@online
0-7
@cores
8
@governor
sched_pixel
@cur_freq
1803000
@max_freq
2850000
@temps
thermal_zone0 41230 BIG
thermal_zone1 38900 MID
thermal_zone9 35 battery
@loadavg
3.10 2.95 2.80 1/1234 5678
@model
Pixel 7
@android
14
@abi
arm64-v8a
@df
Filesystem     1K-blocks     Used Available Use% Mounted on
/dev/block/dm-46 114647036 51202052  63314456  45% /data
@end
"""


def test_shell_facts_parser_on_android_output() -> None:
    f = parse_shell_facts(ANDROID_FACTS)
    assert f["os"] == "Android" and f["android"] == {"model": "Pixel 7", "android": "14",
                                                     "abi": "arm64-v8a"}
    assert f["cpu_model"] == "Tensor G2" and f["cores"] == 8 and f["cores_online"] == 8
    assert f["cpu_features"] == ["asimd", "asimdhp", "asimddp", "i8mm", "bf16"]
    assert f["governor"] == "sched_pixel" and f["cur_freq_khz"] == 1803000
    assert [t["celsius"] for t in f["temps_c"]] == [41.23, 38.9, 35.0]
    assert f["free_bytes"] == 63314456 * 1024 and f["complete"] is True
    dyn = parse_dynamic_facts("@cur_freq\n998000\n@temps\nthermal_zone0 50000 cpu\n@end\n", 4)
    assert dyn["cur_freq_khz"] == 998000 and dyn["freq_cpu"] == 4
    assert dyn["temps_c"][0]["celsius"] == 50.0


def test_shell_facts_parser_tolerates_missing_readings() -> None:
    f = parse_shell_facts("@os\nLinux\n@cpuinfo\n@temps\n@df\n")
    assert f["os"] == "Linux" and f["cpu_model"] is None and f["temps_c"] is None
    assert f["cpu_features"] is None
    assert f["free_bytes"] is None and f["complete"] is False
    wrapped = ("Filesystem 1024-blocks Used Available Capacity Mounted on\n"
               "/dev/mapper/very-long-volume-name\n  1000 200 800 20% /srv\n")
    assert parse_df_free_bytes(wrapped) == 800 * 1024
