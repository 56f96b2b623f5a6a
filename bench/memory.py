"""A model file's memory as its graph says it: the weights it holds and the activation bytes live
at each step when its ops run in order. `predictor.memory` turns these figures into a predicted
peak for one runtime; this module only reads graphs.

The walk: a tensor is live from the op that produces it to its last consumer; the graph's inputs
(the caller's arrays) and its outputs stay live to the end. Ops that only relabel data (Reshape,
Flatten, Squeeze, Unsqueeze, Identity, Dropout; TFLite's RESHAPE, SQUEEZE, EXPAND_DIMS) alias
their input: no new bytes, and the aliased tensor lives as long as either is read. Figures:

- `weight_bytes`: the constant tensors the computed ops read (initializers, folded constants);
  `conv_weight_bytes`: the part convolutions read (runtimes often lay those out again: ONNX
  Runtime's NCHWc kernels on x86 keep a reordered copy, XNNPACK packs them);
- `max_weight_bytes`, `max_conv_weight_bytes`: the largest single constant tensor, and the
  largest convolution weight tensor - what a runtime copies one tensor at a time while loading
  (deserialising, reordering) holds on top of the rest at its worst;
- `activation_peak_bytes`: the most activation bytes live at any one step - what a planner that
  reuses every freed byte needs (LiteRT's arena planner comes close); `peak_step` names the op;
- `activation_total_bytes`: every activation tensor's bytes summed - what a planner that never
  reuses memory needs (a planner that reuses a buffer only for a tensor of the same size, as ONNX
  Runtime's does, lands in between);
- `steps`: the computed ops (a runtime keeps state per op: its kernel, its buffers);
- `model_size_bytes`: the file's size.

`network_memory` keeps these figures for a dataset's networks in its card (as `network_kernels`
keeps their kernels), so a predictor can be calibrated on their measured peaks later.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from latbench.errors import LatbenchError, ParseError

log = logging.getLogger(__name__)

PROFILE_VERSION = 2  # of the figures below: a change in how they are counted bumps it
CARD_KEY = "network_memory"

# Quantized convolutions (QLinearConv, ConvInteger) reach the walk as the Conv they compute
# (`concrete_graph(as_float=True)`), their weights counted at the bytes they are stored in.
ONNX_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
TFLITE_CONV_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D"})


@dataclass(frozen=True)
class MemoryProfile:
    """A model's memory figures in bytes (module docstring); `unsized` counts tensors whose size
    could not be read (not counted in the figures)."""

    weight_bytes: int
    conv_weight_bytes: int
    max_weight_bytes: int
    max_conv_weight_bytes: int
    activation_peak_bytes: int
    activation_total_bytes: int
    input_bytes: int
    output_bytes: int
    steps: int
    peak_step: str
    model_size_bytes: int | None = None
    unsized: int = 0
    version: int = PROFILE_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> MemoryProfile:
        """A profile from `to_json` output; ParseError naming what is wrong."""
        if not isinstance(raw, Mapping):
            raise ParseError(f"memory profile must be a JSON object, got {type(raw).__name__}")
        values = {}
        for f in fields(cls):
            if f.name not in raw:
                if f.name in ("model_size_bytes", "unsized", "version"):
                    continue
                raise ParseError(f"memory profile lacks {f.name!r}")
            value = raw[f.name]
            ok = isinstance(value, str) if f.name == "peak_step" else (
                (value is None and f.name == "model_size_bytes")
                or (isinstance(value, int) and not isinstance(value, bool) and value >= 0))
            if not ok:
                raise ParseError(f"memory profile field {f.name!r} is {value!r}")
            values[f.name] = value
        return cls(**values)


@dataclass(frozen=True)
class Step:
    """One op of the walk: the tensors it reads, those it writes with their bytes, and (an
    alias op) the tensor its output relabels."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[tuple[str, int], ...]
    alias_of: str | None = None


def live_walk(steps: Sequence[Step], inputs: Mapping[str, int], outputs: Iterable[str]
              ) -> tuple[int, int, str]:
    """(peak live activation bytes, total activation bytes, the step at the peak) of `steps`
    run in order; `inputs` (name -> bytes) and `outputs` stay live to the end."""
    root: dict[str, str] = {}

    def find(name: str) -> str:
        while name in root:
            name = root[name]
        return name

    last: dict[str, int] = {}
    for index, step in enumerate(steps):
        if step.alias_of is not None:
            for name, _ in step.writes:
                root[name] = find(step.alias_of)
        for name in step.reads:
            last[find(name)] = index
    kept = {find(name) for name in outputs} | set(inputs)
    live = dict(inputs)
    current = total = sum(inputs.values())
    peak, peak_step = current, "(inputs)"
    for index, step in enumerate(steps):
        if step.alias_of is None:
            for name, size in step.writes:
                live[name] = size
                current += size
                total += size
        if current > peak:
            peak, peak_step = current, step.name
        for name in [n for n in live if n not in kept and last.get(n, -1) <= index]:
            current -= live.pop(name)
    return peak, total, peak_step


# --- ONNX -----------------------------------------------------------------------------------
def onnx_profile(model: Any, input_shapes: Mapping[str, Sequence[int]] | None = None
                 ) -> MemoryProfile:
    """The memory figures of an ONNX model (path, bytes or ModelProto), with the input shapes
    `input_shapes` where its inputs have symbolic dims (as `latbench predict` takes them)."""
    from latbench.bench.onnx_graph import (
        PASS_THROUGH_OPS,
        concrete_graph,
        describe,
        load_model,
    )

    proto, source = load_model(model)
    g = concrete_graph(proto, source, input_shapes, as_float=True)  # quantized: as it runs
    unsized: set[str] = set()

    def size(name: str) -> int:
        shape = g.shapes.get(name)
        if shape is None:
            unsized.add(name)
            return 0
        return int(np.prod(shape, dtype=np.int64)) * g.itemsize(name)

    steps: list[Step] = []
    weights: dict[str, int] = {}
    conv_weights: set[str] = set()
    conv_kernels: set[str] = set()  # the weight tensors proper, without biases
    for node in g.nodes:
        if g.is_static(node):
            continue
        reads = []
        for index, name in enumerate(node.input):
            if not name:
                continue
            if name in g.static:
                weights.setdefault(name, size(name))
                if node.op_type in ONNX_CONV_OPS and index > 0:
                    conv_weights.add(name)
                    if index == 1:
                        conv_kernels.add(name)
            else:
                reads.append(name)
        writes = tuple((name, size(name)) for name in node.output if name)
        alias = node.input[0] if node.op_type in PASS_THROUGH_OPS and reads else None
        steps.append(Step(describe(node), tuple(reads), writes, alias))
    inputs = {v.name: size(v.name) for v in proto.graph.input if v.name not in g.static}
    peak, total, at = live_walk(steps, inputs, g.outputs)
    return MemoryProfile(
        weight_bytes=sum(weights.values()),
        conv_weight_bytes=sum(weights[n] for n in conv_weights),
        max_weight_bytes=max(weights.values(), default=0),
        max_conv_weight_bytes=max((weights[n] for n in conv_kernels), default=0),
        activation_peak_bytes=peak, activation_total_bytes=total,
        input_bytes=sum(inputs.values()),
        output_bytes=sum(size(name) for name in g.outputs),
        steps=len(steps), peak_step=at, model_size_bytes=_file_size(model),
        unsized=len(unsized))


# --- TFLite ---------------------------------------------------------------------------------
def tflite_profile(model: Any) -> MemoryProfile:
    """The memory figures of a .tflite model (path or bytes); dynamic dims count as 1."""
    from latbench.bench.tflite_graph import PASS_THROUGH_OPS as TFLITE_PASS_THROUGH_OPS
    from latbench.bench.tflite_model import NUMPY_DTYPES, read_tflite

    sg = read_tflite(model).main
    unsized: set[int] = set()

    def size(index: int) -> int:
        tensor = sg.tensors[index]
        dtype = NUMPY_DTYPES.get(tensor.dtype)
        if dtype is None:
            unsized.add(index)
            return 0
        shape = [max(int(d), 1) for d in tensor.shape]
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize

    static = {t.index for t in sg.tensors if t.constant and not t.variable}
    steps: list[Step] = []
    weights: dict[int, int] = {}
    conv_weights: set[int] = set()
    conv_kernels: set[int] = set()  # the weight tensors proper, without biases
    for op in sg.operators:
        ins = [i for i in op.inputs if i >= 0]
        if ins and all(i in static for i in ins):  # computed from constants only: a constant
            static.update(o for o in op.outputs if o >= 0)
            continue
        reads = []
        for position, index in enumerate(op.inputs):
            if index < 0:
                continue
            if index in static:
                weights.setdefault(index, size(index))
                if op.op in TFLITE_CONV_OPS and position >= 1:  # weights and bias
                    conv_weights.add(index)
                    if position == 1:
                        conv_kernels.add(index)
            else:
                reads.append(str(index))
        writes = tuple((str(o), size(o)) for o in op.outputs if o >= 0)
        alias = reads[0] if op.op in TFLITE_PASS_THROUGH_OPS and reads else None
        steps.append(Step(f"{op.name} op {op.index}", tuple(reads), writes, alias))
    inputs = {str(i): size(i) for i in sg.inputs if i not in static}
    outputs = [str(o) for o in sg.outputs]
    peak, total, at = live_walk(steps, inputs, outputs)
    return MemoryProfile(
        weight_bytes=sum(weights.values()),
        conv_weight_bytes=sum(weights[i] for i in conv_weights),
        max_weight_bytes=max(weights.values(), default=0),
        max_conv_weight_bytes=max((weights[i] for i in conv_kernels), default=0),
        activation_peak_bytes=peak, activation_total_bytes=total,
        input_bytes=sum(inputs.values()),
        output_bytes=sum(size(o) for o in sg.outputs if o >= 0),
        steps=len(steps), peak_step=at, model_size_bytes=_file_size(model),
        unsized=len(unsized))


PROFILERS = {"onnx": onnx_profile, "tflite": tflite_profile}


def profile_model(model: Any, input_shapes: Mapping[str, Sequence[int]] | None = None
                  ) -> MemoryProfile:
    """The memory figures of a model file of any format latbench reads (path or bytes)."""
    from latbench.bench.model_files import model_format

    fmt = model_format(model)
    if fmt not in PROFILERS:
        raise ParseError(f"no memory profile for {fmt} models; latbench profiles "
                         f"{', '.join(PROFILERS)}")
    if fmt == "onnx":
        return onnx_profile(model, input_shapes)
    return tflite_profile(model)


def _file_size(model: Any) -> int | None:
    if isinstance(model, bytes | bytearray | memoryview):
        return len(model)
    if isinstance(model, str | Path):
        try:
            return Path(model).stat().st_size
        except OSError:
            return None
    return None


# --- a dataset's networks --------------------------------------------------------------------
def subject_profile(subject: Any) -> MemoryProfile:
    """The figures of a campaign subject's network as measured: its model file, or a graph's
    ONNX export (a model file that also has a graph converted from it is profiled as the
    file)."""
    if subject.model is not None:
        return profile_model(subject.model())
    if subject.graph is not None:
        from latbench.bench.export.to_onnx import to_onnx

        return onnx_profile(to_onnx(subject.graph()))
    raise ParseError(f"network {subject.key} has neither a graph nor a model file")


def network_memory(subjects: Sequence[Any], card: Mapping[str, Any] | None = None
                   ) -> dict[str, dict[str, Any]]:
    """Key -> memory figures (`MemoryProfile.to_json`) of every network subject, merged with a
    card's earlier ones of this PROFILE_VERSION; a network whose graph cannot be read is left
    out with a warning (its peak can still be measured, just not used for calibration)."""
    known = {key: value for key, value in dict((card or {}).get(CARD_KEY) or {}).items()
             if isinstance(value, dict) and value.get("version") == PROFILE_VERSION}
    for subject in subjects:
        if subject.subject != "network" or subject.key in known:
            continue
        try:
            known[subject.key] = subject_profile(subject).to_json()
        except LatbenchError as exc:
            log.warning("no memory profile for network %s: %s", subject.key, exc)
    return known


def card_profiles(card: Mapping[str, Any]) -> dict[str, MemoryProfile]:
    """Key -> MemoryProfile of the networks a dataset card holds figures for (this version)."""
    out = {}
    for key, raw in dict(card.get(CARD_KEY) or {}).items():
        if isinstance(raw, dict) and raw.get("version") == PROFILE_VERSION:
            try:
                out[key] = MemoryProfile.from_json(raw)
            except ParseError as exc:
                log.warning("dataset card: memory profile of %s unreadable: %s", key, exc)
    return out


__all__ = ["CARD_KEY", "PROFILE_VERSION", "MemoryProfile", "Step", "card_profiles", "live_walk",
           "network_memory", "onnx_profile", "profile_model", "subject_profile",
           "tflite_profile"]
