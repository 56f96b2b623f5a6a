#!/usr/bin/env python3
"""STAND-IN for `onnxruntime_perf_test` (tests only): times the model with the onnxruntime
Python package and prints the real tool's summary lines (ORT 1.2x format)."""

import resource
import sys
import time


def main(argv):
    args = list(argv)
    model = args.pop() if args else ""
    opts = {}
    while args:
        flag = args.pop(0)
        if flag in ("-I",):
            opts[flag] = True
        elif flag.startswith("-") and args:
            opts[flag] = args.pop(0)
        else:
            print(f"unknown option {flag}", file=sys.stderr)
            return 1
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(opts.get("-x", "1"))
    so.graph_optimization_level = {"0": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "1": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "2": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}.get(
        opts.get("-o", "99"), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # the real tool prints the ORT error and exits non-zero
        print(f"Failed to create session: {exc}", file=sys.stderr)
        return 1
    created = time.perf_counter() - t0
    feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
             for i in sess.get_inputs()}
    t = time.perf_counter()
    sess.run(None, feeds)
    first_ms = int((time.perf_counter() - t) * 1000)
    costs = []
    start = time.perf_counter()
    for _ in range(int(opts.get("-r", "10"))):
        t = time.perf_counter()
        sess.run(None, feeds)
        costs.append(time.perf_counter() - t)
    run_s = time.perf_counter() - start
    ordered = sorted(costs)

    def pct(p):
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]

    print(f"Session creation time cost: {created:g} s")
    print(f"First inference time cost: {first_ms} ms")
    print(f"Total inference time cost: {sum(costs):g} s")
    print(f"Total inference requests: {len(costs)}")
    print(f"Average inference time cost total: {sum(costs) / len(costs) * 1000:f} ms")
    print(f"Total inference run time: {run_s:g} s")
    print(f"Number of inferences per second: {len(costs) / run_s:g}")
    print("Avg CPU usage: 50 %")
    # the real tool on Linux: getrusage's largest resident set of its process, in bytes
    print(f"Peak working set size: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024} "
          "bytes")
    print(f"Min Latency: {ordered[0]:g} s")
    print(f"Max Latency: {ordered[-1]:g} s")
    for p in (50, 90, 95, 99, 999):
        print(f"P{p} Latency: {pct(p / 10 if p == 999 else p):g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
