"""NAS-Bench-201: one searchable cell (a DAG of 4 nodes, 6 edges x 5 operations) repeated in a
fixed macro network, 15,625 architectures.

Macro network (as in the benchmark): stem 3x3 conv (16 ch) + BN; three stages of 5 cells at
16, 32, 64 channels (32x32, 16x16, 8x8 for 32x32 inputs) joined by residual reduction blocks;
BN + ReLU, global average pool, linear classifier. A cell's node j is the sum of its incoming
edges; the cell's output is node 3.

Two deliberate choices keep every architecture's kernels predictable (the ONNX kernel parser
gives exactly `ops(arch)`, which a test checks):
- convolutions are Conv-BN-ReLU (one fused kernel) where the benchmark writes ReLU-Conv-BN;
- edges that cannot reach the cell output, and "none" edges, are left out of the network (the
  exporter drops dead computation anyway); a cell whose output is cut off from its input
  outputs zeros (`x * 0`, one "mul" kernel), as the benchmark's Zero op does;
- a computation that occurs twice is one kernel, as the exporter merges common subexpressions:
  two pools of the same tensor, and node 3's sum of its first two inputs when node 2 sums the
  same parameter-free edges (skip connections, pools) of the same nodes in the same order.

The searchable "layers" are the 6 edges; an architecture's choices are shared by all 15 cells.
Latency per (edge, operation) is that operation's kernels summed over the 15 cells (plus one
add for edges that join a node with other inputs), so LatencyTable stays additive. The table
is exact when no edge is "none" and no computation repeats; otherwise it may over-estimate, by
the dead edges, the merged pools and the merged adds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from latbench.bench.ops import OpSpec
from latbench.bench.spaces.base import Arch, SearchSpace, register_space
from latbench.errors import SearchError

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# Edges in the benchmark's order, as (to node, from node).
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
# Edges priced with an add in the table: every input of a node except its first edge.
_ADD_EDGES = frozenset({2, 4, 5})
PUBLIC_SOURCE = "https://github.com/D-X-Y/NAS-Bench-201"


def live_edges(ops: tuple[str, ...]) -> list[int]:
    """Edges whose operation runs: not "none", fed from node 0 and reaching node 3."""
    reach = {0}
    for e, (to, frm) in enumerate(EDGES):
        if ops[e] != "none" and frm in reach:
            reach.add(to)
    if 3 not in reach:
        return []
    needed = {3}
    for e in reversed(range(len(EDGES))):
        to, frm = EDGES[e]
        if ops[e] != "none" and to in needed and frm in reach:
            needed.add(frm)
    return [e for e, (to, frm) in enumerate(EDGES)
            if ops[e] != "none" and frm in reach and to in needed]


def edge_kernels(op: str, size: int, channels: int) -> list[OpSpec]:
    """Kernels of one edge operation on a size x size x channels node."""
    shape = {"h": size, "w": size, "cin": channels}
    if op in ("none", "skip_connect"):
        return []
    if op == "nor_conv_1x1":
        return [OpSpec("conv", **shape, cout=channels, kernel=1, act="relu")]
    if op == "nor_conv_3x3":
        return [OpSpec("conv", **shape, cout=channels, kernel=3, act="relu")]
    if op == "avg_pool_3x3":
        return [OpSpec("pool", **shape, pool="avg", kernel=3, stride=1, pad=1)]
    raise SearchError(f"unknown NAS-Bench-201 operation {op!r}; known: {', '.join(OPS)}")


@register_space("nasbench201")
class NasBench201(SearchSpace):
    name = "nasbench201"
    is_chain = False
    training_defaults = {"cells": 2}

    def __init__(self, resolution: int = 32, channels: int = 16, cells: int = 5,
                 num_classes: int = 10) -> None:
        if resolution < 4 or resolution % 4:
            raise SearchError(f"nasbench201 resolution must be a multiple of 4, got {resolution}")
        if channels < 1 or cells < 1:
            raise SearchError(f"nasbench201 needs channels >= 1 and cells >= 1, got {channels} "
                              f"and {cells}")
        self.resolution = resolution
        self.channels = channels
        self.cells = cells
        self.num_classes = num_classes
        self.input_shape = (1, 3, resolution, resolution)
        # (node size, channels) of each stage
        self.stages = [(resolution >> i, channels << i) for i in range(3)]

    @property
    def n_layers(self) -> int:
        return len(EDGES)

    def candidate_names(self, layer: int) -> list[str]:
        return list(OPS)

    def _cell_positions(self) -> list[tuple[int, int]]:
        return [stage for stage in self.stages for _ in range(self.cells)]

    def candidates(self, layer: int) -> list[list[OpSpec]]:
        out = []
        for op in OPS:
            kernels: list[OpSpec] = []
            for size, c in self._cell_positions():
                kernels += edge_kernels(op, size, c)
                if op != "none" and layer in _ADD_EDGES:
                    kernels.append(OpSpec("add", h=size, w=size, cin=c))
            out.append(kernels)
        return out

    def _stem(self) -> list[OpSpec]:
        r = self.resolution
        return [OpSpec("conv", h=r, w=r, cin=3, cout=self.channels, kernel=3)]

    def _reduction(self, stage: int) -> list[OpSpec]:
        size, cin = self.stages[stage - 1]
        cout, half = self.stages[stage][1], size // 2
        return [OpSpec("conv", h=size, w=size, cin=cin, cout=cout, kernel=3, stride=2,
                       act="relu"),
                OpSpec("conv", h=half, w=half, cin=cout, cout=cout, kernel=3),
                OpSpec("pool", h=size, w=size, cin=cin, pool="avg", kernel=2, stride=2, pad=0),
                OpSpec("conv", h=half, w=half, cin=cin, cout=cout, kernel=1),
                OpSpec("add", h=half, w=half, cin=cout)]

    def _head(self) -> list[OpSpec]:
        size, c = self.stages[-1]
        return [OpSpec("mul", h=size, w=size, cin=c),  # BatchNorm after an add: not folded
                OpSpec("act", h=size, w=size, cin=c, act="relu"),
                OpSpec("pool", h=size, w=size, cin=c, pool="gavg"),
                OpSpec("linear", cin=c, cout=self.num_classes)]

    def fixed_ops(self) -> tuple[list[OpSpec], list[OpSpec]]:
        """Stem and both reduction blocks (which sit between stages) first, then the head."""
        return [*self._stem(), *self._reduction(1), *self._reduction(2)], self._head()

    def cell_ops(self, arch: Arch, size: int, channels: int) -> list[OpSpec]:
        """Kernels of one cell in execution order: live edges and the adds joining them, each
        distinct computation once (the exporter merges repeated ones).

        Every tensor is written as the expression that computes it: a skip connection is its
        input's expression, a pool ("pool", input), a conv ("conv", edge) (its own weights), a
        node the left-to-right sum of its edges; an expression seen before costs nothing."""
        ops = self.op_names(arch)
        live = live_edges(ops)
        if not live:
            return [OpSpec("mul", h=size, w=size, cin=channels)]
        out: list[OpSpec] = []
        made: set[tuple] = set()

        def make(expression: tuple, kernels: list[OpSpec]) -> tuple:
            if expression not in made:
                made.add(expression)
                out.extend(kernels)
            return expression

        add = [OpSpec("add", h=size, w=size, cin=channels)]
        nodes: list[tuple | None] = [("input",)]
        for node in (1, 2, 3):
            total: tuple | None = None
            for e in live:
                to, source = EDGES[e]
                if to != node or (tensor := nodes[source]) is None:
                    continue
                if ops[e] == "skip_connect":
                    y = tensor
                else:
                    key = ("pool", tensor) if ops[e] == "avg_pool_3x3" else ("conv", e)
                    y = make(key, edge_kernels(ops[e], size, channels))
                total = y if total is None else make(("add", total, y), add)
            nodes.append(total)
        return out

    def ops(self, arch: Arch) -> list[OpSpec]:
        """Every kernel the network runs, in order (exact; the table sums per edge instead)."""
        self.check(arch)
        out = self._stem()
        for stage, (size, c) in enumerate(self.stages):
            if stage:
                out += self._reduction(stage)
            for _ in range(self.cells):
                out += self.cell_ops(arch, size, c)
        return out + self._head()

    def op_names(self, arch: Arch) -> tuple[str, ...]:
        return tuple(OPS[c] for c in self.check(arch).choices)

    def encode(self, arch: Arch) -> str:
        o = self.op_names(arch)
        return f"|{o[0]}~0|+|{o[1]}~0|{o[2]}~1|+|{o[3]}~0|{o[4]}~1|{o[5]}~2|"

    def decode(self, text: str) -> Arch:
        nodes = text.strip().split("+")
        ops: list[str] = []
        try:
            if len(nodes) != 3:
                raise ValueError("expected 3 nodes joined by '+'")
            for j, node in enumerate(nodes, start=1):
                parts = node.strip("|").split("|")
                if len(parts) != j:
                    raise ValueError(f"node {j} needs {j} inputs, got {len(parts)}")
                for k, part in enumerate(parts):
                    op, _, src = part.partition("~")
                    if src != str(k) or op not in OPS:
                        raise ValueError(f"bad edge {part!r}")
                    ops.append(op)
        except ValueError as exc:
            raise SearchError(f"not a NAS-Bench-201 cell string {text!r} ({exc}); expected "
                              "|op~0|+|op~0|op~1|+|op~0|op~1|op~2| with ops "
                              f"{', '.join(OPS)}") from None
        return Arch(self.name, tuple(OPS.index(op) for op in ops))

    # --- PyTorch (bench.spaces.nasbench201_torch) ------------------------------------------
    def to_torch(self, arch: Arch, num_classes: int | None = None) -> Any:
        from latbench.bench.spaces.nasbench201_torch import network

        if num_classes not in (None, self.num_classes):
            raise SearchError("build the nasbench201 space with num_classes= to change the head")
        return network(self, self.op_names(arch))

    def supernet_body(self, mixed: Callable[[int, list[Any]], Any]) -> Any:
        """The network with a mixed operation (over OPS) on every edge of every cell."""
        from latbench.bench.spaces.nasbench201_torch import supernet_body

        return supernet_body(self, mixed)

    def extract(self, body: Any, arch: Arch) -> Any:
        """The architecture's network holding copies of the chosen candidates' weights."""
        from latbench.bench.spaces.nasbench201_torch import extract

        return extract(self, body, self.check(arch).choices)
