"""A tiny layer graph with weights: the one description every exporter and the reference reads.

Specs and chains of specs become a `LayerGraph` once (weights drawn from a seeded generator);
`to_onnx`, `to_tflite` and `reference` each walk the same graph, so the three agree by
construction on structure and weights and differ only in the runtime that executes them.
Image tensors are NCHW (or NC after a linear layer); exporters that need NHWC transpose them on
the way out. Token tensors ([N, T, C], [N, heads, T, C]) and the 4-D tensors of a `transpose`
are "plain": every exporter keeps them as they are (`LayerGraph.plain` names the 4-D ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latbench.bench.ops import BMM_SYMMETRIC, IMAGE_KINDS, LEAKY_ALPHA, OpSpec, se_gate
from latbench.errors import ExportError

# Layer ops of the graph (not spec kinds): each maps to one or a few runtime operators.
LAYER_OPS = ("conv", "linear", "add", "mul", "act", "pool", "gpool", "concat",
             "tlinear", "bmm", "softmax", "layernorm", "transpose", "cat_const", "gather",
             "add_const", "convt", "resize", "pad", "slice", "instnorm", "reduce", "shuffle",
             "reshape", "mul_const")
# Layer ops whose 4-D output is plain (not an image); elementwise ops follow their input; the
# layers that read their inputs as plain tensors (an NHWC exporter hands them NCHW data).
PLAIN_OPS = frozenset({"bmm", "softmax", "transpose", "tlinear", "layernorm"})
ELEMENTWISE_OPS = frozenset({"add", "mul", "act", "add_const", "mul_const"})
PLAIN_INPUT_OPS = frozenset({"tlinear", "bmm", "softmax", "layernorm", "transpose", "cat_const",
                             "gather", "reshape"})


@dataclass
class Layer:
    op: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class LayerGraph:
    inputs: list[str]
    layers: list[Layer]
    output_name: str
    shapes: dict[str, tuple[int, ...]]
    plain: frozenset[str] = frozenset()  # 4-D tensors that are not NCHW images
    # Precision the exporters write the model in (an OpSpec dtype): weights and the data the
    # layers compute on; inputs and outputs stay float32 as a user's quantized model keeps them.
    dtype: str = "float32"

    def is_image(self, name: str) -> bool:
        """Whether tensor `name` is a 4-D NCHW image (an NHWC runtime stores it transposed)."""
        return len(self.shapes[name]) == 4 and name not in self.plain

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shapes[self.output_name]

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {name: rng.standard_normal(self.shapes[name]).astype(np.float32)
                for name in self.inputs}


class GraphBuilder:
    """Appends layers and tracks shapes; weights are He-scaled so activations stay O(1)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.inputs: list[str] = []
        self.layers: list[Layer] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.plain: set[str] = set()

    def input(self, shape: Sequence[int], plain: bool = False) -> str:
        """A graph input; `plain` marks a 4-D input that is not an NCHW image."""
        name = "input" if not self.inputs else f"input{len(self.inputs)}"
        self.inputs.append(name)
        self.shapes[name] = tuple(int(d) for d in shape)
        if plain and len(shape) == 4:
            self.plain.add(name)
        return name

    def _add(self, op: str, inputs: list[str], shape: tuple[int, ...], attrs: dict[str, Any],
             weights: dict[str, np.ndarray] | None = None) -> str:
        name = f"t{len(self.layers)}_{op}"
        self.layers.append(Layer(op, inputs, name, attrs, weights or {}))
        self.shapes[name] = tuple(int(d) for d in shape)
        if len(shape) == 4 and (op in PLAIN_OPS or (op in ELEMENTWISE_OPS
                                                    and inputs[0] in self.plain)):
            self.plain.add(name)
        return name

    def _weights(self, std: float, shape: Sequence[int], mean: float = 0.0) -> np.ndarray:
        return self.rng.normal(mean, std, tuple(shape)).astype(np.float32)

    def _activation(self, act: str, shape: tuple[int, ...], plain: bool, alpha: float
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Attributes and weights of activation `act` on an output of `shape`: leakyrelu's
        alpha, prelu's slope per channel (`slope_axis` 1 for an image or [N, C], else -1: the
        last axis)."""
        attrs: dict[str, Any] = {"act": act}
        weights: dict[str, np.ndarray] = {}
        if act == "leakyrelu":
            attrs["alpha"] = float(alpha)
        if act == "prelu":
            axis = 1 if len(shape) == 2 or (len(shape) == 4 and not plain) else -1
            attrs["slope_axis"] = axis
            weights["slope"] = self.rng.uniform(0.05, 0.5, shape[axis]).astype(np.float32)
        return attrs, weights

    def conv(self, x: str, cout: int, kernel: int, stride: int = 1, pad: int | None = None,
             groups: int = 1, act: str = "none", *, kernel_w: int | None = None,
             pad_w: int | None = None, dilation: int = 1, alpha: float = LEAKY_ALPHA) -> str:
        """Convolution, kernel `kernel` x `kernel_w`, symmetric padding `pad` (H) and `pad_w`
        (W; default: as `pad` when given, else dilation * (kernel // 2) per axis)."""
        n, cin, h, w = self.shapes[x]
        kw = kernel if kernel_w is None else kernel_w
        if pad is None:
            pad = dilation * (kernel // 2)
            pad_w = dilation * (kw // 2) if pad_w is None else pad_w
        pad_w = pad if pad_w is None else pad_w
        if cin % groups or cout % groups:
            raise ExportError(f"conv groups={groups} must divide cin={cin} and cout={cout}")
        fan_in = (cin // groups) * kernel * kw
        weight = self._weights(np.sqrt(2.0 / fan_in), (cout, cin // groups, kernel, kw))
        bias = self._weights(0.1, (cout,))
        oh = (h + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
        ow = (w + 2 * pad_w - dilation * (kw - 1) - 1) // stride + 1
        attrs, weights = self._activation(act, (n, cout, oh, ow), False, alpha)
        return self._add("conv", [x], (n, cout, oh, ow),
                         {"kernel": kernel, "stride": stride, "pad": pad, "groups": groups,
                          "kernel_w": kw, "pad_w": pad_w, "dilation": dilation, **attrs},
                         {"weight": weight, "bias": bias, **weights})

    def linear(self, x: str, cout: int, act: str = "none", alpha: float = LEAKY_ALPHA) -> str:
        shape = self.shapes[x]
        cin = int(np.prod(shape[1:]))
        weight = self._weights(np.sqrt(1.0 / cin), (cout, cin))
        bias = self._weights(0.1, (cout,))
        attrs, weights = self._activation(act, (shape[0], cout), False, alpha)
        return self._add("linear", [x], (shape[0], cout), attrs,
                         {"weight": weight, "bias": bias, **weights})

    def add(self, a: str, b: str, act: str = "none", alpha: float = LEAKY_ALPHA) -> str:
        self._same_shape("add", a, b)
        attrs, weights = self._activation(act, self.shapes[a], a in self.plain, alpha)
        return self._add("add", [a, b], self.shapes[a], attrs, weights)

    def mul(self, a: str, b: str) -> str:
        """Elementwise product; `b` may be (N, C, 1, 1) and broadcast, as in squeeze-excite."""
        sa, sb = self.shapes[a], self.shapes[b]
        if sa != sb and sb != (sa[0], sa[1], 1, 1):
            raise ExportError(f"mul of shapes {sa} and {sb}: second must match or be (N, C, 1, 1)")
        return self._add("mul", [a, b], sa, {})

    def act(self, x: str, kind: str, alpha: float = LEAKY_ALPHA) -> str:
        attrs, weights = self._activation(kind, self.shapes[x], x in self.plain, alpha)
        return self._add("act", [x], self.shapes[x], attrs, weights)

    def pool(self, x: str, kind: str, kernel: int, stride: int, pad: int = 0,
             exclude_pad: bool = False) -> str:
        """`exclude_pad`: an average over the window's inside elements only (PyTorch's
        count_include_pad=False, as NAS-Bench-201's pools), else over the whole window."""
        n, c, h, w = self.shapes[x]
        oh = (h + 2 * pad - kernel) // stride + 1
        ow = (w + 2 * pad - kernel) // stride + 1
        attrs = {"pool": kind, "kernel": kernel, "stride": stride, "pad": pad}
        if exclude_pad and kind == "avg" and pad:
            attrs["exclude_pad"] = True
        return self._add("pool", [x], (n, c, oh, ow), attrs)

    def gpool(self, x: str) -> str:
        n, c, _, _ = self.shapes[x]
        return self._add("gpool", [x], (n, c, 1, 1), {})

    def concat(self, xs: Sequence[str], axis: int = 1) -> str:
        """Concatenation of NCHW tensors along `axis` (1: channels, 2: H, 3: W)."""
        shapes = [self.shapes[x] for x in xs]
        rest = [s[:axis] + s[axis + 1:] for s in shapes]
        if any(len(s) != 4 for s in shapes) or any(r != rest[0] for r in rest):
            raise ExportError(f"concat inputs differ beyond axis {axis}: {shapes}")
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return self._add("concat", list(xs), tuple(out), {"axis": axis})

    # --- transformer layers (token tensors) ----------------------------------------------------
    def tlinear(self, x: str, cout: int, act: str = "none", alpha: float = LEAKY_ALPHA) -> str:
        """Token-wise linear layer: [..., cin] @ W.T + b on the last axis (W is [cout, cin])."""
        shape = self.shapes[x]
        cin = shape[-1]
        weight = self._weights(np.sqrt(1.0 / cin), (cout, cin))
        bias = self._weights(0.1, (cout,))
        out = (*shape[:-1], cout)
        attrs, weights = self._activation(act, out, True, alpha)
        return self._add("tlinear", [x], out, attrs, {"weight": weight, "bias": bias, **weights})

    def bmm(self, a: str, b: str, symmetric: bool | None = None) -> str:
        """Batched matmul of two computed tensors [..., M, K] @ [..., K, N]; `symmetric`
        (INT8 exports) pins whether the right operand's zero point is 0 (True) or not (False)
        instead of leaving it to calibration (None)."""
        sa, sb = self.shapes[a], self.shapes[b]
        if sa[:-2] != sb[:-2] or sa[-1] != sb[-2]:
            raise ExportError(f"bmm of shapes {sa} and {sb}: need [..., M, K] @ [..., K, N]")
        attrs = {} if symmetric is None else {"symmetric_rhs": symmetric}
        return self._add("bmm", [a, b], (*sa[:-1], sb[-1]), attrs)

    def softmax(self, x: str) -> str:
        """Softmax over the last axis."""
        return self._add("softmax", [x], self.shapes[x], {})

    def layernorm(self, x: str, eps: float = 1e-5) -> str:
        """Layer normalization over the last axis, with scale and bias."""
        c = self.shapes[x][-1]
        return self._add("layernorm", [x], self.shapes[x], {"eps": eps},
                         {"scale": self._weights(0.2, (c,), 1.0), "bias": self._weights(0.2, (c,))})

    def transpose(self, x: str, perm: Sequence[int], image: bool = False,
                  as_stored: bool = False) -> str:
        """x permuted; a 4-D result is plain unless `image`. With `as_stored` (implied by
        `image`) an NHWC exporter permutes the data as it stores it, in one operator, as a
        converter does: a channels-last permute of an image (or back to one) then moves
        nothing. Without, it reads the input as NCHW first (a kernel measured as written)."""
        shape = self.shapes[x]
        if sorted(perm) != list(range(len(shape))):
            raise ExportError(f"transpose perm {tuple(perm)} does not fit shape {shape}")
        stored = {"as_stored": True} if as_stored or image else {}
        out = self._add("transpose", [x], tuple(shape[p] for p in perm),
                        {"perm": tuple(int(p) for p in perm), **stored})
        if image and len(shape) == 4:
            self.plain.discard(out)
        return out

    def cls_token(self, x: str, tokens: int = 1) -> str:
        """`tokens` learned [1, tokens, C] tokens put before the tokens of [N, T, C] (axis 1):
        a class token, and DeiT's distillation token."""
        n, t, c = self.shapes[x]
        return self._add("cat_const", [x], (n, t + tokens, c), {"axis": 1},
                         {"value": self._weights(1.0, (1, tokens, c))})

    def gather(self, x: str, index: int = 0, axis: int = 1) -> str:
        """Entry `index` of `axis`, the axis dropped: token `index` of [N, T, C] -> [N, C] by
        default (a plain tensor either way)."""
        shape = self.shapes[x]
        axis %= len(shape)
        if not 0 <= index < shape[axis]:
            raise ExportError(f"gather of entry {index} from {shape[axis]} along axis {axis}")
        out = self._add("gather", [x], shape[:axis] + shape[axis + 1:],
                        {"axis": axis, "index": index})
        if len(shape) == 5:
            self.plain.add(out)
        return out

    def mul_const(self, x: str, shape: Sequence[int]) -> str:
        """x * a constant of `shape` broadcast against x (numpy rules, x's shape kept): a
        scale by a number or per channel."""
        shape = tuple(int(d) for d in shape)
        if np.broadcast_shapes(shape, self.shapes[x]) != self.shapes[x]:
            raise ExportError(f"mul by a constant of shape {shape} changes {self.shapes[x]}")
        return self._add("mul_const", [x], self.shapes[x], {},
                         {"value": self._weights(0.5, shape, 1.0)})

    def add_const(self, x: str, shape: Sequence[int] | None = None) -> str:
        """x + a learned constant of x's shape with batch 1 (a position embedding), or of
        `shape` broadcast against x (a per-channel shift)."""
        value_shape = tuple(int(d) for d in shape) if shape else (1, *self.shapes[x][1:])
        if np.broadcast_shapes(value_shape, self.shapes[x]) != self.shapes[x]:
            raise ExportError(f"add of a constant of shape {value_shape} changes "
                              f"{self.shapes[x]}")
        return self._add("add_const", [x], self.shapes[x], {},
                         {"value": self._weights(0.5, value_shape)})

    # --- the rest of the common op set (images) -------------------------------------------------
    def convt(self, x: str, cout: int, kernel: int, stride: int = 1, pad: int = 0,
              out_pad: int = 0, groups: int = 1, act: str = "none",
              alpha: float = LEAKY_ALPHA) -> str:
        """Transposed convolution, as PyTorch ConvTranspose2d (weight [cin, cout/g, k, k])."""
        n, cin, h, w = self.shapes[x]
        if cin % groups or cout % groups:
            raise ExportError(f"convt groups={groups} must divide cin={cin} and cout={cout}")
        fan_in = (cin // groups) * kernel * kernel / (stride * stride)
        weight = self._weights(np.sqrt(2.0 / max(fan_in, 1.0)),
                               (cin, cout // groups, kernel, kernel))
        bias = self._weights(0.1, (cout,))
        oh, ow = ((s - 1) * stride - 2 * pad + kernel + out_pad for s in (h, w))
        attrs, weights = self._activation(act, (n, cout, oh, ow), False, alpha)
        return self._add("convt", [x], (n, cout, oh, ow),
                         {"kernel": kernel, "stride": stride, "pad": pad, "out_pad": out_pad,
                          "groups": groups, **attrs}, {"weight": weight, "bias": bias, **weights})

    def resize(self, x: str, scale: int, mode: str, size: tuple[int, int] | None = None
               ) -> str:
        """Integer upscaling of H and W: nearest (floor) or bilinear (half-pixel centres); or,
        with `size`, resizing to that (H, W) (converted models: MobileViT's patch fit)."""
        n, c, h, w = self.shapes[x]
        if size is None:
            return self._add("resize", [x], (n, c, h * scale, w * scale),
                             {"scale": scale, "mode": mode})
        return self._add("resize", [x], (n, c, int(size[0]), int(size[1])),
                         {"scale": scale, "mode": mode, "size": (int(size[0]), int(size[1]))})

    def pad(self, x: str, pad: int, mode: str) -> str:
        """`pad` rows and columns on each side of H and W: constant zeros or reflect."""
        n, c, h, w = self.shapes[x]
        return self._add("pad", [x], (n, c, h + 2 * pad, w + 2 * pad), {"pad": pad, "mode": mode})

    def slice(self, x: str, start: int, end: int, axis: int = 1) -> str:
        """x[start:end] along `axis`."""
        shape = list(self.shapes[x])
        if not 0 <= start < end <= shape[axis]:
            raise ExportError(f"slice {start}:{end} of axis {axis} of {tuple(shape)}")
        shape[axis] = end - start
        return self._add("slice", [x], tuple(shape), {"start": start, "end": end, "axis": axis})

    def instnorm(self, x: str, eps: float = 1e-5) -> str:
        """Instance normalization over H and W with per-channel scale and bias."""
        c = self.shapes[x][1]
        return self._add("instnorm", [x], self.shapes[x], {"eps": eps},
                         {"scale": self._weights(0.2, (c,), 1.0), "bias": self._weights(0.2, (c,))})

    def reduce_mean(self, x: str, axes: Sequence[int]) -> str:
        """Mean over NCHW `axes`, dimensions kept."""
        shape = self.shapes[x]
        axes = tuple(sorted(int(a) for a in axes))
        return self._add("reduce", [x], tuple(1 if i in axes else d for i, d in enumerate(shape)),
                         {"axes": axes})

    def shuffle(self, x: str, groups: int) -> str:
        """Channel shuffle: (N, g, C/g, H, W) -> transpose groups and channels -> (N, C, H, W)."""
        c = self.shapes[x][1]
        if groups < 2 or c % groups:
            raise ExportError(f"shuffle groups={groups} must be >= 2 and divide {c} channels")
        return self._add("shuffle", [x], self.shapes[x], {"groups": groups})

    def reshape(self, x: str, shape: Sequence[int], image: bool = False) -> str:
        """x's data (read in NCHW row-major order) in another shape; a 4-D result is an NCHW
        image when `image`, else plain. Written for converted models (Flatten, Reshape)."""
        shape = tuple(int(d) for d in shape)
        if int(np.prod(shape)) != int(np.prod(self.shapes[x])):
            raise ExportError(f"reshape of {self.shapes[x]} into {shape} changes the size")
        out = self._add("reshape", [x], shape, {"shape": shape})
        if len(shape) == 4 and not image:
            self.plain.add(out)
        return out

    def _same_shape(self, op: str, a: str, b: str) -> None:
        if self.shapes[a] != self.shapes[b]:
            raise ExportError(f"{op} of different shapes {self.shapes[a]} and {self.shapes[b]}")

    def finish(self, output: str, dtype: str = "float32") -> LayerGraph:
        return LayerGraph(list(self.inputs), list(self.layers), output, dict(self.shapes),
                          frozenset(self.plain), dtype)


def emit_spec(builder: GraphBuilder, spec: OpSpec, x: str) -> str:
    """Append the layers of one spec, reading tensor `x`; returns the output tensor.

    Inside a chain a two-input kernel (add, mul) reads `x` twice; concat and bmm only exist as
    single-op models (`spec_graph`), where every operand is a graph input of its own.
    """
    kind = spec.kind
    if builder.shapes[x][1:] != spec.input_shape[1:]:
        raise ExportError(f"spec {spec.key()} expects input {spec.input_shape}, "
                          f"chain gives {builder.shapes[x]}")
    if kind in ("conv", "dwconv"):
        return builder.conv(x, spec.cout, spec.kernel, spec.stride, spec.pad, spec.groups,
                            spec.act, kernel_w=spec.kernel_w or spec.kernel,
                            pad_w=spec.pad_w if spec.pad_w >= 0 else spec.pad,
                            dilation=spec.dilation, alpha=spec.alpha)
    if kind == "mbconv":
        return _emit_mbconv(builder, spec, x)
    if kind == "linear":
        return builder.linear(x, spec.cout, spec.act, spec.alpha)
    if kind == "pool":
        if spec.pool == "gavg":
            return builder.gpool(x)
        return builder.pool(x, spec.pool, spec.kernel, spec.stride, spec.pad)
    if kind == "add":
        return builder.add(x, x, spec.act, spec.alpha)
    if kind == "mul":
        return builder.mul(x, x)
    if kind == "act":
        return builder.act(x, spec.act, spec.alpha)
    if kind == "se":
        return _emit_se(builder, x, spec.mid, spec.act)
    if kind in ("concat", "bmm"):
        raise ExportError(f"{kind} cannot be chained, only measured alone: {spec.key()}")
    emit = _EMITTERS.get(kind)
    if emit is None:
        raise ExportError(f"no exporter for op kind {kind!r}")
    return emit(builder, spec, x)


# Kinds with one input and one layer (or a fixed few): spec -> layers, reading tensor x.
_EMITTERS: dict[str, Any] = {
    "tlinear": lambda b, s, x: b.tlinear(x, s.cout, s.act, s.alpha),
    "softmax": lambda b, s, x: b.softmax(x),
    "layernorm": lambda b, s, x: b.layernorm(x),
    "transpose": lambda b, s, x: b.transpose(x, [int(a) for a in s.axes]),
    "clstoken": lambda b, s, x: b.cls_token(x),
    "gather": lambda b, s, x: b.gather(x, 0),
    "posembed": lambda b, s, x: b.add_const(x),
    "convt": lambda b, s, x: b.convt(x, s.cout, s.kernel, s.stride, s.pad, s.out_pad, s.groups,
                                     s.act, s.alpha),
    "resize": lambda b, s, x: b.resize(x, s.scale, s.mode),
    "pad": lambda b, s, x: b.pad(x, s.pad, s.mode),
    "slice": lambda b, s, x: b.slice(x, 0, s.cout),
    "instnorm": lambda b, s, x: b.instnorm(x),
    "reduce": lambda b, s, x: b.reduce_mean(x, [int(a) for a in s.axes]),
    "shuffle": lambda b, s, x: b.shuffle(x, s.groups),
}


def _emit_se(builder: GraphBuilder, x: str, mid: int, gate: str) -> str:
    c = builder.shapes[x][1]
    s = builder.gpool(x)
    s = builder.conv(s, mid, 1, act="relu")
    s = builder.conv(s, c, 1, act=gate)
    return builder.mul(x, s)


def _emit_mbconv(builder: GraphBuilder, spec: OpSpec, x: str) -> str:
    mid = spec.mid
    y = x
    if mid != spec.cin or spec.expand != 1.0:
        y = builder.conv(y, mid, 1, act=spec.act)
    y = builder.conv(y, mid, spec.kernel, spec.stride, groups=mid, act=spec.act)
    if spec.se:
        y = _emit_se(builder, y, max(1, round(mid * 0.25)), se_gate(spec.act))
    y = builder.conv(y, spec.cout, 1)
    if spec.residual:
        y = builder.add(y, x)
    return y


def spec_graph(spec: OpSpec, seed: int = 0) -> LayerGraph:
    """The single-kernel model measured for a spec; each operand of add/mul/concat/bmm is an
    input."""
    builder = GraphBuilder(np.random.default_rng(seed))
    plain = spec.kind not in IMAGE_KINDS
    if spec.kind in ("add", "mul", "bmm"):
        a, b = (builder.input(shape, plain) for shape in spec.input_shapes)
        if spec.kind == "bmm":  # an INT8 bmm's form is part of its key (ops.BMM_SYMMETRIC)
            symmetric = spec.mode == BMM_SYMMETRIC if spec.dtype == "int8" else None
            return builder.finish(builder.bmm(a, b, symmetric), spec.dtype)
        return builder.finish(builder.add(a, b, spec.act, spec.alpha) if spec.kind == "add"
                              else builder.mul(a, b), spec.dtype)
    if spec.kind == "concat":
        axis = int(spec.axes or 1)
        if spec.output_shape[axis] % spec.groups:
            raise ExportError(f"concat of {spec.groups} inputs needs cin divisible by it: "
                              f"{spec.key()}")
        return builder.finish(builder.concat([builder.input(shape) for shape in
                                              spec.input_shapes], axis), spec.dtype)
    return builder.finish(emit_spec(builder, spec, builder.input(spec.input_shape, plain)),
                          spec.dtype)


def chain_graph(specs: Sequence[OpSpec], seed: int = 0) -> LayerGraph:
    """A whole network made of specs applied one after another (a chain of fused kernels).

    A linear spec after a 4-D tensor is preceded by nothing: the global pool spec before it
    leaves (N, C, 1, 1), which the linear layer flattens.
    """
    if not specs:
        raise ExportError("a network needs at least one spec")
    dtypes = {spec.dtype for spec in specs}
    if len(dtypes) > 1:
        raise ExportError(f"a chain computes in one precision, its specs mix {sorted(dtypes)}")
    builder = GraphBuilder(np.random.default_rng(seed))
    x = builder.input(specs[0].input_shape, specs[0].kind not in IMAGE_KINDS)
    for spec in specs:
        if spec.kind == "linear" and len(builder.shapes[x]) == 4:
            n, c, h, w = builder.shapes[x]
            if (h, w) != (1, 1) or c != spec.cin:
                raise ExportError(f"linear spec {spec.key()} after tensor {builder.shapes[x]}")
            x = builder.linear(x, spec.cout, spec.act, spec.alpha)
            continue
        x = emit_spec(builder, spec, x)
    return builder.finish(x, specs[0].dtype)
