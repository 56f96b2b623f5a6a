"""Quantized ONNX models read as the float graph they approximate, with the nodes that compute
on quantized data named, so the kernel split reads them with its float matchers and gives
their kernels dtype "int8".

Three forms, as `onnxruntime.quantization` and other tools write them:

- QDQ: QuantizeLinear -> DequantizeLinear pairs around float ops. A pair on computed data is
  dropped (its consumers read the float tensor); a DequantizeLinear (or QuantizeLinear) of a
  constant is evaluated into a float initializer (the weights). A float op reading a
  dequantized tensor, or whose every reader quantizes its output, computes in int8 (ONNX Runtime
  fuses DQ -> op -> Q into QLinearConv, QLinearMatMul, QLinearAdd... or runs it between the
  two).
- QOperator: QLinearConv, QLinearMatMul, MatMulInteger/ConvInteger and the com.microsoft
  QLinearAdd, QLinearMul, QGemm, QLinearGlobalAveragePool, QLinearAveragePool, QLinearSigmoid,
  QLinearLeakyRelu, QLinearSoftmax, QLinearConcat, QLinearReduceMean, QLinearConvTranspose
  become their float op (weights dequantized); ops reading quantized tensors directly (MaxPool,
  Reshape, Transpose on uint8) compute in int8 too.
- Dynamic: DynamicQuantizeLinear -> ConvInteger / MatMulInteger -> Cast -> Mul by the product
  of the scales becomes the float Conv / MatMul; the scale arithmetic is dropped, and a
  per-channel bias Add after an integer Conv becomes its bias. The ops between (Add, Relu,
  pools) stay float, as they run.

QuantizeLinear / DequantizeLinear / Cast glue is no kernel: inside a network it is fused away
or sits at the model's edges (one pass over the input and the output); a single-kernel model
measured in int8 carries it in its time, as a user's quantized model does.

Quantizers drop a Relu or Clip(0, 6) after a quantized op into the op's output range (and ONNX
Runtime removes one before a QuantizeLinear whose range starts at 0), so an int8 output whose
zero point is the type's minimum is clamped at 0: `clamps` names it "relu" ("relu6" when the
range ends at 6, within one step), and the split attaches that activation where the rules
allow, as it does the node it replaced. A Clip(0, 6) whose calibration never reached 6 reads as
relu; the two are the same int8 kernel (the clamp is the requantization).

A signed int8 activation that several nodes read (a residual block's input, read by its first
conv and by the Add or the shortcut) is named in `shared_s8` through the outputs of the QDQ
nodes reading or writing it: ONNX Runtime on x86 turns int8 activations into uint8 (the form
its QLinear kernels take there) only for a quantized tensor with a single reader, and runs the
QDQ nodes on either side of any other in float - a conv several times slower than its
QLinearConv, with its weights dequantized at every call. The split marks such a conv
(`ops.CONV_SHARED_S8`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GLUE_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# Element types of quantized tensors.
QUANT_TYPES = frozenset({TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16,
                         TensorProto.UINT16, TensorProto.INT4, TensorProto.UINT4})
_RELU6 = 6.0
_RESHAPES = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten"})


@dataclass(frozen=True)
class FloatView:
    """A quantized model rewritten into float ops (module docstring): `int8` holds the first
    output of every node that computes on quantized data, `stored` the tensors the runtime
    keeps in 8 bits (quantized activations, int8 weights; not the int32 biases nor the float
    results of dynamic quantization), `clamps` the int8 outputs whose quantized range starts
    at 0 (tensor -> "relu" or "relu6"), `shared_s8` the outputs of QDQ nodes reading a signed
    int8 activation that other nodes read too (module docstring)."""

    model: onnx.ModelProto
    int8: frozenset[str] = frozenset()
    stored: frozenset[str] = frozenset()
    clamps: dict[str, str] = field(default_factory=dict)
    shared_s8: frozenset[str] = frozenset()


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether any node quantizes, dequantizes or computes on integers (module docstring)."""
    return any(node.op_type in GLUE_OPS or _rewrite_for(node) is not None
               for node in model.graph.node)


# --- the rewrite ------------------------------------------------------------------------------
class _Rewrite:
    """State of one pass over the nodes, in order."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          onnx.defs.onnx_opset_version())
        self.values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t)
                                              for t in graph.initializer}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in dict.fromkeys(i for i in node.input if i):
                self.readers.setdefault(name, []).append(node)
        self.outputs = {v.name for v in graph.output}
        self.producer = {out: node for node in graph.node for out in node.output}
        # Constants, and what nodes compute from constants alone (a quantized constant...).
        self.static = set(self.values) | {o for node in graph.node
                                          if node.op_type == "Constant" for o in node.output}
        self.alias: dict[str, str] = {}
        self.quantized = {v.name for v in graph.input if v.type.tensor_type.elem_type
                          in QUANT_TYPES}
        self.dequantized: set[str] = set()  # float tensors made by a DequantizeLinear of data
        self.integer: set[str] = set()  # int32 results of ConvInteger / MatMulInteger
        self.scales: set[str] = set()  # scale arithmetic of dynamic quantization
        self.integer_convs: dict[str, onnx.NodeProto] = {}  # output -> Conv without a bias
        self.int8: set[str] = set()
        self.stored: set[str] = set()
        self.clamps: dict[str, str] = {}
        self.shared_in: set[str] = set()  # DequantizeLinear outputs of shared int8 tensors
        self.shared_s8: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def value(self, name: str, any_shape: bool = False) -> np.ndarray | None:
        """A constant's value: an initializer, a Constant, or an identity / cast of one;
        `any_shape` also looks through reshapes (their values, in the source's shape)."""
        if not name:
            return None
        if name in self.values:
            return self.values[name]
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            from latbench.bench.onnx_graph import constant_value

            value = constant_value(node)
            if value is not None:
                self.values[name] = value
            return value
        if node.op_type == "Identity" or any_shape and node.op_type in _RESHAPES:
            return self.value(node.input[0], any_shape)
        if node.op_type == "Cast":
            value = self.value(node.input[0], any_shape)
            to = helper.tensor_dtype_to_np_dtype(int(_attrs(node)["to"]))
            return None if value is None else value.astype(to)
        return None

    def const(self, hint: str, value: np.ndarray, stored_bytes: int = 4) -> str:
        """A new float initializer; `stored_bytes` per element as the runtime keeps it."""
        self.count += 1
        name = f"{hint}_float_{self.count}"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        self.values[name] = value
        if stored_bytes == 1:
            self.stored.add(name)
        return name

    def weight(self, q: str, scale: str | None, zero: str | None, axis: int = 0) -> str | None:
        """A dequantized constant operand as a new float initializer; a computed one resolved
        (its float tensor); None when neither."""
        value = self.value(q)
        if value is None:
            return self.resolve(q) if q else None
        return self.const(q, dequantize(value, self.value(scale or ""), self.value(zero or ""),
                                        axis), value.dtype.itemsize)

    def clamp(self, tensor: str, scale: str, zero: str) -> None:
        found = clamp_of(self.value(scale), self.value(zero))
        if found is not None:
            self.clamps[tensor] = found

    def emit(self, node: onnx.NodeProto, int8: bool, stored: bool = False) -> None:
        """Add a node; `int8` when it computes in int8, `stored` when its outputs are
        quantized tensors."""
        self.nodes.append(node)
        if int8 and node.output:
            self.int8.add(node.output[0])
        if stored:
            self.stored.update(o for o in node.output if o)


def _along(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A quantization parameter broadcast against a tensor of rank `ndim`: one value, or one
    per index of `axis`."""
    param = np.asarray(param, np.float64)
    if param.size == 1 or not ndim:
        return param.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return param.reshape(shape)


def dequantize(q: np.ndarray, scale: np.ndarray | None, zero: np.ndarray | None,
               axis: int = 0) -> np.ndarray:
    """(q - zero) * scale in float32, a per-channel scale and zero point along `axis`."""
    values = np.asarray(q).astype(np.float64)
    if zero is not None:
        values = values - _along(zero, values.ndim, axis)
    if scale is not None:
        values = values * _along(scale, values.ndim, axis)
    return values.astype(np.float32)


def quantize_values(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None,
                    axis: int = 1) -> np.ndarray:
    """QuantizeLinear in NumPy: round half to even, saturate to the zero point's type (uint8
    without one)."""
    values = np.asarray(x, np.float64)
    dtype = np.dtype(np.uint8) if zero is None else np.asarray(zero).dtype
    q = np.rint(values / _along(scale, values.ndim, axis))
    if zero is not None:
        q = q + _along(zero, values.ndim, axis)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def clamp_of(scale: np.ndarray | None, zero: np.ndarray | None) -> str | None:
    """"relu" / "relu6" when a quantized range starts at 0 (zero point at the type's minimum; a
    missing zero point is uint8 0), else None."""
    if scale is None or np.asarray(scale).size != 1:
        return None
    zero = np.zeros((), np.uint8) if zero is None else np.asarray(zero)
    if zero.size != 1 or zero.dtype.kind not in "iu":
        return None
    info = np.iinfo(zero.dtype)
    z = int(zero.ravel()[0])
    if z != info.min:
        return None
    step = float(np.asarray(scale).ravel()[0])
    return "relu6" if abs((info.max - z) * step - _RELU6) <= step else "relu"


# QLinear* / integer op -> its float form. Each reads the node and the rewrite state and emits
# the float node(s); it returns False when the node cannot be read (left as it is).
_Rewriter = Callable[[_Rewrite, onnx.NodeProto], bool]


def _attrs(node: onnx.NodeProto, drop: tuple[str, ...] = ()) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in drop}


def _inputs(node: onnx.NodeProto, count: int) -> list[str]:
    return [*node.input, *[""] * count][:count]


def _bias(r: _Rewrite, bias: str, x_scale: str, w_scale: str) -> np.ndarray | None:
    """An int32 bias in float: its scale is the input's times the weight's (per channel)."""
    values, xs, ws = r.value(bias), r.value(x_scale), r.value(w_scale)
    if values is None or xs is None or ws is None:
        return None
    return dequantize(values, (np.asarray(xs, np.float64) * np.asarray(ws, np.float64)).ravel(),
                      None)


def _qlinear_conv(r: _Rewrite, node: onnx.NodeProto, op: str = "Conv") -> bool:
    x, xs, _, w, ws, wz, ys, yz, b = _inputs(node, 9)
    bias = _bias(r, b, xs, ws) if b else None
    if b and bias is None:
        return False
    axis = 1 if op == "ConvTranspose" else 0  # ConvTranspose weights are [cin, cout/g, k, k]
    inputs = [r.resolve(x), r.weight(w, ws, wz, axis) or ""]
    if bias is not None:
        inputs.append(r.const(b, bias))
    r.emit(helper.make_node(op, inputs, [node.output[0]], node.name,
                            **_attrs(node, ("channels_last",))), True, True)
    r.clamp(node.output[0], ys, yz)
    return True


def _qlinear_matmul(r: _Rewrite, node: onnx.NodeProto) -> bool:
    a, as_, az, b, bs, bz, ys, yz = _inputs(node, 8)
    first = r.weight(a, as_, az, -1)
    second = r.weight(b, bs, bz, -1)
    r.emit(helper.make_node("MatMul", [first or "", second or ""], [node.output[0]], node.name),
           True, True)
    r.clamp(node.output[0], ys, yz)
    return True


def _qgemm(r: _Rewrite, node: onnx.NodeProto) -> bool:
    a, as_, az, b, bs, bz, c, ys, yz = _inputs(node, 9)
    bias = _bias(r, c, as_, bs) if c else None
    if c and bias is None:
        return False
    a_ = _attrs(node)
    second = r.weight(b, bs, bz, 0 if a_.get("transB", 0) else 1)
    inputs = [r.weight(a, as_, az) or "", second or ""]
    if bias is not None:
        inputs.append(r.const(c, bias))
    r.emit(helper.make_node("Gemm", inputs, [node.output[0]], node.name, **a_), True, bool(ys))
    if ys:
        r.clamp(node.output[0], ys, yz)
    return True


def _integer(op: str) -> _Rewriter:
    """ConvInteger / MatMulInteger: the float op on the tensors the zero points belong to."""
    def rewrite(r: _Rewrite, node: onnx.NodeProto) -> bool:
        x, w, xz, wz = _inputs(node, 4)
        axis = 0 if op == "Conv" else -1
        first = r.weight(x, None, xz)
        second = r.weight(w, None, wz, axis)
        out = node.output[0]
        new = helper.make_node(op, [first or "", second or ""], [out], node.name,
                               **_attrs(node))
        r.emit(new, True)
        r.integer.add(out)
        if op == "Conv":
            r.integer_convs[out] = new
        return True
    return rewrite


def _unary(op: str, drop: tuple[str, ...] = ()) -> _Rewriter:
    """X, X_scale, X_zp, Y_scale, Y_zp -> op(X) (attributes kept but `drop`)."""
    def rewrite(r: _Rewrite, node: onnx.NodeProto) -> bool:
        x, _, _, ys, yz = _inputs(node, 5)
        attrs = _attrs(node, drop)
        inputs = [r.resolve(x)]
        if op == "ReduceMean" and r.opset >= 18 and "axes" in attrs:
            inputs.append(r.const("axes", np.asarray(attrs.pop("axes"), np.int64)))
        r.emit(helper.make_node(op, inputs, [node.output[0]], node.name, **attrs), True, True)
        r.clamp(node.output[0], ys, yz)
        return True
    return rewrite


def _binary(op: str) -> _Rewriter:
    """A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp -> op(A, B)."""
    def rewrite(r: _Rewrite, node: onnx.NodeProto) -> bool:
        a, as_, az, b, bs, bz, cs, cz = _inputs(node, 8)
        inputs = [r.weight(a, as_, az) or "", r.weight(b, bs, bz) or ""]
        r.emit(helper.make_node(op, inputs, [node.output[0]], node.name), True, True)
        r.clamp(node.output[0], cs, cz)
        return True
    return rewrite


def _qlinear_concat(r: _Rewrite, node: onnx.NodeProto) -> bool:
    ys, yz, *rest = node.input
    inputs = [r.weight(rest[i], rest[i + 1], rest[i + 2]) or "" for i in range(0, len(rest), 3)]
    r.emit(helper.make_node("Concat", inputs, [node.output[0]], node.name, **_attrs(node)),
           True, True)
    r.clamp(node.output[0], ys, yz)
    return True


def _global_pool(r: _Rewrite, node: onnx.NodeProto) -> bool:
    if _attrs(node).get("channels_last", 0):
        return False  # an NHWC tensor: the float op would read its shape wrongly
    return _unary("GlobalAveragePool", ("channels_last",))(r, node)


# (domain, op type) -> rewriter; "" is the default domain.
_REWRITERS: dict[tuple[str, str], _Rewriter] = {
    ("", "QLinearConv"): _qlinear_conv,
    ("", "QLinearMatMul"): _qlinear_matmul,
    ("", "ConvInteger"): _integer("Conv"),
    ("", "MatMulInteger"): _integer("MatMul"),
    ("com.microsoft", "QGemm"): _qgemm,
    ("com.microsoft", "QLinearAdd"): _binary("Add"),
    ("com.microsoft", "QLinearMul"): _binary("Mul"),
    ("com.microsoft", "QLinearGlobalAveragePool"): _global_pool,
    ("com.microsoft", "QLinearAveragePool"): _unary("AveragePool", ("channels_last",)),
    ("com.microsoft", "QLinearSigmoid"): _unary("Sigmoid"),
    ("com.microsoft", "QLinearLeakyRelu"): _unary("LeakyRelu"),
    ("com.microsoft", "QLinearSoftmax"): _unary("Softmax", ("opset",)),
    ("com.microsoft", "QLinearReduceMean"): _unary("ReduceMean"),
    ("com.microsoft", "QLinearConcat"): _qlinear_concat,
    ("com.microsoft", "QLinearConvTranspose"): lambda r, node: _qlinear_conv(r, node,
                                                                             "ConvTranspose"),
}
QUANTIZED_OPS = frozenset(op for _, op in _REWRITERS) | GLUE_OPS


def _rewrite_for(node: onnx.NodeProto) -> _Rewriter | None:
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    return _REWRITERS.get((domain, node.op_type))


def float_view(model: onnx.ModelProto) -> FloatView:
    """The float graph a quantized model computes (module docstring); a model without
    quantization comes back as it is."""
    if not is_quantized(model):
        return FloatView(model)
    r = _Rewrite(model)
    for node in model.graph.node:
        _step(r, node)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    new = out.graph
    for value in new.output:
        source = r.resolve(value.name)
        if source != value.name:
            r.nodes.append(helper.make_node("Identity", [source], [value.name]))
    for value in [*new.input, *new.output]:
        elem = value.type.tensor_type.elem_type
        if elem in QUANT_TYPES or elem == TensorProto.INT32 and value.name in r.integer:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    del new.node[:]
    new.node.extend(_live(r.nodes, {v.name for v in new.output}))
    new.initializer.extend(r.initializers)
    del new.value_info[:]
    return FloatView(out, frozenset(r.int8), frozenset(r.stored), r.clamps,
                     frozenset(r.shared_s8))


def _step(r: _Rewrite, node: onnx.NodeProto) -> None:
    """One node of the pass: glue becomes aliases, integer ops float ops, the rest is copied
    with its inputs resolved and its precision decided."""
    op = node.op_type
    data = node.input[0] if node.input else ""
    dynamic = [i for i in node.input if i and i not in r.static]
    if not dynamic:  # constant arithmetic: weights (de)quantized here, the rest folded later
        r.static.update(o for o in node.output if o)
        if not _constant_glue(r, node):
            r.emit(_resolved(r, node), False)
        return
    if op in ("QuantizeLinear", "DequantizeLinear"):
        source = r.resolve(data)
        r.alias[node.output[0]] = source
        if op == "QuantizeLinear":
            r.quantized.add(node.output[0])
            if source in r.int8:
                r.clamp(source, *_inputs(node, 3)[1:])
        else:
            r.dequantized.add(node.output[0])
            if _shared_s8(r, node):
                r.shared_in.add(node.output[0])
        return
    if op == "DynamicQuantizeLinear":
        r.alias[node.output[0]] = r.resolve(data)
        r.quantized.add(node.output[0])
        r.scales.update(o for o in node.output[1:] if o)
        return
    rewrite = _rewrite_for(node)
    if rewrite is not None and rewrite(r, node):
        r.quantized.update(o for o in node.output if o)
        return
    if all(i in r.scales for i in dynamic):  # scale arithmetic: no data
        r.scales.update(node.output)
        return
    resolved = [r.resolve(i) if i else "" for i in node.input]
    if op == "Cast" and resolved[0] in r.integer:  # int32 -> float after an integer op
        r.alias[node.output[0]] = resolved[0]
        return
    if op in ("Mul", "Div") and len(dynamic) == 2 and any(i in r.scales for i in dynamic):
        data_in = next(r.resolve(i) for i in dynamic if i not in r.scales)
        if data_in in r.integer:  # the integer result rescaled: the float op's result
            r.alias[node.output[0]] = data_in
            return
    if op == "Add" and _conv_bias(r, node, resolved):
        return
    reads_quantized = any(i in r.quantized for i in dynamic)
    reads_dequantized = any(i in r.dequantized for i in dynamic)
    readers = [u for o in node.output if o for u in r.readers.get(o, [])]
    writes_quantized = bool(readers) and not (set(node.output) & r.outputs) and all(
        u.op_type == "QuantizeLinear" for u in readers)
    glue = op in ("Cast", "Identity")
    if not glue and (any(i in r.shared_in for i in dynamic) or any(
            u.op_type == "QuantizeLinear" and _shared_s8(r, u) for u in readers)):
        r.shared_s8.add(node.output[0])  # reads or writes a shared int8 tensor
    r.emit(_resolved(r, node), not glue and (reads_quantized or reads_dequantized
                                             or writes_quantized),
           not glue and (reads_quantized or writes_quantized))
    if reads_quantized and not glue:
        r.quantized.update(o for o in node.output if o)


def _shared_s8(r: _Rewrite, glue: onnx.NodeProto) -> bool:
    """Whether a QuantizeLinear / DequantizeLinear of computed data (`glue`) has a signed int8
    zero point and its quantized tensor ends up read by more than one node: it feeds several
    DequantizeLinears, or one with several readers (module docstring)."""
    zero = r.value(_inputs(glue, 3)[2])
    if zero is None or np.asarray(zero).dtype != np.int8:
        return False
    quantized = glue.output[0] if glue.op_type == "QuantizeLinear" else glue.input[0]
    dqs = r.readers.get(quantized, [])
    return len(dqs) > 1 or any(len(r.readers.get(dq.output[0], [])) > 1 for dq in dqs)


def _constant_glue(r: _Rewrite, node: onnx.NodeProto) -> bool:
    """A QuantizeLinear / DequantizeLinear of a constant evaluated into an initializer (the
    weights of a QDQ model, a quantized constant operand)."""
    if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
        return False
    x, scale, zero = (r.value(i) for i in _inputs(node, 3))
    if x is None or scale is None:
        return False
    axis = int(_attrs(node).get("axis", 1))
    if node.op_type == "DequantizeLinear":
        value = dequantize(x, scale, zero, axis)
    else:
        value = quantize_values(x, scale, zero, axis)
    r.values[node.output[0]] = value
    r.initializers.append(numpy_helper.from_array(value, node.output[0]))
    if np.asarray(x if node.op_type == "DequantizeLinear" else value).dtype.itemsize == 1:
        r.stored.add(node.output[0])
    return True


def _resolved(r: _Rewrite, node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.input[:]
    copy.input.extend(r.resolve(i) if i else "" for i in node.input)
    return copy


def _conv_bias(r: _Rewrite, node: onnx.NodeProto, resolved: list[str]) -> bool:
    """An Add of a per-channel constant to an integer Conv's sole result: the Conv's bias."""
    convs = [(i, name) for i, name in enumerate(resolved) if name in r.integer_convs]
    if len(convs) != 1 or len(node.input) != 2:
        return False
    index, conv_out = convs[0]
    original = node.input[index]
    bias = r.value(node.input[1 - index], any_shape=True)
    conv = r.integer_convs[conv_out]
    if bias is None or len(r.readers.get(original, [])) != 1 or original in r.outputs \
            or len(conv.input) > 2:
        return False
    weight = r.value(conv.input[1])
    channels = None if weight is None else weight.shape[0]
    shaper = r.producer.get(node.input[1 - index])
    target = r.value(shaper.input[1]) if shaper is not None and shaper.op_type == "Reshape" \
        else bias.shape
    if bias.size != channels or target is None or len(target) != 4 \
            or int(target[1]) not in (channels, -1):
        return False  # not one value per channel along axis 1
    conv.input.append(r.const("bias", bias.ravel().astype(np.float32)))
    r.alias[node.output[0]] = conv_out
    del r.integer_convs[conv_out]
    return True


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """The nodes something reads, transitively from the graph outputs, in their order."""
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    return kept[::-1]


def float_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of a quantized model that compute on float data (quantized data is int8): what a
    quantizer left out. Glue (Q/DQ, Cast), layout-only ops and constant arithmetic are not
    counted."""
    from latbench.bench.onnx_graph import PASS_THROUGH_OPS, SHAPE_OPS

    view = float_view(model)
    static = {t.name for t in view.model.graph.initializer}
    out = []
    for node in view.model.graph.node:
        dynamic = [i for i in node.input if i and i not in static]
        if not dynamic or node.op_type in SHAPE_OPS:
            static.update(node.output)
            continue
        if node.op_type in PASS_THROUGH_OPS or node.op_type in ("Cast", "Identity") \
                or node.output[0] in view.int8:
            continue
        out.append(node)
    return out
