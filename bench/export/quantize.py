"""ONNX models in the precisions latbench measures, made by the tools users make theirs with:
INT8 by ONNX Runtime's quantizer (`onnxruntime.quantization`), FP16 by its float16 converter.

The float32 export stays the source: a precision is a transformation of its bytes, so a kernel,
a chain and a torch-exported network are quantized the same way.

- "int8", static (`quant_format` "qdq", the default, or "qoperator"): `quantize_static` with
  per-channel symmetric int8 weights in 7 bits (`reduce_range`), int32 biases, and activation
  scales and zero points from a MinMax calibration pass over random standard-normal inputs (a
  seeded generator). 7 bits because ONNX Runtime's U8S8 kernels on x86 CPUs without VNNI add
  pairs of products in int16, which 8-bit weights overflow (ONNX Runtime's own advice); kernels
  and latency are the same, and the results are right on every CPU. QDQ writes
  QuantizeLinear/DequantizeLinear around Conv, MatMul/Gemm, Add, pools... which ONNX Runtime
  fuses into QLinearConv/QLinearMatMul; activations are int8 (ONNX Runtime's default; on x86 it
  turns them into uint8 when it fuses). QOperator writes QLinearConv, QLinearMatMul, QGemm,
  QLinearAdd... directly, with uint8 activations: the U8S8 form ONNX Runtime recommends for it
  on x86 (its S8S8 QLinearConv runs several times slower there). Inputs and outputs stay float32,
  quantized and dequantized at the model's edges, as the quantizer leaves them (ONNX Runtime
  does not fuse a QDQ model whose inputs are already int8).
- "int8", dynamic (`quant_format` "dynamic"): `quantize_dynamic`, 7-bit int8 weights; activations
  quantized at run time (DynamicQuantizeLinear + ConvInteger / MatMulInteger); the other ops
  stay float32.
- "float16": `onnxruntime.transformers.float16.convert_float_to_float16`, weights and compute in
  float16, float32 inputs and outputs with a Cast at each edge (`keep_io_types`), nodes sorted
  back into execution order. ONNX Runtime's CPU provider on x86 has few float16 kernels and
  runs such a model through casts to float32; ARM64 CPUs with float16 arithmetic run it natively.

`strict` refuses a model in which the static quantizer left computing ops in float (a kernel
ONNX Runtime has no int8 form of, such as a lone ReLU or hard-swish, or a mean over axes), or in
which the dynamic one quantized nothing, naming them: an int8 dataset must not hold float kernels
under an int8 key. A user's network may keep such islands (`strict=False`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from latbench.errors import ConfigError, ExportError

QUANT_FORMATS = ("qdq", "qoperator", "dynamic")
DEFAULT_QUANT_FORMAT = "qdq"
CALIBRATION_BATCHES = 4


def in_precision(model: bytes, dtype: str, *, quant_format: str = DEFAULT_QUANT_FORMAT,
                 seed: int = 0, strict: bool = True, what: str = "model") -> bytes:
    """`model` (float32 ONNX bytes) in `dtype` (an OpSpec dtype); `what` names it in errors."""
    if dtype == "float32":
        return model
    if dtype == "float16":
        return to_float16(model)
    if dtype == "int8":
        return quantize(model, quant_format=quant_format, seed=seed, strict=strict, what=what)
    raise ExportError(f"ONNX export of {what}: no precision {dtype!r}")


def check_quant_format(quant_format: str) -> str:
    if quant_format not in QUANT_FORMATS:
        raise ConfigError(f"unknown quantization format {quant_format!r}; known: "
                          f"{', '.join(QUANT_FORMATS)}")
    return quant_format


def calibration_inputs(model: onnx.ModelProto, rng: np.random.Generator,
                       batches: int = CALIBRATION_BATCHES) -> list[dict[str, np.ndarray]]:
    """Random feeds for every graph input (standard normal floats; integers 0..3), a symbolic
    or unknown dim read as 1."""
    init = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in init]
    feeds = []
    for _ in range(batches):
        feed = {}
        for value in inputs:
            tensor = value.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
            shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                     for d in tensor.shape.dim]
            if np.dtype(dtype).kind == "f":
                feed[value.name] = rng.standard_normal(shape).astype(dtype)
            else:
                feed[value.name] = rng.integers(0, 4, shape).astype(dtype)
        feeds.append(feed)
    return feeds


def quantize(model: bytes, *, quant_format: str = DEFAULT_QUANT_FORMAT, seed: int = 0,
             strict: bool = True, what: str = "model") -> bytes:
    """`model` quantized to int8 by ONNX Runtime's quantizer (module docstring)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    check_quant_format(quant_format)
    proto = onnx.load_from_string(model)

    class RandomReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(calibration_inputs(proto, np.random.default_rng(seed)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory(prefix="latbench-quant-") as tmp, _quiet_quantizer():
        source, target = Path(tmp, "float.onnx"), Path(tmp, "int8.onnx")
        source.write_bytes(model)
        try:
            if quant_format == "dynamic":
                quantize_dynamic(source, target, weight_type=QuantType.QInt8, reduce_range=True)
            else:
                qdq = quant_format == "qdq"
                quantize_static(source, target, RandomReader(),
                                quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                                activation_type=QuantType.QInt8 if qdq else QuantType.QUInt8,
                                weight_type=QuantType.QInt8, per_channel=True,
                                reduce_range=True,
                                extra_options={"ForceQuantizeNoInputCheck": True})
        except Exception as exc:  # the quantizer raises many types, all "cannot quantize"
            raise ExportError(f"INT8 ({quant_format}) export of {what}: ONNX Runtime's "
                              f"quantizer failed: {type(exc).__name__}: {exc}") from exc
        quantized = onnx.load(str(target))
    if strict:
        _refuse_float_ops(quantized, quant_format, what)
    return quantized.SerializeToString()


def _refuse_float_ops(model: onnx.ModelProto, quant_format: str, what: str) -> None:
    """ExportError naming the ops left in float: any of them (static), or all of them
    (dynamic quantization keeps every op but Conv and MatMul float by design)."""
    from latbench.bench.onnx_quant import float_nodes, float_view

    if quant_format == "dynamic" and float_view(model).int8:
        return
    left = float_nodes(model)
    if left:
        ops = sorted({node.op_type for node in left})
        raise ExportError(f"INT8 ({quant_format}) export of {what}: ONNX Runtime's quantizer "
                          f"leaves {', '.join(ops)} in float ({len(left)} node"
                          f"{'s' if len(left) > 1 else ''}); it has no int8 form of them")


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop two notices the quantizer logs on the root logger: its advice to pre-process (at
    every call: latbench's exports are already shape-inferred with BatchNorm folded) and "Axis 1
    is out-of-range for weight" (once per 1-D weight under `per_channel`, a LayerNorm's scale:
    it gets one scale per tensor, as it should - an INT8 ViT printed 21 such lines per model)."""
    def advice(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "pre-processing" not in message and "is out-of-range for weight" not in message

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def to_float16(model: bytes) -> bytes:
    """`model` with float16 weights and compute, float32 at its inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load_from_string(model)
    try:
        half = convert_float_to_float16(proto, keep_io_types=True)
    except Exception as exc:  # the converter raises many types
        raise ExportError(f"FP16 export failed: {type(exc).__name__}: {exc}") from exc
    _sort_nodes(half.graph)
    onnx.checker.check_model(half)
    return half.SerializeToString()


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Nodes in an order where each reads only tensors made before it (the converter appends
    the Casts it adds at the inputs after every other node)."""
    ready = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        left = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                left.append(node)
        if len(left) == len(pending):
            raise ExportError(f"FP16 export: nodes {[n.name for n in left[:3]]} read tensors "
                              "nothing makes")
        pending = left
    del graph.node[:]
    graph.node.extend(ordered)
