"""Issue 14: do layout-only ops cost anything? The kernel split (bench/kernels.py) gives Reshape,
Flatten and Squeeze no kernel of their own; this measures what one of them adds after a kernel.

For each kernel (1x1 convolutions on CNN-sized maps, token-wise linear layers at ViT sizes, an
elementwise add: small and large, so a fixed cost shows against short kernels too) four ONNX
models are measured: the kernel alone, and the kernel followed by one Reshape (merging H and W,
or splitting the channels of tokens into heads), one Flatten (everything after the batch) or one
Squeeze (of the batch axis of 1). The models are latbench's own exports (`spec_graph`) with the
layout op appended, measured as network subjects of ordinary campaigns on the local CPU (ONNX
Runtime, 1 thread, default run settings): `--rounds` campaigns, each with every model in a new
random order (batches interleave the variants of every kernel in time), and each model's time
is its minimum over the rounds of `min_ms - overhead_ms` (the batch's per-call overhead).

Printed per kernel and layout op: the time added, as a fraction of the kernel alone; then the
median and the largest fraction per op. A fraction within the noise of repeated minima (about
+-2% here) is no measurable cost, which is what folding the op assumes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fresh_dir  # noqa: E402
from _report import publish  # noqa: E402

from latbench.bench.campaign import CampaignConfig, Subject, run_campaign  # noqa: E402
from latbench.bench.export.graph import spec_graph  # noqa: E402
from latbench.bench.export.to_onnx import to_onnx  # noqa: E402
from latbench.bench.ops import OpSpec  # noqa: E402
from latbench.bench.runners import RunSettings  # noqa: E402
from latbench.bench.store import LatencyDataset  # noqa: E402
from latbench.device_agents import local_device  # noqa: E402

KERNELS = (
    OpSpec("conv", h=56, w=56, cin=32, cout=32, kernel=1),
    OpSpec("conv", h=28, w=28, cin=96, cout=96, kernel=1),
    OpSpec("conv", h=7, w=7, cin=512, cout=512, kernel=1),
    OpSpec("tlinear", tokens=197, cin=192, cout=192),
    OpSpec("tlinear", tokens=50, cin=384, cout=1152),
    OpSpec("add", h=14, w=14, cin=64),
)
LAYOUT_OPS = ("Reshape", "Flatten", "Squeeze")


def _reshape_target(shape: tuple[int, ...]) -> list[int]:
    """Merge H and W of an image; split a token tensor's channels into 4 heads."""
    if len(shape) == 4:
        return [shape[0], shape[1], shape[2] * shape[3]]
    return [*shape[:-1], 4, shape[-1] // 4]


def with_layout_op(spec: OpSpec, op: str | None) -> Callable[[], bytes]:
    """Bytes of the kernel's model, followed by `op` on its output (None: the kernel alone)."""

    def make() -> bytes:
        graph = spec_graph(spec)
        data = to_onnx(graph)
        if op is None:
            return data
        model = onnx.load_from_string(data)
        out = model.graph.output[0]
        shape = graph.output_shape
        if op == "Reshape":
            target = _reshape_target(shape)
            model.graph.initializer.append(
                numpy_helper.from_array(np.asarray(target, np.int64), "layout_shape"))
            node = helper.make_node("Reshape", [out.name, "layout_shape"], ["layout_out"])
        elif op == "Flatten":
            target = [shape[0], int(np.prod(shape[1:]))]
            node = helper.make_node("Flatten", [out.name], ["layout_out"], axis=1)
        else:
            target = list(shape[1:])
            model.graph.initializer.append(
                numpy_helper.from_array(np.asarray([0], np.int64), "layout_axes"))
            node = helper.make_node("Squeeze", [out.name, "layout_axes"], ["layout_out"])
        model.graph.node.append(node)
        del model.graph.output[:]
        model.graph.output.append(
            helper.make_tensor_value_info("layout_out", onnx.TensorProto.FLOAT, target))
        onnx.checker.check_model(model)
        return model.SerializeToString()

    return make


def subject_key(spec: OpSpec, op: str | None) -> str:
    return f"layout:{spec.key()}|{op or 'alone'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="campaigns, each in a new order")
    parser.add_argument("--out", default="/tmp/latbench-bench/layout-ops")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    out = fresh_dir(args.out)
    device = local_device(threads=1)
    subjects = [Subject.onnx_model(subject_key(spec, op), "layout", with_layout_op(spec, op))
                for spec in KERNELS for op in (None, *LAYOUT_OPS)]
    best: dict[str, float] = {}
    for round_ in range(args.rounds):
        dataset = LatencyDataset.create(out / f"round{round_}", {"benchmark": "layout_ops"})
        config = CampaignConfig(settings=RunSettings(threads=1), shuffle_seed=round_,
                                batch_size=len(subjects))
        summary = run_campaign(subjects, [device], ["onnxruntime"], dataset, config)
        if summary.failed:
            raise SystemExit(f"layout_ops: {summary.failed} jobs failed: {summary.failures[:3]}")
        records = dataset.records()
        records = records[records["status"] == "ok"]
        for key, low, overhead in zip(records["key"], records["min_ms"].astype(float),
                                      records["overhead_ms"].astype(float).fillna(0.0),
                                      strict=True):
            best[key] = min(best.get(key, np.inf), max(low - overhead, 1e-6))
    added: dict[str, list[float]] = {op: [] for op in LAYOUT_OPS}
    rows = []
    for spec in KERNELS:
        alone = best[subject_key(spec, None)]
        cells = []
        for op in LAYOUT_OPS:
            fraction = best[subject_key(spec, op)] / alone - 1.0
            added[op].append(fraction)
            cells.append(f"{fraction:+.1%} ({(best[subject_key(spec, op)] - alone) * 1e3:+.1f} us)")
        rows.append(f"| `{spec.key()}` | {alone:.4f} | " + " | ".join(cells) + " |")
    lines = [
        f"{len(KERNELS)} kernels alone and followed by one layout op, local CPU, ONNX Runtime, "
        f"1 thread; {args.rounds} campaigns in shuffled orders, each model's time the minimum "
        "over them of min_ms minus the batch's per-call overhead.", "",
        "| kernel | alone (ms) | + " + " | + ".join(LAYOUT_OPS) + " |",
        "|---|---|" + "---|" * len(LAYOUT_OPS),
        *rows, "",
        "Added time as a fraction of the kernel alone, per layout op: " + "; ".join(
            f"{op} median {statistics.median(v):+.1%}, largest {max(v):+.1%}"
            for op, v in added.items()) + ".",
    ]
    publish("layout_ops", "Layout-only ops after a kernel, local CPU", lines,
            write=not args.no_write)


if __name__ == "__main__":
    main()
