"""Held-out evaluation: measure whole networks end to end, compare with predictions.

Networks are measured with the same runner and settings the predictor's training kernels were
measured with (`LatencyPredictor.run_settings`), through a resumable campaign, so a report can be
rebuilt or extended without measuring twice. Metrics are per network family and overall. The
campaign measures each network's peak memory too; where it could, the report scores the
predictor's memory model on them as well (`memory_evaluation`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from latbench.bench.campaign import (
    CampaignConfig,
    CampaignSummary,
    ProgressSink,
    Subject,
    median_probe_ms,
    run_campaign,
)
from latbench.bench.ops import OpSpec
from latbench.bench.platform import Platform
from latbench.bench.runners import RunSettings, get_runner
from latbench.bench.store import LatencyDataset, atomic_write_text
from latbench.device_agents import Device
from latbench.errors import ConfigError, DatasetError, PredictorError
from latbench.extras import can_plot
from latbench.predictor.intervals import DEFAULT_LEVEL

if TYPE_CHECKING:
    from latbench.predictor.latency_predictor import LatencyPredictor
    from latbench.predictor.model_level import NetworkPrediction


def error_metrics(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """RMSE (ms), RMSPE and MAPE (%), within-5/10/15% accuracy, bias, Spearman and Kendall."""
    from scipy.stats import kendalltau, spearmanr

    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    if len(p) != len(m) or len(p) == 0:
        raise PredictorError(f"need equal, non-empty predictions and measurements "
                             f"({len(p)} vs {len(m)})")
    rel = p / m - 1.0
    out = {
        "n": float(len(p)),
        "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))),
        "rmspe_pct": float(100 * np.sqrt(np.mean(rel ** 2))),
        "mape_pct": float(100 * np.mean(np.abs(rel))),
        "bias_pct": float(100 * np.mean(rel)),
        "within5": float(np.mean(np.abs(rel) <= 0.05)),
        "within10": float(np.mean(np.abs(rel) <= 0.10)),
        "within15": float(np.mean(np.abs(rel) <= 0.15)),
        "spearman": math.nan,
        "kendall": math.nan,
    }
    if len(p) > 2 and np.ptp(p) > 0 and np.ptp(m) > 0:
        out["spearman"] = float(spearmanr(p, m).statistic)
        out["kendall"] = float(kendalltau(p, m).statistic)
    return out


def network_kernels(network: Subject, attach: Collection[tuple[str, str]] | None = None
                    ) -> list[OpSpec]:
    """A network's kernels: known for search-space architectures, else split from its model
    file (ONNX or TFLite); split by the fusion rules `attach` when given (else the default
    rules)."""
    from latbench.bench.fusion import apply_attach
    from latbench.bench.kernels import DEFAULT_ATTACH
    from latbench.bench.model_files import model_kernels

    if network.kernels is not None:
        kernels = list(network.kernels)
        return kernels if attach is None else apply_attach(kernels, attach)
    if network.model is not None:
        return list(model_kernels(network.model(), attach=DEFAULT_ATTACH if attach is None
                                  else attach).kernels)
    raise PredictorError(f"network {network.key} has neither kernels nor an ONNX export "
                         "(nor another model file)")


def priced_kernels(network: Subject, predictor: LatencyPredictor) -> list[OpSpec]:
    """The kernels `predictor` prices a network as: a search-space network's own kernels, a
    model file split as `latbench predict FILE` splits it (the predictor's fusion rules, fused
    blocks whole where it was trained on them), so evaluation scores the path users take. A
    model file the predictor's runtime does not run (a family's ONNX export on LiteRT) is priced
    as the file that runtime measures: the user of that runtime holds that file."""
    if network.model is not None:
        runner = get_runner(predictor.runtime) if predictor.runtime else None
        converted = (runner is not None and network.graph is not None
                     and not network.runs_model(runner))
        if converted:
            return predictor.split(network.model_bytes(runner))
        if network.kernels is None:
            return predictor.split(network.model())
    return network_kernels(network, predictor.attach_)


def network_predictions(predictor: LatencyPredictor, networks: Sequence[Subject],
                        interval_level: float = DEFAULT_LEVEL) -> dict[str, NetworkPrediction]:
    """Key -> prediction (with its interval at `interval_level`), each network split as the
    predictor prices it."""
    return {n.key: predictor.predict(priced_kernels(n, predictor),
                                     interval_level=interval_level) for n in networks}


def interval_metrics(table: pd.DataFrame) -> dict[str, float] | None:
    """How the prediction intervals of `table`'s rows (interval_low_ms, interval_high_ms)
    did: the share of measured latencies inside ("inside", to compare with the level) and the
    mean width in % of the prediction; None when no row has an interval."""
    rows = table.dropna(subset=["interval_low_ms", "interval_high_ms"]) \
        if "interval_low_ms" in table else table.iloc[:0]
    if rows.empty:
        return None
    inside = (rows["interval_low_ms"] <= rows["measured_ms"]) \
        & (rows["measured_ms"] <= rows["interval_high_ms"])
    width = (rows["interval_high_ms"] - rows["interval_low_ms"]) / rows["predicted_ms"]
    return {"n": float(len(rows)), "inside": float(inside.mean()),
            "mean_width_pct": float(100 * width.mean()),
            "above": float((rows["measured_ms"] > rows["interval_high_ms"]).mean())}


LEVEL_WARNING = 0.05  # probe shift against the predictor's dataset worth a warning
# A network whose median is this many times its fastest call in a visit ran in a rare fast mode
# (every held-out network of 9 platforms measured here stayed at 1.62x or less but LiteRT's built-in
# INT8 kernels at 2 threads on 2 cores, with 7-10 of 70 over 2x; BENCHMARKS.md).
FAST_MODE_RATIO = 2.0
# A network counts as priced in range when this share of its predicted time comes from kernels
# inside their kind's training range (a rounding margin: tiny reshapes may fall outside).
RANGE_WHOLE = 0.99


def _values_by_key(per_pass: Sequence[dict[str, float]]) -> dict[str, list[float]]:
    """Key -> its values over the passes that hold it, in pass order (keys sorted)."""
    keys = sorted({k for values in per_pass for k in values})
    return {k: [values[k] for values in per_pass if k in values] for k in keys}


@dataclass
class NetworkTimes:
    """End-to-end times of networks measured in one or more passes (every network once per
    pass, the passes one after another). On a machine with slow phases the same network differs
    by several percent from one pass to the next; the median over passes resists a phase that
    hits one pass, and the spread between passes says how noisy the truth itself is."""

    passes: list[dict[str, float]]  # per pass: key -> statistic ms
    campaign: CampaignSummary
    probe_ms: list[float | None] = field(default_factory=list)  # per pass: median probe
    peak_memory: list[dict[str, float]] = field(default_factory=list)  # per pass: key -> bytes
    # per pass: keys with a call under 1 / FAST_MODE_RATIO of their median (`fast_mode_keys`)
    fast_mode: list[set[str]] = field(default_factory=list)

    def memory(self) -> dict[str, float]:
        """Key -> median measured peak memory (bytes) over the passes that measured one."""
        return {k: float(np.median(v)) for k, v in _values_by_key(self.peak_memory).items()}

    def median(self) -> dict[str, float]:
        """Key -> median over the passes that measured it."""
        return {k: float(np.median(v)) for k, v in _values_by_key(self.passes).items()}

    def spread_pct(self) -> tuple[float, float] | None:
        """Median and 90th percentile over networks of (slowest / fastest pass - 1), in %;
        None when no network was measured in two passes."""
        spreads = [100 * (max(values) / min(values) - 1)
                   for values in _values_by_key(self.passes).values() if len(values) > 1]
        if not spreads:
            return None
        return float(np.median(spreads)), float(np.percentile(spreads, 90))

    def agreement(self, tolerance: float = 0.10) -> tuple[float, int] | None:
        """(Share of pairs of passes of one network within `tolerance` of each other, number
        of pairs); None when no network was measured in two passes. Against a single pass, a
        perfect predictor could score no better than this share within `tolerance`."""
        pairs = [abs(second / first - 1) < tolerance
                 for values in _values_by_key(self.passes).values()
                 for first, second in itertools.combinations(values, 2)]
        return (sum(pairs) / len(pairs), len(pairs)) if pairs else None

    def note(self) -> str:
        """For reports: how the truth was measured, and which networks ran in two modes."""
        return self._passes_note() + self._fast_mode_note()

    def _fast_mode_note(self) -> str:
        """Networks with a call under half their median in some visit: a rare fast mode that a
        visit's fastest call catches or not, so passes and runs disagree on them by more than
        noise (LiteRT's built-in kernels at 2 threads on 2 cores: 1.2 or 3.5 ms for one network,
        BENCHMARKS.md; no other platform measured here had one)."""
        keys = {k for times in self.passes for k in times}
        fast = keys & {k for flagged in self.fast_mode for k in flagged}
        if not fast:
            return ""
        return (f" {len(fast)} of {len(keys)} networks had a call under 1/{FAST_MODE_RATIO:g} of "
                "their median in a visit: a rare fast mode that the fastest call catches in some "
                "visits and not in others, so their measured time is not repeatable.")

    def _passes_note(self) -> str:
        if len(self.passes) == 1:
            slow = self.campaign.drifted_batches
            if not (self.campaign.redone_batches or slow):
                return "Networks measured in one pass."
            # on a VM whose speed moved in bursts one pass put 19% of a sound predictor's
            # networks outside 10%, three passes none (docs/predictors.md, Accuracy per platform)
            return (f"Networks measured in one pass while the device had slow phases "
                    f"({self.campaign.redone_batches} batch(es) measured again, {slow} stored "
                    "slow): a network timed in one can miss by more than the predictor does; "
                    "--passes 3 scores against the median of three passes.")
        spread = self.spread_pct()
        text = f"Networks measured in {len(self.passes)} passes, scored against the median"
        if spread is None:
            return text + "."
        share, pairs = self.agreement()  # two passes of a network exist: spread says so
        return (text + f"; spread between the passes per network (slowest / fastest - 1): "
                f"median {spread[0]:.1f}%, p90 {spread[1]:.1f}%; two passes of one network "
                f"agree within 10% in {share:.0%} of {pairs} pairs.")

    def speed_factors(self, trained_probe_ms: float | None) -> list[float | None]:
        """Per pass: the predictor's dataset's reference probe over the pass's (None where
        either is missing) - what scales the pass's times to the speed the machine had while
        the predictor's kernels were measured."""
        return [trained_probe_ms / probe if trained_probe_ms and probe else None
                for probe in self.probe_ms]

    def at_dataset_speed(self, trained_probe_ms: float | None) -> dict[str, float] | None:
        """Key -> median over passes of the time scaled by the pass's `speed_factors`: the
        network as it would have measured while the dataset was (the probe, a small block
        resident in cache, stands for the machine's speed). None when a pass has no probe or
        the predictor's dataset none."""
        factors = self.speed_factors(trained_probe_ms)
        if not factors or any(f is None for f in factors):
            return None
        keys = sorted({k for times in self.passes for k in times})
        return {k: float(np.median([t[k] * f for t, f in zip(self.passes, factors, strict=True)
                                    if k in t])) for k in keys}

    def level_note(self, trained_probe_ms: float | None) -> str:
        """The machine's speed level now against when the predictor's kernels were measured,
        by the campaigns' reference probe: a shift between sessions moves every measured
        network alike, a bias no predictor can see."""
        now = [p for p in self.probe_ms if p]
        if not trained_probe_ms or not now:
            return ""
        probe = float(np.median(now))
        shift = probe / trained_probe_ms - 1
        text = (f"Reference probe {100 * shift:+.1f}% against the predictor's dataset "
                f"({probe:.4f} vs {trained_probe_ms:.4f} ms)")
        if abs(shift) <= LEVEL_WARNING:
            return text + "."
        return (text + f": WARNING, the machine ran {'slower' if shift > 0 else 'faster'} than "
                "when the kernels were measured, and the measured networks carry part of that. "
                "Measure the networks in the same session as the dataset, or read the scores "
                "at the dataset's speed.")


@dataclass
class EvaluationReport:
    table: pd.DataFrame          # one row per network: family, predicted_ms, measured_ms, error
    metrics: dict[str, dict[str, float]]  # family (and "all") -> metrics
    statistic: str
    campaign: CampaignSummary
    measurement: str = ""  # how the networks were measured (`NetworkTimes.note`)
    memory: MemoryEvaluation | None = None  # peak memory, where the campaign measured it
    platform: Platform | None = None  # the predictor's, measured at its thread count
    # family (and "all") -> interval_metrics, and the intervals' nominal level; None when the
    # predictor gives no intervals
    intervals: dict[str, dict[str, float]] | None = None
    interval_level: float | None = None
    # the same metrics against the times scaled to the dataset's speed (column
    # measured_at_dataset_speed_ms; NetworkTimes.at_dataset_speed) and the median scale; None
    # when the probes cannot say
    speed_metrics: dict[str, dict[str, float]] | None = None
    speed_factor: float | None = None

    def speed_note(self) -> str:
        """One sentence for reports: the scores once the machine's speed shift is removed."""
        if self.speed_metrics is None or self.speed_factor is None:
            return ""
        every = self.speed_metrics.get("all") or next(iter(self.speed_metrics.values()))
        families = ", ".join(f"{f} {m['within10']:.0%}" for f, m in self.speed_metrics.items()
                             if f != "all")
        return (f"At the dataset's speed (measured times x {self.speed_factor:.3f}, the "
                f"reference probe's ratio): within 10% {every['within10']:.1%}, RMSPE "
                f"{every['rmspe_pct']:.2f}%" + (f" ({families})." if len(self.speed_metrics) > 1
                                                 else "."))

    def range_metrics(self) -> dict[str, dict[str, float | None]] | None:
        """Per family (and "all"): how many networks were priced wholly from kernels inside
        their kind's training range, and within 10% of those and of the rest - a family
        missed by kernels the dataset never reached (a ViT with more tokens than any measured
        attention) wants more kernels, not a better composition. None without coverage."""
        if "coverage" not in self.table or self.table["coverage"].isna().all():
            return None
        table = self.table.dropna(subset=["coverage"])
        groups = [(f, g) for f, g in table.groupby("family", sort=True)]
        if len(groups) > 1:
            groups.append(("all", table))
        def within10(rows: pd.DataFrame) -> float | None:  # as the metrics table counts it
            return error_metrics(rows["predicted_ms"], rows["measured_ms"])["within10"] \
                if len(rows) else None

        out = {}
        for family, group in groups:
            inside = group["coverage"] >= RANGE_WHOLE
            out[family] = {"n": float(len(group)), "in_range": float(inside.sum()),
                           "median_coverage": float(group["coverage"].median()),
                           "within10_in_range": within10(group[inside]),
                           "within10_outside": within10(group[~inside])}
        return out

    def range_markdown(self) -> str:
        """The `range_metrics` table, or "" when every network was priced in range."""
        ranges = self.range_metrics()
        if not ranges or all(m["in_range"] == m["n"] for m in ranges.values()):
            return ""

        def share(value: float | None) -> str:
            return "" if value is None else f"{value:.1%}"

        rows = ["Networks priced wholly from kernels inside their kind's training range "
                f"(coverage >= {RANGE_WHOLE:.0%} of the predicted time) against the rest; "
                "a family missed outside the range wants kernels measured at its sizes "
                "(`bench plan --from` its models, then `bench ops --plan`).", "",
                "| family | n | in range | median coverage | within 10% in range | "
                "within 10% outside |", "|---|---|---|---|---|---|"]
        for family, m in ranges.items():
            rows.append(f"| {family} | {int(m['n'])} | {int(m['in_range'])} | "
                        f"{m['median_coverage']:.1%} | {share(m['within10_in_range'])} | "
                        f"{share(m['within10_outside'])} |")
        return "\n".join(rows)

    def interval_markdown(self) -> str:
        """The intervals' calibration: how often the measured latency fell inside."""
        if not self.intervals:
            return ""
        rows = [f"Nominal level {self.interval_level:.0%}: the share inside should be close "
                "to it (within sampling error: about +-2 standard errors, "
                "2 sqrt(p (1 - p) / n)).", "",
                "| family | n | inside | above | mean width % |", "|---|---|---|---|---|"]
        for family, m in self.intervals.items():
            rows.append(f"| {family} | {int(m['n'])} | {m['inside']:.1%} | {m['above']:.1%} "
                        f"| {m['mean_width_pct']:.1f} |")
        return "\n".join(rows)

    def speed_json(self) -> dict[str, Any]:
        """`at_dataset_speed` for eval.json and `--json`: the scale and the metrics, or {}."""
        if self.speed_metrics is None:
            return {}
        return {"at_dataset_speed": {"factor": self.speed_factor,
                                     "metrics": self.speed_metrics}}

    def markdown(self, speed: bool = False) -> str:
        """The metrics table; with `speed`, the one against the times at the dataset's speed."""
        rows = ["| family | n | RMSE ms | RMSPE % | within 5% | within 10% | within 15% | "
                "Spearman | Kendall | bias % |", "|---|---|---|---|---|---|---|---|---|---|"]
        for family, m in ((self.speed_metrics or {}) if speed else self.metrics).items():
            rows.append(f"| {family} | {int(m['n'])} | {m['rmse_ms']:.4f} | {m['rmspe_pct']:.2f} "
                        f"| {m['within5']:.1%} | {m['within10']:.1%} | {m['within15']:.1%} | "
                        f"{m['spearman']:.3f} | {m['kendall']:.3f} | {m['bias_pct']:+.2f} |")
        return "\n".join(rows)


def error_table(rows: list[dict[str, Any]], n_networks: int, device: Device, out_dir: Path
                ) -> pd.DataFrame:
    """Rows with predicted_ms and measured_ms -> a frame with error_pct (%); DatasetError when
    none of the `n_networks` could be measured (their campaign is in out_dir/networks)."""
    if not rows:
        raise DatasetError(f"none of the {n_networks} networks could be measured on "
                           f"{device.name}; see {out_dir / 'networks'}")
    table = pd.DataFrame(rows)
    table["error_pct"] = 100 * (table["predicted_ms"] / table["measured_ms"] - 1)
    return table


def evaluate(predictor: LatencyPredictor, networks: Sequence[Subject], device: Device,
             out_dir: Path, runtime: str | None = None, config: CampaignConfig | None = None,
             progress: ProgressSink | None = None, passes: int = 1,
             interval_level: float = DEFAULT_LEVEL) -> EvaluationReport:
    """Measure `networks` on `device` in `passes` passes (resumable, in `out_dir/networks`,
    `networks-pass2`, ...) with the predictor's run settings at its platform's thread count,
    score predictions against the median, and the prediction intervals at `interval_level`
    by how often the measured latency falls inside."""
    if not networks:
        raise PredictorError("no networks to evaluate on")
    runtime = runtime or predictor.runtime
    if predictor.runtime and runtime != predictor.runtime:
        raise PredictorError(f"predictor was trained on {predictor.runtime} measurements; "
                             f"evaluating it on {runtime} would compare different runtimes")
    statistic = predictor.statistic
    settings = predictor.run_settings()
    out_dir = Path(out_dir)
    # unknown kernels fail before measuring
    predictions = network_predictions(predictor, networks, interval_level)
    times = measure_networks(networks, device, runtime, settings, statistic,
                             out_dir / "networks", config, progress,
                             predictor_path=str(predictor.path or ""), passes=passes)
    measured = times.median()
    rows = []
    for net in networks:
        if net.key not in measured:
            continue
        prediction = predictions[net.key]
        low, high = prediction.interval_ms or (math.nan, math.nan)
        coverage = prediction.coverage
        rows.append({"network": net.key, "family": net.family,
                     "predicted_ms": prediction.predicted_ms, "measured_ms": measured[net.key],
                     "interval_low_ms": low, "interval_high_ms": high,
                     "coverage": math.nan if coverage is None else coverage})
    table = error_table(rows, len(networks), device, out_dir)
    metrics = family_metrics(table, "measured_ms")
    intervals = {family: m for family, group in table.groupby("family", sort=True)
                 if (m := interval_metrics(group)) is not None}
    if len(metrics) > 1 and intervals:
        intervals["all"] = interval_metrics(table)
    speed_metrics = speed_factor = None
    if (at_speed := times.at_dataset_speed(predictor.reference_probe_ms)) is not None:
        table["measured_at_dataset_speed_ms"] = [at_speed[k] for k in table["network"]]
        speed_metrics = family_metrics(table, "measured_at_dataset_speed_ms")
        speed_factor = float(np.median(times.speed_factors(predictor.reference_probe_ms)))
    measurement = " ".join(filter(None, [times.note(),
                                         times.level_note(predictor.reference_probe_ms)]))
    return EvaluationReport(table, metrics, statistic, times.campaign, measurement,
                            memory_evaluation(predictor, networks, times.memory()),
                            predictor.platform, intervals or None,
                            interval_level if intervals else None, speed_metrics, speed_factor)


def family_metrics(table: pd.DataFrame, measured: str) -> dict[str, dict[str, float]]:
    """`error_metrics` of predicted_ms against the `measured` column per family, and "all"
    when there are several."""
    metrics = {family: error_metrics(group["predicted_ms"], group[measured])
               for family, group in table.groupby("family", sort=True)}
    if len(metrics) > 1:
        metrics["all"] = error_metrics(table["predicted_ms"], table[measured])
    return metrics


@dataclass
class MemoryEvaluation:
    """Predicted against measured peak memory of the held-out networks: one row per network
    (family, predicted_bytes, measured_bytes, error_pct), metrics per family and overall,
    whether the predictor's memory model was calibrated and how the peaks were measured."""

    table: pd.DataFrame
    metrics: dict[str, dict[str, float]]
    calibrated: bool
    skipped: list[str] = field(default_factory=list)  # networks whose graph could not be read

    def markdown(self) -> str:
        rows = ["| family | n | RMSPE % | within 5% | within 10% | within 15% | bias % |",
                "|---|---|---|---|---|---|---|"]
        for family, m in self.metrics.items():
            rows.append(f"| {family} | {int(m['n'])} | {m['rmspe_pct']:.2f} | "
                        f"{m['within5']:.1%} | {m['within10']:.1%} | {m['within15']:.1%} | "
                        f"{m['bias_pct']:+.2f} |")
        return "\n".join(rows)


def memory_evaluation(predictor: LatencyPredictor, networks: Sequence[Subject],
                      measured: dict[str, float]) -> MemoryEvaluation | None:
    """The predictor's memory model scored on the networks whose peak was measured (None when
    none was: a runtime that cannot measure memory)."""
    from latbench.bench.memory import subject_profile
    from latbench.errors import LatbenchError
    from latbench.predictor.memory import memory_metrics

    rows, skipped = [], []
    for net in networks:
        if net.key not in measured:
            continue
        try:
            predicted = predictor.memory_.predict_profile(subject_profile(net)).peak_bytes
        except LatbenchError as exc:
            skipped.append(f"{net.key}: {exc}")
            continue
        rows.append({"network": net.key, "family": net.family, "predicted_bytes": predicted,
                     "measured_bytes": measured[net.key]})
    if not rows:
        return None
    table = pd.DataFrame(rows)
    table["error_pct"] = 100 * (table["predicted_bytes"] / table["measured_bytes"] - 1)
    metrics = {family: memory_metrics(group["predicted_bytes"], group["measured_bytes"])
               for family, group in table.groupby("family", sort=True)}
    if len(metrics) > 1:
        metrics["all"] = memory_metrics(table["predicted_bytes"], table["measured_bytes"])
    return MemoryEvaluation(table, metrics, predictor.memory_.calibrated, skipped)


def fast_mode_keys(records: pd.DataFrame) -> set[str]:
    """Keys of records whose median is FAST_MODE_RATIO or more times their fastest call: no
    timing noise halves a time, a second mode of the runtime does."""
    ratio = records["median_ms"].astype(float) / records["min_ms"].astype(float)
    return set(records.loc[(ratio >= FAST_MODE_RATIO).to_numpy(bool), "key"].astype(str))


def pass_directory(out: Path, index: int) -> Path:
    """Dataset of pass `index` (0-based): `out` itself for the first, `out-pass2`, ... after."""
    out = Path(out)
    return out if index == 0 else out.with_name(f"{out.name}-pass{index + 1}")


def measure_networks(networks: Sequence[Subject], device: Device, runtime: str,
                     settings: RunSettings, statistic: str, out: Path,
                     config: CampaignConfig | None = None, progress: ProgressSink | None = None,
                     predictor_path: str = "", passes: int = 1) -> NetworkTimes:
    """Measure networks end to end in `passes` passes, one after another, each a resumable
    dataset (`pass_directory`); per pass key -> `statistic` ms."""
    if passes < 1:
        raise ConfigError(f"passes must be at least 1, got {passes}")
    base = config or CampaignConfig()
    config = CampaignConfig(**{**base.__dict__, "settings": settings})
    times = NetworkTimes([], CampaignSummary())
    for index in range(passes):
        dataset = LatencyDataset.create(pass_directory(out, index), {
            "purpose": "held-out networks for predictor evaluation",
            "pass": f"{index + 1} of {passes}",
            "predictor": predictor_path, "device": device.name, "runtime": runtime,
            "run_settings": settings.__dict__})
        summary = run_campaign(networks, [device], [runtime], dataset, config, progress)
        times.campaign.merge(summary)
        records = dataset.records()
        records = records[(records["device"] == device.name) & (records["runtime"] == runtime)
                          & (records["settings"] == settings.key(runtime))]
        times.passes.append(dict(zip(records["key"], records[statistic].astype(float),
                                     strict=True)))
        times.probe_ms.append(median_probe_ms(records))
        times.fast_mode.append(fast_mode_keys(records))
        peaks = records[records["peak_memory_bytes"].notna()]
        times.peak_memory.append({str(k): float(v) for k, v in
                                  zip(peaks["key"], peaks["peak_memory_bytes"], strict=True)})
    return times


def write_report(report: EvaluationReport, out_dir: Path, title: str = "Predictor evaluation"
                 ) -> dict[str, Path]:
    """eval.json, predictions.csv, eval.md and scatter.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "eval.json", "csv": out_dir / "predictions.csv",
             "markdown": out_dir / "eval.md", "scatter": out_dir / "scatter.png"}
    memory = report.memory
    platform = report.platform
    summary: dict[str, Any] = {
        "platform": None if platform is None else platform.to_json(),
        "statistic": report.statistic, "metrics": report.metrics,
        "intervals": report.intervals, "interval_level": report.interval_level,
        "training_range": report.range_metrics(), **report.speed_json()}
    sections = ""
    if ranges := report.range_markdown():
        sections = "\n\n## Training range\n\n" + ranges
    if report.intervals:
        sections += "\n\n## Prediction intervals\n\n" + report.interval_markdown()
    if memory is not None:
        paths["memory_csv"] = out_dir / "memory.csv"
        summary["memory"] = {"metrics": memory.metrics, "calibrated": memory.calibrated}
        atomic_write_text(paths["memory_csv"], memory.table.to_csv(index=False))
        sections += ("\n\n## Peak memory\n\n"
                     + ("" if memory.calibrated else "The predictor's memory model is not "
                        "calibrated (its dataset has no measured network peaks).\n\n")
                     + memory.markdown())
    atomic_write_text(paths["json"], json.dumps(summary, indent=2) + "\n")
    atomic_write_text(paths["csv"], report.table.to_csv(index=False))
    atomic_write_text(paths["markdown"],
                      f"# {title}\n\n"
                      + ("" if platform is None else f"Platform: {platform}. ")
                      + f"Measured statistic: `{report.statistic}`. "
                      f"{report.measurement}\n\n"
                      f"{report.markdown()}\n\n"
                      + (f"{report.speed_note()}\n\n{report.markdown(speed=True)}\n\n"
                         if report.speed_metrics else "")
                      + "![predicted vs measured](scatter.png)"
                      f"{sections}\n")
    if can_plot(paths["scatter"]):
        scatter_plot(report.table, paths["scatter"], title)
    return paths


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis from `lo` to `hi` that read as plain numbers: 1-2-5 steps of
    each decade, every integer multiple when that gives fewer than three, else values spread
    over a narrow range, rounded to the fewest digits that keep them apart."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for subs in ((1, 2, 5), range(1, 10)):
        ticks = [float(f"{m * 10.0 ** e:.12g}") for e in decades for m in subs]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) >= 3:
            return ticks
    for digits in range(2, 12):
        ticks = sorted({float(f"{v:.{digits}g}") for v in np.geomspace(lo, hi, 4)})
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) >= 3:
            return ticks
    return [lo, hi]


def readable_log_axes(ax: Any, lo: float, hi: float) -> None:
    """Both axes log-scaled from `lo` to `hi`, labelled with plain numbers (`log_ticks`), never
    only with powers of ten."""
    import matplotlib.ticker as ticker

    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = log_ticks(lo, hi)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(ticker.FixedLocator(ticks))
        axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_locator(ticker.LogLocator(base=10, subs=tuple(range(1, 10))))
        axis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)


def scatter_plot(table: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    lo = float(min(table["predicted_ms"].min(), table["measured_ms"].min())) * 0.9
    hi = float(max(table["predicted_ms"].max(), table["measured_ms"].max())) * 1.1
    line = np.geomspace(lo, hi, 50)
    ax.plot(line, line, color="black", lw=1, label="exact")
    ax.fill_between(line, line * 0.9, line * 1.1, color="grey", alpha=0.2, label="±10%")
    for family, group in table.groupby("family", sort=True):
        within = float(np.mean(np.abs(group["error_pct"]) <= 10))
        ax.scatter(group["measured_ms"], group["predicted_ms"], s=14, alpha=0.8,
                   label=f"{family} (n={len(group)}, {within:.0%} within 10%)")
    readable_log_axes(ax, lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
