"""Issue 16 item 1: where a LiteRT prediction of a whole network goes wrong - the kernel
predictors, or how kernels compose.

For held-out networks (each in the .tflite form LiteRT measures), one process times, interleaved
and with the same protocol, the network itself and every kernel it splits into as a single-kernel
model (the models a campaign measures), minus the per-call overhead, all in the predictor's
precision (an INT8 predictor: INT8 networks and kernels). Per network:

    alone-sum / measured   how far the network is from the sum of its kernels timed alone
                           (composition: what no kernel predictor can see)
    raw / alone-sum        the predictor's kernel estimates against those kernels' own times
                           (kernel prediction: coverage of the plan)
    predicted / measured   the two together, as `latbench predictor eval` scores them
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from _common import HELD_OUT_SEED, matrix_predictor  # noqa: E402
from _report import publish  # noqa: E402

from latbench.bench.export.graph import spec_graph  # noqa: E402
from latbench.bench.network_sets import resolve_networks  # noqa: E402
from latbench.bench.runners import get_runner  # noqa: E402
from latbench.bench.runners.base import OVERHEAD_SPEC  # noqa: E402
from latbench.predictor.evaluate import priced_kernels  # noqa: E402
from latbench.predictor.latency_predictor import LatencyPredictor  # noqa: E402


def interpreter_call(data: bytes, folder: Path, threads: int) -> object:
    """The invoke of a LiteRT interpreter (XNNPACK, as the runner's default) on random inputs."""
    from ai_edge_litert.interpreter import Interpreter

    path = folder / f"m{len(list(folder.iterdir()))}.tflite"
    path.write_bytes(data)
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"],
                               rng.standard_normal(detail["shape"]).astype(np.float32))
    return interpreter.invoke


def best_times(calls: dict[str, object], rounds: int, runs: int) -> dict[str, float]:
    """Per model: the least over interleaved rounds of the median of `runs` calls (ms)."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, call in calls.items():
            call(), call()
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
            best[name] = min(best[name], float(np.median(times)) * 1e3)
    return best


def timing_parser(description: str, label: str, what: str, networks: str
                  ) -> argparse.ArgumentParser:
    """The options of a benchmark that times networks in one LiteRT process: the predictor
    (default: the platform matrix's of platform `label`, described as `what`), the networks,
    rounds and calls per round."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--predictor", default=str(matrix_predictor(label)),
                        help=f"a {what} predictor directory (default: the platform matrix's)")
    parser.add_argument("--networks", default=networks, help="held-out networks")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser


def load_predictor(parser: argparse.ArgumentParser, path: str) -> LatencyPredictor:
    if not Path(path).is_dir():
        parser.error(f"no predictor at {path}: run benchmarks/platform_matrix.py first, or "
                     "give --predictor")
    return LatencyPredictor.load(path)


def main() -> int:
    parser = timing_parser(__doc__.split("\n\n")[0], "litert-xnnpack_fp32_1t", "LiteRT",
                           "nasbench-macro:10,mobilenetv2:5,resnet:5,resnet50:5,vit:5")
    args = parser.parse_args()
    predictor = load_predictor(parser, args.predictor)
    if predictor.runtime != "litert":
        parser.error(f"{args.predictor} is a {predictor.runtime} predictor; this benchmark "
                     "times LiteRT")
    threads, precision = predictor.platform.threads, predictor.platform.precision
    runner = get_runner("litert")
    folder = Path(tempfile.mkdtemp(prefix="latbench-litert-composition-"))
    overhead_spec = OVERHEAD_SPEC.with_(dtype=precision)
    calls = {"__overhead__": interpreter_call(runner.export(spec_graph(overhead_spec)), folder,
                                              threads)}
    networks = []
    # held out: never one of the networks the predictor's composition was fitted on
    for net in resolve_networks(args.networks, seed=HELD_OUT_SEED, precision=precision,
                                exclude=predictor.calibration_keys):
        kernels = priced_kernels(net, predictor)
        networks.append((net, kernels))
        calls[net.key] = interpreter_call(net.model_bytes(runner), folder, threads)
        for spec in kernels:
            if spec.key() not in calls:
                calls[spec.key()] = interpreter_call(runner.export(spec_graph(spec)), folder,
                                                     threads)
    best = best_times(calls, args.rounds, args.runs)
    overhead = best["__overhead__"]
    ratios: dict[str, list[tuple[float, float, float]]] = collections.defaultdict(list)
    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for net, kernels in networks:
        alone = np.array([max(best[s.key()] - overhead, 0.0) for s in kernels])
        raw = np.asarray(predictor.kernels_.predict(kernels), dtype=float)  # not composed
        measured = best[net.key]
        predicted = predictor.predict(kernels).predicted_ms
        alone_sum = float(alone.sum()) + overhead
        ratios[net.family].append((alone_sum / measured, float(raw.sum()) / float(alone.sum()),
                                   predicted / measured))
        for spec, a, r in zip(kernels, alone, raw, strict=True):
            kinds[net.family][f"{spec.kind} alone"] += float(a)
            kinds[net.family][f"{spec.kind} raw"] += float(r)
    lines = [f"Predictor `{args.predictor}` ({predictor.platform}); held-out networks "
             f"`{args.networks}` (seed {HELD_OUT_SEED}) as LiteRT measures them; "
             f"{args.rounds} interleaved rounds x {args.runs} calls per model, least median.",
             "", "| family | n | alone-sum / measured | raw kernel estimates / alone-sum | "
             "predicted / measured |", "|---|---|---|---|---|"]
    for family, rows in sorted(ratios.items()):
        cols = np.array(rows)
        cells = [f"{np.mean(cols[:, i]):.3f} ({np.min(cols[:, i]):.2f}-{np.max(cols[:, i]):.2f})"
                 for i in range(3)]
        lines.append(f"| {family} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += ["", "Per kind, summed over a family's networks: kernels timed alone (ms) / the "
              "predictor's raw estimates (ms):", ""]
    for family, counter in sorted(kinds.items()):
        names = sorted({k.rsplit(' ', 1)[0] for k in counter})
        lines.append(f"- {family}: " + ", ".join(
            f"{k} {counter[k + ' alone']:.2f}/{counter[k + ' raw']:.2f}" for k in names))
    publish("litert_composition", "LiteRT: kernel estimates against composition, held-out "
            "networks", lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
