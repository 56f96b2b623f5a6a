"""LatencyPredictor: the network-level predictor, one object from fit to save, load and predict.

It owns everything a network's estimate depends on: the per-kernel model (a KernelPredictor of
the zoo), the composition into networks (per-kind scales and terms, fitted on the dataset's
measured networks), the fusion rules that split a network into kernels, the runtime's per-call
overhead, the training range of every kernel kind and what it was trained for (device, runtime,
settings, statistic, dataset). `fit` learns all of it from a dataset, `save`/`load` write and
read a predictor folder (predictor/io.py), `predict` prices a model file or a kernel list.

How a model file is split: a fused block (an MBConv, `bench.kernels.BLOCK_KINDS`) is priced as
one kernel when the predictor was trained on that very kernel (its key is in `block_keys_`),
else as the primitives a runtime executes. A space's architecture (its kernels measured whole
by the plan) and its export then price identically, while a block the predictor never measured
is not extrapolated from the handful of block shapes a plan holds, but priced from the
primitive kinds, which plans sample broadly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latbench.bench.ops import OpSpec
from latbench.bench.platform import (
    Platform,
    PlatformChoice,
    choose_platform,
    record_platform,
)
from latbench.bench.stats import DEFAULT_STATISTIC, RECORD_STATISTICS
from latbench.errors import DatasetError, PlatformError, PredictorError
from latbench.predictor.features import (
    CATEGORY_FIELDS,
    range_values,
    training_pairs,
    training_ranges,
    training_values,
)
from latbench.predictor.intervals import (
    DEFAULT_LEVEL,
    check_level,
    key_digest,
    network_interval,
    usable,
)
from latbench.predictor.memory import MemoryModel, MemoryPrediction, fit_dataset_memory
from latbench.predictor.model_level import (
    COMPOSITION_TERMS,
    DEFAULT_MARGIN,
    OPTIONAL_TERMS,
    STREAMED,
    Composition,
    NetworkPrediction,
    OutOfRange,
    UnseenValue,
    runtime_terms,
    solve_composition,
)
from latbench.predictor.models import KernelPredictor, check_params, get_predictor_class
from latbench.predictor.training import (
    CV_FOLDS,
    CV_SEED,
    calibration_networks,
    can_price,
    cross_validate,
    dataset_platforms,
    select_records,
    statistic_gaps,
)

if TYPE_CHECKING:
    import pandas as pd

    from latbench.bench.kernels import ModelKernels, ShapeMap

# The composition terms need networks of varied size to be told apart from the kind scales.
MIN_NETWORKS_FOR_TERMS = 10
# Calibration networks the robust composition fit gave less weight than this are listed by
# `predictor fit`: far off the fit of the rest (a slow phase, or a network it prices badly).
DOWNWEIGHTED = 0.5
# Manifest entries the object itself writes; everything else is what it was trained for (info_).
_OWN_FIELDS = frozenset({
    "format", "format_version", "predictor", "params", "feature_version", "feature_names",
    "call_overhead_ms", "kind_scale", "composition_terms", "composition", "kinds", "fusion",
    "training_ranges", "fit_summary", "library_versions", "created", "block_keys", "memory",
    "kernel_residuals", "trained_kernels", "training_values"})
_LEARNED = ("kernels_", "composition_", "attach_", "fusion_rules_", "call_overhead_ms_",
            "training_ranges_", "block_keys_", "info_", "fit_summary_", "memory_",
            "kernel_residuals_", "trained_kernels_", "training_values_")
NO_RESIDUALS = ("the predictor holds no residual quantiles to build an interval from (saved "
                "before latbench kept them, or built from kernels fitted elsewhere); refit it "
                "with `latbench predictor fit` for an interval")


def fit_composition(kernels: Any, networks: Sequence[tuple[str, list[OpSpec], float]],
                    call_overhead_ms: float, terms: Sequence[str] = COMPOSITION_TERMS,
                    runtime: str | None = None, *, delegate: str = "",
                    threads: int = 1) -> Composition:
    """The composition fitted on the calibration `networks` (key, kernels, ms) that `kernels`
    can price: the `terms` that apply to `runtime` under `delegate` at `threads`
    (`runtime_terms`) only with MIN_NETWORKS_FOR_TERMS of them, the optional ones only where
    they lower the leave-one-out error; none without networks."""
    networks = [n for n in networks if can_price(kernels, list(n[1]))]
    if not networks:
        return Composition()
    applicable = runtime_terms(terms, runtime, delegate=delegate, threads=threads)
    composition = solve_composition(
        kernels, [(k, ms) for _, k, ms in networks], call_overhead_ms,
        terms=applicable if len(networks) >= MIN_NETWORKS_FOR_TERMS else (),
        optional=OPTIONAL_TERMS)
    composition.summary["keys"] = [key for key, _, _ in networks]
    if len(applicable) < len(terms):
        composition.summary["terms_not_for_runtime"] = [t for t in terms
                                                        if t not in applicable]
    return composition


def dataset_summary(data: str | Path, ops: pd.DataFrame, card: Mapping[str, Any]
                    ) -> dict[str, Any]:
    """What a predictor's manifest records of the dataset it was fitted on (`ops`: the op
    records it used)."""
    from latbench.bench.campaign import median_probe_ms

    facts = card.get("device_facts") or {}
    return {"path": str(Path(data).resolve()), "n_records": int(len(ops)),
            "reference_probe_ms": median_probe_ms(ops),
            "cpu_model": facts.get("cpu_model"), "cpu_features": facts.get("cpu_features"),
            "created": card.get("created")}


class LatencyPredictor:
    """A network's latency: its kernels' predictions, composed, plus one call overhead.

    Configuration (constructor): the kernel model (a registered name with `params`, or a
    KernelPredictor, which `fit` clones), whether to calibrate the composition on the
    dataset's networks and with which terms, the folds of the per-kind cross-validation
    (0: none).
    Learned by `fit` (names end in `_`): `kernels_`, `composition_`, `attach_` (fusion attach
    set, None for the default split), `fusion_rules_` (the rules' JSON), `call_overhead_ms_`,
    `training_ranges_`, `block_keys_` (the fused-block kernels it was trained on, priced whole
    in model files), `info_` (device, runtime, runtime_version, settings, platform,
    run_settings, statistic, dataset, and what else a maker records, e.g. `lut`),
    `fit_summary_`, `kernel_residuals_` (per kind the quantiles of the cross-validation's
    out-of-fold log(measured / predicted), what intervals are built from; None when unknown),
    `trained_kernels_` (digests of the kernel keys it was trained on: those add no kernel
    error to an interval; None when unknown).
    """

    def __init__(self, kernel_model: str | Any = "xgboost",
                 params: Mapping[str, Any] | None = None, *, calibrate: bool = True,
                 composition_terms: Sequence[str] = COMPOSITION_TERMS,
                 cv_folds: int = CV_FOLDS, seed: int = CV_SEED) -> None:
        if isinstance(kernel_model, str):
            kernel_model = get_predictor_class(kernel_model)(
                **check_params(kernel_model, params))
        elif params:
            raise PredictorError("give params with a predictor name, not with a "
                                 "KernelPredictor instance")
        if cv_folds != 0 and cv_folds < 2:
            raise PredictorError(f"cv_folds must be 0 (no cross-validation) or at least 2, "
                                 f"got {cv_folds}")
        self.kernel_model = kernel_model
        self.calibrate = calibrate
        self.composition_terms = tuple(composition_terms)
        self.cv_folds = cv_folds
        self.seed = seed
        self.path: Path | None = None  # the folder it was loaded from or saved to

    # --- building ---------------------------------------------------------------------------
    def fit(self, data: str | Path, *, statistic: str = DEFAULT_STATISTIC,
            device: str | None = None, runtime: str | None = None,
            fusion: Any = None, platform: PlatformChoice | None = None) -> LatencyPredictor:
        """Learn everything from the dataset at `data`: kernel models on the op records of one
        platform (`platform`, narrowed by `device` and `runtime`; a dataset of several needs the
        choice, see `fit_platforms`), the composition on the platform's measured networks (if
        any and `calibrate`; the terms only with MIN_NETWORKS_FOR_TERMS of them, the optional
        ones only where they lower the leave-one-out error), the training ranges and the
        per-kind cross-validated error. Fusion rules (`fusion`, a FusionRules, else the
        dataset card's) decide how networks are split into kernels. Whatever an earlier fit
        learned is reset first."""
        from sklearn.base import clone

        from latbench.bench.fusion import attach_from_rules, rules_from_card
        from latbench.bench.store import LatencyDataset

        self._reset()
        if statistic not in RECORD_STATISTICS:
            raise PredictorError(f"unknown statistic {statistic!r}; choose one of "
                                 f"{', '.join(RECORD_STATISTICS)}")
        dataset = LatencyDataset.open(Path(data))
        records = dataset.records()
        if records.empty:
            raise DatasetError(f"dataset at {data} has no records")
        ops = select_records(records, device, runtime, choice=platform,
                             owner=f"dataset {data}")
        specs, kernel_ms, overhead = training_pairs(ops, statistic)
        kernels = clone(self.kernel_model).fit(specs, kernel_ms)
        card = dataset.card
        rules = fusion or rules_from_card(card)
        attach = attach_from_rules(rules) if rules is not None else None
        networks = calibration_networks(records, card, ops, statistic, attach) \
            if self.calibrate else []
        first = ops.iloc[0]
        own = record_platform(first)
        composition = fit_composition(kernels, networks, overhead, self.composition_terms,
                                      own.runtime, delegate=own.delegate, threads=own.threads)
        info = {
            "device": str(first["device"]),
            "runtime": str(first["runtime"]),
            "runtime_version": str(first["runtime_version"]),
            "settings": str(first["settings"]),
            "platform": own.to_json(),
            "run_settings": _platform_settings(card.get("run_settings", {}), own),
            "statistic": statistic,
            "statistic_gaps": statistic_gaps(records, ops, statistic),
            "dataset": dataset_summary(data, ops, card),
        }
        cv = cross_validate(self.kernel_model, specs, kernel_ms, self.cv_folds, self.seed) \
            if self.cv_folds else {}
        self._set(kernels, composition, attach,
                  None if rules is None else rules.to_json(), overhead,
                  training_ranges(specs), info, _block_keys(specs), training_values(specs))
        self.memory_ = fit_dataset_memory(records, card, first)  # predictor/memory.py
        # the out-of-fold quantiles go to the manifest's own field, not the printed summary
        self.kernel_residuals_ = {kind: entry.pop("ratio_quantiles") for kind, entry in
                                  cv.items() if "ratio_quantiles" in entry}
        self.trained_kernels_ = frozenset(key_digest(s.key()) for s in specs)
        self.fit_summary_ = self._summary(cv)
        return self

    @classmethod
    def from_kernels(cls, kernels: Any, *, call_overhead_ms: float = 0.0,
                     composition: Composition | None = None,
                     attach: frozenset[tuple[str, str]] | None = None,
                     info: Mapping[str, Any] | None = None,
                     ranges_from: Sequence[OpSpec] = ()) -> LatencyPredictor:
        """A predictor around an already fitted kernel predictor (a lookup table, a model
        fitted elsewhere): no composition unless given, training ranges (and the fused blocks
        priced whole) of `ranges_from`."""
        if not hasattr(kernels, "predict"):
            raise PredictorError(f"{type(kernels).__name__} cannot predict kernels")
        out = cls(kernels, cv_folds=0)
        out._set(kernels, composition or Composition(), attach, None, call_overhead_ms,
                 training_ranges(list(ranges_from)), dict(info or {}), _block_keys(ranges_from),
                 training_values(list(ranges_from)) if ranges_from else None)
        return out

    def _set(self, kernels: Any, composition: Composition, attach: Any, rules: Any,
             overhead: float, ranges: dict[str, dict[str, tuple[float, float]]],
             info: dict[str, Any], block_keys: frozenset[str] = frozenset(),
             values: dict[str, dict[str, list[str]]] | None = None) -> None:
        self.kernels_ = kernels
        self.composition_ = composition
        self.attach_ = attach
        self.fusion_rules_ = rules
        self.call_overhead_ms_ = float(overhead)
        self.training_ranges_ = ranges
        self.block_keys_ = block_keys
        self.info_ = info
        self.fit_summary_: dict[str, Any] | None = None
        self.memory_ = MemoryModel()  # peak memory: uncalibrated unless fitted or loaded
        self.kernel_residuals_: dict[str, dict[str, Any]] | None = None  # intervals: unknown
        self.trained_kernels_: frozenset[str] | None = None
        # per kind, the CATEGORY_FIELDS values trained on (None: saved before latbench kept them)
        self.training_values_ = values

    def _reset(self) -> None:
        for name in _LEARNED:
            if hasattr(self, name):
                delattr(self, name)
        self.path = None

    def _check_fitted(self) -> None:
        if not hasattr(self, "kernels_"):
            raise PredictorError("LatencyPredictor is not fitted yet")

    # --- predicting ---------------------------------------------------------------------------
    def predict(self, network: str | Path | bytes | Sequence[OpSpec], *,
                input_shapes: ShapeMap | None = None,
                allow_partial: bool = False,
                interval_level: float = DEFAULT_LEVEL) -> NetworkPrediction:
        """Latency of a network: a model file (path or bytes, split by `parse`) or a list of
        kernels (priced as given), with its per-kernel breakdown, which kernels lie inside their
        kind's training range, what a partial split left out (`allow_partial`) and the
        interval at `interval_level` (see `interval`)."""
        self._check_fitted()
        level = check_level(interval_level)
        parsed = None
        if isinstance(network, str | Path | bytes):
            parsed = self.parse(network, input_shapes=input_shapes, allow_partial=allow_partial)
            specs = list(parsed.kernels)
        else:
            specs = list(network)
        self._check_precision(specs)
        per_kernel = self.kernel_ms(specs)
        point = NetworkPrediction(float(per_kernel.sum()) + self.call_overhead_ms_,
                                  self.call_overhead_ms_,
                                  tuple(zip(specs, (float(v) for v in per_kernel), strict=True)),
                                  tuple(self.out_of_range(specs)),
                                  tuple(self.in_range(specs)),
                                  tuple(parsed.skipped.items()) if parsed else (),
                                  parsed.problems if parsed else ())
        return self.interval(point, level)

    @property
    def has_intervals(self) -> bool:
        """Whether its predictions carry an interval (see `interval`)."""
        self._check_fitted()
        return self.kernel_residuals_ is not None or usable(
            self.composition_.summary.get("loo_ratio_quantiles"))

    def interval(self, prediction: NetworkPrediction, level: float = DEFAULT_LEVEL
                 ) -> NetworkPrediction:
        """`prediction` with its interval at `level` (predictor/intervals.py): from the
        kernels' out-of-fold residuals per kind and the calibration networks' leave-one-out
        residuals, widened by the share of time outside the training range (`coverage`) and
        for few calibration networks. A predictor holding neither gives None and says why."""
        from dataclasses import replace

        level = check_level(level)
        if not self.has_intervals:
            return replace(prediction, interval_ms=None, interval_level=None,
                           interval_note=NO_RESIDUALS)
        loo = self.composition_.summary.get("loo_ratio_quantiles")
        composition = loo if usable(loo) else None
        kernels = {kind: q for kind, q in (self.kernel_residuals_ or {}).items() if usable(q)}
        interval = network_interval(prediction.predicted_ms,
                                    [(spec.kind, ms, self._trained(spec))
                                     for spec, ms in prediction.kernels],
                                    prediction.coverage, kernels, composition, level)
        return replace(prediction, interval_ms=interval, interval_level=level,
                       interval_note="" if composition is not None else
                       "fewer than two calibration networks: the composition's spread is a "
                       "default")

    def _trained(self, spec: OpSpec) -> bool:
        """Whether the kernel model was trained on this very kernel (unknown: no)."""
        return self.trained_kernels_ is not None and key_digest(spec.key()) in \
            self.trained_kernels_

    def _check_precision(self, specs: Sequence[OpSpec]) -> None:
        """A network that computes in none of this predictor's precision is another platform:
        its INT8 kernels priced by an FP32 predictor would be several times off, silently. (A
        quantized model keeps a few float kernels - ops its quantizer leaves in float - so a
        network is refused only when its precision appears nowhere in it.)"""
        from latbench.bench.platform import precision_name

        precision = self.platform.precision
        dtypes = {s.dtype for s in specs}
        if dtypes and precision not in dtypes:
            found = ", ".join(precision_name(d) for d in sorted(dtypes))
            owner = f"predictor {self.path}" if self.path else "this predictor"
            raise PlatformError(
                f"the network computes in {found}; {owner} is fitted for "
                f"{precision_name(precision)} ({self.platform}): measure a dataset with "
                f"--precision {precision_name(sorted(dtypes)[0])} and fit on it")

    def predict_memory(self, model: str | Path | bytes, *,
                       input_shapes: ShapeMap | None = None) -> MemoryPrediction:
        """Peak memory of a model file on this predictor's runtime (predictor/memory.py)."""
        self._check_fitted()
        return self.memory_.predict(model, input_shapes)

    def kernel_ms(self, specs: Sequence[OpSpec]) -> np.ndarray:
        """Each kernel's contribution to a network (`specs`: its kernels in execution order, as
        the pool-switch term reads them): its prediction, composed (scales, terms). A network's
        latency is their sum plus `call_overhead_ms_`."""
        self._check_fitted()
        specs = list(specs)
        if not specs:
            return np.zeros(0)
        return self.composition_.compose(self.kernels_.predict(specs), specs)

    def group_ms(self, groups: Sequence[Sequence[OpSpec]]) -> np.ndarray:
        """Each group's kernels priced as a network of their own (no call overhead), with one
        kernel prediction for all: the layers of a lookup table, or kernels each on its own
        (groups of one), whose neighbours in a flat list are no neighbours in a network."""
        self._check_fitted()
        groups = [list(g) for g in groups]
        flat = [s for g in groups for s in g]
        raw = self.kernels_.predict(flat) if flat else np.zeros(0)
        bounds = np.cumsum([0, *map(len, groups)])
        return np.array([float(self.composition_.compose(raw[a:b], g).sum()) if g else 0.0
                         for g, a, b in zip(groups, bounds[:-1], bounds[1:], strict=True)])

    def parse(self, model: str | Path | bytes, *, input_shapes: ShapeMap | None = None,
              allow_partial: bool = False) -> ModelKernels:
        """The kernels of a model file as this predictor prices it: split by its runtime's
        fusion rules, fused blocks whole where it was trained on them (module docstring)."""
        from latbench.bench.kernels import DEFAULT_ATTACH
        from latbench.bench.model_files import model_kernels

        self._check_fitted()
        return model_kernels(model, attach=self.attach_ or DEFAULT_ATTACH,
                             group=self.prices_whole, input_shapes=input_shapes,
                             allow_partial=allow_partial)

    def split(self, model: str | Path | bytes) -> list[OpSpec]:
        """The kernels of a whole model file as this predictor prices it (see `parse`)."""
        return list(self.parse(model).kernels)

    def prices_whole(self, block: OpSpec) -> bool:
        """Whether a fused block found in a model file is priced as one kernel."""
        return block.key() in self.block_keys_

    def out_of_range(self, specs: Sequence[OpSpec]) -> list[OutOfRange | UnseenValue]:
        """Kernels with a shape field or FLOPs outside what their kind was trained on, or a
        computation (pool type, activation function) their kind was never trained on."""
        out: list[OutOfRange | UnseenValue] = []
        for spec in specs:
            ranges = self.training_ranges_.get(spec.kind)
            if not ranges:
                continue
            for name, value in range_values(spec).items():
                if name in ranges and not ranges[name][0] <= value <= ranges[name][1]:
                    out.append(OutOfRange(spec.key(), name, value, *ranges[name]))
            trained = (self.training_values_ or {}).get(spec.kind, {})
            for name in CATEGORY_FIELDS.get(spec.kind, ()):
                value = str(getattr(spec, name))
                if name in trained and value not in trained[name]:
                    out.append(UnseenValue(spec.key(), name, value, tuple(trained[name])))
        return out

    def in_range(self, specs: Sequence[OpSpec]) -> list[bool | None]:
        """Per kernel: inside its kind's training range (every field and the FLOPs), or None
        when the predictor holds no range for the kind (saved without ranges)."""
        return [None if not self.training_ranges_.get(spec.kind)
                else not self.out_of_range([spec]) for spec in specs]

    # --- what it was trained for --------------------------------------------------------------
    @property
    def kinds(self) -> list[str]:
        self._check_fitted()
        return list(self.kernels_.kinds)

    @property
    def n_train(self) -> dict[str, int]:
        self._check_fitted()
        return dict(self.kernels_.n_train_)

    @property
    def platform(self) -> Platform:
        """The platform it was fitted on (read from the older manifest fields for predictors
        saved before platforms: their run settings' threads, fp32)."""
        from latbench.predictor.io import manifest_platform

        return manifest_platform(self.info_, f"predictor {self.path or ''}".strip())

    @property
    def device(self) -> str:
        return str(self.info_.get("device") or "")

    @property
    def runtime(self) -> str:
        return str(self.info_.get("runtime") or "")

    @property
    def statistic(self) -> str:
        """The statistic the kernels were trained on (median_ms when the maker did not say)."""
        return str(self.info_.get("statistic") or "median_ms")

    @property
    def calibration_keys(self) -> list[str]:
        return list(self.composition_.summary.get("keys") or [])

    @property
    def reference_probe_ms(self) -> float | None:
        """Median reference probe of the dataset's campaign: the machine's speed level then."""
        return (self.info_.get("dataset") or {}).get("reference_probe_ms")

    def run_settings(self) -> Any:
        """The RunSettings the training kernels were measured with (to measure alike), at
        its platform's thread count."""
        from dataclasses import replace

        from latbench.bench.runners import RunSettings

        raw = self.info_.get("run_settings")
        if not isinstance(raw, dict) or not raw:
            where = f" {self.path}" if self.path else ""
            raise PredictorError(f"predictor{where} has no run_settings; refit it with this "
                                 "latbench")
        try:
            return replace(RunSettings(**raw), threads=self.platform.threads)
        except TypeError as exc:
            raise PredictorError(f"predictor run_settings {raw} are not RunSettings: "
                                 f"{exc}") from exc

    def statistic_gap(self, statistic: str) -> float:
        """How far `statistic` runs above the statistic this predictor learned: the 95th
        percentile of their ratio on its dataset's networks (1.0 for its own). A search whose
        budget is about the median divides by it, so a predictor of the minimum still keeps
        the winner's median inside the budget."""
        if statistic == self.statistic:
            return 1.0
        gap = (self.info_.get("statistic_gaps") or {}).get(statistic)
        if not gap:
            where = f" {self.path}" if self.path else ""
            raise PredictorError(f"predictor{where} learned {self.statistic} and does not know "
                                 f"how {statistic} relates to it (fitted before latbench kept "
                                 f"that, or its dataset has no {statistic}); refit it, or state "
                                 f"the budget in {self.statistic}")
        return float(gap["p95"])

    def safety_margin(self, default: float = DEFAULT_MARGIN) -> float:
        """How much faster than a budget a search should aim (see Composition.safety_margin)."""
        self._check_fitted()
        return self.composition_.safety_margin(default)

    def _summary(self, cv: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """What `predictor fit` reports: per kind the kernels, cross-validated error and
        training range; the composition's calibration error; the safety margin."""
        composition = self.composition_.summary
        calibration = {key: composition[key] for key in (
            "networks", "rmspe_pct_sum", "rmspe_pct_composed", "rmspe_pct_loo",
            "underprediction_p95_loo_pct") if key in composition}
        if self.composition_.terms:
            calibration["terms"] = dict(self.composition_.terms)
        if at_bound := self.composition_.scales_at_bound():
            calibration["scales_at_bound"] = at_bound
        if "weights" in composition:
            calibration["downweighted"] = {
                key: weight for key, weight in zip(composition["keys"], composition["weights"],
                                                   strict=True) if weight < DOWNWEIGHTED}
        return {
            "kinds": {kind: {"kernels": n, "cv": cv.get(kind),
                             "range": {k: list(v) for k, v in
                                       self.training_ranges_.get(kind, {}).items()},
                             "values": (self.training_values_ or {}).get(kind, {})}
                      for kind, n in sorted(self.kernels_.n_train_.items())},
            "calibration": calibration,
            "safety_margin": self.safety_margin(),
            "call_overhead_ms": self.call_overhead_ms_,
            "memory": dict(self.memory_.calibration),
        }

    # --- files ------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """What `save` writes into manifest.json besides the format fields and model files."""
        from latbench.bench.fusion import attach_to_json

        self._check_fitted()
        manifest = {
            **self.info_,
            "call_overhead_ms": self.call_overhead_ms_,
            "kind_scale": dict(self.composition_.kind_scale),
            "composition_terms": dict(self.composition_.terms),
            "composition": dict(self.composition_.summary),
            "training_ranges": {kind: {k: list(v) for k, v in ranges.items()}
                                for kind, ranges in self.training_ranges_.items()},
        }
        if self.block_keys_:
            manifest["block_keys"] = sorted(self.block_keys_)
        if self.attach_ is not None:
            manifest["fusion"] = {"attach": attach_to_json(self.attach_)}
            if self.fusion_rules_ is not None:
                manifest["fusion"]["rules"] = self.fusion_rules_
        if self.fit_summary_ is not None:
            manifest["fit_summary"] = self.fit_summary_
        manifest["memory"] = self.memory_.to_json()
        if self.kernel_residuals_ is not None:
            manifest["kernel_residuals"] = self.kernel_residuals_
        if self.trained_kernels_ is not None:
            manifest["trained_kernels"] = sorted(self.trained_kernels_)
        if self.training_values_ is not None:
            manifest["training_values"] = self.training_values_
        return manifest

    def save(self, path: str | Path) -> Path:
        """Write the predictor folder `path` (atomically replacing a predictor there)."""
        from latbench.predictor.io import write_predictor

        self._check_fitted()
        if not isinstance(self.kernels_, KernelPredictor):
            raise PredictorError(f"{type(self.kernels_).__name__} is not a registered kernel "
                                 "predictor and cannot be saved")
        self.path = write_predictor(Path(path), self.kernels_, self.manifest())
        return self.path

    @classmethod
    def load(cls, path: str | Path, platform: PlatformChoice | None = None) -> LatencyPredictor:
        """The predictor saved in folder `path` (by this or an earlier latbench); of a folder
        holding several platforms (`save_platforms`), the one `platform` chooses. A platform
        the folder lacks, or several left to choose from, is a PlatformError naming them."""
        from latbench.bench.fusion import attach_from_json
        from latbench.predictor.io import MANIFEST, read_kernels, read_manifest, read_platforms

        path = Path(path)
        folders = read_platforms(path)
        path = folders[choose_platform(folders, platform, f"predictor {path}")]
        manifest = read_manifest(path)
        kernels = read_kernels(path, manifest)
        unknown = sorted(set(manifest.get("composition_terms") or {}) - set(COMPOSITION_TERMS))
        if unknown:
            raise PredictorError(f"{path / MANIFEST}: field 'composition_terms' names unknown "
                                 f"term {unknown[0]!r}; known: {', '.join(COMPOSITION_TERMS)}")
        composition = Composition(
            {k: float(v) for k, v in (manifest.get("kind_scale") or {}).items()},
            {k: float(v) for k, v in (manifest.get("composition_terms") or {}).items()},
            dict(manifest.get("composition") or {"networks": 0}))
        if STREAMED in composition.terms and composition.weight_cache_mb is None:
            raise PredictorError(f"{path / MANIFEST}: term {STREAMED!r} needs "
                                 "'weight_cache_mb' in field 'composition'")
        fusion = manifest.get("fusion") or {}
        block_keys = manifest.get("block_keys") or []
        if not isinstance(block_keys, list) or not all(isinstance(k, str) for k in block_keys):
            raise PredictorError(f"{path / MANIFEST}: field 'block_keys' must be a list of "
                                 f"kernel keys, got {type(block_keys).__name__}")
        out = cls(kernels, cv_folds=0)
        out._set(kernels, composition,
                 attach_from_json(fusion["attach"]) if "attach" in fusion else None,
                 fusion.get("rules"), manifest["call_overhead_ms"],
                 {kind: {k: (float(v[0]), float(v[1])) for k, v in ranges.items()}
                  for kind, ranges in (manifest.get("training_ranges") or {}).items()},
                 {k: v for k, v in manifest.items() if k not in _OWN_FIELDS},
                 frozenset(block_keys),
                 # saved before latbench kept them: None, shapes checked only; strings checked
                 # by read_manifest
                 manifest.get("training_values"))
        out.fit_summary_ = manifest.get("fit_summary")
        residuals = manifest.get("kernel_residuals")  # predictors saved before: no intervals
        out.kernel_residuals_ = dict(residuals) if isinstance(residuals, dict) else None
        trained = manifest.get("trained_kernels")
        out.trained_kernels_ = frozenset(trained) if trained is not None else None
        if "memory" in manifest:  # predictors saved before the memory model predict uncalibrated
            out.memory_ = MemoryModel.from_json(manifest["memory"], f"{path / MANIFEST}: memory")
        out.path = path
        return out


def fit_platforms(template: LatencyPredictor, data: str | Path, *,
                  statistic: str = DEFAULT_STATISTIC, platform: PlatformChoice | None = None,
                  fusion: Any = None) -> list[LatencyPredictor]:
    """One predictor per platform of the dataset at `data` that `platform` matches (all by
    default), each configured like `template` (which stays unfitted), in platform order."""
    from latbench.bench.store import LatencyDataset

    records = LatencyDataset.open(Path(data)).records()
    if records.empty:
        raise DatasetError(f"dataset at {data} has no records")
    found = dataset_platforms(records, platform)
    if not found:  # no operator records, or none of the platform asked for: say which exist
        select_records(records, choice=platform, owner=f"dataset {data}")
    return [LatencyPredictor(template.kernel_model, calibrate=template.calibrate,
                             composition_terms=template.composition_terms,
                             cv_folds=template.cv_folds, seed=template.seed).fit(
        data, statistic=statistic, fusion=fusion, platform=own.choice()) for own in found]


def save_platforms(predictors: Sequence[LatencyPredictor], path: str | Path) -> Path:
    """Write predictors of distinct platforms into one folder that `LatencyPredictor.load`
    reads with a platform choice: a single one as a plain predictor folder, several as
    platforms.json plus one predictor folder per platform (predictor/io.py)."""
    from latbench.predictor.io import write_platforms

    if not predictors:
        raise PredictorError("no predictors to save")
    if len(predictors) == 1:
        return predictors[0].save(path)
    platforms = [p.platform for p in predictors]
    if len(set(platforms)) != len(platforms):
        raise PredictorError(f"predictors to save share a platform: "
                             f"{'; '.join(map(str, platforms))}")
    folders = write_platforms(Path(path), [(p.platform, p.save) for p in predictors])
    for predictor in predictors:
        predictor.path = folders[predictor.platform]
    return Path(path)


def _platform_settings(raw: Any, platform: Platform) -> Any:
    """A dataset card's run settings at `platform`'s thread count and delegate: one card
    serves every platform a campaign measured."""
    if not isinstance(raw, dict) or not raw:
        return raw
    out = {**raw, "threads": platform.threads}
    if platform.delegate:
        out["delegate"] = platform.delegate
    return out


def _block_keys(specs: Sequence[OpSpec]) -> frozenset[str]:
    """Keys of the fused-block kernels among `specs` (what a model file may price whole)."""
    from latbench.bench.kernels import BLOCK_KINDS

    return frozenset(s.key() for s in specs if s.kind in BLOCK_KINDS)
