"""The TFLite kernel split reads the transformer kinds and the rest of the common op set.

Every kind (and each new activation, dilated and non-square convolution, concat axis) written
by latbench's TFLite exporter reads back as the spec it was built from; the ONNX form of the
same graph gives the same kernel list; whole networks mixing the kinds (a ViT-style transformer
block, a multi-head attention core, a ConvNeXt-style block, a CNN with the new ops) give equal
kernel lists in both formats; the single-operator forms converters write read as the same
kinds; and operators used in ways no kernel describes are named in one line.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import pytest
from test_export import _check_graph
from test_tflite_model import _interpreter, _Net

from latbench.bench.export.graph import GraphBuilder, LayerGraph, spec_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.export.to_tflite import to_tflite
from latbench.bench.kernel_forms import transpose_spec
from latbench.bench.kernels import DEFAULT_ATTACH, onnx_to_kernels
from latbench.bench.ops import KEY_FIELDS, MORE_ACTIVATIONS, OP_KINDS, OpSpec
from latbench.bench.tflite_kernels import parse_tflite, tflite_to_kernels
from latbench.bench.tflite_model import read_tflite
from latbench.errors import UnsupportedModelError

schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
S = OpSpec
NEW_KINDS = OP_KINDS[OP_KINDS.index("tlinear"):]
# Every (producer, activation) pair: each kernel keeps the activation it was built with.
ALL_ATTACHED = frozenset((kind, act) for kind, key in KEY_FIELDS.items() if "act" in key
                         for act in ("relu", "relu6", "hswish", "hsigmoid", "sigmoid", "swish",
                                     *MORE_ACTIVATIONS))


def _cases() -> list[OpSpec]:
    cases = [
        S("conv", h=12, w=12, cin=4, cout=8, kernel=3, dilation=2),
        S("conv", h=13, w=11, cin=4, cout=6, kernel=3, dilation=3, stride=2, act="relu6"),
        S("conv", h=9, w=11, cin=4, cout=6, kernel=1, kernel_w=7),
        S("conv", h=9, w=11, cin=6, cout=4, kernel=7, kernel_w=1, stride=2, act="gelu"),
        S("conv", h=8, w=10, cin=4, cout=6, kernel=3, kernel_w=5, pad=0, pad_w=1, groups=2),
        S("conv", h=10, w=10, cin=4, cout=4, kernel=3, kernel_w=1, pad=2, pad_w=0,
          dilation=2, batch=2),
        S("conv", h=28, w=28, cin=3, cout=8, kernel=14, stride=14, pad=0, act="prelu"),
        S("dwconv", h=12, w=12, cin=6, kernel=3, dilation=2, act="relu"),
        S("dwconv", h=11, w=11, cin=6, kernel=5, dilation=2, stride=2),
        S("dwconv", h=9, w=12, cin=4, kernel=1, kernel_w=5, act="hswish"),
        S("dwconv", h=12, w=9, cin=4, kernel=7, kernel_w=1, stride=2, act="leakyrelu",
          alpha=0.2),
        S("concat", h=6, w=5, cin=4, groups=2, axes="2"),
        S("concat", h=4, w=9, cin=3, groups=3, axes="3", batch=2),
        S("tlinear", tokens=7, cin=16, cout=24),
        S("tlinear", tokens=50, cin=32, cout=96, act="gelu", batch=2),
        S("tlinear", tokens=9, cin=24, cout=8, act="gelu_tanh"),
        S("tlinear", tokens=5, cin=8, cout=12, act="relu"),
        S("tlinear", tokens=1, cin=8, cout=4, act="swish", batch=3),
        S("bmm", heads=4, tokens=17, cin=8, cout=17),
        S("bmm", heads=4, tokens=17, cin=17, cout=8),
        S("bmm", heads=1, tokens=5, cin=3, cout=7, batch=2),
        S("softmax", heads=4, tokens=17, cin=17),
        S("softmax", heads=1, tokens=1, cin=10, batch=3),
        S("softmax", heads=3, tokens=5, cin=7, batch=2),
        S("layernorm", tokens=50, cin=32),
        S("layernorm", tokens=7, cin=64, batch=2),
        S("layernorm", tokens=1, cin=8),
        *(S("transpose", h=5, w=6, cin=3, axes=axes) for axes in
          ("0213", "0132", "0231", "0312", "0321", "1023")),
        S("transpose", h=17, w=8, cin=4, axes="0213", batch=2),
        S("clstoken", tokens=49, cin=32),
        S("clstoken", tokens=4, cin=8, batch=3),
        S("gather", tokens=50, cin=32),
        S("gather", tokens=5, cin=8, batch=2),
        S("posembed", tokens=50, cin=32),
        S("posembed", tokens=5, cin=8, batch=2),
        S("convt", h=6, w=7, cin=8, cout=4, kernel=2, stride=2),
        S("convt", h=5, w=5, cin=4, cout=6, kernel=3, stride=2, pad=1, out_pad=1, act="relu"),
        S("convt", h=5, w=6, cin=4, cout=6, kernel=4, stride=2, pad=1, act="leakyrelu"),
        S("convt", h=4, w=4, cin=4, cout=4, kernel=3, stride=3, pad=1, out_pad=2, batch=2),
        S("convt", h=6, w=6, cin=4, cout=5, kernel=3, stride=1, pad=1, act="hswish"),
        S("convt", h=3, w=5, cin=4, cout=4, kernel=3, stride=2, out_pad=1, act="relu6"),
        S("resize", h=5, w=6, cin=4, scale=2),
        S("resize", h=5, w=6, cin=4, scale=2, mode="bilinear"),
        S("resize", h=3, w=4, cin=3, scale=3, mode="bilinear", batch=2),
        S("pad", h=5, w=6, cin=4, pad=1),
        S("pad", h=5, w=6, cin=4, pad=2, mode="reflect"),
        S("pad", h=4, w=4, cin=3, pad=3, mode="reflect", batch=2),
        S("slice", h=5, w=6, cin=8, cout=4),
        S("slice", h=3, w=3, cin=7, cout=2, batch=2),
        S("instnorm", h=5, w=6, cin=8),
        S("instnorm", h=8, w=8, cin=3, batch=2),
        S("reduce", h=5, w=6, cin=8, axes="1"),
        S("reduce", h=5, w=6, cin=8, axes="123", batch=2),
        S("reduce", h=5, w=6, cin=8, axes="3"),
        S("reduce", h=5, w=6, cin=8, axes="12"),
        S("shuffle", h=5, w=6, cin=8, groups=2),
        S("shuffle", h=3, w=3, cin=12, groups=3, batch=2),
        S("shuffle", h=4, w=2, cin=12, groups=4),
    ]
    for act in MORE_ACTIVATIONS:
        cases += [S("act", h=5, w=6, cin=4, act=act), S("act", h=3, w=3, cin=8, act=act, batch=2),
                  S("add", h=4, w=4, cin=6, act=act), S("linear", cin=12, cout=6, act=act)]
    cases += [S("act", h=4, w=4, cin=4, act="leakyrelu", alpha=0.3),
              S("conv", h=6, w=6, cin=4, cout=4, kernel=3, act="mish"),
              S("conv", h=6, w=6, cin=4, cout=4, kernel=3, act="tanh", groups=2)]
    return cases


CASES = _cases()


def _keys(kernels: Sequence[OpSpec]) -> list[str]:
    return [k.key() for k in kernels]


def _unfused(specs: Sequence[OpSpec], rules: Collection[tuple[str, str]],
             dims: dict[int, tuple[int, int, int]] | None = None) -> list[OpSpec]:
    """The kernels of `specs` when the split attaches only the activations in `rules`; the act
    kernel after `specs[i]` has (h, w, cin) `dims[i]` if given, else those of its output."""
    out = []
    for i, s in enumerate(specs):
        if s.kind == "act" or "act" not in KEY_FIELDS[s.kind] or s.act == "none" \
                or (s.kind, s.act) in rules:
            out.append(s)
            continue
        out.append(s.with_(act="none"))
        shape = s.output_shape
        h, w, c = (dims or {}).get(i) or ((shape[2], shape[3], shape[1]) if len(shape) == 4 else
                                          (shape[1], 1, shape[2]) if len(shape) == 3 else
                                          (1, 1, shape[1]))
        out.append(S("act", h=h, w=w, cin=c, act=s.act, alpha=s.alpha, batch=s.batch))
    return out


def _transpose(shape: Sequence[int], perm: Sequence[int]) -> list[OpSpec]:
    """The canonical transpose kernel of a permutation (none when it moves no data)."""
    spec = transpose_spec(shape, perm)
    return [] if spec is None else [spec]


def _expected(spec: OpSpec) -> list[OpSpec]:
    """What a single-kernel model reads back as: the spec, a transpose in its canonical form."""
    if spec.kind == "transpose":
        return _transpose(spec.input_shape, [int(a) for a in spec.axes])
    return [spec]


def test_cases_cover_every_new_kind():
    kinds = {s.kind for s in CASES}
    assert set(NEW_KINDS) <= kinds
    assert {s.act for s in CASES} >= set(MORE_ACTIVATIONS)
    assert {s.axes for s in CASES if s.kind == "concat"} == {"2", "3"}


# --- one kind at a time ------------------------------------------------------------------------
@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.key())
def test_each_kind_reads_back_as_its_spec(spec):
    data = to_tflite(spec_graph(spec))
    assert tflite_to_kernels(data, attach=ALL_ATTACHED) == _expected(spec)
    assert tflite_to_kernels(data) == _unfused(_expected(spec), DEFAULT_ATTACH)


def test_transposes_read_in_their_canonical_form():
    """Axes of size 1 drop out and axes that stay adjacent merge (`kernel_forms`): NCHW ->
    NHWC of one image is a 2-D transpose of C x HW; moving only the batch of 1 is no kernel."""
    def read(spec: OpSpec) -> list[str]:
        return _keys(tflite_to_kernels(to_tflite(spec_graph(spec))))

    assert read(S("transpose", h=5, w=6, cin=3, axes="0231")) == [
        S("transpose", cin=1, h=3, w=30, axes="0132").key()]
    assert read(S("transpose", h=5, w=6, cin=3, axes="0213", batch=2)) == [
        S("transpose", cin=3, h=5, w=6, axes="0213", batch=2).key()]
    assert read(S("transpose", h=5, w=6, cin=3, axes="1023")) == []


def test_a_mean_over_h_and_w_is_a_global_average_pool():
    """TFLite writes a global average pool and a mean over H and W as the same MEAN: both read
    as the pool latbench has always priced (so do their ONNX forms)."""
    spec = S("reduce", h=5, w=6, cin=8, axes="23", batch=2)
    pool = S("pool", h=5, w=6, cin=8, pool="gavg", batch=2)
    graph = spec_graph(spec)
    assert tflite_to_kernels(to_tflite(graph)) == [pool]
    assert onnx_to_kernels(to_onnx(graph)) == [pool]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.key())
def test_onnx_form_gives_the_same_kernels(spec):
    graph = spec_graph(spec)
    for rules in (DEFAULT_ATTACH, ALL_ATTACHED):
        assert onnx_to_kernels(to_onnx(graph), attach=rules) == \
            tflite_to_kernels(to_tflite(graph), attach=rules)


# --- whole networks ----------------------------------------------------------------------------
# A network's graph, its kernels with every activation attached, and the (h, w, cin) of the act
# kernels after some of them when the rules leave the activation unattached (`_unfused`).
Network = tuple[LayerGraph, list[OpSpec], dict[int, tuple[int, int, int]]]


def _vit_block(batch: int = 2, tokens: int = 5, dim: int = 8) -> Network:
    """Class token, position embedding, then one pre-norm encoder block: layernorm -> tlinear
    (qkv) -> slices -> transpose (K^T) -> bmm -> softmax -> bmm -> tlinear -> add -> layernorm
    -> tlinear + gelu -> tlinear -> add; the head reads the class token."""
    b = GraphBuilder(np.random.default_rng(7))
    x = b.input((batch, tokens, dim), plain=True)
    x = b.add_const(b.cls_token(x))
    h = b.layernorm(x)
    qkv = b.tlinear(h, 3 * dim)
    q, k, v = (b.slice(qkv, i * dim, (i + 1) * dim, axis=2) for i in range(3))
    attn = b.softmax(b.bmm(q, b.transpose(k, (0, 2, 1))))
    x = b.add(x, b.tlinear(b.bmm(attn, v), dim))
    m = b.tlinear(b.tlinear(b.layernorm(x), 4 * dim, act="gelu"), dim)
    x = b.add(x, m)
    y = b.linear(b.gather(b.layernorm(x)), 3)
    t = tokens + 1
    kw = {"batch": batch}
    expected = [
        S("clstoken", tokens=tokens, cin=dim, **kw), S("posembed", tokens=t, cin=dim, **kw),
        S("layernorm", tokens=t, cin=dim, **kw),
        S("tlinear", tokens=t, cin=dim, cout=3 * dim, **kw),
        *[S("slice", cin=3 * dim, cout=dim, batch=batch * t)] * 3,
        *_transpose((batch, t, dim), (0, 2, 1)),
        S("bmm", tokens=t, cin=dim, cout=t, **kw), S("softmax", tokens=t, cin=t, **kw),
        S("bmm", tokens=t, cin=t, cout=dim, **kw), S("tlinear", tokens=t, cin=dim, cout=dim, **kw),
        S("add", h=t, w=1, cin=dim, **kw), S("layernorm", tokens=t, cin=dim, **kw),
        S("tlinear", tokens=t, cin=dim, cout=4 * dim, act="gelu", **kw),
        S("tlinear", tokens=t, cin=4 * dim, cout=dim, **kw), S("add", h=t, w=1, cin=dim, **kw),
        S("layernorm", tokens=t, cin=dim, **kw), S("gather", tokens=t, cin=dim, **kw),
        S("linear", cin=dim, cout=3, **kw),
    ]
    return b.finish(y), expected, {}


def _attention_heads(batch: int = 2, tokens: int = 6, heads: int = 3, dim: int = 4
                     ) -> Network:
    """Multi-head attention on [B, T, heads, D]: transposes to [B, heads, T, D] (and K^T),
    QK^T, softmax, AV, and back to [B, T, heads, D]."""
    b = GraphBuilder(np.random.default_rng(8))
    x = b.input((batch, tokens, heads, dim), plain=True)
    q, v = b.transpose(x, (0, 2, 1, 3)), b.transpose(x, (0, 2, 1, 3))
    k = b.transpose(x, (0, 2, 3, 1))
    o = b.bmm(b.softmax(b.bmm(q, k)), v)
    y = b.act(b.transpose(o, (0, 2, 1, 3)), "tanh")
    kw = {"batch": batch}
    expected = [
        *_transpose((batch, tokens, heads, dim), (0, 2, 1, 3)) * 2,
        *_transpose((batch, tokens, heads, dim), (0, 2, 3, 1)),
        S("bmm", heads=heads, tokens=tokens, cin=dim, cout=tokens, **kw),
        S("softmax", heads=heads, tokens=tokens, cin=tokens, **kw),
        S("bmm", heads=heads, tokens=tokens, cin=tokens, cout=dim, **kw),
        *_transpose((batch, heads, tokens, dim), (0, 2, 1, 3)),
        S("act", h=tokens, w=heads, cin=dim, act="tanh", **kw),
    ]
    return b.finish(y), expected, {}


def _convnext_block(batch: int = 1, size: int = 6, dim: int = 8
                    ) -> Network:
    """A ConvNeXt block: 7x7 depthwise conv (image) -> permute to channels-last (plain) ->
    layernorm -> tlinear + gelu -> tlinear -> permute back -> residual add (image). TFLite adds
    a layout TRANSPOSE at each change between the image and the plain tensor; they fold. (A
    GELU the rules leave unattached reads the plain [B, H, W, 4C] tensor positionally.)"""
    b = GraphBuilder(np.random.default_rng(9))
    x = b.input((batch, dim, size, size))
    y = b.conv(x, dim, 7, groups=dim)
    y = b.transpose(y, (0, 2, 3, 1))
    y = b.tlinear(b.tlinear(b.layernorm(y), 4 * dim, act="gelu"), dim)
    y = b.add(x, b.transpose(y, (0, 3, 1, 2)))
    kw = {"batch": batch}
    expected = [
        S("dwconv", h=size, w=size, cin=dim, kernel=7, **kw),
        *_transpose((batch, dim, size, size), (0, 2, 3, 1)),
        S("layernorm", tokens=size * size, cin=dim, **kw),
        S("tlinear", tokens=size * size, cin=dim, cout=4 * dim, act="gelu", **kw),
        S("tlinear", tokens=size * size, cin=4 * dim, cout=dim, **kw),
        *_transpose((batch, size, size, dim), (0, 3, 1, 2)),
        S("add", h=size, w=size, cin=dim, **kw),
    ]
    return b.finish(y), expected, {3: (size, size, 4 * dim)}


def _cnn(batch: int = 1) -> Network:
    """Dilated and non-square convolutions, channel and H concatenation, resize, instance
    norm, reflect pad, a padded depthwise conv, shuffle, transposed conv + mish, PReLU, a
    slice of channels, a mean over channels and a leaky ReLU."""
    b = GraphBuilder(np.random.default_rng(10))
    x = b.input((batch, 3, 8, 8))
    c = b.conv(x, 8, 3, dilation=2, act="relu")
    cat = b.concat([b.conv(c, 8, 1, kernel_w=5), b.conv(c, 8, 5, kernel_w=1)])
    y = b.instnorm(b.resize(cat, 2, "nearest"))
    y = b.conv(b.pad(y, 1, "reflect"), 16, 3, stride=2, pad=0, groups=16)
    y = b.convt(b.shuffle(y, 4), 8, 2, stride=2, act="mish")
    y = b.act(y, "prelu")
    y = b.slice(b.concat([y, y], axis=2), 0, 4)
    y = b.act(b.reduce_mean(y, (1,)), "leakyrelu", alpha=0.2)
    kw = {"batch": batch}
    expected = [
        S("conv", h=8, w=8, cin=3, cout=8, kernel=3, dilation=2, act="relu", **kw),
        S("conv", h=8, w=8, cin=8, cout=8, kernel=1, kernel_w=5, **kw),
        S("conv", h=8, w=8, cin=8, cout=8, kernel=5, kernel_w=1, **kw),
        S("concat", h=8, w=8, cin=16, groups=2, **kw),
        S("resize", h=8, w=8, cin=16, scale=2, **kw),
        S("instnorm", h=16, w=16, cin=16, **kw),
        S("pad", h=16, w=16, cin=16, pad=1, mode="reflect", **kw),
        S("dwconv", h=18, w=18, cin=16, kernel=3, stride=2, pad=0, **kw),
        S("shuffle", h=8, w=8, cin=16, groups=4, **kw),
        S("convt", h=8, w=8, cin=16, cout=8, kernel=2, stride=2, act="mish", **kw),
        S("act", h=16, w=16, cin=8, act="prelu", **kw),
        S("concat", h=32, w=16, cin=8, groups=2, axes="2", **kw),
        S("slice", h=32, w=16, cin=8, cout=4, **kw),
        S("reduce", h=32, w=16, cin=4, axes="1", **kw),
        S("act", h=32, w=16, cin=1, act="leakyrelu", alpha=0.2, **kw),
    ]
    return b.finish(y), expected, {}


NETWORKS = {"vit_block": _vit_block, "attention_heads": _attention_heads,
            "convnext_block": _convnext_block, "cnn": _cnn}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", NETWORKS)
def test_networks_read_as_their_kernels(name, batch):
    graph, expected, act_shapes = NETWORKS[name](batch=batch)
    data = to_tflite(graph)
    assert _keys(tflite_to_kernels(data, attach=ALL_ATTACHED)) == _keys(expected)
    assert _keys(tflite_to_kernels(data)) == _keys(_unfused(expected, DEFAULT_ATTACH,
                                                            act_shapes))


@pytest.mark.parametrize("name", NETWORKS)
def test_networks_compute_the_reference_in_both_runtimes(name):
    """The networks are models the runtimes run as written (so their kernels are real)."""
    graph, _, _ = NETWORKS[name](batch=2)
    _check_graph(graph)


@pytest.mark.parametrize("name", NETWORKS)
def test_onnx_and_tflite_of_one_network_give_equal_kernel_lists(name):
    graph, _, _ = NETWORKS[name](batch=2)
    onnx_model, tflite_model = to_onnx(graph), to_tflite(graph)
    for rules in (DEFAULT_ATTACH, ALL_ATTACHED, frozenset()):
        assert onnx_to_kernels(onnx_model, attach=rules) == \
            tflite_to_kernels(tflite_model, attach=rules)


def test_layout_transposes_fold_and_plain_tensors_keep_their_shape():
    """conv (image) -> transpose (plain) -> gelu -> softmax -> transpose -> prelu -> resize
    (image): four TRANSPOSEs in the file, two of them layout changes. The activations read
    their tensors as the NCHW model does: GELU a channels-last map (last axis as channels),
    PReLU the map transposed back to NCHW (an image), though TFLite stores both as they are."""
    b = GraphBuilder(np.random.default_rng(0))
    x = b.conv(b.input((2, 3, 16, 16)), 8, 4, stride=4, pad=0)
    x = b.softmax(b.act(b.transpose(x, (0, 2, 3, 1)), "gelu"))
    y = b.act(b.transpose(x, (0, 3, 1, 2)), "prelu")
    graph = b.finish(b.resize(y, 2, "bilinear"))
    data = to_tflite(graph)
    assert [op.op for op in read_tflite(data).main.operators].count("TRANSPOSE") == 4
    assert _keys(tflite_to_kernels(data)) == _keys([
        S("conv", h=16, w=16, cin=3, cout=8, kernel=4, stride=4, pad=0, batch=2),
        S("transpose", cin=2, h=8, w=16, axes="0132"),
        S("act", h=4, w=4, cin=8, act="gelu", batch=2),
        S("softmax", heads=4, tokens=4, cin=8, batch=2),
        S("transpose", cin=2, h=16, w=8, axes="0132"),
        S("act", h=4, w=4, cin=8, act="prelu", batch=2),
        S("resize", h=4, w=4, cin=8, scale=2, mode="bilinear", batch=2)])


def _shuffled(batch: int = 2) -> LayerGraph:
    b = GraphBuilder(np.random.default_rng(11))
    y = b.shuffle(b.conv(b.input((batch, 4, 6, 5)), 12, 3), 3)
    return b.finish(b.act(y, "mish"))


def test_a_channel_shuffle_gives_an_image():
    assert _keys(tflite_to_kernels(to_tflite(_shuffled()))) == _keys([
        S("conv", h=6, w=5, cin=4, cout=12, kernel=3, batch=2),
        S("shuffle", h=6, w=5, cin=12, groups=3, batch=2),
        S("act", h=6, w=5, cin=12, act="mish", batch=2)])


def test_a_channel_shuffle_gives_an_image_in_onnx_too():
    graph = _shuffled()
    assert onnx_to_kernels(to_onnx(graph)) == tflite_to_kernels(to_tflite(graph))


def _zero_pad_then_conv() -> LayerGraph:
    b = GraphBuilder(np.random.default_rng(12))
    y = b.conv(b.pad(b.input((1, 4, 8, 8)), 1, "constant"), 6, 3, pad=0)
    return b.finish(y)


def test_a_zero_pad_before_a_valid_conv_is_its_padding():
    """PAD + VALID CONV_2D is how TFLite writes a padded convolution: one conv kernel."""
    assert _keys(tflite_to_kernels(to_tflite(_zero_pad_then_conv()))) == [
        S("conv", h=8, w=8, cin=4, cout=6, kernel=3, pad=1).key()]


def test_a_zero_pad_before_a_conv_is_its_padding_in_onnx_too():
    graph = _zero_pad_then_conv()
    assert onnx_to_kernels(to_onnx(graph)) == tflite_to_kernels(to_tflite(graph))


# --- the forms converters write ----------------------------------------------------------------
def _check(net: _Net, inputs: list[int], outputs: list[int],
           expected: Sequence[OpSpec]) -> None:
    data = net.finish(inputs, outputs)
    _interpreter(data)  # a model the runtime accepts
    assert _keys(tflite_to_kernels(data, attach=ALL_ATTACHED)) == _keys(expected)


def test_keras_layer_norm_and_unfused_linear_layers():
    """Keras LayerNormalization (MEAN, SQUARED_DIFFERENCE, MEAN, ADD, RSQRT, MUL gamma, MUL x,
    MUL mean, SUB beta, ADD) is one layernorm; a FULLY_CONNECTED that flattens [B, T, C] and
    a RESHAPE back, and a BATCH_MATMUL by a constant with its bias ADD, are tlinear kernels."""
    net = _Net()
    x = net.tensor([2, 5, 8])
    axes = net.const(np.asarray([-1], np.int32))
    mean, sq, var, var_eps, inv, scale, xs, ms, shift, y = (
        net.tensor(s) for s in ([2, 5, 1], [2, 5, 8], [2, 5, 1], [2, 5, 1], [2, 5, 1],
                                [2, 5, 8], [2, 5, 8], [2, 5, 8], [2, 5, 8], [2, 5, 8]))
    reduce = schema.ReducerOptionsT(keepDims=True)
    net.op("MEAN", [x, axes], [mean], reduce)
    net.op("SQUARED_DIFFERENCE", [x, mean], [sq])
    net.op("MEAN", [sq, axes], [var], reduce)
    net.op("ADD", [var, net.const(np.asarray([1e-3], np.float32))], [var_eps],
           schema.AddOptionsT())
    net.op("RSQRT", [var_eps], [inv])
    net.op("MUL", [inv, net.const(np.ones(8, np.float32))], [scale], schema.MulOptionsT())
    net.op("MUL", [x, scale], [xs], schema.MulOptionsT())
    net.op("MUL", [mean, scale], [ms], schema.MulOptionsT())
    net.op("SUB", [net.const(np.zeros(8, np.float32)), ms], [shift], schema.SubOptionsT())
    net.op("ADD", [xs, shift], [y], schema.AddOptionsT())
    flat = net.tensor([10, 16])
    net.op("FULLY_CONNECTED", [y, net.const(np.ones((16, 8), np.float32)),
                               net.const(np.zeros(16, np.float32))], [flat],
           schema.FullyConnectedOptionsT(fusedActivationFunction=1))
    tokens = net.tensor([2, 5, 16])
    net.op("RESHAPE", [flat, net.const(np.asarray([2, 5, 16], np.int32))], [tokens],
           schema.ReshapeOptionsT(newShape=[2, 5, 16]))
    z, out = net.tensor([2, 5, 4]), net.tensor([2, 5, 4])
    net.op("BATCH_MATMUL", [tokens, net.const(np.ones((16, 4), np.float32))], [z],
           schema.BatchMatMulOptionsT())
    net.op("ADD", [z, net.const(np.zeros(4, np.float32))], [out], schema.AddOptionsT())
    _check(net, [x], [out], [S("layernorm", tokens=5, cin=8, batch=2),
                             S("tlinear", tokens=5, cin=8, cout=16, act="relu", batch=2),
                             S("tlinear", tokens=5, cin=16, cout=4, batch=2)])


def test_adjoint_matmul_sliced_token_split_and_symmetric_pad():
    """QK^T as BATCH_MATMUL adj_y (no TRANSPOSE), the class token as a STRIDED_SLICE that
    drops the token axis, SPLIT of channels into slices and MIRROR_PAD SYMMETRIC."""
    net = _Net()
    q, k = net.tensor([1, 2, 6, 4]), net.tensor([1, 2, 6, 4])
    scores = net.tensor([1, 2, 6, 6])
    net.op("BATCH_MATMUL", [q, k], [scores], schema.BatchMatMulOptionsT(adjY=True))
    tokens = net.tensor([1, 6, 8])
    first = net.tensor([1, 8])
    net.op("STRIDED_SLICE", [tokens, net.const(np.asarray([0, 0, 0], np.int32)),
                             net.const(np.asarray([1, 1, 8], np.int32)),
                             net.const(np.asarray([1, 1, 1], np.int32))], [first],
           schema.StridedSliceOptionsT(beginMask=5, endMask=5, shrinkAxisMask=2))
    image = net.tensor([1, 5, 5, 6])
    parts = [net.tensor([1, 5, 5, 2]) for _ in range(3)]
    net.op("SPLIT", [net.const(np.asarray(3, np.int32)), image], parts,
           schema.SplitOptionsT(numSplits=3))
    padded = net.tensor([1, 9, 9, 2])
    net.op("MIRROR_PAD", [parts[0], net.const(np.asarray([[0, 0], [2, 2], [2, 2], [0, 0]],
                                                          np.int32))], [padded],
           schema.MirrorPadOptionsT(mode=schema.MirrorPadMode.SYMMETRIC))
    _check(net, [q, k, tokens, image], [scores, first, padded, parts[1], parts[2]], [
        S("bmm", heads=2, tokens=6, cin=4, cout=6),
        S("gather", tokens=6, cin=8),
        *[S("slice", h=5, w=5, cin=6, cout=2)] * 3,
        S("pad", h=5, w=5, cin=2, pad=2, mode="reflect")])


def test_same_padded_transposed_conv_and_single_op_activations():
    """TRANSPOSE_CONV with SAME padding (odd total: priced as the symmetric pad with an output
    padding), fused RELU; then HARD_SWISH, LOGISTIC and TANH as their own kernels."""
    net = _Net()
    x = net.tensor([1, 4, 4, 3])
    y = net.tensor([1, 8, 8, 5])
    net.op("TRANSPOSE_CONV", [net.const(np.asarray([1, 8, 8, 5], np.int32)),
                              net.const(np.ones((5, 3, 3, 3), np.float32)), x,
                              net.const(np.zeros(5, np.float32))], [y],
           schema.TransposeConvOptionsT(padding=schema.Padding.SAME, strideH=2, strideW=2,
                                        fusedActivationFunction=1))
    current = y
    for op in ("HARD_SWISH", "LOGISTIC", "TANH"):
        out = net.tensor([1, 8, 8, 5])
        net.op(op, [current], [out])
        current = out
    _check(net, [x], [current], [
        S("convt", h=4, w=4, cin=3, cout=5, kernel=3, stride=2, pad=1, out_pad=1, act="relu"),
        *(S("act", h=8, w=8, cin=5, act=a) for a in ("hswish", "sigmoid", "tanh"))])


# --- bad input ---------------------------------------------------------------------------------
def test_misused_new_ops_are_named_in_one_line(tmp_path):
    net = _Net()
    tokens = net.tensor([2, 5, 8])
    picked = net.tensor([2, 2, 8])
    net.op("GATHER", [tokens, net.const(np.asarray([0, 3], np.int32))], [picked],
           schema.GatherOptionsT(axis=1))
    wide = net.tensor([2, 3, 4, 5, 6])
    reversed_ = net.tensor([6, 5, 4, 3, 2])
    net.op("TRANSPOSE", [wide, net.const(np.asarray([4, 3, 2, 1, 0], np.int32))], [reversed_],
           schema.TransposeOptionsT())
    image = net.tensor([2, 4, 4, 3])
    mean = net.tensor([1, 4, 4, 3])
    net.op("MEAN", [image, net.const(np.asarray([0], np.int32))], [mean],
           schema.ReducerOptionsT(keepDims=True))
    stacked = net.tensor([4, 4, 4, 3])
    net.op("CONCATENATION", [image, image], [stacked], schema.ConcatenationOptionsT(axis=0))
    relu = net.tensor([2, 4, 4, 3])
    net.op("RELU", [image], [relu])
    path = tmp_path / "user model.tflite"
    path.write_bytes(net.finish([tokens, wide, image], [picked, reversed_, mean, stacked, relu]))
    with pytest.raises(UnsupportedModelError) as err:
        tflite_to_kernels(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "unsupported TFLite ops" not in message
    assert "GATHER op 0" in message and "gathers 2 indices" in message
    assert "TRANSPOSE op 1" in message and "moves 5 axis groups" in message
    assert "MEAN op 2" in message and "averages the batch axis" in message
    assert "CONCATENATION op 3" in message and "along axis 0 of a 4-D tensor" in message
    partial = parse_tflite(path, allow_partial=True)
    assert partial.skipped == {"CONCATENATION": 1, "GATHER": 1, "MEAN": 1, "TRANSPOSE": 1}
    assert _keys(partial.kernels) == [S("act", h=4, w=4, cin=3, act="relu", batch=2).key()]
