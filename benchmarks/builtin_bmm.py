"""What `latbench predict` says of an INT8 transformer on LiteRT XNNPACK - how much of its time
the attention products left to LiteRT's builtin kernel take, and what the model would take with
them quantized symmetric - checked against the device.

For held-out INT8 ViTs (each in the .tflite form LiteRT measures), one process times two files
interleaved: the model as calibration quantized it, and the same model with every BATCH_MATMUL's
right operand pinned to zero point 0 (`symmetric_rhs`, the form XNNPACK takes). It reports, per
network, the predicted and measured latency of both and of the saving. A LiteRT XNNPACK INT8
predictor (`--predictor`, by default the one the platform matrix fitted) prices them.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import HELD_OUT_SEED  # noqa: E402
from _report import publish  # noqa: E402
from litert_composition import (  # noqa: E402
    best_times,
    interpreter_call,
    load_predictor,
    timing_parser,
)

from latbench.bench.network_sets import resolve_networks  # noqa: E402
from latbench.bench.runners import get_runner  # noqa: E402
from latbench.predictor.builtin_bmm import builtin_bmm  # noqa: E402


def symmetric_copy(graph):
    """The graph with every bmm's right operand pinned to zero point 0."""
    for layer in graph.layers:
        if layer.op == "bmm":
            layer.attrs["symmetric_rhs"] = True
    return graph


def main() -> int:
    parser = timing_parser(__doc__.split("\n\n")[0], "litert-xnnpack_int8_1t",
                           "LiteRT XNNPACK INT8", "vit:8")
    args = parser.parse_args()
    predictor = load_predictor(parser, args.predictor)
    platform = predictor.platform
    if (platform.runtime, platform.delegate, platform.precision) != ("litert", "xnnpack",
                                                                      "int8"):
        parser.error(f"{args.predictor} predicts {platform}; this benchmark needs a LiteRT "
                     "XNNPACK INT8 predictor")
    runner = get_runner("litert")
    folder = Path(tempfile.mkdtemp(prefix="latbench-builtin-bmm-"))
    rows, calls = [], {}
    for net in resolve_networks(args.networks, seed=HELD_OUT_SEED, precision="int8",
                                exclude=predictor.calibration_keys):
        as_is = net.model_bytes(runner)
        pinned = runner.export(symmetric_copy(net.graph()))
        prediction = predictor.predict(as_is)
        advice = builtin_bmm(predictor, prediction, "tflite")
        if advice is None:  # every product already in XNNPACK's form
            continue
        symmetric = predictor.predict(pinned)
        calls[net.key] = interpreter_call(as_is, folder, platform.threads)
        calls[net.key + "|symmetric"] = interpreter_call(pinned, folder, platform.threads)
        rows.append((net.key, advice, symmetric.predicted_ms))
    best = best_times(calls, args.rounds, args.runs)
    lines = ["| network | builtin / all bmm | predicted ms | measured ms | predicted "
             "symmetric ms (advice / file) | measured symmetric ms | saving predicted / "
             "measured |", "|---|---|---|---|---|---|---|"]
    errors = []
    for key, advice, file_ms in rows:
        measured, measured_sym = best[key], best[key + "|symmetric"]
        saved, saved_measured = advice.predicted_ms - advice.symmetric_ms, measured - measured_sym
        errors.append(advice.symmetric_ms / measured_sym - 1)
        lines.append(f"| {key.split(':')[1]} | {advice.builtin} / {advice.total} | "
                     f"{advice.predicted_ms:.3f} | {measured:.3f} | {advice.symmetric_ms:.3f} / "
                     f"{file_ms:.3f} | {measured_sym:.3f} | {saved:.3f} / {saved_measured:.3f} |")
    body = [f"Predictor `{args.predictor}` ({platform}); held-out `{args.networks}` (seed "
            f"{HELD_OUT_SEED}) whose products are not all symmetric already; timed in one "
            f"process, interleaved, least over {args.rounds} rounds of the median of "
            f"{args.runs} calls; load average {os.getloadavg()[0]:.1f} at the end.", "",
            *lines, ""]
    if errors:
        body.append(f"The advice's symmetric latency against the measured symmetric file: "
                    f"median error {100 * statistics.median(errors):+.1f}%, within 10% for "
                    f"{sum(abs(e) < 0.1 for e in errors)} of {len(errors)}.")
    publish("builtin_bmm", "INT8 attention left to LiteRT's builtin kernel: advice against "
            "the device", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
