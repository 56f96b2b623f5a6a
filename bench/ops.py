"""OpSpec: one operator or fused kernel with its shapes, and its canonical key.

The key is the join key between measurement, dataset and predictor, so it must never change for
the same operator: it lists only the fields that matter for a kind, in a fixed order, after the
spec has been normalised (defaults filled in, irrelevant fields reset).

Kinds grow in two ways without touching a key written before:
- a new kind lists its own KEY_FIELDS;
- an existing kind gains OPTIONAL_FIELDS (conv and dwconv: `kernel_w`, `pad_w`, `dilation`;
  concat: `axes`; every kind with an activation: `alpha`). An optional field is written into
  the key only when its normalised value differs from its default, after the kind's key fields
  and before dtype, so `conv:...,act=relu,d=2,dtype=float32` is a dilated conv and every square,
  undilated conv keeps the key it always had.

Tensors are NCHW images (batch, cin, h, w) for the convolution-style kinds; the transformer
kinds work on [batch, tokens, cin] and [batch, heads, tokens, cin] tensors; `transpose` and
`reduce` name the four axes of any 4-D tensor positionally as (batch, cin, h, w).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from latbench.errors import SpecError

OP_KINDS = ("conv", "dwconv", "mbconv", "linear", "pool", "add", "mul", "act", "se", "concat",
            # transformer kernels
            "tlinear", "bmm", "softmax", "layernorm", "transpose", "clstoken", "gather",
            "posembed",
            # the rest of the common op set
            "convt", "resize", "pad", "slice", "instnorm", "reduce", "shuffle")
# Activations every stage handles: exporters, the ONNX kernel split and its fusion rules.
ACTIVATIONS = ("none", "relu", "relu6", "hswish", "hsigmoid", "sigmoid", "swish")
# Activations the exporters handle (any kind with an `act` field takes them); appended, so the
# index of every activation above never changes (features use it).
MORE_ACTIVATIONS = ("gelu", "gelu_tanh", "tanh", "leakyrelu", "prelu", "mish")
ALL_ACTIVATIONS = ACTIVATIONS + MORE_ACTIVATIONS
POOL_TYPES = ("avg", "max", "gavg")
# Precisions a kernel computes in; the key always names one (`dtype=...`), so a float32 key
# written before INT8 and FP16 existed keeps its meaning.
DTYPES = ("float32", "float16", "int8")
# An INT8 bmm whose right operand is quantized with zero point 0 (`mode`): LiteRT's XNNPACK
# delegate runs only that form and leaves the other to the builtin kernel, 7-20x slower here
# (docs/predictors.md, *INT8 attention on LiteRT*). Empty mode: any other zero point.
BMM_SYMMETRIC = "symmetric"
# An INT8 conv of a QDQ model whose signed int8 input other nodes read too (`mode`): ONNX
# Runtime on x86 turns int8 activations into uint8 only where the quantized tensor has one
# reader, and runs the QDQ conv of any other in float, with its weights dequantized at every
# call (docs/predictors.md, *Shared int8 tensors on ONNX Runtime*). Set by the ONNX split, never
# sampled by a plan: the composition prices it (`shared_s8_conv_gflops`).
CONV_SHARED_S8 = "shared-s8"
# Values of `mode` per kind; the first is the default.
MODES: dict[str, tuple[str, ...]] = {"resize": ("nearest", "bilinear"),
                                     "pad": ("constant", "reflect"),
                                     "bmm": ("", BMM_SYMMETRIC),
                                     "conv": ("", CONV_SHARED_S8)}
LEAKY_ALPHA = 0.01  # LeakyReLU slope when none is given (PyTorch's and ONNX's default)

# Fields that define each kind, in key order. Everything else is reset to its default.
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "conv": ("batch", "h", "w", "cin", "cout", "kernel", "stride", "pad", "groups", "act"),
    "dwconv": ("batch", "h", "w", "cin", "kernel", "stride", "pad", "act"),
    "mbconv": ("batch", "h", "w", "cin", "cout", "kernel", "stride", "expand", "act", "se",
               "residual"),
    "linear": ("batch", "cin", "cout", "act"),
    "pool": ("batch", "h", "w", "cin", "pool", "kernel", "stride", "pad"),
    "add": ("batch", "h", "w", "cin", "act"),
    "mul": ("batch", "h", "w", "cin"),
    "act": ("batch", "h", "w", "cin", "act"),
    "se": ("batch", "h", "w", "cin", "expand", "act"),
    "concat": ("batch", "h", "w", "cin", "groups"),
    "tlinear": ("batch", "tokens", "cin", "cout", "act"),
    "bmm": ("batch", "heads", "tokens", "cin", "cout"),
    "softmax": ("batch", "heads", "tokens", "cin"),
    "layernorm": ("batch", "tokens", "cin"),
    "transpose": ("batch", "h", "w", "cin", "axes"),
    "clstoken": ("batch", "tokens", "cin"),
    "gather": ("batch", "tokens", "cin"),
    "posembed": ("batch", "tokens", "cin"),
    "convt": ("batch", "h", "w", "cin", "cout", "kernel", "stride", "pad", "groups", "act"),
    "resize": ("batch", "h", "w", "cin", "scale", "mode"),
    "pad": ("batch", "h", "w", "cin", "pad", "mode"),
    "slice": ("batch", "h", "w", "cin", "cout"),
    "instnorm": ("batch", "h", "w", "cin"),
    "reduce": ("batch", "h", "w", "cin", "axes"),
    "shuffle": ("batch", "h", "w", "cin", "groups"),
}
# Fields written into the key only when not at their default (see the module docstring).
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {
    kind: (("kernel_w", "pad_w", "dilation") if kind in ("conv", "dwconv") else ())
    + (("out_pad",) if kind == "convt" else ())
    + (("axes",) if kind == "concat" else ())
    + (("mode",) if kind in ("bmm", "conv") else ())
    + (("alpha",) if "act" in key else ())
    for kind, key in KEY_FIELDS.items()
}
# Kinds whose tensors are NCHW images (an NHWC runtime stores them transposed); the others
# work on token tensors, or on a 4-D tensor taken as it is (transpose).
IMAGE_KINDS = frozenset(OP_KINDS) - {"linear", "tlinear", "bmm", "softmax", "layernorm",
                                     "transpose", "clstoken", "gather", "posembed"}
_SHORT = {"batch": "n", "kernel": "k", "stride": "s", "pad": "p", "groups": "g", "expand": "e",
          "tokens": "t", "dilation": "d", "kernel_w": "kw", "pad_w": "pw", "out_pad": "op"}
_LONG = {v: k for k, v in _SHORT.items()}
_POSITIVE = ("h", "w", "cin", "kernel", "stride", "groups", "batch", "tokens", "heads",
             "dilation", "scale")
# Integer fields with their least value (None: any integer).
_INTEGERS = {"cout": 0, "pad": None, "kernel_w": 0, "pad_w": None, "out_pad": 0}


@dataclass(frozen=True)
class OpSpec:
    """One operator or fused kernel, batch x H x W x C in, NCHW semantics.

    - conv: `groups` divides cin and cout; kernel `kernel` x `kernel_w` (0: square), padding
      `pad` x `pad_w` (defaults: dilation * (kernel // 2), per axis), `dilation`.
    - dwconv: depthwise, cout = groups = cin; kernel, padding and dilation as conv.
    - mbconv: [1x1 expand + act] -> kxk depthwise (stride) + act -> [squeeze-excite] ->
      1x1 project; `expand` is the ratio mid/cin; residual add when stride 1 and cin == cout
      unless `residual=False`.
    - linear: cin -> cout features (h = w = 1).
    - pool: avg or max with kernel/stride/pad, or gavg (global average, output 1x1).
    - add, mul: two same-shape inputs, elementwise; add may carry an activation.
    - act: a standalone activation.
    - se: squeeze-excite on an HxWxC tensor; mid = max(1, round(cin * expand)); gate `act`.
    - concat: `groups` equal inputs concatenated along channels (`axes` "" or "1"), or along
      H ("2") or W ("3"); the output is batch x cin x h x w.
    Transformer kinds, on token tensors:
    - tlinear: token-wise linear [batch, tokens, cin] @ [cin, cout] + bias, then `act`.
    - bmm: batched matmul of two computed tensors [batch, heads, tokens, cin] @
      [batch, heads, cin, cout] (QK^T: cin = head dim, cout = tokens; AV: cin = tokens,
      cout = head dim); in INT8, `mode` "symmetric" when the right operand's
      zero point is 0 (see BMM_SYMMETRIC), "" otherwise.
    - softmax: over the last axis of [batch, heads, tokens, cin].
    - layernorm: over the last axis of [batch, tokens, cin], with scale and bias.
    - transpose: a 4-D tensor (batch, cin, h, w) permuted by `axes` (e.g. "0213":
      [B, T, H, D] <-> [B, H, T, D]).
    - clstoken: a learned [1, 1, cin] token put before the tokens: [batch, tokens + 1, cin].
    - gather: one token (the first, e.g. the class token) of [batch, tokens, cin] -> [batch, cin].
    - posembed: [batch, tokens, cin] + a constant [1, tokens, cin] (position embedding).
    The rest of the common op set, on images:
    - convt: transposed convolution, output (h - 1) * stride - 2 pad + kernel + out_pad.
    - resize: integer upscaling by `scale`, mode nearest or bilinear (half-pixel centres).
    - pad: `pad` on each side of H and W, mode constant (zeros) or reflect.
    - slice: the first `cout` of `cin` channels.
    - instnorm: instance normalization with per-channel scale and bias.
    - reduce: mean over `axes` (e.g. "23" spatial, "1" channels), dimensions kept.
    - shuffle: channel shuffle with `groups` (reshape, transpose, reshape).
    Activations with a parameter: leakyrelu takes `alpha`, prelu a learned slope per channel.
    """

    kind: str
    h: int = 1
    w: int = 1
    cin: int = 1
    cout: int = 0
    kernel: int = 1
    stride: int = 1
    pad: int = -1
    groups: int = 1
    expand: float = 1.0
    act: str = "none"
    se: bool = False
    residual: bool | None = None
    pool: str = "avg"
    batch: int = 1
    dtype: str = "float32"
    tokens: int = 1
    heads: int = 1
    dilation: int = 1
    kernel_w: int = 0
    pad_w: int = -1
    out_pad: int = 0
    scale: int = 1
    mode: str = ""
    axes: str = ""
    alpha: float = LEAKY_ALPHA

    def __post_init__(self) -> None:
        kind = self.kind
        if kind not in OP_KINDS:
            raise SpecError(f"unknown op kind {kind!r}; known kinds: {', '.join(OP_KINDS)}")
        if self.act not in ALL_ACTIVATIONS:
            raise SpecError(f"unknown activation {self.act!r} in {kind} spec; known: "
                            f"{', '.join(ALL_ACTIVATIONS)}")
        if self.dtype not in DTYPES:
            raise SpecError(f"unsupported dtype {self.dtype!r}; supported: {', '.join(DTYPES)}")
        for name in _POSITIVE:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"{kind} spec field {name} must be a positive integer, "
                                f"got {value!r}")
        # cout 0 means "same as cin" and a negative pad means "the default padding".
        for name, minimum in _INTEGERS.items():
            value = getattr(self, name)
            if (not isinstance(value, int) or isinstance(value, bool)
                    or (minimum is not None and value < minimum)):
                raise SpecError(f"{kind} spec field {name} must be an integer"
                                f"{'' if minimum is None else f' >= {minimum}'}, got {value!r}")
        for name in ("mode", "axes"):
            if not isinstance(getattr(self, name), str):
                raise SpecError(f"{kind} spec field {name} must be a string, "
                                f"got {getattr(self, name)!r}")
        if (not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool)
                or not math.isfinite(self.alpha)):
            raise SpecError(f"{kind} spec field alpha must be a finite number, got {self.alpha!r}")
        self._normalise()
        if any(d < 1 for d in self.output_shape):
            raise SpecError(f"{kind} spec gives an empty output {self.output_shape} for input "
                            f"{self.input_shape} ({self._shape_fields()})")

    def _shape_fields(self) -> str:
        """The fields besides the input that shape the output, for messages."""
        names = [*KEY_FIELDS[self.kind], *(name for name in OPTIONAL_FIELDS[self.kind]
                                           if getattr(self, name) != _DEFAULTS[name])]
        return ", ".join(f"{name} {getattr(self, name)}" for name in names
                         if name not in ("batch", "h", "w", "cin", "act", "alpha"))

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _normalise(self) -> None:
        """Fill defaults and reset the fields a kind ignores, so equal operators have equal keys."""
        kind = self.kind
        keep = set(KEY_FIELDS[kind]) | set(OPTIONAL_FIELDS[kind]) | {"kind", "dtype"}
        defaults = {f.name: f.default for f in fields(self)}
        if kind in ("conv", "dwconv"):
            self._normalise_window()
        elif kind == "pool" and self.pad < 0:
            self._set(pad=(self.kernel - 1) // 2)
        if kind == "conv":
            cout = self.cout or self.cin
            if self.cin % self.groups or cout % self.groups:
                raise SpecError(f"conv groups={self.groups} must divide cin={self.cin} and "
                                f"cout={cout}")
            if self.mode not in MODES[kind]:
                raise SpecError(f"conv mode must be '' (the default) or {CONV_SHARED_S8!r}, "
                                f"got {self.mode!r}")
            self._set(cout=cout, mode=self.mode if self.dtype == "int8" else "")
        elif kind == "dwconv":
            self._set(cout=self.cin, groups=self.cin)
            keep |= {"cout", "groups"}
        elif kind == "mbconv":
            cout = self.cout or self.cin
            if self.expand <= 0:
                raise SpecError(f"mbconv expand must be > 0, got {self.expand}")
            can_add = self.stride == 1 and cout == self.cin
            residual = can_add if self.residual is None else bool(self.residual)
            if residual and not can_add:
                raise SpecError("mbconv residual needs stride 1 and cin == cout "
                                f"(got stride {self.stride}, {self.cin} -> {cout})")
            self._set(cout=cout, residual=residual, expand=float(self.expand), se=bool(self.se))
        elif kind == "linear":
            self._set(cout=self.cout or self.cin)
            keep |= {"h", "w"}
        elif kind == "pool":
            if self.pool not in POOL_TYPES:
                raise SpecError(f"unknown pool type {self.pool!r}; known: {', '.join(POOL_TYPES)}")
            if self.pool == "gavg":
                keep -= {"kernel", "stride", "pad"}
        elif kind == "se":
            if not 0 < self.expand <= 1:
                raise SpecError(f"se expand (mid/cin ratio) must be in (0, 1], got {self.expand}")
            if self.act == "none":
                self._set(act="sigmoid")
            self._set(expand=float(self.expand))
        elif kind == "concat":
            if self.groups < 2:
                raise SpecError(f"concat needs at least 2 inputs (groups), got {self.groups}")
            axes = "" if self.axes in ("", "1") else self.axes
            if axes not in ("", "2", "3"):
                raise SpecError(f"concat axes must be '1' (channels), '2' (H) or '3' (W), "
                                f"got {self.axes!r}")
            size = self.h if axes == "2" else self.w
            if axes and size % self.groups:
                raise SpecError(f"concat of {self.groups} equal parts along axis {axes} needs "
                                f"{'h' if axes == '2' else 'w'}={size} divisible by groups")
            self._set(axes=axes)
        else:
            self._normalise_new(kind)
        if "act" in keep and self.act == "leakyrelu":
            self._set(alpha=float(f"{float(self.alpha):g}"))
        else:
            keep.discard("alpha")
        for name, default in defaults.items():
            if name not in keep:
                self._set(**{name: default})
        if kind == "linear":
            self._set(h=1, w=1)
        if self.pad < 0:
            self._set(pad=0)
        if self.residual is None:
            self._set(residual=False)
        if "cout" not in KEY_FIELDS[kind] and kind != "dwconv":
            self._set(cout=0)

    def _normalise_window(self) -> None:
        """conv/dwconv: kernel_w 0 stands for a square kernel and pad_w -1 for pad_w == pad, so
        a square, symmetric, undilated conv has exactly the fields (and key) it always had."""
        kernel_w = self.kernel_w or self.kernel
        if self.pad < 0:
            pad = self.dilation * (self.kernel // 2)
            pad_w = self.pad_w if self.pad_w >= 0 else self.dilation * (kernel_w // 2)
        else:
            pad = self.pad
            pad_w = self.pad_w if self.pad_w >= 0 else pad
        self._set(pad=pad, kernel_w=0 if kernel_w == self.kernel else kernel_w,
                  pad_w=-1 if pad_w == pad else pad_w)

    def _normalise_new(self, kind: str) -> None:
        """Checks and defaults of the kinds beyond the first ten (their own fields only)."""
        if kind in MODES:
            mode = self.mode or MODES[kind][0]
            if mode not in MODES[kind]:
                known = ", ".join(m or "'' (the default)" for m in MODES[kind])
                raise SpecError(f"{kind} mode must be one of {known}, got {self.mode!r}")
            self._set(mode=mode if kind != "bmm" or self.dtype == "int8" else "")
        if kind in ("tlinear", "bmm"):
            self._set(cout=self.cout or self.cin)
        elif kind == "transpose":
            if sorted(self.axes) != list("0123") or self.axes == "0123":
                raise SpecError(f"transpose axes must be a permutation of '0123' other than "
                                f"the identity, got {self.axes!r}")
        elif kind == "reduce":
            if (not self.axes or any(a not in "123" for a in self.axes)
                    or list(self.axes) != sorted(set(self.axes))):
                raise SpecError(f"reduce axes must be increasing distinct axes among 1, 2, 3 "
                                f"(e.g. '23', '1'), got {self.axes!r}")
        elif kind == "convt":
            cout = self.cout or self.cin
            if self.cin % self.groups or cout % self.groups:
                raise SpecError(f"convt groups={self.groups} must divide cin={self.cin} and "
                                f"cout={cout}")
            if self.out_pad >= self.stride:
                raise SpecError(f"convt out_pad must be smaller than stride, got out_pad "
                                f"{self.out_pad} with stride {self.stride}")
            self._set(cout=cout, pad=max(self.pad, 0))
        elif kind == "pad":
            if self.pad < 1:
                raise SpecError(f"pad spec field pad must be a positive integer, got {self.pad}")
            if self.mode == "reflect" and (self.pad >= self.h or self.pad >= self.w):
                raise SpecError(f"reflect pad {self.pad} must be smaller than h={self.h} and "
                                f"w={self.w}")
        elif kind == "slice":
            if not 1 <= self.cout < self.cin:
                raise SpecError(f"slice keeps cout channels of cin: need 1 <= cout < cin, got "
                                f"cout={self.cout}, cin={self.cin}")
        elif kind == "shuffle":
            if self.groups < 2 or self.cin % self.groups:
                raise SpecError(f"shuffle groups={self.groups} must be >= 2 and divide "
                                f"cin={self.cin}")

    # --- shapes ---------------------------------------------------------------------------
    @property
    def out_h(self) -> int:
        return self._spatial_out(0)

    @property
    def out_w(self) -> int:
        return self._spatial_out(1)

    def _spatial_out(self, axis: int) -> int:
        """Output height (axis 0) or width (axis 1); 1 for kinds without spatial axes."""
        kind, size = self.kind, (self.h, self.w)[axis]
        if kind in ("conv", "dwconv"):
            kernel = self.kernel_w or self.kernel if axis else self.kernel
            pad = self.pad_w if axis and self.pad_w >= 0 else self.pad
            return (size + 2 * pad - self.dilation * (kernel - 1) - 1) // self.stride + 1
        if kind == "pool":
            if self.pool == "gavg":
                return 1
            return (size + 2 * self.pad - self.kernel) // self.stride + 1
        if kind == "mbconv":
            return (size + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1
        if kind in ("convt", "resize", "pad", "reduce", "transpose"):
            return self.output_shape[2 + axis]
        return size

    @property
    def out_c(self) -> int:
        if self.kind in ("transpose", "reduce"):
            return self.output_shape[1]
        return self.cout if "cout" in KEY_FIELDS[self.kind] or self.kind == "dwconv" else self.cin

    @property
    def mid(self) -> int:
        """Middle channels of an mbconv (expanded) or se (squeezed) kernel."""
        if self.kind == "mbconv":
            return max(1, round(self.cin * self.expand))
        if self.kind == "se":
            return max(1, round(self.cin * self.expand))
        raise SpecError(f"{self.kind} spec has no middle channels")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of the (first) input: NCHW for images, (N, C) for linear, token tensors
        [N, T, C] or [N, heads, T, C] for the transformer kinds; for concat the joined shape
        (batch, cin, h, w) (its parts are `input_shapes`)."""
        if self.kind == "concat":
            return (self.batch, self.cin, self.h, self.w)
        return self.input_shapes[0]

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of every input the kernel reads (two for add, mul and bmm; `groups` equal
        parts for concat)."""
        n, kind = self.batch, self.kind
        if kind == "linear":
            return [(n, self.cin)]
        if kind in ("tlinear", "layernorm", "clstoken", "gather", "posembed"):
            return [(n, self.tokens, self.cin)]
        if kind == "softmax":
            return [(n, self.heads, self.tokens, self.cin)]
        if kind == "bmm":
            return [(n, self.heads, self.tokens, self.cin), (n, self.heads, self.cin, self.cout)]
        image = (n, self.cin, self.h, self.w)
        if kind in ("add", "mul"):
            return [image, image]
        if kind == "concat":
            axis = int(self.axes or 1)
            part = list(image)
            part[axis] = max(1, image[axis] // self.groups)
            return [tuple(part)] * self.groups
        return [image]

    @property
    def output_shape(self) -> tuple[int, ...]:
        n, kind = self.batch, self.kind
        if kind == "linear":
            return (n, self.cout)
        if kind == "tlinear":
            return (n, self.tokens, self.cout)
        if kind == "bmm":
            return (n, self.heads, self.tokens, self.cout)
        if kind in ("softmax", "layernorm", "posembed"):
            return self.input_shape
        if kind == "clstoken":
            return (n, self.tokens + 1, self.cin)
        if kind == "gather":
            return (n, self.cin)
        if kind == "transpose":
            return tuple(self.input_shape[int(a)] for a in self.axes)
        if kind == "convt":
            def size(s: int) -> int:
                return (s - 1) * self.stride - 2 * self.pad + self.kernel + self.out_pad
            return (n, self.cout, size(self.h), size(self.w))
        if kind == "resize":
            return (n, self.cin, self.h * self.scale, self.w * self.scale)
        if kind == "pad":
            return (n, self.cin, self.h + 2 * self.pad, self.w + 2 * self.pad)
        if kind == "slice":
            return (n, self.cout, self.h, self.w)
        if kind == "reduce":
            return tuple(1 if str(i) in self.axes else d for i, d in enumerate(self.input_shape))
        if kind in ("instnorm", "shuffle", "concat", "add", "mul", "act", "se"):
            return (n, self.cin, self.h, self.w)
        return (n, self.out_c, self.out_h, self.out_w)

    # --- key --------------------------------------------------------------------------------
    def key(self) -> str:
        """Canonical, stable key.

        e.g. `conv:n=1,h=32,w=32,cin=16,cout=32,k=3,s=1,p=1,g=1,act=relu,dtype=float32`
        """
        names = KEY_FIELDS[self.kind] + tuple(
            name for name in OPTIONAL_FIELDS[self.kind] if getattr(self, name) != _DEFAULTS[name])
        parts = [f"{_SHORT.get(name, name)}={_fmt(getattr(self, name))}" for name in names]
        return f"{self.kind}:{','.join(parts)},dtype={self.dtype}"

    @classmethod
    def from_key(cls, key: str) -> OpSpec:
        kind, sep, body = key.partition(":")
        if not sep or not body:
            raise SpecError(f"malformed spec key {key!r}: expected 'kind:field=value,...'")
        values: dict[str, Any] = {}
        for item in body.split(","):
            name, eq, raw = item.partition("=")
            name = _LONG.get(name, name)
            if not eq or name not in _TYPES or name == "kind":
                raise SpecError(f"malformed spec key {key!r}: bad field {item!r}")
            values[name] = _parse(name, raw)
        spec = cls(kind=kind, **values)
        if spec.key() != key:
            raise SpecError(f"spec key {key!r} is not canonical (canonical: {spec.key()!r})")
        return spec

    def fields_dict(self) -> dict[str, Any]:
        """The spec's fields as plain values, for tables and Parquet columns."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_(self, **changes: Any) -> OpSpec:
        return replace(self, **changes)


_DEFAULTS = {f.name: f.default for f in fields(OpSpec)}
_TYPES = {f.name: str(f.type) for f in fields(OpSpec)}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _parse(name: str, raw: str) -> Any:
    kind = _TYPES[name]
    if kind.startswith("bool"):
        return raw == "1"
    if kind == "str":
        return raw
    try:
        return float(raw) if kind == "float" else int(raw)
    except ValueError as exc:
        what = "a number" if kind == "float" else "an integer"
        raise SpecError(f"spec field {name} must be {what}, got {raw!r}") from exc


def decompose(spec: OpSpec) -> list[OpSpec]:
    """Split a fused mbconv into the primitive kernels a runtime executes one by one."""
    if spec.kind != "mbconv":
        return [spec]
    mid = spec.mid
    out: list[OpSpec] = []
    dtype = spec.dtype
    if mid != spec.cin or spec.expand != 1.0:
        out.append(OpSpec("conv", h=spec.h, w=spec.w, cin=spec.cin, cout=mid, kernel=1,
                          act=spec.act, batch=spec.batch, alpha=spec.alpha, dtype=dtype))
    out.append(OpSpec("dwconv", h=spec.h, w=spec.w, cin=mid, kernel=spec.kernel,
                      stride=spec.stride, act=spec.act, batch=spec.batch, alpha=spec.alpha,
                      dtype=dtype))
    oh, ow = spec.out_h, spec.out_w
    if spec.se:
        out.append(OpSpec("se", h=oh, w=ow, cin=mid, expand=0.25, act=se_gate(spec.act),
                          batch=spec.batch, dtype=dtype))
    out.append(OpSpec("conv", h=oh, w=ow, cin=mid, cout=spec.cout, kernel=1, batch=spec.batch,
                      dtype=dtype))
    if spec.residual:
        out.append(OpSpec("add", h=oh, w=ow, cin=spec.cout, batch=spec.batch, dtype=dtype))
    return out


def se_gate(block_act: str) -> str:
    """Gate of the squeeze-excite inside an mbconv: hard sigmoid beside h-swish, else sigmoid."""
    return "hsigmoid" if block_act == "hswish" else "sigmoid"


def timed_alone(spec: OpSpec) -> OpSpec:
    """The kernel a campaign times for `spec`: without the network context its key may name
    (`CONV_SHARED_S8`: alone, a conv's tensors have one reader each)."""
    return spec.with_(mode="") if spec.kind == "conv" and spec.mode else spec


def precision_forms(spec: OpSpec, dtype: str) -> list[OpSpec]:
    """`spec` in precision `dtype` as a plan measures it: an INT8 bmm in both of its forms
    (`BMM_SYMMETRIC` and not) - a model file may hold either, and LiteRT runs them on
    different kernels; a conv without its `CONV_SHARED_S8` mark (a plan built around a user's
    QDQ model times the conv alone)."""
    spec = timed_alone(spec if spec.dtype == dtype else spec.with_(dtype=dtype))
    if spec.kind == "bmm" and dtype == "int8":
        return [spec.with_(mode=""), spec.with_(mode=BMM_SYMMETRIC)]
    return [spec]
