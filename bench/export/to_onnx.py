"""LayerGraph -> ONNX bytes, built with onnx.helper (fast, no torch needed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from latbench.bench.export.graph import Layer, LayerGraph
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

    def activation(self, x: str, act: str, output: str) -> str:
        if act == "none":
            return self.node("Identity", [x], output)
        if act == "relu":
            return self.node("Relu", [x], output)
        if act == "relu6":
            lo = self.const("zero", np.array(0.0, np.float32))
            hi = self.const("six", np.array(6.0, np.float32))
            return self.node("Clip", [x, lo, hi], output)
        if act == "hswish":
            return self.node("HardSwish", [x], output)
        if act == "hsigmoid":
            return self.node("HardSigmoid", [x], output, alpha=1.0 / 6.0, beta=0.5)
        if act == "sigmoid":
            return self.node("Sigmoid", [x], output)
        if act == "swish":
            return self.node("Mul", [x, self.node("Sigmoid", [x])], output)
        raise ExportError(f"ONNX export has no activation {act!r}")

    def with_act(self, op: str, inputs: list[str], output: str, act: str, **attrs) -> str:
        if act == "none":
            return self.node(op, inputs, output, **attrs)
        return self.activation(self.node(op, inputs, **attrs), act, output)

    def layer(self, layer: Layer, shapes: dict[str, tuple[int, ...]]) -> None:
        a, out, op = layer.attrs, layer.output, layer.op
        if op == "conv":
            k, p = a["kernel"], a["pad"]
            w = self.const("w", layer.weights["weight"])
            b = self.const("b", layer.weights["bias"])
            self.with_act("Conv", [layer.inputs[0], w, b], out, a["act"], kernel_shape=[k, k],
                          strides=[a["stride"]] * 2, pads=[p, p, p, p], group=a["groups"])
        elif op == "linear":
            x = layer.inputs[0]
            if len(shapes[x]) != 2:
                x = self.node("Flatten", [x], axis=1)
            w = self.const("w", layer.weights["weight"])
            b = self.const("b", layer.weights["bias"])
            self.with_act("Gemm", [x, w, b], out, a["act"], transB=1)
        elif op == "add":
            self.with_act("Add", layer.inputs, out, a["act"])
        elif op == "mul":
            self.node("Mul", layer.inputs, out)
        elif op == "act":
            self.activation(layer.inputs[0], a["act"], out)
        elif op == "pool":
            k, s, p = a["kernel"], a["stride"], a["pad"]
            attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [p, p, p, p]}
            if a["pool"] == "avg":
                self.node("AveragePool", layer.inputs, out, count_include_pad=1, **attrs)
            else:
                self.node("MaxPool", layer.inputs, out, **attrs)
        elif op == "gpool":
            self.node("GlobalAveragePool", layer.inputs, out)
        elif op == "concat":
            self.node("Concat", layer.inputs, out, axis=1)
        else:
            raise ExportError(f"ONNX export has no layer op {op!r}")


def to_onnx(graph: LayerGraph, name: str = "latbench") -> bytes:
    """Serialise a graph as an ONNX model (opset 17, float32, fixed shapes)."""
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
