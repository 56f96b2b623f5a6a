"""LayerGraph -> ONNX bytes, built with onnx.helper (fast, no torch needed).

Opset 17, the standard ops PyTorch's exporters write: MatMul (+ Add) for token-wise linear
layers and attention matmuls, Softmax, LayerNormalization (opset 17), Transpose, Concat, Gather,
ConvTranspose, Resize, Pad, Slice, InstanceNormalization, ReduceMean (axes attribute), and
Reshape + Transpose + Reshape for a channel shuffle. GELU is written as torch's default (dynamo)
exporter writes it: the exact form as x * (0.5 * (1 + Erf(x / sqrt 2))), which onnxruntime runs
as the five ops it is (its Gelu fusion matches only the legacy exporter's order, (x * (1 + Erf))
* 0.5: a kernel exported in that order would time a fused Gelu that users' models never run, 12%
faster for a 197-token 192->768 linear layer with GELU here), and the tanh form as its
Mul/Add/Tanh chain, which onnxruntime runs as written too. Mish is x * Tanh(Softplus(x)) (the
Mish op needs opset 18).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from latbench.bench.export.graph import Layer, LayerGraph
from latbench.bench.export.quantize import DEFAULT_QUANT_FORMAT, in_precision
from latbench.bench.ops import LEAKY_ALPHA
from latbench.errors import ExportError

OPSET = 17


class _Emitter:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        out = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def scalar(self, hint: str, value: float) -> str:
        return self.const(hint, np.array(value, np.float32))

    def activation(self, x: str, act: str, output: str, layer: Layer | None = None,
                   rank: int = 4) -> str:
        """`act` on x into `output`; leakyrelu's alpha and prelu's slope come from `layer`."""
        if act == "none":
            return self.node("Identity", [x], output)
        if act == "relu":
            return self.node("Relu", [x], output)
        if act == "relu6":
            return self.node("Clip", [x, self.scalar("zero", 0.0), self.scalar("six", 6.0)],
                             output)
        if act == "hswish":
            return self.node("HardSwish", [x], output)
        if act == "hsigmoid":
            return self.node("HardSigmoid", [x], output, alpha=1.0 / 6.0, beta=0.5)
        if act == "sigmoid":
            return self.node("Sigmoid", [x], output)
        if act == "swish":
            return self.node("Mul", [x, self.node("Sigmoid", [x])], output)
        if act == "tanh":
            return self.node("Tanh", [x], output)
        if act == "leakyrelu":
            alpha = layer.attrs.get("alpha", LEAKY_ALPHA) if layer else LEAKY_ALPHA
            return self.node("LeakyRelu", [x], output, alpha=float(alpha))
        if act == "prelu":
            if layer is None or "slope" not in layer.weights:
                raise ExportError("ONNX export: prelu needs its slope weights")
            slope = layer.weights["slope"]
            if layer.attrs.get("slope_axis", 1) % rank == 1 and rank > 2:
                slope = slope.reshape(-1, *([1] * (rank - 2)))  # broadcast along axis 1
            return self.node("PRelu", [x, self.const("slope", slope)], output)
        if act == "mish":
            return self.node("Mul", [x, self.node("Tanh", [self.node("Softplus", [x])])], output)
        if act == "gelu":  # x * (0.5 * (1 + erf(x / sqrt(2)))), the dynamo exporter's order
            erf = self.node("Erf", [self.node("Div", [x, self.scalar("sqrt2", np.sqrt(2.0))])])
            gate = self.node("Add", [erf, self.scalar("one", 1.0)])
            return self.node("Mul", [x, self.node("Mul", [self.scalar("half", 0.5), gate])],
                             output)
        if act == "gelu_tanh":  # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
            cube = self.node("Mul", [x, self.node("Mul", [x, x])])
            inner = self.node("Add", [x, self.node("Mul", [cube, self.scalar("kappa", 0.044715)])])
            tanh = self.node("Tanh", [self.node("Mul", [inner, self.scalar(
                "beta", np.sqrt(2.0 / np.pi))])])
            gate = self.node("Add", [tanh, self.scalar("one", 1.0)])
            return self.node("Mul", [self.node("Mul", [x, gate]), self.scalar("half", 0.5)],
                             output)
        raise ExportError(f"ONNX export has no activation {act!r}")

    def with_act(self, op: str, inputs: list[str], output: str, act: str,
                 layer: Layer | None = None, rank: int = 4, **attrs) -> str:
        if act == "none":
            return self.node(op, inputs, output, **attrs)
        return self.activation(self.node(op, inputs, **attrs), act, output, layer, rank)

    def layer(self, layer: Layer, shapes: dict[str, tuple[int, ...]]) -> None:
        a, out, op = layer.attrs, layer.output, layer.op
        rank = len(shapes[out])
        if op == "conv":
            kh, kw = a["kernel"], a.get("kernel_w", a["kernel"])
            ph, pw = a["pad"], a.get("pad_w", a["pad"])
            d = a.get("dilation", 1)
            w = self.const("w", layer.weights["weight"])
            b = self.const("b", layer.weights["bias"])
            dilated = {"dilations": [d, d]} if d > 1 else {}  # undilated models stay as they were
            self.with_act("Conv", [layer.inputs[0], w, b], out, a["act"], layer,
                          kernel_shape=[kh, kw], strides=[a["stride"]] * 2,
                          pads=[ph, pw, ph, pw], group=a["groups"], **dilated)
        elif op == "linear":
            x = layer.inputs[0]
            if len(shapes[x]) != 2:
                x = self.node("Flatten", [x], axis=1)
            w = self.const("w", layer.weights["weight"])
            b = self.const("b", layer.weights["bias"])
            self.with_act("Gemm", [x, w, b], out, a["act"], layer, 2, transB=1)
        elif op == "tlinear":  # as the exporters write nn.Linear on a [N, T, C] tensor
            w = self.const("w", np.ascontiguousarray(layer.weights["weight"].T))
            y = self.node("MatMul", [layer.inputs[0], w])
            self.with_act("Add", [y, self.const("b", layer.weights["bias"])], out, a["act"],
                          layer, rank)
        elif op == "add":
            self.with_act("Add", layer.inputs, out, a["act"], layer, rank)
        elif op == "mul":
            self.node("Mul", layer.inputs, out)
        elif op == "act":
            self.activation(layer.inputs[0], a["act"], out, layer, rank)
        elif op == "pool":
            k, s, p = a["kernel"], a["stride"], a["pad"]
            attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [p, p, p, p]}
            if a["pool"] == "avg":
                self.node("AveragePool", layer.inputs, out,
                          count_include_pad=0 if a.get("exclude_pad") else 1, **attrs)
            else:
                self.node("MaxPool", layer.inputs, out, **attrs)
        elif op == "gpool":
            self.node("GlobalAveragePool", layer.inputs, out)
        elif op == "concat":
            self.node("Concat", layer.inputs, out, axis=a.get("axis", 1))
        elif op in _SIMPLE:
            _SIMPLE[op](self, layer, shapes)
        else:
            raise ExportError(f"ONNX export has no layer op {op!r}")


def _ints(hint: str, emitter: _Emitter, values: list[int]) -> str:
    return emitter.const(hint, np.asarray(values, np.int64))


def _convt(e: _Emitter, layer: Layer, shapes: dict[str, tuple[int, ...]]) -> None:
    a = layer.attrs
    k, p, op = a["kernel"], a["pad"], a["out_pad"]
    inputs = [layer.inputs[0], e.const("w", layer.weights["weight"]),
              e.const("b", layer.weights["bias"])]
    e.with_act("ConvTranspose", inputs, layer.output, a["act"], layer, kernel_shape=[k, k],
               strides=[a["stride"]] * 2, pads=[p, p, p, p], output_padding=[op, op],
               group=a["groups"])


def _resize(e: _Emitter, layer: Layer, shapes: dict[str, tuple[int, ...]]) -> None:
    a = layer.attrs
    if "size" in a:  # resized to a size: the "sizes" input instead of "scales"
        inputs = [layer.inputs[0], "", "", _ints("sizes", e, list(shapes[layer.output]))]
    else:
        inputs = [layer.inputs[0], "", e.const("scales", np.asarray(
            [1.0, 1.0, a["scale"], a["scale"]], np.float32))]
    if a["mode"] == "nearest":  # PyTorch's nearest: source index floor(dst / scale)
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                 "nearest_mode": "floor"}
    else:
        attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    e.node("Resize", inputs, layer.output, **attrs)


def _pad(e: _Emitter, layer: Layer, shapes: dict[str, tuple[int, ...]]) -> None:
    p = layer.attrs["pad"]
    pads = _ints("pads", e, [0, 0, p, p, 0, 0, p, p])
    e.node("Pad", [layer.inputs[0], pads], layer.output, mode=layer.attrs["mode"])


def _slice(e: _Emitter, layer: Layer, shapes: dict[str, tuple[int, ...]]) -> None:
    a = layer.attrs
    e.node("Slice", [layer.inputs[0], _ints("starts", e, [a["start"]]),
                     _ints("ends", e, [a["end"]]), _ints("axes", e, [a["axis"]])], layer.output)


def _shuffle(e: _Emitter, layer: Layer, shapes: dict[str, tuple[int, ...]]) -> None:
    n, c, h, w = shapes[layer.inputs[0]]
    g = layer.attrs["groups"]
    split = e.node("Reshape", [layer.inputs[0], _ints("shape", e, [n, g, c // g, h, w])])
    swapped = e.node("Transpose", [split], perm=[0, 2, 1, 3, 4])
    e.node("Reshape", [swapped, _ints("shape", e, [n, c, h, w])], layer.output)


def _cat_const(e: _Emitter, layer: Layer, shapes: dict[str, tuple[int, ...]]) -> None:
    batch = shapes[layer.inputs[0]][0]
    token = np.ascontiguousarray(np.repeat(layer.weights["value"], batch, axis=0))
    e.node("Concat", [e.const("token", token), layer.inputs[0]], layer.output,
           axis=layer.attrs["axis"])


# Layer ops written by one function each: (emitter, layer, shapes) -> nodes.
_SIMPLE = {
    "bmm": lambda e, layer, shapes: e.node("MatMul", layer.inputs, layer.output),
    "softmax": lambda e, layer, shapes: e.node("Softmax", layer.inputs, layer.output, axis=-1),
    "layernorm": lambda e, layer, shapes: e.node(
        "LayerNormalization", [layer.inputs[0], e.const("scale", layer.weights["scale"]),
                               e.const("bias", layer.weights["bias"])], layer.output, axis=-1,
        epsilon=float(layer.attrs["eps"])),
    "transpose": lambda e, layer, shapes: e.node("Transpose", layer.inputs, layer.output,
                                                 perm=list(layer.attrs["perm"])),
    "cat_const": _cat_const,
    "gather": lambda e, layer, shapes: e.node(
        "Gather", [layer.inputs[0], e.const("index", np.array(layer.attrs["index"], np.int64))],
        layer.output, axis=layer.attrs["axis"]),
    "add_const": lambda e, layer, shapes: e.node(
        "Add", [layer.inputs[0], e.const("value", layer.weights["value"])], layer.output),
    "mul_const": lambda e, layer, shapes: e.node(
        "Mul", [layer.inputs[0], e.const("value", layer.weights["value"])], layer.output),
    "convt": _convt,
    "resize": _resize,
    "pad": _pad,
    "slice": _slice,
    "instnorm": lambda e, layer, shapes: e.node(
        "InstanceNormalization", [layer.inputs[0], e.const("scale", layer.weights["scale"]),
                                  e.const("bias", layer.weights["bias"])], layer.output,
        epsilon=float(layer.attrs["eps"])),
    "reduce": lambda e, layer, shapes: e.node("ReduceMean", layer.inputs, layer.output,
                                              axes=list(layer.attrs["axes"]), keepdims=1),
    "shuffle": _shuffle,
    "reshape": lambda e, layer, shapes: e.node(
        "Reshape", [layer.inputs[0], _ints("shape", e, list(layer.attrs["shape"]))],
        layer.output),
}


def to_onnx(graph: LayerGraph, name: str = "latbench", *,
            quant_format: str = DEFAULT_QUANT_FORMAT) -> bytes:
    """Serialise a graph as an ONNX model (opset 17, fixed shapes) in its precision
    (`graph.dtype`): float32 as written here; int8 and float16 made from it by ONNX Runtime's
    quantizer (`quant_format`: qdq, qoperator or dynamic) and float16 converter
    (`bench.export.quantize`)."""
    data = _float_model(graph, name)
    if graph.dtype == "float32":
        return data
    what = "graph of " + ", ".join(dict.fromkeys(layer.op for layer in graph.layers))
    return in_precision(data, graph.dtype, quant_format=quant_format, what=what)


def _float_model(graph: LayerGraph, name: str) -> bytes:
    emitter = _Emitter()
    for layer in graph.layers:
        emitter.layer(layer, graph.shapes)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, graph.shapes[n])
              for n in graph.inputs]
    output = helper.make_tensor_value_info(graph.output_name, TensorProto.FLOAT,
                                           graph.output_shape)
    onnx_graph = helper.make_graph(emitter.nodes, name, inputs, [output], emitter.initializers)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="latbench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
