"""The PyTorch side of NAS-Bench-201 (bench.spaces.nasbench201 describes the space without
torch): edge operations, cells, reduction blocks and the macro network, for an architecture,
for a supernet body (every operation on every edge) and for taking an architecture's network
out of a trained supernet body.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from latbench.bench.spaces.chain_torch import conv_bn_act
from latbench.bench.spaces.nasbench201 import EDGES, OPS, live_edges
from latbench.errors import SearchError

if TYPE_CHECKING:
    from latbench.bench.spaces.nasbench201 import NasBench201


class Zero(nn.Module):
    """The benchmark's "none" operation: zeros shaped like the input."""

    def forward(self, x):
        return x * 0.0


def make_op(op: str, channels: int) -> nn.Module:
    """A trainable module for one edge operation (channels in = out, stride 1)."""
    if op == "none":
        return Zero()
    if op == "skip_connect":
        return nn.Identity()
    if op in ("nor_conv_1x1", "nor_conv_3x3"):
        return conv_bn_act(channels, channels, 1 if op.endswith("1x1") else 3, act="relu")
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise SearchError(f"unknown NAS-Bench-201 operation {op!r}; known: {', '.join(OPS)}")


class Cell(nn.Module):
    """Node j = sum of its edges; `ops` None = every edge present (a supernet cell)."""

    def __init__(self, make_edge: Callable[[int], Any], ops: tuple[str, ...] | None) -> None:
        super().__init__()
        self.live = list(range(len(EDGES))) if ops is None else live_edges(ops)
        self.dead = ops is not None and not self.live
        self.edges = nn.ModuleDict({str(e): make_edge(e) for e in self.live})

    def forward(self, x):
        if self.dead:
            return x * 0.0
        nodes = [x]
        for node in (1, 2, 3):
            total = None
            for e in self.live:
                to, frm = EDGES[e]
                if to != node or nodes[frm] is None:
                    continue
                y = self.edges[str(e)](nodes[frm])
                total = y if total is None else total + y
            nodes.append(total)
        return nodes[3]


class Reduction(nn.Module):
    """The residual block halving the resolution between stages."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_a = conv_bn_act(cin, cout, 3, 2, act="relu")
        self.conv_b = conv_bn_act(cout, cout, 3)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class Network(nn.Module):
    """Stem, three stages of cells joined by reductions, head; `make_edge(edge, cell index,
    channels)` builds each edge's module."""

    def __init__(self, space: NasBench201, make_edge: Callable[[int, int, int], Any],
                 ops: tuple[str, ...] | None) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, space.channels, 3)
        stages = []
        cell_index = 0
        for s, (_, c) in enumerate(space.stages):
            blocks: list[nn.Module] = []
            if s:
                blocks.append(Reduction(space.stages[s - 1][1], c))
            for _ in range(space.cells):
                index = cell_index
                blocks.append(Cell(lambda e, i=index, c=c: make_edge(e, i, c), ops))
                cell_index += 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        c = space.stages[-1][1]
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, space.num_classes)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.classifier(self.pool(self.lastact(x)).flatten(1))


def network(space: NasBench201, ops: tuple[str, ...]) -> Network:
    """The network of one architecture (its operation per edge)."""
    return Network(space, lambda edge, cell, c: make_op(ops[edge], c), ops)


def supernet_body(space: NasBench201, mixed: Callable[[int, list[Any]], Any]) -> Network:
    """The network with `mixed(edge, modules of every operation)` on every edge of every cell."""
    return Network(space, lambda edge, cell, c: mixed(edge, [make_op(op, c) for op in OPS]),
                   None)


def extract(space: NasBench201, body: Network, choices: tuple[int, ...]) -> Network:
    """The network of `choices` holding copies of the chosen operations' weights of a supernet
    body, and the body's weights outside the cells."""
    ops = tuple(OPS[c] for c in choices)
    cells = [cell for stage in body.stages for cell in stage if isinstance(cell, Cell)]
    out = Network(space, lambda edge, cell, c: copy.deepcopy(
        cells[cell].edges[str(edge)].candidates[choices[edge]]), ops)
    fixed = {k: v for k, v in body.state_dict().items() if ".edges." not in k}
    missing = [k for k in out.state_dict() if ".edges." not in k and k not in fixed]
    if missing:
        raise SearchError(f"supernet body lacks {missing[0]} of the nasbench201 network")
    out.load_state_dict({**out.state_dict(), **fixed})
    return out
