"""Features of a kernel spec, and training pairs from latency records.

Cost features (FLOPs, parameters, bytes moved, arithmetic intensity) carry most of the signal;
the raw spec fields let the model learn runtime-specific effects (kernel size, stride, groups).
FEATURE_VERSION goes into every saved predictor: change it whenever a column changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.ops import ACTIVATIONS, POOL_TYPES, OpSpec, decompose
from latbench.errors import DatasetError

FEATURE_VERSION = 1
BYTES_PER_ELEMENT = {"float32": 4}
RAW_FIELDS = ("h", "w", "cin", "cout", "kernel", "stride", "pad", "groups", "expand", "se",
              "residual", "batch")
COST_FIELDS = ("flops", "params", "input_bytes", "output_bytes", "weight_bytes",
               "intensity", "out_h", "out_w", "mid")
FEATURE_NAMES = (*RAW_FIELDS, "act", "pool", *COST_FIELDS, "log_flops", "log_bytes")


@dataclass(frozen=True)
class KernelCost:
    flops: float
    params: float
    input_bytes: float
    output_bytes: float


def kernel_cost(spec: OpSpec) -> KernelCost:
    """FLOPs (2 per multiply-add), parameters and activation bytes of one kernel."""
    if spec.kind == "mbconv":
        parts = [kernel_cost(s) for s in decompose(spec)]
        return KernelCost(sum(p.flops for p in parts), sum(p.params for p in parts),
                          parts[0].input_bytes, parts[-1].output_bytes)
    elem = BYTES_PER_ELEMENT[spec.dtype]
    n = spec.batch
    in_elems = float(np.prod(spec.input_shape))
    out_elems = float(np.prod(spec.output_shape))
    oh, ow = spec.out_h, spec.out_w
    kind = spec.kind
    if kind in ("conv", "dwconv"):
        per_out = (spec.cin // spec.groups) * spec.kernel ** 2
        flops = 2.0 * n * oh * ow * spec.cout * per_out
        params = spec.cout * per_out + spec.cout
    elif kind == "linear":
        flops = 2.0 * n * spec.cin * spec.cout
        params = spec.cin * spec.cout + spec.cout
    elif kind == "pool":
        window = spec.h * spec.w if spec.pool == "gavg" else spec.kernel ** 2
        flops = float(n * oh * ow * spec.cin * window)
        params = 0
    elif kind in ("add", "mul"):
        flops, params = out_elems, 0
        in_elems *= 2
    elif kind == "act":
        flops, params = out_elems, 0
    elif kind == "se":
        mid = spec.mid
        flops = 2.0 * in_elems + 4.0 * n * spec.cin * mid
        params = 2 * spec.cin * mid + mid + spec.cin
    elif kind == "concat":
        flops, params = 0.0, 0
    else:  # pragma: no cover - OpSpec validates kinds
        raise ValueError(kind)
    return KernelCost(float(flops), float(params), in_elems * elem, out_elems * elem)


def kernel_features(spec: OpSpec) -> np.ndarray:
    cost = kernel_cost(spec)
    weight_bytes = cost.params * BYTES_PER_ELEMENT[spec.dtype]
    moved = cost.input_bytes + cost.output_bytes + weight_bytes
    mid = spec.mid if spec.kind in ("mbconv", "se") else 0
    raw = [float(getattr(spec, name)) for name in RAW_FIELDS]
    return np.array([
        *raw,
        float(ACTIVATIONS.index(spec.act)),
        float(POOL_TYPES.index(spec.pool)),
        cost.flops, cost.params, cost.input_bytes, cost.output_bytes, weight_bytes,
        cost.flops / max(moved, 1.0), float(spec.out_h), float(spec.out_w), float(mid),
        np.log1p(cost.flops), np.log1p(moved),
    ], dtype=np.float64)


def feature_matrix(specs: Sequence[OpSpec]) -> np.ndarray:
    if not specs:
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.stack([kernel_features(s) for s in specs])


def training_pairs(records: pd.DataFrame, statistic: str = "median_ms"
                   ) -> tuple[list[OpSpec], np.ndarray, float]:
    """(specs, kernel ms, call overhead ms) from op records.

    Each single-kernel measurement includes the runtime's per-call overhead once; a network pays
    it once in total. So the kernel time is the measured time minus the overhead measured in the
    same batch, and the overhead (median over the dataset) is added back once per network.
    """
    if records.empty:
        raise DatasetError("no records to train on")
    if statistic not in records.columns:
        raise DatasetError(f"records have no column {statistic!r}")
    ops = records[(records["subject"] == "op") & (records["status"] == "ok")]
    if ops.empty:
        raise DatasetError("the dataset holds no successful operator records")
    specs = [OpSpec.from_key(k) for k in ops["key"]]
    measured = ops[statistic].to_numpy(dtype=np.float64)
    overhead = ops["overhead_ms"].to_numpy(dtype=np.float64)
    overhead = np.where(np.isfinite(overhead), overhead, 0.0)
    kernel_ms = np.maximum(measured - overhead, 0.05 * measured)
    call_overhead = float(np.median(overhead)) if len(overhead) else 0.0
    return specs, kernel_ms, call_overhead
