"""ONNX model -> LayerGraph with the model's own weights, so a network that exists only as ONNX
(the PyTorch families, a user's export) can be written for every runtime by `to_tflite`.

The model is read as the kernel parser reads it (`bench.onnx_graph.concrete_graph`: concrete
shapes, constant subgraphs folded), then walked node by node in graph order. Each node becomes
the LayerGraph layers that compute the same thing: BatchNormalization folds into the Conv before
it, activations (one node, or a cone such as GELU's Div/Erf/Add/Mul/Mul, found by the parser's
own matchers in `bench.onnx_patterns`) fuse into the conv, linear or add that makes their input,
Gemm and MatMul with constant weights become linear / tlinear layers (the bias Add after a MatMul
included), and layout-only nodes (Flatten, Reshape, Squeeze, ...) become nothing while a reader
accepts the data as it is (a linear layer flattens its input), else a `reshape` layer. A node
the LayerGraph cannot express raises ExportError naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from latbench.bench.export.graph import GraphBuilder, LayerGraph
from latbench.bench.onnx_graph import (
    PASS_THROUGH_OPS,
    OnnxGraph,
    ShapeMap,
    attrs,
    concrete_graph,
    describe,
    load_model,
    text_attr,
)
from latbench.bench.onnx_patterns import (
    Act,
    activation_at,
    activation_from,
    bias_add,
    match_decomposed_layernorm,
    pad_into_conv,
    reduce_axes,
)
from latbench.bench.ops import LEAKY_ALPHA
from latbench.errors import ExportError, LatbenchError


class _Builder(GraphBuilder):
    """A GraphBuilder whose layers get the model's weights: it draws none (zeros, replaced by
    `set_weights` right after each layer is added)."""

    def _weights(self, std: float, shape: Any, mean: float = 0.0) -> np.ndarray:
        return np.zeros(tuple(shape), np.float32)

    def set_weights(self, **weights: np.ndarray) -> None:
        """Give the last layer these weights (each the shape the layer expects)."""
        layer = self.layers[-1]
        for name, value in weights.items():
            value = np.ascontiguousarray(value, np.float32)
            want = layer.weights[name].shape
            if value.size != int(np.prod(want)):
                raise ExportError(f"layer {layer.output}: weight {name} of shape {value.shape} "
                                  f"does not fit {want}")
            layer.weights[name] = value.reshape(want)


class _Converter:
    def __init__(self, g: OnnxGraph) -> None:
        self.g = g
        self.b = _Builder(np.random.default_rng(0))
        self.env: dict[str, str] = {}  # ONNX tensor -> LayerGraph tensor with its data

    # --- tensors --------------------------------------------------------------------------
    def onnx_shape(self, tensor: str, node: onnx.NodeProto) -> tuple[int, ...]:
        shape = self.g.shapes.get(tensor)
        if shape is None:
            raise ExportError(f"{describe(node)}: shape of tensor {tensor!r} unknown")
        return tuple(int(d) for d in shape)

    def data(self, tensor: str, node: onnx.NodeProto) -> str:
        """The LayerGraph tensor holding `tensor`'s data, in any shape of the same size."""
        if tensor not in self.env:
            what = "a constant" if tensor in self.g.static else "a tensor no node made"
            raise ExportError(f"{describe(node)} reads {what} ({tensor!r}) where the LayerGraph "
                              "needs a computed tensor")
        return self.env[tensor]

    def exact(self, tensor: str, node: onnx.NodeProto) -> str:
        """The LayerGraph tensor of `tensor` in its own ONNX shape (and layout): a reshape
        where it is held as a view."""
        name = self.data(tensor, node)
        shape = self.onnx_shape(tensor, node)
        # [N, C, 1, 1] is stored alike in both layouts: held as an image, it costs no
        # transpose; a reshape that folds pixels into the batch (MobileViT's unfold) is plain
        image = len(shape) == 4 and (shape[2:] == (1, 1) or self.g.is_image(tensor)
                                     and shape[0] == self.g.batch)
        if self.b.shapes[name] == shape and (len(shape) != 4 or
                                             (name not in self.b.plain) == image):
            return name
        out = self.b.reshape(name, shape, image)
        self.env[tensor] = out
        return out

    def const(self, tensor: str, node: onnx.NodeProto, what: str) -> np.ndarray:
        value = self.g.const(tensor) if tensor else None
        if value is None:
            raise ExportError(f"{describe(node)}: its {what} is not a constant")
        return np.asarray(value, np.float32)

    def consume(self, nodes: list[onnx.NodeProto]) -> None:
        self.g.consumed.update(id(n) for n in nodes)

    def fused_act(self, tensor: str) -> Act | None:
        """The activation reading every use of `tensor` (fused into the layer making it)."""
        act = activation_at(self.g, tensor)
        if act is not None:
            self.consume(act.nodes)
        return act

    def finish_layer(self, out: str, act: Act | None, produced: str,
                     slope: np.ndarray | None = None) -> None:
        """Map the ONNX output (after the fused activation) to the layer just added."""
        if act is not None and act.name == "prelu":
            self.b.set_weights(slope=slope)
        self.env[act.output if act is not None else out] = produced

    def prelu_slope(self, act: Act | None) -> np.ndarray | None:
        if act is None or act.name != "prelu":
            return None
        prelu = act.nodes[0]
        return self.const(prelu.input[1], prelu, "slope").ravel()

    # --- walk -----------------------------------------------------------------------------
    def run(self) -> LayerGraph:
        g = self.g
        for name in _graph_inputs(g):
            shape = g.shapes.get(name)
            if shape is None:
                raise ExportError(f"graph input {name!r} has no concrete shape")
            self.env[name] = self.b.input(shape, plain=len(shape) == 4 and not g.is_image(name))
        for node in g.nodes:
            if not g.free(node) or g.is_static(node):
                continue
            if node.domain not in ("", "ai.onnx"):
                raise ExportError(f"{describe(node)} of domain {node.domain!r} has no "
                                  "LayerGraph form")
            handler = _HANDLERS.get(node.op_type)
            if handler is None:
                raise ExportError(f"{describe(node)}: ONNX op {node.op_type} has no LayerGraph "
                                  "form")
            try:
                handler(self, node)
            except ExportError:
                raise
            except LatbenchError as exc:
                raise ExportError(f"{describe(node)}: {exc}") from exc
            self.consume([node])
        outputs = sorted(g.outputs)
        if len(outputs) != 1:
            raise ExportError(f"the model has {len(outputs)} outputs; a LayerGraph has one")
        last = g.producer.get(outputs[0])
        if last is None:
            raise ExportError(f"the model's output {outputs[0]!r} is computed by no node")
        return self.b.finish(self.exact(outputs[0], last))

    # --- convolutions and pools -----------------------------------------------------------
    def conv(self, node: onnx.NodeProto) -> None:
        g, a = self.g, attrs(node)
        x = node.input[0]
        pads = list(a.get("pads", [0, 0, 0, 0]))
        padder = g.producer.get(x)
        if padder is not None and (padded := pad_into_conv(g, padder)) is not None:
            x, pads = padder.input[0], [padded[0], padded[1], padded[2], padded[3]]
        if text_attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise ExportError(f"{describe(node)} pads with auto_pad; export it with explicit pads")
        shape = self.onnx_shape(x, node)
        weight = self.const(node.input[1], node, "weight")
        if len(shape) != 4 or weight.ndim != 4:
            raise ExportError(f"{describe(node)} is not a 2-D convolution (input {shape})")
        cout, _, kh, kw = weight.shape
        bias = (self.const(node.input[2], node, "bias") if len(node.input) > 2 and node.input[2]
                else np.zeros(cout, np.float32))
        strides = list(a.get("strides", [1, 1]))
        dilations = list(a.get("dilations", [1, 1]))
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
            raise ExportError(f"{describe(node)} pads asymmetrically {pads}")
        if strides[0] != strides[1] or dilations[0] != dilations[1]:
            raise ExportError(f"{describe(node)} has non-square strides {strides} or dilations "
                              f"{dilations}")
        out = node.output[0]
        bn = g.sole_user(out)
        if bn is not None and bn.op_type == "BatchNormalization":
            weight, bias = _fold_bn(self, bn, weight, bias)
            self.consume([bn])
            out = bn.output[0]
        act = self.fused_act(out)
        y = self.b.conv(self.exact(x, node), cout, kh, strides[0], pads[0],
                        int(a.get("group", 1)), act.name if act else "none", kernel_w=kw,
                        pad_w=pads[1], dilation=dilations[0],
                        alpha=act.alpha if act else LEAKY_ALPHA)
        self.b.set_weights(weight=weight, bias=bias)
        self.finish_layer(out, act, y, self.prelu_slope(act))

    def batchnorm(self, node: onnx.NodeProto) -> None:
        """A BatchNormalization no Conv precedes (after a residual sum): a per-channel scale
        and shift of an image."""
        x = self.exact(node.input[0], node)
        shape = self.b.shapes[x]
        if len(shape) != 4 or x in self.b.plain:
            raise ExportError(f"{describe(node)} normalizes a {len(shape)}-D tensor that is no "
                              "image; the LayerGraph has batch normalization of images only")
        scale, shift, mean, var = (self.const(t, node, what) for t, what in
                                   zip(node.input[1:5], ("scale", "bias", "mean", "variance"),
                                       strict=True))
        factor = scale / np.sqrt(var + float(attrs(node).get("epsilon", 1e-5)))
        channel = (1, shape[1], 1, 1)
        y = self.b.mul_const(x, channel)
        self.b.set_weights(value=factor.reshape(channel).astype(np.float32))
        self.env[node.output[0]] = self.b.add_const(y, channel)
        self.b.set_weights(value=(shift - mean * factor).reshape(channel).astype(np.float32))

    def pool(self, node: onnx.NodeProto) -> None:
        a = attrs(node)
        kernel = list(a["kernel_shape"])
        strides = list(a.get("strides", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise ExportError(f"{describe(node)} uses ceil_mode or dilation")
        if text_attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise ExportError(f"{describe(node)} pads with auto_pad")
        if len(set(kernel)) != 1 or len(set(strides)) != 1 or len(set(pads)) > 1:
            raise ExportError(f"{describe(node)}: kernel {kernel}, strides {strides} and pads "
                              f"{pads} must be square and symmetric")
        pad = pads[0] if pads else 0
        avg = node.op_type == "AveragePool"
        self.env[node.output[0]] = self.b.pool(
            self.exact(node.input[0], node), "avg" if avg else "max", kernel[0], strides[0], pad,
            exclude_pad=avg and not a.get("count_include_pad", 0))

    def global_pool(self, node: onnx.NodeProto) -> None:
        self.env[node.output[0]] = self.b.gpool(self.exact(node.input[0], node))

    def reduce_mean(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        shape = self.onnx_shape(x, node)
        axes = reduce_axes(self.g, node, len(shape))
        if axes is None:
            raise ExportError(f"{describe(node)} reduces computed axes")
        if self.decomposed_layernorm(node):
            return
        if len(shape) == 4 and self.g.is_image(x) and axes == [2, 3]:
            self.env[node.output[0]] = self.b.gpool(self.exact(x, node))
        elif len(shape) == 4 and self.g.is_image(x):
            self.env[node.output[0]] = self.b.reduce_mean(self.exact(x, node), axes)
        else:
            raise ExportError(f"{describe(node)} averages axes {axes} of a {len(shape)}-D "
                              "tensor; the LayerGraph averages axes of images")

    # --- matrix products --------------------------------------------------------------------
    def gemm(self, node: onnx.NodeProto) -> None:
        a = attrs(node)
        if a.get("transA", 0) or node.input[0] in self.g.static:
            raise ExportError(f"{describe(node)} multiplies a transposed or constant left side")
        weight = self.const(node.input[1], node, "weight")
        weight = weight if a.get("transB", 0) else weight.T
        weight = weight * float(a.get("alpha", 1.0))
        cout = weight.shape[0]
        bias = (self.const(node.input[2], node, "bias") * float(a.get("beta", 1.0))
                if len(node.input) > 2 and node.input[2] else np.zeros(cout, np.float32))
        if bias.size != cout:
            raise ExportError(f"{describe(node)} adds a bias of {bias.size} values to {cout} "
                              "outputs")
        self.linear(node, node.input[0], weight, bias.ravel(), node.output[0])

    def matmul(self, node: onnx.NodeProto) -> None:
        g = self.g
        a, b = node.input[0], node.input[1]
        if b not in g.static:
            if a in g.static:
                raise ExportError(f"{describe(node)} multiplies a constant by a computed tensor")
            self.env[node.output[0]] = self.b.bmm(self.exact(a, node), self.exact(b, node))
            return
        weight = self.const(b, node, "weight")
        if weight.ndim != 2:
            raise ExportError(f"{describe(node)} has a weight of shape {weight.shape}, not 2-D")
        nodes: list[onnx.NodeProto] = []
        out = bias_add(g, node.output[0], nodes, weight.shape[1])
        bias = np.zeros(weight.shape[1], np.float32)
        if nodes:
            add = nodes[0]
            bias = self.const(next(i for i in add.input if i != node.output[0]), add,
                              "bias").ravel()
            self.consume(nodes)
        self.linear(node, a, weight.T, bias, out)

    def linear(self, node: onnx.NodeProto, x: str, weight: np.ndarray, bias: np.ndarray,
               out: str) -> None:
        """x @ weight.T + bias: a "linear" layer on [N, C] (any view of it: the layer
        flattens), a token-wise "tlinear" on [..., C]."""
        shape = self.onnx_shape(x, node)
        act = self.fused_act(out)
        name = act.name if act else "none"
        alpha = act.alpha if act else LEAKY_ALPHA
        cout = weight.shape[0]
        if len(shape) == 2 and shape[0] == self.g.batch:
            y = self.b.linear(self.data(x, node), cout, name, alpha)
        else:
            y = self.b.tlinear(self.exact(x, node), cout, name, alpha)
        self.b.set_weights(weight=weight, bias=bias)
        self.finish_layer(out, act, y, self.prelu_slope(act))

    # --- elementwise ------------------------------------------------------------------------
    def activation(self, node: onnx.NodeProto, act: Act | None = None) -> None:
        """The activation starting at `node` (one node or a cone) as an "act" layer."""
        act = act or activation_from(self.g, node)
        if act is None:
            raise ExportError(f"{describe(node)} is no activation latbench knows")
        self.consume(act.nodes)
        x = self.g.dynamic_inputs(node)[0]
        y = self.b.act(self.exact(x, node), act.name, act.alpha)
        self.finish_layer(act.output, act, y, self.prelu_slope(act))

    def elementwise(self, node: onnx.NodeProto) -> None:
        """An activation written out (GELU's cone, x * sigmoid(x)) starting here; else Add of
        two tensors, Mul by a broadcast gate (squeeze-excite) or of two tensors."""
        g = self.g
        act = activation_from(g, node)
        if act is not None:
            self.activation(node, act)
            return
        dynamic = g.dynamic_inputs(node)
        out = node.output[0]
        if len(dynamic) == 1 and self.fold_constant(node, dynamic[0]):
            return
        if len(dynamic) == 1 and node.op_type == "Add":
            x = self.exact(dynamic[0], node)
            value = self.const(next(i for i in node.input if i != dynamic[0]), node, "addend")
            plain = len(self.b.shapes[x]) != 4 or x in self.b.plain  # stored as it is
            if plain and value.shape == (1, *self.b.shapes[x][1:]):
                self.env[out] = self.b.add_const(x)
                self.b.set_weights(value=value)
                return
        if len(dynamic) == 1 and node.op_type in ("Mul", "Div"):
            x = self.exact(dynamic[0], node)
            value = self.const(next(i for i in node.input if i != dynamic[0]), node, "factor")
            if node.op_type == "Div" and dynamic[0] != node.input[0]:
                raise ExportError(f"{describe(node)} divides a constant by a computed tensor")
            self.env[out] = self.b.mul_const(x, value.shape)
            self.b.set_weights(value=value if node.op_type == "Mul" else 1.0 / value)
            return
        if len(dynamic) == 2 and node.op_type in ("Add", "Mul"):
            a, b = (self.exact(i, node) for i in dynamic)
            if node.op_type == "Mul":
                if self.b.shapes[a] != self.b.shapes[b] and len(self.b.shapes[a]) < 4:
                    raise ExportError(f"{describe(node)} broadcasts {self.b.shapes[a]} and "
                                      f"{self.b.shapes[b]}")
                big = a if int(np.prod(self.b.shapes[a])) >= int(np.prod(self.b.shapes[b])) else b
                self.env[out] = self.b.mul(big, b if big == a else a)
                return
            added = self.fused_act(out)
            y = self.b.add(a, b, added.name if added else "none",
                           added.alpha if added else LEAKY_ALPHA)
            self.finish_layer(out, added, y, self.prelu_slope(added))
            return
        raise ExportError(f"{describe(node)} on {len(dynamic)} computed input(s) has no "
                          "LayerGraph form")

    def fold_constant(self, node: onnx.NodeProto, x: str) -> bool:
        """Fold x * c, x / c or x + c (one value per output channel of the conv or linear
        layer that makes x, nothing else reading x) into that layer's weights, as TFLite's
        converter folds a layer scale; False when it does not apply."""
        g = self.g
        name = self.env.get(x)
        layer = next((layer for layer in reversed(self.b.layers) if layer.output == name), None)
        if layer is None or layer.op not in ("conv", "linear", "tlinear") \
                or layer.attrs.get("act") != "none" or g.sole_user(x) is not node \
                or node.op_type not in ("Mul", "Div", "Add"):
            return False
        value = g.const(next(i for i in node.input if i != x))
        shape = self.onnx_shape(x, node)
        channels = layer.weights["bias"].size
        axis = 1 if layer.op == "conv" else len(shape) - 1
        if value is None or value.ndim > len(shape):
            return False
        aligned = (1,) * (len(shape) - value.ndim) + tuple(value.shape)
        if any(d != 1 for i, d in enumerate(aligned) if i != axis) \
                or aligned[axis] not in (1, channels):
            return False
        value = np.broadcast_to(np.asarray(value, np.float32).ravel(), (channels,))
        if node.op_type == "Add":
            layer.weights["bias"] = layer.weights["bias"] + value
        else:
            factor = value if node.op_type == "Mul" else 1.0 / value
            shape = (-1,) + (1,) * (layer.weights["weight"].ndim - 1)
            layer.weights["weight"] = layer.weights["weight"] * factor.reshape(shape)
            layer.weights["bias"] = layer.weights["bias"] * factor
        self.env[node.output[0]] = name
        return True

    # --- normalization ----------------------------------------------------------------------
    def layernorm(self, node: onnx.NodeProto) -> None:
        a = attrs(node)
        x = node.input[0]
        rank = len(self.onnx_shape(x, node))
        if int(a.get("axis", -1)) % rank != rank - 1:
            raise ExportError(f"{describe(node)} normalises from axis {a['axis']}; the "
                              "LayerGraph normalises the last axis")
        c = self.onnx_shape(x, node)[-1]
        scale = self.const(node.input[1], node, "scale")
        bias = (self.const(node.input[2], node, "bias") if len(node.input) > 2 and node.input[2]
                else np.zeros(c, np.float32))
        self.env[node.output[0]] = self.norm(self.exact(x, node), [rank - 1], float(
            a.get("epsilon", 1e-5)), scale, bias)

    def norm(self, x: str, axes: list[int], eps: float, scale: np.ndarray, bias: np.ndarray
             ) -> str:
        """Layer normalization of LayerGraph tensor x over `axes`: the last axis, or the
        channels of an image (permuted channels-last and back: no data moves in NHWC)."""
        shape = self.b.shapes[x]
        if axes == [len(shape) - 1]:
            y = self.b.layernorm(x, eps)
            self.b.set_weights(scale=scale, bias=bias)
            return y
        if axes != [1] or len(shape) != 4:
            raise ExportError(f"layer normalization over axes {axes} of {shape}")
        y = self.b.layernorm(self.b.transpose(x, (0, 2, 3, 1), as_stored=True), eps)
        self.b.set_weights(scale=scale, bias=bias)
        return self.b.transpose(y, (0, 3, 1, 2), image=True)

    def decomposed_layernorm(self, node: onnx.NodeProto) -> bool:
        """ReduceMean -> Sub -> Pow/Mul -> ReduceMean -> Add eps -> Sqrt -> Div [-> Mul scale]
        [-> Add bias] (the parser's `match_decomposed_layernorm`) as one layer norm."""
        match = match_decomposed_layernorm(self.g, node)
        if match is None:
            return False
        x = node.input[0]
        shape = self.onnx_shape(x, node)
        axes = reduce_axes(self.g, node, len(shape)) or []
        c = int(np.prod([shape[i] for i in axes]))
        div = next(i for i, n in enumerate(match.nodes) if n.op_type == "Div")
        var = [n for n in match.nodes if n.op_type == "ReduceMean"][1]
        eps_add = self.g.sole_user(var.output[0])
        eps = float(self.const(next(i for i in eps_add.input if i != var.output[0]), eps_add,
                               "epsilon").ravel()[0])
        scale, bias = np.ones(c, np.float32), np.zeros(c, np.float32)
        out = match.nodes[div].output[0]
        for affine in match.nodes[div + 1:]:
            value = self.const(next(i for i in affine.input if i != out), affine, "affine")
            if affine.op_type == "Mul":
                scale = value.ravel()
            else:
                bias = value.ravel()
            out = affine.output[0]
        if axes != [1] and axes != [len(shape) - 1]:
            raise ExportError(f"{describe(node)} normalises axes {axes} of {shape}")
        self.consume(match.nodes)
        self.env[out] = self.norm(self.exact(x, node), axes, eps, scale, bias)
        return True

    def softmax(self, node: onnx.NodeProto) -> None:
        rank = len(self.onnx_shape(node.input[0], node))
        axis = int(attrs(node).get("axis", -1 if self.g.opset >= 13 else 1)) % rank
        if axis != rank - 1 or (self.g.opset < 13 and rank > 2):
            raise ExportError(f"{describe(node)} normalises axis {axis}; the LayerGraph's "
                              "softmax normalises the last axis")
        self.env[node.output[0]] = self.b.softmax(self.exact(node.input[0], node))

    def resize(self, node: onnx.NodeProto) -> None:
        """Resize of H and W: nearest as PyTorch's (asymmetric, floor) or bilinear with
        half-pixel centres, to the size shape inference gives."""
        x = node.input[0]
        n, c, h, w = self.onnx_shape(x, node)
        out = self.onnx_shape(node.output[0], node)
        mode = text_attr(node, "mode", "nearest")
        transform = text_attr(node, "coordinate_transformation_mode", "half_pixel")
        nearest = (mode == "nearest" and transform == "asymmetric"
                   and text_attr(node, "nearest_mode", "round_prefer_floor") == "floor")
        linear = mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel")
        if out[:2] != (n, c) or not (nearest or linear):
            raise ExportError(f"{describe(node)} resizes in mode {mode!r} ({transform}) or "
                              "other axes than H and W")
        scale = out[2] // h if out[2] % h == 0 and out[2] // h == out[3] / w else 0
        self.env[node.output[0]] = self.b.resize(
            self.exact(x, node), scale, "nearest" if nearest else "bilinear",
            None if scale else (out[2], out[3]))

    # --- parts of a tensor ------------------------------------------------------------------
    def gather(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        index = self.g.const(node.input[1])
        if x in self.g.static or index is None or index.size != 1 or index.ndim:
            raise ExportError(f"{describe(node)} gathers other than one constant index of a "
                              "computed tensor")
        shape = self.onnx_shape(x, node)
        axis = int(attrs(node).get("axis", 0)) % len(shape)
        self.env[node.output[0]] = self.b.gather(self.exact(x, node),
                                                 int(index) % shape[axis], axis)

    def slice(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        shape, out = self.onnx_shape(x, node), self.onnx_shape(node.output[0], node)
        changed = [a for a in range(len(shape)) if shape[a] != out[a]]
        if not changed:
            self.view(node)
            return
        starts, axes, steps = (self.g.const_ints(node.input[i]) if len(node.input) > i
                               and node.input[i] else None for i in (1, 3, 4))
        axes = axes if axes is not None else list(range(len(starts or [])))
        if len(changed) != 1 or starts is None or any(s != 1 for s in steps or []):
            raise ExportError(f"{describe(node)} slices other than one range of one axis")
        axis = changed[0]
        start = next(s for s, a in zip(starts, axes, strict=False) if a % len(shape) == axis)
        start = min(max(start + shape[axis] if start < 0 else start, 0), shape[axis])
        self.part(node, x, node.output[0], axis, start, out[axis])

    def split(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        shape = self.onnx_shape(x, node)
        axis = int(attrs(node).get("axis", 0)) % len(shape)
        start = 0
        for out in node.output:
            size = self.onnx_shape(out, node)[axis]
            if out:
                self.part(node, x, out, axis, start, size)
            start += size

    def part(self, node: onnx.NodeProto, x: str, out: str, axis: int, start: int, size: int
             ) -> None:
        """x[start:start + size] along `axis` into ONNX tensor `out`: one entry whose axis a
        Squeeze drops is a gather (as the parser prices it, and as q, k and v are taken from
        the stacked qkv), else a slice."""
        squeeze = self.g.sole_user(out)
        rank = len(self.onnx_shape(x, node))
        if size == 1 and squeeze is not None and squeeze.op_type == "Squeeze":
            axes = attrs(squeeze).get("axes")
            if axes is None and len(squeeze.input) > 1 and squeeze.input[1]:
                axes = self.g.const_ints(squeeze.input[1])
            if axes is None or axis in {int(a) % rank for a in axes}:
                self.env[out] = self.b.gather(self.exact(x, node), start, axis)
                return
        self.env[out] = self.b.slice(self.exact(x, node), start, start + size, axis)

    # --- layout -----------------------------------------------------------------------------
    def transpose(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        shape = self.onnx_shape(x, node)
        perm = [int(p) for p in attrs(node).get("perm", reversed(range(len(shape))))]
        out = node.output[0]
        image = len(shape) == 4 and self.g.is_image(out)
        self.env[out] = self.b.transpose(self.exact(x, node), perm, image, as_stored=True)

    def view(self, node: onnx.NodeProto) -> None:
        self.env[node.output[0]] = self.data(node.input[0], node)

    def pad(self, node: onnx.NodeProto) -> None:
        if pad_into_conv(self.g, node) is not None:  # the Conv after it takes the padding
            return
        raise ExportError(f"{describe(node)} pads other than into the conv it feeds")

    def concat(self, node: onnx.NodeProto) -> None:
        """Concat of computed tensors, or constant tokens put before [N, T, C] tokens (class
        and distillation tokens)."""
        inputs = [i for i in node.input if i]
        shape = self.onnx_shape(node.output[0], node)
        axis = int(attrs(node).get("axis", 0)) % len(shape)
        constants = [i for i in inputs if i in self.g.static]
        if constants:
            x = inputs[-1]
            if len(shape) != 3 or axis != 1 or x in constants:
                raise ExportError(f"{describe(node)} concatenates constants with computed "
                                  f"tensors along axis {axis} of {shape}")
            value = np.concatenate([self.const(i, node, "token")[:1] for i in inputs[:-1]],
                                   axis=1)
            self.env[node.output[0]] = self.b.cls_token(self.exact(x, node), value.shape[1])
            self.b.set_weights(value=value)
            return
        if len(inputs) == 1:
            self.view(node)
            return
        self.env[node.output[0]] = self.b.concat([self.exact(i, node) for i in inputs], axis)


def _fold_bn(conv: _Converter, bn: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Conv weights with the BatchNormalization after it folded in (inference statistics)."""
    scale, shift, mean, var = (conv.const(t, bn, what) for t, what in
                               zip(bn.input[1:5], ("scale", "bias", "mean", "variance"),
                                   strict=True))
    factor = scale / np.sqrt(var + float(attrs(bn).get("epsilon", 1e-5)))
    return weight * factor[:, None, None, None], (bias - mean) * factor + shift


def _graph_inputs(g: OnnxGraph) -> list[str]:
    """The model's computed inputs (tensors no node makes that are not constants), in the
    order nodes first read them."""
    seen: dict[str, None] = {}
    for node in g.nodes:
        for name in node.input:
            if name and name not in g.producer and name not in g.static:
                seen.setdefault(name, None)
    return list(seen)


_HANDLERS: dict[str, Callable[[_Converter, onnx.NodeProto], None]] = {
    "Conv": _Converter.conv,
    "BatchNormalization": _Converter.batchnorm,
    "MaxPool": _Converter.pool,
    "AveragePool": _Converter.pool,
    "GlobalAveragePool": _Converter.global_pool,
    "ReduceMean": _Converter.reduce_mean,
    "Gemm": _Converter.gemm,
    "MatMul": _Converter.matmul,
    **{op: _Converter.activation for op in ("Relu", "Clip", "HardSwish", "HardSigmoid",
                                           "Sigmoid", "Tanh", "LeakyRelu", "PRelu", "Gelu",
                                           "Erf", "Softplus", "Mish", "Swish")},
    **{op: _Converter.elementwise for op in ("Add", "Mul", "Sub", "Div", "Pow")},
    **{op: _Converter.view for op in PASS_THROUGH_OPS},  # views: row-major order kept
    "Pad": _Converter.pad,
    "Transpose": _Converter.transpose,
    "Softmax": _Converter.softmax,
    "Resize": _Converter.resize,
    "Gather": _Converter.gather,
    "Slice": _Converter.slice,
    "Split": _Converter.split,
    "LayerNormalization": _Converter.layernorm,
    "Concat": _Converter.concat,
}


def onnx_to_graph(model: bytes | str | Path | onnx.ModelProto, *,
                  input_shapes: ShapeMap | None = None) -> LayerGraph:
    """The LayerGraph of an ONNX model, with its weights (float32, fixed shapes: a symbolic
    batch is read as 1, other symbolic dims come from `input_shapes`). Raises ExportError
    naming the first node the LayerGraph cannot express."""
    proto, source = load_model(model)
    g = concrete_graph(proto, source, input_shapes)
    try:
        return _Converter(g).run()
    except ExportError as exc:
        raise ExportError(f"{source} -> LayerGraph: {exc}") from exc
