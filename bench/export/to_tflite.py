"""LayerGraph -> TFLite flatbuffer, written directly with the schema object API (no TensorFlow).

The IR is NCHW with PyTorch semantics; TFLite is NHWC. Image activations are stored NHWC (or
[N, C] after a linear layer), plain tensors (token tensors, attention's [N, heads, T, D]) as
they are; a layer reading a tensor stored the other way gets a TRANSPOSE first. Weights are
permuted once here, and every padding the IR asks for is reproduced exactly: TFLite SAME only
where it places the windows exactly where the symmetric PyTorch padding does, otherwise an
explicit PAD (zeros) or PADV2 (very negative, for max pool) followed by a VALID op. Average
pooling therefore counts padded zeros (count_include_pad=True).

Transformer layers map to FULLY_CONNECTED (keep_num_dims), BATCH_MATMUL, SOFTMAX, TRANSPOSE,
CONCATENATION, GATHER and ADD; GELU (exact and tanh forms) to GELU. TFLite has no layer or
instance normalization, softplus or mish op: they are written as the converter writes them,
MEAN / SUB / MUL / RSQRT / ADD, and x * TANH(LOG(1 + EXP(x))). A transposed convolution is
TRANSPOSE_CONV (VALID) then a slice of the PyTorch padding; grouped transposed convolutions have
no TFLite form (TRANSPOSE_CONV has no groups) and raise ExportError, so the LiteRT runner
refuses them before anything is measured.

Grouped convolution (1 < groups < cin) is written as a native grouped CONV_2D (version 6: input
channels = filter in-channels * groups). LiteRT 2.3 runs it correctly with XNNPACK and with its
builtin kernels, but the builtin path falls back to a slow generic loop (about 5x slower than
SPLIT + per-group CONV_2D + CONCATENATION on a 56x56x128 g=4 3x3 conv), and runtimes older than
grouped-conv support reject version 6. `native_groups=False` selects the split lowering.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latbench.bench.export import tflite_precision as precision
from latbench.bench.export.graph import ELEMENTWISE_OPS, PLAIN_INPUT_OPS, Layer, LayerGraph
from latbench.bench.ops import DTYPES, LEAKY_ALPHA
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


# NCHW axis -> NHWC axis of an image tensor.
_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}


def same_padding_matches(size: int, kernel: int, stride: int, pad: int) -> bool:
    """Whether TFLite SAME padding places the windows exactly as symmetric padding `pad` does
    (`kernel`: the dilated extent, dilation * (k - 1) + 1).

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
        # INT8: tensors whose zero point is pinned - True 0, False not 0 (else calibrated)
        self.symmetric: dict[int, bool] = {}

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
    def opcode(self, name: str, version: int) -> int:
        """Index of the operator code of builtin `name` at `version`, added when new."""
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
        return self.opcode_index[key]

    def op(self, name: str, inputs: Sequence[int], outputs: Sequence[int],
           options: Any = None, version: int = 1) -> None:
        s = self.s
        op = s.OperatorT()
        op.opcodeIndex = self.opcode(name, version)
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

    def activation(self, x: int, act: str, out: int, params: dict[str, Any] | None = None
                   ) -> None:
        """Standalone activation `act` from tensor x into tensor out (compositions are exact);
        `params` holds leakyrelu's "alpha" and prelu's "slope" (one per channel, last axis)."""
        s = self.s
        shape = self.shape(x)
        params = params or {}
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
        elif act in ("gelu", "gelu_tanh"):
            self.op("GELU", [x], [out], s.GeluOptionsT(approximate=act == "gelu_tanh"))
        elif act == "tanh":
            self.op("TANH", [x], [out])
        elif act == "leakyrelu":
            self.op("LEAKY_RELU", [x], [out], s.LeakyReluOptionsT(alpha=float(params["alpha"])))
        elif act == "prelu":
            self.op("PRELU", [x, self.const("slope", params["slope"])], [out])
        elif act == "mish":  # x * tanh(softplus(x)), softplus = log(1 + exp(x))
            e = self.temp(shape, "exp")
            self.op("EXP", [x], [e])
            sp = self.temp(shape, "softplus")
            self.op("ADD", [e, self.const("one", np.asarray([1.0], np.float32))], [sp],
                    s.AddOptionsT())
            log = self.temp(shape, "log")
            self.op("LOG", [sp], [log])
            t = self.temp(shape, "tanh")
            self.op("TANH", [log], [t])
            self.op("MUL", [x, t], [out], s.MulOptionsT())
        else:
            raise ExportError(f"TFLite export has no activation {act!r}")

    def with_act(self, act: str, out: int, emit: Any, params: dict[str, Any] | None = None
                 ) -> None:
        """Run emit(target, fused_code): fuse act when TFLite can, else add ops after it."""
        if act in _FUSABLE:
            emit(out, self.fused(act))
            return
        raw = self.temp(self.shape(out), "pre_act")
        emit(raw, self.fused("none"))
        self.activation(raw, act, out, params)

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

    def run(self, name: str) -> tuple[list[int], list[int]]:
        """Lower every layer into the writer; the subgraph's (inputs, outputs)."""
        g = self.graph
        for x in g.inputs:
            self.index[x] = self.w.tensor(tflite_shape(g, x), x)
        for layer in g.layers:
            out = self.w.tensor(tflite_shape(g, layer.output), layer.output)
            self.index[layer.output] = out
            self.layer(layer, out)
        if g.output_name not in self.index:
            raise ExportError(f"graph output {g.output_name!r} is produced by no layer")
        return [self.index[x] for x in g.inputs], [self.index[g.output_name]]

    def read(self, name: str, image: bool) -> int:
        """Tensor `name` stored as an NHWC image (`image`) or as it is: a TRANSPOSE where the
        graph stored it the other way (4-D tensors only)."""
        x = self.index[name]
        if len(self.graph.shapes[name]) != 4 or self.graph.is_image(name) == image:
            return x
        perm = [0, 2, 3, 1] if image else [0, 3, 1, 2]
        shape = self.w.shape(x)
        y = self.w.temp([shape[p] for p in perm], "layout")
        self.w.op("TRANSPOSE", [x, self.w.const("perm", np.asarray(perm, np.int32))], [y],
                  self.s.TransposeOptionsT())
        return y

    def layer(self, layer: Layer, out: int) -> None:
        a, op, s, w = layer.attrs, layer.op, self.s, self.w
        # elementwise layers run in the layout their output is stored in
        image = (self.graph.is_image(layer.output) if op in ELEMENTWISE_OPS
                 else op not in PLAIN_INPUT_OPS)
        # a reshape (and a transpose `as_stored`) reads its input as stored: it handles the
        # layouts itself
        raw = op == "reshape" or (op == "transpose" and a.get("as_stored", False))
        xs = [self.index[i] if raw else self.read(i, image) for i in layer.inputs]
        params = _act_params(layer)
        if op == "conv":
            self.conv(layer, xs[0], out)
        elif op == "linear":
            self.linear(layer, xs[0], out)
        elif op == "add":
            w.with_act(a["act"], out, lambda t, f: w.op(
                "ADD", xs, [t], s.AddOptionsT(fusedActivationFunction=f)), params)
        elif op == "mul":
            w.op("MUL", xs, [out], s.MulOptionsT())
        elif op == "act":
            w.activation(xs[0], a["act"], out, params)
        elif op == "pool":
            self.pool(layer, xs[0], out)
        elif op == "gpool":
            axes = w.const("axes", np.asarray([1, 2], np.int32))
            w.op("MEAN", [xs[0], axes], [out], s.ReducerOptionsT(keepDims=True))
        elif op == "concat":
            axis = a.get("axis", 1)
            if any(len(w.shape(x)) != 4 for x in xs):
                raise ExportError(f"TFLite concat {layer.output} needs 4-D NHWC inputs")
            w.op("CONCATENATION", xs, [out], s.ConcatenationOptionsT(axis=_NHWC_AXIS[axis]))
        elif op in _LOWERINGS:
            _LOWERINGS[op](self, layer, xs, out)
        else:
            raise ExportError(f"TFLite export has no layer op {op!r}")

    # --- padding ------------------------------------------------------------------------------
    def padded(self, x: int, kernel: tuple[int, int], stride: int, pad: tuple[int, int], *,
               same_ok: bool, value: float = 0.0) -> tuple[int, int]:
        """(tensor, Padding) reproducing symmetric padding `pad` (H, W) for a window `kernel`
        (H, W; dilated extents): SAME if identical, else PAD + VALID."""
        s, w = self.s, self.w
        n, h, wd, c = w.shape(x)
        ph, pw = pad
        if ph == pw == 0:
            return x, s.Padding.VALID
        if same_ok and all(same_padding_matches(d, k, stride, p)
                           for d, k, p in ((h, kernel[0], ph), (wd, kernel[1], pw))):
            return x, s.Padding.SAME
        paddings = w.const("paddings", np.asarray([[0, 0], [ph, ph], [pw, pw], [0, 0]],
                                                  np.int32))
        y = w.temp([n, h + 2 * ph, wd + 2 * pw, c], "pad")
        if value == 0.0:
            w.op("PAD", [x, paddings], [y], s.PadOptionsT())
        else:
            fill = w.const("pad_value", np.asarray([value], np.float32))
            w.op("PADV2", [x, paddings, fill], [y], s.PadV2OptionsT())
        return y, s.Padding.VALID

    # --- layers -------------------------------------------------------------------------------
    def conv(self, layer: Layer, x: int, out: int) -> None:
        a, s, w = layer.attrs, self.s, self.w
        stride, groups, d = a["stride"], a["groups"], a.get("dilation", 1)
        weight, bias = layer.weights["weight"], layer.weights["bias"]
        cout, cin_g, kh, kw = weight.shape
        cin = cin_g * groups
        extent = (d * (kh - 1) + 1, d * (kw - 1) + 1)
        x, padding = self.padded(x, extent, stride, (a["pad"], a.get("pad_w", a["pad"])),
                                 same_ok=True)
        params = _act_params(layer)
        if groups == 1 or (groups > 1 and self.native_groups and groups != cin):
            wt = w.const("filter", weight.transpose(0, 2, 3, 1))  # OIHW -> OHWI
            bt = w.const("bias", bias)
            version = 6 if groups > 1 else 1
            w.with_act(a["act"], out, lambda t, f: w.op(
                "CONV_2D", [x, wt, bt], [t],
                s.Conv2DOptionsT(padding=padding, strideW=stride, strideH=stride,
                                 dilationWFactor=d, dilationHFactor=d,
                                 fusedActivationFunction=f), version), params)
        elif groups == cin:  # depthwise, with depth multiplier cout / cin
            wt = w.const("filter", weight.transpose(1, 2, 3, 0))  # [1, kh, kw, cout]
            bt = w.const("bias", bias)
            w.with_act(a["act"], out, lambda t, f: w.op(
                "DEPTHWISE_CONV_2D", [x, wt, bt], [t],
                s.DepthwiseConv2DOptionsT(padding=padding, strideW=stride, strideH=stride,
                                          depthMultiplier=cout // cin,
                                          dilationWFactor=d, dilationHFactor=d,
                                          fusedActivationFunction=f), 2 if d > 1 else 1),
                params)
        else:
            self.split_conv(layer, x, padding, out)

    def split_conv(self, layer: Layer, x: int, padding: int, out: int) -> None:
        """Grouped conv as SPLIT + per-group CONV_2D + CONCATENATION (channels are contiguous)."""
        a, s, w = layer.attrs, self.s, self.w
        stride, groups, d = a["stride"], a["groups"], a.get("dilation", 1)
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
                                  dilationWFactor=d, dilationHFactor=d,
                                  fusedActivationFunction=fused_code))
            outs.append(y)
        if a["act"] in _FUSABLE:
            w.op("CONCATENATION", outs, [out], s.ConcatenationOptionsT(axis=3))
            return
        cat = w.temp(oshape, "group_cat")
        w.op("CONCATENATION", outs, [cat], s.ConcatenationOptionsT(axis=3))
        w.activation(cat, a["act"], out, _act_params(layer))

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
            s.FullyConnectedOptionsT(fusedActivationFunction=f)), _act_params(layer))

    def pool(self, layer: Layer, x: int, out: int) -> None:
        a, s, w = layer.attrs, self.s, self.w
        k, stride, pad = a["kernel"], a["stride"], a["pad"]
        if a["pool"] == "avg":  # TFLite SAME excludes padding from the count
            exclude = bool(a.get("exclude_pad"))
            n, h, wd, c = w.shape(x)
            if exclude and not all(same_padding_matches(d, k, stride, pad) for d in (h, wd)):
                raise ExportError(f"an average pool of {k}x{k}, stride {stride}, pad {pad} over "
                                  f"{h}x{wd} without the padded zeros has no TFLite form")
            x, padding = self.padded(x, (k, k), stride, (pad, pad), same_ok=exclude)
            name = "AVERAGE_POOL_2D"
        elif a["pool"] == "max":
            # SAME ignores padding, which equals padding with -inf. Where SAME would misplace
            # the windows, PADV2 runs on the builtin kernels: XNNPACK does not take it.
            low = float(np.finfo(np.float32).min)
            x, padding = self.padded(x, (k, k), stride, (pad, pad), same_ok=True, value=low)
            name = "MAX_POOL_2D"
        else:
            raise ExportError(f"TFLite export has no pool type {a['pool']!r}")
        w.op(name, [x], [out], s.Pool2DOptionsT(padding=padding, strideW=stride, strideH=stride,
                                                filterWidth=k, filterHeight=k))

    # --- transformer layers -------------------------------------------------------------------
    def tlinear(self, layer: Layer, xs: list[int], out: int) -> None:
        """FULLY_CONNECTED over the last axis, other axes kept (keep_num_dims: version 5)."""
        s, w = self.s, self.w
        wt = w.const("weights", np.ascontiguousarray(layer.weights["weight"]))
        bt = w.const("bias", layer.weights["bias"])
        w.with_act(layer.attrs["act"], out, lambda t, f: w.op(
            "FULLY_CONNECTED", [xs[0], wt, bt], [t],
            s.FullyConnectedOptionsT(fusedActivationFunction=f, keepNumDims=True), 5),
            _act_params(layer))

    def normalize(self, layer: Layer, x: int, out: int, axes: list[int]) -> None:
        """(x - mean) * rsqrt(var + eps) * scale + bias over `axes` (stored axes), scale and
        bias along the last axis: layer and instance normalization as the converter writes
        them."""
        s, w = self.s, self.w
        shape = w.shape(x)
        reduced = [1 if i in axes else d for i, d in enumerate(shape)]
        axes_t = w.const("axes", np.asarray(axes, np.int32))
        mean = w.temp(reduced, "mean")
        w.op("MEAN", [x, axes_t], [mean], s.ReducerOptionsT(keepDims=True))
        centred = w.temp(shape, "centred")
        w.op("SUB", [x, mean], [centred], s.SubOptionsT())
        square = w.temp(shape, "square")
        w.op("MUL", [centred, centred], [square], s.MulOptionsT())
        var = w.temp(reduced, "var")
        w.op("MEAN", [square, axes_t], [var], s.ReducerOptionsT(keepDims=True))
        var_eps = w.temp(reduced, "var_eps")
        eps = w.const("eps", np.asarray([layer.attrs["eps"]], np.float32))
        w.op("ADD", [var, eps], [var_eps], s.AddOptionsT())
        inv = w.temp(reduced, "rsqrt")
        w.op("RSQRT", [var_eps], [inv])
        normed = w.temp(shape, "normed")
        w.op("MUL", [centred, inv], [normed], s.MulOptionsT())
        scaled = w.temp(shape, "scaled")
        w.op("MUL", [normed, w.const("scale", layer.weights["scale"])], [scaled], s.MulOptionsT())
        w.op("ADD", [scaled, w.const("bias", layer.weights["bias"])], [out], s.AddOptionsT())

    def cat_const(self, layer: Layer, xs: list[int], out: int) -> None:
        """The constant (tiled to the batch) then x, along the axis (plain tensors)."""
        batch = self.w.shape(xs[0])[0]
        token = np.ascontiguousarray(np.repeat(layer.weights["value"], batch, axis=0))
        self.w.op("CONCATENATION", [self.w.const("token", token), xs[0]], [out],
                  self.s.ConcatenationOptionsT(axis=layer.attrs["axis"]))

    # --- the rest of the common op set ----------------------------------------------------------
    def convt(self, layer: Layer, xs: list[int], out: int) -> None:
        """TRANSPOSE_CONV with VALID padding (output (in - 1) * stride + kernel, or more when
        the output padding reaches past it), then the PyTorch padding sliced off each side."""
        a, s, w = layer.attrs, self.s, self.w
        if a["groups"] != 1:
            raise ExportError(f"TFLite has no grouped transposed convolution (TRANSPOSE_CONV "
                              f"has no groups): layer {layer.output} with groups={a['groups']}")
        k, stride, pad = a["kernel"], a["stride"], a["pad"]
        n, h, wd, _ = w.shape(xs[0])
        oshape = w.shape(out)
        full = [max((d - 1) * stride + k, pad + o) for d, o in ((h, oshape[1]), (wd, oshape[2]))]
        weight = layer.weights["weight"].transpose(1, 2, 3, 0)  # [cin, cout, kh, kw] -> OHWI
        raw_shape = [n, *full, oshape[3]]
        inputs = [w.const("output_shape", np.asarray(raw_shape, np.int32)),
                  w.const("filter", np.ascontiguousarray(weight)), xs[0],
                  w.const("bias", layer.weights["bias"])]

        def emit(target: int, fused: int) -> None:
            w.op("TRANSPOSE_CONV", inputs, [target],
                 s.TransposeConvOptionsT(padding=s.Padding.VALID, strideW=stride, strideH=stride,
                                         fusedActivationFunction=fused), 3)

        if raw_shape == oshape:  # no padding to slice off
            w.with_act(a["act"], out, emit, _act_params(layer))
            return
        raw = w.temp(raw_shape, "convt_full")
        emit(raw, w.fused("none"))
        sliced = out if a["act"] == "none" else w.temp(oshape, "convt_crop")
        w.op("SLICE", [raw, w.const("begin", np.asarray([0, pad, pad, 0], np.int32)),
                       w.const("size", np.asarray(oshape, np.int32))], [sliced],
             s.SliceOptionsT())
        if sliced != out:
            w.activation(sliced, a["act"], out, _act_params(layer))

    def resize(self, layer: Layer, xs: list[int], out: int) -> None:
        s, w = self.s, self.w
        size = w.const("size", np.asarray(w.shape(out)[1:3], np.int32))
        if layer.attrs["mode"] == "nearest":  # floor(dst * in / out), as PyTorch's nearest
            w.op("RESIZE_NEAREST_NEIGHBOR", [xs[0], size], [out],
                 s.ResizeNearestNeighborOptionsT(alignCorners=False, halfPixelCenters=False))
        else:
            w.op("RESIZE_BILINEAR", [xs[0], size], [out],
                 s.ResizeBilinearOptionsT(alignCorners=False, halfPixelCenters=True), 3)

    def pad(self, layer: Layer, xs: list[int], out: int) -> None:
        s, w = self.s, self.w
        p = layer.attrs["pad"]
        paddings = w.const("paddings", np.asarray([[0, 0], [p, p], [p, p], [0, 0]], np.int32))
        if layer.attrs["mode"] == "constant":
            w.op("PAD", [xs[0], paddings], [out], s.PadOptionsT())
        else:
            w.op("MIRROR_PAD", [xs[0], paddings], [out],
                 s.MirrorPadOptionsT(mode=s.MirrorPadMode.REFLECT))

    def slice(self, layer: Layer, xs: list[int], out: int) -> None:
        s, w = self.s, self.w
        a = layer.attrs
        shape = w.shape(xs[0])
        axis = _NHWC_AXIS[a["axis"]] if len(shape) == 4 else a["axis"]
        begin, end = [0] * len(shape), list(shape)
        begin[axis], end[axis] = a["start"], a["end"]
        w.op("STRIDED_SLICE", [xs[0], w.const("begin", np.asarray(begin, np.int32)),
                               w.const("end", np.asarray(end, np.int32)),
                               w.const("strides", np.ones(len(shape), np.int32))], [out],
             s.StridedSliceOptionsT())

    def shuffle(self, layer: Layer, xs: list[int], out: int) -> None:
        """NHWC channel shuffle: [N*H*W, g, C/g] -> TRANSPOSE (0, 2, 1) -> [N, H, W, C]."""
        s, w = self.s, self.w
        n, h, wd, c = w.shape(xs[0])
        g = layer.attrs["groups"]
        grouped = w.temp([n * h * wd, g, c // g], "groups")
        w.op("RESHAPE", [xs[0], w.const("shape", np.asarray([n * h * wd, g, c // g], np.int32))],
             [grouped], s.ReshapeOptionsT(newShape=[n * h * wd, g, c // g]))
        swapped = w.temp([n * h * wd, c // g, g], "swapped")
        w.op("TRANSPOSE", [grouped, w.const("perm", np.asarray([0, 2, 1], np.int32))],
             [swapped], s.TransposeOptionsT())
        w.op("RESHAPE", [swapped, w.const("shape", np.asarray([n, h, wd, c], np.int32))], [out],
             s.ReshapeOptionsT(newShape=[n, h, wd, c]))


def _bmm(self: _Lowering, layer: Layer, xs: list[int], out: int) -> None:
    """BATCH_MATMUL; an INT8 kernel's right operand keeps the zero point its key names."""
    if "symmetric_rhs" in layer.attrs:
        self.w.symmetric[xs[1]] = bool(layer.attrs["symmetric_rhs"])
    self.w.op("BATCH_MATMUL", xs, [out], self.s.BatchMatMulOptionsT())


def _act_params(layer: Layer) -> dict[str, Any]:
    """leakyrelu's alpha and prelu's slope of a layer (TFLite's slope runs along the last
    axis, where NHWC keeps the channels)."""
    return {"alpha": layer.attrs.get("alpha", LEAKY_ALPHA), "slope": layer.weights.get("slope")}


def _simple(name: str, options: str | None = None, **values: Any) -> Any:
    """A lowering that is one operator on the layer's inputs."""
    def lower(self: _Lowering, layer: Layer, xs: list[int], out: int) -> None:
        opts = getattr(self.s, options)(**values) if options else None
        self.w.op(name, xs, [out], opts)
    return lower


_LOWERINGS: dict[str, Any] = {
    "tlinear": _Lowering.tlinear,
    "bmm": _bmm,
    "softmax": _simple("SOFTMAX", "SoftmaxOptionsT", beta=1.0),
    "layernorm": lambda self, layer, xs, out: self.normalize(
        layer, xs[0], out, [len(self.w.shape(xs[0])) - 1]),
    "transpose": lambda self, layer, xs, out: _transpose(self, layer, xs, out),
    "cat_const": _Lowering.cat_const,
    "gather": lambda self, layer, xs, out: self.w.op(
        "GATHER", [xs[0], self.w.const("index", np.asarray(layer.attrs["index"], np.int32))],
        [out], self.s.GatherOptionsT(axis=layer.attrs["axis"])),
    "add_const": lambda self, layer, xs, out: self.w.op(
        "ADD", [xs[0], self.w.const("value", _stored_const(self.graph, layer))], [out],
        self.s.AddOptionsT()),
    "mul_const": lambda self, layer, xs, out: self.w.op(
        "MUL", [xs[0], self.w.const("value", _stored_const(self.graph, layer))], [out],
        self.s.MulOptionsT()),
    "convt": _Lowering.convt,
    "resize": _Lowering.resize,
    "pad": _Lowering.pad,
    "slice": _Lowering.slice,
    "instnorm": lambda self, layer, xs, out: self.normalize(layer, xs[0], out, [1, 2]),
    "reduce": lambda self, layer, xs, out: self.w.op(
        "MEAN", [xs[0], self.w.const("axes", np.asarray(
            [_NHWC_AXIS[a] for a in layer.attrs["axes"]], np.int32))], [out],
        self.s.ReducerOptionsT(keepDims=True)),
    "shuffle": _Lowering.shuffle,
    "reshape": lambda self, layer, xs, out: _reshape(self, layer, xs, out),
}


def _stored_const(graph: LayerGraph, layer: Layer) -> np.ndarray:
    """A layer's broadcast constant as its output is stored: NHWC for an image."""
    value = np.asarray(layer.weights["value"], np.float32)
    if not graph.is_image(layer.output) or value.size == 1:
        return value
    value = value.reshape((1,) * (4 - value.ndim) + value.shape)
    return np.ascontiguousarray(value.transpose(0, 2, 3, 1))


def _transpose(self: _Lowering, layer: Layer, xs: list[int], out: int) -> None:
    """TRANSPOSE of the input read as NCHW; `as_stored`, one TRANSPOSE from the input as
    stored to the output as stored (an image is stored NHWC, so the IR permutation is composed
    with each side's layout), or a RESHAPE where the composition leaves the data in place: a
    channels-last permute of an image (and back to an image) moves nothing in NHWC."""
    g = self.graph
    source = layer.inputs[0]
    if not layer.attrs.get("as_stored", False):  # the input was read as NCHW
        self.w.op("TRANSPOSE", [xs[0], self.w.const("perm", np.asarray(layer.attrs["perm"],
                                                                     np.int32))],
                  [out], self.s.TransposeOptionsT())
        return
    to_ir = [0, 3, 1, 2] if g.is_image(source) else list(range(len(g.shapes[source])))
    perm = [to_ir[p] for p in layer.attrs["perm"]]
    if g.is_image(layer.output):
        perm = [perm[p] for p in (0, 2, 3, 1)]
    stored = self.w.shape(xs[0])
    moved = [p for p in perm if stored[p] != 1]
    if moved == sorted(moved):
        shape = self.w.shape(out)
        self.w.op("RESHAPE", [xs[0], self.w.const("shape", np.asarray(shape, np.int32))], [out],
                  self.s.ReshapeOptionsT(newShape=shape))
        return
    self.w.op("TRANSPOSE", [xs[0], self.w.const("perm", np.asarray(perm, np.int32))], [out],
              self.s.TransposeOptionsT())


def _layout_moves(shape: Sequence[int]) -> bool:
    """Whether an NCHW image of `shape` holds its data in another order stored NHWC ([N, C,
    1, 1] and [N, 1, H, W] do not)."""
    return shape[1] != 1 and shape[2] * shape[3] != 1


def _reshape(self: _Lowering, layer: Layer, xs: list[int], out: int) -> None:
    """RESHAPE of the input in NCHW order: an image input stored NHWC is transposed first and
    an image result transposed after, each unless it only moves axes of size 1."""
    s, w = self.s, self.w
    source = layer.inputs[0]
    if self.graph.is_image(source) and _layout_moves(self.graph.shapes[source]):
        xs = [self.read(source, False)]
    shape = [int(d) for d in layer.attrs["shape"]]
    stored = w.shape(out)
    if self.graph.is_image(layer.output) and _layout_moves(shape):
        nchw = w.temp(shape, "reshaped")
        w.op("RESHAPE", [xs[0], w.const("shape", np.asarray(shape, np.int32))], [nchw],
             s.ReshapeOptionsT(newShape=shape))
        w.op("TRANSPOSE", [nchw, w.const("perm", np.asarray([0, 2, 3, 1], np.int32))], [out],
             s.TransposeOptionsT())
        return
    w.op("RESHAPE", [xs[0], w.const("shape", np.asarray(stored, np.int32))], [out],
         s.ReshapeOptionsT(newShape=stored))


def tflite_shape(graph: LayerGraph, name: str) -> list[int]:
    """How the TFLite model stores tensor `name`: NHWC for an image, else its own shape."""
    shape = graph.shapes[name]
    return _nhwc(shape) if graph.is_image(name) else [int(d) for d in shape]


def to_tflite(graph: LayerGraph, name: str = "latbench", *, native_groups: bool = True,
              calibration: Sequence[Mapping[str, np.ndarray]] | None = None) -> bytes:
    """Serialise a graph as a TFLite model (fixed shapes, NHWC inputs and outputs) in the
    graph's precision (`graph.dtype`):

    - float32: float32 weights and compute;
    - float16: float16 weights, each read through a DEQUANTIZE to float32 (the converter's
      float16 quantization; XNNPACK folds the DEQUANTIZEs and may compute in FP16);
    - int8: full-integer quantization (`tflite_precision.quantize_int8`), activation ranges
      calibrated by running the float32 model on `calibration` (NCHW inputs by name, as
      `LayerGraph.random_inputs` gives them; default: `CALIBRATION_SEEDS` of those).

    Inputs and outputs stay float32 in every precision. Image inputs and outputs are NHWC (or
    [N, C] after a linear layer): callers transpose NCHW data with `(0, 2, 3, 1)` on the way
    in and `(0, 3, 1, 2)` on the way out; plain tensors (see `tflite_shape`) keep their shape.
    `native_groups=False` lowers grouped convolutions to SPLIT + CONV_2D + CONCATENATION.
    """
    if graph.dtype not in DTYPES:
        raise ExportError(f"TFLite export has no precision {graph.dtype!r}; it writes "
                          f"{', '.join(DTYPES)}")
    lowering = _Lowering(graph, native_groups)
    inputs, outputs = lowering.run(name)
    w = lowering.w
    if graph.dtype == "float16":
        precision.float16_weights(w)
    elif graph.dtype == "int8":
        if calibration is None:
            calibration = [graph.random_inputs(seed) for seed in precision.CALIBRATION_SEEDS]
        feeds = [{lowering.index[x]: tflite_input(graph, x, values[x]) for x in graph.inputs}
                 for values in calibration]
        ranges = precision.calibrate(w.finish(inputs, outputs, name), feeds,
                                     precision.computed_tensors(w))
        inputs, outputs = precision.quantize_int8(w, inputs, outputs, ranges)
    logger.debug("TFLite model %s (%s): %d operators, %d tensors, %d buffers", name,
                 graph.dtype, len(w.operators), len(w.tensors), len(w.buffers))
    return w.finish(inputs, outputs, name)


def tflite_input(graph: LayerGraph, name: str, value: np.ndarray) -> np.ndarray:
    """NCHW data for graph input `name` as the TFLite model takes it (see `tflite_shape`)."""
    value = np.asarray(value, np.float32)
    return np.ascontiguousarray(value.transpose(0, 2, 3, 1) if graph.is_image(name) else value)
