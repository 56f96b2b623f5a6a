"""How a tensor operation becomes a kernel spec, whatever file format the model came in.

The ONNX split (`bench.kernels`) and the TFLite split (`bench.tflite_kernels`) must read one
network into one kernel list, so the rules that turn an operation on tensors of given shapes into
an OpSpec's fields live here, once:

- Rows beyond the model batch: a token-wise linear layer, softmax, layer norm or batched matmul
  on a tensor whose leading axes hold more than the batch (MobileViT's [B * P, N, C], attention's
  [B, heads, T, T]) keeps `batch` at the model batch and counts the rest as tokens or heads
  (`split_batch`).
- Elementwise kernels (act, add, mul) read (h, w, cin) off their tensor (`elementwise_dims`): an
  NCHW image as (H, W, C); any other ("plain") tensor with its last axis as cin and the axes
  before it as h and w - a token tensor [B, T, C] is h = T, w = 1; [B, H, W, C] channels-last
  maps and [B, heads, T, T] attention scores are h, w = the middle axes.
- A transpose is written in a canonical form (`transpose_spec`): axes of size 1 dropped, axes
  that stay next to each other merged, left-padded to 4-D. The same data movement gets the same
  key whichever reshapes an exporter put around it ([B, T, H, D] -> [B, H, T, D] is "0213",
  a 2-D [C, T] -> [T, C] is "0132"), and a transpose that only moves axes of size 1 is a
  reshape: no kernel.
- Gather and slice (`part_spec`): the tensor is read as [outer, axis, inner] around the sliced
  axis; one index taken and the axis dropped is a "gather" (select token 0 of [B, T, C], or one
  of q, k, v out of a packed [3, ...] tensor), a range of the axis is a "slice" (an NCHW channel
  slice keeps its h and w).
- A mean over axes (`reduce_spec`) names the axes positionally, as NCHW, and drops those of
  size 1.
- Resizes to sizes that are no integer multiple are priced as the integer-scale resize with the
  same output (`resize_spec`).
- Multi-node activations (GELU's erf and tanh forms, mish, swish, hard swish, in whatever order
  an exporter writes them) are recognised by what they compute (`identify_activation`).

It also holds the ratios both splits use to read fused blocks back (`se_ratio`, `expand_ratio`,
`part_id`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from latbench.bench.ops import OpSpec
from latbench.errors import SpecError

# --- fused blocks -----------------------------------------------------------------------------


def se_ratio(mid: int, channels: int) -> float:
    """The simplest fraction e with max(1, round(channels * e)) == mid (SE squeeze ratio)."""
    for denominator in range(1, 65):
        numerator = round(mid * denominator / channels)
        if numerator < 1 or numerator > denominator:
            continue
        ratio = float(f"{numerator / denominator:.6g}")
        if max(1, round(channels * ratio)) == mid:
            return ratio
    return float(f"{mid / channels:.6g}")


def expand_ratio(mid: int, cin: int) -> float:
    """The simplest ratio e with max(1, round(cin * e)) == mid (an mbconv's expansion)."""
    for denominator in range(1, 65):
        numerator = round(mid * denominator / cin)
        if numerator < 1:
            continue
        ratio = float(f"{numerator / denominator:.6g}")
        if max(1, round(cin * ratio)) == mid:
            return ratio
    return float(f"{mid / cin:.6g}")


def part_id(spec: OpSpec) -> tuple:
    """A primitive's identity; an SE by its squeezed channels (several ratios give the same)."""
    if spec.kind == "se":
        return spec.kind, spec.batch, spec.h, spec.w, spec.cin, spec.mid, spec.act
    return (spec.key(),)


# --- shapes -----------------------------------------------------------------------------------


def split_batch(rows: int, batch: int) -> tuple[int, int]:
    """(batch, rest) of `rows` leading elements: the model batch when it divides them."""
    n = batch if batch >= 1 and rows % batch == 0 else 1
    return n, rows // n


def elementwise_dims(shape: Sequence[int], batch: int, image: bool) -> tuple[int, int, int, int]:
    """(batch, h, w, cin) of an elementwise kernel on a tensor of `shape` (see the module
    docstring): NCHW when `image`, else the last axis is cin."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 4 and image:
        n, c, h, w = shape
        return n, h, w, c
    if not shape:
        return 1, 1, 1, 1
    if len(shape) == 1:
        return 1, 1, 1, shape[0]
    n, lead = split_batch(shape[0], batch)
    middle = shape[1:-1]
    h = lead * (middle[0] if middle else 1)
    w = int(np.prod(middle[1:], dtype=np.int64)) if len(middle) > 1 else 1
    return n, h, w, shape[-1]


def transpose_spec(shape: Sequence[int], perm: Sequence[int]) -> OpSpec | None:
    """The canonical `transpose` kernel of permuting `shape` by `perm`, or None when the
    permutation moves no data (only axes of size 1). Past 4 axis groups the first axis is read
    as a batch of transposes of the rest (MobileViT's [B * P, N, 3, heads, D] -> [3, B * P,
    heads, N, D] as B * P transposes of [N, 3 * heads, D]); SpecError if that is not enough."""
    shape = [int(d) for d in shape]
    perm = [int(p) % len(shape) for p in perm] if shape else []
    if sorted(perm) != list(range(len(shape))):
        raise SpecError(f"transpose perm {list(perm)} does not fit shape {shape}")
    try:
        return _canonical_transpose(shape, perm)
    except SpecError:
        if len(shape) < 2 or shape[0] == 1:
            raise
        rest = _canonical_transpose(shape[1:], [p - 1 for p in perm if p])
        if rest is None or rest.batch != 1:
            raise
        return rest.with_(batch=shape[0])


def _canonical_transpose(shape: list[int], perm: list[int]) -> OpSpec | None:
    kept = [a for a in range(len(shape)) if shape[a] != 1]
    sizes = {a: shape[a] for a in kept}
    order = [a for a in perm if a in sizes]  # input axes in output order
    # merge runs of input axes that stay adjacent and in order
    groups: list[list[int]] = []
    for a in order:
        if groups and kept.index(a) == kept.index(groups[-1][-1]) + 1:
            groups[-1].append(a)
        else:
            groups.append([a])
    merged_in = sorted(groups, key=lambda g: g[0])
    dims = [int(np.prod([sizes[a] for a in g], dtype=np.int64)) for g in merged_in]
    out_perm = [merged_in.index(g) for g in groups]
    if len(dims) <= 1 or out_perm == sorted(out_perm):
        return None
    if len(dims) > 4:
        raise SpecError(f"a transpose of {'x'.join(map(str, shape))} by {list(perm)} moves "
                        f"{len(dims)} axis groups; latbench transposes hold at most 4")
    pad = 4 - len(dims)
    dims = [1] * pad + dims
    axes = "".join(str(a) for a in list(range(pad)) + [p + pad for p in out_perm])
    n, c, h, w = dims
    return OpSpec("transpose", batch=n, cin=c, h=h, w=w, axes=axes)


def around_axis(shape: Sequence[int], axis: int) -> tuple[int, int, int]:
    """(outer, size, inner): `shape` read as three axes around `axis`."""
    shape = [int(d) for d in shape]
    axis %= len(shape)
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, shape[axis], inner


def part_spec(shape: Sequence[int], axis: int, size: int, *, drops_axis: bool,
              image: bool) -> OpSpec:
    """The kernel taking `size` elements of `axis` of a tensor of `shape`: a "gather" when one
    index is taken and the axis dropped, else a "slice" (an NCHW image's channels keep their
    h and w)."""
    outer, length, inner = around_axis(shape, axis)
    if drops_axis and size == 1:
        return OpSpec("gather", batch=outer, tokens=length, cin=inner)
    if image and len(shape) == 4 and axis % 4 == 1:
        n, c, h, w = (int(d) for d in shape)
        return OpSpec("slice", batch=n, cin=c, cout=size, h=h, w=w)
    return OpSpec("slice", batch=outer, cin=length, cout=size, h=inner)


def reduce_spec(shape: Sequence[int], axes: Sequence[int]) -> OpSpec | None:
    """The "reduce" kernel averaging `axes` of a tensor of up to 4 axes, named positionally
    (batch, cin, h, w; fewer axes padded on the right); None when only axes of size 1 (a batch
    of one among them) are averaged: no work. A mean over a larger batch is the caller's to
    refuse."""
    kept = [a for a in sorted(set(axes)) if a and shape[a] != 1]
    if not kept:
        return None
    n, c, h, w = (*(int(d) for d in shape), 1, 1, 1)[:4]
    return OpSpec("reduce", batch=n, cin=c, h=h, w=w, axes="".join(map(str, kept)))


def resize_spec(batch: int, channels: int, size: tuple[int, int], out: tuple[int, int],
                mode: str) -> OpSpec:
    """The resize kernel of an NCHW map from `size` to `out` (H, W): its integer scale when out
    is one for both axes, else the integer-scale resize with the same output (the cost of a
    resize follows its output), scale 1 for a downscale."""
    (h, w), (oh, ow) = size, out
    if oh % h == 0 and ow % w == 0 and oh // h == ow // w:
        return OpSpec("resize", batch=batch, cin=channels, h=h, w=w, scale=oh // h, mode=mode)
    scale = max(1, math.ceil(max(oh / h, ow / w)))
    while scale > 1 and (oh % scale or ow % scale):
        scale -= 1
    return OpSpec("resize", batch=batch, cin=channels, h=oh // scale, w=ow // scale,
                  scale=scale, mode=mode)


# --- activations by what they compute ---------------------------------------------------------


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


# Every activation a cone of elementwise nodes may compute (prelu needs its learned slopes and
# leakyrelu its alpha: both are single nodes).
ACTIVATION_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": _relu6,
    "hswish": lambda x: x * _relu6(x + 3.0) / 6.0,
    "hsigmoid": lambda x: _relu6(x + 3.0) / 6.0,
    "sigmoid": _sigmoid,
    "swish": lambda x: x * _sigmoid(x),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                                    * (x + 0.044715 * x**3))),
    "tanh": np.tanh,
    "mish": lambda x: x * np.tanh(_softplus(x)),
}
# Where an activation is told apart: wide enough for GELU's tails and relu6's clip.
PROBE = np.linspace(-8.0, 8.0, 161)


def identify_activation(values: np.ndarray, tolerance: float = 1e-5) -> str | None:
    """The activation whose values at PROBE are `values` (float32 constants allowed for), or
    None. The exact and tanh GELUs differ by up to 5e-4, far above the tolerance."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != PROBE.shape or not np.all(np.isfinite(values)):
        return None
    for name, function in ACTIVATION_FUNCTIONS.items():
        want = function(PROBE)
        if np.all(np.abs(values - want) <= tolerance * (1.0 + np.abs(want))):
            return name
    return None
