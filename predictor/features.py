"""Features of a kernel spec, and training pairs from latency records.

Cost features (FLOPs, parameters, bytes moved, arithmetic intensity) carry most of the signal;
the raw spec fields let the model learn runtime-specific effects (kernel size, stride, groups).
Version 2 adds what CPU convolution libraries make of the channel counts: they compute in
blocks of 8 or 16 channels (AVX2 / AVX-512 registers, ONNX Runtime's NCHWc), so a layer with 24
or 40 channels costs the FLOPs of 32 or 48 - the FLOPs with channels padded to those blocks and
the remainders - plus log-scale sizes, the inputs of the learned members' log-linear baseline.

FEATURE_VERSION goes into every saved predictor. Columns are only ever appended: a predictor
saved with an older version reads the prefix of the matrix it was trained on, so it keeps
loading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from latbench.bench.ops import ACTIVATIONS, KEY_FIELDS, POOL_TYPES, OpSpec, decompose
from latbench.errors import DatasetError

FEATURE_VERSION = 2
SUPPORTED_FEATURE_VERSIONS = (1, 2)
BYTES_PER_ELEMENT = {"float32": 4}
RAW_FIELDS = ("h", "w", "cin", "cout", "kernel", "stride", "pad", "groups", "expand", "se",
              "residual", "batch")
COST_FIELDS = ("flops", "params", "input_bytes", "output_bytes", "weight_bytes",
               "intensity", "out_h", "out_w", "mid")
FEATURE_NAMES_V1 = (*RAW_FIELDS, "act", "pool", *COST_FIELDS, "log_flops", "log_bytes")
CHANNEL_BLOCKS = (8, 16)
FEATURE_NAMES = (*FEATURE_NAMES_V1,
                 *(f"{name}_b{block}" for block in CHANNEL_BLOCKS
                   for name in ("log_flops_padded", "cin_rem", "cout_rem")),
                 "log_weight_bytes", "log_input_bytes", "log_output_bytes", "log_out_pixels")
FEATURE_WIDTH = {1: len(FEATURE_NAMES_V1), 2: len(FEATURE_NAMES)}
# Inputs of the log-linear baseline the tree members learn their residual over (all log-scale:
# latency ~ a product of powers of these, which trees cannot extrapolate on their own).
BASELINE_FEATURES = ("log_flops", "log_flops_padded_b8", "log_flops_padded_b16",
                     "log_weight_bytes", "log_input_bytes", "log_output_bytes", "log_out_pixels")


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


def _round_up(value: int, block: int) -> int:
    return -(-value // block) * block


def padded_flops(spec: OpSpec, cost: KernelCost, block: int) -> float:
    """FLOPs with input and output channels rounded up to `block` (convolutions and linear
    layers; other kinds keep their FLOPs)."""
    if spec.kind in ("conv", "dwconv"):
        cout = _round_up(spec.cout, block)
        per_out = (1 if spec.groups == spec.cin and spec.groups > 1
                   else _round_up(spec.cin // spec.groups, block)) * spec.kernel ** 2
        return 2.0 * spec.batch * spec.out_h * spec.out_w * cout * per_out
    if spec.kind == "linear":
        return 2.0 * spec.batch * _round_up(spec.cin, block) * _round_up(spec.cout, block)
    return cost.flops


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
        *(value for block in CHANNEL_BLOCKS for value in (
            np.log1p(padded_flops(spec, cost, block)), float(spec.cin % block),
            float(spec.cout % block))),
        np.log1p(weight_bytes), np.log1p(cost.input_bytes), np.log1p(cost.output_bytes),
        np.log(float(spec.batch * spec.out_h * spec.out_w)),
    ], dtype=np.float64)


def feature_matrix(specs: Sequence[OpSpec], version: int = FEATURE_VERSION) -> np.ndarray:
    """One row per spec: the columns of feature `version` (a prefix of the newest)."""
    width = FEATURE_WIDTH[version]
    if not specs:
        return np.zeros((0, width))
    return np.stack([kernel_features(s) for s in specs])[:, :width]


# Shape fields whose training range a predictor keeps (per kind, those its key holds), and FLOPs.
RANGE_FIELDS = ("h", "w", "cin", "cout", "kernel", "stride", "expand")


def range_values(spec: OpSpec) -> dict[str, float]:
    """The values of `spec` a training range is kept for: its kind's RANGE_FIELDS and FLOPs."""
    out = {name: float(getattr(spec, name)) for name in RANGE_FIELDS
           if name in KEY_FIELDS[spec.kind]}
    out["flops"] = kernel_cost(spec).flops
    return out


def training_ranges(specs: Sequence[OpSpec]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per kernel kind, (min, max) of each `range_values` entry over `specs`."""
    seen: dict[str, dict[str, list[float]]] = {}
    for spec in specs:
        by_name = seen.setdefault(spec.kind, {})
        for name, value in range_values(spec).items():
            by_name.setdefault(name, []).append(value)
    return {kind: {name: (min(values), max(values)) for name, values in by_name.items()}
            for kind, by_name in sorted(seen.items())}


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
