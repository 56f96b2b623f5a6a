"""ONNX matchers beyond convolutions: activations (one node, or a cone of elementwise nodes
recognised by what it computes), elementwise kernels, linear layers on tokens and matrix
products, and the transformer and common-op-set kernels (softmax, layer norm - the op or its
decomposed form -, transpose and channel shuffle, gather / slice / split, concat with a class
token, position embedding, pad, resize, instance norm, reduce, transposed convolution).

Each matcher reads one root node of an `OnnxGraph` and returns the kernels it runs as and the
nodes they cover; `bench.kernels` dispatches on the root's op type. How shapes become kernel
fields (token rows beyond the batch, elementwise dims, canonical transposes, gather vs slice) is
`bench.kernel_forms`, shared with the TFLite split.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
import onnx

from latbench.bench.kernel_forms import (
    ACTIVATION_FUNCTIONS,
    PROBE,
    elementwise_dims,
    identify_activation,
    part_spec,
    reduce_spec,
    resize_spec,
    split_batch,
    transpose_spec,
)
from latbench.bench.onnx_graph import (
    PASS_THROUGH_OPS,
    NodeProblem,
    NotAKernel,
    OnnxGraph,
    attrs,
    describe,
    dims_text,
    text_attr,
)
from latbench.bench.ops import LEAKY_ALPHA, OpSpec
from latbench.errors import SpecError

logger = logging.getLogger(__name__)

Attach = Collection[tuple[str, str]]


@dataclass
class Match:
    specs: list[OpSpec]
    nodes: list[onnx.NodeProto]


@dataclass
class Act:
    """An activation found after a tensor: its latbench name, its nodes, its output tensor."""

    name: str
    nodes: list[onnx.NodeProto]
    output: str
    alpha: float = LEAKY_ALPHA


# --- activations ----------------------------------------------------------------------------
UNARY_ACT_OPS = frozenset({"Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Swish",
                           "Tanh", "LeakyRelu", "PRelu", "Mish", "Gelu"})
GATE_OPS = {"Sigmoid": "sigmoid", "HardSigmoid": "hsigmoid"}
_MAX_CONE = 12  # GELU's tanh form is 9 nodes as the TorchScript exporter writes it


def unary_act(g: OnnxGraph, node: onnx.NodeProto) -> tuple[str, float] | None:
    """latbench name (and leaky slope) of a one-node activation; other clip ranges and
    hard-sigmoid slopes are priced as the same kernel (same cost class, other constants)."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or op not in UNARY_ACT_OPS:
        return None
    a = attrs(node)
    if op == "HardSigmoid":
        alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
        if abs(alpha - 1 / 6) > 1e-4 or abs(beta - 0.5) > 1e-4:
            logger.debug("%s alpha=%s beta=%s priced as hsigmoid", describe(node), alpha, beta)
        return "hsigmoid", LEAKY_ALPHA
    if op == "Clip":
        return _clip_act(g, node), LEAKY_ALPHA
    if op == "LeakyRelu":
        return "leakyrelu", float(a.get("alpha", LEAKY_ALPHA))
    if op == "PRelu":
        return ("prelu", LEAKY_ALPHA) if node.input[1] in g.static else None
    if op == "Gelu":
        return ("gelu_tanh" if text_attr(node, "approximate", "none") == "tanh" else "gelu",
                LEAKY_ALPHA)
    names = {"Relu": "relu", "HardSwish": "hswish", "Sigmoid": "sigmoid", "Swish": "swish",
             "Tanh": "tanh", "Mish": "mish"}
    return names[op], LEAKY_ALPHA


def _clip_act(g: OnnxGraph, node: onnx.NodeProto) -> str:
    a = attrs(node)
    lo: float | None = a.get("min")
    hi: float | None = a.get("max")
    for index, name in ((1, "min"), (2, "max")):
        if len(node.input) > index and node.input[index]:
            value = g.scalar(node.input[index])
            if value is None:
                raise NodeProblem(f"{describe(node)} has a computed {name} bound")
            if name == "min":
                lo = value
            else:
                hi = value
    if lo == 0 and (hi is None or math.isinf(hi)):
        return "relu"
    if not (lo == 0 and hi == 6):
        logger.debug("%s clips to [%s, %s], priced as relu6", describe(node), lo, hi)
    return "relu6"


def self_gate(g: OnnxGraph, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """For a Sigmoid/HardSigmoid s of x: the Mul(x, s) that makes x * gate(x), else None."""
    if node.op_type not in GATE_OPS:
        return None
    mul = g.sole_user(node.output[0])
    if mul is None or mul.op_type != "Mul" or sorted(mul.input) != sorted(
            [node.input[0], node.output[0]]):
        return None
    return mul


def gated_name(gate: onnx.NodeProto) -> str:
    return "swish" if gate.op_type == "Sigmoid" else "hswish"


def _clip_bounds(g: OnnxGraph, node: onnx.NodeProto, args: list) -> tuple[float, float]:
    a = attrs(node)
    lo = args[1] if len(args) > 1 and args[1] is not None else a.get("min", -np.inf)
    hi = args[2] if len(args) > 2 and args[2] is not None else a.get("max", np.inf)
    return lo, hi


# numpy versions of the elementwise ops a cone may hold: (node, operands) -> values
_CONE_FUNCTIONS: dict[str, Callable[[OnnxGraph, onnx.NodeProto, list], np.ndarray]] = {
    "Add": lambda g, n, v: v[0] + v[1],
    "Sub": lambda g, n, v: v[0] - v[1],
    "Mul": lambda g, n, v: v[0] * v[1],
    "Div": lambda g, n, v: v[0] / v[1],
    "Pow": lambda g, n, v: np.power(v[0], v[1]),
    "Max": lambda g, n, v: np.maximum(v[0], v[1]),
    "Min": lambda g, n, v: np.minimum(v[0], v[1]),
    "Erf": lambda g, n, v: np.vectorize(math.erf, otypes=[np.float64])(v[0]),
    "Tanh": lambda g, n, v: np.tanh(v[0]),
    "Sigmoid": lambda g, n, v: 0.5 * (1.0 + np.tanh(0.5 * v[0])),
    "Softplus": lambda g, n, v: np.logaddexp(0.0, v[0]),
    "Exp": lambda g, n, v: np.exp(v[0]),
    "Neg": lambda g, n, v: -v[0],
    "Abs": lambda g, n, v: np.abs(v[0]),
    "Sqrt": lambda g, n, v: np.sqrt(v[0]),
    "Reciprocal": lambda g, n, v: 1.0 / v[0],
    "Relu": lambda g, n, v: np.maximum(v[0], 0.0),
    "Clip": lambda g, n, v: np.clip(v[0], *_clip_bounds(g, n, v)),
    "HardSigmoid": lambda g, n, v: np.clip(attrs(n).get("alpha", 0.2) * v[0]
                                           + attrs(n).get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda g, n, v: v[0] * np.clip(v[0] / 6.0 + 0.5, 0.0, 1.0),
}
CONE_OPS = frozenset(_CONE_FUNCTIONS)


def _cone_operands(g: OnnxGraph, node: onnx.NodeProto, inside: set[str]) -> list | None:
    """The node's operands when each is a tensor of the cone or a one-number constant."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in _CONE_FUNCTIONS \
            or len(node.output) != 1:
        return None
    operands: list = []
    for name in node.input:
        if not name:
            operands.append(None)
        elif name in inside:
            operands.append(name)
        elif (value := g.scalar(name)) is not None:
            operands.append(value)
        else:
            return None
    return operands


def _escaping(g: OnnxGraph, nodes: list[onnx.NodeProto]) -> list[str]:
    """Tensors made inside the cone that something outside it reads (or nothing reads)."""
    ids = {id(n) for n in nodes}
    out = []
    for node in nodes:
        t = node.output[0]
        users = g.users(t)
        if t in g.outputs or not users or any(id(u) not in ids for u in users):
            out.append(t)
    return out


def _cone(g: OnnxGraph, x: str, root: onnx.NodeProto | None = None) -> Act | None:
    """The largest cone of elementwise nodes computing a known activation of `x` alone.

    Without `root` the cone must read every use of x (it attaches to x's producer); with one it
    starts at `root` and x may be read elsewhere too. The cone grows node by node in graph
    order; each time exactly one of its tensors leaves it, its values on PROBE name it."""
    if root is None and (x in g.outputs or not g.users(x)):
        return None
    nodes: list[onnx.NodeProto] = []
    operands: dict[int, list] = {}
    inside = {x}
    best: Act | None = None
    while len(nodes) < _MAX_CONE:
        if root is not None and not nodes:
            found = _cone_operands(g, root, inside)
            candidates = [(root, found)] if found is not None and g.free(root) else []
        else:
            ids = {id(n) for n in nodes}
            seen: set[int] = set()
            candidates = []
            for t in list(inside):
                for user in g.users(t):
                    if id(user) in ids or id(user) in seen or not g.free(user):
                        continue
                    seen.add(id(user))
                    found = _cone_operands(g, user, inside)
                    if found is not None:
                        candidates.append((user, found))
        if not candidates:
            break
        node, found = min(candidates, key=lambda c: g.order[id(c[0])])
        nodes.append(node)
        operands[id(node)] = found
        inside.add(node.output[0])
        escaping = _escaping(g, nodes)
        if len(escaping) != 1:
            continue
        if root is None and any(id(u) not in {id(n) for n in nodes} for u in g.users(x)):
            continue
        name = _cone_value(g, x, nodes, operands, escaping[0])
        if name is not None:
            best = Act(name, list(nodes), escaping[0])
    return best


def _cone_value(g: OnnxGraph, x: str, nodes: list[onnx.NodeProto], operands: dict[int, list],
                out: str) -> str | None:
    values: dict[str, np.ndarray] = {x: PROBE}
    with np.errstate(all="ignore"):
        for node in nodes:
            args = [values[o] if isinstance(o, str) else o for o in operands[id(node)]]
            values[node.output[0]] = np.asarray(_CONE_FUNCTIONS[node.op_type](g, node, args),
                                                dtype=np.float64) * np.ones_like(PROBE)
    found = identify_activation(values[out])
    if found is None and g.types.get(x) == onnx.TensorProto.FLOAT16:
        return _nearest_activation(values[out])
    return found


# float16 constants (GELU's 1/sqrt 2, 0.044715) are off by up to 5e-4 of their value; the two
# GELUs differ by as much, so a float16 cone is named by the activation it is nearest to.
_FP16_TOLERANCE = 2e-3


def _nearest_activation(values: np.ndarray) -> str | None:
    if not np.all(np.isfinite(values)):
        return None
    errors = {name: float(np.max(np.abs(values - f(PROBE)) / (1.0 + np.abs(f(PROBE)))))
              for name, f in ACTIVATION_FUNCTIONS.items()}
    name = min(errors, key=errors.__getitem__)
    return name if errors[name] <= _FP16_TOLERANCE else None


def activation_at(g: OnnxGraph, tensor: str) -> Act | None:
    """The activation applied to `tensor` when it reads every use of it (so it can fuse into
    the kernel that makes the tensor)."""
    if tensor in g.outputs:
        return None
    users = g.users(tensor)
    if not users or any(not g.free(u) for u in users):
        return None
    if len(users) == 1 and users[0].input[0] == tensor:
        unary = unary_act(g, users[0])
        if unary is not None:
            return Act(unary[0], [users[0]], users[0].output[0], unary[1])
    if len(users) == 2:
        for gate in users:
            if gate.op_type in GATE_OPS and gate.input[0] == tensor:
                mul = self_gate(g, gate)
                if mul is not None and any(mul is u for u in users):
                    return Act(gated_name(gate), [gate, mul], mul.output[0])
    return _cone(g, tensor)


def activation_from(g: OnnxGraph, node: onnx.NodeProto) -> Act | None:
    """The activation starting at `node` (its input may be read elsewhere too)."""
    dynamic = g.dynamic_inputs(node)
    if not dynamic:
        return None
    x = dynamic[0]
    if node.op_type in CONE_OPS:
        cone = _cone(g, x, root=node)
        if cone is not None:
            return cone
    mul = self_gate(g, node)
    if mul is not None:
        return Act(gated_name(node), [node, mul], mul.output[0])
    unary = unary_act(g, node)
    if unary is not None and node.input[0] == x:
        return Act(unary[0], [node], node.output[0], unary[1])
    return None


def attach_act(g: OnnxGraph, kind: str, tensor: str, attach: Attach,
               nodes: list[onnx.NodeProto]) -> tuple[Act | None, str]:
    """Attach the activation after `tensor` to a `kind` kernel if the rules allow it: the
    activation (None when not attached) and the kernel's output tensor."""
    act = activation_at(g, tensor)
    if act is None and tensor in g.clamps:  # a quantized range that starts at 0
        act = Act(g.clamps[tensor], [], tensor)
    if act is None or (kind, act.name) not in attach:
        return None, tensor
    nodes.extend(act.nodes)
    return act, act.output


def act_fields(act: Act | None) -> dict:
    """OpSpec fields of an attached activation (none: no fields)."""
    if act is None:
        return {}
    return {"act": act.name, "alpha": act.alpha}


def dims(g: OnnxGraph, tensor: str, node: onnx.NodeProto) -> dict:
    """batch, h, w, cin of an elementwise kernel on `tensor`."""
    n, h, w, c = elementwise_dims(g.shape(tensor, node), g.batch, g.is_image(tensor))
    return {"batch": n, "h": h, "w": w, "cin": c}


def match_activation(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """An activation nothing absorbed: its own "act" kernel (x * gate(x), GELU, mish as one)."""
    act = activation_from(g, node)
    if act is None:
        if node.op_type in UNARY_ACT_OPS:
            raise NodeProblem(f"{describe(node)} is not an activation latbench knows")
        raise NotAKernel(node.op_type)
    x = g.dynamic_inputs(node)[0]
    return Match([OpSpec("act", **dims(g, x, node), **act_fields(act))], act.nodes)


def match_elementwise(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """Add/Sub of two tensors -> add (+ activation); a constant [1, T, C] added to tokens ->
    posembed; Mul/Div/Pow, or any of them with a constant operand (a per-channel affine), ->
    mul. An activation written out (GELU's Div/Erf/Add/Mul/Mul, x * sigmoid(x)) that starts
    here is one act kernel."""
    act = activation_from(g, node)
    if act is not None:
        x = g.dynamic_inputs(node)[0]
        return Match([OpSpec("act", **dims(g, x, node), **act_fields(act))], act.nodes)
    dynamic = g.dynamic_inputs(node)
    out = node.output[0]
    if len(dynamic) == 2 and node.op_type in ("Add", "Sub"):
        shapes = {g.shape(i, node) for i in dynamic}
        if len(shapes) > 1:
            logger.debug("%s broadcasts %s, priced as an add of its output shape",
                         describe(node), shapes)
        nodes = [node]
        added, _ = attach_act(g, "add", out, attach, nodes)
        return Match([OpSpec("add", **dims(g, out, node), **act_fields(added))], nodes)
    if node.op_type == "Add" and len(dynamic) == 1:
        embed = _position_embedding(g, node, dynamic[0])
        if embed is not None:
            return embed
    return Match([OpSpec("mul", **dims(g, out, node))], [node])


def _position_embedding(g: OnnxGraph, node: onnx.NodeProto, x: str) -> Match | None:
    shape = g.shape(x, node)
    const = next(i for i in node.input if i != x)
    value = g.const(const)
    if len(shape) != 3 or value is None or value.size != shape[1] * shape[2] \
            or g.shape(node.output[0], node) != shape:
        return None
    n, t, c = shape
    return Match([OpSpec("posembed", batch=n, tokens=t, cin=c)], [node])


# --- matrix products ------------------------------------------------------------------------
def fc_features(g: OnnxGraph, node: onnx.NodeProto) -> tuple[int, int]:
    w_shape = g.shape(node.input[1], node)
    if len(w_shape) != 2:
        raise NodeProblem(f"{describe(node)} has a weight of shape {w_shape}, not 2-D")
    if node.op_type == "Gemm" and attrs(node).get("transB", 0):
        return w_shape[1], w_shape[0]
    return w_shape[0], w_shape[1]


def bias_add(g: OnnxGraph, tensor: str, nodes: list[onnx.NodeProto],
             features: int | None = None) -> str:
    """Fold an Add of a constant (the bias: one value per output feature) after a MatMul into
    the linear kernel."""
    add = g.sole_user(tensor)
    if add is None or add.op_type != "Add" or len(g.dynamic_inputs(add)) != 1:
        return tensor
    value = g.const(next(i for i in add.input if i != tensor))
    if features is not None and (value is None or value.size != features):
        return tensor
    nodes.append(add)
    return add.output[0]


def match_matmul(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """MatMul/Gemm: with a constant weight a "linear" layer ([batch, C] in) or a token-wise
    "tlinear" ([..., tokens, C] in) with its bias and attached activation; between two computed
    tensors a batched matmul ("bmm")."""
    a, b = node.input[0], node.input[1]
    if a not in g.static and b not in g.static:
        return Match([_bmm(g, node)], [node])
    if b not in g.static:
        raise NodeProblem(f"{describe(node)} multiplies a constant by a computed tensor")
    x_shape = g.shape(a, node)
    cin, cout = fc_features(g, node)
    if node.op_type == "Gemm":
        rows = x_shape[1] if attrs(node).get("transA", 0) else x_shape[0]
    else:
        rows = int(np.prod(x_shape[:-1], dtype=np.int64)) if len(x_shape) > 1 else 1
    nodes = [node]
    out = node.output[0]
    if node.op_type == "MatMul":
        out = bias_add(g, out, nodes, cout)
    if len(x_shape) <= 2 and rows == g.batch:
        act, out = attach_act(g, "linear", out, attach, nodes)
        return Match([OpSpec("linear", cin=cin, cout=cout, batch=rows, **act_fields(act))],
                     nodes)
    n, tokens = split_batch(rows, g.batch)
    act, out = attach_act(g, "tlinear", out, attach, nodes)
    return Match([OpSpec("tlinear", batch=n, tokens=tokens, cin=cin, cout=cout,
                         **act_fields(act))], nodes)


def _bmm(g: OnnxGraph, node: onnx.NodeProto) -> OpSpec:
    sa, sb = g.shape(node.input[0], node), g.shape(node.input[1], node)
    out = g.shape(node.output[0], node)
    if len(sa) < 2 or len(sb) < 2:
        raise NodeProblem(f"{describe(node)} multiplies a vector ({dims_text(sa)} by "
                          f"{dims_text(sb)}); latbench's bmm multiplies matrices")
    m, k = sa[-2:]
    n_out = sb[-1]
    if node.op_type == "Gemm":
        a = attrs(node)
        m, k = (sa[1], sa[0]) if a.get("transA", 0) else (sa[0], sa[1])
        n_out = sb[0] if a.get("transB", 0) else sb[1]
    n, heads = split_batch(int(np.prod(out[:-2], dtype=np.int64)), g.batch)
    return OpSpec("bmm", batch=n, heads=heads, tokens=m, cin=k, cout=n_out)


# --- normalisation, softmax -------------------------------------------------------------------
def _rows_spec(kind: str, shape: tuple[int, ...], axis: int, batch: int) -> OpSpec:
    """A kernel over the axes from `axis` on: rows before it as batch x tokens."""
    axis %= len(shape)
    cin = int(np.prod(shape[axis:], dtype=np.int64))
    n, tokens = split_batch(int(np.prod(shape[:axis], dtype=np.int64)), batch)
    return OpSpec(kind, batch=n, tokens=tokens, cin=cin)


def match_layernorm(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    shape = g.shape(node.input[0], node)
    return Match([_rows_spec("layernorm", shape, int(attrs(node).get("axis", -1)), g.batch)],
                 [node])


def match_softmax(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """Softmax over the last axis of [..., tokens, cin]: leading axes are batch x heads. Below
    opset 13 the op normalises the tensor flattened to 2-D at `axis`."""
    shape = g.shape(node.input[0], node)
    rank = len(shape)
    legacy = g.opset < 13
    axis = int(attrs(node).get("axis", 1 if legacy else -1)) % max(rank, 1)
    if legacy:
        spec = _rows_spec("softmax", shape, axis, g.batch)
        return Match([OpSpec("softmax", batch=spec.batch, tokens=spec.tokens, cin=spec.cin)],
                     [node])
    if axis != rank - 1:
        raise NodeProblem(f"{describe(node)} normalises axis {axis} of a {dims_text(shape)} "
                          "tensor; latbench's softmax normalises the last axis")
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    n, rest = split_batch(rows, g.batch)
    lead = int(np.prod(shape[:-2], dtype=np.int64))
    heads, tokens = (lead // n, shape[-2]) if rank >= 3 and lead % n == 0 else (1, rest)
    return Match([OpSpec("softmax", batch=n, heads=heads, tokens=tokens, cin=shape[-1])],
                 [node])


def reduce_axes(g: OnnxGraph, node: onnx.NodeProto, rank: int) -> list[int] | None:
    """The reduced axes of a Reduce* node (attribute or input), normalised; None when computed.
    No axes means all of them unless `noop_with_empty_axes`."""
    a = attrs(node)
    axes = a.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = g.const_ints(node.input[1])
        if axes is None:
            return None
    if not axes:
        return [] if a.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted({int(x) % rank for x in axes})


def match_decomposed_layernorm(g: OnnxGraph, node: onnx.NodeProto) -> Match | None:
    """ReduceMean -> Sub -> Pow 2 (or the centred tensor times itself) -> ReduceMean -> Add eps
    -> Sqrt -> Div [-> Mul scale] [-> Add bias] as one "layernorm" kernel: over the last axes, as
    older exporters write LayerNorm, or over the channels of an NCHW image, as ConvNeXt's
    channels-first LayerNorm is written (priced as the layer norm it computes)."""
    x = node.input[0]
    shape = g.shape(x, node)
    rank = len(shape)
    axes = reduce_axes(g, node, rank)
    if not axes or not attrs(node).get("keepdims", 1):
        return None
    trailing = axes == list(range(axes[0], rank))
    channels = rank == 4 and axes == [1]
    if not (trailing or channels):
        return None
    mean = node.output[0]
    subs = g.users(mean)
    if not subs or mean in g.outputs or any(
            s.op_type != "Sub" or list(s.input) != [x, mean] or not g.free(s) for s in subs):
        return None
    square = div = None
    for sub in subs:
        for user in g.users(sub.output[0]):
            if user.op_type == "Pow" and user.input[0] == sub.output[0] \
                    and g.scalar(user.input[1]) == 2.0 \
                    or user.op_type == "Mul" and list(user.input) == [sub.output[0]] * 2:
                square = user if square is None else None
            elif user.op_type == "Div" and user.input[0] == sub.output[0]:
                div = user if div is None else None
            else:
                return None
    if square is None or div is None:
        return None
    var = g.sole_user(square.output[0])
    if var is None or var.op_type != "ReduceMean" or reduce_axes(g, var, rank) != axes:
        return None
    add = g.sole_user(var.output[0])
    if add is None or add.op_type != "Add" or len(g.dynamic_inputs(add)) != 1:
        return None
    sqrt = g.sole_user(add.output[0])
    if sqrt is None or sqrt.op_type != "Sqrt" or g.sole_user(sqrt.output[0]) is not div \
            or div.input[1] != sqrt.output[0]:
        return None
    nodes = [node, *subs, square, var, add, sqrt, div]
    cin = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    out = div.output[0]
    for op in ("Mul", "Add"):  # the affine scale and shift, one value per channel
        user = g.sole_user(out)
        if user is None or user.op_type != op or len(g.dynamic_inputs(user)) != 1:
            break
        value = g.const(next(i for i in user.input if i != out))
        if value is None or value.size != cin:
            break
        nodes.append(user)
        out = user.output[0]
    rows = int(np.prod(shape, dtype=np.int64)) // cin
    n, tokens = split_batch(rows, g.batch)
    return Match([OpSpec("layernorm", batch=n, tokens=tokens, cin=cin)], nodes)


def match_reduce(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """A mean over any axes of a tensor of up to 4 axes, named positionally (batch, cin, h, w;
    fewer axes are padded on the right); a mean over a batch of one drops that axis."""
    shape = g.shape(node.input[0], node)
    rank = len(shape)
    axes = reduce_axes(g, node, rank)
    if axes is None:
        raise NodeProblem(f"{describe(node)} reduces computed axes")
    if rank > 4 or not shape:
        raise NodeProblem(f"{describe(node)} reduces a {rank}-D tensor; latbench reduces up to "
                          "4 axes")
    if 0 in axes and shape[0] != 1:
        raise NodeProblem(f"{describe(node)} averages over the batch axis")
    spec = reduce_spec(shape, axes)
    return Match([] if spec is None else [spec], [node])


def match_instnorm(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    shape = g.shape(node.input[0], node)
    if len(shape) not in (3, 4):
        raise NodeProblem(f"{describe(node)} normalises a {len(shape)}-D tensor")
    n, c, h, w = (*shape, 1)[:4]
    return Match([OpSpec("instnorm", batch=n, cin=c, h=h, w=w)], [node])


# --- layout ---------------------------------------------------------------------------------
def match_transpose(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """A transpose in its canonical form (`kernel_forms.transpose_spec`): none when it only
    moves axes of size 1; a channel shuffle (Reshape to [N, g, C/g, H, W], swap g and C/g,
    Reshape back) is one "shuffle" kernel."""
    shape = g.shape(node.input[0], node)
    perm = list(attrs(node).get("perm", reversed(range(len(shape)))))
    shuffle = _shuffle(g, node, shape, perm)
    if shuffle is not None:
        return shuffle
    try:
        spec = transpose_spec(shape, perm)
    except SpecError as exc:
        raise NodeProblem(f"{describe(node)}: {exc}") from exc
    return Match([] if spec is None else [spec], [node])


def _shuffle(g: OnnxGraph, node: onnx.NodeProto, shape: tuple[int, ...],
             perm: list[int]) -> Match | None:
    if len(shape) != 5 or perm != [0, 2, 1, 3, 4]:
        return None
    before = g.producer.get(node.input[0])
    after = g.sole_user(node.output[0])
    if before is None or before.op_type != "Reshape" or after is None \
            or after.op_type != "Reshape":
        return None
    image = g.shapes.get(before.input[0], ())
    n, groups, per, h, w = shape
    if image != (n, groups * per, h, w) or g.shapes.get(after.output[0]) != image:
        return None
    return Match([OpSpec("shuffle", batch=n, cin=groups * per, h=h, w=w, groups=groups)],
                 [node, after])


def _drops(g: OnnxGraph, tensor: str, axis: int) -> bool:
    """Whether `tensor` is only read through a Squeeze of `axis` (one index taken)."""
    user = g.sole_user(tensor)
    if user is None or user.op_type != "Squeeze":
        return False
    rank = len(g.shapes.get(tensor, ()))
    axes = attrs(user).get("axes")
    if axes is None and len(user.input) > 1 and user.input[1]:
        axes = g.const_ints(user.input[1])
    return axes is None or axis in {int(a) % rank for a in axes}


def match_gather(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """One index of an axis (the class token of [B, T, C], one of q, k, v): a "gather"."""
    data, index = node.input[0], node.input[1]
    if data in g.static:
        raise NodeProblem(f"{describe(node)} looks up a constant table (an embedding)")
    value = g.const(index)
    if value is None:
        raise NodeProblem(f"{describe(node)} gathers computed indices")
    if value.size != 1:
        raise NodeProblem(f"{describe(node)} gathers {value.size} indices; latbench's gather "
                          "takes one")
    shape = g.shape(data, node)
    axis = int(attrs(node).get("axis", 0)) % len(shape)
    return Match([part_spec(shape, axis, 1, drops_axis=True, image=g.is_image(data))], [node])


def match_slice(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """A contiguous range of one axis: a "slice" (or a "gather" when one index is taken and the
    axis squeezed away); a slice keeping everything is no kernel."""
    x = node.input[0]
    shape, out = g.shape(x, node), g.shape(node.output[0], node)
    changed = [a for a in range(len(shape)) if shape[a] != out[a]]
    if not changed:
        return Match([], [node])
    if len(changed) > 1:
        raise NodeProblem(f"{describe(node)} slices {len(changed)} axes of "
                          f"{dims_text(shape)}; latbench slices one")
    axis = changed[0]
    steps = _slice_steps(g, node, len(shape))
    if steps is None or steps.get(axis, 1) != 1:
        raise NodeProblem(f"{describe(node)} is a strided slice")
    spec = part_spec(shape, axis, out[axis], drops_axis=_drops(g, node.output[0], axis),
                     image=g.is_image(x))
    return Match([spec], [node])


def _slice_steps(g: OnnxGraph, node: onnx.NodeProto, rank: int) -> dict[int, int] | None:
    """Step per sliced axis (opset 10+ inputs; 1 below); None when computed."""
    if len(node.input) < 5 or not node.input[4]:
        return {}
    steps = g.const_ints(node.input[4])
    if steps is None:
        return None
    axes = g.const_ints(node.input[3]) if node.input[3] else list(range(len(steps)))
    if axes is None:
        return None
    return {a % rank: s for a, s in zip(axes, steps, strict=False)}


def match_split(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """One slice (or gather) kernel per output of a Split."""
    x = node.input[0]
    shape = g.shape(x, node)
    axis = int(attrs(node).get("axis", 0)) % len(shape)
    specs = []
    for out in node.output:
        if not out:
            continue
        size = g.shape(out, node)[axis]
        if size == shape[axis]:
            continue
        specs.append(part_spec(shape, axis, size, drops_axis=_drops(g, out, axis),
                               image=g.is_image(x)))
    return Match(specs, [node])


def match_concat(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """Concatenation along any axis of up to 4 axes (named positionally: batch, cin, h, w);
    constant tokens put before [B, T, C] tokens are one "clstoken" kernel."""
    shape = g.shape(node.output[0], node)
    axis = int(attrs(node).get("axis", 0)) % len(shape)
    inputs = [i for i in node.input if i]
    if len(inputs) == 1:
        return Match([], [node])
    dynamic = g.dynamic_inputs(node)
    if len(dynamic) < len(inputs):
        if len(shape) == 3 and axis == 1 and len(dynamic) == 1:
            n, t, c = g.shape(dynamic[0], node)
            return Match([OpSpec("clstoken", batch=n, tokens=t, cin=c)], [node])
        raise NodeProblem(f"{describe(node)} concatenates constants with computed tensors "
                          f"along axis {axis} of {dims_text(shape)}")
    if axis == 0 or len(shape) > 4:
        raise NodeProblem(f"{describe(node)} concatenates along axis {axis} of a "
                          f"{len(shape)}-D tensor")
    n, c, h, w = (*shape, 1, 1)[:4]
    return Match([OpSpec("concat", batch=n, cin=c, h=h, w=w, groups=len(inputs),
                         axes="" if axis == 1 else str(axis))], [node])


def match_layout(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """Expand and Cast that leave the data as it is: no kernel; a Cast between float types
    (a float16 model's edges) is glue, no kernel either; others are no kernel latbench knows."""
    x = node.input[0]
    same_shape = g.shapes.get(x) == g.shapes.get(node.output[0])
    if node.op_type == "Cast":
        to = attrs(node).get("to")
        if same_shape and (to == onnx.TensorProto.FLOAT or to in _FLOAT_TYPES and g.types.get(
                x, onnx.TensorProto.FLOAT) in _FLOAT_TYPES):
            return Match([], [node])
    elif same_shape:
        return Match([], [node])
    raise NotAKernel(node.op_type)


_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                          onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE})


# --- the rest of the common op set (images) ---------------------------------------------------
def _image(g: OnnxGraph, node: onnx.NodeProto) -> tuple[int, int, int, int]:
    shape = g.shape(node.input[0], node)
    if len(shape) != 4:
        raise NodeProblem(f"{describe(node)} reads a {len(shape)}-D tensor, not an NCHW image")
    return shape  # type: ignore[return-value]


def _pad_amounts(g: OnnxGraph, node: onnx.NodeProto) -> list[int] | None:
    """The 8 pads (begins, then ends, of N, C, H, W) of a Pad node; None when computed."""
    pads = attrs(node).get("pads") if g.opset < 11 else g.const_ints(node.input[1])
    if pads is None:
        return None
    pads = [int(p) for p in pads]
    if len(node.input) > 3 and node.input[3]:  # opset 18: pads of the listed axes only
        axes = g.const_ints(node.input[3]) or []
        full = [0] * 8
        for i, a in enumerate(axes):
            full[a % 4], full[a % 4 + 4] = pads[i], pads[i + len(axes)]
        pads = full
    return pads


def pad_into_conv(g: OnnxGraph, node: onnx.NodeProto) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of a zero Pad whose only reader is a Conv that it pads
    evenly together with the conv's own padding: one padded conv (as TFLite's PAD + VALID
    convolution is, and as ONNX Runtime fuses them); else None."""
    conv = g.sole_user(node.output[0])
    if node.op_type != "Pad" or conv is None or conv.op_type != "Conv" \
            or conv.input[0] != node.output[0] or len(g.shapes.get(node.input[0], ())) != 4 \
            or text_attr(node, "mode", "constant") != "constant":
        return None
    value = g.scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else \
        attrs(node).get("value", 0.0)
    pads = _pad_amounts(g, node)
    own = list(attrs(conv).get("pads", [0, 0, 0, 0]))
    if value != 0.0 or pads is None or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) \
            or min(pads) < 0 or text_attr(conv, "auto_pad", "NOTSET") != "NOTSET" \
            or len(own) != 4:
        return None
    top, left, bottom, right = (pads[2] + own[0], pads[3] + own[1], pads[6] + own[2],
                                pads[7] + own[3])
    return (top, left, bottom, right) if (top, left) == (bottom, right) else None


def match_pad(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """The same padding on the four sides of H and W, zeros or reflected; a zero pad read by a
    conv it pads evenly is that conv's padding (`pad_into_conv`)."""
    n, c, h, w = _image(g, node)
    if pad_into_conv(g, node) is not None:
        return Match([], [node])
    mode = text_attr(node, "mode", "constant")
    if mode not in ("constant", "reflect"):
        raise NodeProblem(f"{describe(node)} pads in mode {mode!r}; latbench pads with "
                          "constants or reflects")
    pads = _pad_amounts(g, node)
    if pads is None:
        raise NodeProblem(f"{describe(node)} has computed pads")
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)):
        raise NodeProblem(f"{describe(node)} pads {pads}; latbench pads H and W only")
    if not any(pads):
        return Match([], [node])
    if len(set(pads[i] for i in (2, 3, 6, 7))) != 1:
        raise NodeProblem(f"{describe(node)} pads unevenly {pads}; latbench pads all four "
                          "sides equally")
    return Match([OpSpec("pad", batch=n, cin=c, h=h, w=w, pad=pads[2], mode=mode)], [node])


def match_resize(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """Resize / Upsample of H and W, nearest or (bi)linear, read off the output shape."""
    n, c, h, w = _image(g, node)
    out = g.shape(node.output[0], node)
    if tuple(out[:2]) != (n, c):
        raise NodeProblem(f"{describe(node)} resizes the batch or channel axis")
    mode = text_attr(node, "mode", "nearest")
    modes = {"nearest": "nearest", "linear": "bilinear", "bilinear": "bilinear"}
    if mode not in modes:
        raise NodeProblem(f"{describe(node)} resizes in mode {mode!r}; latbench resizes "
                          "nearest or bilinear")
    if (out[2], out[3]) == (h, w):
        return Match([], [node])
    return Match([resize_spec(n, c, (h, w), (out[2], out[3]), modes[mode])], [node])


def match_convt(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """ConvTranspose with a square kernel and stride, no dilation, the same padding on every
    side (as attribute, or implied by the output size), with its attached activation."""
    n, cin, h, w = _image(g, node)
    a = attrs(node)
    w_shape = g.shape(node.input[1], node)
    groups = int(a.get("group", 1))
    cout = w_shape[1] * groups
    kernel = list(a.get("kernel_shape", w_shape[2:]))
    stride = list(a.get("strides", [1, 1]))
    out_pad = list(a.get("output_padding", [0, 0]))
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        raise NodeProblem(f"{describe(node)} is dilated {a['dilations']}")
    for name, values in (("kernel", kernel), ("strides", stride), ("output_padding", out_pad)):
        if len(values) != 2 or values[0] != values[1]:
            raise NodeProblem(f"{describe(node)} has non-square {name} {values}")
    out = g.shape(node.output[0], node)
    total = (h - 1) * stride[0] + kernel[0] + out_pad[0] - out[2]
    if total < 0 or total % 2 or out[3] != out[2] + (w - h) * stride[0]:
        raise NodeProblem(f"{describe(node)} pads asymmetrically (output {dims_text(out)})")
    nodes = [node]
    act, _ = attach_act(g, "convt", node.output[0], attach, nodes)
    spec = OpSpec("convt", batch=n, cin=cin, h=h, w=w, cout=cout, kernel=kernel[0],
                  stride=stride[0], pad=total // 2, out_pad=out_pad[0], groups=groups,
                  **act_fields(act))
    if spec.output_shape[1:] != tuple(out[1:]):
        raise NodeProblem(f"{describe(node)} gives {out}, its kernel {spec.key()} would give "
                          f"{spec.output_shape}")
    return Match([spec], nodes)


def no_kernel(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    return Match([], [node])


Matcher = Callable[[OnnxGraph, onnx.NodeProto, Attach], Match]

# Root op type -> matcher of the ops this module reads (bench.kernels adds the convolutions,
# pools, squeeze-excite and fused blocks).
MATCHERS: dict[str, Matcher] = {
    "Gemm": match_matmul,
    "MatMul": match_matmul,
    **{op: match_activation for op in UNARY_ACT_OPS | CONE_OPS
       if op not in ("Add", "Sub", "Mul", "Div", "Pow")},
    **{op: match_elementwise for op in ("Add", "Sub", "Mul", "Div", "Pow")},
    "Softmax": match_softmax,
    "LogSoftmax": match_softmax,
    "LayerNormalization": match_layernorm,
    "Transpose": match_transpose,
    "Gather": match_gather,
    "Slice": match_slice,
    "Split": match_split,
    "Concat": match_concat,
    "Pad": match_pad,
    "Resize": match_resize,
    "Upsample": match_resize,
    "InstanceNormalization": match_instnorm,
    "ConvTranspose": match_convt,
    "Expand": match_layout,
    "Cast": match_layout,
    **{op: no_kernel for op in PASS_THROUGH_OPS},
}
# Ops that are a kernel only inside an activation they start (GELU's Erf, mish's Softplus):
# alone they are unsupported, listed by op type.
PATTERN_ONLY_OPS = frozenset(CONE_OPS - UNARY_ACT_OPS - {"Add", "Sub", "Mul", "Div", "Pow"})
