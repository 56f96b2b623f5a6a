"""bench/memory.py: a model's weights and live activation bytes walked in execution order, checked
against figures computed by hand for tiny graphs, in ONNX and TFLite."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from latbench.bench.campaign import Subject
from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.export.to_tflite import to_tflite
from latbench.bench.memory import (
    CARD_KEY,
    PROFILE_VERSION,
    MemoryProfile,
    Step,
    card_profiles,
    live_walk,
    network_memory,
    profile_model,
)
from latbench.bench.ops import OpSpec
from latbench.errors import ParseError

F32 = 4


def onnx_bytes(nodes, inputs, outputs, initializers) -> bytes:
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def value(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def chain_model() -> bytes:
    """x[1,4,8,8] -> Conv 4->8 3x3 pad 1 -> Relu -> Reshape [1,512] -> MatMul [512,10]."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "fc"], ["y"])]
    inits = [const("w", np.ones((8, 4, 3, 3), np.float32)), const("b", np.zeros(8, np.float32)),
             const("shape", np.array([1, 512], np.int64)),
             const("fc", np.ones((512, 10), np.float32))]
    return onnx_bytes(nodes, [value("x", [1, 4, 8, 8])], [value("y", [1, 10])], inits)


def test_chain_figures_match_a_hand_count() -> None:
    p = profile_model(chain_model())
    x, c, r, y = 4 * 64 * F32, 8 * 64 * F32, 8 * 64 * F32, 10 * F32  # 1024, 2048, 2048, 40
    # the input stays live; at Relu the conv output (read by it) and its own output are live;
    # Reshape relabels Relu's output; after MatMul only the input and the output remain
    assert p.activation_peak_bytes == x + c + r == 5120
    assert p.peak_step.startswith("Relu")
    assert p.activation_total_bytes == x + c + r + y  # Reshape adds no bytes
    assert p.conv_weight_bytes == (8 * 4 * 9 + 8) * F32
    assert p.weight_bytes == (8 * 4 * 9 + 8 + 512 * 10) * F32 + 2 * 8  # + the int64 shape
    # the largest tensor is the MatMul's; the largest conv weight is the kernel, not its bias
    assert (p.max_weight_bytes, p.max_conv_weight_bytes) == (512 * 10 * F32, 8 * 4 * 9 * F32)
    assert (p.input_bytes, p.output_bytes, p.steps, p.unsized) == (x, y, 4, 0)
    assert p.model_size_bytes == len(chain_model())


def test_a_skip_connection_keeps_its_tensor_live() -> None:
    """x -> Relu a -> Sigmoid b -> Tanh c -> Add(a, c): `a` is read again at the end, so it is
    live through b and c, and the peak (at Add) holds x, a, c and the sum; b is freed by Tanh."""
    shape = [1, 16, 16, 16]
    t = 16 ** 3 * F32
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["b"]),
             helper.make_node("Tanh", ["b"], ["c"]), helper.make_node("Add", ["a", "c"], ["y"])]
    p = profile_model(onnx_bytes(nodes, [value("x", shape)], [value("y", shape)], []))
    assert p.activation_peak_bytes == 4 * t  # x a b c at Tanh; x a c y at Add
    assert p.activation_total_bytes == 5 * t and p.weight_bytes == 0
    without_skip = [*nodes[:3], helper.make_node("Add", ["c", "c"], ["y"])]
    q = profile_model(onnx_bytes(without_skip, [value("x", shape)], [value("y", shape)], []))
    assert q.activation_peak_bytes == 3 * t  # `a` freed after Sigmoid


def test_live_walk_frees_after_the_last_reader_and_keeps_outputs() -> None:
    steps = [Step("p", ("in",), (("a", 10),)), Step("q", ("a",), (("b", 100),)),
             Step("alias", ("b",), (("b2", 100),), alias_of="b"),
             Step("r", ("a",), (("c", 1),)), Step("s", ("b2",), (("out", 5),))]
    # at r: in + a + b + c (the alias adds nothing); a is freed after r, its last reader
    assert live_walk(steps, {"in": 1}, ["c"]) == (112, 117, "r")
    # an output is never freed: with `a` one, s holds in + a + b + out (c, read by nobody and
    # not an output, went right after r)
    assert live_walk(steps, {"in": 1}, ["a"]) == (116, 117, "s")


def test_tflite_export_of_a_chain_has_the_onnx_weights() -> None:
    specs = [OpSpec("conv", h=16, w=16, cin=8, cout=16, kernel=3, act="relu"),
             OpSpec("conv", h=16, w=16, cin=16, cout=16, kernel=1)]
    graph = chain_graph(specs)
    onnx_p, tflite_p = profile_model(to_onnx(graph)), profile_model(to_tflite(graph))
    weights = (16 * 8 * 9 + 16 + 16 * 16 + 16) * F32
    assert onnx_p.conv_weight_bytes == weights and tflite_p.conv_weight_bytes == weights
    assert onnx_p.max_conv_weight_bytes == tflite_p.max_conv_weight_bytes == 16 * 8 * 9 * F32
    assert onnx_p.max_weight_bytes == tflite_p.max_weight_bytes == 16 * 8 * 9 * F32
    # TFLite fuses the ReLU into the conv: the conv's own output is never a separate tensor
    image = 16 * 16 * 16 * F32
    assert tflite_p.activation_peak_bytes == 8 * 256 * F32 + 2 * image
    assert onnx_p.activation_peak_bytes == 8 * 256 * F32 + 2 * image


def test_profile_json_round_trip_and_bad_input() -> None:
    p = profile_model(chain_model())
    assert MemoryProfile.from_json(p.to_json()) == p
    with pytest.raises(ParseError, match="lacks 'weight_bytes'"):
        MemoryProfile.from_json({k: v for k, v in p.to_json().items() if k != "weight_bytes"})
    with pytest.raises(ParseError, match="activation_peak_bytes"):
        MemoryProfile.from_json({**p.to_json(), "activation_peak_bytes": -1})
    with pytest.raises(ParseError, match="not a TFLite|could not be parsed"):
        profile_model(b"\x00not a model at all")


def test_network_memory_in_a_card_resumes_and_skips_old_versions() -> None:
    specs = [OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3),
             OpSpec("conv", h=8, w=8, cin=8, cout=8, kernel=3)]
    nets = [Subject.chain("n:1", "n", specs[:1]), Subject.chain("n:2", "n", specs),
            Subject.op(specs[0])]
    card = network_memory(nets)
    assert set(card) == {"n:1", "n:2"}  # an op has no network figures
    assert card["n:2"]["weight_bytes"] - card["n:1"]["weight_bytes"] == (8 * 8 * 9 + 8) * F32
    stale = {"n:1": {**card["n:1"], "weight_bytes": 1}, "n:2": {**card["n:2"], "version": 0}}
    again = network_memory(nets, {CARD_KEY: stale})
    assert again["n:1"]["weight_bytes"] == 1  # kept: figures of this version are not redone
    assert again["n:2"] == card["n:2"]  # redone: written by another version of the walk
    profiles = card_profiles({CARD_KEY: again})
    assert set(profiles) == {"n:1", "n:2"} and profiles["n:2"].version == PROFILE_VERSION
