"""Precision passes over a lowered float32 TFLite model: FP16 weights and full-integer INT8,
written as the TFLite converter writes them (no TensorFlow needed).

- FP16 weights (the converter's `supported_types=[tf.float16]`): every float32 constant is
  stored as float16 and read through a DEQUANTIZE to float32 placed before the first operator.
  Compute stays float32: the builtin kernels run the DEQUANTIZEs once, XNNPACK folds them into
  its packed weights. (XNNPACK computes in FP16 only when the model's
  `reduced_precision_support` metadata or a delegate flag asks for it; neither is written.)
  A model without float constants (a single ADD, a pool) is the float32 model byte for byte.
- INT8 (full-integer post-training quantization with float inputs and outputs): activations
  are int8 with a scale and zero point per tensor from the calibrated range (asymmetric,
  zero exactly representable); convolution, depthwise and transposed-convolution weights are
  symmetric int8 per output channel (zero point 0, `quantized_dimension` the output-channel
  axis: 0 for CONV_2D and TRANSPOSE_CONV filters, 3 for DEPTHWISE_CONV_2D); fully connected
  weights are symmetric per tensor; biases are int32 with scale input scale x weight scale;
  other float constants (the 3 and 1/6 of a hard sigmoid, a PRELU slope, a position
  embedding) are int8 per tensor. A QUANTIZE follows each float input and a DEQUANTIZE
  precedes each float output. What the int8 kernels check is honoured: operators that only
  move or select values (pools, pads, reshapes, transposes, concatenation, split, slices,
  resizes) keep one quantization for their inputs and outputs, and LOGISTIC, SOFTMAX and TANH
  write the fixed output quantization TFLite requires (1/256 and -128; 1/256 and -128;
  1/128 and 0). A bmm kernel measured alone pins its right operand's zero point to the form
  its key names (0 or not: `ops.BMM_SYMMETRIC`); in a network calibration decides, as the
  converter's. Operator versions are those `tools/versioning/op_version.cc` gives int8
  kernels, so a runtime too old for one refuses the model instead of misreading it.

Calibration runs the float32 model in the LiteRT interpreter (builtin kernels, every
intermediate tensor kept), as the converter's calibrator does, so every tensor the lowering
writes - the padded input of a VALID convolution, an activation's pre-activation - gets the
range it takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latbench.errors import ExportError

CALIBRATION_SEEDS = (0, 1, 2, 3)  # `LayerGraph.random_inputs` seeds of the default calibration
_QMIN, _QMAX = -128, 127
_INT32_MAX = 2**31 - 1
_FLOAT16_MAX = float(np.finfo(np.float16).max)

# Operators whose int8 inputs and outputs share one quantization: they only move or select
# values (TFLite's int8 kernels and XNNPACK check the equality instead of rescaling).
_SAME_PARAMS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "PAD", "PADV2",
                          "MIRROR_PAD", "MAX_POOL_2D", "AVERAGE_POOL_2D", "CONCATENATION",
                          "SPLIT", "SPLIT_V", "SLICE", "STRIDED_SLICE", "GATHER",
                          "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR"})
# Output quantization (scale, zero point) the int8 kernels require.
_FIXED_OUTPUT = {"LOGISTIC": (1.0 / 256, -128), "SOFTMAX": (1.0 / 256, -128),
                 "TANH": (1.0 / 128, 0)}
# Weighted operators: (data input, filter input, output-channel axis of the filter or None
# for one scale per tensor, bias input).
_WEIGHTS = {"CONV_2D": (0, 1, 0, 2), "DEPTHWISE_CONV_2D": (0, 1, 3, 2),
            "TRANSPOSE_CONV": (2, 1, 0, 3), "FULLY_CONNECTED": (0, 1, None, 2)}
# The least operator version with int8 inputs (tools/versioning/op_version.cc); MUL is 3
# when input1 scale * input2 scale >= output scale. Operators not listed stay at version 1.
_INT8_VERSIONS = {
    "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 4, "TRANSPOSE_CONV": 2,
    "DEQUANTIZE": 2, "MUL": 2, **dict.fromkeys((
        "ADD", "SUB", "MAX_POOL_2D", "AVERAGE_POOL_2D", "TRANSPOSE", "SPLIT", "SPLIT_V",
        "SLICE", "STRIDED_SLICE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
        "CONCATENATION", "PAD", "PADV2", "MIRROR_PAD", "SOFTMAX", "MEAN", "RELU", "RELU6",
        "RSQRT", "TANH", "LOGISTIC", "GATHER", "BATCH_MATMUL", "EXP", "LOG", "GELU",
        "SQUARED_DIFFERENCE"), 2)}


# --- FP16 weights -----------------------------------------------------------------------------
def float16_weights(w: Any) -> None:
    """Store every float32 constant as float16 behind a DEQUANTIZE (see the module docstring).

    The constant's buffer is rewritten in place and handed to a new float16 tensor; the float32
    tensor becomes the DEQUANTIZE's output, so the operators reading it are unchanged."""
    s = w.s
    dequantize = []
    for index, tensor in enumerate(list(w.tensors)):
        if not tensor.buffer or tensor.type != s.TensorType.FLOAT32:
            continue
        buf = w.buffers[tensor.buffer]
        value = buf.data.view(np.float32)
        buf.data = np.clip(value, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16).view(np.uint8)
        half = w.tensor(tensor.shape, f"{_text(tensor.name)}_fp16", s.TensorType.FLOAT16)
        w.tensors[half].buffer = tensor.buffer
        tensor.buffer = 0
        dequantize.append(_operator(w, "DEQUANTIZE", [half], [index], 3))
    w.operators[:0] = dequantize


# --- INT8 -----------------------------------------------------------------------------------
def computed_tensors(w: Any) -> list[int]:
    """Indices of the float32 tensors the model computes (no stored data)."""
    return [i for i, t in enumerate(w.tensors) if not t.buffer and t.type == w.s.TensorType.FLOAT32]


def calibrate(model: bytes, feeds: Sequence[Mapping[int, np.ndarray]], tensors: Sequence[int]
              ) -> dict[int, tuple[float, float]]:
    """(min, max) of each of `tensors` of float32 `model` over the input `feeds` (tensor index
    -> value), run on the builtin kernels with every intermediate tensor kept."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if not feeds:
        raise ExportError("int8 calibration needs at least one set of inputs")
    interpreter = Interpreter(
        model_content=model, num_threads=1, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    ranges: dict[int, tuple[float, float]] = {}
    for feed in feeds:
        for index, value in feed.items():
            interpreter.set_tensor(index, np.ascontiguousarray(value, np.float32))
        interpreter.invoke()
        for index in tensors:
            value = interpreter.get_tensor(index)
            if not np.all(np.isfinite(value)):
                raise ExportError(f"int8 calibration: tensor {index} of the float model is "
                                  "not finite")
            lo, hi = float(value.min()), float(value.max())
            old = ranges.get(index, (lo, hi))
            ranges[index] = (min(lo, old[0]), max(hi, old[1]))
    return ranges


def affine(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of int8 covering [lo, hi] widened to hold 0 exactly, as TFLite's
    calibration nudges it; a tensor that never varies gets the range [0, 1]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-12:
        lo, hi = 0.0, 1.0
    scale = (hi - lo) / (_QMAX - _QMIN)
    zero = int(np.clip(round(_QMIN - lo / scale), _QMIN, _QMAX))
    return scale, zero


def quantize(value: np.ndarray, scale: float | np.ndarray, zero: int = 0) -> np.ndarray:
    """int8 of `value` at `scale` (per element or broadcast) and zero point `zero`."""
    return np.clip(np.round(value / scale) + zero, _QMIN, _QMAX).astype(np.int8)


def quantize_int8(w: Any, inputs: list[int], outputs: list[int],
                  ranges: Mapping[int, tuple[float, float]]) -> tuple[list[int], list[int]]:
    """Rewrite the float32 model in writer `w` as full-integer int8 (module docstring), with
    activation ranges from `calibrate`; returns the new subgraph (inputs, outputs): float32
    tensors with the graph's names, read through QUANTIZE and written through DEQUANTIZE."""
    names = _op_names(w)
    float_type = w.s.TensorType.FLOAT32
    computed = computed_tensors(w)
    missing = [_text(w.tensors[i].name) for i in computed if i not in ranges]
    if missing:
        raise ExportError(f"int8 calibration gave no range for tensors {missing[:5]}")
    params = _activation_params(w, names, computed, ranges)
    for op, name in zip(w.operators, names, strict=True):
        _quantize_constants(w, op, name, params)
    for index in computed:
        _set_int8(w, index, *params[index])
    versions = [_version(w, op, name, params) for op, name in zip(w.operators, names,
                                                                   strict=True)]
    new_inputs, quantizers = [], []
    for index in inputs:  # the float input keeps its tensor name; QUANTIZE writes the int8 one
        tensor = w.tensors[index]
        name = _text(tensor.name)
        tensor.name = f"{name}_int8"
        outer = w.tensor(tensor.shape, name, float_type)
        quantizers.append(_operator(w, "QUANTIZE", [outer], [index], 1))
        new_inputs.append(outer)
    w.operators[:0] = quantizers
    versions[:0] = [1] * len(quantizers)
    new_outputs = []
    for index in outputs:
        tensor = w.tensors[index]
        name = _text(tensor.name)
        tensor.name = f"{name}_int8"
        outer = w.tensor(tensor.shape, name, float_type)
        w.operators.append(_operator(w, "DEQUANTIZE", [index], [outer], 2))
        versions.append(2)
        new_outputs.append(outer)
    _recode(w, _op_names(w), versions)
    return new_inputs, new_outputs


def _activation_params(w: Any, names: list[str], computed: list[int],
                       ranges: Mapping[int, tuple[float, float]]) -> dict[int, tuple[float, int]]:
    """(scale, zero point) of each computed tensor: tensors that must share a quantization are
    grouped and get their union's range, or the fixed output quantization one of them has."""
    parent = {i: i for i in computed}

    def find(t: int) -> int:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    pinned: dict[int, tuple[float, int]] = {}
    filled: set[int] = set()  # PADV2 outputs: their fill value is no value to represent
    is_computed = set(computed)
    for op, name in zip(w.operators, names, strict=True):
        tensors = [int(i) for i in (*op.inputs, *op.outputs) if int(i) in is_computed]
        if name in _SAME_PARAMS and tensors:
            root = find(tensors[0])
            for t in tensors[1:]:
                parent[find(t)] = root
        if name in _FIXED_OUTPUT:
            pinned[int(op.outputs[0])] = _FIXED_OUTPUT[name]
        if name == "PADV2":
            filled.add(int(op.outputs[0]))
    groups: dict[int, list[int]] = {}
    for t in computed:
        groups.setdefault(find(t), []).append(t)
    params: dict[int, tuple[float, int]] = {}
    for members in groups.values():
        fixed = {pinned[t] for t in members if t in pinned}
        if len(fixed) > 1:
            raise ExportError(f"int8 tensors {[_text(w.tensors[t].name) for t in members]} must "
                              f"share one quantization but need the fixed ones {sorted(fixed)}")
        ranged = [t for t in members if t not in filled] or members
        lo, hi = min(ranges[t][0] for t in ranged), max(ranges[t][1] for t in ranged)
        pins = {w.symmetric[t] for t in members if t in w.symmetric}
        if fixed:
            value = fixed.pop()
        elif pins:
            value = _pinned_zero_point(lo, hi, pins.pop())
        else:
            value = affine(lo, hi)
        params.update(dict.fromkeys(members, value))
    return params


def _pinned_zero_point(lo: float, hi: float, symmetric: bool) -> tuple[float, int]:
    """(scale, zero point) of a tensor whose zero point is pinned (a bmm kernel's right
    operand, `ops.BMM_SYMMETRIC`): 0 over [-peak, peak], or else the calibrated one moved off
    0 by a step when calibration happened to give 0 (one step of range lost at an end)."""
    if symmetric:
        peak = max(abs(lo), abs(hi), 1e-12)
        return peak / _QMAX, 0
    scale, zero = affine(lo, hi)
    return scale, zero or (-1 if hi >= -lo else 1)  # the step goes where the range is smaller


def _quantize_constants(w: Any, op: Any, name: str, params: Mapping[int, tuple[float, int]]
                        ) -> None:
    """Quantize the float constants `op` reads: weights per channel, int32 biases, constants of
    operators that keep one quantization at their output's, any other per tensor."""
    s = w.s
    inputs = [int(i) for i in op.inputs]
    float_consts = {p for p, i in enumerate(inputs)
                    if i >= 0 and w.tensors[i].buffer and w.tensors[i].type == s.TensorType.FLOAT32}
    if name in _WEIGHTS:
        data, filt, axis, bias = _WEIGHTS[name]
        if filt in float_consts:
            input_scale = params[inputs[data]][0]
            scales = _symmetric_weights(w, inputs[filt], axis)
            if bias < len(inputs) and bias in float_consts:
                _int32_bias(w, inputs[bias], input_scale * scales)
            float_consts -= {filt, bias}
    for position in sorted(float_consts):
        index = inputs[position]
        value = _const_value(w, index)
        if name in _SAME_PARAMS:
            scale, zero = params[int(op.outputs[0])]
        else:
            scale, zero = affine(float(value.min()), float(value.max()))
        _store(w, index, quantize(value, scale, zero))
        _set_int8(w, index, scale, zero)


def _symmetric_weights(w: Any, index: int, axis: int | None) -> np.ndarray:
    """Quantize weight tensor `index` to symmetric int8, per slice of `axis` (None: one scale);
    returns the scales, one per output channel (repeated for a per-tensor scale)."""
    value = _const_value(w, index)
    if axis is None:
        peak = np.full(1, np.abs(value).max())
    else:
        peak = np.abs(np.moveaxis(value, axis, 0)).reshape(value.shape[axis], -1).max(axis=1)
    scales = np.where(peak > 0, peak, 1.0) / _QMAX
    shape = [1] * value.ndim
    if axis is not None:
        shape[axis] = -1
    _store(w, index, np.clip(np.round(value / scales.reshape(shape)), -_QMAX, _QMAX)
           .astype(np.int8))
    tensor = w.tensors[index]
    tensor.type = w.s.TensorType.INT8
    tensor.quantization = _quantization(w, scales, [0] * len(scales), axis or 0)
    out_channels = value.shape[0] if axis is None else value.shape[axis]
    return np.broadcast_to(scales, (out_channels,)) if axis is None else scales


def _int32_bias(w: Any, index: int, scales: np.ndarray) -> None:
    value = _const_value(w, index)
    scales = np.broadcast_to(scales, value.shape)
    q = np.clip(np.round(value / scales), -_INT32_MAX, _INT32_MAX).astype(np.int32)
    _store(w, index, q)
    tensor = w.tensors[index]
    tensor.type = w.s.TensorType.INT32
    per_tensor = bool(np.all(scales == scales[0]))
    scale = scales[:1] if per_tensor else scales
    tensor.quantization = _quantization(w, scale, [0] * len(scale), 0)


def _version(w: Any, op: Any, name: str, params: Mapping[int, tuple[float, int]]) -> int:
    """The version an int8 kernel of `op` needs (never below the float model's)."""
    current = int(w.opcodes[op.opcodeIndex].version)
    need = _INT8_VERSIONS.get(name, 1)
    if name == "MUL":
        a, b, out = (params[i][0] if i in params else float(w.tensors[i].quantization.scale[0])
                     for i in (int(op.inputs[0]), int(op.inputs[1]), int(op.outputs[0])))
        if a * b / out >= 1.0:
            need = 3
    return max(current, need)


# --- writer helpers ---------------------------------------------------------------------------
def _text(name: Any) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def _op_names(w: Any) -> list[str]:
    codes = {v: k for k, v in vars(w.s.BuiltinOperator).items() if not k.startswith("_")}
    return [codes[w.opcodes[op.opcodeIndex].builtinCode] for op in w.operators]


def _operator(w: Any, name: str, inputs: Sequence[int], outputs: Sequence[int],
              version: int) -> Any:
    op = w.s.OperatorT()
    op.opcodeIndex = w.opcode(name, version)
    op.inputs = np.asarray(list(inputs), np.int32)
    op.outputs = np.asarray(list(outputs), np.int32)
    return op


def _recode(w: Any, names: list[str], versions: list[int]) -> None:
    """Rebuild the operator codes from the versions each operator needs (no stale codes)."""
    w.opcodes.clear()
    w.opcode_index.clear()
    for op, name, version in zip(w.operators, names, versions, strict=True):
        op.opcodeIndex = w.opcode(name, version)


def _const_value(w: Any, index: int) -> np.ndarray:
    tensor = w.tensors[index]
    return w.buffers[tensor.buffer].data.view(np.float32).reshape(
        [int(d) for d in tensor.shape]).astype(np.float64)


def _store(w: Any, index: int, value: np.ndarray) -> None:
    w.buffers[w.tensors[index].buffer].data = np.ascontiguousarray(value).reshape(-1).view(
        np.uint8)


def _set_int8(w: Any, index: int, scale: float, zero: int) -> None:
    tensor = w.tensors[index]
    tensor.type = w.s.TensorType.INT8
    tensor.quantization = _quantization(w, [scale], [zero], 0)


def _quantization(w: Any, scales: Sequence[float] | np.ndarray, zeros: Sequence[int],
                  axis: int) -> Any:
    q = w.s.QuantizationParametersT()
    q.scale = [float(v) for v in scales]
    q.zeroPoint = [int(v) for v in zeros]
    q.quantizedDimension = int(axis)
    return q
