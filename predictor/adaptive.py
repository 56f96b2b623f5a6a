"""Adaptive sampling: measure more kernels where the predictor is wrong, refit, repeat.

A plan samples kernels evenly, but a runtime's latency is not even: a kernel size that switches
implementation, a channel count that falls off a vector width. After a first fit, kernels whose
out-of-fold prediction is off by more than `threshold` (10%) mark such regions; random
neighbours of them (`bench.plans.perturb`) are measured and added, and the predictor refitted,
for a fixed number of rounds. The error is reported per round on held-out kernels that never
enter training, so the report shows whether the extra measurements paid off.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latbench.bench.ops import OpSpec
from latbench.bench.plans import perturb
from latbench.errors import PredictorError, UnknownKernelError
from latbench.predictor.latency_predictor import LatencyPredictor

log = logging.getLogger(__name__)

Measure = Callable[[list[OpSpec]], Mapping[str, float]]  # specs -> key -> kernel ms


@dataclass(frozen=True)
class RoundReport:
    round: int
    n_train: int
    n_flagged: int      # training kernels over the threshold (out of fold), before this round
    n_new: int          # kernels measured after this round's fit
    holdout_rmspe_pct: float
    holdout_mape_pct: float
    holdout_within10: float
    cv_within10: float  # out-of-fold within-10% on the training kernels

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def out_of_fold(make: Callable[[], Any], specs: Sequence[OpSpec], ms: np.ndarray, folds: int,
                rng: np.random.Generator) -> np.ndarray:
    """Each kernel's prediction by a model fitted without it (K-fold)."""
    n = len(specs)
    folds = max(2, min(folds, n))
    assignment = rng.permutation(np.arange(n) % folds)
    out = np.full(n, np.nan)
    for fold in range(folds):
        test = assignment == fold
        train = ~test
        train_specs = [s for s, t in zip(specs, train, strict=True) if t]
        test_specs = [s for s, t in zip(specs, test, strict=True) if t]
        known = {s.kind for s in train_specs}
        model = make().fit(train_specs, ms[train])
        rows = np.flatnonzero(test)
        keep = [i for i, s in zip(rows, test_specs, strict=True) if s.kind in known]
        if keep:
            out[keep] = _predict_or_nan(model, [specs[i] for i in keep])
    return out


def _predict_or_nan(model: Any, specs: list[OpSpec]) -> np.ndarray:
    """Predictions, NaN for kernels the model cannot price (a table's unseen keys)."""
    try:
        return np.asarray(model.predict(specs), dtype=np.float64)
    except UnknownKernelError:
        out = np.full(len(specs), np.nan)
        for i, spec in enumerate(specs):
            try:
                out[i] = model.predict([spec])[0]
            except UnknownKernelError:
                continue
        return out


def neighbours(flagged: Sequence[OpSpec], per_point: int, rng: np.random.Generator,
               exclude: set[str], limit: int) -> list[OpSpec]:
    """Up to `per_point` new random neighbours of each flagged kernel (worst first), at most
    `limit` in total, none already known."""
    out: dict[str, OpSpec] = {}
    for spec in flagged:
        made = 0
        for _ in range(per_point * 5):
            if made >= per_point or len(out) >= limit:
                break
            candidate = perturb(spec, rng)
            key = candidate.key()
            if key in exclude or key in out:
                continue
            out[key] = candidate
            made += 1
        if len(out) >= limit:
            break
    return list(out.values())


def adaptive_fit(specs: Sequence[OpSpec], ms: Sequence[float], measure: Measure,
                 make: Callable[[], Any], rounds: int, rng: np.random.Generator,
                 threshold: float = 0.10, per_point: int = 2, max_new: int = 100,
                 holdout: tuple[Sequence[OpSpec], Sequence[float]] | None = None,
                 holdout_fraction: float = 0.2, folds: int = 5
                 ) -> tuple[Any, list[RoundReport], list[OpSpec], np.ndarray]:
    """Run `rounds` rounds of fit -> find kernels off by > threshold -> measure neighbours.

    Returns the last fitted predictor, one report per fit (rounds + 1), and the final training
    kernels and latencies. Without an explicit `holdout`, a random `holdout_fraction` of the
    initial kernels is set aside for the per-round error and never trained on.
    """
    from latbench.predictor.evaluate import error_metrics

    if rounds < 0:
        raise PredictorError(f"rounds must be >= 0, got {rounds}")
    specs = list(specs)
    target = np.asarray(ms, dtype=np.float64)
    if len(specs) != len(target) or not specs:
        raise PredictorError(f"need equal, non-empty kernels and latencies ({len(specs)} vs "
                             f"{len(target)})")
    if holdout is None:
        n_hold = int(round(holdout_fraction * len(specs)))
        if n_hold < 1 or n_hold >= len(specs):
            raise PredictorError(f"cannot hold out {holdout_fraction:.0%} of {len(specs)} "
                                 "kernels")
        order = rng.permutation(len(specs))
        hold_rows, train_rows = order[:n_hold], order[n_hold:]
        hold_specs = [specs[i] for i in hold_rows]
        hold_ms = target[hold_rows]
        specs, target = [specs[i] for i in train_rows], target[train_rows]
    else:
        hold_specs, hold_ms = list(holdout[0]), np.asarray(holdout[1], dtype=np.float64)
    trained_kinds = {s.kind for s in specs}
    keep = [i for i, s in enumerate(hold_specs) if s.kind in trained_kinds]
    hold_specs, hold_ms = [hold_specs[i] for i in keep], hold_ms[keep]
    if not hold_specs:
        raise PredictorError("no held-out kernel of a kind the predictor is trained on")
    known = {s.key() for s in specs} | {s.key() for s in hold_specs}
    reports: list[RoundReport] = []
    model = None
    for round_ in range(rounds + 1):
        model = make().fit(specs, target)
        held = error_metrics(model.predict(hold_specs), hold_ms)
        oof = out_of_fold(make, specs, target, folds, rng)
        rel = np.abs(oof / target - 1)
        finite = np.isfinite(rel)
        flagged_rows = [i for i in np.argsort(-np.where(finite, rel, -1))
                        if finite[i] and rel[i] > threshold]
        new: list[OpSpec] = []
        if round_ < rounds and flagged_rows:
            new = neighbours([specs[i] for i in flagged_rows], per_point, rng, known, max_new)
        measured = dict(measure(new)) if new else {}
        added = [s for s in new if s.key() in measured and np.isfinite(measured[s.key()])
                 and measured[s.key()] > 0]
        reports.append(RoundReport(round_, len(specs), len(flagged_rows), len(added),
                                   held["rmspe_pct"], held["mape_pct"], held["within10"],
                                   float(np.mean(rel[finite] <= 0.10)) if finite.any()
                                   else float("nan")))
        log.info("adaptive round %d: %d kernels, held-out RMSPE %.2f%%, %d flagged, %d new",
                 round_, len(specs), held["rmspe_pct"], len(flagged_rows), len(added))
        if not added:
            if round_ < rounds:
                log.info("nothing new to measure after round %d; stopping", round_)
            break
        specs += added
        target = np.concatenate([target, [measured[s.key()] for s in added]])
        known |= {s.key() for s in added}
    return model, reports, specs, target


def reports_markdown(reports: Sequence[RoundReport]) -> str:
    rows = ["| round | training kernels | flagged (>10% out of fold) | new kernels measured | "
            "held-out RMSPE % | held-out MAPE % | held-out within 10% | CV within 10% |",
            "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        rows.append(f"| {r.round} | {r.n_train} | {r.n_flagged} | {r.n_new} | "
                    f"{r.holdout_rmspe_pct:.2f} | {r.holdout_mape_pct:.2f} | "
                    f"{r.holdout_within10:.1%} | {r.cv_within10:.1%} |")
    return "\n".join(rows)


def adapt_dataset(data_dir: Path, out: Path, device: Any, rounds: int,
                  predictor: str = "xgboost", params: dict[str, Any] | None = None,
                  statistic: str | None = None, runtime: str | None = None,
                  threshold: float = 0.10, per_point: int = 2, max_new: int = 100,
                  seed: int = 0, config: Any = None, progress: Any = None,
                  platform: Any = None) -> tuple[LatencyPredictor, list[RoundReport]]:
    """`latbench predictor adapt`: adaptive rounds on an operator dataset, measuring new kernels
    on `device` into the same dataset (same run settings as its card), then the final
    predictor fitted on everything (with composition calibration) written to `out`.
    `platform` (a PlatformChoice) picks one of a dataset's several platforms; new kernels are
    measured at its thread count."""
    from dataclasses import replace

    from sklearn.base import clone

    from latbench.bench.campaign import CampaignConfig, Subject, measure_into_dataset
    from latbench.bench.fusion import kernel_times
    from latbench.bench.platform import record_platform
    from latbench.bench.runners import RunSettings
    from latbench.bench.stats import DEFAULT_STATISTIC
    from latbench.bench.store import LatencyDataset, atomic_write_text
    from latbench.predictor.features import training_pairs
    from latbench.predictor.training import select_records

    final = LatencyPredictor(predictor, params)  # parameters checked before measuring
    statistic = statistic or DEFAULT_STATISTIC
    dataset = LatencyDataset.open(data_dir)
    ops = select_records(dataset.records(), device.name, runtime, choice=platform,
                         owner=f"dataset {data_dir}")
    own = record_platform(ops.iloc[0])
    runtime = own.runtime
    card = dataset.card
    raw_settings = card.get("run_settings")
    if not isinstance(raw_settings, dict):
        raise PredictorError(f"dataset {data_dir} card has no run_settings to measure with")
    settings = replace(RunSettings(**raw_settings), threads=own.threads)
    base = config or CampaignConfig()
    config = CampaignConfig(**{**base.__dict__, "settings": settings})
    specs, kernel_ms, _ = training_pairs(ops, statistic)

    def measure(new: list[OpSpec]) -> dict[str, float]:
        subjects = [Subject.op(s) for s in new]
        measure_into_dataset(subjects, device, runtime, Path(data_dir), config, card={},
                             progress=progress)
        records = LatencyDataset.open(data_dir).records()
        records = records[(records["device"] == device.name) & (records["runtime"] == runtime)
                          & (records["settings"] == settings.key(runtime))]
        times = kernel_times(records, statistic)
        return {s.key(): times[s.key()] for s in new if s.key() in times}

    _, reports, _, _ = adaptive_fit(
        specs, kernel_ms, measure, lambda: clone(final.kernel_model), rounds,
        np.random.default_rng(seed), threshold, per_point, max_new)
    final.fit(Path(data_dir), statistic=statistic, platform=own.choice())
    out = final.save(Path(out))
    summary = {"rounds": [r.to_json() for r in reports], "threshold": threshold,
               "per_point": per_point, "max_new": max_new, "seed": seed,
               "statistic": statistic, "predictor": predictor}
    atomic_write_text(out / "adapt.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "adapt.md", "# Adaptive sampling\n\nError per round on held-out "
                      "kernels (never trained on during the rounds).\n\n"
                      + reports_markdown(reports) + "\n")
    return final, reports
