"""Issue 4 target: few-shot latency transfer to an unseen device, leave-one-device-out.

For each space (NAS-Bench-201, FBNet) and each of its 13 device settings in turn: the other 12
are the reference devices, K architectures measured on the held-out device are the samples
(chosen at random with a seed - what a user does), and every other architecture is predicted
and scored (Spearman, within-10%). K in {5, 10, 20, 50}, 10 seeds each; a stratified choice of
the K samples (one per quantile of the reference devices' mean latency) is reported beside it.
Two rows for comparison: `rawref` is the same model with the reference columns as measured
(the method before the references were denoised into cost tables). Three rows bound what the
data allows: the oracle is the few-shot model family fitted to ALL architectures of the
held-out device; the ceiling a gradient-boosted model trained on half of them with every
reference device's latency and the arch features as inputs; "own data" the device's OWN
measurements, no reference devices at all: an additive per-layer cost table (least squares on the
per-position one-hot) and xgboost on the same one-hot, each fitted on 80% of the architectures and
scored on the rest, the better of the two per device - what the device's measurements allow any
model to reach (the integer-millisecond phones' noise caps it); "closest reference" the Spearman
of the held-out device with its most similar reference device as measured (for 1080ti_1 that is
titanx_1, a near-duplicate GPU: the noise floor of the measurements themselves); "order drift
removed" what an additive table of ALL the device's architectures reaches once the drift of its
errors along the table's row order is divided out (it needs the truth: a bound, not a method) -
on the phones and two Xeons the errors drift by 5-8% over a hundred consecutive rows, which no
model of the architecture can follow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import publish  # noqa: E402

from latbench.predictor.evaluate import error_metrics  # noqa: E402
from latbench.predictor.fewshot import (  # noqa: E402
    DEFAULT_CANDIDATES,
    SPACES,
    FewShotPredictor,
    arch_features,
    fit_cost_tables,
    leave_one_device_out,
    load_reference,
    table_features,
)

ROOT = Path(__file__).resolve().parent.parent
KS = (5, 10, 20, 50)


def ceiling(space: str, table, seed: int = 0) -> pd.DataFrame:
    """Upper bound: xgboost on half of all architectures, features = references + arch."""
    import xgboost

    features = arch_features(space, table.archs)
    rows = []
    perm = np.random.default_rng(seed).permutation(len(table.archs))
    train, test = perm[: len(perm) // 2], perm[len(perm) // 2:]
    for device in table.devices:
        others = table.without(device)
        x = np.hstack([np.log(np.maximum(others.ms, 1e-6)), features])
        y = np.log(np.maximum(table.column(device), 1e-6))
        model = xgboost.XGBRegressor(n_estimators=400, max_depth=6, learning_rate=0.05,
                                     n_jobs=1).fit(x[train], y[train])
        m = error_metrics(np.exp(model.predict(x[test])), np.exp(y[test]))
        rows.append({"device": device, "spearman": m["spearman"], "within10": m["within10"]})
    return pd.DataFrame(rows)


def own_data(space: str, table, seed: int = 0) -> pd.DataFrame:
    """Per device, from its own measurements only (80% fit, 20% scored): the better of an
    additive per-layer cost table and xgboost on the per-position one-hot."""
    import xgboost

    onehot = table_features(space, table.archs)
    design = np.hstack([onehot, np.ones((len(onehot), 1))])
    perm = np.random.default_rng(seed).permutation(len(table.archs))
    train, test = perm[: int(0.8 * len(perm))], perm[int(0.8 * len(perm)):]
    rows = []
    for device in table.devices:
        y = table.column(device)
        coef = np.linalg.lstsq(design[train], y[train], rcond=None)[0]
        boosted = xgboost.XGBRegressor(n_estimators=600, max_depth=4, learning_rate=0.05,
                                       n_jobs=2).fit(onehot[train], np.log(y[train]))
        scores = [error_metrics(np.maximum(design[test] @ coef, 1e-6), y[test]),
                  error_metrics(np.exp(boosted.predict(onehot[test])), y[test])]
        rows.append({"device": device, "spearman": max(m["spearman"] for m in scores),
                     "within10": max(m["within10"] for m in scores)})
    return pd.DataFrame(rows)


DRIFT_WINDOW = 100  # rows: consecutive architectures of the table, likely measured in a row


def order_drift(space: str, table) -> pd.DataFrame:
    """How much of a device's error is drift along the table's row order (the order the source
    measured in, as far as one can tell), not the architecture. Per device: an additive
    per-layer cost table fitted to ALL its architectures; `drift_sd` the spread of its residual
    ratio's rolling mean over DRIFT_WINDOW consecutive rows (i.i.d. noise gives about a tenth
    of the residual's own spread); the table's Spearman / within-10% as fitted and with that
    rolling mean divided out - which needs the truth, so it is no predictor: it bounds what any
    model of the architecture alone can reach."""
    onehot = table_features(space, table.archs)
    intercept, costs = fit_cost_tables(onehot, table.ms)
    fitted = np.maximum(onehot @ costs + intercept, 1e-6)
    window = np.ones(DRIFT_WINDOW) / DRIFT_WINDOW
    rows = []
    for j, device in enumerate(table.devices):
        truth, plain = table.ms[:, j], fitted[:, j]
        drift = np.convolve(np.clip(truth / plain - 1, -1, 1), window, mode="same")
        inner = drift[DRIFT_WINDOW:-DRIFT_WINDOW]
        before = error_metrics(plain, truth)
        after = error_metrics(plain * (1 + drift), truth)
        rows.append({"device": device, "drift_sd": float(inner.std()),
                     "spearman": before["spearman"], "within10": before["within10"],
                     "spearman_drift_removed": after["spearman"],
                     "within10_drift_removed": after["within10"]})
    return pd.DataFrame(rows)


def oracle(space: str, table) -> pd.DataFrame:
    """The few-shot model family fitted to every architecture of the held-out device."""
    rows = []
    for device in table.devices:
        truth = table.column(device)
        model = FewShotPredictor(space, table.without(device)).fit_all(truth)
        m = error_metrics(model.predict_all(), truth)
        rows.append({"device": device, "spearman": m["spearman"], "within10": m["within10"]})
    return pd.DataFrame(rows)


def closest_reference(table) -> pd.DataFrame:
    """Per device: the reference device (as measured) that rank-correlates best with it."""
    ranks = pd.DataFrame(table.ms, columns=list(table.devices)).corr(method="spearman")
    rows = []
    for device in table.devices:
        other = ranks[device].drop(device)
        rows.append({"device": device, "closest": other.idxmax(), "spearman": other.max()})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--seeds", type=int, default=10, help="draws of the K samples per device")
    parser.add_argument("--k10-draws", type=int, default=50,
                        help="draws for the K = 10 figure the target is judged on (the mean "
                             "over 10 draws moves by about a point from one set to the next)")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    data = Path(args.data_dir)
    seeds = range(args.seeds)
    lines = ["Leave-one-device-out over the 13 device settings of each shared table (the other "
             f"12 are the reference devices); {args.seeds} random draws of the K samples per "
             "device; scored on every other architecture. Mean over devices (and draws).", ""]
    headline = []
    for space in SPACES:
        table = load_reference(data / space / "latency_ms.csv")
        # K = 10 once over every draw either figure needs; the KS table takes its first ones.
        many = leave_one_device_out(space, table, (10,), range(max(args.seeds, args.k10_draws)))
        frame = pd.concat([leave_one_device_out(space, table, [k for k in KS if k != 10], seeds),
                           many[many["seed"] < args.seeds]], ignore_index=True)
        many = many[many["seed"] < args.k10_draws]
        strat = leave_one_device_out(space, table, (10,), seeds, selection="stratified")
        raw = leave_one_device_out(space, table, (10,), seeds, candidates=[
            c.replace("ref", "rawref") for c in DEFAULT_CANDIDATES[space]])
        best = oracle(space, table)
        own = own_data(space, table)
        near = closest_reference(table)
        drift = order_drift(space, table)
        means = frame.groupby("k")[["spearman", "within10"]].mean()
        lines += [f"### {space} ({len(table.archs)} architectures)", "",
                  "| K | samples chosen | mean Spearman | mean within 10% |", "|---|---|---|---|"]
        for k, row in means.iterrows():
            lines.append(f"| {k} | random | {row['spearman']:.3f} | {row['within10']:.1%} |")
        judged = many[["spearman", "within10"]].mean()
        lines.append(f"| 10 | random, {args.k10_draws} draws | {judged['spearman']:.3f} | "
                     f"{judged['within10']:.1%} |")
        s = strat[["spearman", "within10"]].mean()
        lines.append(f"| 10 | stratified | {s['spearman']:.3f} | {s['within10']:.1%} |")
        r = raw[["spearman", "within10"]].mean()
        lines.append(f"| 10 | random, `rawref` (references as measured) | {r['spearman']:.3f} | "
                     f"{r['within10']:.1%} |")
        lines.append(f"| oracle | all archs, same model family | {best['spearman'].mean():.3f} "
                     f"| {best['within10'].mean():.1%} |")
        if not args.no_ceiling:
            c = ceiling(space, table)
            lines.append(f"| ceiling | half of all archs | {c['spearman'].mean():.3f} | "
                         f"{c['within10'].mean():.1%} |")
        lines.append(f"| own data | the device's own 80%, no references | "
                     f"{own['spearman'].mean():.3f} | {own['within10'].mean():.1%} |")
        lines.append(f"| order drift removed | additive table on all archs, drift along the "
                     f"row order divided out (uses the truth) | "
                     f"{drift['spearman_drift_removed'].mean():.3f} | "
                     f"{drift['within10_drift_removed'].mean():.1%} |")
        lowest = own.nsmallest(2, "spearman")
        perfect_elsewhere = (len(own) - 2 + lowest["spearman"].sum()) / len(own)
        headline.append((space, judged["spearman"], judged["within10"],
                         own["spearman"].mean(), drift["spearman_drift_removed"].mean(),
                         ", ".join(f"{d} {v:.3f}" for d, v in zip(lowest["device"],
                                                                  lowest["spearman"],
                                                                  strict=True)),
                         perfect_elsewhere))
        per_device = frame[frame["k"] == 10].groupby("device", sort=False)
        lines.append(f"| closest reference | as measured, no fit | {near['spearman'].mean():.3f} "
                     "| - |")
        lines += ["", "Per device, K = 10 (random): Spearman / within 10% / basis chosen most "
                  "often; oracle (all archs); own data (the device's own 80%); order drift "
                  f"(spread of the {DRIFT_WINDOW}-row rolling mean of the device's residual, and "
                  "its additive table's within 10% with that drift divided out); closest "
                  "reference device as measured",
                  "", "| device | Spearman | within 10% | basis | oracle Spearman | "
                  "oracle within 10% | own-data Spearman | order drift | within 10% drift "
                  "removed | closest reference (Spearman) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        best = best.set_index("device")
        own = own.set_index("device")
        near = near.set_index("device")
        drift = drift.set_index("device")
        for device, group in per_device:
            lines.append(f"| {device} | {group['spearman'].mean():.3f} | "
                         f"{group['within10'].mean():.1%} | "
                         f"{group['candidate'].mode().iloc[0]} | "
                         f"{best.loc[device, 'spearman']:.3f} | "
                         f"{best.loc[device, 'within10']:.1%} | "
                         f"{own.loc[device, 'spearman']:.3f} | "
                         f"{drift.loc[device, 'drift_sd']:.1%} | "
                         f"{drift.loc[device, 'within10_drift_removed']:.1%} | "
                         f"{near.loc[device, 'closest']} ({near.loc[device, 'spearman']:.3f}) |")
        lines.append("")
    both_s = np.mean([h[1] for h in headline])
    both_w = np.mean([h[2] for h in headline])
    lines += ["Target (issue 4), K = 10: mean Spearman >= 0.96 and mean within-10% >= 0.80. "
              f"Reached per space (K = 10, {args.k10_draws} draws): " + "; ".join(
                  f"{s}: Spearman {sp:.3f} ({'yes' if sp >= 0.96 else 'no'}), within-10% "
                  f"{w:.1%} ({'yes' if w >= 0.80 else 'no'})" for s, sp, w, *_ in headline)
              + f". Mean of the two spaces: Spearman {both_s:.3f}, within-10% {both_w:.1%}."
              + "".join(f" On {s} even the device's own measurements reach only {o:.3f} mean "
                        f"Spearman (own data), and {d:.3f} with the drift along the row order "
                        f"divided out; its two noisiest devices' own data ({low}) would hold "
                        f"the mean to {cap:.3f} even if every other device were ranked "
                        "perfectly: 0.96 is beyond what its measurements allow."
                        for s, _, _, o, d, low, cap in headline if o < 0.96)]
    publish("fewshot", "Few-shot transfer to unseen devices (end-to-end only)", lines,
            write=not args.no_write)


if __name__ == "__main__":
    main()
