"""Split a TFLite model into latbench kernels (OpSpecs), in execution order.

The TFLite twin of `bench.kernels.onnx_to_kernels`: the same network in either format gives the
same kernel list, so one predictor answers for both. Tensors are NHWC; kernels read H, W, C.
TFLite lowers some kernels into several operators, and the matchers read them back as one:
an explicit PAD / PADV2 before a VALID convolution or pool (its padding), activations an
operator cannot fuse (LOGISTIC + MUL is swish, ADD 3 with RELU6 + MUL 1/6 is hard sigmoid),
squeeze-excite (MEAN -> 1x1 conv or FULLY_CONNECTED -> ... -> gate -> MUL), and a grouped
convolution written as SPLIT + per-group CONV_2D + CONCATENATION.

Which follower attaches to which producer follows the same `attach` rules as the ONNX split,
fused activation fields included, so a predictor's fusion rules price both formats alike;
`group` reads inverted residuals as "mbconv" kernels exactly as the ONNX split does. Padding
that TFLite places asymmetrically (SAME with an odd total, as TensorFlow converts stride-2
layers) is priced as the symmetric padding that gives the same output size. A TFLite file
stores every tensor's shape, so the model is read at those shapes: a dynamic batch runs at its
stored size (as the interpreter allocates it), other dynamic dimensions are refused.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latbench.bench.kernels import DEFAULT_ATTACH, Group, ModelKernels, ShapeMap, se_ratio
from latbench.bench.ops import ACTIVATIONS, DTYPES, OpSpec, decompose
from latbench.bench.tflite_model import Operator, Tensor, TFLiteModel, read_tflite
from latbench.errors import ConfigError, ParseError, SpecError, UnsupportedModelError

logger = logging.getLogger(__name__)

# Standalone activation operators -> latbench activation. Clamps other than [0, inf) are priced
# as relu6, as the ONNX split prices Clip.
UNARY_ACTS = {"RELU": "relu", "RELU6": "relu6", "RELU_N1_TO_1": "relu6", "RELU_0_TO_1": "relu6",
              "HARD_SWISH": "hswish", "LOGISTIC": "sigmoid"}
# fused_activation_function values -> latbench activation.
FUSED_ACTS = {"NONE": "none", "RELU": "relu", "RELU6": "relu6", "RELU_N1_TO_1": "relu6"}
# Operators that only relabel data, and those that (with fixed shapes) only compute constants.
PASS_THROUGH_OPS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS"})
SHAPE_OPS = frozenset({"SHAPE"})
# Operators that yield a constant when their input is one (weights stored as float16 or int8).
_CONST_FORWARD = frozenset({"DEQUANTIZE", "CAST"}) | PASS_THROUGH_OPS
_HSIGMOID = (3.0, 1.0 / 6.0)  # relu6(x + 3) * 1/6
# Inputs an operator must have (data, then weights / paddings / axes / second operand).
_MIN_INPUTS = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "PAD": 2,
               "PADV2": 2, "MEAN": 2, "SPLIT": 2, "ADD": 2, "SUB": 2, "MUL": 2, "DIV": 2}


class _OpProblem(Exception):
    """A supported operator used in a way no kernel describes (dilation, non-square, ...)."""


@dataclass(frozen=True)
class _Pad:
    """An explicit PAD before a convolution or pool: its unpadded input and the (before, after)
    padding of H and W."""

    source: int
    hw: tuple[tuple[int, int], tuple[int, int]]


@dataclass
class _Match:
    specs: list[OpSpec]
    ops: list[Operator]


@dataclass
class _Act:
    """An activation (or gate) found after a tensor: its latbench name, its ops, its output."""

    name: str
    ops: list[Operator]
    output: int


@dataclass
class _Graph:
    """The main subgraph with producer/consumer maps and its constant tensors."""

    model: TFLiteModel
    batch: int
    producer: dict[int, Operator] = field(default_factory=dict)
    consumers: dict[int, list[Operator]] = field(default_factory=dict)
    static: set[int] = field(default_factory=set)
    consumed: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        sg = self.model.main
        self.ops = sg.operators
        self.tensors = sg.tensors
        self.outputs = frozenset(sg.outputs)
        self.static |= {t.index for t in self.tensors if t.constant and not t.variable}
        for op in self.ops:
            for out in op.outputs:
                self.producer[out] = op
            ins = [i for i in op.inputs if i >= 0]
            if op.op in SHAPE_OPS or (ins and all(i in self.static for i in ins)):
                self.static.update(o for o in op.outputs if o >= 0)
        for op in self.ops:
            if not self.is_static(op):
                for t in dict.fromkeys(i for i in op.inputs if i >= 0):
                    self.consumers.setdefault(t, []).append(op)

    # --- structure ------------------------------------------------------------------------
    def users(self, tensor: int) -> list[Operator]:
        return self.consumers.get(tensor, [])

    def sole_user(self, tensor: int) -> Operator | None:
        """The only operator reading `tensor`, if it is not also a graph output (else None)."""
        users = self.users(tensor)
        if len(users) != 1 or tensor in self.outputs or not self.free(users[0]):
            return None
        return users[0]

    def is_static(self, op: Operator) -> bool:
        return all(o in self.static for o in op.outputs if o >= 0)

    def free(self, op: Operator) -> bool:
        return op.index not in self.consumed

    def dynamic_inputs(self, op: Operator) -> list[int]:
        return [i for i in op.inputs if i >= 0 and i not in self.static]

    def skip_pass_through(self, tensor: int) -> tuple[int, list[Operator]]:
        """Follow single-consumer RESHAPE/SQUEEZE/EXPAND_DIMS; the tensor after them."""
        skipped: list[Operator] = []
        while (user := self.sole_user(tensor)) is not None and user.op in PASS_THROUGH_OPS \
                and user.inputs[0] == tensor:
            skipped.append(user)
            tensor = user.outputs[0]
        return tensor, skipped

    # --- values ---------------------------------------------------------------------------
    def shape(self, tensor: int) -> tuple[int, ...]:
        return self.tensors[tensor].shape

    def const(self, tensor: int) -> np.ndarray | None:
        """Value of a constant tensor, through DEQUANTIZE / CAST / reshapes of one."""
        if tensor < 0:
            return None
        t = self.tensors[tensor]
        if t.constant and not t.variable:
            try:
                value = self.model.constant(t)
            except ParseError:
                return None
            return None if value is None else _dequantized(value, t)
        op = self.producer.get(tensor)
        if op is None or op.op not in _CONST_FORWARD or not op.inputs:
            return None
        value = self.const(op.inputs[0])
        return None if value is None else value.astype(np.float64)

    def describe(self, op: Operator) -> str:
        out = self.tensors[op.outputs[0]].name if op.outputs and op.outputs[0] >= 0 else ""
        return f"{op.name} op {op.index} (output {out!r})"


def _dequantized(value: np.ndarray, tensor: Tensor) -> np.ndarray:
    q = tensor.quantization
    if q is None or q.per_channel or value.dtype.kind not in "iu":
        return value.astype(np.float64)
    return (value.astype(np.float64) - q.zero_point[0]) * q.scale[0]


# --- small helpers --------------------------------------------------------------------------
def _hwc(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(H, W, C) of an NHWC (or NLC, or NC) tensor."""
    if len(shape) == 4:
        return shape[1], shape[2], shape[3]
    if len(shape) == 3:
        return 1, shape[1], shape[2]
    if len(shape) == 2:
        return 1, 1, shape[1]
    raise _OpProblem(f"tensor of rank {len(shape)} has no channel layout latbench knows")


def _square(g: _Graph, op: Operator, name: str, values: tuple[int, int]) -> int:
    if values[0] != values[1]:
        raise _OpProblem(f"{g.describe(op)} has non-square {name} {list(values)}")
    return int(values[0])


def _strides(g: _Graph, op: Operator) -> int:
    o = op.options
    return _square(g, op, "strides", (o.get("stride_h") or 1, o.get("stride_w") or 1))


def _undilated(g: _Graph, op: Operator) -> None:
    o = op.options
    dilation = (o.get("dilation_h_factor") or 1, o.get("dilation_w_factor") or 1)
    if dilation != (1, 1):
        raise _OpProblem(f"{g.describe(op)} is dilated {list(dilation)}")


def _symmetric_pad(g: _Graph, op: Operator, sizes: tuple[int, int], pad: _Pad | None,
                   kernel: int, stride: int, outs: tuple[int, int]) -> int:
    """One pad for all four sides from the op's padding mode and an explicit PAD before it.

    Unequal before/after padding is priced as the symmetric pad giving the same output size."""
    mode = op.options.get("padding", "VALID")
    found = []
    for axis, (size, out) in enumerate(zip(sizes, outs, strict=True)):
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
            raise _OpProblem(f"{g.describe(op)} pads {before} before and {after} after; no "
                             f"symmetric padding gives its output size {out}")
        logger.debug("%s pads %d/%d, priced as %d on both sides", g.describe(op), before,
                     after, fits[0])
        found.append(fits[0])
    if found[0] != found[1]:
        raise _OpProblem(f"{g.describe(op)} pads H by {found[0]} and W by {found[1]}; latbench "
                         "kernels pad all sides equally")
    return found[0]


def _check_output(g: _Graph, op: Operator, spec: OpSpec) -> None:
    _, oh, ow, oc = g.shape(op.outputs[0])
    if (oh, ow, oc) != (spec.out_h, spec.out_w, spec.out_c):
        raise _OpProblem(f"{g.describe(op)} gives {list(g.shape(op.outputs[0]))}, its kernel "
                         f"{spec.key()} would give {spec.out_h}x{spec.out_w}x{spec.out_c}")


# --- activations ----------------------------------------------------------------------------
def _const_near(g: _Graph, tensor: int, value: float) -> bool:
    c = g.const(tensor)
    return c is not None and c.size == 1 and abs(float(c.ravel()[0]) - value) < 1e-4


def _gate_from(g: _Graph, op: Operator, tensor: int) -> _Act | None:
    """The sigmoid gate `op` computes from `tensor`: LOGISTIC, or relu6(x + 3) * 1/6."""
    if not g.free(op):
        return None
    if op.op == "LOGISTIC" and op.inputs[0] == tensor:
        return _Act("sigmoid", [op], op.outputs[0])
    if op.op != "ADD" or op.options.get("fused_activation_function") != "RELU6" \
            or tensor not in op.inputs:
        return None
    others = [i for i in op.inputs if i != tensor]
    if len(others) != 1 or not _const_near(g, others[0], _HSIGMOID[0]):
        return None
    mul = g.sole_user(op.outputs[0])
    if mul is None or mul.op != "MUL" or mul.options.get("fused_activation_function",
                                                          "NONE") != "NONE":
        return None
    scale = [i for i in mul.inputs if i != op.outputs[0]]
    if len(scale) != 1 or not _const_near(g, scale[0], _HSIGMOID[1]):
        return None
    return _Act("hsigmoid", [op, mul], mul.outputs[0])


def _self_gated(g: _Graph, gate: _Act, tensor: int) -> _Act | None:
    """x * gate(x) as one activation: swish for a sigmoid gate, hswish for a hard one."""
    mul = g.sole_user(gate.output)
    if mul is None or mul.op != "MUL" or sorted(mul.inputs) != sorted([tensor, gate.output]):
        return None
    if mul.options.get("fused_activation_function", "NONE") != "NONE":
        return None
    return _Act("swish" if gate.name == "sigmoid" else "hswish", [*gate.ops, mul],
                mul.outputs[0])


def _activation_at(g: _Graph, tensor: int) -> _Act | None:
    """The activation applied to `tensor` when it is the activation's only reader."""
    users = g.users(tensor)
    if tensor in g.outputs or not users or not all(g.free(u) for u in users):
        return None
    if len(users) == 1:
        user = users[0]
        if user.op in UNARY_ACTS and user.inputs[0] == tensor:
            return _Act(UNARY_ACTS[user.op], [user], user.outputs[0])
        gate = _gate_from(g, user, tensor)
        return gate if gate is not None and gate.name == "hsigmoid" else None
    if len(users) == 2:
        for user in users:
            gate = _gate_from(g, user, tensor)
            act = None if gate is None else _self_gated(g, gate, tensor)
            if act is not None and act.ops[-1] in users:
                return act
    return None


def _act_kernel(g: _Graph, tensor: int, name: str) -> OpSpec:
    h, w, c = _hwc(g.shape(tensor))
    return OpSpec("act", h=h, w=w, cin=c, act=name, batch=g.batch)


def _attach(g: _Graph, op: Operator, kind: str, out: int, attach: Collection[tuple[str, str]],
            ops: list[Operator]) -> tuple[str, list[OpSpec]]:
    """(activation of the kernel, act kernels after it); the activation's ops join `ops`.

    A fused activation field is attached when the rules allow it, else it is a kernel of its
    own; without one, the activation operators after `out` attach under the same rules."""
    code = op.options.get("fused_activation_function", "NONE")
    if code != "NONE":
        name = FUSED_ACTS.get(code)
        if name is None:
            raise _OpProblem(f"{g.describe(op)} fuses activation {code}, which latbench "
                             "kernels do not have")
        if (kind, name) in attach:
            return name, []
        return "none", [_act_kernel(g, out, name)]
    act = _activation_at(g, out)
    if act is None or (kind, act.name) not in attach:
        return "none", []
    ops.extend(act.ops)
    return act.name, []


# --- matchers: each reads one root op and returns its kernels and the ops they cover ----------
def _conv_spec(g: _Graph, op: Operator, x: int, pad: _Pad | None, groups: int | None = None,
               cout: int | None = None) -> OpSpec:
    """The kernel of convolution `op` reading `x` (before an explicit `pad`, if any)."""
    x_shape, f_shape, o_shape = g.shape(x), g.shape(op.inputs[1]), g.shape(op.outputs[0])
    if len(x_shape) != 4 or len(f_shape) != 4 or len(o_shape) != 4:
        raise _OpProblem(f"{g.describe(op)} is not a 2-D convolution (input {list(x_shape)})")
    _undilated(g, op)
    _, h, w, cin = x_shape
    if op.op == "DEPTHWISE_CONV_2D":
        _, kh, kw, out_c = f_shape
        groups = cin
    else:
        out_c, kh, kw, cin_g = f_shape
        if groups is None:
            if cin % cin_g:
                raise _OpProblem(f"{g.describe(op)} reads {cin} channels with filters of "
                                 f"{cin_g}")
            groups = cin // cin_g
    cout = out_c if cout is None else cout
    kernel = _square(g, op, "kernel", (kh, kw))
    stride = _strides(g, op)
    p = _symmetric_pad(g, op, (h, w), pad, kernel, stride, o_shape[1:3])
    kind = "dwconv" if groups == cin == cout else "conv"
    return OpSpec(kind, h=h, w=w, cin=cin, cout=cout, kernel=kernel, stride=stride, pad=p,
                  groups=groups, batch=g.batch)


def _check_weights(g: _Graph, op: Operator, x: int, weights: int) -> None:
    if weights not in g.static:
        raise _OpProblem(f"{g.describe(op)} multiplies two computed tensors (no weight)")
    wt, xt = g.tensors[weights].dtype, g.tensors[x].dtype
    if wt != xt:
        raise _OpProblem(f"{g.describe(op)} has {wt} weights for {xt} data (hybrid "
                         "quantization); latbench kernels compute in one type")


def _match_conv(g: _Graph, op: Operator, attach: Collection[tuple[str, str]],
                pad: _Pad | None = None) -> _Match:
    _check_weights(g, op, op.inputs[0], op.inputs[1])
    spec = _conv_spec(g, op, op.inputs[0] if pad is None else pad.source, pad)
    _check_output(g, op, spec)
    ops = [op]
    act, extra = _attach(g, op, spec.kind, op.outputs[0], attach, ops)
    return _Match([spec.with_(act=act), *extra], ops)


def _match_split_conv(g: _Graph, op: Operator, attach: Collection[tuple[str, str]],
                      pad: _Pad | None = None) -> _Match:
    """SPLIT along channels -> one CONV_2D per part -> CONCATENATION: a grouped conv."""
    axis, x = op.inputs[0], op.inputs[1]
    value = g.const(axis)
    rank = len(g.shape(x))
    problem = _OpProblem(f"{g.describe(op)} is not the split of a grouped convolution; "
                         "latbench has no split kernel")
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
    if concat.options.get("fused_activation_function", "NONE") != "NONE":
        raise problem
    _check_output(g, concat, spec)
    ops = [op, *convs, concat]
    # The groups' fused activation, else the activation operators after the concatenation.
    act, extra = _attach(g, first, spec.kind, out, attach, ops)
    return _Match([spec.with_(act=act), *extra], ops)


def _match_pool(g: _Graph, op: Operator, attach: Collection[tuple[str, str]],
                pad: _Pad | None = None) -> _Match:
    x = pad.source if pad is not None else op.inputs[0]
    shape, o_shape = g.shape(x), g.shape(op.outputs[0])
    if len(shape) != 4 or len(o_shape) != 4:
        raise _OpProblem(f"{g.describe(op)} is not a 2-D pool (input {list(shape)})")
    _, h, w, c = shape
    o = op.options
    kernel = _square(g, op, "kernel", (o.get("filter_height", 1), o.get("filter_width", 1)))
    stride = _strides(g, op)
    p = _symmetric_pad(g, op, (h, w), pad, kernel, stride, o_shape[1:3])
    pool = "avg" if op.op == "AVERAGE_POOL_2D" else "max"
    spec = OpSpec("pool", h=h, w=w, cin=c, pool=pool, kernel=kernel, stride=stride, pad=p,
                  batch=g.batch)
    _check_output(g, op, spec)
    ops = [op]
    _, extra = _attach(g, op, "pool", op.outputs[0], attach, ops)
    return _Match([spec, *extra], ops)


# Operators an explicit PAD may precede, and their matchers.
_PADDED: dict[str, Callable[..., _Match]] = {
    "CONV_2D": _match_conv, "DEPTHWISE_CONV_2D": _match_conv, "AVERAGE_POOL_2D": _match_pool,
    "MAX_POOL_2D": _match_pool, "SPLIT": _match_split_conv,
}


def _match_pad(g: _Graph, op: Operator, attach: Collection[tuple[str, str]]) -> _Match:
    """PAD / PADV2 + a VALID (or SAME) convolution or pool: one kernel with that padding."""
    out = op.outputs[0]
    user = g.sole_user(out)
    data_input = 1 if user is not None and user.op == "SPLIT" else 0
    if user is None or user.op not in _PADDED or user.inputs[data_input] != out:
        raise _OpProblem(f"{g.describe(op)} pads a tensor that no convolution or pool reads "
                         "alone; latbench has no pad kernel")
    paddings = g.const(op.inputs[1])
    if paddings is None or paddings.shape != (4, 2):
        raise _OpProblem(f"{g.describe(op)} has computed or non-4-D paddings")
    paddings = paddings.astype(int)
    if paddings[0].any() or paddings[3].any():
        raise _OpProblem(f"{g.describe(op)} pads the batch or channel dimension")
    hw = ((int(paddings[1][0]), int(paddings[1][1])), (int(paddings[2][0]), int(paddings[2][1])))
    match = _PADDED[user.op](g, user, attach, _Pad(op.inputs[0], hw))
    match.ops.insert(0, op)
    return match


def _match_linear(g: _Graph, op: Operator, attach: Collection[tuple[str, str]]) -> _Match:
    x, weights = op.inputs[0], op.inputs[1]
    _check_weights(g, op, x, weights)
    w_shape = g.shape(weights)
    if len(w_shape) != 2:
        raise _OpProblem(f"{g.describe(op)} has weights of shape {list(w_shape)}, not 2-D")
    cout, cin = w_shape
    size = int(np.prod(g.shape(x)))
    if size % cin:
        raise _OpProblem(f"{g.describe(op)} reads {size} values with {cin} input features")
    ops = [op]
    act, extra = _attach(g, op, "linear", op.outputs[0], attach, ops)
    return _Match([OpSpec("linear", cin=cin, cout=cout, act=act, batch=size // cin), *extra],
                  ops)


def _match_activation(g: _Graph, op: Operator, attach: Collection[tuple[str, str]]) -> _Match:
    """An activation nothing absorbed: its own "act" kernel (x * gate(x) as one)."""
    x = op.inputs[0]
    gate = _gate_from(g, op, x) if op.op == "LOGISTIC" else None
    act = None if gate is None else _self_gated(g, gate, x)
    if act is not None:
        return _Match([_act_kernel(g, x, act.name)], act.ops)
    return _Match([_act_kernel(g, x, UNARY_ACTS[op.op])], [op])


def _match_elementwise(g: _Graph, op: Operator, attach: Collection[tuple[str, str]]) -> _Match:
    """ADD/SUB of two tensors -> add (+ activation); MUL/DIV, or any of them with a constant
    operand (a per-channel affine), -> mul. A hard sigmoid (ADD 3, RELU6, MUL 1/6) and
    x * hsigmoid(x) are activation kernels."""
    dynamic = g.dynamic_inputs(op)
    if op.op == "ADD" and len(dynamic) == 1:
        gate = _gate_from(g, op, dynamic[0])
        if gate is not None:
            act = _self_gated(g, gate, dynamic[0]) or gate
            return _Match([_act_kernel(g, dynamic[0], act.name)], act.ops)
    h, w, c = _hwc(g.shape(op.outputs[0]))
    ops = [op]
    if len(dynamic) == 2 and op.op in ("ADD", "SUB"):
        act, extra = _attach(g, op, "add", op.outputs[0], attach, ops)
        return _Match([OpSpec("add", h=h, w=w, cin=c, act=act, batch=g.batch), *extra], ops)
    _, extra = _attach(g, op, "mul", op.outputs[0], attach, ops)
    return _Match([OpSpec("mul", h=h, w=w, cin=c, batch=g.batch), *extra], ops)


def _averages_hw(g: _Graph, op: Operator) -> bool:
    """Whether a MEAN averages a 4-D tensor over H and W (a global average pool)."""
    axes = g.const(op.inputs[1]) if len(op.inputs) > 1 else None
    return axes is not None and len(g.shape(op.inputs[0])) == 4 \
        and {int(a) % 4 for a in axes.ravel()} == {1, 2}


def _match_mean(g: _Graph, op: Operator, attach: Collection[tuple[str, str]]) -> _Match:
    x = op.inputs[0]
    shape = g.shape(x)
    if not _averages_hw(g, op):
        raise _OpProblem(f"{g.describe(op)} does not average a 4-D tensor over H and W")
    se = _match_se(g, op, x)
    if se is not None:
        return se
    h, w, c = _hwc(shape)
    return _Match([OpSpec("pool", h=h, w=w, cin=c, pool="gavg", batch=g.batch)], [op])


def _fc_at(g: _Graph, tensor: int) -> tuple[Operator, int, int] | None:
    """A fully connected layer reading `tensor` alone: 1x1 CONV_2D or FULLY_CONNECTED.

    Returns (op, in features, out features)."""
    op = g.sole_user(tensor)
    if op is None or op.inputs[0] != tensor or op.inputs[1] not in g.static:
        return None
    w_shape = g.shape(op.inputs[1])
    if op.op == "CONV_2D" and len(w_shape) == 4 and w_shape[1:3] == (1, 1):
        return op, w_shape[3], w_shape[0]
    if op.op == "FULLY_CONNECTED" and len(w_shape) == 2:
        return op, w_shape[1], w_shape[0]
    return None


def _match_se(g: _Graph, pool: Operator, x: int) -> _Match | None:
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
    code = fc.options.get("fused_activation_function", "NONE")
    if code not in FUSED_ACTS:
        return None
    if code == "NONE" and (act := _activation_at(g, tensor)) is not None:
        ops += act.ops
        tensor = act.output
    tensor, skipped = g.skip_pass_through(tensor)
    ops += skipped
    excite = _fc_at(g, tensor)
    if excite is None or excite[1:] != (mid, channels) \
            or excite[0].options.get("fused_activation_function", "NONE") != "NONE":
        return None
    ops.append(excite[0])
    tensor, skipped = g.skip_pass_through(excite[0].outputs[0])
    ops += skipped
    user = g.sole_user(tensor)
    gate = None if user is None else _gate_from(g, user, tensor)
    if gate is None:
        return None
    ops += gate.ops
    tensor, skipped = g.skip_pass_through(gate.output)
    ops += skipped
    mul = g.sole_user(tensor)
    if mul is None or mul.op != "MUL" or sorted(mul.inputs) != sorted([x, tensor]) \
            or mul.options.get("fused_activation_function", "NONE") != "NONE" or mid > channels:
        return None
    ops.append(mul)
    h, w, c = _hwc(g.shape(x))
    spec = OpSpec("se", h=h, w=w, cin=c, expand=se_ratio(mid, c), act=gate.name, batch=g.batch)
    return _Match([spec], ops)


def _match_concat(g: _Graph, op: Operator, attach: Collection[tuple[str, str]]) -> _Match:
    shape = g.shape(op.outputs[0])
    inputs = [i for i in op.inputs if i >= 0]
    if len(inputs) == 1:
        return _Match([], [op])
    axis = int(op.options.get("axis", 0)) % max(len(shape), 1)
    if len(shape) != 4 or axis != 3:
        raise _OpProblem(f"{g.describe(op)} concatenates along axis {axis} of a {len(shape)}-D "
                         "tensor; latbench concatenates channels")
    _, h, w, c = shape
    ops = [op]
    _, extra = _attach(g, op, "concat", op.outputs[0], attach, ops)
    return _Match([OpSpec("concat", h=h, w=w, cin=c, groups=len(inputs), batch=g.batch),
                   *extra], ops)


def _no_kernel(g: _Graph, op: Operator, attach: Collection[tuple[str, str]]) -> _Match:
    return _Match([], [op])


# --- fused blocks ---------------------------------------------------------------------------
# Inside a block every activation belongs to the block, whatever the attach rules.
_BLOCK_ATTACH = frozenset((kind, act) for kind in ("conv", "dwconv") for act in ACTIVATIONS
                          if act != "none")
_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
_BLOCK_ROOTS = frozenset({*_CONV_OPS, "PAD", "PADV2"})


def _conv_at(g: _Graph, op: Operator | None, tensor: int) -> tuple[OpSpec, _Match] | None:
    """The conv kernel of a ([PAD] +) convolution reading `tensor`, activation included."""
    if op is None or not g.free(op) or not op.inputs or op.inputs[0] != tensor:
        return None
    conv = g.sole_user(op.outputs[0]) if op.op in ("PAD", "PADV2") else op
    if conv is None or conv.op not in _CONV_OPS:
        return None
    try:
        match = MATCHERS[op.op](g, op, _BLOCK_ATTACH)
    except (_OpProblem, SpecError, ArithmeticError, IndexError, ValueError):
        return None
    return (match.specs[0], match) if len(match.specs) == 1 else None


def _block_se(g: _Graph, tensor: int) -> tuple[OpSpec, _Match] | None:
    """The squeeze-excite reading `tensor` (its MEAN and its final MUL are the two readers)."""
    users = g.users(tensor)
    if len(users) != 2 or tensor in g.outputs:
        return None
    for pool in users:
        if pool.op == "MEAN" and pool.inputs[0] == tensor and _averages_hw(g, pool):
            match = _match_se(g, pool, tensor)
            return None if match is None else (match.specs[0], match)
    return None


def _match_mbconv(g: _Graph, op: Operator) -> _Match | None:
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
                and add.options.get("fused_activation_function", "NONE") == "NONE"
                and _activation_at(g, add.outputs[0]) is None)
    mid = depthwise.cin
    try:
        spec = OpSpec("mbconv", h=spec0.h, w=spec0.w, cin=spec0.cin, cout=out.cout,
                      kernel=depthwise.kernel, stride=depthwise.stride,
                      expand=1.0 if spec0.kind == "dwconv" else _expand_ratio(mid, spec0.cin),
                      act=spec0.act, se=se is not None, residual=residual, batch=g.batch)
    except SpecError:
        return None
    if residual and add is not None:
        parts.append(OpSpec("add", h=out.out_h, w=out.out_w, cin=out.cout, batch=g.batch))
        ops.append(add)
    if [_part_id(k) for k in decompose(spec)] != [_part_id(k) for k in parts]:
        return None
    return _Match([spec], ops)


def _expand_ratio(mid: int, cin: int) -> float:
    """The simplest ratio e with max(1, round(cin * e)) == mid (an mbconv's expansion)."""
    for denominator in range(1, 65):
        numerator = round(mid * denominator / cin)
        if numerator >= 1:
            ratio = float(f"{numerator / denominator:.6g}")
            if max(1, round(cin * ratio)) == mid:
                return ratio
    return float(f"{mid / cin:.6g}")


def _part_id(spec: OpSpec) -> tuple:
    """A primitive's identity; an SE by its squeezed channels (several ratios give the same)."""
    if spec.kind == "se":
        return spec.kind, spec.batch, spec.h, spec.w, spec.cin, spec.mid, spec.act
    return (spec.key(),)


Matcher = Callable[[_Graph, Operator, Collection[tuple[str, str]]], _Match]

# Root operator -> matcher. Every builtin operator latbench can price is a key here.
MATCHERS: dict[str, Matcher] = {
    "CONV_2D": _match_conv,
    "DEPTHWISE_CONV_2D": _match_conv,
    "SPLIT": _match_split_conv,
    "PAD": _match_pad,
    "PADV2": _match_pad,
    "FULLY_CONNECTED": _match_linear,
    **{op: _match_activation for op in UNARY_ACTS},
    **{op: _match_elementwise for op in ("ADD", "SUB", "MUL", "DIV")},
    "AVERAGE_POOL_2D": _match_pool,
    "MAX_POOL_2D": _match_pool,
    "MEAN": _match_mean,
    "CONCATENATION": _match_concat,
    **{op: _no_kernel for op in PASS_THROUGH_OPS | SHAPE_OPS},
}


def parse_tflite(model: bytes | str | Path | TFLiteModel, *,
                 attach: Collection[tuple[str, str]] = DEFAULT_ATTACH, group: Group = False,
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
    g = _Graph(tfl, batch=first[0] if first else 1)
    attach = frozenset(attach)
    accept = group if callable(group) else (lambda _spec: bool(group))
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
                matcher(g, op, attach)
            dtype = _dtype(g, op) if match.specs else "float32"
        except _OpProblem as exc:
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
                      attach: Collection[tuple[str, str]] = DEFAULT_ATTACH,
                      group: Group = False) -> list[OpSpec]:
    """`parse_tflite` of the whole model (nothing may be left out): its kernels as a list."""
    return list(parse_tflite(model, attach=attach, group=group).kernels)


def _check_arity(g: _Graph, op: Operator) -> None:
    need = _MIN_INPUTS.get(op.op, 1)
    present = [i for i in op.inputs[:need] if i >= 0]
    if len(present) < need or not op.outputs or min(op.outputs) < 0:
        raise _OpProblem(f"{g.describe(op)} has inputs {list(op.inputs)} and outputs "
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


def _dtype(g: _Graph, op: Operator) -> str:
    """latbench dtype of the data `op` computes on, or a problem naming it."""
    tensor = g.tensors[op.inputs[1] if op.op == "SPLIT" else op.inputs[0]]
    dtype = tensor.dtype.lower()
    if dtype not in DTYPES:
        raise _OpProblem(f"{g.describe(op)} computes in {tensor.dtype}; latbench kernels are "
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
