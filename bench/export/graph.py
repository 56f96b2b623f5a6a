"""A tiny layer graph with weights: the one description every exporter and the reference reads.

Specs and chains of specs become a `LayerGraph` once (weights drawn from a seeded generator);
`to_onnx`, `to_tflite` and `reference` each walk the same graph, so the three agree by
construction on structure and weights and differ only in the runtime that executes them.
Tensors are NCHW (or NC after a linear layer); exporters that need NHWC transpose on the way out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latbench.bench.ops import OpSpec, se_gate
from latbench.errors import ExportError

# Layer ops of the graph (not spec kinds): each maps to one or a few runtime operators.
LAYER_OPS = ("conv", "linear", "add", "mul", "act", "pool", "gpool", "concat")


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

    def input(self, shape: Sequence[int]) -> str:
        name = "input" if not self.inputs else f"input{len(self.inputs)}"
        self.inputs.append(name)
        self.shapes[name] = tuple(int(d) for d in shape)
        return name

    def _add(self, op: str, inputs: list[str], shape: tuple[int, ...], attrs: dict[str, Any],
             weights: dict[str, np.ndarray] | None = None) -> str:
        name = f"t{len(self.layers)}_{op}"
        self.layers.append(Layer(op, inputs, name, attrs, weights or {}))
        self.shapes[name] = shape
        return name

    def conv(self, x: str, cout: int, kernel: int, stride: int = 1, pad: int | None = None,
             groups: int = 1, act: str = "none") -> str:
        n, cin, h, w = self.shapes[x]
        pad = kernel // 2 if pad is None else pad
        if cin % groups or cout % groups:
            raise ExportError(f"conv groups={groups} must divide cin={cin} and cout={cout}")
        fan_in = (cin // groups) * kernel * kernel
        weight = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin // groups, kernel, kernel))
        bias = self.rng.normal(0.0, 0.1, cout)
        oh = (h + 2 * pad - kernel) // stride + 1
        ow = (w + 2 * pad - kernel) // stride + 1
        return self._add("conv", [x], (n, cout, oh, ow),
                         {"kernel": kernel, "stride": stride, "pad": pad, "groups": groups,
                          "act": act},
                         {"weight": weight.astype(np.float32), "bias": bias.astype(np.float32)})

    def linear(self, x: str, cout: int, act: str = "none") -> str:
        shape = self.shapes[x]
        cin = int(np.prod(shape[1:]))
        weight = self.rng.normal(0.0, np.sqrt(1.0 / cin), (cout, cin))
        bias = self.rng.normal(0.0, 0.1, cout)
        return self._add("linear", [x], (shape[0], cout), {"act": act},
                         {"weight": weight.astype(np.float32), "bias": bias.astype(np.float32)})

    def add(self, a: str, b: str, act: str = "none") -> str:
        self._same_shape("add", a, b)
        return self._add("add", [a, b], self.shapes[a], {"act": act})

    def mul(self, a: str, b: str) -> str:
        """Elementwise product; `b` may be (N, C, 1, 1) and broadcast, as in squeeze-excite."""
        sa, sb = self.shapes[a], self.shapes[b]
        if sa != sb and sb != (sa[0], sa[1], 1, 1):
            raise ExportError(f"mul of shapes {sa} and {sb}: second must match or be (N, C, 1, 1)")
        return self._add("mul", [a, b], sa, {})

    def act(self, x: str, kind: str) -> str:
        return self._add("act", [x], self.shapes[x], {"act": kind})

    def pool(self, x: str, kind: str, kernel: int, stride: int, pad: int = 0) -> str:
        n, c, h, w = self.shapes[x]
        oh = (h + 2 * pad - kernel) // stride + 1
        ow = (w + 2 * pad - kernel) // stride + 1
        return self._add("pool", [x], (n, c, oh, ow),
                         {"pool": kind, "kernel": kernel, "stride": stride, "pad": pad})

    def gpool(self, x: str) -> str:
        n, c, _, _ = self.shapes[x]
        return self._add("gpool", [x], (n, c, 1, 1), {})

    def concat(self, xs: Sequence[str]) -> str:
        shapes = [self.shapes[x] for x in xs]
        n, _, h, w = shapes[0]
        if any(s[0] != n or s[2:] != (h, w) for s in shapes):
            raise ExportError(f"concat inputs differ beyond channels: {shapes}")
        return self._add("concat", list(xs), (n, sum(s[1] for s in shapes), h, w), {})

    def _same_shape(self, op: str, a: str, b: str) -> None:
        if self.shapes[a] != self.shapes[b]:
            raise ExportError(f"{op} of different shapes {self.shapes[a]} and {self.shapes[b]}")

    def finish(self, output: str) -> LayerGraph:
        return LayerGraph(list(self.inputs), list(self.layers), output, dict(self.shapes))


def emit_spec(builder: GraphBuilder, spec: OpSpec, x: str) -> str:
    """Append the layers of one spec, reading tensor `x`; returns the output tensor.

    Inside a chain a two-input kernel (add, mul) reads `x` twice; concat only exists as a
    single-op model (`spec_graph`), where every operand is a graph input of its own.
    """
    kind = spec.kind
    if builder.shapes[x][1:] != spec.input_shape[1:]:
        raise ExportError(f"spec {spec.key()} expects input {spec.input_shape}, "
                          f"chain gives {builder.shapes[x]}")
    if kind == "conv":
        return builder.conv(x, spec.cout, spec.kernel, spec.stride, spec.pad, spec.groups, spec.act)
    if kind == "dwconv":
        return builder.conv(x, spec.cin, spec.kernel, spec.stride, spec.pad, spec.cin, spec.act)
    if kind == "mbconv":
        return _emit_mbconv(builder, spec, x)
    if kind == "linear":
        return builder.linear(x, spec.cout, spec.act)
    if kind == "pool":
        if spec.pool == "gavg":
            return builder.gpool(x)
        return builder.pool(x, spec.pool, spec.kernel, spec.stride, spec.pad)
    if kind == "add":
        return builder.add(x, x, spec.act)
    if kind == "mul":
        return builder.mul(x, x)
    if kind == "act":
        return builder.act(x, spec.act)
    if kind == "se":
        return _emit_se(builder, x, spec.mid, spec.act)
    if kind == "concat":
        raise ExportError(f"concat cannot be chained, only measured alone: {spec.key()}")
    raise ExportError(f"no exporter for op kind {kind!r}")


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
    """The single-kernel model measured for a spec; each operand of add/mul/concat is an input."""
    builder = GraphBuilder(np.random.default_rng(seed))
    if spec.kind in ("add", "mul"):
        a, b = builder.input(spec.input_shape), builder.input(spec.input_shape)
        return builder.finish(builder.add(a, b, spec.act) if spec.kind == "add"
                              else builder.mul(a, b))
    if spec.kind == "concat":
        part = spec.cin // spec.groups
        if part * spec.groups != spec.cin:
            raise ExportError(f"concat of {spec.groups} inputs needs cin divisible by it: "
                              f"{spec.key()}")
        shape = (spec.batch, part, spec.h, spec.w)
        return builder.finish(builder.concat([builder.input(shape) for _ in range(spec.groups)]))
    return builder.finish(emit_spec(builder, spec, builder.input(spec.input_shape)))


def chain_graph(specs: Sequence[OpSpec], seed: int = 0) -> LayerGraph:
    """A whole network made of specs applied one after another (a chain of fused kernels).

    A linear spec after a 4-D tensor is preceded by nothing: the global pool spec before it
    leaves (N, C, 1, 1), which the linear layer flattens.
    """
    if not specs:
        raise ExportError("a network needs at least one spec")
    builder = GraphBuilder(np.random.default_rng(seed))
    x = builder.input(specs[0].input_shape)
    for spec in specs:
        if spec.kind == "linear" and len(builder.shapes[x]) == 4:
            n, c, h, w = builder.shapes[x]
            if (h, w) != (1, 1) or c != spec.cin:
                raise ExportError(f"linear spec {spec.key()} after tensor {builder.shapes[x]}")
            x = builder.linear(x, spec.cout, spec.act)
            continue
        x = emit_spec(builder, spec, x)
    return builder.finish(x)
