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

Version 3 appends the columns of the kinds added for transformers and the common op set
(tokens, heads, head dim, dilation, non-square kernels, scale, mode, axes, alpha, rows). Each
kind is fitted on the columns that describe it (`feature_width`): the new kinds, conv and dwconv
(dilation, non-square kernels) on all of them; the other kinds on the version 2 columns, so
their fits are exactly what version 2 gave (extra constant columns would still shift a fit
through column subsampling).

Version 4 appends what a grouped convolution is made of: the input and output channels of one
group and the FLOPs with both padded to the 16-channel block. Its time follows the group width,
not the total channels (ONNX Runtime's blocked kernels at 32 channels per group run at several
times the speed per FLOP of those at 8), which the total-channel columns do not show. Only conv
is fitted on them; every other kind keeps its version 3 (or 2) columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from latbench.bench.ops import (
    ALL_ACTIVATIONS,
    KEY_FIELDS,
    MODES,
    OPTIONAL_FIELDS,
    POOL_TYPES,
    OpSpec,
    decompose,
)
from latbench.errors import DatasetError

FEATURE_VERSION = 4
SUPPORTED_FEATURE_VERSIONS = (1, 2, 3, 4)
BYTES_PER_ELEMENT = {"float32": 4, "float16": 2, "int8": 1}
RAW_FIELDS = ("h", "w", "cin", "cout", "kernel", "stride", "pad", "groups", "expand", "se",
              "residual", "batch")
COST_FIELDS = ("flops", "params", "input_bytes", "output_bytes", "weight_bytes",
               "intensity", "out_h", "out_w", "mid")
FEATURE_NAMES_V1 = (*RAW_FIELDS, "act", "pool", *COST_FIELDS, "log_flops", "log_bytes")
CHANNEL_BLOCKS = (8, 16)
FEATURE_NAMES_V2 = (*FEATURE_NAMES_V1,
                    *(f"{name}_b{block}" for block in CHANNEL_BLOCKS
                      for name in ("log_flops_padded", "cin_rem", "cout_rem")),
                    "log_weight_bytes", "log_input_bytes", "log_output_bytes", "log_out_pixels")
# Version 3: what the kinds added later are made of. `head_dim` is a bmm's attention head size
# (the reduced axis of QK^T, where cout == tokens, else the output axis of AV); `rows` the
# rows a token kernel works through (batch x heads x tokens); `mode` the index of the mode in
# its kind's list, `axes` the digits as a number, `alpha` leakyrelu's slope (else 0).
KIND_FEATURES = ("tokens", "heads", "head_dim", "dilation", "kernel_w", "pad_w", "out_pad",
                 "scale", "mode", "axes", "alpha", "log_rows")
FEATURE_NAMES_V3 = (*FEATURE_NAMES_V2, *KIND_FEATURES)
# Version 4: a convolution's channels per group (input, output) and its FLOPs with both padded
# to GROUP_BLOCK.
GROUP_FEATURES = ("group_cin", "group_cout", "log_flops_group_padded")
GROUP_BLOCK = 16
FEATURE_NAMES = (*FEATURE_NAMES_V3, *GROUP_FEATURES)
FEATURE_WIDTH = {1: len(FEATURE_NAMES_V1), 2: len(FEATURE_NAMES_V2), 3: len(FEATURE_NAMES_V3),
                 4: len(FEATURE_NAMES)}
# Kinds fitted on the version 2 columns at every version (see the module docstring).
V2_KINDS = frozenset({"mbconv", "linear", "pool", "add", "mul", "act", "se", "concat"})
# Kinds fitted on the version 4 columns; the others stop at version 3.
V4_KINDS = frozenset({"conv"})
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
    """FLOPs (2 per multiply-add), parameters and activation bytes of one kernel.

    Kernels without multiply-adds count the operations per element they do (normalizations 5,
    softmax 3, bilinear resize 4, an add or activation 1); layout kernels (transpose, slice,
    pad, concat, shuffle, gather, the class token) move data and count none.
    """
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
        per_out = (spec.cin // spec.groups) * spec.kernel * (spec.kernel_w or spec.kernel)
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
    else:
        flops, params = _new_kind_cost(spec, in_elems, out_elems)
        in_elems = float(sum(np.prod(shape) for shape in spec.input_shapes))
    if spec.act == "prelu":
        params += spec.out_c  # one slope per channel
    return KernelCost(float(flops), float(params), in_elems * elem, out_elems * elem)


# Operations per output element of the kinds without multiply-adds (layout kinds: none).
_PER_ELEMENT = {"softmax": 3.0, "layernorm": 5.0, "instnorm": 5.0, "posembed": 1.0,
                "transpose": 0.0, "clstoken": 0.0, "gather": 0.0, "pad": 0.0, "slice": 0.0,
                "shuffle": 0.0}


def _new_kind_cost(spec: OpSpec, in_elems: float, out_elems: float) -> tuple[float, float]:
    """(FLOPs, parameters) of the kinds added for transformers and the common op set."""
    n, kind = spec.batch, spec.kind
    if kind == "tlinear":
        return 2.0 * n * spec.tokens * spec.cin * spec.cout, spec.cin * spec.cout + spec.cout
    if kind == "bmm":
        return 2.0 * n * spec.heads * spec.tokens * spec.cin * spec.cout, 0
    if kind == "convt":
        macs = n * spec.h * spec.w * spec.cin * (spec.cout // spec.groups) * spec.kernel ** 2
        return 2.0 * macs, spec.cin * (spec.cout // spec.groups) * spec.kernel ** 2 + spec.cout
    if kind == "resize":
        return (0.0 if spec.mode == "nearest" else 4.0) * out_elems, 0
    if kind == "reduce":
        return in_elems, 0
    params = {"layernorm": 2 * spec.cin, "instnorm": 2 * spec.cin, "clstoken": spec.cin,
              "posembed": spec.tokens * spec.cin}.get(kind, 0)
    return _PER_ELEMENT[kind] * out_elems, params


def _round_up(value: int, block: int) -> int:
    return -(-value // block) * block


def padded_flops(spec: OpSpec, cost: KernelCost, block: int) -> float:
    """FLOPs with input and output channels rounded up to `block` (convolutions and linear
    layers; other kinds keep their FLOPs)."""
    if spec.kind in ("conv", "dwconv"):
        cout = _round_up(spec.cout, block)
        per_out = (1 if spec.groups == spec.cin and spec.groups > 1
                   else _round_up(spec.cin // spec.groups, block)) * spec.kernel * (
            spec.kernel_w or spec.kernel)
        return 2.0 * spec.batch * spec.out_h * spec.out_w * cout * per_out
    if spec.kind == "linear":
        return 2.0 * spec.batch * _round_up(spec.cin, block) * _round_up(spec.cout, block)
    if spec.kind == "tlinear":
        return (2.0 * spec.batch * spec.tokens * _round_up(spec.cin, block)
                * _round_up(spec.cout, block))
    return cost.flops


def kernel_features(spec: OpSpec) -> np.ndarray:
    cost = kernel_cost(spec)
    weight_bytes = cost.params * BYTES_PER_ELEMENT[spec.dtype]
    moved = cost.input_bytes + cost.output_bytes + weight_bytes
    mid = spec.mid if spec.kind in ("mbconv", "se") else 0
    raw = [float(getattr(spec, name)) for name in RAW_FIELDS]
    return np.array([
        *raw,
        float(ALL_ACTIVATIONS.index(spec.act)),
        float(POOL_TYPES.index(spec.pool)),
        cost.flops, cost.params, cost.input_bytes, cost.output_bytes, weight_bytes,
        cost.flops / max(moved, 1.0), float(spec.out_h), float(spec.out_w), float(mid),
        np.log1p(cost.flops), np.log1p(moved),
        *(value for block in CHANNEL_BLOCKS for value in (
            np.log1p(padded_flops(spec, cost, block)), float(spec.cin % block),
            float(spec.cout % block))),
        np.log1p(weight_bytes), np.log1p(cost.input_bytes), np.log1p(cost.output_bytes),
        np.log(float(spec.batch * spec.out_h * spec.out_w)),
        *_kind_features(spec),
        *_group_features(spec, cost),
    ], dtype=np.float64)


def _group_features(spec: OpSpec, cost: KernelCost) -> list[float]:
    """The GROUP_FEATURES columns of `spec` (zeros for kinds without groups)."""
    if spec.kind not in ("conv", "dwconv"):
        return [0.0, 0.0, 0.0]
    group_cin, group_cout = spec.cin // spec.groups, spec.cout // spec.groups
    padding = (_round_up(group_cin, GROUP_BLOCK) / group_cin
               * _round_up(group_cout, GROUP_BLOCK) / group_cout)
    return [float(group_cin), float(group_cout), float(np.log1p(cost.flops * padding))]


def _kind_features(spec: OpSpec) -> list[float]:
    """The KIND_FEATURES columns of `spec`."""
    head_dim = 0.0
    if spec.kind == "bmm":
        head_dim = float(spec.cin if spec.cout == spec.tokens else spec.cout)
    modes = MODES.get(spec.kind, ())
    rows = spec.batch * spec.heads * spec.tokens
    return [float(spec.tokens), float(spec.heads), head_dim, float(spec.dilation),
            float(spec.kernel_w or spec.kernel), float(spec.pad_w if spec.pad_w >= 0 else spec.pad),
            float(spec.out_pad), float(spec.scale),
            float(modes.index(spec.mode)) if spec.mode in modes else 0.0,
            float(spec.axes) if spec.axes else 0.0,
            float(spec.alpha) if spec.act == "leakyrelu" else 0.0, float(np.log(rows))]


def feature_width(kind: str, version: int = FEATURE_VERSION) -> int:
    """How many leading columns of feature `version` a kind's model is fitted on."""
    width = FEATURE_WIDTH[version]
    if kind in V2_KINDS:
        return min(width, FEATURE_WIDTH[2])
    return width if kind in V4_KINDS else min(width, FEATURE_WIDTH[3])


def feature_matrix(specs: Sequence[OpSpec], version: int = FEATURE_VERSION) -> np.ndarray:
    """One row per spec: the columns of feature `version` (a prefix of the newest); a kind's
    model reads the first `feature_width(kind, version)` of them."""
    width = FEATURE_WIDTH[version]
    if not specs:
        return np.zeros((0, width))
    return np.stack([kernel_features(s) for s in specs])[:, :width]


# Shape fields whose training range a predictor keeps (per kind, those its key holds), and FLOPs.
RANGE_FIELDS = ("h", "w", "cin", "cout", "kernel", "stride", "expand", "tokens", "heads",
                "dilation", "kernel_w", "scale")


def range_values(spec: OpSpec) -> dict[str, float]:
    """The values of `spec` a training range is kept for: its kind's RANGE_FIELDS (key fields,
    and optional ones at their effective value: kernel_w 0 is the square kernel) and FLOPs."""
    fields = set(KEY_FIELDS[spec.kind]) | set(OPTIONAL_FIELDS[spec.kind])
    out = {name: float(getattr(spec, name) or (spec.kernel if name == "kernel_w" else 0))
           for name in RANGE_FIELDS if name in fields}
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


# Fields naming which computation a kernel of the kind does, not its size: a pool of another
# type or an activation of another function is a kernel the model never saw, whatever its shape
# (an average pool priced from max and global pools came out 30x its time).
CATEGORY_FIELDS: dict[str, tuple[str, ...]] = {"pool": ("pool",), "act": ("act",),
                                               "resize": ("mode",), "pad": ("mode",)}


def training_values(specs: Sequence[OpSpec]) -> dict[str, dict[str, list[str]]]:
    """Per kernel kind with CATEGORY_FIELDS, the values of each over `specs` (sorted)."""
    seen: dict[str, dict[str, set[str]]] = {}
    for spec in specs:
        for name in CATEGORY_FIELDS.get(spec.kind, ()):
            seen.setdefault(spec.kind, {}).setdefault(name, set()).add(str(getattr(spec, name)))
    return {kind: {name: sorted(values) for name, values in by_name.items()}
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
    known = np.isfinite(ops[statistic].to_numpy(dtype=np.float64))
    if not known.any():
        raise DatasetError(f"no operator record carries {statistic} (a native tool may not "
                           "print it); fit another statistic")
    ops = ops[known]
    specs = [OpSpec.from_key(k) for k in ops["key"]]
    measured = ops[statistic].to_numpy(dtype=np.float64)
    overhead = ops["overhead_ms"].to_numpy(dtype=np.float64)
    overhead = np.where(np.isfinite(overhead), overhead, 0.0)
    kernel_ms = np.maximum(measured - overhead, 0.05 * measured)
    call_overhead = float(np.median(overhead)) if len(overhead) else 0.0
    return specs, kernel_ms, call_overhead
