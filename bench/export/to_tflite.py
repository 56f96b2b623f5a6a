"""LayerGraph -> TFLite flatbuffer, written directly with the schema object API (no TensorFlow).

The IR is NCHW with PyTorch semantics; TFLite is NHWC. Activations are stored NHWC (or [N, C]
after a linear layer), weights are permuted once here, and every padding the IR asks for is
reproduced exactly: TFLite SAME only where it places the windows exactly where the symmetric
PyTorch padding does, otherwise an explicit PAD (zeros) or PADV2 (very negative, for max pool)
followed by a VALID op. Average pooling therefore counts padded zeros (count_include_pad=True).

Grouped convolution (1 < groups < cin) is written as a native grouped CONV_2D (version 6: input
channels = filter in-channels * groups). LiteRT 2.3 runs it correctly with XNNPACK and with its
builtin kernels, but the builtin path falls back to a slow generic loop (about 5x slower than
SPLIT + per-group CONV_2D + CONCATENATION on a 56x56x128 g=4 3x3 conv), and runtimes older than
grouped-conv support reject version 6. `native_groups=False` selects the split lowering.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from latbench.bench.export.graph import Layer, LayerGraph
from latbench.errors import ExportError

logger = logging.getLogger(__name__)

# Activations a TFLite op can fuse; everything else becomes separate ops after it.
_FUSABLE = ("none", "relu", "relu6")
_BUFFER_ALIGN = 16  # weight data aligned for SIMD loads and zero-copy use by delegates


def _nhwc(shape: Sequence[int]) -> list[int]:
    """NCHW shape -> NHWC; 2-D [N, C] shapes are shared by both layouts."""
    if len(shape) == 4:
        n, c, h, w = shape
        return [int(n), int(h), int(w), int(c)]
    return [int(d) for d in shape]


def same_padding_matches(size: int, kernel: int, stride: int, pad: int) -> bool:
    """Whether TFLite SAME padding places the windows exactly as symmetric padding `pad` does.

    Both give the same output size and the same offset of the first window; the extra rows
    SAME may add at the end are never read when the sizes agree, so the results are identical.
    """
    out_torch = (size + 2 * pad - kernel) // stride + 1
    out_same = -(-size // stride)
    before = max((out_same - 1) * stride + kernel - size, 0) // 2
    return out_torch == out_same and before == pad


class _ModelWriter:
    """Collects tensors, buffers, operator codes and operators of one TFLite subgraph."""

    def __init__(self, schema: Any) -> None:
        self.s = schema
        self.tensors: list[Any] = []
        self.buffer_class = _aligned_buffer_class(schema)
        self.buffers: list[Any] = [schema.BufferT()]  # buffer 0: the empty sentinel
        self.opcodes: list[Any] = []
        self.opcode_index: dict[tuple[int, int], int] = {}
        self.operators: list[Any] = []
        self.count = 0

    # --- tensors ------------------------------------------------------------------------------
    def tensor(self, shape: Sequence[int], name: str, ttype: int | None = None,
               data: np.ndarray | None = None) -> int:
        """A tensor named `name`; with `data` it is a constant holding its own buffer."""
        s = self.s
        buffer = 0
        if data is not None:
            buffer = len(self.buffers)
            buf = self.buffer_class()
            buf.data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
            self.buffers.append(buf)
        t = s.TensorT()
        t.shape = np.asarray(list(shape), np.int32)
        t.type = s.TensorType.FLOAT32 if ttype is None else ttype
        t.buffer = buffer
        t.name = name
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, hint: str, value: np.ndarray) -> int:
        value = np.asarray(value)
        if value.dtype == np.float32:
            ttype = self.s.TensorType.FLOAT32
        elif value.dtype == np.int32:
            ttype = self.s.TensorType.INT32
        else:
            raise ExportError(f"TFLite constant {hint!r} has unsupported dtype {value.dtype}")
        return self.tensor(value.shape, self.unique(hint), ttype, value)

    def temp(self, shape: Sequence[int], hint: str) -> int:
        return self.tensor(shape, self.unique(hint))

    def unique(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def shape(self, index: int) -> list[int]:
        return [int(d) for d in self.tensors[index].shape]

    # --- operators ----------------------------------------------------------------------------
    def op(self, name: str, inputs: Sequence[int], outputs: Sequence[int],
           options: Any = None, version: int = 1) -> None:
        s = self.s
        code = getattr(s.BuiltinOperator, name)
        key = (code, version)
        if key not in self.opcode_index:
            oc = s.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, s.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            oc.version = version
            self.opcode_index[key] = len(self.opcodes)
            self.opcodes.append(oc)
        op = s.OperatorT()
        op.opcodeIndex = self.opcode_index[key]
        op.inputs = np.asarray(list(inputs), np.int32)
        op.outputs = np.asarray(list(outputs), np.int32)
        if options is not None:
            op.builtinOptionsType = getattr(s.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        self.operators.append(op)

    def fused(self, act: str) -> int:
        return {"none": self.s.ActivationFunctionType.NONE,
                "relu": self.s.ActivationFunctionType.RELU,
                "relu6": self.s.ActivationFunctionType.RELU6}[act]

    def activation(self, x: int, act: str, out: int) -> None:
        """Standalone activation `act` from tensor x into tensor out (compositions are exact)."""
        s = self.s
        shape = self.shape(x)
        if act == "none":  # identity; the layer's output must still be a tensor of its own
            self.op("RESHAPE", [x, self.const("shape", np.asarray(shape, np.int32))], [out],
                    s.ReshapeOptionsT(newShape=list(shape)))
        elif act == "relu":
            self.op("RELU", [x], [out])
        elif act == "relu6":
            self.op("RELU6", [x], [out])
        elif act == "hswish":
            self.op("HARD_SWISH", [x], [out])
        elif act == "sigmoid":
            self.op("LOGISTIC", [x], [out])
        elif act == "swish":
            gate = self.temp(shape, "sigmoid")
            self.op("LOGISTIC", [x], [gate])
            self.op("MUL", [x, gate], [out], s.MulOptionsT())
        elif act == "hsigmoid":  # relu6(x + 3) / 6
            shifted = self.temp(shape, "hsig_shift")
            three = self.const("three", np.asarray([3.0], np.float32))
            sixth = self.const("sixth", np.asarray([1.0 / 6.0], np.float32))
            self.op("ADD", [x, three], [shifted],
                    s.AddOptionsT(fusedActivationFunction=self.fused("relu6")))
            self.op("MUL", [shifted, sixth], [out], s.MulOptionsT())
        else:
            raise ExportError(f"TFLite export has no activation {act!r}")

    def with_act(self, act: str, out: int, emit: Any) -> None:
        """Run emit(target, fused_code): fuse act when TFLite can, else add ops after it."""
        if act in _FUSABLE:
            emit(out, self.fused(act))
            return
        raw = self.temp(self.shape(out), "pre_act")
        emit(raw, self.fused("none"))
        self.activation(raw, act, out)

    # --- serialisation ------------------------------------------------------------------------
    def finish(self, inputs: list[int], outputs: list[int], name: str) -> bytes:
        import flatbuffers

        s = self.s
        subgraph = s.SubGraphT()
        subgraph.tensors = self.tensors
        subgraph.inputs = np.asarray(inputs, np.int32)
        subgraph.outputs = np.asarray(outputs, np.int32)
        subgraph.operators = self.operators
        subgraph.name = "main"
        model = s.ModelT()
        model.version = 3
        model.description = name
        model.operatorCodes = self.opcodes
        model.subgraphs = [subgraph]
        model.buffers = self.buffers
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _aligned_buffer_class(schema: Any) -> type:
    """A BufferT whose bytes start on a 16-byte boundary (the stock Pack aligns them to 1)."""

    class AlignedBufferT(schema.BufferT):
        def Pack(self, builder: Any) -> int:  # noqa: N802 - flatbuffers naming
            payload = self.data.tobytes()
            builder.StartVector(1, len(payload), _BUFFER_ALIGN)
            builder.head = builder.head - len(payload)
            builder.Bytes[builder.head:builder.head + len(payload)] = payload
            vector = builder.EndVector()
            schema.BufferStart(builder)
            schema.BufferAddData(builder, vector)
            return schema.BufferEnd(builder)

    return AlignedBufferT


class _Lowering:
    """Walks the graph's layers and emits TFLite operators, NHWC."""

    def __init__(self, graph: LayerGraph, native_groups: bool) -> None:
        from ai_edge_litert import schema_py_generated as schema

        self.s = schema
        self.graph = graph
        self.native_groups = native_groups
        self.w = _ModelWriter(schema)
        self.index: dict[str, int] = {}

    def run(self, name: str) -> bytes:
        g = self.graph
        for x in g.inputs:
            self.index[x] = self.w.tensor(_nhwc(g.shapes[x]), x)
        for layer in g.layers:
            out = self.w.tensor(_nhwc(g.shapes[layer.output]), layer.output)
            self.index[layer.output] = out
            self.layer(layer, out)
        if g.output_name not in self.index:
            raise ExportError(f"graph output {g.output_name!r} is produced by no layer")
        logger.debug("TFLite model %s: %d operators, %d tensors, %d buffers", name,
                     len(self.w.operators), len(self.w.tensors), len(self.w.buffers))
        return self.w.finish([self.index[x] for x in g.inputs], [self.index[g.output_name]],
                             name)

    def layer(self, layer: Layer, out: int) -> None:
        a, op, s, w = layer.attrs, layer.op, self.s, self.w
        xs = [self.index[i] for i in layer.inputs]
        if op == "conv":
            self.conv(layer, xs[0], out)
        elif op == "linear":
            self.linear(layer, xs[0], out)
        elif op == "add":
            w.with_act(a["act"], out, lambda t, f: w.op(
                "ADD", xs, [t], s.AddOptionsT(fusedActivationFunction=f)))
        elif op == "mul":
            w.op("MUL", xs, [out], s.MulOptionsT())
        elif op == "act":
            w.activation(xs[0], a["act"], out)
        elif op == "pool":
            self.pool(layer, xs[0], out)
        elif op == "gpool":
            axes = w.const("axes", np.asarray([1, 2], np.int32))
            w.op("MEAN", [xs[0], axes], [out], s.ReducerOptionsT(keepDims=True))
        elif op == "concat":
            if any(len(w.shape(x)) != 4 for x in xs):
                raise ExportError(f"TFLite concat {layer.output} needs 4-D NHWC inputs")
            w.op("CONCATENATION", xs, [out], s.ConcatenationOptionsT(axis=3))
        else:
            raise ExportError(f"TFLite export has no layer op {op!r}")

    # --- padding ------------------------------------------------------------------------------
    def padded(self, x: int, kernel: int, stride: int, pad: int, *, same_ok: bool,
               value: float = 0.0) -> tuple[int, int]:
        """(tensor, Padding) reproducing symmetric `pad`: SAME if identical, else PAD + VALID."""
        s, w = self.s, self.w
        n, h, wd, c = w.shape(x)
        if pad == 0:
            return x, s.Padding.VALID
        if same_ok and all(same_padding_matches(d, kernel, stride, pad) for d in (h, wd)):
            return x, s.Padding.SAME
        paddings = w.const("paddings", np.asarray([[0, 0], [pad, pad], [pad, pad], [0, 0]],
                                                  np.int32))
        y = w.temp([n, h + 2 * pad, wd + 2 * pad, c], "pad")
        if value == 0.0:
            w.op("PAD", [x, paddings], [y], s.PadOptionsT())
        else:
            fill = w.const("pad_value", np.asarray([value], np.float32))
            w.op("PADV2", [x, paddings, fill], [y], s.PadV2OptionsT())
        return y, s.Padding.VALID

    # --- layers -------------------------------------------------------------------------------
    def conv(self, layer: Layer, x: int, out: int) -> None:
        a, s, w = layer.attrs, self.s, self.w
        k, stride, groups = a["kernel"], a["stride"], a["groups"]
        weight, bias = layer.weights["weight"], layer.weights["bias"]
        cout, cin_g = weight.shape[:2]
        cin = cin_g * groups
        x, padding = self.padded(x, k, stride, a["pad"], same_ok=True)
        if groups == 1 or (groups > 1 and self.native_groups and groups != cin):
            wt = w.const("filter", weight.transpose(0, 2, 3, 1))  # OIHW -> OHWI
            bt = w.const("bias", bias)
            version = 6 if groups > 1 else 1
            w.with_act(a["act"], out, lambda t, f: w.op(
                "CONV_2D", [x, wt, bt], [t],
                s.Conv2DOptionsT(padding=padding, strideW=stride, strideH=stride,
                                 fusedActivationFunction=f), version))
        elif groups == cin:  # depthwise, with depth multiplier cout / cin
            wt = w.const("filter", weight.transpose(1, 2, 3, 0))  # [1, kh, kw, cout]
            bt = w.const("bias", bias)
            w.with_act(a["act"], out, lambda t, f: w.op(
                "DEPTHWISE_CONV_2D", [x, wt, bt], [t],
                s.DepthwiseConv2DOptionsT(padding=padding, strideW=stride, strideH=stride,
                                          depthMultiplier=cout // cin,
                                          fusedActivationFunction=f)))
        else:
            self.split_conv(layer, x, padding, out)

    def split_conv(self, layer: Layer, x: int, padding: int, out: int) -> None:
        """Grouped conv as SPLIT + per-group CONV_2D + CONCATENATION (channels are contiguous)."""
        a, s, w = layer.attrs, self.s, self.w
        stride, groups = a["stride"], a["groups"]
        weight, bias = layer.weights["weight"], layer.weights["bias"]
        cout_g = weight.shape[0] // groups
        n, h, wd, c = w.shape(x)
        parts = [w.temp([n, h, wd, c // groups], "group_in") for _ in range(groups)]
        axis = w.const("axis", np.asarray(3, np.int32))
        w.op("SPLIT", [axis, x], parts, s.SplitOptionsT(numSplits=groups))
        oshape = w.shape(out)
        fused_code = w.fused(a["act"]) if a["act"] in _FUSABLE else w.fused("none")
        outs = []
        for g, part in enumerate(parts):
            sl = slice(g * cout_g, (g + 1) * cout_g)
            wt = w.const("filter", weight[sl].transpose(0, 2, 3, 1))
            bt = w.const("bias", np.ascontiguousarray(bias[sl]))
            y = w.temp(oshape[:3] + [cout_g], "group_out")
            w.op("CONV_2D", [part, wt, bt], [y],
                 s.Conv2DOptionsT(padding=padding, strideW=stride, strideH=stride,
                                  fusedActivationFunction=fused_code))
            outs.append(y)
        if a["act"] in _FUSABLE:
            w.op("CONCATENATION", outs, [out], s.ConcatenationOptionsT(axis=3))
            return
        cat = w.temp(oshape, "group_cat")
        w.op("CONCATENATION", outs, [cat], s.ConcatenationOptionsT(axis=3))
        w.activation(cat, a["act"], out)

    def linear(self, layer: Layer, x: int, out: int) -> None:
        a, s, w = layer.attrs, self.s, self.w
        weight, bias = layer.weights["weight"], layer.weights["bias"]
        shape = w.shape(x)
        if len(shape) == 4 and shape[1] * shape[2] > 1:
            # The IR flattens NCHW (C, H, W order); the NHWC tensor flattens as (H, W, C).
            n, h, wd, c = shape
            weight = weight.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
        wt = w.const("weights", np.ascontiguousarray(weight))
        bt = w.const("bias", bias)
        w.with_act(a["act"], out, lambda t, f: w.op(
            "FULLY_CONNECTED", [x, wt, bt], [t],
            s.FullyConnectedOptionsT(fusedActivationFunction=f)))

    def pool(self, layer: Layer, x: int, out: int) -> None:
        a, s, w = layer.attrs, self.s, self.w
        k, stride, pad = a["kernel"], a["stride"], a["pad"]
        if a["pool"] == "avg":  # TFLite SAME excludes padding from the count: never use it
            x, padding, name = *self.padded(x, k, stride, pad, same_ok=False), "AVERAGE_POOL_2D"
        elif a["pool"] == "max":
            # SAME ignores padding, which equals padding with -inf. Where SAME would misplace
            # the windows, PADV2 runs on the builtin kernels: XNNPACK does not take it.
            low = float(np.finfo(np.float32).min)
            x, padding, name = *self.padded(x, k, stride, pad, same_ok=True, value=low), \
                "MAX_POOL_2D"
        else:
            raise ExportError(f"TFLite export has no pool type {a['pool']!r}")
        w.op(name, [x], [out], s.Pool2DOptionsT(padding=padding, strideW=stride, strideH=stride,
                                                filterWidth=k, filterHeight=k))


def to_tflite(graph: LayerGraph, name: str = "latbench", *, native_groups: bool = True) -> bytes:
    """Serialise a graph as a TFLite model (float32, fixed shapes, NHWC inputs and outputs).

    Inputs and the output are NHWC (or [N, C] after a linear layer): callers transpose NCHW
    data with `(0, 2, 3, 1)` on the way in and `(0, 3, 1, 2)` on the way out.
    `native_groups=False` lowers grouped convolutions to SPLIT + CONV_2D + CONCATENATION.
    """
    return _Lowering(graph, native_groups).run(name)
