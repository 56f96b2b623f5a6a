#!/usr/bin/env python3
"""STAND-IN for TFLite's `benchmark_model` binary (tests only): it times the .tflite model with
the LiteRT Python interpreter and prints its figures in the real tool's format (TFLITE_LOG on
stderr with "INFO: " prefixes, the stat lines of TensorFlow's Stat<T>, op-profiling tables), so
latbench's driver and parser are exercised end to end without an Android build of the tool.

`--use_gpu=true` fails the way the real tool does on a device without a GPU delegate.
"""

import math
import os
import resource
import sys
import time


def log(text):
    print(f"INFO: {text}", file=sys.stderr)


def stat_line(values):
    n = len(values)
    avg = sum(values) / n
    std = math.sqrt(max(sum(v * v for v in values) / n - avg * avg, 0.0))
    ordered = sorted(values)
    pct = [ordered[n * p // 100] for p in (5, 50, 95)]
    if min(values) == max(values):
        head = f"count={n} curr={values[-1]}" + ("(all same)" if n > 1 else "")
    else:
        head = (f"count={n} first={values[0]} curr={values[-1]} min={min(values)} "
                f"max={max(values)} avg={avg:g} std={int(std)}")
    return f"{head} p5={pct[0]} median={pct[1]} p95={pct[2]}"


def main(argv):
    flags = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            print(f"ERROR: unrecognized flag {arg}", file=sys.stderr)
            return 1
        key, value = arg[2:].split("=", 1)
        flags[key] = value
    graph = flags.get("graph")
    log("STARTING! (latbench stand-in for benchmark_model)")
    log(f"Graph: [{graph}]")
    log(f"Num threads: [{flags.get('num_threads', '1')}]")
    if flags.get("use_gpu") == "true":
        print("ERROR: Failed to create GPU delegate: no OpenCL/GL on this stand-in",
              file=sys.stderr)
        print("ERROR: Failed to apply GPU delegate.", file=sys.stderr)
        return 1
    if not graph or not os.path.isfile(graph):
        print(f"ERROR: Could not open '{graph}'.", file=sys.stderr)
        return 1
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    start_kb = max_rss_kb()
    t0 = time.perf_counter_ns()
    interp = Interpreter(model_path=graph, num_threads=int(flags.get("num_threads", "1")))
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    init_us = (time.perf_counter_ns() - t0) // 1000
    init_kb = max_rss_kb()
    log(f"Loaded model {graph}")
    log(f"Initialized session in {init_us / 1000:.3f}ms.")

    def timed(count):
        out = []
        for _ in range(count):
            t = time.perf_counter_ns()
            interp.invoke()
            out.append(max(1, (time.perf_counter_ns() - t) // 1000))
        return out

    warmup_runs, num_runs = int(flags.get("warmup_runs", "1")), int(flags.get("num_runs", "50"))
    log(f"Running benchmark for at least {warmup_runs} iterations and at least "
        f"{flags.get('warmup_min_secs', '0.5')} seconds but terminate if exceeding 150 seconds.")
    warm = timed(max(warmup_runs, 1))
    log(stat_line(warm))
    print("", file=sys.stderr)
    log(f"Running benchmark for at least {num_runs} iterations and at least "
        f"{flags.get('min_secs', '1')} seconds but terminate if exceeding 150 seconds.")
    runs = timed(num_runs)
    log(stat_line(runs))
    print("", file=sys.stderr)
    if flags.get("enable_op_profiling") == "true":
        ops = interp._get_ops_details()
        avg_ms = sum(runs) / len(runs) / 1000
        log("Operator-wise Profiling Info for Regular Benchmark Runs:")
        lines = ["============================== Run Order ==============================",
                 "\t[node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t"
                 "[times called]\t[Name]"]
        cdf = 0.0
        for op in ops:
            share = 100.0 / len(ops)
            cdf += share
            lines.append(f"\t{op['op_name']:>24}\t{avg_ms / len(ops):9.3f}\t"
                         f"{avg_ms / len(ops):9.3f}\t{share:7.3f}%\t{cdf:7.3f}%\t"
                         f"{0.0:10.3f}\t{1:9d}\t[{op['op_name'].lower()}]:{op['index']}")
        lines += ["", f"Number of nodes executed: {len(ops)}",
                  "============================== Summary by node type "
                  "==============================",
                  "\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t"
                  "  [mem KB]\t[times called]"]
        kinds = {}
        for op in ops:
            kinds[op["op_name"]] = kinds.get(op["op_name"], 0) + 1
        cdf = 0.0
        for kind, count in kinds.items():
            share = 100.0 * count / len(ops)
            cdf += share
            lines.append(f"\t{kind:>24}\t{count:9d}\t{avg_ms * count / len(ops):10.3f}\t"
                         f"{share:9.3f}%\t{cdf:9.3f}%\t{0.0:10.3f}\t{count:9d}")
        lines += ["", f"Timings (microseconds): {stat_line(runs)}", "Memory (bytes): count=0",
                  f"{len(ops)} nodes observed", ""]
        print("\n".join(lines), file=sys.stderr)
    log(f"Inference timings in us: Init: {init_us}, First inference: {warm[0]}, Warmup (avg): "
        f"{sum(warm) / len(warm):g}, Inference (avg): {sum(runs) / len(runs):g}")
    # as the real tool: the largest resident set above the tool's start, after init and overall;
    # with --report_peak_memory_footprint=true the process's peak resident set as well
    overall_kb = max_rss_kb()
    log("Memory footprint delta from the start of the tool (MB): "
        f"init={(init_kb - start_kb) / 1024:g} overall={(overall_kb - start_kb) / 1024:g}")
    if flags.get("report_peak_memory_footprint") == "true":
        log(f"Overall peak memory footprint (MB) via periodic monitoring: {overall_kb / 1024:g}")
    return 0


def max_rss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
