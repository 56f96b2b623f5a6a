"""The .tflite reader and its kernel split: checked against the LiteRT interpreter and against
the ONNX split of the same graphs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from latbench.bench.export.graph import chain_graph, spec_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.export.to_tflite import to_tflite
from latbench.bench.kernels import onnx_to_kernels
from latbench.bench.ops import ACTIVATIONS, OpSpec, decompose
from latbench.bench.spaces import get_space
from latbench.bench.tflite_kernels import parse_tflite, supported_ops, tflite_to_kernels
from latbench.bench.tflite_model import looks_like_tflite, read_tflite
from latbench.errors import ConfigError, ParseError, UnsupportedModelError

schema = pytest.importorskip("ai_edge_litert.schema_py_generated")

CHAIN = [
    OpSpec("conv", h=16, w=16, cin=3, cout=8, kernel=3, stride=2, act="relu6"),
    OpSpec("dwconv", h=8, w=8, cin=8, kernel=5, act="hswish"),
    OpSpec("mbconv", h=8, w=8, cin=8, cout=8, kernel=3, expand=3, act="swish", se=True),
    OpSpec("mbconv", h=8, w=8, cin=8, cout=12, kernel=5, stride=2, expand=2, act="hswish",
           se=True),
    OpSpec("add", h=4, w=4, cin=12, act="relu"),
    OpSpec("act", h=4, w=4, cin=12, act="hsigmoid"),
    OpSpec("se", h=4, w=4, cin=12, expand=0.5, act="sigmoid"),
    OpSpec("conv", h=4, w=4, cin=12, cout=8, kernel=3, groups=4, act="swish"),
    OpSpec("pool", h=4, w=4, cin=8, pool="max", kernel=3, stride=2, pad=1),
    OpSpec("pool", h=2, w=2, cin=8, pool="gavg"),
    OpSpec("linear", cin=8, cout=5, act="relu"),
]


def _single_specs() -> list[OpSpec]:
    s = OpSpec
    cases = [
        s("conv", h=7, w=9, cin=4, cout=6, kernel=3, stride=2, act="relu6"),  # SAME fits
        s("conv", h=8, w=8, cin=4, cout=6, kernel=3, stride=2),  # explicit PAD + VALID
        s("conv", h=6, w=6, cin=4, cout=4, kernel=3, pad=0),
        s("conv", h=6, w=6, cin=4, cout=4, kernel=3, pad=2),
        s("conv", h=8, w=8, cin=8, cout=12, kernel=3, stride=2, groups=4, act="swish"),
        s("conv", h=6, w=6, cin=4, cout=8, kernel=3, groups=4),  # depth multiplier 2
        s("dwconv", h=10, w=10, cin=4, kernel=5, stride=2, act="relu"),
        s("mbconv", h=7, w=7, cin=8, cout=16, kernel=3, stride=2, expand=6, se=True,
          act="hswish"),
        s("linear", cin=12, cout=5, act="relu", batch=2),
        s("pool", h=8, w=8, cin=4, pool="avg", kernel=3, stride=2, pad=1),
        s("pool", h=7, w=7, cin=4, pool="max", kernel=3, stride=2, pad=1),
        s("pool", h=6, w=5, cin=6, pool="gavg", batch=2),
        s("add", h=5, w=5, cin=8, act="hswish"),
        s("mul", h=5, w=5, cin=8, batch=2),
        s("se", h=6, w=6, cin=16, expand=0.5, act="hsigmoid"),
        s("se", h=6, w=6, cin=30, expand=0.25),
        s("concat", h=5, w=5, cin=12, groups=3),
    ]
    cases += [s("act", h=5, w=5, cin=6, act=a) for a in ACTIVATIONS if a != "none"]
    cases += [s("conv", h=6, w=6, cin=4, cout=6, kernel=3, act=a) for a in ACTIVATIONS]
    return cases


def _keys(kernels: Sequence[OpSpec]) -> list[str]:
    return [k.key() for k in kernels]


# --- the same graph as ONNX and as TFLite gives the same kernels ------------------------------
@pytest.mark.parametrize("native_groups", [True, False], ids=["grouped", "split"])
@pytest.mark.parametrize("spec", _single_specs(), ids=lambda s: s.key())
def test_spec_graph_gives_the_onnx_kernels(spec, native_groups):
    graph = spec_graph(spec)
    got = tflite_to_kernels(to_tflite(graph, native_groups=native_groups))
    assert got == onnx_to_kernels(to_onnx(graph))
    assert _keys(got) == _keys(decompose(spec))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("native_groups", [True, False], ids=["grouped", "split"])
def test_chain_gives_the_onnx_kernels(batch, native_groups):
    graph = chain_graph([s.with_(batch=batch) for s in CHAIN], seed=5)
    got = tflite_to_kernels(to_tflite(graph, native_groups=native_groups))
    assert got == onnx_to_kernels(to_onnx(graph))
    assert {k.batch for k in got} == {batch}


def test_nasbench_macro_networks_give_the_onnx_kernels():
    space = get_space("nasbench-macro")
    rng = np.random.default_rng(0)
    codes = ["00000000", "11111111", "22222222", "12120022"]
    codes += [space.encode(space.sample(rng)) for _ in range(4)]
    for code in codes:
        specs = space.ops(space.decode(code))
        graph = chain_graph(specs)
        got = tflite_to_kernels(to_tflite(graph))
        assert got == onnx_to_kernels(to_onnx(graph)), code
        assert _keys(got) == [k.key() for s in specs for k in decompose(s)], code


@pytest.mark.parametrize("space_name", ["nasbench-macro", "proxyless"])
def test_grouped_blocks_give_the_space_description_and_the_onnx_grouping(space_name):
    space = get_space(space_name)
    rng = np.random.default_rng(1)
    for _ in range(4):
        specs = space.ops(space.sample(rng))
        graph = chain_graph(specs)
        got = tflite_to_kernels(to_tflite(graph), group=True)
        assert _keys(got) == _keys(specs)
        assert got == onnx_to_kernels(to_onnx(graph), group=True)


def test_group_predicate_and_the_chain_with_every_pattern():
    graph = chain_graph(CHAIN, seed=6)
    for native_groups in (True, False):
        data = to_tflite(graph, native_groups=native_groups)
        got = tflite_to_kernels(data, group=True)
        assert got == onnx_to_kernels(to_onnx(graph), group=True)
        assert [k.kind for k in got].count("mbconv") == 2
    only_se = tflite_to_kernels(data, group=lambda spec: spec.kernel == 5)
    assert [k.kind for k in only_se].count("mbconv") == 1
    assert len(only_se) == len(got) - 1 + len(decompose(CHAIN[2]))


def test_attach_rules_split_fused_fields_and_activation_ops_alike():
    graph = chain_graph(CHAIN, seed=1)
    tfl, onnx_model = to_tflite(graph), to_onnx(graph)
    for rules in (frozenset(), frozenset({("conv", "relu6"), ("add", "relu")})):
        got = tflite_to_kernels(tfl, attach=rules)
        assert got == onnx_to_kernels(onnx_model, attach=rules)
    bare = tflite_to_kernels(tfl, attach=frozenset())
    assert {k.act for k in bare if k.kind != "act" and k.kind != "se"} == {"none"}
    # the stem's RELU6 is a fused field in the file: without its rule it is an act kernel
    assert bare[0].kind == "conv" and (bare[1].kind, bare[1].act) == ("act", "relu6")


def test_model_sources_path_bytes_and_parsed_model(tmp_path):
    data = to_tflite(chain_graph(CHAIN[:3]))
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    expected = tflite_to_kernels(data)
    assert tflite_to_kernels(path) == expected
    assert tflite_to_kernels(str(path)) == expected
    assert tflite_to_kernels(read_tflite(path)) == expected
    assert looks_like_tflite(path) and looks_like_tflite(data)
    assert not looks_like_tflite(to_onnx(chain_graph(CHAIN[:1])))
    assert not looks_like_tflite(tmp_path / "missing.tflite")


# --- the reader agrees with the interpreter -----------------------------------------------------
def _interpreter(data: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=data, num_threads=1,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter


def test_reader_matches_the_interpreter():
    graph = chain_graph(CHAIN, seed=2)
    data = to_tflite(graph, "probe")
    model = read_tflite(data)
    interpreter = _interpreter(data)
    assert (model.version, model.description, len(model.subgraphs)) == (3, "probe", 1)
    sg = model.main
    # the interpreter appends its own scratch tensors after the file's
    details = [d for d in interpreter.get_tensor_details() if d["index"] < len(sg.tensors)]
    assert sorted(d["index"] for d in details) == list(range(len(sg.tensors)))
    for d in details:
        t = sg.tensors[d["index"]]
        assert (t.name, t.shape, t.signature) == (d["name"], tuple(d["shape"]),
                                                  tuple(d["shape_signature"]))
        assert np.dtype(d["dtype"]) == np.dtype(t.dtype.lower())
        if t.constant:
            assert np.array_equal(model.constant(t), interpreter.get_tensor(d["index"]))
    ops = interpreter._get_ops_details()
    assert [(o.name, o.inputs, o.outputs) for o in sg.operators] == [
        (d["op_name"], tuple(d["inputs"]), tuple(d["outputs"])) for d in ops]
    assert [sg.tensors[i].name for i in sg.inputs] == [
        d["name"] for d in interpreter.get_input_details()]


def test_options_and_constants_are_readable():
    spec = OpSpec("conv", h=8, w=8, cin=4, cout=6, kernel=3, stride=2, act="relu6")
    graph = chain_graph([spec, OpSpec("pool", h=4, w=4, cin=6, pool="gavg")], seed=4)
    model = read_tflite(to_tflite(graph))
    by_op = {op.op: op for op in model.main.operators}
    assert set(by_op) == {"PAD", "CONV_2D", "MEAN"}
    conv = by_op["CONV_2D"].options
    assert (conv["padding"], conv["stride_h"], conv["stride_w"]) == ("VALID", 2, 2)
    assert conv["fused_activation_function"] == "RELU6"
    assert conv["dilation_h_factor"] == conv["dilation_w_factor"] == 1
    assert by_op["MEAN"].options["keep_dims"] is True
    filt = model.main.tensors[by_op["CONV_2D"].inputs[1]]
    weight = graph.layers[0].weights["weight"]  # OIHW
    assert filt.shape == (6, 3, 3, 4) and filt.constant
    assert np.array_equal(model.constant(filt), weight.transpose(0, 2, 3, 1))
    paddings = model.constant(model.main.tensors[by_op["PAD"].inputs[1]])
    assert paddings.tolist() == [[0, 0], [1, 1], [1, 1], [0, 0]]
    assert model.constant(model.main.tensors[by_op["CONV_2D"].outputs[0]]) is None


# --- hand-written models: what TensorFlow converters write -------------------------------------
class _Net:
    """A minimal TFLite writer for models latbench's exporter never writes."""

    def __init__(self) -> None:
        self.tensors: list = []
        self.buffers = [schema.BufferT()]
        self.codes: list = []
        self.operators: list = []

    def tensor(self, shape, dtype="FLOAT32", data=None, signature=None, quant=None) -> int:
        t = schema.TensorT()
        t.shape = np.asarray(shape, np.int32)
        if signature is not None:
            t.shapeSignature = np.asarray(signature, np.int32)
        t.type = getattr(schema.TensorType, dtype)
        t.name = f"t{len(self.tensors)}"
        if data is not None:
            buf = schema.BufferT()
            buf.data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if quant is not None:
            q = schema.QuantizationParametersT()
            q.scale = np.asarray(quant[0], np.float32)
            q.zeroPoint = np.asarray(quant[1], np.int64)
            q.quantizedDimension = quant[2]
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, value) -> int:
        value = np.asarray(value)
        dtype = {np.float32: "FLOAT32", np.int32: "INT32", np.float16: "FLOAT16"}[value.dtype.type]
        return self.tensor(value.shape, dtype, value)

    def op(self, name, inputs, outputs, options=None, deprecated_only=False) -> None:
        code = getattr(schema.BuiltinOperator, name)
        oc = schema.OperatorCodeT()
        placeholder = schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES
        oc.deprecatedBuiltinCode = min(code, placeholder)
        oc.builtinCode = 0 if deprecated_only else code
        oc.version = 1
        self.codes.append(oc)
        op = schema.OperatorT()
        op.opcodeIndex = len(self.codes) - 1
        op.inputs = np.asarray(inputs, np.int32)
        op.outputs = np.asarray(outputs, np.int32)
        if options is not None:
            op.builtinOptionsType = getattr(schema.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        self.operators.append(op)

    def conv(self, x, cout, kernel, stride=1, padding="SAME", act="NONE", dilation=1,
             filter_dtype=np.float32, stride_w=None) -> int:
        n, h, w, c = self.shape(x)
        filt = self.const(np.ones((cout, kernel, kernel, c), filter_dtype))
        if filter_dtype != np.float32:
            dq = self.tensor(self.shape(filt))
            self.op("DEQUANTIZE", [filt], [dq])
            filt = dq
        bias = self.const(np.zeros(cout, np.float32))
        stride_w = stride if stride_w is None else stride_w
        size = (lambda d, s: -(-d // s)) if padding == "SAME" else \
            (lambda d, s: (d - dilation * (kernel - 1) - 1) // s + 1)
        out = self.tensor([n, size(h, stride), size(w, stride_w), cout])
        self.op("CONV_2D", [x, filt, bias], [out], schema.Conv2DOptionsT(
            padding=getattr(schema.Padding, padding), strideH=stride, strideW=stride_w,
            fusedActivationFunction=getattr(schema.ActivationFunctionType, act),
            dilationHFactor=dilation, dilationWFactor=dilation))
        return out

    def shape(self, index: int) -> list[int]:
        return [int(d) for d in self.tensors[index].shape]

    def finish(self, inputs, outputs, version=3) -> bytes:
        import flatbuffers

        sg = schema.SubGraphT()
        sg.tensors, sg.operators = self.tensors, self.operators
        sg.inputs, sg.outputs = np.asarray(inputs, np.int32), np.asarray(outputs, np.int32)
        model = schema.ModelT()
        model.version, model.description = version, "hand-written"
        model.operatorCodes, model.subgraphs, model.buffers = self.codes, [sg], self.buffers
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def test_tensorflow_style_padding_is_priced_as_the_symmetric_pad():
    net = _Net()
    x = net.tensor([1, 8, 8, 3])
    padded = net.tensor([1, 9, 9, 3])
    net.op("PAD", [x, net.const(np.asarray([[0, 0], [0, 1], [0, 1], [0, 0]], np.int32))],
           [padded], schema.PadOptionsT())
    y = net.conv(padded, 8, 3, stride=2, padding="VALID", act="RELU")  # 4x4
    z = net.conv(y, 8, 3, stride=2, padding="SAME")  # 4x4 -> 2x2: pads 0 before, 1 after
    data = net.finish([x], [z])
    interpreter = _interpreter(data)  # the model is one the runtime accepts
    assert tuple(interpreter.get_output_details()[0]["shape"]) == (1, 2, 2, 8)
    assert _keys(tflite_to_kernels(data)) == _keys([
        OpSpec("conv", h=8, w=8, cin=3, cout=8, kernel=3, stride=2, pad=1, act="relu"),
        OpSpec("conv", h=4, w=4, cin=8, cout=8, kernel=3, stride=2, pad=1)])


def test_old_opcodes_float16_weights_and_fc_squeeze_excite():
    net = _Net()
    x = net.tensor([1, 6, 6, 8])
    y = net.conv(x, 16, 1, act="RELU6", filter_dtype=np.float16)  # DEQUANTIZE'd weights
    net.operators[-1].opcodeIndex = len(net.codes)  # the conv's code: deprecated field only
    net.codes.append(schema.OperatorCodeT(deprecatedBuiltinCode=3, builtinCode=0, version=1))
    pooled = net.tensor([1, 16])
    net.op("MEAN", [y, net.const(np.asarray([1, 2], np.int32))], [pooled],
           schema.ReducerOptionsT(keepDims=False), deprecated_only=True)
    mid = net.tensor([1, 4])
    net.op("FULLY_CONNECTED", [pooled, net.const(np.ones((4, 16), np.float32)),
                               net.const(np.zeros(4, np.float32))], [mid],
           schema.FullyConnectedOptionsT(fusedActivationFunction=1))
    excited = net.tensor([1, 16])
    net.op("FULLY_CONNECTED", [mid, net.const(np.ones((16, 4), np.float32)),
                               net.const(np.zeros(16, np.float32))], [excited],
           schema.FullyConnectedOptionsT())
    gate = net.tensor([1, 16])
    net.op("LOGISTIC", [excited], [gate])
    gate4 = net.tensor([1, 1, 1, 16])
    net.op("RESHAPE", [gate, net.const(np.asarray([1, 1, 1, 16], np.int32))], [gate4],
           schema.ReshapeOptionsT(newShape=[1, 1, 1, 16]))
    out = net.tensor([1, 6, 6, 16])
    net.op("MUL", [y, gate4], [out], schema.MulOptionsT())
    gelu = net.tensor([1, 6, 6, 16])
    net.op("GELU", [out], [gelu], schema.GeluOptionsT())  # code 150: placeholder 127 + field
    data = net.finish([x], [gelu])
    model = read_tflite(data)
    names = [op.op for op in model.main.operators]
    assert names == ["DEQUANTIZE", "CONV_2D", "MEAN", "FULLY_CONNECTED", "FULLY_CONNECTED",
                     "LOGISTIC", "RESHAPE", "MUL", "GELU"]
    assert names == [d["op_name"] for d in _interpreter(data)._get_ops_details()]
    filt = model.main.tensors[model.main.operators[0].inputs[0]]
    assert filt.dtype == "FLOAT16" and model.constant(filt).dtype == np.float16
    kernels = tflite_to_kernels(data)  # the GELU's code is read from the newer field
    # float16 weights: every kernel of the model is of the FP16-weights precision
    assert _keys(kernels) == _keys([
        OpSpec("conv", h=6, w=6, cin=8, cout=16, kernel=1, act="relu6", dtype="float16"),
        OpSpec("se", h=6, w=6, cin=16, expand=0.25, act="sigmoid", dtype="float16"),
        OpSpec("act", h=6, w=6, cin=16, act="gelu", dtype="float16")])


def test_int8_per_channel_quantization_is_read_into_an_int8_kernel():
    net = _Net()
    scales = [0.5, 0.25, 0.125, 0.0625]
    x = net.tensor([1, 4, 4, 2], "INT8", signature=[-1, 4, 4, 2], quant=([0.1], [3], 0))
    filt = net.tensor([4, 1, 1, 2], "INT8", np.ones((4, 1, 1, 2), np.int8),
                      quant=(scales, [0] * 4, 0))
    bias = net.tensor([4], "INT32", np.zeros(4, np.int32),
                      quant=([0.1 * s for s in scales], [0] * 4, 0))
    out = net.tensor([1, 4, 4, 4], "INT8", signature=[-1, 4, 4, 4], quant=([0.2], [-1], 0))
    net.op("CONV_2D", [x, filt, bias], [out], schema.Conv2DOptionsT(strideH=1, strideW=1))
    data = net.finish([x], [out])
    sg = read_tflite(data).main
    q = sg.tensors[filt].quantization
    assert q is not None and q.per_channel and q.axis == 0
    assert q.scale == pytest.approx(scales) and q.zero_point == (0, 0, 0, 0)
    assert sg.tensors[x].dynamic and sg.tensors[x].signature == (-1, 4, 4, 2)
    assert [t.index for t in sg.dynamic_inputs()] == [x]
    details = {d["index"]: d for d in _interpreter(data).get_tensor_details()}
    assert details[filt]["quantization_parameters"]["scales"] == pytest.approx(scales)
    assert details[x]["quantization"] == pytest.approx((0.1, 3))
    assert _keys(tflite_to_kernels(data)) == _keys([
        OpSpec("conv", h=4, w=4, cin=2, cout=4, kernel=1, dtype="int8")])


def test_dynamic_spatial_input_is_refused_with_its_name():
    net = _Net()
    x = net.tensor([1, 1, 1, 3], signature=[1, -1, -1, 3])
    y = net.conv(x, 4, 1)
    with pytest.raises(UnsupportedModelError, match=r"input 't0' has dynamic dimensions "
                                                    r"1x\?x\?x3"):
        tflite_to_kernels(net.finish([x], [y]))


def test_input_shapes_may_only_confirm_the_stored_shapes():
    data = to_tflite(chain_graph(CHAIN[:2]))
    stored = tflite_to_kernels(data)
    for dims in ([1, 16, 16, 3], [16, 16, 3]):
        assert list(parse_tflite(data, input_shapes={"input": dims}).kernels) == stored
    with pytest.raises(ConfigError, match=r"'input' is stored at 1x16x16x3, the shape given "
                                          r"for it is 1x32x32x3"):
        parse_tflite(data, input_shapes={"input": [1, 32, 32, 3]})
    with pytest.raises(ConfigError, match=r"has no input 'image'; its inputs: input"):
        parse_tflite(data, input_shapes={"image": [1, 16, 16, 3]})


# --- bad input --------------------------------------------------------------------------------
def test_unsupported_ops_and_uses_are_all_named_in_one_line(tmp_path):
    net = _Net()
    x = net.tensor([1, 8, 8, 4])
    a, b, c, e = (net.tensor([1, 8, 8, 4]) for _ in range(4))
    net.op("SIN", [x], [a])
    net.op("TANH", [a], [b])
    net.op("SIN", [b], [c])
    net.op("GELU", [c], [e], schema.GeluOptionsT())
    d = net.conv(e, 4, 3, padding="VALID", stride_w=2)
    net.op("CUMSUM", [d, net.const(np.asarray(1, np.int32))], [net.tensor([1, 6, 3, 4])],
           schema.CumsumOptionsT())
    path = tmp_path / "user model.tflite"
    path.write_bytes(net.finish([x], [len(net.tensors) - 1]))
    with pytest.raises(UnsupportedModelError) as err:
        tflite_to_kernels(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "unsupported TFLite ops: CUMSUM (1 op), SIN (2 ops);" in message
    assert "CONV_2D op 4" in message and "non-square strides [1, 2]" in message
    assert {"CONV_2D", "TRANSPOSE", "TANH", "GELU"} <= set(supported_ops())
    assert not {"SIN", "CUMSUM"} & set(supported_ops())


def test_allow_partial_keeps_what_it_can_price_and_refuses_when_nothing_is_left():
    net = _Net()
    x = net.tensor([1, 8, 8, 4])
    a, b = net.tensor([1, 8, 8, 4]), net.tensor([1, 8, 8, 4])
    net.op("SIN", [x], [a])
    net.op("RELU", [a], [b])
    c = net.conv(b, 4, 3, padding="VALID", stride=2, stride_w=1)
    data = net.finish([x], [c])
    with pytest.raises(UnsupportedModelError, match=r"SIN \(1 op\)"):
        parse_tflite(data)
    result = parse_tflite(data, allow_partial=True)
    assert _keys(result.kernels) == [OpSpec("act", h=8, w=8, cin=4, act="relu").key()]
    assert result.skipped == {"CONV_2D": 1, "SIN": 1}
    assert len(result.problems) == 1 and "non-square strides [2, 1]" in result.problems[0]
    alone = _Net()
    y, z = alone.tensor([1, 4]), alone.tensor([1, 4])
    alone.op("SIN", [y], [z])
    with pytest.raises(UnsupportedModelError, match="nothing else is left to predict"):
        parse_tflite(alone.finish([y], [z]), allow_partial=True)


@pytest.fixture(scope="module")
def small_tflite() -> bytes:
    return to_tflite(chain_graph([*CHAIN[:2], OpSpec("pool", h=8, w=8, cin=8, pool="gavg"),
                                  OpSpec("linear", cin=8, cout=3)]))


def test_every_truncation_is_a_parse_error_naming_the_file(tmp_path, small_tflite):
    path = tmp_path / "cut.tflite"
    for size in [0, 3, 8, 16, *range(32, len(small_tflite), 37), len(small_tflite) - 1]:
        path.write_bytes(small_tflite[:size])
        with pytest.raises(ParseError) as err:
            tflite_to_kernels(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value), size


@pytest.mark.parametrize("content", [
    b"", b"not a model at all", bytes(range(256)) * 4,
    to_onnx(chain_graph(CHAIN[:1])),
], ids=["empty", "text", "binary", "onnx"])
def test_files_that_are_not_tflite_are_parse_errors(tmp_path, content):
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    with pytest.raises(ParseError, match=r"is not a TFLite flatbuffer"):
        tflite_to_kernels(path)


def test_unknown_schema_version_and_missing_file(tmp_path):
    net = _Net()
    x = net.tensor([1, 4, 4, 3])
    path = tmp_path / "v2.tflite"
    path.write_bytes(net.finish([x], [net.conv(x, 4, 1)], version=2))
    with pytest.raises(ParseError, match=r"v2\.tflite'.*schema version 2; latbench reads "
                                         r"version 3"):
        tflite_to_kernels(path)
    with pytest.raises(ParseError, match=r"cannot read TFLite file .*missing\.tflite"):
        read_tflite(tmp_path / "missing.tflite")


def test_corrupted_bytes_never_escape_as_other_errors(small_tflite):
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(300):
        data = bytearray(small_tflite)
        for i in rng.integers(8, len(data), size=2):
            data[i] = int(rng.integers(0, 256))
        try:
            tflite_to_kernels(bytes(data))
            outcomes.add("parsed")
        except (ParseError, UnsupportedModelError) as exc:
            outcomes.add(type(exc).__name__)
    assert "ParseError" in outcomes
