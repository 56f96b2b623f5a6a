"""Read a .tflite flatbuffer into a small graph IR, without an interpreter.

A user asks about the file they ship, so the reader takes the TFLite schema as written: operators
in execution order with their builtin names (opcodes resolved as the runtime does), options with
readable enum values, tensors with shape, shape signature, type, quantization and constant data.
`bench.tflite_kernels` walks this IR into latbench kernels. Reading uses the generated schema
module of `ai_edge_litert` (the same one `bench.export.to_tflite` writes with).

The Python flatbuffers reader trusts its input, so the file is wrapped in bytes whose slices are
bounds-checked, and every structural error becomes one `ParseError` naming the file.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latbench.errors import ParseError

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"

# TensorType name -> numpy dtype of constant data (types without one are read as shapes only).
NUMPY_DTYPES: dict[str, str] = {
    "FLOAT32": "<f4", "FLOAT16": "<f2", "FLOAT64": "<f8", "INT8": "i1", "UINT8": "u1",
    "INT16": "<i2", "UINT16": "<u2", "INT32": "<i4", "UINT32": "<u4", "INT64": "<i8",
    "UINT64": "<u8", "BOOL": "?", "COMPLEX64": "<c8", "COMPLEX128": "<c16",
}
# Option fields holding a schema enum -> the enum's class name in the schema module.
_ENUM_FIELDS = {
    "padding": "Padding",
    "fusedActivationFunction": "ActivationFunctionType",
    "weightsFormat": "FullyConnectedOptionsWeightsFormat",
    "mode": "MirrorPadMode",
    "kernelType": "LSTMKernelType",
    "combiner": "CombinerType",
    "inDataType": "TensorType",
    "outDataType": "TensorType",
    "outputType": "TensorType",
    "outType": "TensorType",
    "idxOutType": "TensorType",
    "quantizedBiasType": "TensorType",
}
_CORRUPT = (struct.error, IndexError, ValueError, TypeError, OverflowError, UnicodeDecodeError,
            RecursionError)


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of a tensor: real = scale * (q - zero_point), per `axis` if several."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1


@dataclass(frozen=True)
class Tensor:
    """One tensor of a subgraph. `signature` has -1 where a dimension is dynamic."""

    index: int
    name: str
    shape: tuple[int, ...]
    signature: tuple[int, ...]
    dtype: str
    buffer: int
    constant: bool
    quantization: Quantization | None = None
    variable: bool = False
    sparse: bool = False

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.signature)


@dataclass(frozen=True)
class Operator:
    """One operator; `inputs` holds -1 where an optional input is absent."""

    index: int
    op: str
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    custom_code: str = ""

    @property
    def name(self) -> str:
        """Builtin name, or `CUSTOM:<code>` for a custom operator."""
        return f"CUSTOM:{self.custom_code}" if self.op == "CUSTOM" else self.op


@dataclass(frozen=True)
class Subgraph:
    name: str
    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def dynamic_inputs(self) -> list[Tensor]:
        """Inputs with a dynamic dimension: their `shape` holds a placeholder there."""
        return [self.tensors[i] for i in self.inputs if self.tensors[i].dynamic]


@dataclass(frozen=True, eq=False)
class TFLiteModel:
    """A parsed .tflite file; subgraph 0 is the one the runtime invokes."""

    source: str
    version: int
    description: str
    subgraphs: tuple[Subgraph, ...]
    buffers: tuple[np.ndarray, ...] = field(repr=False)  # (start, length) in `data`

    @property
    def main(self) -> Subgraph:
        return self.subgraphs[0]

    def constant(self, tensor: Tensor) -> np.ndarray | None:
        """The constant data of `tensor` as a read-only array of its shape; None if computed."""
        if not tensor.constant:
            return None
        if tensor.sparse:
            raise ParseError(f"{self.source}: tensor {tensor.name!r} is stored sparse; "
                             "latbench reads dense constants only")
        dtype = NUMPY_DTYPES.get(tensor.dtype)
        if dtype is None:
            raise ParseError(f"{self.source}: tensor {tensor.name!r} of type {tensor.dtype} has "
                             "no array form")
        raw = self.buffers[tensor.buffer]
        count = int(np.prod(tensor.shape, dtype=np.int64))
        if count * np.dtype(dtype).itemsize != raw.size:
            raise ParseError(f"{self.source}: tensor {tensor.name!r} of shape {tensor.shape} "
                             f"{tensor.dtype} has a buffer of {raw.size} bytes")
        return raw.view(dtype).reshape(tensor.shape)


class _CheckedBytes(bytes):
    """Bytes whose slices past the end raise, so a truncated string is an error, not data."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice) and key.stop is not None and key.stop > len(self):
            raise IndexError(f"read up to byte {key.stop} of {len(self)}")
        return super().__getitem__(key)


def looks_like_tflite(model: bytes | str | Path) -> bool:
    """Whether bytes or a file carry the TFLite file identifier (cheap: reads 8 bytes)."""
    if isinstance(model, bytes | bytearray | memoryview):
        head = bytes(model[:8])
    else:
        try:
            with open(model, "rb") as f:
                head = f.read(8)
        except OSError:
            return False
    return len(head) == 8 and head[4:8] == FILE_IDENTIFIER


def read_tflite(model: bytes | str | Path) -> TFLiteModel:
    """Parse a .tflite file or its bytes. ParseError for anything that is not a TFLite model of
    schema version 3 (unreadable, truncated, another format, another schema version)."""
    if isinstance(model, bytes | bytearray | memoryview):
        data = bytes(model)
        source = f"TFLite bytes ({len(data)} bytes)"
    elif isinstance(model, str | Path):
        source = f"TFLite file {str(model)!r}"
        try:
            data = Path(model).read_bytes()
        except OSError as exc:
            raise ParseError(f"cannot read {source}: {exc.strerror or exc}") from exc
    else:
        raise ParseError(f"expected TFLite bytes or a path, got {type(model).__name__}")
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise ParseError(f"{source} is not a TFLite flatbuffer (no {FILE_IDENTIFIER.decode()} "
                         "file identifier)")
    from ai_edge_litert import schema_py_generated as schema

    try:
        return _Reader(schema, _CheckedBytes(data), source).model()
    except _CORRUPT as exc:
        raise ParseError(f"{source} is truncated or corrupt: {type(exc).__name__}: {exc}") from exc


class _Reader:
    """Walks the flatbuffer with the schema's accessor classes."""

    def __init__(self, schema: Any, data: bytes, source: str) -> None:
        self.s = schema
        self.data = data
        self.source = source
        self.ops = _enum_names(schema.BuiltinOperator)
        self.types = _enum_names(schema.TensorType)
        self.enums = {name: _enum_names(getattr(schema, cls)) for name, cls in
                      _ENUM_FIELDS.items() if hasattr(schema, cls)}

    def fail(self, what: str) -> ParseError:
        return ParseError(f"{self.source}: {what}")

    def model(self) -> TFLiteModel:
        m = self.s.Model.GetRootAs(self.data, 0)
        version = m.Version()
        if version != SCHEMA_VERSION:
            raise self.fail(f"TFLite schema version {version}; latbench reads version "
                            f"{SCHEMA_VERSION}")
        buffers = tuple(self.buffer(m.Buffers(i), i)
                        for i in self.indices(m.BuffersLength(), "buffers"))
        opcodes = [self.opcode(m.OperatorCodes(i))
                   for i in self.indices(m.OperatorCodesLength(), "operator codes")]
        subgraphs = tuple(self.subgraph(m.Subgraphs(i), i, opcodes, buffers)
                          for i in self.indices(m.SubgraphsLength(), "subgraphs"))
        if not subgraphs:
            raise self.fail("holds no subgraph")
        return TFLiteModel(self.source, version, _text(m.Description()), subgraphs, buffers)

    def indices(self, count: int, what: str) -> range:
        """Indices of a vector of tables; each entry takes at least 4 bytes of the file."""
        if count * 4 > len(self.data):
            raise self.fail(f"claims {count} {what}, more than its {len(self.data)} bytes hold: "
                            "corrupt?")
        return range(count)

    def buffer(self, buf: Any, index: int) -> np.ndarray:
        """A buffer's bytes (a view of the file). Data of models past 2 GB sits after the
        flatbuffer, at `offset` from the file start (offsets 0 and 1 mean none)."""
        if buf.Offset() > 1:
            start, length = int(buf.Offset()), int(buf.Size())
            if start + length > len(self.data):
                raise self.fail(f"buffer {index} ends at byte {start + length}, past the end of "
                                f"the file ({len(self.data)} bytes): truncated?")
            return np.frombuffer(self.data, np.uint8, length, start)
        if buf.DataIsNone():
            return np.zeros(0, np.uint8)
        return buf.DataAsNumpy()

    def opcode(self, code: Any) -> tuple[str, int, str]:
        """(builtin name, version, custom code). The larger of the two code fields is the real
        one: old files set only the deprecated int8 field, new ones both."""
        value = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        name = self.ops.get(value, f"UNKNOWN_BUILTIN_{value}")
        return name, int(code.Version()), _text(code.CustomCode())

    def subgraph(self, sg: Any, index: int, opcodes: list[tuple[str, int, str]],
                 buffers: tuple[np.ndarray, ...]) -> Subgraph:
        tensors = tuple(self.tensor(sg.Tensors(i), i, buffers)
                        for i in self.indices(sg.TensorsLength(), "tensors"))
        operators = tuple(self.operator(sg.Operators(i), i, opcodes)
                          for i in self.indices(sg.OperatorsLength(), "operators"))
        inputs, outputs = _ints(sg.InputsAsNumpy()), _ints(sg.OutputsAsNumpy())
        for op in operators:
            self.check_indices(f"operator {op.index} ({op.name})", op.inputs + op.outputs,
                               len(tensors), optional=True)
        self.check_indices(f"subgraph {index} inputs/outputs", inputs + outputs, len(tensors))
        return Subgraph(_text(sg.Name()), tensors, operators, inputs, outputs)

    def check_indices(self, what: str, indices: tuple[int, ...], n: int,
                      optional: bool = False) -> None:
        bad = [i for i in indices if i >= n or i < (-1 if optional else 0)]
        if bad:
            raise self.fail(f"{what} refers to tensors {bad} of {n}")

    def tensor(self, t: Any, index: int, buffers: tuple[np.ndarray, ...]) -> Tensor:
        shape = _ints(t.ShapeAsNumpy())
        signature = _ints(t.ShapeSignatureAsNumpy()) or shape
        buffer = int(t.Buffer())
        if buffer >= len(buffers):
            raise self.fail(f"tensor {index} refers to buffer {buffer} of {len(buffers)}")
        if len(signature) != len(shape) or any(d < 0 for d in shape):
            raise self.fail(f"tensor {index} has shape {shape}, signature {signature}")
        external = int(t.ExternalBuffer()) if hasattr(t, "ExternalBuffer") else 0
        return Tensor(index=index, name=_text(t.Name()), shape=shape, signature=signature,
                      dtype=self.types.get(int(t.Type()), f"TYPE_{t.Type()}"), buffer=buffer,
                      constant=buffers[buffer].size > 0 or external > 0,
                      quantization=_quantization(t.Quantization()),
                      variable=bool(t.IsVariable()), sparse=t.Sparsity() is not None)

    def operator(self, op: Any, index: int, opcodes: list[tuple[str, int, str]]) -> Operator:
        code = int(op.OpcodeIndex())
        if code >= len(opcodes):
            raise self.fail(f"operator {index} uses opcode {code} of {len(opcodes)}")
        name, version, custom = opcodes[code]
        options = self.options(self.s.BuiltinOptionsCreator, op.BuiltinOptionsType(),
                               op.BuiltinOptions())
        if hasattr(op, "BuiltinOptions2Type") and op.BuiltinOptions2Type():
            options.update(self.options(self.s.BuiltinOptions2Creator, op.BuiltinOptions2Type(),
                                        op.BuiltinOptions2()))
        return Operator(index=index, op=name, version=version, inputs=_ints(op.InputsAsNumpy()),
                        outputs=_ints(op.OutputsAsNumpy()), options=options, custom_code=custom)

    def options(self, creator: Any, kind: int, table: Any) -> dict[str, Any]:
        """Builtin options as {snake_case field: value}, enums by name, vectors as tuples."""
        obj = creator(kind, table) if kind and table is not None else None
        out: dict[str, Any] = {}
        for key, value in (vars(obj) if obj is not None else {}).items():
            if key in self.enums and isinstance(value, int):
                value = self.enums[key].get(value, value)
            elif isinstance(value, np.ndarray | list):
                value = tuple(np.asarray(value).tolist())
            elif isinstance(value, bytes):
                value = _text(value)
            out[_snake(key)] = value
        return out


def _enum_names(cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def _ints(values: Any) -> tuple[int, ...]:
    """A flatbuffers vector as ints; the accessors give 0 (not an array) for absent vectors."""
    if not isinstance(values, np.ndarray):
        return ()
    return tuple(int(v) for v in values)


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", errors="replace")


def _snake(name: str) -> str:
    """Schema field names as the .fbs spells them: dilationWFactor -> dilation_w_factor."""
    return re.sub(r"([A-Z])", r"_\1", name).lower()


def _quantization(q: Any) -> Quantization | None:
    if q is None:
        return None
    scale = q.ScaleAsNumpy()
    if not isinstance(scale, np.ndarray) or not scale.size:
        return None
    zero = q.ZeroPointAsNumpy()
    zero_point = tuple(int(z) for z in zero) if isinstance(zero, np.ndarray) else ()
    return Quantization(tuple(float(s) for s in scale), zero_point or (0,) * scale.size,
                        int(q.QuantizedDimension()))
