"""Split a TFLite model into latbench kernels (OpSpecs), in execution order.

The TFLite twin of `bench.kernels.onnx_to_kernels`: the same network in either format gives the
same kernel list, so one predictor answers for both. Images are stored NHWC; kernels read every
tensor as the NCHW model of the same network holds it (`bench.tflite_graph`), and TRANSPOSEs
that only change between the two layouts fold away. TFLite lowers some kernels into several
operators, and the matchers read them back as one: an explicit PAD / PADV2 before a VALID
convolution or pool (its padding; any other PAD is a "pad" kernel), activations an operator
cannot fuse (LOGISTIC + MUL is swish, ADD 3 with RELU6 + MUL 1/6 is hard sigmoid, EXP / ADD /
LOG / TANH / MUL is mish), squeeze-excite (MEAN -> 1x1 conv or FULLY_CONNECTED -> ... -> gate ->
MUL), a grouped convolution written as SPLIT + per-group CONV_2D + CONCATENATION, and (in
`bench.tflite_patterns`) layer and instance normalizations, transposed convolutions with their
crop, and channel shuffles.

Which follower attaches to which producer follows the same `attach` rules as the ONNX split,
fused activation fields included, so a predictor's fusion rules price both formats alike;
`group` reads inverted residuals as "mbconv" kernels exactly as the ONNX split does. Padding
that TFLite places asymmetrically (SAME with an odd total, as TensorFlow converts stride-2
layers) is priced as the symmetric padding that gives the same output size. A TFLite file
stores every tensor's shape, so the model is read at those shapes: a dynamic batch runs at its
stored size (as the interpreter allocates it), other dynamic dimensions are refused.

Each kernel carries the precision it computes in (`OpSpec.dtype`): "int8" for operators on
int8 tensors (full-integer quantized models; the QUANTIZE / DEQUANTIZE at the float inputs and
outputs, or between int8 kernels, are no kernel), "float16" for every float32 kernel of a
model whose weights are stored as float16 behind DEQUANTIZEs (LiteRT's FP16 weights), else
"float32". Hybrid models (int8 weights, float data) are refused.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from latbench.bench import tflite_patterns as patterns
from latbench.bench.kernel_forms import expand_ratio, part_id, se_ratio
from latbench.bench.kernels import DEFAULT_ATTACH, Group, ModelKernels, ShapeMap
from latbench.bench.ops import ACTIVATIONS, DTYPES, OpSpec, decompose
from latbench.bench.tflite_graph import (
    FUSED_ACTS,
    PASS_THROUGH_OPS,
    SHAPE_OPS,
    UNARY_ACTS,
    Graph,
    Match,
    OpProblem,
    act_kernel,
    activation_at,
    attach,
    fused_code,
    gate_from,
    mish_from,
    self_gated,
    unary_act,
)
from latbench.bench.tflite_model import Operator, TFLiteModel, read_tflite
from latbench.errors import ConfigError, ParseError, SpecError, UnsupportedModelError

logger = logging.getLogger(__name__)

Rules = Collection[tuple[str, str]]
# Inputs an operator must have (data, then weights / paddings / axes / second operand).
_MIN_INPUTS = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "PAD": 2,
               "PADV2": 2, "MIRROR_PAD": 2, "MEAN": 2, "SPLIT": 2, "SPLIT_V": 3, "ADD": 2,
               "SUB": 2, "MUL": 2, "DIV": 2, "BATCH_MATMUL": 2, "TRANSPOSE": 2, "GATHER": 2,
               "TRANSPOSE_CONV": 3, "RESIZE_BILINEAR": 2, "RESIZE_NEAREST_NEIGHBOR": 2,
               "SLICE": 3, "STRIDED_SLICE": 3, "PRELU": 2}
# The data input of operators whose first input is not the data.
_DATA_INPUT = {"SPLIT": 1, "TRANSPOSE_CONV": 2}


@dataclass(frozen=True)
class _Pad:
    """An explicit PAD before a convolution or pool: its unpadded input and the (before, after)
    padding of H and W."""

    source: int
    hw: tuple[tuple[int, int], tuple[int, int]]


# --- small helpers --------------------------------------------------------------------------
def _square(g: Graph, op: Operator, name: str, values: tuple[int, int]) -> int:
    if values[0] != values[1]:
        raise OpProblem(f"{g.describe(op)} has non-square {name} {list(values)}")
    return int(values[0])


def _strides(g: Graph, op: Operator) -> int:
    o = op.options
    return _square(g, op, "strides", (o.get("stride_h") or 1, o.get("stride_w") or 1))


def _symmetric_pad(g: Graph, op: Operator, sizes: tuple[int, int], pad: _Pad | None,
                   extents: tuple[int, int], stride: int, outs: tuple[int, int]
                   ) -> tuple[int, int]:
    """The symmetric padding of H and W from the op's padding mode and an explicit PAD before
    it (`extents`: the dilated window sizes).

    Unequal before/after padding is priced as the symmetric pad giving the same output size."""
    mode = op.options.get("padding", "VALID")
    found = []
    for axis, (size, kernel, out) in enumerate(zip(sizes, extents, outs, strict=True)):
        before, after = pad.hw[axis] if pad is not None else (0, 0)
        padded = size + before + after
        if mode == "SAME":
            total = max((math.ceil(padded / stride) - 1) * stride + kernel - padded, 0)
            before, after = before + total // 2, after + total - total // 2
        if before == after:
            found.append(before)
            continue
        total = before + after
        fits = [p for p in (-(-total // 2), total // 2)
                if (size + 2 * p - kernel) // stride + 1 == out]
        if not fits:
            raise OpProblem(f"{g.describe(op)} pads {before} before and {after} after; no "
                            f"symmetric padding gives its output size {out}")
        logger.debug("%s pads %d/%d, priced as %d on both sides", g.describe(op), before,
                     after, fits[0])
        found.append(fits[0])
    return found[0], found[1]


def _check_output(g: Graph, op: Operator, spec: OpSpec) -> None:
    _, oh, ow, oc = g.shape(op.outputs[0])
    if (oh, ow, oc) != (spec.out_h, spec.out_w, spec.out_c):
        raise OpProblem(f"{g.describe(op)} gives {list(g.shape(op.outputs[0]))}, its kernel "
                        f"{spec.key()} would give {spec.out_h}x{spec.out_w}x{spec.out_c}")


# --- matchers: each reads one root op and returns its kernels and the ops they cover ----------
def _conv_spec(g: Graph, op: Operator, x: int, pad: _Pad | None, groups: int | None = None,
               cout: int | None = None) -> OpSpec:
    """The kernel of convolution `op` reading `x` (before an explicit `pad`, if any)."""
    x_shape, f_shape, o_shape = g.shape(x), g.shape(op.inputs[1]), g.shape(op.outputs[0])
    if len(x_shape) != 4 or len(f_shape) != 4 or len(o_shape) != 4:
        raise OpProblem(f"{g.describe(op)} is not a 2-D convolution (input {list(x_shape)})")
    _, h, w, cin = x_shape
    if op.op == "DEPTHWISE_CONV_2D":
        _, kh, kw, out_c = f_shape
        groups = cin
    else:
        out_c, kh, kw, cin_g = f_shape
        if groups is None:
            if cin % cin_g:
                raise OpProblem(f"{g.describe(op)} reads {cin} channels with filters of "
                                 f"{cin_g}")
            groups = cin // cin_g
    cout = out_c if cout is None else cout
    o = op.options
    dilation = _square(g, op, "dilation", (o.get("dilation_h_factor") or 1,
                                            o.get("dilation_w_factor") or 1))
    stride = _strides(g, op)
    extents = (dilation * (kh - 1) + 1, dilation * (kw - 1) + 1)
    ph, pw = _symmetric_pad(g, op, (h, w), pad, extents, stride, o_shape[1:3])
    kind = "dwconv" if groups == cin == cout else "conv"
    return OpSpec(kind, h=h, w=w, cin=cin, cout=cout, kernel=kh, kernel_w=kw, stride=stride,
                  pad=ph, pad_w=pw, dilation=dilation, groups=groups, batch=g.batch)


def _check_weights(g: Graph, op: Operator, x: int, weights: int) -> None:
    if weights not in g.static:
        raise OpProblem(f"{g.describe(op)} multiplies two computed tensors (no weight)")
    wt, xt = g.tensors[weights].dtype, g.tensors[x].dtype
    if wt != xt:
        raise OpProblem(f"{g.describe(op)} has {wt} weights for {xt} data (hybrid "
                         "quantization); latbench kernels compute in one type")


def _match_conv(g: Graph, op: Operator, rules: Rules,
                pad: _Pad | None = None) -> Match:
    _check_weights(g, op, op.inputs[0], op.inputs[1])
    spec = _conv_spec(g, op, op.inputs[0] if pad is None else pad.source, pad)
    _check_output(g, op, spec)
    ops = [op]
    act, extra = attach(g, op, spec.kind, op.outputs[0], rules, ops)
    return Match([spec.with_(act=act.name, alpha=act.alpha), *extra], ops)


def _match_split_conv(g: Graph, op: Operator, rules: Rules,
                      pad: _Pad | None = None) -> Match:
    """SPLIT along channels -> one CONV_2D per part -> CONCATENATION: a grouped conv."""
    axis, x = op.inputs[0], op.inputs[1]
    value = g.const(axis)
    rank = len(g.shape(x))
    problem = _NotGrouped(f"{g.describe(op)} is not the split of a grouped convolution")
    if value is None or value.size != 1 or rank != 4 or int(value.ravel()[0]) % rank != 3:
        raise problem
    convs = [g.sole_user(part) for part in op.outputs]
    if any(c is None or c.op != "CONV_2D" or c.inputs[0] != part
           for c, part in zip(convs, op.outputs, strict=True)):
        raise problem
    first = convs[0]
    if any(c.options != first.options or g.shape(c.inputs[1]) != g.shape(first.inputs[1])
           for c in convs):
        raise problem
    concat = g.sole_user(first.outputs[0])
    if concat is None or concat.op != "CONCATENATION" \
            or list(concat.inputs) != [c.outputs[0] for c in convs] \
            or any(g.sole_user(c.outputs[0]) is not concat for c in convs) \
            or concat.options.get("axis", 0) % 4 != 3:
        raise problem
    for c in convs:
        _check_weights(g, c, c.inputs[0], c.inputs[1])
    out = concat.outputs[0]
    cout = g.shape(out)[3]
    spec = _conv_spec(g, first, x if pad is None else pad.source, pad, groups=len(convs),
                      cout=cout)
    if fused_code(concat) != "NONE":
        raise problem
    _check_output(g, concat, spec)
    ops = [op, *convs, concat]
    # The groups' fused activation, else the activation operators after the concatenation.
    act, extra = attach(g, first, spec.kind, out, rules, ops)
    return Match([spec.with_(act=act.name, alpha=act.alpha), *extra], ops)


class _NotGrouped(OpProblem):
    """A SPLIT whose parts are not the groups of one convolution."""


def _match_split(g: Graph, op: Operator, rules: Rules) -> Match:
    """A grouped convolution (SPLIT + CONV_2D per part + CONCATENATION), else one "slice"
    kernel per part."""
    try:
        return _match_split_conv(g, op, rules)
    except _NotGrouped:
        return patterns.split_slices(g, op)


def _match_pool(g: Graph, op: Operator, rules: Rules,
                pad: _Pad | None = None) -> Match:
    x = pad.source if pad is not None else op.inputs[0]
    shape, o_shape = g.shape(x), g.shape(op.outputs[0])
    if len(shape) != 4 or len(o_shape) != 4:
        raise OpProblem(f"{g.describe(op)} is not a 2-D pool (input {list(shape)})")
    _, h, w, c = shape
    o = op.options
    kernel = _square(g, op, "kernel", (o.get("filter_height", 1), o.get("filter_width", 1)))
    stride = _strides(g, op)
    p = _square(g, op, "padding", _symmetric_pad(g, op, (h, w), pad, (kernel, kernel), stride,
                                                 o_shape[1:3]))
    pool = "avg" if op.op == "AVERAGE_POOL_2D" else "max"
    spec = OpSpec("pool", h=h, w=w, cin=c, pool=pool, kernel=kernel, stride=stride, pad=p,
                  batch=g.batch)
    _check_output(g, op, spec)
    ops = [op]
    _, extra = attach(g, op, "pool", op.outputs[0], rules, ops)
    return Match([spec, *extra], ops)


# Operators an explicit PAD may precede, and their matchers.
_PADDED: dict[str, Callable[..., Match]] = {
    "CONV_2D": _match_conv, "DEPTHWISE_CONV_2D": _match_conv, "AVERAGE_POOL_2D": _match_pool,
    "MAX_POOL_2D": _match_pool, "SPLIT": _match_split_conv,
}


def _match_pad(g: Graph, op: Operator, rules: Rules) -> Match:
    """PAD / PADV2 + a VALID convolution or pool: one kernel with that padding (how converters
    write a padded convolution); any other PAD is a "pad" kernel."""
    out = op.outputs[0]
    user = g.sole_user(out)
    data_input = 1 if user is not None and user.op == "SPLIT" else 0
    if user is None or user.op not in _PADDED or user.inputs[data_input] != out \
            or (user.op != "SPLIT" and user.options.get("padding") != "VALID"):
        return patterns.pad_kernel(g, op)
    paddings = g.const(op.inputs[1])
    if paddings is None or paddings.shape != (4, 2):
        raise OpProblem(f"{g.describe(op)} has computed or non-4-D paddings")
    paddings = paddings.astype(int)
    if paddings[0].any() or paddings[3].any():
        raise OpProblem(f"{g.describe(op)} pads the batch or channel dimension")
    hw = ((int(paddings[1][0]), int(paddings[1][1])), (int(paddings[2][0]), int(paddings[2][1])))
    match = _PADDED[user.op](g, user, rules, _Pad(op.inputs[0], hw))
    match.ops.insert(0, op)
    return match


def _match_linear(g: Graph, op: Operator, rules: Rules) -> Match:
    """FULLY_CONNECTED: "tlinear" over tokens, else "linear" (see `patterns.linear_kernel`)."""
    x, weights = op.inputs[0], op.inputs[1]
    _check_weights(g, op, x, weights)
    w_shape = g.shape(weights)
    if len(w_shape) != 2:
        raise OpProblem(f"{g.describe(op)} has weights of shape {list(w_shape)}, not 2-D")
    cout, cin = w_shape
    return patterns.linear_kernel(g, op, x, cin, cout, rules, [op], op.outputs[0],
                                  keep_dims=bool(op.options.get("keep_num_dims")))


def _match_activation(g: Graph, op: Operator, rules: Rules) -> Match:
    """An activation nothing absorbed: its own "act" kernel (x * gate(x) and mish as one)."""
    x = op.inputs[0]
    gate = gate_from(g, op, x) if op.op == "LOGISTIC" else None
    act = mish_from(g, op, x) if op.op == "EXP" else \
        None if gate is None else self_gated(g, gate, x)
    act = act or unary_act(g, op)
    if act is None:
        raise OpProblem(f"{g.describe(op)} is not an activation latbench knows")
    return Match([act_kernel(g, x, act.name, act.alpha)], act.ops)


def _match_elementwise(g: Graph, op: Operator, rules: Rules) -> Match:
    """ADD/SUB of two tensors -> add (+ activation); MUL/DIV, or any of them with a constant
    operand (a per-channel affine), -> mul; an ADD of a constant [1, T, C] -> posembed. A hard
    sigmoid (ADD 3, RELU6, MUL 1/6) and x * hsigmoid(x) are activation kernels."""
    dynamic = g.dynamic_inputs(op)
    if op.op == "ADD" and len(dynamic) == 1:
        gate = gate_from(g, op, dynamic[0])
        if gate is not None:
            act = self_gated(g, gate, dynamic[0]) or gate
            return Match([act_kernel(g, dynamic[0], act.name)], act.ops)
        posembed = patterns.posembed_at(g, op)
        if posembed is not None:
            return posembed
    n, h, w, c = g.dims(op.outputs[0])
    ops = [op]
    if len(dynamic) == 2 and op.op in ("ADD", "SUB"):
        act, extra = attach(g, op, "add", op.outputs[0], rules, ops)
        return Match([OpSpec("add", h=h, w=w, cin=c, act=act.name, alpha=act.alpha,
                             batch=n), *extra], ops)
    _, extra = attach(g, op, "mul", op.outputs[0], rules, ops)
    return Match([OpSpec("mul", h=h, w=w, cin=c, batch=n), *extra], ops)


def _averages_hw(g: Graph, op: Operator) -> bool:
    """Whether a MEAN averages a 4-D image over H and W (a global average pool)."""
    axes = g.const(op.inputs[1]) if len(op.inputs) > 1 else None
    return axes is not None and len(g.shape(op.inputs[0])) == 4 \
        and {int(a) % 4 for a in axes.ravel()} == {1, 2}


def _match_mean(g: Graph, op: Operator, rules: Rules) -> Match:
    """MEAN: a layer or instance normalization starting here, a squeeze-excite, a global
    average pool (H and W of an image), else a "reduce" kernel."""
    x = op.inputs[0]
    norm = patterns.match_norm(g, op)
    if norm is not None:
        return norm
    if not _averages_hw(g, op):
        return patterns.reduce_kernel(g, op)
    se = _match_se(g, op, x)
    if se is not None:
        return se
    h, w, c = g.hwc(x)
    return Match([OpSpec("pool", h=h, w=w, cin=c, pool="gavg", batch=g.batch)], [op])


def _fc_at(g: Graph, tensor: int) -> tuple[Operator, int, int] | None:
    """A fully connected layer reading `tensor` alone: 1x1 CONV_2D or FULLY_CONNECTED.

    Returns (op, in features, out features)."""
    op = g.sole_user(tensor)
    if op is None or op.op not in ("CONV_2D", "FULLY_CONNECTED") or len(op.inputs) < 2 \
            or op.inputs[0] != tensor or op.inputs[1] not in g.static:
        return None
    w_shape = g.shape(op.inputs[1])
    if op.op == "CONV_2D" and len(w_shape) == 4 and w_shape[1:3] == (1, 1):
        return op, w_shape[3], w_shape[0]
    if op.op == "FULLY_CONNECTED" and len(w_shape) == 2:
        return op, w_shape[1], w_shape[0]
    return None


def _match_se(g: Graph, pool: Operator, x: int) -> Match | None:
    """MEAN(x) -> FC (+act) -> FC -> LOGISTIC / hard sigmoid -> MUL with x  ==>  one "se"
    kernel. FC is a 1x1 CONV_2D or FULLY_CONNECTED; reshapes may sit between."""
    channels = g.shape(x)[3]
    ops = [pool]
    tensor, skipped = g.skip_pass_through(pool.outputs[0])
    ops += skipped
    squeeze = _fc_at(g, tensor)
    if squeeze is None or squeeze[1] != channels:
        return None
    fc, _, mid = squeeze
    ops.append(fc)
    tensor = fc.outputs[0]
    code = fused_code(fc)
    if code not in FUSED_ACTS:
        return None
    if code == "NONE" and (act := activation_at(g, tensor)) is not None:
        ops += act.ops
        tensor = act.output
    tensor, skipped = g.skip_pass_through(tensor)
    ops += skipped
    excite = _fc_at(g, tensor)
    if excite is None or excite[1:] != (mid, channels) \
            or fused_code(excite[0]) != "NONE":
        return None
    ops.append(excite[0])
    tensor, skipped = g.skip_pass_through(excite[0].outputs[0])
    ops += skipped
    user = g.sole_user(tensor)
    gate = None if user is None else gate_from(g, user, tensor)
    if gate is None:
        return None
    ops += gate.ops
    tensor, skipped = g.skip_pass_through(gate.output)
    ops += skipped
    mul = g.sole_user(tensor)
    if mul is None or mul.op != "MUL" or sorted(mul.inputs) != sorted([x, tensor]) \
            or fused_code(mul) != "NONE" or mid > channels:
        return None
    ops.append(mul)
    h, w, c = g.hwc(x)
    spec = OpSpec("se", h=h, w=w, cin=c, expand=se_ratio(mid, c), act=gate.name, batch=g.batch)
    return Match([spec], ops)


def _no_kernel(g: Graph, op: Operator, rules: Rules) -> Match:
    return Match([], [op])


# --- fused blocks ---------------------------------------------------------------------------
# Inside a block every activation belongs to the block, whatever the attach rules.
_BLOCK_ATTACH = frozenset((kind, act) for kind in ("conv", "dwconv") for act in ACTIVATIONS
                          if act != "none")
_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
_BLOCK_ROOTS = frozenset({*_CONV_OPS, "PAD", "PADV2"})


def _conv_at(g: Graph, op: Operator | None, tensor: int) -> tuple[OpSpec, Match] | None:
    """The conv kernel of a ([PAD] +) convolution reading `tensor`, activation included."""
    if op is None or not g.free(op) or not op.inputs or op.inputs[0] != tensor:
        return None
    conv = g.sole_user(op.outputs[0]) if op.op in ("PAD", "PADV2") else op
    if conv is None or conv.op not in _CONV_OPS:
        return None
    try:
        match = MATCHERS[op.op](g, op, _BLOCK_ATTACH)
    except (OpProblem, SpecError, ArithmeticError, IndexError, ValueError):
        return None
    return (match.specs[0], match) if len(match.specs) == 1 else None


def _block_se(g: Graph, tensor: int) -> tuple[OpSpec, Match] | None:
    """The squeeze-excite reading `tensor` (its MEAN and its final MUL are the two readers)."""
    users = g.users(tensor)
    if len(users) != 2 or tensor in g.outputs:
        return None
    for pool in users:
        if pool.op == "MEAN" and pool.inputs[0] == tensor and _averages_hw(g, pool):
            match = _match_se(g, pool, tensor)
            return None if match is None else (match.specs[0], match)
    return None


def _match_mbconv(g: Graph, op: Operator) -> Match | None:
    """The inverted residual starting at `op` as one "mbconv" kernel, or None.

    [1x1 expand conv + act] -> kxk depthwise + act (same act) -> [SE] -> 1x1 project conv, no
    act -> [ADD of the block input], as `bench.kernels` groups ONNX. The kernel is accepted only
    when `decompose` of it gives exactly the primitives found, so grouping never changes what
    is priced, only how."""
    x = op.inputs[0]
    first = _conv_at(g, op, x)
    if first is None:
        return None
    parts, ops = [first[0]], list(first[1].ops)
    if first[0].kind == "conv":  # an expand conv; the depthwise conv must follow
        tensor = ops[-1].outputs[0]
        dw = _conv_at(g, g.sole_user(tensor), tensor)
        if dw is None:
            return None
        parts.append(dw[0])
        ops += dw[1].ops
    depthwise = parts[-1]
    if depthwise.kind != "dwconv" or depthwise.act != parts[0].act:
        return None
    tensor = ops[-1].outputs[0]
    se = _block_se(g, tensor)
    if se is not None:
        parts.append(se[0])
        ops += se[1].ops
        tensor = ops[-1].outputs[0]
    project = _conv_at(g, g.sole_user(tensor), tensor)
    if project is None:
        return None
    parts.append(project[0])
    ops += project[1].ops
    spec0, out = parts[0], project[0]
    tensor = ops[-1].outputs[0]
    add = g.sole_user(tensor)
    residual = (add is not None and add.op == "ADD" and sorted(add.inputs) == sorted([x, tensor])
                and fused_code(add) == "NONE"
                and activation_at(g, add.outputs[0]) is None)
    mid = depthwise.cin
    try:
        spec = OpSpec("mbconv", h=spec0.h, w=spec0.w, cin=spec0.cin, cout=out.cout,
                      kernel=depthwise.kernel, stride=depthwise.stride,
                      expand=1.0 if spec0.kind == "dwconv" else expand_ratio(mid, spec0.cin),
                      act=spec0.act, se=se is not None, residual=residual, batch=g.batch)
    except SpecError:
        return None
    if residual and add is not None:
        parts.append(OpSpec("add", h=out.out_h, w=out.out_w, cin=out.cout, batch=g.batch))
        ops.append(add)
    if [part_id(k) for k in decompose(spec)] != [part_id(k) for k in parts]:
        return None
    return Match([spec], ops)


Matcher = Callable[[Graph, Operator, Rules], Match]

# Root operator -> matcher. Every builtin operator latbench can price is a key here.
MATCHERS: dict[str, Matcher] = {
    "CONV_2D": _match_conv,
    "DEPTHWISE_CONV_2D": _match_conv,
    "SPLIT": _match_split,
    "SPLIT_V": lambda g, op, rules: patterns.split_slices(g, op),
    "PAD": _match_pad,
    "PADV2": _match_pad,
    "MIRROR_PAD": lambda g, op, rules: patterns.pad_kernel(g, op),
    "FULLY_CONNECTED": _match_linear,
    "BATCH_MATMUL": patterns.match_batch_matmul,
    **{op: _match_activation for op in (*UNARY_ACTS, "EXP")},
    **{op: _match_elementwise for op in ("ADD", "SUB", "MUL", "DIV")},
    "AVERAGE_POOL_2D": _match_pool,
    "MAX_POOL_2D": _match_pool,
    "MEAN": _match_mean,
    "SOFTMAX": patterns.match_softmax,
    "TRANSPOSE": patterns.match_transpose,
    "CONCATENATION": patterns.concat_kernel,
    "GATHER": patterns.match_gather,
    "TRANSPOSE_CONV": patterns.match_transpose_conv,
    "RESIZE_BILINEAR": patterns.match_resize,
    "RESIZE_NEAREST_NEIGHBOR": patterns.match_resize,
    "SLICE": patterns.match_slice,
    "STRIDED_SLICE": patterns.match_slice,
    **{op: _no_kernel for op in PASS_THROUGH_OPS | SHAPE_OPS},
    # int8 glue: float inputs in, float outputs out, or a change of quantization between int8
    # kernels (DEQUANTIZEs of stored weights are constants, never walked)
    "QUANTIZE": _no_kernel,
    "DEQUANTIZE": _no_kernel,
}


def parse_tflite(model: bytes | str | Path | TFLiteModel, *,
                 attach: Rules = DEFAULT_ATTACH, group: Group = False,
                 input_shapes: ShapeMap | None = None,
                 allow_partial: bool = False) -> ModelKernels:
    """The kernels a runtime executes for a .tflite `model`, in execution order.

    The contract of `bench.kernels.parse_onnx`: `attach` lists the (producer kind, follower)
    pairs fused into one kernel; `group` reads fused blocks (mbconv) as one kernel, True for
    every block found or a predicate for the blocks it accepts; `input_shapes` may only confirm
    the stored input shapes, since a TFLite file holds every tensor's shape for those; with
    `allow_partial` unsupported operators are left out and counted. UnsupportedModelError names
    every unsupported operator (with counts) and every operator used in a way no kernel
    describes; ParseError for input that is not a readable TFLite model of schema version 3.
    """
    tfl = model if isinstance(model, TFLiteModel) else read_tflite(model)
    sg = tfl.main
    if not sg.inputs or not sg.operators:
        raise ParseError(f"{tfl.source} has no graph input or no operator")
    _check_inputs(tfl, dict(input_shapes or {}))
    first = sg.tensors[sg.inputs[0]].shape
    try:
        g = Graph(tfl, batch=first[0] if first else 1)
    except (ArithmeticError, IndexError, ValueError) as exc:  # tensors no converter writes
        raise ParseError(f"{tfl.source} is malformed: {type(exc).__name__}: {exc}") from exc
    rules = frozenset(attach)
    accept = group if callable(group) else (lambda _spec: bool(group))
    float_dtype = "float16" if _float16_weights(g) else "float32"
    kernels: list[OpSpec] = []
    unsupported: Counter[str] = Counter()
    misused: Counter[str] = Counter()
    problems: list[str] = []
    for op in g.ops:
        if not g.free(op) or g.is_static(op):
            continue
        matcher = MATCHERS.get(op.op)
        if matcher is None:
            unsupported[op.name] += 1
            continue
        try:
            _check_arity(g, op)
            block = _match_mbconv(g, op) if group and op.op in _BLOCK_ROOTS else None
            match = block if block is not None and accept(block.specs[0]) else \
                matcher(g, op, rules)
            dtype = _dtype(g, op, float_dtype) if match.specs else "float32"
        except OpProblem as exc:
            problems.append(str(exc))
        except SpecError as exc:
            problems.append(f"{g.describe(op)}: {exc}")
        except (ArithmeticError, IndexError, ValueError) as exc:  # shapes no converter writes
            problems.append(f"{g.describe(op)} is malformed: {exc}")
        else:
            g.consumed.update(o.index for o in match.ops)
            kernels.extend(s if dtype == s.dtype else s.with_(dtype=dtype) for s in match.specs)
            continue
        misused[op.name] += 1
    if (unsupported or problems) and (not allow_partial or not kernels):
        message = _unsupported_message(tfl.source, unsupported, problems)
        if allow_partial:
            message += "; nothing else is left to predict"
        raise UnsupportedModelError(message)
    return ModelKernels(tuple(kernels), tfl.source, dict(sorted((unsupported + misused).items())),
                        tuple(problems))


def tflite_to_kernels(model: bytes | str | Path | TFLiteModel, *,
                      attach: Rules = DEFAULT_ATTACH,
                      group: Group = False) -> list[OpSpec]:
    """`parse_tflite` of the whole model (nothing may be left out): its kernels as a list."""
    return list(parse_tflite(model, attach=attach, group=group).kernels)


def _check_arity(g: Graph, op: Operator) -> None:
    need = _MIN_INPUTS.get(op.op, 1)
    present = [i for i in op.inputs[:need] if i >= 0]
    if len(present) < need or not op.outputs or min(op.outputs) < 0:
        raise OpProblem(f"{g.describe(op)} has inputs {list(op.inputs)} and outputs "
                         f"{list(op.outputs)}; it needs {need} inputs and an output")


def _check_inputs(tfl: TFLiteModel, given: dict[str, Sequence[int]]) -> None:
    """A dynamic batch runs at the stored size (as the interpreter allocates it); any other
    dynamic dimension leaves placeholder sizes in every shape, so no kernel can be read from
    them. Shapes given for inputs must be the stored ones (with or without the batch)."""
    inputs = [tfl.main.tensors[i] for i in tfl.main.inputs]
    names = [t.name for t in inputs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ConfigError(f"{tfl.source} has no input {unknown[0]!r}; its inputs: "
                          f"{', '.join(names)}")
    for t in inputs:
        if t.name in given:
            dims = tuple(int(d) for d in given[t.name])
            if dims not in (t.shape, t.shape[1:]):
                raise ConfigError(
                    f"{tfl.source}: input {t.name!r} is stored at {_dims(t.shape)}, the shape "
                    f"given for it is {_dims(dims)}; latbench reads a TFLite model at its "
                    "stored shapes (convert it at the shape you want)")
        if any(d < 0 for d in t.signature[1:]):
            raise UnsupportedModelError(
                f"{tfl.source}: input {t.name!r} has dynamic dimensions {_dims(t.signature)} "
                "(shape signature); convert the model with a fixed input shape")


def _dims(dims: Sequence[int]) -> str:
    return "x".join("?" if d < 0 else str(d) for d in dims)


def _float16_weights(g: Graph) -> bool:
    """Whether the model stores its weights as float16 read through DEQUANTIZE (the converter's
    float16 quantization)."""
    return any(op.op == "DEQUANTIZE" and g.is_static(op) and op.inputs
               and g.tensors[op.inputs[0]].dtype == "FLOAT16" for op in g.ops)


def _dtype(g: Graph, op: Operator, float_dtype: str) -> str:
    """latbench dtype of the data `op` computes on, or a problem naming it. Float32 data of a
    model with float16 weights is "float16" (`float_dtype`), whether the kernel reads a weight
    or not: the dtype names the precision the model was converted to, the platform a
    predictor must know (LiteRT's "FP16 weights"), not the arithmetic of one kernel."""
    tensor = g.tensors[op.inputs[_DATA_INPUT.get(op.op, 0)]]
    dtype = tensor.dtype.lower()
    if dtype == "float32":
        return float_dtype
    if dtype not in DTYPES:
        raise OpProblem(f"{g.describe(op)} computes in {tensor.dtype}; latbench kernels are "
                         f"{', '.join(DTYPES)}")
    return dtype


def _unsupported_message(source: str, unsupported: Counter[str], problems: list[str]) -> str:
    parts = []
    if unsupported:
        listed = ", ".join(f"{op} ({n} op{'s' if n > 1 else ''})"
                           for op, n in sorted(unsupported.items()))
        parts.append(f"unsupported TFLite ops: {listed}; supported: {', '.join(supported_ops())}")
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        parts.append(f"unsupported uses: {shown}{more}")
    return f"{source}: " + ". ".join(parts)


def supported_ops() -> list[str]:
    """TFLite builtin operators the parser maps to kernels (or to no kernel)."""
    return sorted(MATCHERS)
