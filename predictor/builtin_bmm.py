"""INT8 attention products LiteRT leaves to its builtin kernel, and what requantizing them
would save.

XNNPACK runs an INT8 BATCH_MATMUL of two computed tensors (an attention product: Q K^T, or the
weights times V) only when its right operand's zero point is 0; otherwise LiteRT's builtin
kernel runs it, 7-20x slower on the 2-core Xeon measured here (docs/predictors.md, *INT8
attention on LiteRT*). The quantizer picks that zero point from the calibrated range, so in a
real INT8 transformer some products are delegated and some are not. The TFLite split reads the
form off the file (`ops.BMM_SYMMETRIC`), a predictor fitted on an INT8 plan prices both, and
this tells a user how much of the predicted time the builtin ones take and what the model would
take with every product's right operand quantized symmetric (zero point 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latbench.bench.ops import BMM_SYMMETRIC
from latbench.predictor.model_level import NetworkPrediction


@dataclass(frozen=True)
class BuiltinBmm:
    """`builtin` of the model's `total` INT8 bmm kernels run in LiteRT's builtin kernel, their
    predicted `builtin_ms`; `symmetric_ms`: the model's prediction with all of them in the
    form XNNPACK takes."""

    builtin: int
    total: int
    builtin_ms: float
    predicted_ms: float
    symmetric_ms: float

    def text(self) -> str:
        return (f"LiteRT runs {self.builtin} of the model's {self.total} INT8 attention "
                f"products (BATCH_MATMUL) in its builtin kernel, not XNNPACK: their right "
                f"operand's zero point is not 0. They take {self.builtin_ms:.4g} of the "
                f"{self.predicted_ms:.4g} ms predicted; quantized with that operand symmetric "
                f"(zero point 0), the model would take about {self.symmetric_ms:.4g} ms")

    def to_json(self) -> dict[str, Any]:
        return {"builtin": self.builtin, "total": self.total, "builtin_ms": self.builtin_ms,
                "symmetric_predicted_ms": self.symmetric_ms}


def builtin_bmm(predictor: Any, prediction: NetworkPrediction,
                model_format: str) -> BuiltinBmm | None:
    """The INT8 bmm kernels of `prediction` (made by `predictor` of a model file in
    `model_format`) that a LiteRT XNNPACK platform leaves to the builtin kernel; None on other
    platforms, without any, and for a model that is not a .tflite (an ONNX file holds no zero
    point of LiteRT's: its converter decides it)."""
    platform = predictor.platform
    if model_format != "tflite" or platform.runtime != "litert" \
            or platform.delegate != "xnnpack":
        return None
    specs = [spec for spec, _ in prediction.kernels]
    int8_bmm = [i for i, s in enumerate(specs) if s.kind == "bmm" and s.dtype == "int8"]
    builtin = {i for i in int8_bmm if specs[i].mode != BMM_SYMMETRIC}
    if not builtin:
        return None
    delegated = [s.with_(mode=BMM_SYMMETRIC) if i in builtin else s
                 for i, s in enumerate(specs)]
    return BuiltinBmm(len(builtin), len(int8_bmm),
                      sum(prediction.kernels[i][1] for i in builtin), prediction.predicted_ms,
                      float(predictor.kernel_ms(delegated).sum()) + prediction.overhead_ms)
