"""A latency table for one model on one device, in one command (`latbench bench model`).

The model's own kernels (fused blocks whole and their primitives, plus `around` neighbours of
each: the plan `bench.plans.plan_from_model` builds) and the model itself end to end are
measured in one resumable campaign into DIR/dataset; a LatencyPredictor is fitted on it with
the model as its calibration network and saved in DIR/predictor. The table says what the model
costs on the device: measured against predicted end to end, each kernel's measured time and
share of the kernels' total, and how the composition turns kernel times into the network's,
with the model's measured peak memory and file size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from latbench.bench.campaign import (
    CampaignConfig,
    CampaignSummary,
    ProgressSink,
    measure_into_dataset,
)
from latbench.bench.plans import plan_from_model, plan_networks, plan_subjects
from latbench.bench.runners import RUNNERS, RunSettings
from latbench.bench.stats import DEFAULT_STATISTIC
from latbench.bench.store import LatencyDataset, replication_verdict, stream_results
from latbench.device_agents import Device
from latbench.errors import ConfigError, DatasetError
from latbench.predictor.features import training_pairs
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.model_level import NetworkPrediction

KERNEL_HEADER = ("kind", "key", "count", "measured ms", "predicted ms", "share")
MIB = float(1 << 20)


@dataclass(frozen=True)
class KernelRow:
    """One distinct kernel of the model: how often the model runs it, its measured time alone
    less the runtime's per-call overhead (as the predictor learns it; None: its measurement
    failed), its composed prediction per call, and the share of the model's kernel time its
    calls take (measured, else predicted)."""

    kind: str
    key: str
    count: int
    measured_ms: float | None
    predicted_ms: float
    share: float

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "count": self.count,
                "measured_ms": self.measured_ms, "predicted_ms": self.predicted_ms,
                "share": self.share}


@dataclass
class ModelTable:
    """What `bench model` reports (see the module docstring); `measured_ms` is None when the
    end-to-end measurement failed."""

    model: Path
    device: str
    runtime: str
    statistic: str
    measured_ms: float | None
    prediction: NetworkPrediction
    kernels: list[KernelRow]
    composition: dict[str, Any]
    dataset: Path
    predictor: Path
    campaign: CampaignSummary = field(default_factory=CampaignSummary)
    stream: dict[str, Any] | None = None  # the single-stream result (`stream_results`)
    # the model's measured peak memory (None: not measurable there) and how; its file size
    peak_memory_bytes: int | None = None
    memory_method: str = ""
    model_size_bytes: int | None = None

    @property
    def kernel_sum_ms(self) -> float | None:
        """The kernels' measured times summed over the model's calls, plus the runtime's call
        overhead once, as a network pays it (None if a kernel's measurement failed): what the
        plain sum of kernels says before any composition."""
        if any(row.measured_ms is None for row in self.kernels):
            return None
        return self.prediction.overhead_ms + sum(
            row.count * row.measured_ms for row in self.kernels)  # type: ignore[misc]

    @property
    def error_pct(self) -> float | None:
        """Predicted against measured end to end, in percent."""
        if not self.measured_ms:
            return None
        return 100 * (self.prediction.predicted_ms / self.measured_ms - 1)

    def summary_rows(self) -> list[tuple[str, str]]:
        def ms(value: float | None) -> str:
            return "failed" if value is None else f"{value:.4f}"

        rows = [("measured end to end (ms)", ms(self.measured_ms)),
                ("predicted (ms)", f"{self.prediction.predicted_ms:.4f}"),
                ("error", "" if self.error_pct is None else f"{self.error_pct:+.1f}%"),
                ("kernels measured alone, summed + overhead (ms)", ms(self.kernel_sum_ms)),
                ("runtime call overhead (ms)", f"{self.prediction.overhead_ms:.4f}"),
                ("kernels (distinct)", f"{sum(r.count for r in self.kernels)} "
                                       f"({len(self.kernels)})"),
                ("peak memory (MiB)", "not measured" if self.peak_memory_bytes is None
                 else f"{self.peak_memory_bytes / MIB:.1f} ({self.memory_method.split(':')[0]})"),
                ("model file (MiB)", "" if self.model_size_bytes is None
                 else f"{self.model_size_bytes / MIB:.2f}")]
        if self.stream is not None:
            s = self.stream
            rows += [("single stream: queries", str(s["queries"])),
                     ("single stream: p50 / p90 / p99 (ms)",
                      f"{s['p50_ms']:.4f} / {s['p90_ms']:.4f} / {s['p99_ms']:.4f}"),
                     ("single stream: replicates agree within 5%", replication_verdict(s))]
        scales = self.composition.get("kind_scale") or {}
        if scales:
            rows.append(("composition: per-kind scales", ", ".join(
                f"{kind} {scale:.3f}" for kind, scale in sorted(scales.items()))))
        for name, coef in sorted((self.composition.get("terms") or {}).items()):
            rows.append((f"composition: term {name}", f"{coef:.4g}"))
        return rows

    def kernel_rows(self) -> list[tuple[str, ...]]:
        return [(r.kind, r.key, str(r.count),
                 "failed" if r.measured_ms is None else f"{r.measured_ms:.4f}",
                 f"{r.predicted_ms:.4f}", f"{r.share:.1%}") for r in self.kernels]

    def to_json(self) -> dict[str, Any]:
        return {"model": str(self.model), "device": self.device, "runtime": self.runtime,
                "statistic": self.statistic, "measured_ms": self.measured_ms,
                "predicted_ms": self.prediction.predicted_ms, "error_pct": self.error_pct,
                "kernel_sum_ms": self.kernel_sum_ms,
                "call_overhead_ms": self.prediction.overhead_ms,
                "coverage": self.prediction.coverage,
                "kernels": [row.to_json() for row in self.kernels],
                "composition": self.composition,
                "single_stream": self.stream,
                "peak_memory_bytes": self.peak_memory_bytes, "memory_method": self.memory_method,
                "model_size_bytes": self.model_size_bytes,
                "dataset": str(self.dataset), "predictor": str(self.predictor),
                "campaign": {"measured": self.campaign.measured, "skipped": self.campaign.skipped,
                             "failed": self.campaign.failed}}


def measure_model_table(model: str | Path, device: Device, runtime: str, out: str | Path,
                        config: CampaignConfig, *, around: int = 0,
                        input_shape: Sequence[str] = (), statistic: str = DEFAULT_STATISTIC,
                        kernel_model: str = "xgboost", card: dict[str, Any] | None = None,
                        progress: ProgressSink | None = None,
                        stream: RunSettings | None = None) -> ModelTable:
    """Measure `model`'s kernels and the model end to end on `device` into OUT/dataset
    (resumable: a rerun measures only what is missing or failed), fit and save a predictor in
    OUT/predictor, and return the table. With `stream` (single-stream settings) the model is
    also timed MLPerf-style into OUT/single_stream."""
    model, out = Path(model), Path(out)
    plan = plan_from_model(model, around=around, input_shape=input_shape)
    network = plan_networks(plan)[0]
    refused = network.refusal(RUNNERS.lookup(runtime))
    if refused:  # before anything is measured
        raise ConfigError(f"{refused}: measure it with a runtime that runs its format")
    summary = measure_into_dataset(plan_subjects(plan), device, runtime, out / "dataset", config,
                                   card={"plan": plan.to_dict(), **(card or {})},
                                   progress=progress)
    predictor = LatencyPredictor(kernel_model).fit(out / "dataset", statistic=statistic,
                                                   device=device.name, runtime=runtime)
    predictor.save(out / "predictor")
    prediction = predictor.predict(model, input_shapes=_shapes(input_shape))
    records = _ok_records(out / "dataset", device.name, runtime)
    specs, alone_ms, _ = training_pairs(records, statistic)
    kernel_ms = {spec.key(): float(ms) for spec, ms in zip(specs, alone_ms, strict=True)}
    nets = records[records["subject"] == "network"]
    measured = {str(k): float(v) for k, v in zip(nets["key"], nets[statistic], strict=True)
                }.get(network.key)
    mine = nets[nets["key"] == network.key]
    peak, method, size = None, "", None
    if len(mine):
        row = mine.iloc[0]
        peak = None if pd.isna(row["peak_memory_bytes"]) else int(row["peak_memory_bytes"])
        size = None if pd.isna(row["model_size_bytes"]) else int(row["model_size_bytes"])
        method = str(row["memory_method"])
    streamed = None
    if stream is not None:
        summary.merge(measure_into_dataset([network], device, runtime, out / "single_stream",
                                           replace(config, settings=stream),
                                           card={"flags": ["single_stream"], **(card or {})},
                                           progress=progress))
        streamed = next(iter(stream_results(out / "single_stream", [network.key])), None)
    return ModelTable(model, device.name, runtime, statistic, measured, prediction,
                      kernel_rows(prediction, kernel_ms),
                      {"kind_scale": dict(predictor.composition_.kind_scale),
                       "terms": dict(predictor.composition_.terms),
                       "calibration": (predictor.fit_summary_ or {}).get("calibration", {})},
                      out / "dataset", out / "predictor", summary, streamed, peak, method, size)


def kernel_rows(prediction: NetworkPrediction, measured: dict[str, float]) -> list[KernelRow]:
    """The model's distinct kernels, most expensive first: count, measured ms (None where not
    measured), composed predicted ms per call, share of the model's kernel time."""
    counts: dict[str, int] = {}
    predicted: dict[str, float] = {}
    kinds: dict[str, str] = {}
    for spec, ms in prediction.kernels:
        key = spec.key()
        counts[key] = counts.get(key, 0) + 1
        predicted[key] = ms
        kinds[key] = spec.kind

    def cost(key: str) -> float:
        return counts[key] * measured.get(key, predicted[key])

    total = sum(cost(key) for key in counts) or 1.0
    return sorted((KernelRow(kinds[key], key, counts[key], measured.get(key), predicted[key],
                             cost(key) / total) for key in counts),
                  key=lambda row: -row.share)


def _shapes(texts: Sequence[str]) -> dict[str, tuple[int, ...]]:
    from latbench.bench.model_files import parse_input_shapes

    return parse_input_shapes(texts)


def _ok_records(data: Path, device: str, runtime: str) -> pd.DataFrame:
    records = LatencyDataset.open(data).records()
    if records.empty:
        raise DatasetError(f"dataset at {data} has no records")
    return records[(records["status"] == "ok") & (records["device"] == device)
                   & (records["runtime"] == runtime)]

