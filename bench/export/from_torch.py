"""PyTorch module -> one self-contained ONNX file, with either of torch's two exporters.

Whole networks (held-out evaluation families, searched architectures) are measured from the ONNX
torch writes, so the kernel parser must read both exporters' dialects. The TorchScript exporter is
~20x faster (about 0.15 s against 3 s per model), so it is the default for bulk export.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from typing import Any

from latbench.errors import ExportError

logger = logging.getLogger(__name__)

# The dynamo exporter has no implementations below opset 18, and its down-conversion fails on
# ReduceMean (axes input -> attribute), leaving a traceback in the log; ask for 18 at least.
DYNAMO_MIN_OPSET = 18


def torch_to_onnx(module: Any, input_shape: Sequence[int], *, dynamo: bool = False,
                  opset: int = 17, optimize: bool = True) -> bytes:
    """Export `module` (put in eval mode) for one float32 input of `input_shape` to ONNX bytes.

    `optimize=False` keeps the graph as traced (BatchNormalization not folded into Conv, shape
    arithmetic not constant-folded): useful to test consumers on the rawer of both dialects.
    """
    import torch

    name = type(module).__name__
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ExportError(f"cannot export {name}: bad input shape {shape}")
    module.eval()
    example = (torch.zeros(shape, dtype=torch.float32),)
    try:
        with torch.no_grad():
            if dynamo:
                return _export_dynamo(torch, module, example, opset, optimize)
            return _export_torchscript(torch, module, example, opset, optimize)
    except ExportError:
        raise
    except Exception as exc:  # torch raises many unrelated types; report them as one
        kind = "dynamo" if dynamo else "TorchScript"
        raise ExportError(f"{kind} ONNX export of {name} (input {shape}) failed: "
                          f"{type(exc).__name__}: {exc}") from exc


def _export_dynamo(torch: Any, module: Any, example: tuple, opset: int, optimize: bool) -> bytes:
    if opset < DYNAMO_MIN_OPSET:
        logger.debug("dynamo exporter: opset %d raised to %d", opset, DYNAMO_MIN_OPSET)
        opset = DYNAMO_MIN_OPSET
    # The exporter logs a warning per torchvision op it cannot register when torchvision is
    # absent (it is not needed); keep that out of the user's terminal.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, example, dynamo=True, external_data=False,
                                        opset_version=opset, optimize=optimize, verbose=False)
    finally:
        exporter_log.setLevel(level)
    if program is None:
        raise ExportError(f"dynamo ONNX export of {type(module).__name__} returned no program")
    return program.model_proto.SerializeToString()


def _export_torchscript(torch: Any, module: Any, example: tuple, opset: int,
                        optimize: bool) -> bytes:
    buffer = io.BytesIO()
    # nn.MultiheadAttention's inference fast path is one fused op this exporter cannot
    # translate; with it off, attention is traced as the plain ops (same numerics).
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo and says so on every
            # call.
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, buffer, dynamo=False, opset_version=opset,
                              do_constant_folding=optimize, input_names=["input"],
                              output_names=["output"])
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return buffer.getvalue()
