"""NAS-Bench-201 cells and the spaces' three views (OpSpecs, PyTorch, ONNX): the ONNX kernel
parser must find exactly `space.ops(arch)` in the exported model, the latency table must be
additive per (edge, operation), and a supernet's chosen path must be the architecture's network
with the same weights."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from latbench.bench.kernels import onnx_to_kernels
from latbench.bench.ops import OpSpec, decompose
from latbench.bench.spaces import Arch, get_space
from latbench.bench.spaces.nasbench201 import OPS, NasBench201, live_edges
from latbench.errors import SearchError
from latbench.predictor.features import kernel_cost
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.model_level import Composition
from latbench.search.latency import LatencyTable

ALL_3X3 = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"
           "+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
CUT_OFF = "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def kernel_keys(specs) -> Counter:
    return Counter(p.key() for s in specs for p in decompose(s))


def test_encoding_round_trip_and_errors() -> None:
    space = get_space("nasbench201")
    assert space.size == 5 ** 6 and space.n_layers == 6 and space.is_chain is False
    arch = space.decode(ALL_3X3)
    assert arch.choices == (3,) * 6 and space.encode(arch) == ALL_3X3
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = space.sample(rng)
        assert space.decode(space.encode(a)) == a
    for bad in ("|nor_conv_3x3~0|", ALL_3X3.replace("~2|", "~1|"), ALL_3X3.replace("3x3", "5x5"),
                "|conv~0|+|a~0|b~1|+|c~0|d~1|e~2|"):
        with pytest.raises(SearchError, match="NAS-Bench-201 cell string"):
            space.decode(bad)


def test_parameter_counts_match_the_benchmark() -> None:
    # NAS-Bench-201 CIFAR-10 networks span 0.073 M to 1.531 M parameters.
    space = get_space("nasbench201")
    assert n_params(space.to_torch(space.decode(ALL_3X3))) == 1_531_546
    assert n_params(space.to_torch(space.decode(CUT_OFF))) == 73_306


def test_live_edges() -> None:
    idx = {op: i for i, op in enumerate(OPS)}
    ops = ("nor_conv_3x3", "none", "avg_pool_3x3", "none", "none", "skip_connect")
    assert live_edges(ops) == [0, 2, 5]
    assert live_edges(("nor_conv_3x3", "none", "none", "none", "none", "none")) == []
    # an edge out of node 1 that never reaches node 3 is dead
    assert live_edges(("nor_conv_1x1", "nor_conv_1x1", "none", "skip_connect", "none",
                       "none")) == [3]
    assert idx["none"] == 0


ARCHS = (ALL_3X3, CUT_OFF,
         "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|"
         "+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
         "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|none~1|avg_pool_3x3~2|",
         "|none~0|+|none~0|none~1|+|avg_pool_3x3~0|nor_conv_3x3~1|avg_pool_3x3~2|",
         "|skip_connect~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|")


@pytest.mark.parametrize("code", ARCHS)
def test_onnx_export_has_exactly_the_space_kernels(code: str) -> None:
    space = get_space("nasbench201", cells=2)
    arch = space.decode(code)
    parsed = onnx_to_kernels(space.to_onnx(arch))
    assert kernel_keys(parsed) == kernel_keys(space.ops(arch))


@pytest.mark.parametrize("name,options", [
    ("nasbench-macro", {"resolution": 16}),
    ("proxyless", {"resolution": 64, "width_mult": 0.5, "num_classes": 10,
                   "stages": ((16, 2, 2), (24, 3, 2), (48, 2, 1))}),
    ("nasbench201", {"resolution": 16, "channels": 8, "cells": 1}),
])
def test_every_space_maps_to_specs_torch_and_onnx(name: str, options: dict) -> None:
    import torch

    space = get_space(name, **options)
    rng = np.random.default_rng(1)
    for _ in range(3):
        arch = space.sample(rng)
        module = space.to_torch(arch).eval()
        out = module(torch.zeros(space.input_shape))
        assert tuple(out.shape) == (1, space.num_classes)
        assert kernel_keys(onnx_to_kernels(space.to_onnx(arch, module))) == \
            kernel_keys(space.ops(arch))


class FlopsPredictor:
    """A stand-in predictor: 1 us per kernel + 1 ms per GFLOP."""

    call_overhead_ms_ = 0.01
    kind_scale_ = {"conv": 1.1}

    def predict(self, specs: list[OpSpec]) -> np.ndarray:
        return np.array([1e-3 + kernel_cost(s).flops / 1e9 for s in specs])


def test_table_is_additive_per_edge() -> None:
    space = get_space("nasbench201")
    predictor = FlopsPredictor()
    table = LatencyTable.from_predictor(space, LatencyPredictor.from_kernels(
        predictor, call_overhead_ms=predictor.call_overhead_ms_,
        composition=Composition(predictor.kind_scale_)))
    assert [len(r) for r in table.layer_ms] == [5] * 6
    assert all(row[0] == 0.0 for row in table.layer_ms)  # "none" costs nothing

    def network_ms(arch: Arch) -> float:
        specs = space.ops(arch)
        scale = np.array([predictor.kind_scale_.get(s.kind, 1.0) for s in specs])
        return float((predictor.predict(specs) * scale).sum() + predictor.call_overhead_ms_)

    rng = np.random.default_rng(2)
    for _ in range(10):  # exact without "none" edges or two pools of one node
        arch = Arch(space.name, tuple(int(c) for c in rng.integers(1, 4, size=6)))
        assert table.latency(arch) == pytest.approx(network_ms(arch), rel=1e-9)
    # otherwise the table may only over-estimate a connected cell (dead edges, adds, pools)
    for _ in range(30):
        arch = space.sample(rng)
        if live_edges(space.op_names(arch)):
            assert table.latency(arch) >= network_ms(arch) - 1e-9


@pytest.mark.parametrize("name,options", [
    ("nasbench-macro", {"resolution": 8}),
    ("proxyless", {"resolution": 32, "width_mult": 0.35, "num_classes": 10,
                   "stages": ((16, 2, 2), (24, 2, 2))}),
    ("nasbench201", {"resolution": 8, "channels": 4, "cells": 1}),
])
def test_extracted_network_is_the_supernet_path(name: str, options: dict) -> None:
    import torch

    from latbench.search.supernet import Path, build_supernet

    space = get_space(name, **options)
    supernet = build_supernet(space).eval()
    x = torch.randn(2, *space.input_shape[1:])
    rng = np.random.default_rng(3)
    for _ in range(3):
        arch = space.sample(rng)
        extracted = space.extract(supernet.body, arch).eval()
        fresh = space.to_torch(arch)
        assert list(fresh.state_dict()) == list(extracted.state_dict())
        fresh.load_state_dict(extracted.state_dict())
        with torch.no_grad():
            expected = supernet(x, Path.single(arch.choices))
            assert torch.allclose(extracted(x), expected, atol=1e-5)
            assert torch.allclose(fresh.eval()(x), expected, atol=1e-5)


def test_options_are_checked() -> None:
    with pytest.raises(SearchError, match="multiple of 4"):
        NasBench201(resolution=30)
    with pytest.raises(SearchError, match="num_classes"):
        get_space("nasbench201").to_torch(Arch("nasbench201", (1,) * 6), num_classes=100)
    space = get_space("nasbench201", resolution=64, channels=8, cells=3, num_classes=100)
    assert space.stages == [(64, 8), (32, 16), (16, 32)]
    assert len(space.candidates(0)[3]) == 9  # a 3x3 conv in each of 9 cells
    assert len(space.candidates(2)[3]) == 18  # ... plus an add where a node has other inputs
