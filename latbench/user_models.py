"""The demo's last step: two models a user might bring - a CNN and a vision transformer written
in PyTorch - exported with torch's default exporter, predicted from the files exactly as
`latbench predict FILE` does, then measured end to end on the device.

The predictor never saw these networks: the `quick` plan's transformer and ResNet kernels come
from other family networks (bench/presets.py), so the comparison is the one a user gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latbench.bench.campaign import CampaignConfig, ProgressSink
from latbench.bench.families import NetworkDef, ResNetConfig, ViTConfig
from latbench.bench.network_sets import file_network
from latbench.device_agents import Device
from latbench.errors import LatbenchError
from latbench.predictor.evaluate import measure_networks
from latbench.predictor.latency_predictor import LatencyPredictor

USER_MODELS = (
    # ResNet-18's layout (BasicBlocks, 2-2-2-2) at half width, 128x128
    NetworkDef(name="resnet18-half-r128", family="resnet", input_shape=(1, 3, 128, 128),
               config=ResNetConfig(resolution=128, widths=(32, 64, 128, 256),
                                   depths=(2, 2, 2, 2)), seed=5),
    # a ViT-Tiny-style transformer (width 192, 3 heads, MLP ratio 4), 6 blocks, 112x112
    NetworkDef(name="vit-tiny-d6-r112", family="vit", input_shape=(1, 3, 112, 112),
               config=ViTConfig(resolution=112, patch=16, dim=192, depth=6, heads=3,
                                mlp_ratio=4.0), seed=5),
)
TOP_KERNELS = 5  # per model, the kernels with the largest predicted time in the report


@dataclass
class UserModelResult:
    """One model: its file, the prediction (or why there is none) and the measurement."""

    name: str
    kind: str  # "CNN" or "vision transformer"
    path: Path
    prediction: Any | None = None  # NetworkPrediction
    error: str = ""
    measured_ms: float | None = None

    @property
    def error_pct(self) -> float | None:
        if self.prediction is None or not self.measured_ms:
            return None
        return 100 * (self.prediction.predicted_ms / self.measured_ms - 1)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "file": str(self.path),
                "measured_ms": self.measured_ms, "error_pct": self.error_pct,
                "error": self.error or None,
                "prediction": None if self.prediction is None else self.prediction.to_json()}

    def row(self) -> tuple[str, ...]:
        p = self.prediction
        return (self.name, self.kind,
                "-" if p is None else f"{p.predicted_ms:.3f}",
                "-" if p is None or p.interval_ms is None else
                f"{p.interval_ms[0]:.3f}-{p.interval_ms[1]:.3f}",
                "-" if self.measured_ms is None else f"{self.measured_ms:.3f}",
                "-" if self.error_pct is None else f"{self.error_pct:+.1f}",
                "-" if p is None or p.coverage is None else f"{p.coverage:.0%}",
                "-" if p is None else str(len(p.kernels)))


ROW_HEADER = ("model", "kind", "predicted ms", "90% interval ms", "measured ms", "error %",
              "coverage", "kernels")


def export_user_models(folder: Path) -> list[tuple[NetworkDef, Path]]:
    """Build each model in PyTorch and write its ONNX file with the default exporter."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for net in USER_MODELS:
        path = folder / f"{net.name}.onnx"
        if not path.exists():
            path.write_bytes(net.to_onnx(dynamo=True))
        out.append((net, path))
    return out


def predict_and_measure(predictor: LatencyPredictor, device: Device, folder: Path,
                        config: CampaignConfig, progress: ProgressSink | None = None
                        ) -> list[UserModelResult]:
    """Predict every user model from its file, then measure the ones predicted end to end
    (a model the predictor cannot price - a kind it was not fitted on - keeps its reason)."""
    results = []
    for net, path in export_user_models(folder):
        kind = "vision transformer" if net.family in ("vit", "deit") else "CNN"
        result = UserModelResult(net.name, kind, path)
        try:
            result.prediction = predictor.predict(path)
        except LatbenchError as exc:
            result.error = str(exc)
        results.append(result)
    subjects = [file_network(r.path) for r in results]
    times = measure_networks(subjects, device, predictor.runtime, predictor.run_settings(),
                             predictor.statistic, folder / "measured", config, progress,
                             predictor_path=str(predictor.path or ""))
    measured = times.median()
    for result, subject in zip(results, subjects, strict=True):
        result.measured_ms = measured.get(subject.key)
    return results


def markdown(results: list[UserModelResult]) -> str:
    """The report section: predicted vs measured, then each model's largest kernels."""
    lines = ["| " + " | ".join(ROW_HEADER) + " |", "|" + "---|" * len(ROW_HEADER)]
    lines += ["| " + " | ".join(r.row()) + " |" for r in results]
    for r in results:
        lines += ["", f"**{r.name}** (`{r.path.name}`)"]
        if r.prediction is None:
            lines += ["", f"Not predicted: {r.error}"]
            continue
        p = r.prediction
        by_kind = ", ".join(f"{k} {ms:.3f}" for k, ms in
                            sorted(p.by_kind().items(), key=lambda kv: -kv[1]))
        lines += ["", f"Predicted ms per kernel kind: {by_kind}; runtime call overhead "
                      f"{p.overhead_ms:.3f}.", "",
                  "| kernel | predicted ms | inside training range |", "|---|---|---|"]
        ranked = sorted(zip(p.kernels, p.range_flags(), strict=True), key=lambda t: -t[0][1])
        for (spec, ms), inside in ranked[:TOP_KERNELS]:
            flag = "unknown" if inside is None else ("yes" if inside else "**no**")
            lines.append(f"| `{spec.key()}` | {ms:.3f} | {flag} |")
    return "\n".join(lines)
