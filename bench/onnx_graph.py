"""An ONNX model read for the kernel split: loaded and checked, given concrete input shapes, its
constant subgraphs folded, every tensor's shape inferred, indexed by producer and consumer, and
each 4-D tensor's layout (an NCHW image or a plain tensor) known.

Exporters compute shapes and constants with small subgraphs (Shape -> Gather -> Concat ->
Reshape, ConstantOfShape -> Equal -> Where -> Expand, Cast and Sqrt of a shape). Once the inputs'
shapes are fixed these are constants: they are evaluated (onnx's reference evaluator) and written
as initializers before shape inference runs again, so every tensor the split reads has a concrete
shape and every constant operand a value, whichever exporter wrote the graph.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from latbench.errors import ConfigError, ParseError, UnsupportedModelError

logger = logging.getLogger(__name__)

# Opset 7 brought numpy-style broadcasting to Add/Mul/...; older models broadcast by attribute,
# which the shape inference (and so every kernel shape) would misread.
MIN_OPSET = 7
ShapeMap = Mapping[str, Sequence[int]]
# Nodes that only move or relabel data: no kernel of their own.
PASS_THROUGH_OPS = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity",
                              "Dropout"})
# Nodes that (with fixed input shapes) only compute shapes or constants.
SHAPE_OPS = frozenset({"Constant", "Shape", "Size", "EyeLike"})
# Inputs read only for their type (CastLike's second): they do not make the output computed.
TYPE_ONLY_INPUTS = {"CastLike": 1}
# Constant subgraphs are not evaluated through these (random, or with subgraphs of their own).
_UNFOLDED = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                       "Multinomial", "Bernoulli", "If", "Loop", "Scan"})
_FOLD_ROUNDS = 4
# Producers whose 4-D output is an NCHW image, and those whose output is a plain tensor; every
# other op passes on the layout of its first computed input (see `OnnxGraph.is_image`).
_IMAGE_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool",
                        "GlobalMaxPool", "BatchNormalization", "InstanceNormalization", "Resize",
                        "Upsample", "Pad", "DepthToSpace", "SpaceToDepth", "LRN"})
_PLAIN_OPS = frozenset({"MatMul", "Gemm", "Softmax", "LayerNormalization", "Gather", "Einsum"})


class NodeProblem(Exception):
    """A supported op used in a way no kernel describes (asymmetric pads, a strided slice...)."""


class NotAKernel(Exception):
    """A node of an op type no kernel describes, outside every pattern that covers it."""


def describe(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def op_name(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def text_attr(node: onnx.NodeProto, name: str, default: str) -> str:
    value = attrs(node).get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(attr))
    return None


@dataclass
class OnnxGraph:
    """An ONNX graph with concrete shapes, producer/consumer maps and constant tensors."""

    nodes: list[onnx.NodeProto]
    shapes: dict[str, tuple[int, ...]]
    outputs: frozenset[str]
    batch: int
    initializers: dict[str, onnx.TensorProto]
    opset: int = 17
    types: dict[str, int] = field(default_factory=dict)  # element type (onnx enum) per tensor
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    static: set[str] = field(default_factory=set)
    consumed: set[int] = field(default_factory=set)
    order: dict[int, int] = field(default_factory=dict)
    # A quantized model read as floats (`bench.onnx_quant`): first outputs of the nodes that
    # compute in int8, tensors the runtime keeps in 8 bits, and int8 outputs clamped at 0 by
    # their quantized range, and outputs of nodes reading a shared signed int8 activation.
    int8: frozenset[str] = frozenset()
    stored_int8: frozenset[str] = frozenset()
    clamps: dict[str, str] = field(default_factory=dict)
    shared_s8: frozenset[str] = frozenset()
    _images: dict[str, bool] = field(default_factory=dict, init=False, repr=False)
    _values: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.static |= set(self.initializers)
        for index, node in enumerate(self.nodes):
            self.order[id(node)] = index
            for out in node.output:
                self.producer[out] = node
            ins = [i for i in node.input[:TYPE_ONLY_INPUTS.get(node.op_type)] if i]
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

    def itemsize(self, tensor: str) -> int:
        """Bytes per element of a tensor as the runtime holds it (a quantized one: 1; an
        unknown type: 4)."""
        if tensor in self.stored_int8:
            return 1
        elem = self.types.get(tensor)
        try:
            return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).itemsize) \
                if elem else 4
        except (KeyError, TypeError, ValueError):
            return 4

    def precision(self, node: onnx.NodeProto) -> str:
        """The OpSpec dtype `node` computes in: int8 (quantized), float16 (its output is), or
        float32."""
        out = node.output[0] if node.output else ""
        if out in self.int8:
            return "int8"
        return "float16" if self.types.get(out) == onnx.TensorProto.FLOAT16 else "float32"

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
            raise NodeProblem(f"shape of tensor {tensor!r} (read by {describe(node)}) is "
                              "unknown after shape inference")
        return self.shapes[tensor]

    def const(self, tensor: str) -> np.ndarray | None:
        """Value of a constant tensor (initializer, Constant, or a cast/reshape of one)."""
        if not tensor:
            return None
        if tensor in self._values:
            return self._values[tensor]
        value: np.ndarray | None = None
        if tensor in self.initializers:
            value = numpy_helper.to_array(self.initializers[tensor])
        elif (node := self.producer.get(tensor)) is not None:
            if node.op_type == "Constant":
                value = constant_value(node)
            elif node.op_type in ("Identity", "Cast", "CastLike", "Reshape", "Squeeze",
                                  "Unsqueeze"):
                value = self.const(node.input[0])
                value = None if value is None else value.ravel() if value.ndim else value
        if value is not None:
            self._values[tensor] = value
        return value

    def const_ints(self, tensor: str) -> list[int] | None:
        value = self.const(tensor)
        return None if value is None else [int(v) for v in np.asarray(value).ravel()]

    def scalar(self, tensor: str) -> float | None:
        """The value of a constant holding one number, else None."""
        value = self.const(tensor)
        if value is None or value.size != 1:
            return None
        return float(np.asarray(value).ravel()[0])

    # --- layout ---------------------------------------------------------------------------
    def is_image(self, tensor: str) -> bool:
        """Whether a 4-D tensor is an NCHW image (from convolutions, pools, the input) rather
        than a plain tensor (attention scores, a channels-last map, heads split off tokens)."""
        if tensor in self._images:
            return self._images[tensor]
        node = self.producer.get(tensor)
        if len(self.shapes.get(tensor, ())) != 4:
            image = False
        elif node is None or node.op_type in _IMAGE_OPS:
            image = True
        elif node.op_type in _PLAIN_OPS:
            image = False
        elif node.op_type == "Transpose":
            image = list(attrs(node).get("perm", ())) == [0, 3, 1, 2]
        elif node.op_type in PASS_THROUGH_OPS:  # an image only if it was one before
            source = self._reshaped_from(tensor)
            image = len(self.shapes.get(source, ())) == 4 and self.is_image(source)
        else:
            sources = [i for i in self.dynamic_inputs(node) if len(self.shapes.get(i, ())) == 4]
            image = not sources or self.is_image(sources[0])
        self._images[tensor] = image
        return image

    def _reshaped_from(self, tensor: str, steps: int = 6) -> str:
        """The tensor a reshape reads, or - when a chain of reshapes and transposes comes back
        to the shape of the tensor it started from (a channel shuffle) - that tensor."""
        source = self.producer[tensor].input[0]
        origin = source
        other_rank = len(self.shapes.get(source, ())) != 4
        for _ in range(steps):
            node = self.producer.get(origin)
            if node is None or node.op_type not in PASS_THROUGH_OPS | {"Transpose"}:
                break
            origin = node.input[0]
            if other_rank and self.shapes.get(origin) == self.shapes.get(tensor):
                return origin
            other_rank = other_rank or len(self.shapes.get(origin, ())) != 4
        return source


# --- loading --------------------------------------------------------------------------------
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


def default_opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                onnx.defs.onnx_opset_version())


def concrete_graph(proto: onnx.ModelProto, source: str,
                   input_shapes: ShapeMap | None = None, as_float: bool = False) -> OnnxGraph:
    """Give the inputs concrete shapes (see `_fix_inputs`), fold constant subgraphs, infer every
    shape, index the graph. `as_float` reads a quantized model as the float graph it computes
    (`bench.onnx_quant`), its int8 nodes named."""
    from latbench.bench.onnx_quant import float_view

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    view = float_view(model) if as_float else None
    if view is not None:
        model = view.model
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    real_inputs = [v for v in graph.input if v.name not in init_names]
    if not real_inputs:
        raise ParseError(f"{source} has no graph input")
    _fix_inputs(real_inputs, dict(input_shapes or {}), source)
    first_input = real_inputs[0].name
    model = _fold_constants(model, source)
    graph = model.graph
    shapes = _shapes(graph)
    first = shapes.get(first_input, ())
    batch = first[0] if first else 1
    return OnnxGraph(nodes=list(graph.node), shapes=shapes,
                     outputs=frozenset(v.name for v in graph.output), batch=batch,
                     initializers={t.name: t for t in graph.initializer},
                     opset=default_opset(model), types=_elem_types(graph),
                     int8=view.int8 if view else frozenset(),
                     stored_int8=view.stored if view else frozenset(),
                     clamps=dict(view.clamps) if view else {},
                     shared_s8=view.shared_s8 if view else frozenset())


def _shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
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
    return shapes


def _infer(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
        raise ParseError(f"shape inference failed on {source}: {exc}") from exc


def _fold_constants(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """Shape inference, then constant subgraphs replaced by their values, until none is left."""
    for _ in range(_FOLD_ROUNDS):
        model = _infer(model, source)
        folded = _static_values(model)
        if not folded:
            return model
        model = _without(model, folded)
    return _infer(model, source)


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*graph.input, *graph.value_info, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _static_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values of every node output computed from constants and shapes alone."""
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    shapes = _shapes(graph)
    types = _elem_types(graph)
    inits = {t.name: t for t in graph.initializer}
    opsets = {o.domain or "": o.version for o in model.opset_import}
    values: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        if name not in values:
            values[name] = numpy_helper.to_array(inits[name])
        return values[name]

    folded: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type in _UNFOLDED or node.domain not in ("", "ai.onnx"):
            continue
        outs: list[np.ndarray] | None = None
        if node.op_type == "Constant":
            const = constant_value(node)
            outs = None if const is None else [const]
        elif node.op_type in ("Shape", "Size"):
            shape = shapes.get(node.input[0])
            if shape is None:
                continue
            if node.op_type == "Size":
                outs = [np.array(int(np.prod(shape, dtype=np.int64)), np.int64)]
            else:
                a = attrs(node)
                outs = [np.array(shape[a.get("start", 0):a.get("end", len(shape))], np.int64)]
        else:
            typed = TYPE_ONLY_INPUTS.get(node.op_type)
            ins = [i for i in node.input if i]
            if not ins or not all(i in inits or i in folded for i in node.input[:typed] if i):
                continue
            feeds = {}
            for i in ins:
                if i in inits or i in folded:
                    feeds[i] = folded[i] if i in folded else value(i)
                elif i in types:  # read for its type only
                    feeds[i] = np.zeros(0, onnx.helper.tensor_dtype_to_np_dtype(types[i]))
                else:
                    break
            else:
                try:
                    outs = list(ReferenceEvaluator(node, opsets=opsets).run(None, feeds))
                except Exception as exc:  # the evaluator raises many types; leave it unfolded
                    logger.debug("not folded: %s (%s)", describe(node), exc)
                    continue
        if outs is None:
            continue
        for name, out in zip(node.output, outs, strict=False):
            if name:
                folded[name] = np.asarray(out)
    return folded


def _without(model: onnx.ModelProto, folded: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` with the nodes whose outputs are all folded removed and the folded values that
    are still read written as initializers."""
    graph = model.graph
    kept = [n for n in graph.node if not all(o in folded for o in n.output if o)]
    needed = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    new = onnx.ModelProto()
    new.CopyFrom(model)
    del new.graph.node[:]
    new.graph.node.extend(kept)
    del new.graph.value_info[:]
    for name, value in folded.items():
        if name in needed:
            new.graph.initializer.append(numpy_helper.from_array(value, name))
    return new


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
        text = dims_text(dims) if has_shape else "unknown rank"
        if value.name in given:
            new = [int(d) for d in given[value.name]]
            if any(d < 1 for d in new):
                problems.append(f"the shape given for input {value.name!r} "
                                f"({dims_text(new)}) has a dim below 1")
                continue
            if has_shape and len(new) == len(dims) - 1:  # given without the batch dimension
                new = [dims[0] if isinstance(dims[0], int) else 1, *new]
            if has_shape and len(new) != len(dims):
                problems.append(f"input {value.name!r} has {len(dims)} dims ({text}), the shape "
                                f"given for it {dims_text(new)}")
                continue
            clash = [i for i, d in enumerate(dims) if isinstance(d, int) and d != new[i]]
            if clash:
                problems.append(f"input {value.name!r} is fixed at {text}, the shape given for it "
                                f"is {dims_text(new)} (axis {clash[0]} differs)")
                continue
        elif not has_shape or any(isinstance(d, str) for d in dims[1:]):
            symbolic = [(i, d) for i, d in enumerate(dims) if isinstance(d, str) and i > 0]
            what = ("symbolic dims " + ", ".join(f"{d} (axis {i})" for i, d in symbolic)
                    + f" (shape {text})") if has_shape else "no shape"
            template = dims_text([f"<{d}>" if isinstance(d, str) and i > 0 else
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


def dims_text(dims: Sequence[int | str]) -> str:
    return "x".join(str(d) for d in dims)
