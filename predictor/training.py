"""Fit a predictor from a latency dataset, keeping what it was trained for in its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.ops import OpSpec
from bench.stats import DEFAULT_STATISTIC, RECORD_STATISTICS
from bench.store import LatencyDataset
from latbench.errors import DatasetError, PredictorError
from predictor.features import training_pairs
from predictor.io import save_predictor
from predictor.model_level import fit_composition
from predictor.models import PREDICTORS, KernelPredictor


def select_records(records: pd.DataFrame, device: str | None = None,
                   runtime: str | None = None) -> pd.DataFrame:
    """The op records of one (device, runtime, settings); ambiguity is an error naming options."""
    ops = records[(records["subject"] == "op") & (records["status"] == "ok")]
    if device:
        ops = ops[ops["device"] == device]
    if runtime:
        ops = ops[ops["runtime"] == runtime]
    if ops.empty:
        raise DatasetError(f"no operator records for device={device or 'any'} "
                           f"runtime={runtime or 'any'}")
    combos = ops.groupby(["device", "runtime", "settings"]).size()
    if len(combos) > 1:
        listing = "; ".join(f"{d}/{r} [{s}] ({n} records)" for (d, r, s), n in combos.items())
        raise DatasetError(f"the dataset mixes measurement setups ({listing}); choose one with "
                           "--device and --runtime")
    return ops


def calibration_networks(records: pd.DataFrame, card: dict[str, Any], ops: pd.DataFrame,
                         statistic: str) -> list[tuple[str, list[OpSpec], float]]:
    """(key, kernels, measured ms) of the dataset's networks measured in the same setup as
    `ops` and whose kernels the card lists."""
    kernel_keys = card.get("network_kernels") or {}
    first = ops.iloc[0]
    nets = records[(records["subject"] == "network") & (records["status"] == "ok")
                   & (records["device"] == first["device"])
                   & (records["runtime"] == first["runtime"])
                   & (records["settings"] == first["settings"])]
    out = []
    for key, ms in zip(nets["key"], nets[statistic].astype(float), strict=True):
        if key in kernel_keys:
            out.append((key, [OpSpec.from_key(k) for k in kernel_keys[key]], ms))
    return out


def fit_from_dataset(data_dir: Path, out: Path, predictor: str = "xgboost",
                     statistic: str = DEFAULT_STATISTIC, device: str | None = None,
                     runtime: str | None = None, params: dict[str, Any] | None = None,
                     calibrate: bool = True) -> tuple[KernelPredictor, dict[str, Any]]:
    """Fit kernel models on the op records, then (if the dataset holds measured networks and
    `calibrate`) the per-kind composition scales on those networks."""
    if statistic not in RECORD_STATISTICS:
        raise PredictorError(f"unknown statistic {statistic!r}; choose one of "
                             f"{', '.join(RECORD_STATISTICS)}")
    if predictor not in PREDICTORS:
        raise PredictorError(f"unknown predictor {predictor!r}; known: "
                             f"{', '.join(sorted(PREDICTORS))}")
    dataset = LatencyDataset.open(data_dir)
    records = dataset.records()
    if records.empty:
        raise DatasetError(f"dataset at {data_dir} has no records")
    ops = select_records(records, device, runtime)
    specs, kernel_ms, overhead = training_pairs(ops, statistic)
    model = PREDICTORS[predictor](**(params or {})).fit(specs, kernel_ms, call_overhead_ms=overhead)
    first = ops.iloc[0]
    card = dataset.card
    composition: dict[str, Any] = {"networks": 0}
    networks = calibration_networks(records, card, ops, statistic) if calibrate else []
    if networks:
        composition = fit_composition(model, [(kernels, ms) for _, kernels, ms in networks])
        composition["keys"] = [key for key, _, _ in networks]
    info = {
        "device": str(first["device"]),
        "runtime": str(first["runtime"]),
        "runtime_version": str(first["runtime_version"]),
        "settings": str(first["settings"]),
        "run_settings": card.get("run_settings", {}),
        "statistic": statistic,
        "dataset": {"path": str(Path(data_dir).resolve()), "n_records": int(len(ops)),
                    "cpu_model": (card.get("device_facts") or {}).get("cpu_model"),
                    "created": card.get("created")},
        "composition": composition,
    }
    save_predictor(model, out, info)
    return model, info
