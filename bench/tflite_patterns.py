"""TFLite operators -> the transformer kinds and the rest of the common op set.

Matchers for what `bench.export.to_tflite` writes for these kinds, and the single-operator forms
converters write: FULLY_CONNECTED over tokens (tlinear), BATCH_MATMUL between computed tensors
(bmm; with a constant operand it is a tlinear), SOFTMAX, layer and instance normalization as
MEAN / SUB / MUL / RSQRT / ADD (or SQUARED_DIFFERENCE, SQRT + DIV) read back as one kernel,
TRANSPOSE (layout changes fold away, a RESHAPE + TRANSPOSE + RESHAPE that swaps channel groups
is a shuffle), CONCATENATION along any axis (with a constant token first: clstoken), GATHER,
an ADD of a constant [1, T, C] (posembed), TRANSPOSE_CONV (+ the SLICE of its padding),
RESIZE_*, PAD / MIRROR_PAD, SLICE / STRIDED_SLICE / SPLIT and MEAN over any axes. The fields
come from `bench.kernel_forms` - the rules the ONNX split follows - applied to each tensor as
the NCHW model holds it (`tflite_graph.Graph.nchw_shape`), so both formats give one kernel list.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection

from latbench.bench.kernel_forms import (
    part_spec,
    reduce_spec,
    resize_spec,
    split_batch,
    transpose_spec,
)
from latbench.bench.ops import BMM_SYMMETRIC, OpSpec
from latbench.bench.tflite_graph import Graph, Match, OpProblem, attach, fused_code
from latbench.bench.tflite_model import Operator

logger = logging.getLogger(__name__)

Rules = Collection[tuple[str, str]]


def _ints(g: Graph, op: Operator, tensor: int, what: str) -> list[int]:
    value = g.const(tensor) if tensor >= 0 else None
    if value is None:
        raise OpProblem(f"{g.describe(op)} has computed {what}")
    return [int(v) for v in value.ravel()]


# --- token-wise linear layers and attention ---------------------------------------------------
def linear_kernel(g: Graph, op: Operator, x: int, cin: int, cout: int, rules: Rules,
                  ops: list[Operator], out: int, keep_dims: bool) -> Match:
    """A linear layer reading `x` with `cin` -> `cout` features: "linear" on a 2-D [batch, C]
    input (a FULLY_CONNECTED without keep_num_dims flattens its input to that), else "tlinear"
    with the rows beyond the batch as tokens - the ONNX split's rule for MatMul and Gemm."""
    shape = g.shape(x)
    size = math.prod(shape)
    if size % cin or (keep_dims and shape[-1] != cin):
        raise OpProblem(f"{g.describe(op)} reads {list(shape)} with {cin} input features")
    rows = size // cin
    linear = (len(shape) <= 2 or not keep_dims) and rows == g.batch
    kind = "linear" if linear else "tlinear"
    act, extra = attach(g, op, kind, out, rules, ops)
    if linear:
        spec = OpSpec("linear", cin=cin, cout=cout, act=act.name, alpha=act.alpha, batch=rows)
    else:
        batch, tokens = split_batch(rows, g.batch)
        spec = OpSpec("tlinear", tokens=tokens, cin=cin, cout=cout, act=act.name,
                      alpha=act.alpha, batch=batch)
    return Match([spec, *extra], ops)


def _bias_add(g: Graph, tensor: int, cout: int, ops: list[Operator]) -> int:
    """Fold an ADD of a constant bias (cout values) after a matmul into the linear kernel."""
    add = g.sole_user(tensor)
    if add is None or add.op != "ADD" or fused_code(add) != "NONE" \
            or g.dynamic_inputs(add) != [tensor]:
        return tensor
    bias = g.const(next(i for i in add.inputs if i != tensor))
    if bias is None or bias.size != cout:
        return tensor
    ops.append(add)
    return add.outputs[0]


def match_batch_matmul(g: Graph, op: Operator, rules: Rules) -> Match:
    """BATCH_MATMUL of two computed tensors [..., M, K] @ [..., K, N]: "bmm" with the leading
    axes as batch x heads; with a constant right operand, a token-wise linear layer."""
    a, b = op.inputs[0], op.inputs[1]
    sa, sb, out = g.shape(a), g.shape(b), g.shape(op.outputs[0])
    if a in g.static or len(sa) < 2 or len(sb) < 2 or len(out) < 2:
        raise OpProblem(f"{g.describe(op)} multiplies {list(sa)} by {list(sb)}; latbench "
                        "reads a computed left operand of rank 2 or more")
    adj_x, adj_y = bool(op.options.get("adj_x")), bool(op.options.get("adj_y"))
    k = sa[-2] if adj_x else sa[-1]
    if b in g.static:
        if adj_x or math.prod(sb[:-2]) != 1:
            raise OpProblem(f"{g.describe(op)} multiplies by a constant of shape {list(sb)}; "
                            "latbench reads one weight matrix")
        cout = sb[-2] if adj_y else sb[-1]
        ops = [op]
        tensor = _bias_add(g, op.outputs[0], cout, ops)
        return linear_kernel(g, op, a, k, cout, rules, ops, tensor, keep_dims=True)
    batch, heads = split_batch(math.prod(out[:-2]), g.batch)
    right = g.tensors[b]
    symmetric = (right.dtype == "INT8" and right.quantization is not None
                 and not any(right.quantization.zero_point))
    # XNNPACK runs only this form (ops.BMM_SYMMETRIC); naming the dtype here keeps the mode
    form = {"dtype": "int8", "mode": BMM_SYMMETRIC} if symmetric else {}
    return Match([OpSpec("bmm", heads=heads, tokens=out[-2], cin=k, cout=out[-1], batch=batch,
                         **form)], [op])


def match_softmax(g: Graph, op: Operator, rules: Rules) -> Match:
    """SOFTMAX over the last axis of [..., tokens, C]: the leading axes are batch x heads
    (the ONNX split's rule)."""
    shape = g.shape(op.inputs[0])
    if not shape:
        raise OpProblem(f"{g.describe(op)} has a scalar input")
    batch, rest = split_batch(math.prod(shape[:-1]), g.batch)
    lead = math.prod(shape[:-2])
    heads, tokens = (lead // batch, shape[-2]) if len(shape) >= 3 and lead % batch == 0 else \
        (1, rest)
    return Match([OpSpec("softmax", heads=heads, tokens=tokens, cin=shape[-1], batch=batch)],
                 [op])


# --- normalization ---------------------------------------------------------------------------
_NORM_OPS = frozenset({"SUB", "MUL", "ADD", "DIV", "RSQRT", "SQRT", "SQUARED_DIFFERENCE",
                       "MEAN", "POW"})
_NORM_MAX_OPS = 16  # a normalization written out takes about ten operators


def match_norm(g: Graph, mean: Operator) -> Match | None:
    """The layer or instance normalization starting at the MEAN of its input, as one kernel.

    Every operator of the region reads only the input or tensors of the region, up to the point
    where one tensor of the input's shape is left (after a second MEAN and an RSQRT, or SQRT
    and DIV); a scale and a bias (MUL, ADD of constants) after it belong to the kernel too.
    The reduced axes decide the kind: trailing axes a layernorm, H and W an instnorm."""
    x = mean.inputs[0]
    shape = g.shape(x)
    kind, axis = _norm_kind(g, mean)
    if kind is None:
        return None
    region, produced = [mean], {mean.outputs[0]}
    end: int | None = None
    means, roots = 1, False
    for op in g.ops[mean.index + 1:]:
        if not g.free(op) or g.is_static(op):
            continue
        dynamic = g.dynamic_inputs(op)
        if not any(t in produced for t in dynamic):
            continue
        if end is not None:  # past the normalized tensor: only a scale or a bias joins
            if op.op not in ("MUL", "ADD") or dynamic != [end] or fused_code(op) != "NONE" \
                    or g.shape(op.outputs[0]) != shape:
                break
        elif op.op not in _NORM_OPS or any(t not in produced and t != x for t in dynamic) \
                or fused_code(op) != "NONE" or len(region) >= _NORM_MAX_OPS:
            return None
        region.append(op)
        produced.update(op.outputs)
        means += op.op == "MEAN"
        roots = roots or op.op in ("RSQRT", "SQRT")
        pending = {t for t in produced
                   if t in g.outputs or any(u not in region for u in g.users(t))}
        if len(pending) == 1 and means >= 2 and roots:
            (last,) = pending
            end = last if g.shape(last) == shape else None
    if end is None:
        return None
    if kind == "layernorm":  # over the trailing axes from `axis`
        batch, tokens = split_batch(math.prod(shape[:axis]), g.batch)
        spec = OpSpec("layernorm", tokens=tokens, cin=math.prod(shape[axis:]), batch=batch)
    else:
        n, c, h, w = g.nchw_shape(x)
        spec = OpSpec("instnorm", h=h, w=w, cin=c, batch=n)
    return Match([spec], region)


def _norm_kind(g: Graph, mean: Operator) -> tuple[str | None, int]:
    """("instnorm", 1) for a mean over H and W of a 4-D tensor, ("layernorm", first axis)
    for one over the trailing stored axes, else (None, 0)."""
    shape = g.shape(mean.inputs[0])
    axes = g.const(mean.inputs[1]) if len(mean.inputs) > 1 else None
    if axes is None or len(shape) < 2 or not mean.options.get("keep_dims"):
        return None, 0
    reduced = sorted({int(a) % len(shape) for a in axes.ravel()})
    if len(shape) == 4 and sorted(g.nchw_axis(mean.inputs[0], a) for a in reduced) == [2, 3]:
        return "instnorm", 1
    if reduced[0] > 0 and reduced == list(range(reduced[0], len(shape))):
        return "layernorm", reduced[0]
    return None, 0


def reduce_kernel(g: Graph, op: Operator) -> Match:
    """MEAN over any axes of up to 4 (dims kept or not): a "reduce" kernel with the NCHW
    tensor's axes named positionally (batch, cin, h, w; fewer axes padded on the right), as
    the ONNX split names them. Axes of size 1 are no work; a mean over a batch of more than
    one is no kernel latbench has."""
    x = op.inputs[0]
    shape = g.nchw_shape(x)
    axes = sorted({g.nchw_axis(x, a) for a in _ints(g, op, op.inputs[1], "axes")})
    if not shape or len(shape) > 4:
        raise OpProblem(f"{g.describe(op)} averages a {len(shape)}-D tensor; latbench reduces "
                        "up to 4 axes")
    if 0 in axes and shape[0] != 1:
        raise OpProblem(f"{g.describe(op)} averages the batch axis")
    spec = reduce_spec(shape, axes)
    return Match([] if spec is None else [spec], [op])


# --- layout and data movement ----------------------------------------------------------------
def match_transpose(g: Graph, op: Operator, rules: Rules) -> Match:
    """A layout change folds away; RESHAPE + TRANSPOSE + RESHAPE swapping two groups of the
    channels is a channel shuffle; any other TRANSPOSE is a "transpose" kernel in its
    canonical form (`kernel_forms.transpose_spec`), none when it moves no data."""
    if op.index in g.layout_ops:
        return Match([], [op])
    perm = _ints(g, op, op.inputs[1], "permutation")
    shuffle = _shuffle(g, op, perm)
    if shuffle is not None:
        return shuffle
    spec = transpose_spec(g.shape(op.inputs[0]), perm)
    return Match([] if spec is None else [spec], [op])


def _shuffle(g: Graph, op: Operator, perm: list[int]) -> Match | None:
    """RESHAPE (channels -> g x C/g) + TRANSPOSE of those two axes + RESHAPE back: "shuffle"."""
    reshape = g.producer.get(op.inputs[0])
    back = g.sole_user(op.outputs[0])
    if reshape is None or reshape.op != "RESHAPE" or back is None or back.op != "RESHAPE" \
            or g.sole_user(op.inputs[0]) is not op:
        return None
    x = reshape.inputs[0]
    if len(g.shape(x)) != 4 or g.shape(back.outputs[0]) != g.shape(x):
        return None
    split = g.shape(op.inputs[0])
    swapped = [i for i, p in enumerate(perm) if p != i]
    if len(swapped) != 2 or swapped[1] != swapped[0] + 1:
        return None
    i = swapped[0]
    if split[i] * split[i + 1] != g.shape(x)[-1] or math.prod(split[i + 2:]) != 1 \
            or split[i] < 2:
        return None
    n, c, h, w = g.nchw_shape(x)
    return Match([OpSpec("shuffle", h=h, w=w, cin=c, groups=split[i], batch=n)], [op, back])


def concat_kernel(g: Graph, op: Operator, rules: Rules) -> Match:
    """CONCATENATION along any axis but the batch of up to 4 axes, named positionally in the
    NCHW tensor (batch, cin, h, w) as the ONNX split names them; constant tokens put before
    [B, T, C] tokens are a "clstoken"."""
    inputs = [i for i in op.inputs if i >= 0]
    out = op.outputs[0]
    shape = g.nchw_shape(out)
    if len(inputs) == 1:
        return Match([], [op])
    axis = g.nchw_axis(out, int(op.options.get("axis", 0)))
    dynamic = g.dynamic_inputs(op)
    if len(dynamic) < len(inputs):
        if len(shape) == 3 and axis == 1 and len(dynamic) == 1:
            batch, tokens, c = g.shape(dynamic[0])
            return Match([OpSpec("clstoken", tokens=tokens, cin=c, batch=batch)], [op])
        raise OpProblem(f"{g.describe(op)} concatenates constants with computed tensors along "
                        f"axis {axis} of {list(shape)}")
    if axis == 0 or len(shape) > 4:
        raise OpProblem(f"{g.describe(op)} concatenates along axis {axis} of a "
                        f"{len(shape)}-D tensor (the batch axis, or past 4 axes)")
    n, c, h, w = (*shape, 1, 1)[:4]
    ops = [op]
    _, extra = attach(g, op, "concat", out, rules, ops)
    spec = OpSpec("concat", h=h, w=w, cin=c, groups=len(inputs),
                  axes="" if axis == 1 else str(axis), batch=n)
    return Match([spec, *extra], ops)


def match_gather(g: Graph, op: Operator, rules: Rules) -> Match:
    """GATHER of one constant index of an axis (the class token of [B, T, C], one of q, k,
    v): a "gather" (`kernel_forms.part_spec`)."""
    x = op.inputs[0]
    if x in g.static:
        raise OpProblem(f"{g.describe(op)} looks up a constant table (an embedding)")
    index = g.const(op.inputs[1])
    if index is None or index.size != 1 or op.options.get("batch_dims"):
        raise OpProblem(f"{g.describe(op)} gathers {'computed' if index is None else index.size}"
                        " indices; latbench's gather takes one")
    axis = g.nchw_axis(x, int(op.options.get("axis", 0)))
    return Match([part_spec(g.nchw_shape(x), axis, 1, drops_axis=True, image=g.is_image(x))],
                 [op])


def posembed_at(g: Graph, op: Operator) -> Match | None:
    """ADD of [B, T, C] and a constant [1, T, C] (or [T, C]): a position embedding."""
    dynamic = g.dynamic_inputs(op)
    if op.op != "ADD" or len(dynamic) != 1 or fused_code(op) != "NONE":
        return None
    x = dynamic[0]
    shape = g.shape(x)
    others = [i for i in op.inputs if i != x]
    if len(shape) != 3 or len(others) != 1 or g.shape(op.outputs[0]) != shape \
            or math.prod(g.shape(others[0])) != shape[1] * shape[2]:
        return None
    return Match([OpSpec("posembed", tokens=shape[1], cin=shape[2], batch=shape[0])], [op])


# --- the rest of the common op set ------------------------------------------------------------
def match_transpose_conv(g: Graph, op: Operator, rules: Rules) -> Match:
    """TRANSPOSE_CONV (+ a SLICE cropping H and W): "convt" with the symmetric padding and the
    output padding that give its output size."""
    filt, x, out = op.inputs[1], op.inputs[2], op.outputs[0]
    if filt not in g.static:
        raise OpProblem(f"{g.describe(op)} has computed weights")
    (n, h, w, cin), (cout, kh, kw, fin) = g.shape(x), g.shape(filt)
    sh, sw = int(op.options.get("stride_h") or 1), int(op.options.get("stride_w") or 1)
    if kh != kw or sh != sw or fin != cin:
        raise OpProblem(f"{g.describe(op)} has kernel {kh}x{kw}, strides {sh}x{sw} and "
                        f"{fin} of {cin} input channels per filter; latbench transposed convs "
                        "are square and ungrouped")
    ops, final, begin = [op], out, [0, 0]
    crop = g.sole_user(out)
    if crop is not None and crop.op == "SLICE" and fused_code(op) == "NONE":
        start = _ints(g, crop, crop.inputs[1], "begin")
        final = crop.outputs[0]
        if start[0] or start[3] or g.shape(final)[3] != cout:
            raise OpProblem(f"{g.describe(crop)} crops the batch or the channels of a "
                            "transposed convolution")
        begin = start[1:3]
        ops.append(crop)
    same = op.options.get("padding") == "SAME"
    pads = []
    for axis, size in ((1, h), (2, w)):
        full = (size - 1) * sh + kh
        before = begin[axis - 1] + (max(full - g.shape(out)[axis], 0) // 2 if same else 0)
        o = g.shape(final)[axis]
        out_pad = o - (full - 2 * before)
        if out_pad < 0:  # cropped one more at the end: the symmetric pad one larger
            before, out_pad = before + 1, out_pad + 2
        pads.append((before, out_pad))
    if pads[0] != pads[1] or not 0 <= pads[0][1] < sh:
        raise OpProblem(f"{g.describe(op)} gives {list(g.shape(final))} from "
                        f"{list(g.shape(x))}; no symmetric padding of a latbench transposed "
                        "conv gives it")
    act, extra = attach(g, op, "convt", final, rules, ops)
    spec = OpSpec("convt", h=h, w=w, cin=cin, cout=cout, kernel=kh, stride=sh,
                  pad=pads[0][0], out_pad=pads[0][1], act=act.name, alpha=act.alpha, batch=n)
    return Match([spec, *extra], ops)


def match_resize(g: Graph, op: Operator, rules: Rules) -> Match:
    """RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR of H and W (`kernel_forms.resize_spec`:
    sizes that are no integer multiple are priced as the integer-scale resize with the same
    output); a resize to the same size is no kernel."""
    (n, h, w, c), (_, oh, ow, _) = g.shape(op.inputs[0]), g.shape(op.outputs[0])
    if (oh, ow) == (h, w):
        return Match([], [op])
    mode = "nearest" if op.op == "RESIZE_NEAREST_NEIGHBOR" else "bilinear"
    return Match([resize_spec(n, c, (h, w), (oh, ow), mode)], [op])


def pad_kernel(g: Graph, op: Operator) -> Match:
    """PAD / PADV2 / MIRROR_PAD of H and W by one amount on every side: "pad"."""
    x = op.inputs[0]
    paddings = g.const(op.inputs[1])
    shape = g.shape(x)
    if paddings is None or len(shape) != 4 or paddings.shape != (4, 2):
        raise OpProblem(f"{g.describe(op)} pads a {len(shape)}-D tensor or has computed "
                        "paddings; latbench pads H and W of images")
    spatial = [axis for axis in range(4) if g.nchw_axis(x, axis) in (2, 3)]
    amounts = {int(v) for axis in spatial for v in paddings[axis]}
    others = [int(v) for axis in range(4) if axis not in spatial for v in paddings[axis]]
    if amounts == {0} and not any(others):
        return Match([], [op])
    if len(amounts) != 1 or any(others):
        raise OpProblem(f"{g.describe(op)} pads {paddings.astype(int).tolist()}; latbench pads "
                        "H and W equally on every side")
    mode = "constant"
    if op.op == "MIRROR_PAD":
        mode = "reflect"
        if op.options.get("mode") != "REFLECT":
            logger.debug("%s pads symmetric, priced as reflect", g.describe(op))
    n, c, h, w = g.nchw_shape(x)
    return Match([OpSpec("pad", h=h, w=w, cin=c, pad=amounts.pop(), mode=mode, batch=n)],
                 [op])


def match_slice(g: Graph, op: Operator, rules: Rules) -> Match:
    """SLICE / STRIDED_SLICE of one axis (`kernel_forms.part_spec`): a "slice", or a "gather"
    when one index is taken and the axis dropped (shrink_axis_mask, or a SQUEEZE after it)."""
    x = op.inputs[0]
    shape = g.shape(x)
    sizes = _slice_sizes(g, op, shape)
    changed = [axis for axis, (size, dim) in enumerate(zip(sizes, shape, strict=True))
               if size != dim]
    if not changed:
        return Match([], [op])
    if len(changed) != 1:
        raise OpProblem(f"{g.describe(op)} slices axes {changed} of {list(shape)}; latbench "
                        "slices one axis")
    (axis,) = changed
    shrink = int(op.options.get("shrink_axis_mask", 0)) if op.op == "STRIDED_SLICE" else 0
    drops = bool(shrink >> axis & 1) or _squeezed(g, op.outputs[0], axis, len(shape))
    spec = part_spec(g.nchw_shape(x), g.nchw_axis(x, axis), sizes[axis], drops_axis=drops,
                     image=g.is_image(x))
    return Match([spec], [op])


def _squeezed(g: Graph, tensor: int, axis: int, rank: int) -> bool:
    """Whether `tensor` is only read through a SQUEEZE of `axis` (one index taken)."""
    user = g.sole_user(tensor)
    if user is None or user.op != "SQUEEZE" or len(g.shape(tensor)) != rank:
        return False
    dims = user.options.get("squeeze_dims") or ()
    return not dims or axis in {int(d) % rank for d in dims}


def _slice_sizes(g: Graph, op: Operator, shape: tuple[int, ...]) -> list[int]:
    """How many elements of each axis a SLICE / STRIDED_SLICE keeps (strides of 1 only)."""
    begin = _ints(g, op, op.inputs[1], "begin")
    if op.op == "SLICE":
        size = _ints(g, op, op.inputs[2], "size")
        return [d - b if s < 0 else s for d, b, s in zip(shape, begin, size, strict=True)]
    end = _ints(g, op, op.inputs[2], "end")
    strides = _ints(g, op, op.inputs[3], "strides") if len(op.inputs) > 3 else [1] * len(shape)
    o = op.options
    if any(s != 1 for s in strides) or o.get("ellipsis_mask") or o.get("new_axis_mask"):
        raise OpProblem(f"{g.describe(op)} slices with strides {strides} or ellipsis/new-axis "
                        "masks; latbench slices contiguous ranges")
    sizes = []
    for axis, dim in enumerate(shape):
        b = 0 if o.get("begin_mask", 0) >> axis & 1 else begin[axis] % dim if dim else 0
        e = dim if o.get("end_mask", 0) >> axis & 1 else \
            min(end[axis] + dim if end[axis] < 0 else end[axis], dim)
        sizes.append(1 if o.get("shrink_axis_mask", 0) >> axis & 1 else max(e - b, 0))
    return sizes


def split_slices(g: Graph, op: Operator) -> Match:
    """SPLIT / SPLIT_V: one "slice" kernel per part (`kernel_forms.part_spec`)."""
    x, axis_tensor = (op.inputs[1], op.inputs[0]) if op.op == "SPLIT" else \
        (op.inputs[0], op.inputs[2])
    axis = _ints(g, op, axis_tensor, "axis")
    if len(axis) != 1:
        raise OpProblem(f"{g.describe(op)} splits along axes {axis}")
    rank = len(g.shape(x))
    stored = axis[0] % max(rank, 1)
    specs = [part_spec(g.nchw_shape(x), g.nchw_axis(x, stored), g.shape(part)[stored],
                       drops_axis=_squeezed(g, part, stored, rank), image=g.is_image(x))
             for part in op.outputs if part >= 0 and g.shape(part)[stored] != g.shape(x)[stored]]
    return Match(specs, [op])
