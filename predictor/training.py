"""What a predictor is fitted on: a dataset's records of one setup, its calibration networks, and
the cross-validated error per kernel kind that `predictor fit` reports."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from latbench.bench.fusion import apply_attach
from latbench.bench.ops import OpSpec
from latbench.bench.stats import BUDGET_STATISTICS
from latbench.errors import DatasetError, UnknownKernelError

CV_FOLDS = 5
CV_SEED = 0
MIN_CV_RECORDS_PER_FOLD = 2  # a kind with fewer than folds x this records is not cross-validated
MIN_GAP_NETWORKS = 5  # fewer measured networks: statistic gaps come from the kernels


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


def setup_networks(records: pd.DataFrame, setup: Mapping[str, Any]) -> pd.DataFrame:
    """The dataset's successful network records measured in the (device, runtime, settings) of
    `setup` (a record)."""
    return records[(records["subject"] == "network") & (records["status"] == "ok")
                   & (records["device"] == setup["device"])
                   & (records["runtime"] == setup["runtime"])
                   & (records["settings"] == setup["settings"])]


def calibration_networks(records: pd.DataFrame, card: dict[str, Any], ops: pd.DataFrame,
                         statistic: str, attach: Collection[tuple[str, str]] | None = None
                         ) -> list[tuple[str, list[OpSpec], float]]:
    """(key, kernels, measured ms) of the dataset's networks measured in the same setup as
    `ops` and whose kernels the card lists (split by the fusion rules `attach` if given)."""
    kernel_keys = card.get("network_kernels") or {}
    nets = setup_networks(records, ops.iloc[0])
    out = []
    for key, ms in zip(nets["key"], nets[statistic].astype(float), strict=True):
        if key in kernel_keys:
            kernels = [OpSpec.from_key(k) for k in kernel_keys[key]]
            if attach is not None:
                kernels = apply_attach(kernels, attach)
            out.append((key, kernels, ms))
    return out


def statistic_gaps(records: pd.DataFrame, ops: pd.DataFrame, learned: str
                   ) -> dict[str, dict[str, Any]]:
    """How each budget statistic relates to the `learned` one, per statistic: the median and
    95th percentile of their ratio over the networks measured in `ops`' setup (over the kernels
    when there are fewer than MIN_GAP_NETWORKS), so a search can aim a budget on the median or
    p90 with a predictor of the minimum. Why networks first: a network's median sits further
    above its minimum than a short kernel's."""
    nets = setup_networks(records, ops.iloc[0])
    source, rows = ("networks", nets) if len(nets) >= MIN_GAP_NETWORKS else ("kernels", ops)
    out: dict[str, dict[str, Any]] = {}
    base = rows[learned].to_numpy(dtype=np.float64)
    for statistic in BUDGET_STATISTICS:
        if statistic not in rows.columns:
            continue
        ratio = rows[statistic].to_numpy(dtype=np.float64) / base
        ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
        if len(ratio):
            out[statistic] = {"median": float(np.median(ratio)),
                              "p95": float(np.percentile(ratio, 95)),
                              "n": int(len(ratio)), "source": source}
    return out


def can_price(kernels: Any, specs: list[OpSpec]) -> bool:
    """False for a network with a kernel the kernel predictor cannot price (a lookup table
    lacking one of its kernels): such a network is left out of the calibration."""
    try:
        kernels.predict(specs)
    except UnknownKernelError:
        return False
    return True


def cross_validate(template: Any, specs: Sequence[OpSpec], ms: np.ndarray,
                   folds: int = CV_FOLDS, seed: int = CV_SEED) -> dict[str, dict[str, Any]]:
    """Per kernel kind, the kernel model's K-fold error on that kind's records (a clone of
    `template` fitted per fold; KFold shuffled with `seed`): {"folds", "rmspe_pct",
    "within10"}, or {"skipped": why} for a kind with too few records or kernels the model
    cannot price when it did not see them (a lookup table)."""
    from sklearn.base import clone
    from sklearn.model_selection import KFold

    from latbench.predictor.evaluate import error_metrics

    kinds = np.array([s.kind for s in specs])
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(kinds.tolist())):
        rows = np.flatnonzero(kinds == kind)
        needed = folds * MIN_CV_RECORDS_PER_FOLD
        if len(rows) < needed:
            out[kind] = {"skipped": f"{len(rows)} records, {folds}-fold needs {needed}"}
            continue
        predicted = np.full(len(rows), np.nan)
        for train, test in KFold(folds, shuffle=True, random_state=seed).split(rows):
            model = clone(template).fit([specs[i] for i in rows[train]], ms[rows[train]])
            try:
                predicted[test] = model.predict([specs[i] for i in rows[test]])
            except UnknownKernelError:
                continue
        done = np.isfinite(predicted)
        if not done.all():
            out[kind] = {"skipped": "the model cannot price kernels it was not fitted on"}
            continue
        m = error_metrics(predicted, ms[rows])
        out[kind] = {"folds": folds, "rmspe_pct": m["rmspe_pct"], "within10": m["within10"]}
    return out
