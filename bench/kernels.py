"""Split an ONNX graph into latbench kernels (OpSpecs), in execution order.

A whole-network estimate is the sum of per-kernel predictions, so the split must match what a
runtime executes as one kernel: BatchNormalization folds into the Conv before it, activations
fuse into the conv / linear / add that produces their input, and a squeeze-excite block is one
"se" kernel. Which follower attaches to which producer is data (`DEFAULT_ATTACH`), so rules
measured on a device can replace the default set.

The matchers read the dialects of torch's two ONNX exporters (TorchScript and dynamo), with or
without BatchNorm folded by the exporter, and latbench's own `bench.export.to_onnx`.

Fused blocks: asked to (`group`), the parser also reads an inverted residual - [1x1 expand conv
+ act] -> kxk depthwise + act -> [squeeze-excite] -> 1x1 project conv -> [residual add] - as the
one "mbconv" kernel latbench's spaces describe it with (exactly the inverse of
`bench.ops.decompose`), so a space's architecture and its ONNX export give the same kernels.
Without `group` the split stays the primitives a runtime executes one by one, which is what a
predictor trained without mbconv kernels can price.

Input shapes: a symbolic batch (axis 0) is read as 1; any other symbolic input dimension must be
given (`input_shapes`), since every kernel's cost depends on it. With `allow_partial`, ops no
kernel describes are left out and counted instead of refused.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from latbench.bench.ops import ACTIVATIONS, OpSpec, decompose
from latbench.errors import ConfigError, ParseError, SpecError, UnsupportedModelError

logger = logging.getLogger(__name__)

# (producer kind, follower) pairs that run as one kernel. A follower is an activation name or
# "bn" (BatchNormalization folded into the conv before it). Anything not listed becomes a kernel
# of its own: an "act" kernel for an activation, a "mul" kernel (per-channel affine) for a BN.
DEFAULT_ATTACH: frozenset[tuple[str, str]] = frozenset(
    {(producer, "bn") for producer in ("conv", "dwconv")}
    | {(producer, act) for producer in ("conv", "dwconv", "linear", "add")
       for act in ACTIVATIONS if act != "none"}
)

# Nodes that only move or relabel data: no kernel of their own.
PASS_THROUGH_OPS = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity",
                              "Dropout"})
# Nodes that (with fixed input shapes) only compute shapes or constants.
SHAPE_OPS = frozenset({"Constant", "Shape", "Size", "EyeLike"})
# Inputs read only for their type (CastLike's second): they do not make the output computed.
_TYPE_ONLY_INPUTS = {"CastLike": 1}
UNARY_ACT_OPS = frozenset({"Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Swish"})
GATE_OPS = {"Sigmoid": "sigmoid", "HardSigmoid": "hsigmoid"}


class _NodeProblem(Exception):
    """A supported op used in a way no kernel describes (asymmetric pads, dilation, ...)."""


@dataclass
class _Match:
    specs: list[OpSpec]
    nodes: list[onnx.NodeProto]


@dataclass
class _Act:
    """An activation found after a tensor: its latbench name, its nodes, its output tensor."""

    name: str
    nodes: list[onnx.NodeProto]
    output: str


@dataclass
class _Graph:
    """An ONNX graph with concrete shapes, producer/consumer maps and constant tensors."""

    nodes: list[onnx.NodeProto]
    shapes: dict[str, tuple[int, ...]]
    outputs: frozenset[str]
    batch: int
    initializers: dict[str, onnx.TensorProto]
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    static: set[str] = field(default_factory=set)
    consumed: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.static |= set(self.initializers)
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            ins = [i for i in node.input[:_TYPE_ONLY_INPUTS.get(node.op_type)] if i]
            if node.op_type in SHAPE_OPS or all(i in self.static for i in ins):
                self.static.update(o for o in node.output if o)
        # Nodes computing only constants (Shape(x), CastLike(c, x)) do not read x's data.
        for node in self.nodes:
            if not self.is_static(node):
                for name in dict.fromkeys(i for i in node.input if i):
                    self.consumers.setdefault(name, []).append(node)

    # --- structure ------------------------------------------------------------------------
    def users(self, tensor: str) -> list[onnx.NodeProto]:
        return self.consumers.get(tensor, [])

    def sole_user(self, tensor: str) -> onnx.NodeProto | None:
        """The only node reading `tensor`, if it is not also a graph output (else None)."""
        users = self.users(tensor)
        if len(users) != 1 or tensor in self.outputs or not self.free(users[0]):
            return None
        return users[0]

    def is_static(self, node: onnx.NodeProto) -> bool:
        return all(o in self.static for o in node.output if o)

    def free(self, node: onnx.NodeProto) -> bool:
        return id(node) not in self.consumed

    def dynamic_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and i not in self.static]

    def skip_pass_through(self, tensor: str) -> tuple[str, list[onnx.NodeProto]]:
        """Follow single-consumer Flatten/Reshape/... nodes; returns the tensor after them."""
        skipped: list[onnx.NodeProto] = []
        while (user := self.sole_user(tensor)) is not None and user.op_type in PASS_THROUGH_OPS \
                and user.input[0] == tensor:
            skipped.append(user)
            tensor = user.output[0]
        return tensor, skipped

    # --- values ---------------------------------------------------------------------------
    def shape(self, tensor: str, node: onnx.NodeProto) -> tuple[int, ...]:
        if tensor not in self.shapes:
            raise _NodeProblem(f"shape of tensor {tensor!r} (read by {_describe(node)}) is "
                               "unknown after shape inference")
        return self.shapes[tensor]

    def const(self, tensor: str) -> np.ndarray | None:
        """Value of a constant tensor (initializer, Constant, or a cast/reshape of one)."""
        if tensor in self.initializers:
            return numpy_helper.to_array(self.initializers[tensor])
        node = self.producer.get(tensor)
        if node is None:
            return None
        if node.op_type == "Constant":
            return _constant_value(node)
        if node.op_type in ("Identity", "Cast", "CastLike", "Reshape", "Squeeze", "Unsqueeze"):
            value = self.const(node.input[0])
            return None if value is None else value.ravel() if value.ndim else value
        return None


# --- loading --------------------------------------------------------------------------------
# Opset 7 brought numpy-style broadcasting to Add/Mul/...; older models broadcast by attribute,
# which the shape inference (and so every kernel shape) would misread.
MIN_OPSET = 7
ShapeMap = Mapping[str, Sequence[int]]


def load_model(model: bytes | str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model and a description of where it came from, for error messages. Refuses what is
    not an ONNX model, and IR versions and default-domain opsets this onnx cannot read."""
    if isinstance(model, onnx.ModelProto):
        proto, source = model, f"ONNX model {model.graph.name or '(unnamed)'!r}"
    elif isinstance(model, bytes | bytearray | memoryview):
        source = f"ONNX bytes ({len(model)} bytes)"
        try:
            proto = onnx.load_from_string(bytes(model))
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise ParseError(f"{source} could not be parsed as ONNX: {exc}") from exc
    elif isinstance(model, str | Path):
        source = f"ONNX file {str(model)!r}"
        try:
            proto = onnx.load(str(model), load_external_data=False)
        except OSError as exc:
            raise ParseError(f"cannot read {source}: {exc}") from exc
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise ParseError(f"{source} could not be parsed as ONNX: {exc}") from exc
    else:
        raise ParseError(f"expected ONNX bytes, a path or a ModelProto, got {type(model).__name__}")
    if not proto.graph.node or not proto.opset_import:
        raise ParseError(f"{source} holds no ONNX graph (no nodes or no opset): not an ONNX model?")
    _check_versions(proto, source)
    return proto, source


def _check_versions(proto: onnx.ModelProto, source: str) -> None:
    if not 3 <= proto.ir_version <= onnx.IR_VERSION:
        raise ParseError(f"{source} has ONNX IR version {proto.ir_version}; onnx "
                         f"{onnx.__version__} reads IR versions 3 to {onnx.IR_VERSION}")
    newest = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and not MIN_OPSET <= opset.version <= newest:
            raise UnsupportedModelError(
                f"{source} uses ONNX opset {opset.version}; latbench reads opsets {MIN_OPSET} "
                f"to {newest} (re-export the model with an opset in that range)")


def _concrete_graph(proto: onnx.ModelProto, source: str,
                    input_shapes: ShapeMap | None = None) -> _Graph:
    """Give the inputs concrete shapes (see `_fix_inputs`), infer every shape, index the graph."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    real_inputs = [v for v in graph.input if v.name not in init_names]
    if not real_inputs:
        raise ParseError(f"{source} has no graph input")
    _fix_inputs(real_inputs, dict(input_shapes or {}), source)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
        raise ParseError(f"shape inference failed on {source}: {exc}") from exc
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    for init in graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    first = shapes.get(real_inputs[0].name, ())
    batch = first[0] if first else 1
    return _Graph(nodes=list(graph.node), shapes=shapes,
                  outputs=frozenset(v.name for v in graph.output), batch=batch,
                  initializers={t.name: t for t in graph.initializer})


def _fix_inputs(inputs: Sequence[onnx.ValueInfoProto], given: dict[str, Sequence[int]],
                source: str) -> None:
    """Write concrete dims into the graph inputs: the shape given for an input (with or without
    its batch dimension), else its own dims with a symbolic batch (axis 0) read as 1. Any other
    symbolic dim is refused, naming every such input at once: the kernels' cost depends on it."""
    names = [v.name for v in inputs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ConfigError(f"{source} has no input {unknown[0]!r}; its inputs: {', '.join(names)}")
    problems = []
    for value in inputs:
        shape = value.type.tensor_type.shape
        has_shape = value.type.tensor_type.HasField("shape")
        dims: list[int | str] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                                 else d.dim_param or "?" for d in shape.dim]
        text = _dims_text(dims) if has_shape else "unknown rank"
        if value.name in given:
            new = [int(d) for d in given[value.name]]
            if any(d < 1 for d in new):
                problems.append(f"the shape given for input {value.name!r} "
                                f"({_dims_text(new)}) has a dim below 1")
                continue
            if has_shape and len(new) == len(dims) - 1:  # given without the batch dimension
                new = [dims[0] if isinstance(dims[0], int) else 1, *new]
            if has_shape and len(new) != len(dims):
                problems.append(f"input {value.name!r} has {len(dims)} dims ({text}), the shape "
                                f"given for it {_dims_text(new)}")
                continue
            clash = [i for i, d in enumerate(dims) if isinstance(d, int) and d != new[i]]
            if clash:
                problems.append(f"input {value.name!r} is fixed at {text}, the shape given for it "
                                f"is {_dims_text(new)} (axis {clash[0]} differs)")
                continue
        elif not has_shape or any(isinstance(d, str) for d in dims[1:]):
            symbolic = [(i, d) for i, d in enumerate(dims) if isinstance(d, str) and i > 0]
            what = ("symbolic dims " + ", ".join(f"{d} (axis {i})" for i, d in symbolic)
                    + f" (shape {text})") if has_shape else "no shape"
            template = _dims_text([f"<{d}>" if isinstance(d, str) and i > 0 else
                                   d if isinstance(d, int) else 1 for i, d in enumerate(dims)]) \
                if has_shape else "<dims>"
            problems.append(f"input {value.name!r} has {what}: give its shape with "
                            f"--input-shape {value.name}={template}")
            continue
        else:
            new = [d if isinstance(d, int) else 1 for d in dims]
        shape.Clear()
        for d in new:
            shape.dim.add().dim_value = d
    if problems:
        error = ConfigError if given else UnsupportedModelError
        raise error(f"{source}: " + "; ".join(problems))


def _dims_text(dims: Sequence[int | str]) -> str:
    return "x".join(str(d) for d in dims)


# --- small helpers --------------------------------------------------------------------------
def _describe(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def _op_name(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(attr))
    return None


def _hwc(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(H, W, C) of an NCHW (or NC, or NCL) tensor."""
    if len(shape) == 4:
        return shape[2], shape[3], shape[1]
    if len(shape) == 3:
        return 1, shape[2], shape[1]
    if len(shape) == 2:
        return 1, 1, shape[1]
    raise _NodeProblem(f"tensor of rank {len(shape)} has no channel layout latbench knows")


def _square(node: onnx.NodeProto, name: str, values: list[int]) -> int:
    if len(values) != 2 or values[0] != values[1]:
        raise _NodeProblem(f"{_describe(node)} has non-square {name} {values}")
    return int(values[0])


def _symmetric_pad(node: onnx.NodeProto, attrs: dict, size: int, kernel: int,
                   stride: int) -> int:
    """One pad for all four sides, or a problem naming the node."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return 0
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        if total % 2:
            raise _NodeProblem(f"{_describe(node)} pads asymmetrically ({auto}, total {total})")
        return total // 2
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or len(set(pads)) != 1:
        raise _NodeProblem(f"{_describe(node)} has asymmetric pads {pads}; latbench kernels pad "
                           "all sides equally")
    return int(pads[0])


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


# --- activations ----------------------------------------------------------------------------
def _unary_act(g: _Graph, node: onnx.NodeProto) -> str | None:
    """latbench name of a one-node activation; other clip ranges / hard-sigmoid slopes are
    priced as the same kernel (same cost class, other constants)."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return None
    if op == "Relu":
        return "relu"
    if op == "HardSwish":
        return "hswish"
    if op == "HardSigmoid":
        attrs = _attrs(node)
        alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
        if abs(alpha - 1 / 6) > 1e-4 or abs(beta - 0.5) > 1e-4:
            logger.debug("%s alpha=%s beta=%s priced as hsigmoid", _describe(node), alpha, beta)
        return "hsigmoid"
    if op == "Sigmoid":
        return "sigmoid"
    if op == "Swish":
        return "swish"
    if op == "Clip":
        return _clip_act(g, node)
    return None


def _clip_act(g: _Graph, node: onnx.NodeProto) -> str:
    attrs = _attrs(node)
    lo: float | None = attrs.get("min")
    hi: float | None = attrs.get("max")
    for index, name in ((1, "min"), (2, "max")):
        if len(node.input) > index and node.input[index]:
            value = g.const(node.input[index])
            if value is None:
                raise _NodeProblem(f"{_describe(node)} has a computed {name} bound")
            if name == "min":
                lo = float(np.asarray(value).ravel()[0])
            else:
                hi = float(np.asarray(value).ravel()[0])
    if lo == 0 and (hi is None or math.isinf(hi)):
        return "relu"
    if not (lo == 0 and hi == 6):
        logger.debug("%s clips to [%s, %s], priced as relu6", _describe(node), lo, hi)
    return "relu6"


def _self_gate(g: _Graph, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """For a Sigmoid/HardSigmoid s of x: the Mul(x, s) that makes x * gate(x), else None."""
    if node.op_type not in GATE_OPS:
        return None
    mul = g.sole_user(node.output[0])
    if mul is None or mul.op_type != "Mul" or sorted(mul.input) != sorted(
            [node.input[0], node.output[0]]):
        return None
    return mul


def _gated_name(gate: onnx.NodeProto) -> str:
    return "swish" if gate.op_type == "Sigmoid" else "hswish"


def _activation_at(g: _Graph, tensor: str) -> _Act | None:
    """The activation applied to `tensor` when it is the activation's only reader."""
    if tensor in g.outputs:
        return None
    users = [u for u in g.users(tensor) if g.free(u)]
    if len(users) != len(g.users(tensor)):
        return None
    if len(users) == 1:
        node = users[0]
        if node.input[0] != tensor:
            return None
        name = _unary_act(g, node)
        return None if name is None else _Act(name, [node], node.output[0])
    if len(users) == 2:
        for gate in users:
            if gate.op_type in GATE_OPS and gate.input[0] == tensor:
                mul = _self_gate(g, gate)
                if mul is not None and mul in users:
                    return _Act(_gated_name(gate), [gate, mul], mul.output[0])
    return None


def _attach_act(g: _Graph, kind: str, tensor: str, attach: Collection[tuple[str, str]],
                nodes: list[onnx.NodeProto]) -> tuple[str, str]:
    """Attach the activation after `tensor` to a `kind` kernel if the rules allow it."""
    act = _activation_at(g, tensor)
    if act is None or (kind, act.name) not in attach:
        return "none", tensor
    nodes.extend(act.nodes)
    return act.name, act.output


# --- matchers: each reads one root node and returns its kernels and the nodes they cover ------
def _match_conv(g: _Graph, node: onnx.NodeProto, attach: Collection[tuple[str, str]]) -> _Match:
    attrs = _attrs(node)
    x_shape = g.shape(node.input[0], node)
    w_shape = g.shape(node.input[1], node)
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise _NodeProblem(f"{_describe(node)} is not a 2-D convolution (input {x_shape})")
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise _NodeProblem(f"{_describe(node)} is dilated {attrs['dilations']}")
    _, cin, h, w = x_shape
    cout, groups = w_shape[0], int(attrs.get("group", 1))
    kernel = _square(node, "kernel", list(attrs.get("kernel_shape", w_shape[2:])))
    stride = _square(node, "strides", list(attrs.get("strides", [1, 1])))
    pad = _symmetric_pad(node, attrs, h, kernel, stride)
    kind = "dwconv" if groups == cin == cout else "conv"
    nodes = [node]
    out = node.output[0]
    bn = g.sole_user(out)
    if bn is not None and bn.op_type == "BatchNormalization" and (kind, "bn") in attach:
        nodes.append(bn)
        out = bn.output[0]
    act, out = _attach_act(g, kind, out, attach, nodes)
    spec = OpSpec(kind, h=h, w=w, cin=cin, cout=cout, kernel=kernel, stride=stride, pad=pad,
                  groups=groups, act=act, batch=g.batch)
    expected = g.shapes.get(node.output[0])
    if expected is not None and tuple(expected[1:]) != spec.output_shape[1:]:
        raise _NodeProblem(f"{_describe(node)} gives {expected}, its kernel {spec.key()} "
                           f"would give {spec.output_shape}")
    return _Match([spec], nodes)


def _fc_at(g: _Graph, tensor: str) -> tuple[list[onnx.NodeProto], str, int, int] | None:
    """A fully connected layer reading `tensor` alone: 1x1 Conv, Gemm or MatMul (+ bias Add).

    Returns (nodes, output tensor, in features, out features)."""
    node = g.sole_user(tensor)
    if node is None or node.input[0] != tensor:
        return None
    if node.op_type == "Conv":
        w_shape = g.shapes.get(node.input[1], ())
        if len(w_shape) != 4 or w_shape[2:] != (1, 1) or _attrs(node).get("group", 1) != 1:
            return None
        return [node], node.output[0], w_shape[1], w_shape[0]
    if node.op_type in ("Gemm", "MatMul") and node.input[1] in g.static:
        cin, cout = _fc_features(g, node)
        nodes, out = [node], node.output[0]
        if node.op_type == "MatMul":
            out = _bias_add(g, out, nodes)
        return nodes, out, cin, cout
    return None


def _fc_features(g: _Graph, node: onnx.NodeProto) -> tuple[int, int]:
    w_shape = g.shape(node.input[1], node)
    if len(w_shape) != 2:
        raise _NodeProblem(f"{_describe(node)} has a weight of shape {w_shape}, not 2-D")
    if node.op_type == "Gemm" and _attrs(node).get("transB", 0):
        return w_shape[1], w_shape[0]
    return w_shape[0], w_shape[1]


def _bias_add(g: _Graph, tensor: str, nodes: list[onnx.NodeProto]) -> str:
    """Fold an Add of a constant (the bias) after a MatMul into the linear kernel."""
    add = g.sole_user(tensor)
    if add is not None and add.op_type == "Add" and len(g.dynamic_inputs(add)) == 1:
        nodes.append(add)
        return add.output[0]
    return tensor


def _match_linear(g: _Graph, node: onnx.NodeProto, attach: Collection[tuple[str, str]]) -> _Match:
    if node.input[1] not in g.static:
        raise _NodeProblem(f"{_describe(node)} multiplies two computed tensors (no weight)")
    x_shape = g.shape(node.input[0], node)
    cin, cout = _fc_features(g, node)
    if node.op_type == "Gemm":
        batch = x_shape[1] if _attrs(node).get("transA", 0) else x_shape[0]
    else:
        batch = int(np.prod(x_shape[:-1])) if len(x_shape) > 1 else 1
    nodes = [node]
    out = node.output[0]
    if node.op_type == "MatMul":
        out = _bias_add(g, out, nodes)
    act, out = _attach_act(g, "linear", out, attach, nodes)
    return _Match([OpSpec("linear", cin=cin, cout=cout, act=act, batch=batch)], nodes)


def _match_batchnorm(g: _Graph, node: onnx.NodeProto,
                     attach: Collection[tuple[str, str]]) -> _Match:
    h, w, c = _hwc(g.shape(node.input[0], node))
    return _Match([OpSpec("mul", h=h, w=w, cin=c, batch=g.batch)], [node])


def _match_activation(g: _Graph, node: onnx.NodeProto,
                      attach: Collection[tuple[str, str]]) -> _Match:
    """An activation nothing absorbed: its own "act" kernel (x * gate(x) as one)."""
    h, w, c = _hwc(g.shape(node.input[0], node))
    mul = _self_gate(g, node)
    if mul is not None:
        return _Match([OpSpec("act", h=h, w=w, cin=c, act=_gated_name(node), batch=g.batch)],
                      [node, mul])
    name = _unary_act(g, node)
    if name is None:
        raise _NodeProblem(f"{_describe(node)} is not an activation latbench knows")
    return _Match([OpSpec("act", h=h, w=w, cin=c, act=name, batch=g.batch)], [node])


def _match_elementwise(g: _Graph, node: onnx.NodeProto,
                       attach: Collection[tuple[str, str]]) -> _Match:
    """Add/Sub of two tensors -> add (+ activation); Mul/Div, or any of them with a constant
    operand (a per-channel affine), -> mul. (x * gate(x) was taken by its gate's matcher.)"""
    dynamic = g.dynamic_inputs(node)
    out_shape = g.shape(node.output[0], node)
    h, w, c = _hwc(out_shape)
    if len(dynamic) == 2 and node.op_type in ("Add", "Sub"):
        shapes = {g.shape(i, node) for i in dynamic}
        if len(shapes) > 1:
            logger.debug("%s broadcasts %s, priced as an add of its output shape",
                         _describe(node), shapes)
        nodes = [node]
        act, _ = _attach_act(g, "add", node.output[0], attach, nodes)
        return _Match([OpSpec("add", h=h, w=w, cin=c, act=act, batch=g.batch)], nodes)
    return _Match([OpSpec("mul", h=h, w=w, cin=c, batch=g.batch)], [node])


def _pool_geometry(g: _Graph, node: onnx.NodeProto) -> tuple[int, int, int, int, int, int]:
    attrs = _attrs(node)
    shape = g.shape(node.input[0], node)
    if len(shape) != 4:
        raise _NodeProblem(f"{_describe(node)} is not a 2-D pool (input {shape})")
    if attrs.get("ceil_mode", 0):
        raise _NodeProblem(f"{_describe(node)} uses ceil_mode=1; latbench pools round down")
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise _NodeProblem(f"{_describe(node)} is dilated {attrs['dilations']}")
    _, c, h, w = shape
    kernel = _square(node, "kernel", list(attrs["kernel_shape"]))
    stride = _square(node, "strides", list(attrs.get("strides", [1, 1])))
    pad = _symmetric_pad(node, attrs, h, kernel, stride)
    return h, w, c, kernel, stride, pad


def _match_pool(g: _Graph, node: onnx.NodeProto, attach: Collection[tuple[str, str]]) -> _Match:
    h, w, c, kernel, stride, pad = _pool_geometry(g, node)
    pool = "avg" if node.op_type == "AveragePool" else "max"
    spec = OpSpec("pool", h=h, w=w, cin=c, pool=pool, kernel=kernel, stride=stride, pad=pad,
                  batch=g.batch)
    return _Match([spec], [node])


def _global_pool_input(g: _Graph, node: onnx.NodeProto) -> str | None:
    """The pooled tensor if `node` averages a 4-D tensor over H and W, else None."""
    if node.op_type == "GlobalAveragePool":
        return node.input[0]
    if node.op_type != "ReduceMean":
        return None
    rank = len(g.shape(node.input[0], node))
    axes = _attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = g.const(node.input[1])
        axes = None if value is None else [int(a) for a in np.asarray(value).ravel()]
    if axes is None or rank != 4 or {a % rank for a in axes} != {2, 3}:
        return None
    return node.input[0]


def _match_global_pool(g: _Graph, node: onnx.NodeProto,
                       attach: Collection[tuple[str, str]]) -> _Match:
    x = _global_pool_input(g, node)
    if x is None:
        raise _NodeProblem(f"{_describe(node)} does not average a 4-D tensor over H and W")
    se = _match_se(g, node, x)
    if se is not None:
        return se
    h, w, c = _hwc(g.shape(x, node))
    return _Match([OpSpec("pool", h=h, w=w, cin=c, pool="gavg", batch=g.batch)], [node])


def _match_global_max(g: _Graph, node: onnx.NodeProto,
                      attach: Collection[tuple[str, str]]) -> _Match:
    h, w, c = _hwc(g.shape(node.input[0], node))
    if h != w:
        raise _NodeProblem(f"{_describe(node)} pools a non-square {h}x{w} map")
    spec = OpSpec("pool", h=h, w=w, cin=c, pool="max", kernel=h, stride=1, pad=0, batch=g.batch)
    return _Match([spec], [node])


def _match_se(g: _Graph, pool: onnx.NodeProto, x: str) -> _Match | None:
    """pool(x) -> FC (+act) -> FC -> Sigmoid/HardSigmoid -> Mul with x  ==>  one "se" kernel.

    FC is a 1x1 Conv or a Gemm/MatMul(+bias); Flatten/Reshape/Unsqueeze may sit between."""
    channels = g.shape(x, pool)[1]
    nodes = [pool]
    tensor, skipped = g.skip_pass_through(pool.output[0])
    nodes += skipped
    squeeze = _fc_at(g, tensor)
    if squeeze is None or squeeze[2] != channels:
        return None
    nodes += squeeze[0]
    mid, tensor = squeeze[3], squeeze[1]
    act = _activation_at(g, tensor)
    if act is not None:
        nodes += act.nodes
        tensor = act.output
    tensor, skipped = g.skip_pass_through(tensor)
    nodes += skipped
    excite = _fc_at(g, tensor)
    if excite is None or excite[2] != mid or excite[3] != channels:
        return None
    nodes += excite[0]
    tensor, skipped = g.skip_pass_through(excite[1])
    nodes += skipped
    gate = g.sole_user(tensor)
    if gate is None or gate.op_type not in GATE_OPS or gate.input[0] != tensor:
        return None
    nodes.append(gate)
    tensor, skipped = g.skip_pass_through(gate.output[0])
    nodes += skipped
    mul = g.sole_user(tensor)
    if mul is None or mul.op_type != "Mul" or sorted(mul.input) != sorted([x, tensor]):
        return None
    nodes.append(mul)
    if mid > channels:
        return None
    h, w, c = _hwc(g.shape(x, pool))
    spec = OpSpec("se", h=h, w=w, cin=c, expand=se_ratio(mid, c), act=GATE_OPS[gate.op_type],
                  batch=g.batch)
    return _Match([spec], nodes)


# --- fused blocks ---------------------------------------------------------------------------
# Inside a block every activation and BatchNorm belongs to the block, whatever the attach rules.
_BLOCK_ATTACH = frozenset({(kind, "bn") for kind in ("conv", "dwconv")}
                          | {(kind, act) for kind in ("conv", "dwconv") for act in ACTIVATIONS
                             if act != "none"})
BLOCK_KINDS = ("mbconv",)  # kernel kinds `group` can produce


def _conv_at(g: _Graph, node: onnx.NodeProto | None, tensor: str) -> tuple[OpSpec, _Match] | None:
    """The conv kernel of a Conv node reading `tensor` (BN and activation included), or None."""
    if node is None or node.op_type != "Conv" or node.input[0] != tensor:
        return None
    try:
        match = _match_conv(g, node, _BLOCK_ATTACH)
    except (_NodeProblem, SpecError):
        return None
    return match.specs[0], match


def _block_se(g: _Graph, tensor: str) -> tuple[OpSpec, _Match] | None:
    """The squeeze-excite reading `tensor` (its pool and its final Mul are the two readers)."""
    users = g.users(tensor)
    if len(users) != 2 or tensor in g.outputs:
        return None
    for pool in users:
        try:
            pooled = _global_pool_input(g, pool)
        except _NodeProblem:
            continue
        if pooled == tensor:
            match = _match_se(g, pool, tensor)
            return None if match is None else (match.specs[0], match)
    return None


def _expand_ratio(mid: int, cin: int) -> float:
    """The simplest ratio e with max(1, round(cin * e)) == mid (an mbconv's expansion)."""
    for denominator in range(1, 65):
        numerator = round(mid * denominator / cin)
        if numerator < 1:
            continue
        ratio = float(f"{numerator / denominator:.6g}")
        if max(1, round(cin * ratio)) == mid:
            return ratio
    return float(f"{mid / cin:.6g}")


def _match_mbconv(g: _Graph, node: onnx.NodeProto) -> _Match | None:
    """The inverted residual starting at Conv `node` as one "mbconv" kernel, or None.

    [1x1 expand conv + act] -> kxk depthwise + act (same act) -> [SE] -> 1x1 project conv, no
    act -> [Add of the block input]. The kernel is accepted only when `decompose` of it gives
    exactly the primitives found, so grouping never changes what is priced, only how."""
    x = node.input[0]
    first = _conv_at(g, node, x)
    if first is None:
        return None
    parts, nodes = [first[0]], list(first[1].nodes)
    if first[0].kind == "conv":  # an expand conv; the depthwise conv must follow
        dw = _conv_at(g, g.sole_user(nodes[-1].output[0]), nodes[-1].output[0])
        if dw is None:
            return None
        parts.append(dw[0])
        nodes += dw[1].nodes
    depthwise = parts[-1]
    if depthwise.kind != "dwconv" or depthwise.act != parts[0].act:
        return None
    tensor = nodes[-1].output[0]
    se = _block_se(g, tensor)
    if se is not None:
        parts.append(se[0])
        nodes += se[1].nodes
        tensor = nodes[-1].output[0]
    project = _conv_at(g, g.sole_user(tensor), tensor)
    if project is None:
        return None
    parts.append(project[0])
    nodes += project[1].nodes
    spec0, out = parts[0], project[0]
    tensor = nodes[-1].output[0]
    add = g.sole_user(tensor)
    residual = (add is not None and add.op_type == "Add"
                and sorted(add.input) == sorted([x, tensor])
                and _activation_at(g, add.output[0]) is None)
    mid = depthwise.cin
    try:
        spec = OpSpec("mbconv", h=spec0.h, w=spec0.w, cin=spec0.cin, cout=out.cout,
                      kernel=depthwise.kernel, stride=depthwise.stride,
                      expand=1.0 if spec0.kind == "dwconv" else _expand_ratio(mid, spec0.cin),
                      act=spec0.act, se=se is not None, residual=residual, batch=g.batch)
    except SpecError:
        return None
    if residual:
        parts.append(OpSpec("add", h=out.out_h, w=out.out_w, cin=out.cout, batch=g.batch))
        nodes.append(add)
    if [_part_id(k) for k in decompose(spec)] != [_part_id(k) for k in parts]:
        return None
    return _Match([spec], nodes)


def _part_id(spec: OpSpec) -> tuple:
    """A primitive's identity; an SE by its squeezed channels (several ratios give the same)."""
    if spec.kind == "se":
        return spec.kind, spec.batch, spec.h, spec.w, spec.cin, spec.mid, spec.act
    return (spec.key(),)


def _match_concat(g: _Graph, node: onnx.NodeProto, attach: Collection[tuple[str, str]]) -> _Match:
    shape = g.shape(node.output[0], node)
    axis = int(_attrs(node).get("axis", 0)) % len(shape)
    inputs = [i for i in node.input if i]
    if len(inputs) == 1:
        return _Match([], [node])
    if len(shape) != 4 or axis != 1:
        raise _NodeProblem(f"{_describe(node)} concatenates along axis {axis} of a "
                           f"{len(shape)}-D tensor; latbench concatenates channels")
    _, c, h, w = shape
    return _Match([OpSpec("concat", h=h, w=w, cin=c, groups=len(inputs), batch=g.batch)], [node])


def _no_kernel(g: _Graph, node: onnx.NodeProto, attach: Collection[tuple[str, str]]) -> _Match:
    return _Match([], [node])


Matcher = Callable[[_Graph, onnx.NodeProto, Collection[tuple[str, str]]], _Match]

# Root op type -> matcher. Every op type latbench can price is a key here.
MATCHERS: dict[str, Matcher] = {
    "Conv": _match_conv,
    "Gemm": _match_linear,
    "MatMul": _match_linear,
    "BatchNormalization": _match_batchnorm,
    **{op: _match_activation for op in UNARY_ACT_OPS},
    **{op: _match_elementwise for op in ("Add", "Sub", "Mul", "Div")},
    "AveragePool": _match_pool,
    "MaxPool": _match_pool,
    "GlobalAveragePool": _match_global_pool,
    "ReduceMean": _match_global_pool,
    "GlobalMaxPool": _match_global_max,
    "Concat": _match_concat,
    **{op: _no_kernel for op in PASS_THROUGH_OPS | SHAPE_OPS},
}


Group = bool | Callable[[OpSpec], bool]


@dataclass(frozen=True)
class ModelKernels:
    """A model's kernels in execution order, and what was left out of them (`allow_partial`):
    nodes per op type (`skipped`) and why supported ops were left out (`problems`)."""

    kernels: tuple[OpSpec, ...]
    source: str
    skipped: Mapping[str, int] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        return bool(self.skipped)


def parse_onnx(model: bytes | str | Path | onnx.ModelProto, *,
               attach: Collection[tuple[str, str]] = DEFAULT_ATTACH, group: Group = False,
               input_shapes: ShapeMap | None = None,
               allow_partial: bool = False) -> ModelKernels:
    """The kernels a runtime executes for `model`, in execution order.

    `attach` lists the (producer kind, follower) pairs fused into one kernel (see
    `DEFAULT_ATTACH`). `group` reads fused blocks (BLOCK_KINDS) as one kernel: True for every
    block found, a predicate for the blocks it accepts (the others stay primitives).
    `input_shapes` gives inputs with symbolic dims their shape (name -> dims, with or without
    the batch). Raises UnsupportedModelError naming every op type (and every node used in a
    way) no kernel describes - unless `allow_partial`, which leaves them out and counts them,
    as long as something is left - and ParseError for unreadable input.
    """
    proto, source = load_model(model)
    g = _concrete_graph(proto, source, input_shapes)
    attach = frozenset(attach)
    accept = group if callable(group) else (lambda _spec: bool(group))
    kernels: list[OpSpec] = []
    unsupported: Counter[str] = Counter()
    misused: Counter[str] = Counter()
    problems: list[str] = []
    for node in g.nodes:
        if not g.free(node) or g.is_static(node):
            continue
        standard = node.domain in ("", "ai.onnx")
        block = _match_mbconv(g, node) if group and standard and node.op_type == "Conv" \
            else None
        matcher = MATCHERS.get(node.op_type) if standard else None
        if block is not None and accept(block.specs[0]):
            match = block
        elif matcher is None:
            unsupported[_op_name(node)] += 1
            continue
        else:
            try:
                match = matcher(g, node, attach)
            except _NodeProblem as exc:
                problems.append(str(exc))
                misused[_op_name(node)] += 1
                continue
            except SpecError as exc:
                problems.append(f"{_describe(node)}: {exc}")
                misused[_op_name(node)] += 1
                continue
        g.consumed.update(id(n) for n in match.nodes)
        kernels.extend(match.specs)
    if (unsupported or problems) and (not allow_partial or not kernels):
        message = _unsupported_message(source, unsupported, problems)
        if allow_partial:
            message += "; nothing else is left to predict"
        raise UnsupportedModelError(message)
    return ModelKernels(tuple(kernels), source, dict(sorted((unsupported + misused).items())),
                        tuple(problems))


def onnx_to_kernels(model: bytes | str | Path | onnx.ModelProto, *,
                    attach: Collection[tuple[str, str]] = DEFAULT_ATTACH, group: Group = False,
                    input_shapes: ShapeMap | None = None) -> list[OpSpec]:
    """`parse_onnx` of the whole model (nothing may be left out): its kernels as a list."""
    return list(parse_onnx(model, attach=attach, group=group, input_shapes=input_shapes).kernels)


def _unsupported_message(source: str, unsupported: Counter[str], problems: list[str]) -> str:
    parts = []
    if unsupported:
        listed = ", ".join(f"{op} ({n} node{'s' if n > 1 else ''})"
                           for op, n in sorted(unsupported.items()))
        parts.append(f"unsupported ONNX ops: {listed}; supported: {', '.join(supported_ops())}")
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        parts.append(f"unsupported uses: {shown}{more}")
    return f"{source}: " + ". ".join(parts)


def supported_ops() -> list[str]:
    """ONNX op types the parser maps to kernels (or to no kernel)."""
    return sorted(MATCHERS)
