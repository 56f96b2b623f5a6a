"""A predictor folder on disk: a JSON manifest plus one model file per kernel kind.

No pickle: xgboost JSON (or numpy arrays for other members) reloads across library versions, and
the manifest says what the predictor was trained for (device, runtime, settings, feature
version) so a mismatch is caught at load time instead of silently mispredicting. A folder is
untrusted input: the manifest's schema is checked field by field, model files must lie inside
the folder, and an unreadable model file is an error naming it. `LatencyPredictor.save` and
`LatencyPredictor.load` (latency_predictor.py) are the users of this module.

Format versions: 1 (until the network-level predictor object) and 2 (adds the training ranges
and the fit summary); both load. A version-2 manifest may hold `memory`, the peak-memory model's
coefficients (predictor/memory.py); one without it predicts memory uncalibrated, and `platform`
(bench.platform); one without it names its platform by its device, runtime, run settings' threads
and delegate, fp32; and `kernel_residuals` and `trained_kernels`, what prediction intervals are
built from (predictor/intervals.py); one without them predicts without an interval.

Predictors of several platforms share one folder: `platforms.json` lists each platform with its
sub-folder, a predictor folder as above (`write_platforms`, `read_platforms`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from latbench.bench.ops import OP_KINDS
from latbench.bench.platform import Platform, settings_field
from latbench.errors import ConfigError, PredictorError
from latbench.predictor.features import (
    FEATURE_NAMES,
    FEATURE_WIDTH,
    SUPPORTED_FEATURE_VERSIONS,
)
from latbench.predictor.models import (
    KernelPredictor,
    check_params,
    get_predictor_class,
    predictor_names,
)

MANIFEST = "manifest.json"
PLATFORMS = "platforms.json"
FORMAT = "latbench-predictor"
PLATFORMS_FORMAT = "latbench-predictor-platforms"
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)


def library_versions() -> dict[str, str]:
    out = {}
    for dist in ("latbench", "xgboost-cpu", "xgboost", "scikit-learn", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_predictor(path: Path, kernels: KernelPredictor, manifest: dict[str, Any]) -> Path:
    """Write the fitted `kernels` and `manifest` (plus the format fields and the `kinds` table
    this writes) to directory `path`, replacing it atomically if it is a predictor."""
    if not hasattr(kernels, "models_"):
        raise PredictorError("cannot save a predictor that is not fitted")
    path = Path(path)
    _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    version = kernels.feature_version_
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (staging / "kernels").mkdir()
        kinds = {}
        for kind, model in sorted(kernels.models_.items()):
            name = kernels.save_kind(model, staging / "kernels" / kind)
            kinds[kind] = {"file": f"kernels/{name}", "n_train": kernels.n_train_[kind]}
        full = {
            **manifest,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "predictor": kernels.registry_name,
            "params": kernels.get_params(),
            "feature_version": version,
            "feature_names": list(FEATURE_NAMES[:FEATURE_WIDTH[version]]),
            "kinds": kinds,
            "library_versions": library_versions(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (staging / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        _swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _check_replaceable(path: Path) -> None:
    if path.exists() and not ((path / MANIFEST).is_file() or (path / PLATFORMS).is_file()):
        raise PredictorError(f"{path} exists and is not a latbench predictor; refusing to "
                             "overwrite it")


def write_platforms(path: Path, writers: list[tuple[Platform, Callable[[Path], Any]]]
                    ) -> dict[Platform, Path]:
    """One folder for predictors of several platforms: each `write(folder)` writes its
    platform's predictor into a sub-folder named by the platform's slug, and platforms.json
    lists them; the folder is replaced atomically. Returns each platform's final sub-folder."""
    path = Path(path)
    _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        entries, folders = [], {}
        for platform, write in writers:
            name = platform.slug()
            while any(e["folder"] == name for e in entries):  # two slugs sanitised alike
                name += "_"
            write(staging / name)
            entries.append({"platform": platform.to_json(), "folder": name})
            folders[platform] = path / name
        (staging / PLATFORMS).write_text(json.dumps(
            {"format": PLATFORMS_FORMAT, "format_version": 1, "platforms": entries,
             "created": datetime.now(UTC).isoformat(timespec="seconds")},
            indent=2, sort_keys=True) + "\n")
        _swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folders


def _swap_in(staging: Path, path: Path) -> None:
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, path)


# --- reading ------------------------------------------------------------------------------------
def _read_json(file: Path) -> Any:
    """The JSON in `file`; unreadable or invalid is a PredictorError naming it."""
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictorError(f"cannot read {file}: {exc}") from exc
    except ValueError as exc:
        raise PredictorError(f"{file} is not valid JSON: {exc}") from exc


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the predictor folder `path`, its schema checked (errors name the field)."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise PredictorError(f"no predictor at {path} (missing {MANIFEST})")
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PredictorError(f"{manifest_path} is not a latbench predictor manifest")
    if manifest.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise PredictorError(f"{path}: predictor format {manifest.get('format_version')!r} is "
                             f"not supported (this latbench reads "
                             f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))})")
    _check_schema(manifest, manifest_path)
    version = manifest["feature_version"]
    if version not in SUPPORTED_FEATURE_VERSIONS:
        raise PredictorError(f"{path} was trained on features v{version}, this latbench reads "
                             f"v{', v'.join(map(str, SUPPORTED_FEATURE_VERSIONS))}; refit it")
    return manifest


def read_platforms(path: Path) -> dict[Platform, Path]:
    """Platform -> predictor folder of what `path` holds: the sub-folders platforms.json lists,
    or the one platform of a plain predictor folder."""
    path = Path(path)
    index = path / PLATFORMS
    if not index.is_file():
        return {manifest_platform(read_manifest(path), str(path / MANIFEST)): path}
    data = _read_json(index)
    if not isinstance(data, dict) or data.get("format") != PLATFORMS_FORMAT \
            or not isinstance(data.get("platforms"), list) or not data["platforms"]:
        raise PredictorError(f"{index} is not a latbench platforms index (a 'platforms' list)")
    out: dict[Platform, Path] = {}
    for number, entry in enumerate(data["platforms"]):
        where = f"{index}: platforms[{number}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("folder"), str):
            raise PredictorError(f"{where} must be an object with 'platform' and 'folder'")
        try:
            platform = Platform.from_json(entry.get("platform"), f"{where}.platform")
        except ConfigError as exc:
            raise PredictorError(str(exc)) from exc
        if platform in out:
            raise PredictorError(f"{where} repeats platform {platform}")
        out[platform] = inside(path, entry["folder"], f"platforms[{number}].folder",
                               index=PLATFORMS)
    return out


def manifest_platform(manifest: Mapping[str, Any], where: str = "predictor") -> Platform:
    """The platform a manifest (or a predictor's info) names: its `platform` field, or for
    predictors saved before it, its device, runtime, run settings' threads and delegate, fp32."""
    try:
        if "platform" in manifest:
            return Platform.from_json(manifest["platform"], f"{where}: field 'platform'")
        settings = str(manifest.get("settings") or "")
        run = manifest.get("run_settings") if isinstance(manifest.get("run_settings"),
                                                         dict) else {}
        threads = run.get("threads") or settings_field(settings, "threads") or 1
        return Platform(str(manifest.get("device") or "unknown"),
                        str(manifest.get("runtime") or "unknown"),
                        settings_field(settings, "delegate") or "", threads=int(threads))
    except (ConfigError, ValueError) as exc:
        raise PredictorError(f"{where}: {exc}") from exc


def read_kernels(path: Path, manifest: dict[str, Any]) -> KernelPredictor:
    """The fitted kernel predictor stored in folder `path` (manifest from `read_manifest`)."""
    path = Path(path)
    name = manifest["predictor"]
    if name not in predictor_names():
        raise PredictorError(f"{path}: unknown predictor type {name!r}; known: "
                             f"{', '.join(predictor_names())}")
    try:
        params = check_params(name, manifest["params"])
    except PredictorError as exc:
        raise PredictorError(f"{path / MANIFEST}: field 'params': {exc}") from exc
    kernels = get_predictor_class(name)(**params)
    models, n_train = {}, {}
    for kind, entry in manifest["kinds"].items():
        file = inside(path, entry["file"], f"kinds.{kind}.file")
        if not file.is_file():
            raise PredictorError(f"{path}: model file for kernel kind {kind!r} is missing "
                                 f"({file})")
        models[kind] = kernels.load_kind(file)
        n_train[kind] = entry["n_train"]
    kernels.models_, kernels.n_train_ = models, n_train
    kernels.feature_version_ = manifest["feature_version"]
    return kernels


def inside(root: Path, entry: str, field: str, index: str = MANIFEST) -> Path:
    """`root / entry`, refusing an absolute path, `..` or anything resolving outside `root` (a
    manifest, or the platforms `index`, must not make another folder's files load as this
    predictor's)."""
    parts = PurePosixPath(entry).parts
    if (PurePosixPath(entry).is_absolute() or PureWindowsPath(entry).is_absolute()
            or PureWindowsPath(entry).drive or ".." in parts or "\\" in entry or not parts):
        raise PredictorError(f"{root / index}: field {field!r} ({entry!r}) must be a "
                             "relative path inside the predictor folder")
    file = (root / entry).resolve()
    if not file.is_relative_to(root.resolve()):
        raise PredictorError(f"{root / index}: field {field!r} ({entry!r}) points outside "
                             "the predictor folder")
    return file


# --- the schema ---------------------------------------------------------------------------------
def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number_map(value: Any) -> bool:
    return isinstance(value, dict) and all(_is_number(v) for v in value.values())


def _ranges(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(fields, dict) and all(
            isinstance(r, list) and len(r) == 2 and all(_is_number(x) for x in r)
            for r in fields.values())
        for fields in value.values())


def _values(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(fields, dict) and all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in fields.values())
        for fields in value.values())


def _attach_list(value: Any) -> bool:
    return isinstance(value, dict) and (
        "attach" not in value or isinstance(value["attach"], list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in value["attach"]))


# field -> (required, check, what it must be)
_FIELDS: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
    "predictor": (True, lambda v: isinstance(v, str), "a string"),
    "params": (True, lambda v: isinstance(v, dict), "an object"),
    "feature_version": (True, _is_count, "an integer"),
    "call_overhead_ms": (True, lambda v: _is_number(v) and v >= 0,
                         "a finite, non-negative number"),
    "kinds": (True, lambda v: isinstance(v, dict) and bool(v),
              "a non-empty object mapping kernel kind to its model file"),
    "kind_scale": (False, _number_map, "an object of kernel kind: number"),
    "composition_terms": (False, _number_map, "an object of term: number"),
    "composition": (False, lambda v: v is None or isinstance(v, dict), "an object"),
    "fusion": (False, _attach_list, "an object whose 'attach' lists [producer, follower] pairs"),
    "run_settings": (False, lambda v: isinstance(v, dict), "an object"),
    "dataset": (False, lambda v: v is None or isinstance(v, dict), "an object"),
    "training_ranges": (False, _ranges, "an object of kind: {feature: [low, high]}"),
    # pool types, activations, modes trained on (features.CATEGORY_FIELDS); older: unchecked
    "training_values": (False, _values, "an object of kind: {field: [value, ...]}"),
    "fit_summary": (False, lambda v: isinstance(v, dict), "an object"),
    # the peak-memory model (predictor/memory.py checks its fields); older predictors lack it
    "memory": (False, lambda v: isinstance(v, dict), "an object"),
    # per kind the out-of-fold residual quantiles intervals are built from
    # (predictor/intervals.py); older predictors lack it and predict without an interval
    "kernel_residuals": (False, lambda v: isinstance(v, dict), "an object"),
    "trained_kernels": (False, lambda v: isinstance(v, list)
                        and all(isinstance(k, str) for k in v), "a list of strings"),
    # the platform (bench.platform); older predictors name it by their other fields
    "platform": (False, lambda v: isinstance(v, dict), "an object"),
    "feature_names": (False, lambda v: isinstance(v, list), "a list"),
    **{name: (False, lambda v: v is None or isinstance(v, str), "a string")
       for name in ("device", "runtime", "runtime_version", "settings", "statistic")},
}


def _check_schema(manifest: dict[str, Any], where: Path) -> None:
    for name, (required, check, what) in _FIELDS.items():
        if name not in manifest:
            if required:
                raise PredictorError(f"{where}: field {name!r} is missing")
            continue
        if not check(manifest[name]):
            raise PredictorError(f"{where}: field {name!r} must be {what}, got "
                                 f"{_kind_of(manifest[name])}")
    for kind, entry in manifest["kinds"].items():
        if kind not in OP_KINDS:
            raise PredictorError(f"{where}: field 'kinds' names unknown kernel kind {kind!r}")
        if not isinstance(entry, dict):
            raise PredictorError(f"{where}: field 'kinds.{kind}' must be an object with 'file' "
                                 f"and 'n_train', got {_kind_of(entry)}")
        if not isinstance(entry.get("file"), str):
            raise PredictorError(f"{where}: field 'kinds.{kind}.file' must be a string, got "
                                 f"{_kind_of(entry.get('file'))}")
        if not _is_count(entry.get("n_train")):
            raise PredictorError(f"{where}: field 'kinds.{kind}.n_train' must be a "
                                 f"non-negative integer, got {entry.get('n_train')!r}")
