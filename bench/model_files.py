"""A model file a user brings -> its kernels, whatever the file's format.

`model_kernels` is the one entry point `latbench predict` (through `LatencyPredictor.parse`)
uses. Each format registers in `MODEL_FORMATS` how it is recognised (file suffixes, and a test
of the first bytes for models given as bytes or under another name) and its reader. A reader is
called as `read(model, attach=..., group=..., input_shapes=..., allow_partial=...)` with a path,
bytes or (ONNX) a ModelProto and returns `bench.kernels.ModelKernels`; `parse_onnx` is the
reference reader for what each option means.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latbench.bench.kernels import (
    DEFAULT_ATTACH,
    Group,
    ModelKernels,
    ShapeMap,
    parse_onnx,
)
from latbench.bench.tflite_kernels import parse_tflite
from latbench.bench.tflite_model import looks_like_tflite
from latbench.errors import ConfigError, ParseError, UnsupportedModelError
from latbench.registry import Registry

HEAD_BYTES = 16  # how much of a file `ModelFormat.sniff` sees


@dataclass(frozen=True)
class ModelFormat:
    """How a model format is recognised and read."""

    suffixes: tuple[str, ...]
    read: Callable[..., ModelKernels]
    sniff: Callable[[bytes], bool] | None = None  # True for a file starting with these bytes


MODEL_FORMATS: Registry[ModelFormat] = Registry("model format")
# ONNX has no magic number: it is what a model in no recognised format is read as.
MODEL_FORMATS.add("onnx", ModelFormat((".onnx",), parse_onnx))
MODEL_FORMATS.add("tflite", ModelFormat((".tflite",), parse_tflite, sniff=looks_like_tflite))
FALLBACK_FORMAT = "onnx"


def model_format(model: Any) -> str:
    """The registered format of `model` (a path, bytes or an ONNX ModelProto): by suffix, else
    by its first bytes, else ONNX for bytes and files without a suffix. A file with another
    suffix that no format recognises is refused, naming the formats latbench reads."""
    if isinstance(model, str | Path):
        path = Path(model)
        suffix = path.suffix.lower()
        for name, fmt in MODEL_FORMATS.items():
            if suffix in fmt.suffixes:
                return name
        found = _sniffed(_head(path))
        if found is None and suffix:
            known = ", ".join(s for fmt in MODEL_FORMATS.values() for s in fmt.suffixes)
            raise UnsupportedModelError(f"{path}: no reader for {suffix!r} model files; "
                                        f"latbench reads {known}")
        return found or FALLBACK_FORMAT
    if isinstance(model, bytes | bytearray | memoryview):
        return _sniffed(bytes(model[:HEAD_BYTES])) or FALLBACK_FORMAT
    return FALLBACK_FORMAT


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(HEAD_BYTES)
    except OSError as exc:
        raise ParseError(f"cannot read model file {str(path)!r}: {exc}") from exc


def _sniffed(head: bytes) -> str | None:
    for name, fmt in MODEL_FORMATS.items():
        if fmt.sniff is not None and fmt.sniff(head):
            return name
    return None


def model_kernels(model: Any, *, attach: Collection[tuple[str, str]] = DEFAULT_ATTACH,
                  group: Group = False, input_shapes: ShapeMap | None = None,
                  allow_partial: bool = False) -> ModelKernels:
    """The kernels of a model in any registered format (see `parse_onnx` for the options)."""
    fmt = MODEL_FORMATS[model_format(model)]
    return fmt.read(model, attach=attach, group=group, input_shapes=input_shapes,
                    allow_partial=allow_partial)


def parse_input_shapes(values: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """`NAME=1x3x224x224` texts (one per input; the batch may be left out) -> name -> dims."""
    shapes: dict[str, tuple[int, ...]] = {}
    for text in values:
        name, sep, dims = text.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise ConfigError(f"--input-shape {text!r} must be NAME=DIMS with positive "
                              "dims joined by x, e.g. input=1x3x224x224")
        if name in shapes:
            raise ConfigError(f"--input-shape gives input {name!r} twice")
        shapes[name] = shape
    return shapes
