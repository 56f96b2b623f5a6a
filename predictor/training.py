"""What a predictor is fitted on: a dataset's records of one platform (bench.platform), its
calibration networks, and the cross-validated error per kernel kind that `predictor fit`
reports."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from latbench.bench.fusion import apply_attach
from latbench.bench.ops import OpSpec
from latbench.bench.platform import (
    Platform,
    PlatformChoice,
    choose_platform,
    platforms_of,
    record_platform,
)
from latbench.bench.stats import BUDGET_STATISTICS
from latbench.errors import DatasetError, UnknownKernelError
from latbench.predictor.intervals import ratio_quantiles

CV_FOLDS = 5
CV_SEED = 0
MIN_CV_RECORDS_PER_FOLD = 2  # a kind with fewer than folds x this records is not cross-validated
MIN_GAP_NETWORKS = 5  # fewer measured networks: statistic gaps come from the kernels


def dataset_platforms(records: pd.DataFrame, choice: PlatformChoice | None = None
                      ) -> dict[Platform, pd.DataFrame]:
    """The successful op records of each platform in `records` that `choice` matches."""
    ops = records[(records["subject"] == "op") & (records["status"] == "ok")]
    if ops.empty:
        return {}
    platforms = pd.Series(platforms_of(ops), index=ops.index)
    choice = choice or PlatformChoice()
    return {p: ops[platforms == p] for p in sorted(set(platforms)) if choice.matches(p)}


def select_records(records: pd.DataFrame, device: str | None = None,
                   runtime: str | None = None, *, choice: PlatformChoice | None = None,
                   owner: str = "the dataset") -> pd.DataFrame:
    """The op records of one platform (`choice`, narrowed by `device` and `runtime`), measured
    with one settings key; a choice matching several platforms, or none, is an error naming
    the platforms there are and the flags that choose."""
    choice = replace(choice or PlatformChoice(), **{k: v for k, v in
                                                   (("device", device), ("runtime", runtime))
                                                   if v})
    found = dataset_platforms(records, choice)
    if not found:
        everything = dataset_platforms(records)
        if not everything:
            raise DatasetError(f"{owner} holds no successful operator records")
        choose_platform(everything, choice, owner)  # raises, naming the platforms there are
    ops = found[choose_platform(found, choice, owner)]
    keys = ops.groupby("settings").size()
    if len(keys) > 1:
        listing = "; ".join(f"[{s}] ({n} records)" for s, n in keys.items())
        raise DatasetError(f"{owner} measured platform {record_platform(ops.iloc[0])} with "
                           f"several protocols ({listing}); fit on a dataset measured with one")
    return ops


def setup_networks(records: pd.DataFrame, setup: Mapping[str, Any]) -> pd.DataFrame:
    """The dataset's successful network records measured in the (device, runtime, settings) of
    `setup` (a record) and at its precision."""
    nets = records[(records["subject"] == "network") & (records["status"] == "ok")
                   & (records["device"] == setup["device"])
                   & (records["runtime"] == setup["runtime"])
                   & (records["settings"] == setup["settings"])]
    precision = record_platform(setup).precision
    return nets.loc[np.asarray([p.precision == precision for p in platforms_of(nets)],
                               dtype=bool)]


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
    "within10", "ratio_quantiles"}, or {"skipped": why} for a kind with too few records or
    kernels the model cannot price when it did not see them (a lookup table).
    "ratio_quantiles" holds the out-of-fold residuals' quantiles, what a prediction's interval
    is built from (predictor/intervals.py)."""
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
        out[kind] = {"folds": folds, "rmspe_pct": m["rmspe_pct"], "within10": m["within10"],
                     "ratio_quantiles": ratio_quantiles(ms[rows], predicted)}
    return out
