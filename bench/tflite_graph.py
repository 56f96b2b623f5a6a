"""The TFLite main subgraph as the kernel split walks it: producers, consumers, constants,
each 4-D tensor's layout, and the activations found after a tensor.

TFLite stores images NHWC; token tensors and attention's [B, heads, T, D] tensors are stored as
they are, as in the NCHW (ONNX) model of the same network. Kernels read each tensor as the NCHW
model holds it (`nchw_shape`, `nchw_axis`), through the rules `bench.kernel_forms` applies to
the ONNX model, so both formats give one kernel list.

A 4-D tensor is stored NHWC when it is linked to a spatial operator (convolution, pool, resize,
a global average) through operators that keep the layout (elementwise, pad, concat, split,
...); tensors linked that way only to operators of plain tensors (batched matmul, softmax,
token-wise linear layers, transposes) are stored as they are, and tensors with no evidence
either way are read as NHWC, as TFLite stores images. A TRANSPOSE that turns an NHWC image into
a plain tensor (0, 3, 1, 2) or a plain tensor into an NHWC image (0, 2, 3, 1) is a layout
change, not a kernel: an NCHW model has no such operator. Whether the NCHW model calls a tensor
an image (which elementwise kernels read as NCHW rather than channels-last) follows the ONNX
split's rule, operator by operator (`is_image`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from latbench.bench.kernel_forms import elementwise_dims
from latbench.bench.ops import LEAKY_ALPHA, OpSpec
from latbench.bench.tflite_model import Operator, Tensor, TFLiteModel
from latbench.errors import ParseError

# Standalone activation operators -> latbench activation. Clamps other than [0, inf) are priced
# as relu6, as the ONNX split prices Clip. GELU, LEAKY_RELU and PRELU are read by `unary_act`.
UNARY_ACTS = {"RELU": "relu", "RELU6": "relu6", "RELU_N1_TO_1": "relu6", "RELU_0_TO_1": "relu6",
              "HARD_SWISH": "hswish", "LOGISTIC": "sigmoid", "TANH": "tanh", "GELU": "gelu",
              "LEAKY_RELU": "leakyrelu", "PRELU": "prelu"}
# fused_activation_function values -> latbench activation.
FUSED_ACTS = {"NONE": "none", "RELU": "relu", "RELU6": "relu6", "RELU_N1_TO_1": "relu6"}
# Operators that only relabel data, and those that (with fixed shapes) only compute constants.
PASS_THROUGH_OPS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS"})
SHAPE_OPS = frozenset({"SHAPE"})
# Operators that yield a constant when their input is one (weights stored as float16 or int8).
_CONST_FORWARD = frozenset({"DEQUANTIZE", "CAST"}) | PASS_THROUGH_OPS
_HSIGMOID = (3.0, 1.0 / 6.0)  # relu6(x + 3) * 1/6

# Layout evidence: operators whose data input and output are NHWC images (input index), ...
_IMAGE_OPS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 0, "TRANSPOSE_CONV": 2, "AVERAGE_POOL_2D": 0,
              "MAX_POOL_2D": 0, "L2_POOL_2D": 0, "RESIZE_BILINEAR": 0,
              "RESIZE_NEAREST_NEIGHBOR": 0, "SPACE_TO_DEPTH": 0, "DEPTH_TO_SPACE": 0}
# ... operators whose 4-D operands are plain tensors (and TRANSPOSE, unless a layout change), ...
_PLAIN_OPS = frozenset({"BATCH_MATMUL", "SOFTMAX", "FULLY_CONNECTED"})
# ... and operators whose 4-D operands all share one layout.
_SAME_LAYOUT_OPS = frozenset({
    *UNARY_ACTS, "ADD", "SUB", "MUL", "DIV", "SQUARED_DIFFERENCE", "POW", "MAXIMUM", "MINIMUM",
    "RSQRT", "SQRT", "EXP", "LOG", "ABS", "NEG", "PAD", "PADV2", "MIRROR_PAD", "CONCATENATION",
    "SPLIT", "SPLIT_V", "SLICE", "STRIDED_SLICE", "MEAN", "DEQUANTIZE", "CAST"})
# The NCHW model's view (the ONNX split's rule): outputs of these are plain, not images.
_PLAIN_RESULTS = _PLAIN_OPS | {"GATHER"}
NHWC_TO_NCHW = (0, 2, 3, 1)  # stored NHWC axis -> NCHW axis
TO_NCHW = (0, 3, 1, 2)  # a permutation from NHWC to NCHW; (0, 2, 3, 1) goes back
LAYOUT_PERMS = {TO_NCHW: "from_image", NHWC_TO_NCHW: "to_image"}


class OpProblem(Exception):
    """A supported operator used in a way no kernel describes."""


@dataclass
class Match:
    """The kernels one matcher read and the operators they cover."""

    specs: list[OpSpec]
    ops: list[Operator]


@dataclass
class Act:
    """An activation (or gate) found after a tensor: its latbench name, its ops, its output,
    and leakyrelu's slope."""

    name: str
    ops: list[Operator]
    output: int
    alpha: float = LEAKY_ALPHA


@dataclass
class Graph:
    """The main subgraph with producer/consumer maps, its constant tensors and layouts."""

    model: TFLiteModel
    batch: int
    producer: dict[int, Operator] = field(default_factory=dict)
    consumers: dict[int, list[Operator]] = field(default_factory=dict)
    static: set[int] = field(default_factory=set)
    consumed: set[int] = field(default_factory=set)
    nhwc: set[int] = field(default_factory=set)
    layout_ops: set[int] = field(default_factory=set)
    images: set[int] = field(default_factory=set)

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
        self._layouts()
        self._nchw_images()

    # --- layouts ----------------------------------------------------------------------------
    def _layouts(self) -> None:
        """The 4-D tensors stored NHWC, and the layout-only TRANSPOSEs (module docstring)."""
        parent: dict[int, int] = {}

        def find(t: int) -> int:
            while parent.get(t, t) != t:
                parent[t] = parent.get(parent[t], parent[t])
                t = parent[t]
            return t

        def union(tensors: list[int]) -> None:
            roots = {find(t) for t in tensors}
            top = min(roots, default=0)
            for r in roots:
                parent[r] = top

        image_seeds, plain_seeds = [], []
        for op in self.ops:
            if self.is_static(op):
                continue
            data = [t for t in self.dynamic_inputs(op) + list(op.outputs)
                    if t >= 0 and len(self.shape(t)) == 4]
            if op.op in _SAME_LAYOUT_OPS:
                union(data)
            elif op.op in _IMAGE_OPS:
                index = _IMAGE_OPS[op.op]
                image_seeds += [t for t in (op.inputs[index:index + 1] + op.outputs[:1])
                                if t in data]
            elif op.op in _PLAIN_OPS:
                plain_seeds += data
            if op.op == "MEAN" and op.inputs and op.inputs[0] >= 0 and self._reduces_hw(op):
                image_seeds.append(op.inputs[0])
        image_roots = {find(t) for t in image_seeds}
        for op in self.ops:
            if op.op != "TRANSPOSE" or self.is_static(op) or len(op.inputs) < 2:
                continue
            perm = self.const(op.inputs[1])
            how = None if perm is None else LAYOUT_PERMS.get(tuple(int(p) for p in perm.ravel()))
            x, y = op.inputs[0], op.outputs[0]
            if how == "from_image" and find(x) in image_roots:
                self.layout_ops.add(op.index)
                plain_seeds.append(y)
            elif how == "to_image" and find(y) in image_roots:
                self.layout_ops.add(op.index)
                plain_seeds.append(x)
            else:
                plain_seeds += [x, y]
        plain_roots = {find(t) for t in plain_seeds} - image_roots
        self.nhwc = {t.index for t in self.tensors
                     if len(t.shape) == 4 and find(t.index) not in plain_roots}

    def _nchw_images(self) -> None:
        """The 4-D tensors the NCHW model calls images, as the ONNX split decides it: graph
        inputs and outputs of spatial operators (here: every NHWC tensor); a transpose to
        (0, 3, 1, 2) gives one; plain operators (matmuls, softmax) do not; reshapes keep their
        input's kind and other operators follow their first 4-D input."""
        images = set(self.nhwc) | {t for t in self.model.main.inputs
                                   if len(self.shape(t)) == 4}
        for op in self.ops:
            outs = [t for t in op.outputs if t >= 0 and len(self.shape(t)) == 4
                    and t not in self.nhwc]
            if not outs or self.is_static(op):
                continue
            sources = [t for t in self.dynamic_inputs(op) if len(self.shape(t)) == 4]
            if op.op == "TRANSPOSE":
                perm = self.const(op.inputs[1]) if len(op.inputs) > 1 else None
                image = op.index in self.layout_ops or (
                    perm is not None and tuple(int(p) for p in perm.ravel()) == TO_NCHW)
            elif op.op in _PLAIN_RESULTS:
                image = False
            elif op.op in PASS_THROUGH_OPS:
                image = bool(sources) and sources[0] in images
            else:
                image = not sources or sources[0] in images
            if image:
                images.update(outs)
        self.images = images

    def _reduces_hw(self, op: Operator) -> bool:
        axes = self.const(op.inputs[1]) if len(op.inputs) > 1 else None
        return axes is not None and len(self.shape(op.inputs[0])) == 4 \
            and {int(a) % 4 for a in axes.ravel()} == {1, 2}

    def is_image(self, tensor: int) -> bool:
        """Whether the NCHW model calls this 4-D tensor an image (see `_nchw_images`)."""
        return tensor in self.images

    def nchw_shape(self, tensor: int) -> tuple[int, ...]:
        """The shape as the NCHW model holds the tensor: NHWC transposed, else as stored."""
        shape = self.shape(tensor)
        if tensor in self.nhwc:
            n, h, w, c = shape
            return n, c, h, w
        return shape

    def nchw_axis(self, tensor: int, axis: int) -> int:
        """Stored axis `axis` as the NCHW model numbers it (see `nchw_shape`)."""
        axis %= max(len(self.shape(tensor)), 1)
        return NHWC_TO_NCHW[axis] if tensor in self.nhwc else axis

    def hwc(self, tensor: int) -> tuple[int, int, int]:
        """(H, W, C) of a tensor as elementwise kernels read it."""
        _, h, w, c = self.dims(tensor)
        return h, w, c

    def dims(self, tensor: int) -> tuple[int, int, int, int]:
        """(batch, H, W, C) of a tensor as elementwise kernels read it
        (`kernel_forms.elementwise_dims` of its NCHW form)."""
        return elementwise_dims(self.nchw_shape(tensor), self.batch, self.is_image(tensor))

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


def fused_code(op: Operator) -> str:
    return op.options.get("fused_activation_function", "NONE")


# --- activations ----------------------------------------------------------------------------
def const_near(g: Graph, tensor: int, value: float) -> bool:
    c = g.const(tensor)
    return c is not None and c.size == 1 and abs(float(c.ravel()[0]) - value) < 1e-4


def unary_act(g: Graph, op: Operator) -> Act | None:
    """The activation a one-operator activation computes on its first input."""
    name = UNARY_ACTS.get(op.op)
    if name is None or not op.inputs:
        return None
    if op.op == "GELU" and op.options.get("approximate"):
        name = "gelu_tanh"
    if op.op == "PRELU" and (len(op.inputs) < 2 or op.inputs[1] not in g.static):
        return None
    alpha = float(op.options.get("alpha", LEAKY_ALPHA)) if op.op == "LEAKY_RELU" else LEAKY_ALPHA
    return Act(name, [op], op.outputs[0], alpha)


def gate_from(g: Graph, op: Operator, tensor: int) -> Act | None:
    """The sigmoid gate `op` computes from `tensor`: LOGISTIC, or relu6(x + 3) * 1/6."""
    if not g.free(op):
        return None
    if op.op == "LOGISTIC" and op.inputs[0] == tensor:
        return Act("sigmoid", [op], op.outputs[0])
    if op.op != "ADD" or fused_code(op) != "RELU6" or tensor not in op.inputs:
        return None
    others = [i for i in op.inputs if i != tensor]
    if len(others) != 1 or not const_near(g, others[0], _HSIGMOID[0]):
        return None
    mul = g.sole_user(op.outputs[0])
    if mul is None or mul.op != "MUL" or fused_code(mul) != "NONE":
        return None
    scale = [i for i in mul.inputs if i != op.outputs[0]]
    if len(scale) != 1 or not const_near(g, scale[0], _HSIGMOID[1]):
        return None
    return Act("hsigmoid", [op, mul], mul.outputs[0])


def self_gated(g: Graph, gate: Act, tensor: int) -> Act | None:
    """x * gate(x) as one activation: swish for a sigmoid gate, hswish for a hard one."""
    mul = g.sole_user(gate.output)
    if mul is None or mul.op != "MUL" or sorted(mul.inputs) != sorted([tensor, gate.output]):
        return None
    if fused_code(mul) != "NONE":
        return None
    return Act("swish" if gate.name == "sigmoid" else "hswish", [*gate.ops, mul],
               mul.outputs[0])


def mish_from(g: Graph, exp: Operator, tensor: int) -> Act | None:
    """x * TANH(LOG(EXP(x) + 1)) from the EXP reading `tensor`: mish, as converters write it."""
    if not g.free(exp) or exp.op != "EXP" or exp.inputs[0] != tensor:
        return None
    ops, current = [exp], exp.outputs[0]
    for name in ("ADD", "LOG", "TANH"):
        op = g.sole_user(current)
        if op is None or op.op != name or op.inputs[0] != current or fused_code(op) != "NONE":
            return None
        if name == "ADD" and (len(op.inputs) != 2 or not const_near(g, op.inputs[1], 1.0)):
            return None
        ops.append(op)
        current = op.outputs[0]
    mul = g.sole_user(current)
    if mul is None or mul.op != "MUL" or sorted(mul.inputs) != sorted([tensor, current]) \
            or fused_code(mul) != "NONE":
        return None
    return Act("mish", [*ops, mul], mul.outputs[0])


def activation_at(g: Graph, tensor: int) -> Act | None:
    """The activation applied to `tensor` when it is the activation's only reader."""
    users = g.users(tensor)
    if tensor in g.outputs or not users or not all(g.free(u) for u in users):
        return None
    if len(users) == 1:
        user = users[0]
        if user.op in UNARY_ACTS and user.inputs[0] == tensor:
            return unary_act(g, user)
        gate = gate_from(g, user, tensor)
        return gate if gate is not None and gate.name == "hsigmoid" else None
    if len(users) == 2:
        for user in users:
            gate = gate_from(g, user, tensor)
            act = mish_from(g, user, tensor) if user.op == "EXP" else \
                None if gate is None else self_gated(g, gate, tensor)
            if act is not None and act.ops[-1] in users:
                return act
    return None


def act_kernel(g: Graph, tensor: int, name: str, alpha: float = LEAKY_ALPHA) -> OpSpec:
    n, h, w, c = g.dims(tensor)
    return OpSpec("act", h=h, w=w, cin=c, act=name, alpha=alpha, batch=n)


def attach(g: Graph, op: Operator, kind: str, out: int, rules: Collection[tuple[str, str]],
           ops: list[Operator]) -> tuple[Act, list[OpSpec]]:
    """(activation of the `kind` kernel `op` produces, act kernels after it); the activation's
    ops join `ops`. A fused activation field is attached when the rules allow it, else it is a
    kernel of its own; without one, the activation operators after `out` attach under the same
    rules. The returned Act's name is "none" when nothing attached."""
    code = fused_code(op)
    if code != "NONE":
        name = FUSED_ACTS.get(code)
        if name is None:
            raise OpProblem(f"{g.describe(op)} fuses activation {code}, which latbench "
                            "kernels do not have")
        if (kind, name) in rules:
            return Act(name, [], out), []
        return Act("none", [], out), [act_kernel(g, out, name)]
    act = activation_at(g, out)
    if act is None or (kind, act.name) not in rules:
        return Act("none", [], out), []
    ops.extend(act.ops)
    return act, []
