"""Fit a predictor from a latency dataset, keeping what it was trained for in its manifest."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from latbench.bench.campaign import median_probe_ms
from latbench.bench.fusion import (
    FusionRules,
    apply_attach,
    attach_from_rules,
    manifest_entry,
    rules_from_card,
)
from latbench.bench.ops import OpSpec
from latbench.bench.stats import DEFAULT_STATISTIC, RECORD_STATISTICS
from latbench.bench.store import LatencyDataset
from latbench.errors import DatasetError, PredictorError, UnknownKernelError
from latbench.predictor.features import training_pairs
from latbench.predictor.io import save_predictor
from latbench.predictor.model_level import COMPOSITION_TERMS, OPTIONAL_TERMS, fit_composition
from latbench.predictor.models import KernelPredictor, get_predictor_class

# The composition terms need networks of varied size to be told apart from the kind scales.
MIN_NETWORKS_FOR_TERMS = 10


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
                         statistic: str, attach: Collection[tuple[str, str]] | None = None
                         ) -> list[tuple[str, list[OpSpec], float]]:
    """(key, kernels, measured ms) of the dataset's networks measured in the same setup as
    `ops` and whose kernels the card lists (split by the fusion rules `attach` if given)."""
    kernel_keys = card.get("network_kernels") or {}
    first = ops.iloc[0]
    nets = records[(records["subject"] == "network") & (records["status"] == "ok")
                   & (records["device"] == first["device"])
                   & (records["runtime"] == first["runtime"])
                   & (records["settings"] == first["settings"])]
    out = []
    for key, ms in zip(nets["key"], nets[statistic].astype(float), strict=True):
        if key in kernel_keys:
            kernels = [OpSpec.from_key(k) for k in kernel_keys[key]]
            if attach is not None:
                kernels = apply_attach(kernels, attach)
            out.append((key, kernels, ms))
    return out


def fit_from_dataset(data_dir: Path, out: Path, predictor: str = "xgboost",
                     statistic: str = DEFAULT_STATISTIC, device: str | None = None,
                     runtime: str | None = None, params: dict[str, Any] | None = None,
                     calibrate: bool = True, fusion: FusionRules | None = None,
                     composition_terms: Sequence[str] = COMPOSITION_TERMS
                     ) -> tuple[KernelPredictor, dict[str, Any]]:
    """Fit kernel models on the op records, then (if the dataset holds measured networks and
    `calibrate`) the per-kind composition scales on those networks - plus the
    `composition_terms` (a per-kernel cost, the layout conversions a kernel timed alone pays,
    its weights streamed in inside a network, ...; see model_level.COMPOSITION_TERMS) when
    there are at least MIN_NETWORKS_FOR_TERMS of them - the OPTIONAL_TERMS only where they
    lower the calibration networks' leave-one-out error.

    Fusion rules (`fusion`, else the dataset card's "fusion" entry from `latbench bench
    fusion`) decide how networks are split into kernels; they go into the manifest."""
    if statistic not in RECORD_STATISTICS:
        raise PredictorError(f"unknown statistic {statistic!r}; choose one of "
                             f"{', '.join(RECORD_STATISTICS)}")
    model_class = get_predictor_class(predictor)
    dataset = LatencyDataset.open(data_dir)
    records = dataset.records()
    if records.empty:
        raise DatasetError(f"dataset at {data_dir} has no records")
    ops = select_records(records, device, runtime)
    specs, kernel_ms, overhead = training_pairs(ops, statistic)
    model = model_class(**(params or {})).fit(specs, kernel_ms, call_overhead_ms=overhead)
    first = ops.iloc[0]
    card = dataset.card
    rules = fusion or rules_from_card(card)
    attach = attach_from_rules(rules) if rules is not None else None
    if attach is not None:
        model.attach_ = attach
    composition: dict[str, Any] = {"networks": 0}
    networks = calibration_networks(records, card, ops, statistic, attach) if calibrate else []
    networks = [n for n in networks if _can_price(model, n[1])]
    if networks:
        calibration = [(kernels, ms) for _, kernels, ms in networks]
        terms = list(composition_terms) if len(networks) >= MIN_NETWORKS_FOR_TERMS else []
        composition = fit_composition(model, calibration, terms=terms,
                                      optional=OPTIONAL_TERMS)
        composition["keys"] = [key for key, _, _ in networks]
    info = {
        "device": str(first["device"]),
        "runtime": str(first["runtime"]),
        "runtime_version": str(first["runtime_version"]),
        "settings": str(first["settings"]),
        "run_settings": card.get("run_settings", {}),
        "statistic": statistic,
        "dataset": {"path": str(Path(data_dir).resolve()), "n_records": int(len(ops)),
                    "reference_probe_ms": median_probe_ms(ops),
                    "cpu_model": (card.get("device_facts") or {}).get("cpu_model"),
                    "created": card.get("created")},
        "composition": composition,
    }
    if rules is not None:
        info["fusion"] = manifest_entry(rules)
    save_predictor(model, out, info)
    return model, info


def _can_price(model: KernelPredictor, kernels: list[OpSpec]) -> bool:
    """False for a calibration network with a kernel the model cannot price (a lookup table
    lacking one of its kernels): it is left out of the calibration rather than failing it."""
    try:
        model.predict(kernels)
    except UnknownKernelError:
        return False
    return True
