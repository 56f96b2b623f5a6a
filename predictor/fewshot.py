"""Few-shot latency transfer to an unseen device from end-to-end measurements only.

Given the latency of every architecture of a space on some reference devices (a wide CSV:
`index, arch, <device>...`) and K architectures measured on a new device, predict the rest.
Latency is additive in milliseconds, so a device whose per-layer costs are a non-negative mix of
the reference devices' has latencies that are the same mix of the reference latencies. The model
fits that mix by non-negative least squares on relative error - averaged over every mix of one
or two references and the full mix, weighted by leave-one-out error, since ten samples cannot
pin down a mix of twelve - over reference columns first denoised into additive per-layer cost
tables (the references are measurements too). On NAS-Bench-201 a second basis of architecture
features (op counts, live-op counts) carries devices unlike every reference, the two stacked
on their leave-one-out predictions. docs/predictors.md ("Few-shot transfer") has the reasons
and the measurements behind each choice, and what was tried and not kept.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from latbench.bench.spaces.nasbench201 import EDGES, OPS, NasBench201, live_edges
from latbench.errors import ConfigError, DatasetError, PredictorError, SearchError

SPACES = ("nasbench201", "fbnet")
# Bases: `ref` the reference devices' latencies as additive per-layer cost tables (denoised),
# `rawref` their latencies as measured, `arch` architecture features; `+` joins bases into one.
CANDIDATES = ("ref", "ref+arch", "arch", "rawref", "rawref+arch")
# Bases combined by default, per space. FBNet's op counts ignore which stage a block sits in
# (its cost depends on the stage's resolution and width), so they only add noise there.
DEFAULT_CANDIDATES = {"nasbench201": ("ref", "arch"), "fbnet": ("ref",)}

# --- architecture features -------------------------------------------------------------------
FBNET_CHOICES = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6",
                 "skip")
FBNET_LAYERS = 22


def nb201_ops(arch: str) -> tuple[str, ...]:
    """The op on each edge of a NAS-Bench-201 cell string (bench.spaces.nasbench201 order)."""
    try:
        return tuple(OPS[choice] for choice in NasBench201().decode(arch).choices)
    except SearchError as exc:
        raise ConfigError(str(exc)) from None


def nb201_features(arch: str) -> list[float]:
    """Counts of each non-none op, counts of the *live* ones (on a path from the cell input to
    its output), and whether the output is connected at all."""
    ops = nb201_ops(arch)
    live = live_edges(ops)
    counted = OPS[1:]
    every = [sum(op == name for op in ops) for name in counted]
    live_counts = [sum(ops[e] == name for e in live) for name in counted]
    return [*map(float, every), *map(float, live_counts), float(bool(live))]


def fbnet_features(arch: str) -> list[float]:
    """Counts of each non-skip block choice."""
    layers = arch.split("-")
    if len(layers) != FBNET_LAYERS or any(c not in FBNET_CHOICES for c in layers):
        raise ConfigError(f"not an FBNet architecture ({FBNET_LAYERS} '-'-joined choices of "
                          f"{', '.join(FBNET_CHOICES)}): {arch!r}")
    return [float(sum(c == name for c in layers)) for name in FBNET_CHOICES[:-1]]


FEATURES: dict[str, Callable[[str], list[float]]] = {"nasbench201": nb201_features,
                                                     "fbnet": fbnet_features}


def nb201_onehot(arch: str) -> list[float]:
    """One-hot of the op on each of the six edges (6 x 5), plus `nb201_features`: the terms of
    an additive per-edge cost table, with live-op counts for runtimes that skip dead ops."""
    counts = nb201_features(arch)  # validates the string
    onehot = [0.0] * (len(EDGES) * len(OPS))
    for edge, op in enumerate(nb201_ops(arch)):
        onehot[edge * len(OPS) + OPS.index(op)] = 1.0
    return [*onehot, *counts]


def fbnet_onehot(arch: str) -> list[float]:
    """One-hot of the block choice at each of the 22 positions (22 x 9): the terms of an
    additive per-layer cost table (a block's cost depends on its stage's resolution and width,
    which the position fixes)."""
    fbnet_features(arch)  # validates the string
    onehot = [0.0] * (FBNET_LAYERS * len(FBNET_CHOICES))
    for position, choice in enumerate(arch.split("-")):
        onehot[position * len(FBNET_CHOICES) + FBNET_CHOICES.index(choice)] = 1.0
    return onehot


TABLE_FEATURES: dict[str, Callable[[str], list[float]]] = {"nasbench201": nb201_onehot,
                                                           "fbnet": fbnet_onehot}
DENOISE_ALPHA = 1e-3  # ridge on the one-hot terms: only breaks their collinearity (fixed a priori)


def _feature_rows(by_space: dict[str, Callable[[str], list[float]]], space: str,
                  archs: Sequence[str]) -> np.ndarray:
    if space not in by_space:
        raise ConfigError(f"unknown few-shot space {space!r}; known: {', '.join(SPACES)}")
    return np.array([by_space[space](a) for a in archs], dtype=np.float64)


def arch_features(space: str, archs: Sequence[str]) -> np.ndarray:
    return _feature_rows(FEATURES, space, archs)


def table_features(space: str, archs: Sequence[str]) -> np.ndarray:
    """Per-position one-hot terms of an additive cost table (see `TABLE_FEATURES`)."""
    return _feature_rows(TABLE_FEATURES, space, archs)


def fit_cost_tables(features: np.ndarray, ms: np.ndarray,
                    alpha: float = DENOISE_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Intercept (devices,) and additive cost table (features, devices) per column of `ms`,
    by least squares with a small ridge on the table (the intercept is not penalised)."""
    x_mean = features.mean(axis=0)
    y_mean = ms.mean(axis=0)
    centred = features - x_mean
    gram = centred.T @ centred + alpha * np.eye(features.shape[1])
    table = np.linalg.solve(gram, centred.T @ (ms - y_mean))
    return y_mean - x_mean @ table, table


# --- reference data --------------------------------------------------------------------------
@dataclass(frozen=True)
class ReferenceTable:
    """Latency (ms) of every architecture (rows) on every reference device (columns)."""

    archs: tuple[str, ...]
    devices: tuple[str, ...]
    ms: np.ndarray

    def without(self, device: str) -> ReferenceTable:
        if device not in self.devices:
            raise ConfigError(f"reference data has no device {device!r}; it has "
                              f"{', '.join(self.devices)}")
        keep = [i for i, d in enumerate(self.devices) if d != device]
        return ReferenceTable(self.archs, tuple(self.devices[i] for i in keep),
                              self.ms[:, keep])

    def denoised(self, space: str, alpha: float = DENOISE_ALPHA) -> ReferenceTable:
        """Every device's latencies replaced by its additive per-layer cost table's values,
        fitted to all of its architectures: keeps what is a property of the architecture,
        drops measurement noise (coarse integer ms, clock regimes) that a mix would pass on."""
        features = table_features(space, self.archs)
        intercept, table = fit_cost_tables(features, self.ms, alpha)
        return ReferenceTable(self.archs, self.devices, features @ table + intercept)

    def column(self, device: str) -> np.ndarray:
        return self.ms[:, self.devices.index(device)]

    def rows(self, archs: Sequence[str]) -> np.ndarray:
        index = {a: i for i, a in enumerate(self.archs)}
        missing = [a for a in archs if a not in index]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise PredictorError(f"architecture(s) not in the reference data: "
                                 f"{', '.join(missing[:3])}{more}")
        return np.array([index[a] for a in archs], dtype=np.int64)


def load_reference(path: str | Path, devices: Sequence[str] | None = None) -> ReferenceTable:
    """A wide latency CSV: columns `arch` (and optionally `index`), then one per device."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read reference latencies {path}: {exc}") from exc
    if "arch" not in frame.columns:
        raise DatasetError(f"{path} has no 'arch' column")
    columns = [c for c in frame.columns if c not in ("index", "arch")]
    if devices:
        unknown = [d for d in devices if d not in columns]
        if unknown:
            raise DatasetError(f"{path} has no device column(s) {', '.join(unknown)}")
        columns = list(devices)
    if not columns:
        raise DatasetError(f"{path} has no device columns")
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise DatasetError(f"{path}: device columns must hold finite, non-negative ms")
    if frame["arch"].duplicated().any():
        raise DatasetError(f"{path}: architectures repeat")
    return ReferenceTable(tuple(frame["arch"].astype(str)), tuple(columns), values)


# --- the model -------------------------------------------------------------------------------
INTERCEPT_COLUMNS = 2  # every design starts with an intercept of either sign
MIX_SIZES = (1, 2)  # reference devices per small mix averaged by the `ref` / `rawref` bases
MIX_SHARPNESS = 4  # a mix's weight: 1 / (its leave-one-out RMSPE on the samples)^4


def _nnls_relative(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """w >= 0 minimising sum((design @ w / target - 1)^2)."""
    from scipy.optimize import nnls

    weights, _ = nnls(design / target[:, None], np.ones(len(target)), maxiter=50 * design.shape[1])
    return weights


def _loo_predictions(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Each sample predicted by the NNLS fit to the other samples."""
    every = np.arange(len(target))
    return np.array([design[i] @ _nnls_relative(design[every != i], target[every != i])
                     for i in every])


def _rmspe(predicted: np.ndarray, target: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(predicted / target - 1))))


def median_relative_error(predicted: np.ndarray, target: np.ndarray) -> float:
    """Median of |predicted / target - 1|: what a typical sample is off by. Unlike RMSPE it
    does not explode when one sample is tiny (a 0.001 ms sample predicted at 0.6 ms would make
    the RMSPE of ten samples 19,000%)."""
    return float(np.median(np.abs(predicted / target - 1)))


@dataclass(frozen=True)
class BasisFit:
    """One basis fitted to the samples: coefficients over its design's columns, and each
    sample's leave-one-out prediction (what the basis would have said without it)."""

    coef: np.ndarray
    loo: np.ndarray


def fit_full_mix(design: np.ndarray, target: np.ndarray) -> BasisFit:
    """NNLS over every column of the design at once."""
    return BasisFit(_nnls_relative(design, target), _loo_predictions(design, target))


def average_by_loo(fits: Sequence[BasisFit], target: np.ndarray) -> BasisFit:
    """Fits averaged with weights 1 / (their leave-one-out RMSPE)^MIX_SHARPNESS (coefficients
    over the same columns; leave-one-out predictions averaged with the same weights)."""
    scores = np.array([_rmspe(fit.loo, target) for fit in fits])
    weights = 1.0 / np.maximum(scores, 1e-9) ** MIX_SHARPNESS
    weights /= weights.sum()
    return BasisFit(sum(w * fit.coef for w, fit in zip(weights, fits, strict=True)),
                    sum(w * fit.loo for w, fit in zip(weights, fits, strict=True)))


def fit_small_mixes(design: np.ndarray, target: np.ndarray) -> BasisFit:
    """Every mix of one or two reference columns (`MIX_SIZES`, each with the intercepts),
    averaged by `average_by_loo`: ten samples cannot pin down a mix of twelve reference
    devices - NNLS over all of them fits the samples' noise with whichever corner of the cone
    it lands in - but a mix of one or two is well determined, and averaging the ones that
    predict left-out samples best describes the device without committing to one."""
    references = range(INTERCEPT_COLUMNS, design.shape[1])
    subsets = [s for size in MIX_SIZES for s in itertools.combinations(references, size)]
    fits = []
    for subset in subsets:
        columns = [*range(INTERCEPT_COLUMNS), *subset]
        fit = fit_full_mix(design[:, columns], target)
        coef = np.zeros(design.shape[1])
        coef[columns] = fit.coef
        fits.append(BasisFit(coef, fit.loo))
    return average_by_loo(fits, target)


def fit_reference_mix(design: np.ndarray, target: np.ndarray) -> BasisFit:
    """The small mixes' average and the full mix, averaged by `average_by_loo`: with ten
    samples the small mixes win; with more samples, or a device that needs many references
    at once (FBNet's stage-dependent costs), the full mix takes over."""
    if design.shape[1] <= INTERCEPT_COLUMNS + 1:  # one reference or none: nothing to mix
        return fit_full_mix(design, target)
    return average_by_loo([fit_small_mixes(design, target), fit_full_mix(design, target)],
                          target)


def stacking_weights(loo: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Convex weights of the bases (columns of `loo`, their leave-one-out predictions) that
    best predict the samples on relative error: uses how the bases' errors co-vary, not only
    how large each is."""
    weights = _nnls_relative(loo, target)
    if weights.sum() <= 0:
        return np.full(loo.shape[1], 1.0 / loo.shape[1])
    return weights / weights.sum()


class FewShotPredictor:
    """Predict a new device's latency of every architecture from K of its measurements.

    `fit(archs, ms)` takes the K samples; `predict(archs)` any architectures of the reference
    table. Bases (`candidates`): `ref` the reference devices as additive cost tables fitted to
    all their architectures (denoised), `rawref` as measured, `arch` architecture features;
    `a+b` joins two. A reference basis alone is fitted as the average of its small mixes
    (`fit_reference_mix`), any other by non-negative least squares on relative error over all its
    columns. With `combine="ensemble"` (default) the bases' predictions are combined with the
    weights that best predict the samples left out one at a time (`stacking_weights`), with
    `combine="select"` the basis of least leave-one-out error is used. `weights_by_candidate_`
    and `cv_rmspe_` say what the samples decided; `candidate_` is the basis with the most
    weight; `loo_error_` the median relative error of the samples' leave-one-out predictions
    (`median_relative_error`), a rough estimate of the error on the rest.
    """

    def __init__(self, space: str, reference: ReferenceTable,
                 candidates: Sequence[str] | None = None, combine: str = "ensemble") -> None:
        if space not in SPACES:
            raise ConfigError(f"unknown few-shot space {space!r}; known: {', '.join(SPACES)}")
        candidates = DEFAULT_CANDIDATES[space] if candidates is None else candidates
        bad = [c for c in candidates if c not in CANDIDATES]
        if bad or not candidates:
            raise ConfigError(f"unknown few-shot candidate(s) {bad}; known: "
                              f"{', '.join(CANDIDATES)}")
        if combine not in ("ensemble", "select"):
            raise ConfigError(f"unknown few-shot combination {combine!r}; known: ensemble, "
                              "select")
        self.space = space
        self.reference = reference
        self.candidates = tuple(candidates)
        self.combine = combine
        self._features = arch_features(space, reference.archs)
        uses_tables = any("ref" in c.split("+") for c in self.candidates)
        self._tables = reference.denoised(space).ms if uses_tables else None

    def _design(self, candidate: str, rows: np.ndarray | slice) -> np.ndarray:
        n = len(self.reference.archs) if isinstance(rows, slice) else len(rows)
        parts = [np.ones((n, 1)), -np.ones((n, 1))]  # INTERCEPT_COLUMNS
        bases = candidate.split("+")
        if "ref" in bases:
            parts.append(self._tables[rows])
        if "rawref" in bases:
            parts.append(self.reference.ms[rows])
        if "arch" in bases:
            parts.append(self._features[rows])
        return np.hstack(parts)

    def fit(self, archs: Sequence[str], latency_ms: Sequence[float]) -> FewShotPredictor:
        rows = self.reference.rows(list(archs))
        target = np.asarray(latency_ms, dtype=np.float64)
        if len(target) != len(rows):
            raise PredictorError(f"{len(rows)} sample architectures but {len(target)} latencies")
        if len(rows) < 2:
            raise PredictorError("few-shot transfer needs at least 2 measured architectures")
        if not np.all(np.isfinite(target)) or np.any(target <= 0):
            raise PredictorError("sample latencies must be finite and positive")
        if len(set(rows.tolist())) != len(rows):
            raise PredictorError("sample architectures repeat")
        fits = {c: (fit_reference_mix if c in ("ref", "rawref") else fit_full_mix)(
            self._design(c, rows), target) for c in self.candidates}
        self.cv_rmspe_ = {c: _rmspe(fit.loo, target) for c, fit in fits.items()}
        if self.combine == "select" or len(self.candidates) == 1:
            best = min(self.candidates, key=lambda c: self.cv_rmspe_[c])
            share = {c: float(c == best) for c in self.candidates}
        else:
            loo = np.column_stack([fits[c].loo for c in self.candidates])
            share = dict(zip(self.candidates, map(float, stacking_weights(loo, target)),
                             strict=True))
        self.weights_by_candidate_ = share
        self.candidate_ = max(share, key=lambda c: share[c])
        self.coef_ = {c: fits[c].coef for c in self.candidates if share[c] > 0}
        self.loo_error_ = median_relative_error(
            sum(share[c] * fits[c].loo for c in self.candidates), target)
        self.n_samples_ = len(rows)
        return self

    def reference_shares(self) -> dict[str, float]:
        """Share of the mean prediction each reference device carries (largest first): which
        devices the samples say the new one resembles."""
        self._check_fitted()
        shares = np.zeros(len(self.reference.devices))
        for candidate, coef in self.coef_.items():
            bases = candidate.split("+")
            if "ref" in bases or "rawref" in bases:
                columns = self._tables if "ref" in bases else self.reference.ms
                weights = coef[INTERCEPT_COLUMNS:INTERCEPT_COLUMNS + columns.shape[1]]
                shares += self.weights_by_candidate_[candidate] * weights * columns.mean(axis=0)
        total = float(self.predict_all().mean())
        order = np.argsort(-shares, kind="stable")
        return {self.reference.devices[i]: float(shares[i] / total) for i in order
                if shares[i] > 0}

    def fit_all(self, latency_ms: Sequence[float]) -> FewShotPredictor:
        """Fit every candidate basis to the device's latency of ALL reference architectures
        and keep the one with the least error: not few-shot, the ceiling of this model family
        (what K samples could reach at best)."""
        target = np.asarray(latency_ms, dtype=np.float64)
        if target.shape != (len(self.reference.archs),):
            raise PredictorError(f"fit_all needs one latency per reference architecture "
                                 f"({len(self.reference.archs)}), got {target.shape}")
        if not np.all(np.isfinite(target)) or np.any(target <= 0):
            raise PredictorError("latencies must be finite and positive")
        coef = {c: _nnls_relative(self._design(c, slice(None)), target) for c in self.candidates}
        scores = {c: _rmspe(self._design(c, slice(None)) @ coef[c], target)
                  for c in self.candidates}
        best = min(self.candidates, key=lambda c: scores[c])
        self.cv_rmspe_ = scores
        self.weights_by_candidate_ = {c: float(c == best) for c in self.candidates}
        self.candidate_ = best
        self.coef_ = {best: coef[best]}
        self.n_samples_ = len(target)
        return self

    def _combined(self, rows: np.ndarray | slice) -> np.ndarray:
        self._check_fitted()
        total = sum(self.weights_by_candidate_[c] * (self._design(c, rows) @ coef)
                    for c, coef in self.coef_.items())
        return self._clip(np.asarray(total, dtype=np.float64))

    def predict_all(self) -> np.ndarray:
        """Predicted ms of every architecture of the reference table, in its order."""
        return self._combined(slice(None))

    def predict(self, archs: Sequence[str]) -> np.ndarray:
        self._check_fitted()
        return self._combined(self.reference.rows(list(archs)))

    def _clip(self, values: np.ndarray) -> np.ndarray:
        floor = 1e-3 * float(np.min(self.reference.ms[self.reference.ms > 0], initial=1.0))
        return np.maximum(values, floor)

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise PredictorError("few-shot predictor is not fitted yet")


# --- sample selection and evaluation ---------------------------------------------------------
def select_samples(reference: ReferenceTable, k: int, rng: np.random.Generator,
                   how: str = "random") -> np.ndarray:
    """Rows of the K architectures to measure: `random` (what a user does without thinking),
    or `stratified` (one per quantile bin of the reference devices' mean log latency, drawn at
    random within the bin: covers fast and slow architectures alike)."""
    n = len(reference.archs)
    if not 1 <= k <= n:
        raise ConfigError(f"cannot choose {k} of {n} architectures")
    if how == "random":
        return rng.choice(n, size=k, replace=False)
    if how == "stratified":
        order = np.argsort(np.log(np.maximum(reference.ms, 1e-9)).mean(axis=1), kind="stable")
        bins = np.array_split(order, k)
        return np.array([b[int(rng.integers(len(b)))] for b in bins])
    raise ConfigError(f"unknown sample selection {how!r}; known: random, stratified")


def leave_one_device_out(space: str, reference: ReferenceTable, ks: Sequence[int],
                         seeds: Sequence[int], selection: str = "random",
                         devices: Sequence[str] | None = None,
                         candidates: Sequence[str] | None = None) -> pd.DataFrame:
    """For each device as the unseen one (the others as reference), K and seed: fit on K
    samples, score on every other architecture. Rows: device, k, seed, spearman, within10,
    rmspe_pct, candidate. `candidates`: the bases (default: the space's)."""
    from latbench.predictor.evaluate import error_metrics

    rows = []
    for device in devices or reference.devices:
        others = reference.without(device)
        truth = reference.column(device)
        model = FewShotPredictor(space, others, candidates)
        for k in ks:
            for seed in seeds:
                picked = select_samples(others, k, np.random.default_rng(seed), selection)
                model.fit([others.archs[i] for i in picked], truth[picked])
                held = np.ones(len(truth), dtype=bool)
                held[picked] = False
                m = error_metrics(model.predict_all()[held], truth[held])
                rows.append({"space": space, "device": device, "k": k, "seed": seed,
                             "selection": selection, "spearman": m["spearman"],
                             "within10": m["within10"], "rmspe_pct": m["rmspe_pct"],
                             "candidate": model.candidate_})
    return pd.DataFrame(rows)


def predict_csv(space: str, reference: Path, samples: Path, query: Path, out: Path,
                exclude: Sequence[str] = ()) -> tuple[pd.DataFrame, FewShotPredictor]:
    """The `latbench predictor fewshot` command: samples CSV (arch, latency_ms) and query CSV
    (arch) in, `arch,predicted_ms` for every query row out; the fitted model says what the
    samples decided."""
    from latbench.bench.store import atomic_write_text

    table = load_reference(reference)
    for device in exclude:
        table = table.without(device)
    sample_frame = _read_columns(samples, ("arch", "latency_ms"))
    query_frame = _read_columns(query, ("arch",))
    model = FewShotPredictor(space, table).fit(sample_frame["arch"].astype(str).tolist(),
                                               _latencies(sample_frame, samples))
    predicted = model.predict(query_frame["arch"].astype(str).tolist())
    result = pd.DataFrame({"arch": query_frame["arch"].astype(str), "predicted_ms": predicted})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, result.to_csv(index=False))
    return result, model


def _latencies(frame: pd.DataFrame, path: Path, column: str = "latency_ms") -> np.ndarray:
    """The `column` of a samples CSV as positive finite ms; anything else is an error naming
    the file, its line and the value."""
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = raw.iloc[row]
        shown = "an empty cell" if not str(value).strip() else repr(value)
        why = "not a latency in ms" if not np.isfinite(values[row]) else "not positive"
        raise DatasetError(f"{path}, line {row + 2}: {column} is {shown}, {why}"
                           + (f" ({int(bad.sum())} such rows)" if bad.sum() > 1 else ""))
    return values


def _read_columns(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path} lacks column(s) {', '.join(missing)} (has "
                           f"{', '.join(map(str, frame.columns))})")
    if frame.empty:
        raise DatasetError(f"{path} has no rows")
    return frame
