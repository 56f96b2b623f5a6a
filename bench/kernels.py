"""Split an ONNX graph into latbench kernels (OpSpecs), in execution order.

A whole-network estimate is the sum of per-kernel predictions, so the split must match what a
runtime executes as one kernel: BatchNormalization folds into the Conv before it, activations
fuse into the conv / linear / add that produces their input, and a squeeze-excite block is one
"se" kernel. Which follower attaches to which producer is data (`DEFAULT_ATTACH`), so rules
measured on a device can replace the default set.

The matchers read the dialects of torch's two ONNX exporters (TorchScript and dynamo), with or
without BatchNorm folded by the exporter, and latbench's own `bench.export.to_onnx`: CNN kernels
here, transformer kernels and the rest of the common op set in `bench.onnx_patterns` (token-wise
linear layers, attention matmuls, softmax, layer norm, transposes, class token, position
embedding, GELU in any form, resize, pad, slices, ...). Layout-only ops (Reshape, Flatten,
Squeeze, Unsqueeze, Identity, transposes of size-1 axes, the Shape/Gather/Concat chains that
compute shapes from constants) are no kernel: `benchmarks/layout_ops.py` measures what a
standalone reshape adds (its figures are in BENCHMARKS.md).

Fused blocks: asked to (`group`), the parser also reads an inverted residual - [1x1 expand conv
+ act] -> kxk depthwise + act -> [squeeze-excite] -> 1x1 project conv -> [residual add] - as the
one "mbconv" kernel latbench's spaces describe it with (exactly the inverse of
`bench.ops.decompose`), so a space's architecture and its ONNX export give the same kernels.
Without `group` the split stays the primitives a runtime executes one by one, which is what a
predictor trained without mbconv kernels can price.

Precision: every kernel carries the dtype its root node computes in. A quantized model (QDQ,
QOperator, dynamic quantization) is read as the float graph it computes (`bench.onnx_quant`):
its int8 nodes give int8 kernels of the same kinds, QuantizeLinear / DequantizeLinear / Cast glue
is no kernel; a float16 model gives float16 kernels (its edge Casts are no kernel either).

Input shapes: a symbolic batch (axis 0) is read as 1; any other symbolic input dimension must be
given (`input_shapes`), since every kernel's cost depends on it. With `allow_partial`, ops no
kernel describes are left out and counted instead of refused.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from latbench.bench.kernel_forms import expand_ratio, part_id, se_ratio
from latbench.bench.onnx_graph import (
    MIN_OPSET,
    PASS_THROUGH_OPS,
    SHAPE_OPS,
    NodeProblem,
    NotAKernel,
    OnnxGraph,
    ShapeMap,
    attrs,
    concrete_graph,
    describe,
    load_model,
    op_name,
)
from latbench.bench.onnx_patterns import (
    GATE_OPS,
    PATTERN_ONLY_OPS,
    UNARY_ACT_OPS,
    Attach,
    Match,
    act_fields,
    activation_at,
    attach_act,
    bias_add,
    dims,
    fc_features,
    match_decomposed_layernorm,
    match_reduce,
    pad_into_conv,
)
from latbench.bench.onnx_patterns import (
    MATCHERS as PATTERN_MATCHERS,
)
from latbench.bench.onnx_quant import QUANTIZED_OPS
from latbench.bench.ops import ACTIVATIONS, ALL_ACTIVATIONS, CONV_SHARED_S8, OpSpec, decompose
from latbench.errors import SpecError, UnsupportedModelError

__all__ = ["BLOCK_KINDS", "DEFAULT_ATTACH", "GATE_OPS", "MATCHERS", "MIN_OPSET",
           "PASS_THROUGH_OPS", "SHAPE_OPS", "UNARY_ACT_OPS", "Group", "ModelKernels",
           "ShapeMap", "expand_ratio", "load_model", "onnx_to_kernels", "parse_onnx",
           "part_id", "se_ratio", "supported_ops"]

logger = logging.getLogger(__name__)

# (producer kind, follower) pairs that run as one kernel. A follower is an activation name or
# "bn" (BatchNormalization folded into the conv before it). Anything not listed becomes a kernel
# of its own: an "act" kernel for an activation, a "mul" kernel (per-channel affine) for a BN.
# Token-wise linear layers carry any activation (GELU after a transformer's first MLP layer).
DEFAULT_ATTACH: frozenset[tuple[str, str]] = frozenset(
    {(producer, "bn") for producer in ("conv", "dwconv")}
    | {(producer, act) for producer in ("conv", "dwconv", "linear", "add", "convt")
       for act in ACTIVATIONS if act != "none"}
    | {("tlinear", act) for act in ALL_ACTIVATIONS if act != "none"}
)
_expand_ratio = expand_ratio  # the name the tests and older callers use
_part_id = part_id


# --- small helpers --------------------------------------------------------------------------
def _hwc(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(H, W, C) of an NCHW tensor (NC: H = W = 1)."""
    if len(shape) == 4:
        return shape[2], shape[3], shape[1]
    if len(shape) == 2:
        return 1, 1, shape[1]
    raise NodeProblem(f"tensor of rank {len(shape)} has no channel layout latbench knows")


def _square(node: onnx.NodeProto, name: str, values: list[int]) -> int:
    if len(values) != 2 or values[0] != values[1]:
        raise NodeProblem(f"{describe(node)} has non-square {name} {values}")
    return int(values[0])


def _pads(node: onnx.NodeProto, a: dict, sizes: tuple[int, int], kernels: tuple[int, int],
          strides: tuple[int, int], dilation: int = 1) -> tuple[int, int]:
    """Padding of H and W, each the same on both sides, or a problem naming the node."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return 0, 0
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, kernel, stride in zip(sizes, kernels, strides, strict=True):
            reach = dilation * (kernel - 1) + 1
            total = max((math.ceil(size / stride) - 1) * stride + reach - size, 0)
            if total % 2:
                raise NodeProblem(f"{describe(node)} pads asymmetrically ({auto}, total {total})")
            pads.append(total // 2)
        return pads[0], pads[1]
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise NodeProblem(f"{describe(node)} has asymmetric pads {pads}; latbench kernels pad "
                          "both sides of an axis equally")
    return int(pads[0]), int(pads[1])


# --- matchers: each reads one root node and returns its kernels and the nodes they cover ------
def _match_conv(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """Conv: square or not (1xk, kx1), dilated, grouped or depthwise; a 1-D conv is a 2-D one
    on an L x 1 map. BatchNorm and the activation after it attach by the rules."""
    a = attrs(node)
    x_shape = g.shape(node.input[0], node)
    w_shape = g.shape(node.input[1], node)
    padder = g.producer.get(node.input[0])
    if padder is not None and (padded := pad_into_conv(g, padder)) is not None:
        x_shape = g.shape(padder.input[0], node)  # the zero pad before it is its padding
        a = {**a, "pads": list(padded)}
    if len(x_shape) == 3 and len(w_shape) == 3:  # 1-D: [N, C, L] as [N, C, L, 1]
        x_shape, w_shape = (*x_shape, 1), (*w_shape, 1)
        a = {**a, **{k: [*a[k], 1] for k in ("kernel_shape", "strides", "dilations")
                     if k in a}}
        if "pads" in a:
            a["pads"] = [a["pads"][0], 0, a["pads"][1], 0]
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise NodeProblem(f"{describe(node)} is not a 2-D convolution (input {x_shape})")
    n, cin, h, w = x_shape
    cout, groups = w_shape[0], int(a.get("group", 1))
    kernel = list(a.get("kernel_shape", w_shape[2:]))
    strides = list(a.get("strides", [1, 1]))
    dilations = list(a.get("dilations", [1, 1]))
    if strides[1] != strides[0] and w > 1:
        raise NodeProblem(f"{describe(node)} has non-square strides {strides}")
    if dilations[1] != dilations[0] and kernel[1] > 1:
        raise NodeProblem(f"{describe(node)} has non-square dilations {dilations}")
    ph, pw = _pads(node, a, (h, w), (kernel[0], kernel[1]), (strides[0], strides[0]),
                   dilations[0])
    kind = "dwconv" if groups == cin == cout else "conv"
    nodes = [node]
    out = node.output[0]
    bn = g.sole_user(out)
    if bn is not None and bn.op_type == "BatchNormalization" and (kind, "bn") in attach:
        nodes.append(bn)
        out = bn.output[0]
    act, out = attach_act(g, kind, out, attach, nodes)
    spec = OpSpec(kind, h=h, w=w, cin=cin, cout=cout, kernel=kernel[0], kernel_w=kernel[1],
                  stride=strides[0], pad=ph, pad_w=pw, dilation=dilations[0], groups=groups,
                  batch=g.batch, **act_fields(act))
    expected = g.shapes.get(node.output[0])
    if expected is not None and len(expected) == 3:
        expected = (*expected, 1)
    if expected is not None and tuple(expected[1:]) != spec.output_shape[1:]:
        raise NodeProblem(f"{describe(node)} gives {expected}, its kernel {spec.key()} "
                          f"would give {spec.output_shape}")
    return Match([spec], nodes)


def _fc_at(g: OnnxGraph, tensor: str) -> tuple[list[onnx.NodeProto], str, int, int] | None:
    """A fully connected layer reading `tensor` alone: 1x1 Conv, Gemm or MatMul (+ bias Add).

    Returns (nodes, output tensor, in features, out features)."""
    node = g.sole_user(tensor)
    if node is None or node.input[0] != tensor:
        return None
    if node.op_type == "Conv":
        w_shape = g.shapes.get(node.input[1], ())
        if len(w_shape) != 4 or w_shape[2:] != (1, 1) or attrs(node).get("group", 1) != 1:
            return None
        return [node], node.output[0], w_shape[1], w_shape[0]
    if node.op_type in ("Gemm", "MatMul") and node.input[1] in g.static:
        cin, cout = fc_features(g, node)
        nodes, out = [node], node.output[0]
        if node.op_type == "MatMul":
            out = bias_add(g, out, nodes, cout)
        return nodes, out, cin, cout
    return None


def _match_batchnorm(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    return Match([OpSpec("mul", **dims(g, node.input[0], node))], [node])


def _pool_geometry(g: OnnxGraph, node: onnx.NodeProto) -> tuple[int, int, int, int, int, int]:
    a = attrs(node)
    shape = g.shape(node.input[0], node)
    if len(shape) != 4:
        raise NodeProblem(f"{describe(node)} is not a 2-D pool (input {shape})")
    if a.get("ceil_mode", 0):
        raise NodeProblem(f"{describe(node)} uses ceil_mode=1; latbench pools round down")
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        raise NodeProblem(f"{describe(node)} is dilated {a['dilations']}")
    _, c, h, w = shape
    kernel = _square(node, "kernel", list(a["kernel_shape"]))
    stride = _square(node, "strides", list(a.get("strides", [1, 1])))
    ph, pw = _pads(node, a, (h, w), (kernel, kernel), (stride, stride))
    if ph != pw:
        raise NodeProblem(f"{describe(node)} has asymmetric pads {[ph, pw, ph, pw]}; "
                          "latbench pools pad all sides equally")
    return h, w, c, kernel, stride, ph


def _match_pool(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    h, w, c, kernel, stride, pad = _pool_geometry(g, node)
    pool = "avg" if node.op_type == "AveragePool" else "max"
    spec = OpSpec("pool", h=h, w=w, cin=c, pool=pool, kernel=kernel, stride=stride, pad=pad,
                  batch=g.batch)
    return Match([spec], [node])


def _global_pool_input(g: OnnxGraph, node: onnx.NodeProto) -> str | None:
    """The pooled tensor if `node` averages a 4-D tensor over H and W, else None."""
    if node.op_type == "GlobalAveragePool":
        return node.input[0]
    if node.op_type != "ReduceMean":
        return None
    rank = len(g.shape(node.input[0], node))
    a = attrs(node)
    axes = a.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = g.const_ints(node.input[1])
    if axes is None or rank != 4 or {int(x) % rank for x in axes} != {2, 3}:
        return None
    return node.input[0]


def _match_reduce_mean(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    """ReduceMean: the first node of a written-out layer norm, a global average pool (or the
    squeeze of a squeeze-excite), else a "reduce" kernel."""
    layernorm = match_decomposed_layernorm(g, node)
    if layernorm is not None:
        return layernorm
    if _global_pool_input(g, node) is not None:
        return _match_global_pool(g, node, attach)
    return match_reduce(g, node, attach)


def _match_global_pool(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    x = _global_pool_input(g, node)
    if x is None:
        raise NodeProblem(f"{describe(node)} does not average a 4-D tensor over H and W")
    se = _match_se(g, node, x)
    if se is not None:
        return se
    h, w, c = _hwc(g.shape(x, node))
    return Match([OpSpec("pool", h=h, w=w, cin=c, pool="gavg", batch=g.batch)], [node])


def _match_global_max(g: OnnxGraph, node: onnx.NodeProto, attach: Attach) -> Match:
    h, w, c = _hwc(g.shape(node.input[0], node))
    if h != w:
        raise NodeProblem(f"{describe(node)} pools a non-square {h}x{w} map")
    spec = OpSpec("pool", h=h, w=w, cin=c, pool="max", kernel=h, stride=1, pad=0, batch=g.batch)
    return Match([spec], [node])


def _match_se(g: OnnxGraph, pool: onnx.NodeProto, x: str) -> Match | None:
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
    act = activation_at(g, tensor)
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
    return Match([spec], nodes)


# --- fused blocks ---------------------------------------------------------------------------
# Inside a block every activation and BatchNorm belongs to the block, whatever the attach rules.
_BLOCK_ATTACH = frozenset({(kind, "bn") for kind in ("conv", "dwconv")}
                          | {(kind, act) for kind in ("conv", "dwconv") for act in ACTIVATIONS
                             if act != "none"})
BLOCK_KINDS = ("mbconv",)  # kernel kinds `group` can produce


def _conv_at(g: OnnxGraph, node: onnx.NodeProto | None,
             tensor: str) -> tuple[OpSpec, Match] | None:
    """The conv kernel of a Conv node reading `tensor` (BN and activation included), or None."""
    if node is None or node.op_type != "Conv" or node.input[0] != tensor:
        return None
    try:
        match = _match_conv(g, node, _BLOCK_ATTACH)
    except (NodeProblem, SpecError):
        return None
    return match.specs[0], match


def _block_se(g: OnnxGraph, tensor: str) -> tuple[OpSpec, Match] | None:
    """The squeeze-excite reading `tensor` (its pool and its final Mul are the two readers)."""
    users = g.users(tensor)
    if len(users) != 2 or tensor in g.outputs:
        return None
    for pool in users:
        try:
            pooled = _global_pool_input(g, pool)
        except NodeProblem:
            continue
        if pooled == tensor:
            match = _match_se(g, pool, tensor)
            return None if match is None else (match.specs[0], match)
    return None


def _match_mbconv(g: OnnxGraph, node: onnx.NodeProto) -> Match | None:
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
                and activation_at(g, add.output[0]) is None)
    mid = depthwise.cin
    try:
        spec = OpSpec("mbconv", h=spec0.h, w=spec0.w, cin=spec0.cin, cout=out.cout,
                      kernel=depthwise.kernel, stride=depthwise.stride,
                      expand=1.0 if spec0.kind == "dwconv" else expand_ratio(mid, spec0.cin),
                      act=spec0.act, se=se is not None, residual=residual, batch=g.batch)
    except SpecError:
        return None
    if residual:
        parts.append(OpSpec("add", h=out.out_h, w=out.out_w, cin=out.cout, batch=g.batch))
        nodes.append(add)
    if [part_id(k) for k in decompose(spec)] != [part_id(k) for k in parts]:
        return None
    return Match([spec], nodes)


Matcher = Callable[[OnnxGraph, onnx.NodeProto, Attach], Match]

# Root op type -> matcher. Every op type latbench can price is a key here.
MATCHERS: dict[str, Matcher] = {
    **PATTERN_MATCHERS,
    "Conv": _match_conv,
    "BatchNormalization": _match_batchnorm,
    "AveragePool": _match_pool,
    "MaxPool": _match_pool,
    "GlobalAveragePool": _match_global_pool,
    "ReduceMean": _match_reduce_mean,
    "GlobalMaxPool": _match_global_max,
    **{op: (lambda g, node, attach: Match([], [node])) for op in SHAPE_OPS},
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
    g = concrete_graph(proto, source, input_shapes, as_float=True)
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
            unsupported[op_name(node)] += 1
            continue
        else:
            try:
                match = matcher(g, node, attach)
            except NotAKernel:
                unsupported[op_name(node)] += 1
                continue
            except NodeProblem as exc:
                problems.append(str(exc))
                misused[op_name(node)] += 1
                continue
            except SpecError as exc:
                problems.append(f"{describe(node)}: {exc}")
                misused[op_name(node)] += 1
                continue
        g.consumed.update(id(n) for n in match.nodes)
        dtype = g.precision(node)
        specs = [s if s.dtype == dtype else s.with_(dtype=dtype) for s in match.specs]
        if node.output and node.output[0] in g.shared_s8:
            specs = [s.with_(mode=CONV_SHARED_S8) if s.kind == "conv" and s.dtype == "int8"
                     else s for s in specs]
        kernels.extend(specs)
    skipped = unsupported + misused
    if skipped and (not allow_partial or not kernels):
        message = _unsupported_message(source, skipped, problems)
        if allow_partial:
            message += "; nothing else is left to predict"
        raise UnsupportedModelError(message)
    return ModelKernels(tuple(kernels), source, dict(sorted(skipped.items())), tuple(problems))


def onnx_to_kernels(model: bytes | str | Path | onnx.ModelProto, *,
                    attach: Collection[tuple[str, str]] = DEFAULT_ATTACH, group: Group = False,
                    input_shapes: ShapeMap | None = None) -> list[OpSpec]:
    """`parse_onnx` of the whole model (nothing may be left out): its kernels as a list."""
    return list(parse_onnx(model, attach=attach, group=group, input_shapes=input_shapes).kernels)


def _unsupported_message(source: str, skipped: Counter[str], problems: list[str]) -> str:
    """One line: every op type left out with its node count (op types no kernel describes,
    and supported ops used in a way none does, explained), then the supported op types."""
    listed = ", ".join(f"{op} ({n} node{'s' if n > 1 else ''})"
                       for op, n in sorted(skipped.items()))
    message = f"{source}: unsupported ONNX ops: {listed}"
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        message += f" (unsupported uses: {shown}{more})"
    return f"{message}; supported: {', '.join(supported_ops())}"


def supported_ops() -> list[str]:
    """ONNX op types the parser maps to kernels (or to no kernel); quantized ops are read as
    the float ops they compute (`bench.onnx_quant`)."""
    return sorted(set(MATCHERS) - PATTERN_ONLY_OPS | QUANTIZED_OPS)
