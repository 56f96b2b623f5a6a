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

import copy
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latbench.bench.ops import OpSpec
from latbench.bench.spaces.nasbench201 import EDGES, OPS, NasBench201, live_edges
from latbench.errors import ConfigError, DatasetError, PredictorError, SearchError
from latbench.predictor.intervals import DEFAULT_LEVEL, check_level
from latbench.predictor.model_level import UnseenValue

logger = logging.getLogger(__name__)

SPACES = ("nasbench201", "fbnet")
# Bases: `ref` the reference devices' latencies as additive per-layer cost tables (denoised),
# `rawref` their latencies as measured, `arch` architecture features; `+` joins bases into one.
CANDIDATES = ("ref", "ref+arch", "arch", "rawref", "rawref+arch")
# Bases combined by default, per space. FBNet's op counts ignore which stage a block sits in
# (its cost depends on the stage's resolution and width), so they only add noise there.
DEFAULT_CANDIDATES = {"nasbench201": ("ref", "arch"), "fbnet": ("ref",)}
# Whether the structure prior is on by default: FBNet's structure model (op counts) ignores the
# stage a block sits in, and shrinking towards it cost accuracy there (docs/predictors.md).
DEFAULT_STRUCTURE = {"nasbench201": True, "fbnet": False}

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
    """Latency (ms) of every architecture (rows) on every reference device (columns);
    `exact` names the devices whose latencies are computed (kernel predictors), not measured:
    `denoised` keeps them as they are."""

    archs: tuple[str, ...]
    devices: tuple[str, ...]
    ms: np.ndarray
    exact: tuple[str, ...] = ()

    def without(self, device: str) -> ReferenceTable:
        if device not in self.devices:
            raise ConfigError(f"reference data has no device {device!r}; it has "
                              f"{', '.join(self.devices)}")
        keep = [i for i, d in enumerate(self.devices) if d != device]
        return ReferenceTable(self.archs, tuple(self.devices[i] for i in keep),
                              self.ms[:, keep], tuple(d for d in self.exact if d != device))

    def denoised(self, space: str, alpha: float = DENOISE_ALPHA) -> ReferenceTable:
        """Every device's latencies replaced by its additive per-layer cost table's values,
        fitted to all of its architectures: keeps what is a property of the architecture,
        drops measurement noise (coarse integer ms, clock regimes) that a mix would pass on."""
        features = table_features(space, self.archs)
        intercept, table = fit_cost_tables(features, self.ms, alpha)
        tables = features @ table + intercept
        kept = [i for i, d in enumerate(self.devices) if d in self.exact]
        tables[:, kept] = self.ms[:, kept]
        return replace(self, ms=tables)

    def column(self, device: str) -> np.ndarray:
        return self.ms[:, self.devices.index(device)]

    def join(self, other: ReferenceTable) -> ReferenceTable:
        """This table's architectures (in its order) with `other`'s devices added as columns;
        `other` must hold every one of them, and no device of the same name."""
        clash = sorted(set(self.devices) & set(other.devices))
        if clash:
            raise ConfigError(f"reference device(s) {', '.join(clash)} given twice")
        return ReferenceTable(self.archs, (*self.devices, *other.devices),
                              np.hstack([self.ms, other.ms[other.rows(self.archs)]]),
                              (*self.exact, *other.exact))

    def subset(self, rows: Sequence[int] | np.ndarray) -> ReferenceTable:
        """The table restricted to some architectures (rows, in the given order)."""
        rows = np.asarray(rows, dtype=np.int64)
        return replace(self, archs=tuple(self.archs[i] for i in rows), ms=self.ms[rows])

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


# --- kernel predictors as reference devices --------------------------------------------------
def canonical_archs(space: str, archs: Sequence[str]) -> list[str]:
    """Architecture strings as the reference table spells them: NAS-Bench-201 cell strings
    re-encoded by the search space (the shared tables use the same `|op~0|+...` form), FBNet's
    as given."""
    if space != "nasbench201":
        return list(archs)
    nb201 = NasBench201()
    try:
        return [nb201.encode(nb201.decode(a)) for a in archs]
    except SearchError as exc:
        raise ConfigError(str(exc)) from None


def _stage_spec(spec: OpSpec, size: int, channels: int) -> OpSpec:
    """A cell kernel of the first stage re-sized to another stage's node (every kernel of a
    NAS-Bench-201 cell is sized by its node: size x size x channels in and out)."""
    return replace(spec, h=size, w=size, cin=channels, cout=channels if spec.cout else 0)


def nb201_kernel_counts(space: NasBench201) -> tuple[list[str], list[OpSpec], np.ndarray,
                                                         frozenset[str]]:
    """Every architecture of the space (encoded), its distinct kernels and how often each
    runs in each architecture (archs x kernels) - the same kernels as `space.ops(arch)`,
    built from one stage's cell and re-sized per stage (building every network's kernel list
    whole takes about a minute) - and the keys of the kernels every architecture runs alike
    (stem, reductions, head)."""
    fixed_head, fixed_tail = space.fixed_ops()
    index: dict[OpSpec, int] = {}
    fixed_counts: dict[int, int] = {}
    for spec in [*fixed_head, *fixed_tail]:
        i = index.setdefault(spec, len(index))
        fixed_counts[i] = fixed_counts.get(i, 0) + 1
    first_size, first_channels = space.stages[0]
    resized: dict[OpSpec, list[int]] = {}
    archs, rows = [], []
    for arch in space.all_archs():
        counts = dict(fixed_counts)
        for spec in space.cell_ops(arch, first_size, first_channels):
            if spec not in resized:
                resized[spec] = [index.setdefault(_stage_spec(spec, size, c), len(index))
                                 for size, c in space.stages]
            for i in resized[spec]:
                counts[i] = counts.get(i, 0) + space.cells
        archs.append(space.encode(arch))
        rows.append(counts)
    matrix = np.zeros((len(archs), len(index)))
    for r, counts in enumerate(rows):
        matrix[r, list(counts)] = list(counts.values())
    return archs, list(index), matrix, frozenset(s.key() for s in [*fixed_head, *fixed_tail])


def predictor_reference(predictor: Any, space: str, name: str | None = None) -> ReferenceTable:
    """A kernel predictor (`LatencyPredictor`) as a reference device: its latency of every
    architecture of a latbench search space (distinct kernels priced once, with the
    composition, summed per architecture, plus the call overhead). Kernels of a kind the
    predictor lacks are an error naming the kinds, unless only the fixed part every
    architecture runs alike needs them (a constant, which the few-shot intercept absorbs)."""
    if space == "fbnet":
        raise ConfigError("fbnet is not a latbench search space: a kernel predictor cannot "
                          "price its networks; give its reference devices as a CSV (--reference)")
    if space != "nasbench201":
        raise ConfigError(f"unknown few-shot space {space!r}; known: {', '.join(SPACES)}")
    archs, specs, counts, fixed = nb201_kernel_counts(NasBench201())
    kinds = set(predictor.kinds)
    missing = sorted({s.kind for s in specs if s.kind not in kinds and s.key() not in fixed})
    owner = f"predictor {predictor.path}" if predictor.path else "the predictor"
    if missing:
        raise PredictorError(f"{owner} cannot price nasbench201: no model for kernel kind(s) "
                             f"{', '.join(missing)}, which its cells need")
    priced = [j for j, s in enumerate(specs) if s.kind in kinds]
    unseen = sorted({f"{o.kernel.partition(':')[0]} kernels with {o.feature}={o.value} "
                     f"(trained: {', '.join(o.trained)})"
                     for o in predictor.out_of_range([specs[j] for j in priced])
                     if isinstance(o, UnseenValue) and o.kernel not in fixed})
    if unseen:
        raise PredictorError(f"{owner} cannot price nasbench201: it was never trained on "
                             f"{'; '.join(unseen)}, which its cells need - its prices of them "
                             "would be guesses; measure the space's kernels first (`latbench "
                             "bench ops --plan nasbench201`) and fit on that dataset")
    unpriced = sorted({s.kind for s in specs if s.kind not in kinds})
    if unpriced:
        logger.info("%s has no model for %s: priced without them (the same in every "
                    "architecture)", owner, ", ".join(unpriced))
    ms = counts[:, priced] @ predictor.group_ms([[specs[j]] for j in priced])
    label = name or f"predictor:{predictor.platform}"
    return ReferenceTable(tuple(archs), (label,), (ms + predictor.call_overhead_ms_)[:, None],
                          exact=(label,))


def build_reference(space: str, csv: str | Path | None = None,
                    predictors: Sequence[str | Path] = (),
                    exclude: Sequence[str] = ()) -> ReferenceTable:
    """The reference table of the `fewshot` command: a wide CSV's devices (less `exclude`)
    and/or one column per kernel predictor folder (named `predictor:<folder>`), on the CSV's
    architectures when there is one, else on every architecture of the space."""
    from latbench.predictor.latency_predictor import LatencyPredictor

    if csv is None and not predictors:
        raise ConfigError("give reference devices: a CSV (--reference) and/or kernel "
                          "predictors (--reference-predictor)")
    table = None
    if csv is not None:
        table = load_reference(csv)
        for device in exclude:
            table = table.without(device)
        table = replace(table, archs=tuple(canonical_archs(space, table.archs)))
    for path in predictors:
        column = predictor_reference(LatencyPredictor.load(Path(path)), space,
                                     f"predictor:{path}")
        table = column if table is None else table.join(column)
    return table


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


STRUCTURE_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)  # prior weight where references disagree most
# Intervals from the nested residuals of NESTED_SAMPLES[0]..[1] samples; outside, from the plain
# leave-one-out ones (too few to refit without one; or so many that the weights chosen on them
# are hardly optimistic, and K refits of a K-sample fit grow as K^2).
NESTED_SAMPLES = (4, 20)


def reference_disagreement(tables: np.ndarray) -> np.ndarray:
    """Per architecture, in [0, 1]: how much the reference devices disagree on its cost
    relative to the other architectures - the spread over devices of its log latency (each
    device's centred on its mean), as a rank. Where they agree any mix of them says the same;
    where they disagree ten samples pick a side, and a model of the architecture's own
    structure is the safer prior."""
    from scipy.stats import rankdata

    if tables.shape[1] < 2:
        return np.zeros(len(tables))
    logs = np.log(np.maximum(tables, 1e-9))
    spread = (logs - logs.mean(axis=0)).std(axis=1)
    return (rankdata(spread) - 1) / max(len(spread) - 1, 1)


def interval_half_width(log_residuals: np.ndarray, level: float) -> float:
    """Half-width (in log ms) of a prediction interval at `level` from K leave-one-out
    residuals log(measured / predicted) (`FewShotPredictor` passes those of its whole
    procedure, nested): Student's t with K - 1 degrees of freedom times their
    robust scale (1.4826 x the median |residual|, the standard deviation for normal errors)
    times sqrt(1 + 1/K) - a new architecture's error plus the uncertainty of the fit itself,
    wide when K is small. Robust, because one sample whose neighbours all fell out of the fit
    can be predicted at a tenth of its latency without the others being off."""
    from scipy.stats import t

    level = check_level(level)
    k = len(log_residuals)
    scale = 1.4826 * float(np.median(np.abs(log_residuals)))
    return float(t.ppf((1 + level) / 2, k - 1)) * scale * float(np.sqrt(1 + 1 / k))


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

    With `structure` (default: the space's DEFAULT_STRUCTURE), the combined prediction of an
    architecture is shrunk towards the structure model (the `arch` basis: a sum over the
    cell's operations) by `structure_strength_` times the references' disagreement on it
    (`reference_disagreement`); the strength is the one of STRUCTURE_STRENGTHS whose
    leave-one-out predictions fit the samples best (0: no prior). `predict_interval` gives
    intervals from `loo_log_residuals_`: each sample's log(measured / predicted) by the whole
    procedure refitted without it (`interval_half_width`).

    Last, `level_` rescales the whole prediction so the median sample is predicted exactly
    (the median of measured / fitted over the samples): the averaged mixes can fit the
    samples' ranks and miss their level, and a median ratio is a level no single sample can
    drag (what it changed: docs/predictors.md, Few-shot).
    """

    def __init__(self, space: str, reference: ReferenceTable,
                 candidates: Sequence[str] | None = None, combine: str = "ensemble",
                 structure: bool | None = None) -> None:
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
        self.structure = DEFAULT_STRUCTURE[space] if structure is None else structure
        self._disagreement = reference_disagreement(
            self._tables if self._tables is not None else reference.ms) if self.structure \
            else None

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
        return self._fit_rows(rows, target, nested=True)

    def _fit_rows(self, rows: np.ndarray, target: np.ndarray, nested: bool) -> FewShotPredictor:
        """Fit on validated sample rows; with `nested` (and NESTED_SAMPLES samples), also the
        residuals of the whole procedure refitted without each sample in turn."""
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
        loo = sum(share[c] * fits[c].loo for c in self.candidates)
        self.structure_strength_ = 0.0
        if self.structure:
            prior = fits["arch"] if "arch" in fits else fit_full_mix(self._design("arch", rows),
                                                                     target)
            shrink = self._disagreement[rows]
            blends = [(1 - w * shrink) * loo + w * shrink * prior.loo
                      for w in STRUCTURE_STRENGTHS]
            best = int(np.argmin([_rmspe(b, target) for b in blends]))
            self.structure_strength_ = float(STRUCTURE_STRENGTHS[best])
            self.structure_coef_ = prior.coef
            loo = blends[best]
        self.level_ = 1.0
        fitted = self._combined(rows)
        self.level_ = float(np.exp(np.median(np.log(target / fitted))))
        self.loo_error_ = median_relative_error(loo, target)
        self.loo_log_residuals_ = np.log(target / np.maximum(loo, 1e-12))
        if nested and NESTED_SAMPLES[0] <= len(rows) <= NESTED_SAMPLES[1]:
            self.loo_log_residuals_ = self._nested_residuals(rows, target)
        self.n_samples_ = len(rows)
        return self

    def _nested_residuals(self, rows: np.ndarray, target: np.ndarray) -> np.ndarray:
        """log(measured / predicted) of each sample by the whole procedure (mixes, their
        weights, the stacking, the prior's strength) fitted to the other samples: the
        leave-one-out predictions inside one fit chose those weights, so their residuals are
        optimistic."""
        every = np.arange(len(rows))
        out = np.empty(len(rows))
        for i in every:
            inner = copy.copy(self)._fit_rows(rows[every != i], target[every != i], nested=False)
            out[i] = np.log(target[i] / inner._combined(rows[i:i + 1])[0])
        return out

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
        self.structure_strength_ = 0.0
        self.level_ = 1.0
        self.__dict__.pop("loo_log_residuals_", None)
        self.n_samples_ = len(target)
        return self

    def _combined(self, rows: np.ndarray | slice) -> np.ndarray:
        self._check_fitted()
        total = sum(self.weights_by_candidate_[c] * (self._design(c, rows) @ coef)
                    for c, coef in self.coef_.items())
        if self.structure_strength_ > 0:
            shrink = self.structure_strength_ * self._disagreement[rows]
            total = (1 - shrink) * total + shrink * (self._design("arch", rows)
                                                     @ self.structure_coef_)
        return self._clip(np.asarray(total, dtype=np.float64) * self.level_)

    def predict_all(self) -> np.ndarray:
        """Predicted ms of every architecture of the reference table, in its order."""
        return self._combined(slice(None))

    def predict(self, archs: Sequence[str]) -> np.ndarray:
        self._check_fitted()
        return self._combined(self.reference.rows(list(archs)))

    def predict_interval(self, archs: Sequence[str] | None = None,
                         level: float = DEFAULT_LEVEL) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
        """Predictions with the low and high end of an interval at `level` (every reference
        architecture when `archs` is None): the same relative width for every architecture,
        from the samples' leave-one-out residuals (`interval_half_width`)."""
        self._check_fitted()
        if not hasattr(self, "loo_log_residuals_"):
            raise PredictorError("intervals need a few-shot fit (fit_all keeps no residuals)")
        predicted = self.predict_all() if archs is None else self.predict(archs)
        half = interval_half_width(self.loo_log_residuals_, level)
        return predicted, predicted * np.exp(-half), predicted * np.exp(half)

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


SUGGEST_VARIANCE = 0.99  # principal components of the reference space kept by `suggest_samples`
SUGGEST_TRIM = 0.9  # architectures beyond this quantile of distance from the centre: not chosen


def whitened(values: np.ndarray, variance: float = 1.0) -> np.ndarray:
    """Rows of `values` (columns standardised) in the principal components that carry
    `variance` of it, each scaled to unit variance: distances there are Mahalanobis ones."""
    n = len(values)
    spread = values.std(axis=0)
    x = (values - values.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    u, sv, _ = np.linalg.svd(x, full_matrices=False)
    share = np.cumsum(sv ** 2) / max(float(np.sum(sv ** 2)), 1e-12)
    keep = min(int(np.searchsorted(share, variance - 1e-12)) + 1, u.shape[1])
    keep = min(keep, int(np.sum(sv > 1e-9 * max(float(sv[0]), 1e-300))) or 1)
    return u[:, :keep] * np.sqrt(n)


def suggest_samples(space: str, reference: ReferenceTable, k: int) -> np.ndarray:
    """Rows of the K architectures most worth measuring for this reference mix (deterministic):
    a maximin design in the whitened space of the standardised log latencies of the reference
    devices (denoised) - the most central architecture first, then each time the one farthest
    from every pick so far - so the samples span both the latency range (the references'
    common direction) and the directions in which the references disagree (which tell the
    mixes apart). Never chosen: the farthest 10% of architectures from the centre of that
    space (outliers whose errors would dominate a fit on ten samples; a greedy D-optimal
    design, which seeks them, lost points on devices unlike every reference), and the farthest
    10% in the whitened space of the structure model's features (`arch_features`): a sample of
    a rare structure - a NAS-Bench-201 cell whose output is cut off, 2% of the space - is one
    the structure model cannot predict from the other nine, its leave-one-out error then
    condemns that model, and on a device unlike every reference it is the model that holds."""
    n = len(reference.archs)
    if not 1 <= k <= n:
        raise ConfigError(f"cannot suggest {k} architectures: the reference has {n}")
    white = whitened(np.log(np.maximum(reference.denoised(space).ms, 1e-9)), SUGGEST_VARIANCE)
    centre = np.sum(white ** 2, axis=1)
    rarity = np.sum(whitened(arch_features(space, reference.archs)) ** 2, axis=1)
    allowed = ((centre <= np.quantile(centre, SUGGEST_TRIM))
               & (rarity <= np.quantile(rarity, SUGGEST_TRIM)))
    if not np.any(allowed):
        allowed = centre <= np.quantile(centre, SUGGEST_TRIM)
    chosen = [int(np.argmin(np.where(allowed, centre, np.inf)))]
    nearest = np.sum((white - white[chosen[0]]) ** 2, axis=1)
    while len(chosen) < k:
        pool = allowed if np.any(allowed & (nearest > 0)) else np.ones(n, dtype=bool)
        pick = int(np.argmax(np.where(pool, nearest, -1.0)))
        if nearest[pick] <= 0:  # duplicates left only: any row not yet chosen
            pick = int(np.setdiff1d(np.arange(n), chosen)[0])
        chosen.append(pick)
        nearest = np.minimum(nearest, np.sum((white - white[pick]) ** 2, axis=1))
        nearest[chosen] = 0.0
    return np.array(chosen)


def leave_one_device_out(space: str, reference: ReferenceTable, ks: Sequence[int],
                         seeds: Sequence[int], selection: str = "random",
                         devices: Sequence[str] | None = None,
                         candidates: Sequence[str] | None = None,
                         structure: bool | None = None,
                         level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """For each device as the unseen one (the others as reference), K and seed: fit on K
    samples, score on every other architecture. Rows: device, k, seed, spearman, within10,
    rmspe_pct, coverage (share of them inside the interval at `level`), candidate.
    `selection`: `random`, `stratified` or `suggest` (`suggest_samples`: deterministic, one
    row per device and K whatever the seeds); `candidates`: the bases (default: the space's);
    `structure`: the structure prior (default: the space's)."""
    rows = []
    for device in devices or reference.devices:
        others = reference.without(device)
        truth = reference.column(device)
        model = FewShotPredictor(space, others, candidates, structure=structure)
        for k in ks:
            for seed in seeds[:1] if selection == "suggest" else seeds:
                picked = (suggest_samples(space, others, k) if selection == "suggest" else
                          select_samples(others, k, np.random.default_rng(seed), selection))
                rows.append({"space": space, "device": device, "k": k, "seed": seed,
                             "selection": selection,
                             **score_fit(model, others.archs, truth, picked, level)})
    return pd.DataFrame(rows)


def score_fit(model: FewShotPredictor, archs: Sequence[str], truth: np.ndarray,
              picked: np.ndarray, level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """Fit `model` on the picked rows of `archs` / `truth` and score it on the others:
    spearman, within10, rmspe_pct, interval coverage at `level`, candidate, structure
    strength."""
    from latbench.predictor.evaluate import error_metrics

    model.fit([archs[i] for i in picked], truth[picked])
    held = np.ones(len(truth), dtype=bool)
    held[picked] = False
    predicted, lo, hi = model.predict_interval([a for a, h in zip(archs, held, strict=True)
                                                if h], level)
    m = error_metrics(predicted, truth[held])
    inside = (truth[held] >= lo) & (truth[held] <= hi)
    return {"spearman": m["spearman"], "within10": m["within10"], "rmspe_pct": m["rmspe_pct"],
            "coverage": float(inside.mean()), "candidate": model.candidate_,
            "structure_strength": model.structure_strength_}


def predict_csv(space: str, reference: Path | None, samples: Path, query: Path, out: Path,
                exclude: Sequence[str] = (), predictors: Sequence[Path] = (),
                level: float = DEFAULT_LEVEL, structure: bool | None = None,
                ) -> tuple[pd.DataFrame, FewShotPredictor]:
    """The `latbench predictor fewshot` command: reference devices (`build_reference`),
    samples CSV (arch, latency_ms) and query CSV (arch) in, `arch,predicted_ms,lo_ms,hi_ms` for
    every query row out (the interval at `level`); the fitted model says what the samples
    decided."""
    from latbench.bench.store import atomic_write_text

    level = check_level(level)  # a bad level fails before any work
    table = build_reference(space, reference, predictors, exclude)
    sample_frame = _read_columns(samples, ("arch", "latency_ms"))
    query_frame = _read_columns(query, ("arch",))
    model = FewShotPredictor(space, table, structure=structure).fit(
        canonical_archs(space, sample_frame["arch"].astype(str).tolist()),
        _latencies(sample_frame, samples))
    predicted, lo, hi = model.predict_interval(
        canonical_archs(space, query_frame["arch"].astype(str).tolist()), level)
    result = pd.DataFrame({"arch": query_frame["arch"].astype(str), "predicted_ms": predicted,
                           "lo_ms": lo, "hi_ms": hi})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, result.to_csv(index=False))
    return result, model


def suggest_csv(space: str, reference: Path | None, k: int, out: Path,
                exclude: Sequence[str] = (), predictors: Sequence[Path] = ()) -> list[str]:
    """The `fewshot --suggest K` command: the K architectures to measure for these reference
    devices (`suggest_samples`), written as a CSV with a column `arch`."""
    from latbench.bench.store import atomic_write_text

    table = build_reference(space, reference, predictors, exclude)
    archs = [table.archs[i] for i in suggest_samples(space, table, k)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, pd.DataFrame({"arch": archs}).to_csv(index=False))
    return archs


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
