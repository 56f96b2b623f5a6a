"""ONNX -> LayerGraph (`bench.export.from_onnx`): every network family, exported by both of
torch's exporters, converted and written as TFLite runs in LiteRT (XNNPACK and the builtin
kernels) like ONNX Runtime runs the original - same weights, so the same numbers - and splits
into the kernels the ONNX parser reads from the original; the layer ops the conversion added;
and the nodes it refuses, named."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_export import RESOLVERS, _check_graph, run_onnx, run_tflite
from test_families import _small, _tiny

from latbench.bench.export.from_onnx import onnx_to_graph
from latbench.bench.export.graph import GraphBuilder, LayerGraph, chain_graph
from latbench.bench.export.reference import run_reference
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.export.to_tflite import to_tflite
from latbench.bench.families import NetworkDef, list_families
from latbench.bench.kernels import onnx_to_kernels
from latbench.bench.ops import OpSpec
from latbench.bench.tflite_kernels import tflite_to_kernels
from latbench.errors import ExportError

REL_TOL = 1e-4
EXPORTERS = {"torchscript": False, "dynamo": True}
# Kernels the ONNX parser reads from a family's export that its TFLite model does not hold:
# ConvNeXt's channels-last permutes move no data in NHWC (the TFLite model keeps RESHAPEs),
# and its layer scale (a Mul by a constant) is folded into the Linear before it, as TFLite's
# converter folds it.
ONLY_IN_ONNX = {"convnext": {"transpose", "mul"}}
# Each way a family writes a layer (`test_variants_convert`).
VARIANTS = {
    "vit-sdpa-gelu-tanh": ("vit", {"attention": "sdpa", "act": "gelu_tanh"}),
    "vit-mha": ("vit", {"attention": "mha"}),
    "convnext-permute": ("convnext", {"norm2d": "permute"}),
    "convnext-decomposed": ("convnext", {"norm2d": "decomposed"}),
    "mobilevit-resized": ("mobilevit", {"resolution": 160}),
    "mobilenetv3-se-linear": ("mobilenetv3", {"se_fc": True}),
    "mobilenetv3-se-conv": ("mobilenetv3", {"se_fc": False}),
    "regnet-y": ("regnet", {"se_ratio": 0.25}),
}


@functools.cache
def _export(net: NetworkDef, dynamo: bool) -> bytes:
    return net.to_onnx(dynamo=dynamo)


def _family_net(family: str, **want: object) -> NetworkDef:
    return _tiny(_small(family, **want))


def _ort(data: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    scale = float(np.abs(want).max())
    assert scale > 0
    err = float(np.abs(got - want).max()) / scale
    assert err < REL_TOL, f"{name}: relative max error {err:.3g}"


def _converts_like_onnxruntime(data: bytes) -> tuple[LayerGraph, bytes]:
    """Convert, write TFLite, and check it runs like ONNX Runtime runs the original, on both
    LiteRT resolvers; the LayerGraph's own ONNX export too."""
    graph = onnx_to_graph(data)
    inputs = graph.random_inputs(1)
    x = inputs[graph.inputs[0]]
    want = _ort(data, x)
    _close("onnx re-export", run_onnx(to_onnx(graph), inputs), want)
    model = to_tflite(graph)
    for resolver in RESOLVERS:
        _close(f"tflite/{resolver}", run_tflite(model, inputs, resolver, graph), want)
    return graph, model


def _kernel_difference(data: bytes, model: bytes, family: str) -> None:
    """The TFLite split of the converted model equals the ONNX split of the original, but
    for the kernels the family's TFLite model holds no operator for (ONLY_IN_ONNX)."""
    from_onnx = [k.key() for k in onnx_to_kernels(data)]
    from_tflite = [k.key() for k in tflite_to_kernels(model)]
    dropped = ONLY_IN_ONNX.get(family, set())
    assert not [k for k in from_tflite if k.partition(":")[0] in dropped]
    kept = [k for k in from_onnx if k.partition(":")[0] not in dropped]
    assert kept == from_tflite
    if dropped:
        assert len(kept) < len(from_onnx)  # the difference is real, and only those kinds


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("family", list_families())
def test_family_converts_runs_like_onnx_and_splits_alike(family: str, exporter: str) -> None:
    data = _export(_family_net(family), EXPORTERS[exporter])
    _, model = _converts_like_onnxruntime(data)
    _kernel_difference(data, model, family)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_convert(variant: str, exporter: str) -> None:
    family, want = VARIANTS[variant]
    data = _export(_family_net(family, **want), EXPORTERS[exporter])
    _, model = _converts_like_onnxruntime(data)
    _kernel_difference(data, model, family)


def test_untouched_resnet_has_the_same_operators_as_its_kernels() -> None:
    """A whole sampled network (not cut down): the TFLite model is the ONNX graph's layers,
    BatchNorm folded and activations fused, without a layout transpose."""
    net = _small("resnet", n=2)
    data = _export(net, False)
    graph, model = _converts_like_onnxruntime(data)
    ops = Counter(layer.op for layer in graph.layers)
    proto = onnx.load_from_string(data)
    nodes = Counter(n.op_type for n in proto.graph.node)
    assert ops["conv"] == nodes["Conv"] and ops["add"] == nodes["Add"]
    assert "act" not in ops  # every ReLU fused into its conv or add
    from test_export import _op_names

    assert "TRANSPOSE" not in _op_names(model)


# --- LayerGraph -> ONNX -> LayerGraph -------------------------------------------------------
ROUND_TRIP = [
    [OpSpec("conv", h=16, w=16, cin=3, cout=8, kernel=3, stride=2, act="relu6"),
     OpSpec("mbconv", h=8, w=8, cin=8, cout=8, kernel=5, expand=4, se=True, act="hswish"),
     OpSpec("conv", h=8, w=8, cin=8, cout=12, kernel=3, groups=4, act="swish"),
     OpSpec("pool", h=8, w=8, cin=12, pool="max", kernel=3, stride=2, pad=1),
     OpSpec("pool", h=4, w=4, cin=12, pool="gavg"), OpSpec("linear", cin=12, cout=10)],
    [OpSpec("tlinear", tokens=9, cin=16, cout=32, act="gelu"),
     OpSpec("layernorm", tokens=9, cin=32), OpSpec("posembed", tokens=9, cin=32),
     OpSpec("tlinear", tokens=9, cin=32, cout=8, act="gelu_tanh")],
    [OpSpec("dwconv", h=9, w=9, cin=6, kernel=3, stride=2, act="leakyrelu"),
     OpSpec("conv", h=5, w=5, cin=6, cout=6, kernel=1, act="mish")],
]


@pytest.mark.parametrize("specs", ROUND_TRIP, ids=["cnn", "tokens", "activations"])
def test_latbench_onnx_converts_back_to_the_same_network(specs: list[OpSpec]) -> None:
    graph = chain_graph(specs, seed=5)
    back = onnx_to_graph(to_onnx(graph))
    inputs = graph.random_inputs(2)
    np.testing.assert_allclose(run_reference(back, {back.inputs[0]: inputs["input"]}),
                               run_reference(graph, inputs), rtol=1e-5, atol=1e-6)
    assert [k.key() for k in onnx_to_kernels(to_onnx(back))] == \
        [k.key() for k in onnx_to_kernels(to_onnx(graph))]


def test_batchnorm_the_exporter_kept_is_folded() -> None:
    """A graph exported without optimisation keeps BatchNormalization: it folds into the conv
    (no layer of its own), and the numbers stay."""
    from latbench.bench.export.from_torch import torch_to_onnx
    from latbench.bench.families_torch import ConvBNAct, randomise_norms

    module = ConvBNAct(3, 8, 3, 2, act="relu6")
    randomise_norms(module, 3)
    data = torch_to_onnx(module, (1, 3, 12, 12), optimize=False)
    assert "BatchNormalization" in {n.op_type for n in onnx.load_from_string(data).graph.node}
    graph, _ = _converts_like_onnxruntime(data)
    assert [(layer.op, layer.attrs["act"]) for layer in graph.layers] == [("conv", "relu6")]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nasbench201_networks_convert_runs_like_onnx_and_splits_alike(seed: int) -> None:
    """NAS-Bench-201 averages without the padded zeros and normalises after a residual sum
    (a batch normalization no conv precedes): both convert, so LiteRT measures the space."""
    from latbench.bench.spaces import get_space

    space = get_space("nasbench201")
    rng = np.random.default_rng(seed)
    arch = space.sample(rng)
    while "avg_pool_3x3" not in space.encode(arch):
        arch = space.sample(rng)
    data = space.to_onnx(arch)
    graph, model = _converts_like_onnxruntime(data)
    assert any(layer.attrs.get("exclude_pad") for layer in graph.layers)
    # The ONNX split counts the last batch normalization as free; LiteRT runs it as a MUL
    # (its ADD folds into the split's next kernel).
    from_onnx = Counter(k.key() for k in onnx_to_kernels(data))
    from_tflite = Counter(k.key() for k in tflite_to_kernels(model))
    assert from_tflite - from_onnx == Counter({"mul:n=1,h=8,w=8,cin=64,dtype=float32": 1})
    assert not from_onnx - from_tflite


def test_exclusive_average_pool_without_a_same_form_is_refused_by_tflite() -> None:
    data = _model([helper.make_node("AveragePool", ["x"], ["y"], name="p", kernel_shape=[3, 3],
                                    strides=[2, 2], pads=[1, 1, 1, 1])],
                  [("x", (1, 3, 8, 8))], ("y", (1, 3, 4, 4)))
    graph = onnx_to_graph(data)
    assert _ort(data, graph.random_inputs(0)[graph.inputs[0]]).shape == (1, 3, 4, 4)
    with pytest.raises(ExportError, match=r"average pool of 3x3, stride 2, pad 1 over 8x8 "
                                          r"without the padded zeros has no TFLite form"):
        to_tflite(graph)


# --- the layer ops the conversion added, against the float64 reference ----------------------
def _graph(build: Callable[[GraphBuilder], str]) -> LayerGraph:
    b = GraphBuilder(np.random.default_rng(0))
    return b.finish(build(b))


NEW_OPS = {
    # [N, C] -> [N, C, 1, 1] image (a squeeze-excite's gate), and back through a linear layer
    "reshape-gate": lambda b: b.mul(
        x := b.conv(b.input((1, 3, 6, 6)), 8, 3),
        b.reshape(b.linear(b.gpool(x), 8, act="hsigmoid"), (1, 8, 1, 1), image=True)),
    # an image's pixels folded into the batch (MobileViT's unfold) and back to an image
    "reshape-unfold": lambda b: b.conv(b.reshape(b.transpose(b.reshape(
        b.conv(b.input((1, 3, 8, 8)), 4, 3), (16, 2, 4, 2)), (0, 2, 1, 3)), (1, 4, 8, 8),
        image=True), 4, 1),
    # an image to tokens: reshape [N, C, H*W] and transpose
    "reshape-tokens": lambda b: b.tlinear(b.transpose(b.reshape(
        b.conv(b.input((1, 3, 8, 8)), 6, 4, stride=4, pad=0), (1, 6, 4)), (0, 2, 1)), 5),
    # channels-last and back: a layer norm over an image's channels (ConvNeXt)
    "transpose-image": lambda b: b.conv(b.transpose(b.layernorm(b.transpose(
        b.conv(b.input((1, 3, 8, 8)), 6, 3), (0, 2, 3, 1), as_stored=True)), (0, 3, 1, 2),
        image=True), 4, 1),
    # as stored, between plain tensors and across a layout that moves data
    "transpose-as-stored": lambda b: b.transpose(b.transpose(b.conv(
        b.input((1, 3, 8, 8)), 6, 3), (0, 1, 3, 2), as_stored=True), (0, 2, 1, 3),
        as_stored=True),
    "mul-const-image": lambda b: b.mul_const(b.conv(b.input((1, 3, 6, 6)), 5, 3), (5, 1, 1)),
    "mul-const-tokens": lambda b: b.mul_const(b.input((1, 7, 6)), ()),
    "gather-5d": lambda b: b.bmm(b.gather(y := b.transpose(b.reshape(
        b.tlinear(b.input((1, 5, 8)), 24), (1, 5, 3, 2, 4)), (2, 0, 3, 1, 4)), 0, 0),
        b.transpose(b.gather(y, 1, 0), (0, 1, 3, 2))),
    "cls-tokens-2": lambda b: b.gather(b.cls_token(b.input((1, 4, 6)), 2), 1),
    "resize-size": lambda b: b.resize(b.resize(b.conv(b.input((1, 3, 6, 6)), 4, 3, stride=2),
                                               0, "bilinear", (4, 4)), 0, "bilinear", (3, 3)),
}


@pytest.mark.parametrize("case", NEW_OPS)
def test_conversion_layer_ops_match_reference(case: str) -> None:
    _check_graph(_graph(NEW_OPS[case]))


def test_channels_last_permutes_move_no_data_in_tflite() -> None:
    """As stored, a channels-last permute and its way back are RESHAPEs; written as a
    measured kernel (not as stored), the input is read as NCHW first: two TRANSPOSEs."""
    from test_export import _op_names

    ops = _op_names(to_tflite(_graph(NEW_OPS["transpose-image"])))
    assert "TRANSPOSE" not in ops and ops.count("RESHAPE") == 2
    ops = _op_names(to_tflite(_graph(lambda b: b.transpose(b.conv(b.input((1, 3, 8, 8)), 6, 3),
                                                           (0, 2, 3, 1)))))
    assert ops.count("TRANSPOSE") == 2


def test_reshape_refuses_another_size() -> None:
    b = GraphBuilder(np.random.default_rng(0))
    with pytest.raises(ExportError, match=r"reshape of \(1, 3, 4, 4\) into \(1, 40\)"):
        b.reshape(b.input((1, 3, 4, 4)), (1, 40))


# --- refusals -----------------------------------------------------------------------------------
def _model(nodes: list, inputs: list, output: tuple, inits: dict | None = None) -> bytes:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


W = np.ones((4, 3, 3, 3))


@pytest.mark.parametrize(("nodes", "output", "match"), [
    ([helper.make_node("LRN", ["x"], ["y"], name="norm", size=3)], (1, 3, 8, 8),
     r"LRN node 'norm': ONNX op LRN has no LayerGraph form"),
    ([helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 0, 0])], (1, 4, 7, 7),
     r"Conv node 'c' pads asymmetrically \[1, 1, 0, 0\]"),
    ([helper.make_node("Softmax", ["x"], ["y"], name="s", axis=1)], (1, 3, 8, 8),
     r"Softmax node 's' normalises axis 1"),
    ([helper.make_node("Flatten", ["x"], ["f"]),
      helper.make_node("BatchNormalization", ["f", "s", "b", "m", "v"], ["y"], name="bn")],
     (1, 192), r"BatchNormalization node 'bn' normalizes a 2-D tensor that is no image"),
], ids=["op", "asymmetric-pads", "softmax-axis", "lone-batchnorm-of-no-image"])
def test_nodes_without_a_layergraph_form_are_named(nodes: list, output: tuple,
                                                   match: str) -> None:
    inits = {"w": W, "s": np.ones(192), "b": np.zeros(192), "m": np.zeros(192),
             "v": np.ones(192)}
    used = {i for n in nodes for i in n.input}
    data = _model(nodes, [("x", (1, 3, 8, 8))], ("y", output),
                  {k: v for k, v in inits.items() if k in used})
    with pytest.raises(ExportError, match=match):
        onnx_to_graph(data)


def test_a_model_with_two_outputs_is_refused() -> None:
    relu = helper.make_node("Relu", ["x"], ["y"])
    sig = helper.make_node("Sigmoid", ["x"], ["z"])
    graph = helper.make_graph([relu, sig], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 4))],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, (1, 4))
                               for n in ("y", "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(ExportError, match="the model has 2 outputs; a LayerGraph has one"):
        onnx_to_graph(model.SerializeToString())
