"""OpSpec: one operator or fused kernel with its shapes, and its canonical key.

The key is the join key between measurement, dataset and predictor, so it must never change for
the same operator: it lists only the fields that matter for a kind, in a fixed order, after the
spec has been normalised (defaults filled in, irrelevant fields reset).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from latbench.errors import SpecError

OP_KINDS = ("conv", "dwconv", "mbconv", "linear", "pool", "add", "mul", "act", "se", "concat")
ACTIVATIONS = ("none", "relu", "relu6", "hswish", "hsigmoid", "sigmoid", "swish")
POOL_TYPES = ("avg", "max", "gavg")
DTYPES = ("float32",)

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
}
_SHORT = {"batch": "n", "kernel": "k", "stride": "s", "pad": "p", "groups": "g", "expand": "e"}
_LONG = {v: k for k, v in _SHORT.items()}


@dataclass(frozen=True)
class OpSpec:
    """One operator or fused kernel, batch x H x W x C in, NCHW semantics.

    - conv: `groups` divides cin and cout; padding defaults to kernel // 2.
    - dwconv: depthwise, cout = groups = cin.
    - mbconv: [1x1 expand + act] -> kxk depthwise (stride) + act -> [squeeze-excite] ->
      1x1 project; `expand` is the ratio mid/cin; residual add when stride 1 and cin == cout
      unless `residual=False`.
    - linear: cin -> cout features (h = w = 1).
    - pool: avg or max with kernel/stride/pad, or gavg (global average, output 1x1).
    - add, mul: two same-shape inputs, elementwise; add may carry an activation.
    - act: a standalone activation.
    - se: squeeze-excite on an HxWxC tensor; mid = max(1, round(cin * expand)); gate `act`.
    - concat: `groups` inputs concatenated along channels, `cin` channels in total.
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

    def __post_init__(self) -> None:
        kind = self.kind
        if kind not in OP_KINDS:
            raise SpecError(f"unknown op kind {kind!r}; known kinds: {', '.join(OP_KINDS)}")
        if self.act not in ACTIVATIONS:
            raise SpecError(f"unknown activation {self.act!r} in {kind} spec; known: "
                            f"{', '.join(ACTIVATIONS)}")
        if self.dtype not in DTYPES:
            raise SpecError(f"unsupported dtype {self.dtype!r}; supported: {', '.join(DTYPES)}")
        for name in ("h", "w", "cin", "kernel", "stride", "groups", "batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"{kind} spec field {name} must be a positive integer, "
                                f"got {value!r}")
        # cout 0 means "same as cin" and a negative pad means "the default padding".
        for name, minimum in (("cout", 0), ("pad", None)):
            value = getattr(self, name)
            if (not isinstance(value, int) or isinstance(value, bool)
                    or (minimum is not None and value < minimum)):
                raise SpecError(f"{kind} spec field {name} must be an integer"
                                f"{'' if minimum is None else f' >= {minimum}'}, got {value!r}")
        self._normalise()
        if self.out_h < 1 or self.out_w < 1:
            raise SpecError(f"{kind} spec gives an empty output ({self.out_h}x{self.out_w}) for "
                            f"input {self.h}x{self.w}, kernel {self.kernel}, stride {self.stride}")

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _normalise(self) -> None:
        """Fill defaults and reset the fields a kind ignores, so equal operators have equal keys."""
        kind = self.kind
        keep = set(KEY_FIELDS[kind]) | {"kind", "dtype"}
        defaults = {f.name: f.default for f in fields(self)}
        if kind in ("conv", "dwconv", "pool") and self.pad < 0:
            self._set(pad=self.kernel // 2 if kind != "pool" else (self.kernel - 1) // 2)
        if kind == "conv":
            cout = self.cout or self.cin
            if self.cin % self.groups or cout % self.groups:
                raise SpecError(f"conv groups={self.groups} must divide cin={self.cin} and "
                                f"cout={cout}")
            self._set(cout=cout)
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
        for name, default in defaults.items():
            if name not in keep:
                self._set(**{name: default})
        if kind == "linear":
            self._set(h=1, w=1)
        if self.pad < 0:
            self._set(pad=0)
        if self.residual is None:
            self._set(residual=False)
        if kind not in ("conv", "dwconv", "mbconv", "linear"):
            self._set(cout=0)

    # --- shapes ---------------------------------------------------------------------------
    @property
    def out_h(self) -> int:
        return self._out(self.h)

    @property
    def out_w(self) -> int:
        return self._out(self.w)

    def _out(self, size: int) -> int:
        if self.kind in ("conv", "dwconv") or (self.kind == "pool" and self.pool != "gavg"):
            return (size + 2 * self.pad - self.kernel) // self.stride + 1
        if self.kind == "mbconv":
            return (size + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1
        if self.kind == "pool":
            return 1
        return size

    @property
    def out_c(self) -> int:
        return self.cout if self.kind in ("conv", "dwconv", "mbconv", "linear") else self.cin

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
        """NCHW shape of the (first) input; (N, C) for linear."""
        if self.kind == "linear":
            return (self.batch, self.cin)
        return (self.batch, self.cin, self.h, self.w)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.batch, self.cout)
        return (self.batch, self.out_c, self.out_h, self.out_w)

    # --- key --------------------------------------------------------------------------------
    def key(self) -> str:
        """Canonical, stable key.

        e.g. `conv:n=1,h=32,w=32,cin=16,cout=32,k=3,s=1,p=1,g=1,act=relu,dtype=float32`
        """
        parts = [f"{_SHORT.get(name, name)}={_fmt(getattr(self, name))}"
                 for name in KEY_FIELDS[self.kind]]
        return f"{self.kind}:{','.join(parts)},dtype={self.dtype}"

    @classmethod
    def from_key(cls, key: str) -> OpSpec:
        kind, sep, body = key.partition(":")
        if not sep or not body:
            raise SpecError(f"malformed spec key {key!r}: expected 'kind:field=value,...'")
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for item in body.split(","):
            name, eq, raw = item.partition("=")
            name = _LONG.get(name, name)
            if not eq or name not in types:
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


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _parse(name: str, raw: str) -> Any:
    if name in ("se", "residual"):
        return raw == "1"
    if name == "expand":
        return float(raw)
    if name in ("act", "pool", "dtype"):
        return raw
    try:
        return int(raw)
    except ValueError as exc:
        raise SpecError(f"spec field {name} must be an integer, got {raw!r}") from exc


def decompose(spec: OpSpec) -> list[OpSpec]:
    """Split a fused mbconv into the primitive kernels a runtime executes one by one."""
    if spec.kind != "mbconv":
        return [spec]
    mid = spec.mid
    out: list[OpSpec] = []
    if mid != spec.cin or spec.expand != 1.0:
        out.append(OpSpec("conv", h=spec.h, w=spec.w, cin=spec.cin, cout=mid, kernel=1,
                          act=spec.act, batch=spec.batch))
    out.append(OpSpec("dwconv", h=spec.h, w=spec.w, cin=mid, kernel=spec.kernel,
                      stride=spec.stride, act=spec.act, batch=spec.batch))
    oh, ow = spec.out_h, spec.out_w
    if spec.se:
        out.append(OpSpec("se", h=oh, w=ow, cin=mid, expand=0.25, act=se_gate(spec.act),
                          batch=spec.batch))
    out.append(OpSpec("conv", h=oh, w=ow, cin=mid, cout=spec.cout, kernel=1, batch=spec.batch))
    if spec.residual:
        out.append(OpSpec("add", h=oh, w=ow, cin=spec.cout, batch=spec.batch))
    return out


def se_gate(block_act: str) -> str:
    """Gate of the squeeze-excite inside an mbconv: hard sigmoid beside h-swish, else sigmoid."""
    return "hsigmoid" if block_act == "hswish" else "sigmoid"
