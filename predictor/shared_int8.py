"""INT8 convolutions of a QDQ model that ONNX Runtime runs in float, and what uint8 activations
would save.

ONNX Runtime on x86 runs its QLinear kernels on uint8 activations: it rewrites a QDQ model's
int8 QuantizeLinear -> DequantizeLinear pairs into uint8 ones, but only where the quantized
tensor has a single reader. A residual block's input is read by its first conv and by the Add
(or the shortcut), so the QDQ nodes on either side of it stay in float - a conv then runs as a
float Conv with its weights dequantized at every call (docs/predictors.md, *Shared int8 tensors
on ONNX Runtime*). `onnxruntime.quantization.quantize_static` writes int8 activations by
default, so most quantized ResNets and MobileNets hit it. The ONNX split marks those convs
(`ops.CONV_SHARED_S8`), a predictor whose calibration networks carry them prices them
(`model_level.SHARED_S8`), and this tells a user how many there are, what they take and what
the model would take quantized with uint8 activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latbench.bench.ops import CONV_SHARED_S8, timed_alone
from latbench.predictor.model_level import SHARED_S8, NetworkPrediction


@dataclass(frozen=True)
class FloatConvs:
    """`floated` of the model's `total` INT8 convs run in float; `extra_ms` what that adds to
    the `predicted_ms`, so `predicted_ms - extra_ms` is the model with uint8 activations."""

    floated: int
    total: int
    extra_ms: float
    predicted_ms: float

    def text(self) -> str:
        return (f"ONNX Runtime runs {self.floated} of the model's {self.total} INT8 convolutions "
                f"in float: they read or write a signed int8 tensor that several nodes read, "
                f"which it turns into uint8 only for a tensor with one reader. That adds "
                f"about {self.extra_ms:.4g} of the {self.predicted_ms:.4g} ms predicted; "
                f"quantized with uint8 activations (quantize_static(..., "
                f"activation_type=QuantType.QUInt8)), the model would take about "
                f"{self.predicted_ms - self.extra_ms:.4g} ms")

    def to_json(self) -> dict[str, Any]:
        return {"float": self.floated, "total": self.total, "extra_ms": self.extra_ms,
                "uint8_predicted_ms": self.predicted_ms - self.extra_ms}


def float_int8_convs(predictor: Any, prediction: NetworkPrediction) -> FloatConvs | None:
    """The INT8 convs of `prediction` (made by `predictor`) that ONNX Runtime runs in float,
    with what they add; None without any, or when the predictor's composition does not price
    them (its calibration networks had none, or they cost nothing extra on its device: an ARM
    CPU runs int8 activations as they are)."""
    if predictor.composition_.terms.get(SHARED_S8, 0.0) <= 0:
        return None
    specs = [spec for spec, _ in prediction.kernels]
    convs = [i for i, s in enumerate(specs) if s.kind == "conv" and s.dtype == "int8"]
    floated = [i for i in convs if specs[i].mode == CONV_SHARED_S8]
    if not floated:
        return None
    as_uint8 = [timed_alone(s) for s in specs]
    uint8_ms = float(predictor.kernel_ms(as_uint8).sum()) + prediction.overhead_ms
    return FloatConvs(len(floated), len(convs), prediction.predicted_ms - uint8_ms,
                      prediction.predicted_ms)
