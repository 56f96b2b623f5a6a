"""Save and load predictors as plain files: a JSON manifest plus one model file per kernel kind.

No pickle: xgboost JSON (or numpy arrays for other members) reloads across library versions, and
the manifest says what the predictor was trained for (device, runtime, settings, feature version)
so a mismatch is caught at load time instead of silently mispredicting.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from latbench.errors import PredictorError
from latbench.predictor.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    FEATURE_WIDTH,
    SUPPORTED_FEATURE_VERSIONS,
)
from latbench.predictor.models import KernelPredictor, get_predictor_class, predictor_names

MANIFEST = "manifest.json"
FORMAT = "latbench-predictor"
FORMAT_VERSION = 1


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("latbench", "xgboost-cpu", "xgboost", "scikit-learn", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def save_predictor(predictor: KernelPredictor, path: Path, info: dict[str, Any] | None = None
                   ) -> Path:
    """Write the predictor to directory `path`, replacing it atomically if it exists."""
    if not hasattr(predictor, "models_"):
        raise PredictorError("cannot save a predictor that is not fitted")
    path = Path(path)
    if path.exists() and not (path / MANIFEST).is_file():
        raise PredictorError(f"{path} exists and is not a latbench predictor; refusing to "
                             "overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    version = getattr(predictor, "feature_version_", FEATURE_VERSION)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (staging / "kernels").mkdir()
        kinds = {}
        for kind, model in sorted(predictor.models_.items()):
            name = predictor.save_kind(model, staging / "kernels" / kind)
            kinds[kind] = {"file": f"kernels/{name}", "n_train": predictor.n_train_[kind]}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "predictor": predictor.registry_name,
            "params": predictor.get_params(),
            "feature_version": version,
            "feature_names": list(FEATURE_NAMES[:FEATURE_WIDTH[version]]),
            "call_overhead_ms": predictor.call_overhead_ms_,
            "kind_scale": dict(getattr(predictor, "kind_scale_", {}) or {}),
            "composition_terms": dict(getattr(predictor, "composition_terms_", {}) or {}),
            "kinds": kinds,
            "library_versions": _versions(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **(info or {}),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _swap_in(staging: Path, path: Path) -> None:
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, path)


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise PredictorError(f"no predictor at {path} (missing {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise PredictorError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise PredictorError(f"{manifest_path} is not a latbench predictor manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PredictorError(f"{path}: predictor format {manifest.get('format_version')} is not "
                             f"supported (this latbench reads {FORMAT_VERSION})")
    return manifest


def load_predictor(path: Path) -> tuple[KernelPredictor, dict[str, Any]]:
    """The predictor stored at `path` and its manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    version = manifest["feature_version"]
    if version not in SUPPORTED_FEATURE_VERSIONS:
        raise PredictorError(f"{path} was trained on features v{version}, this latbench reads "
                             f"v{', v'.join(map(str, SUPPORTED_FEATURE_VERSIONS))}; refit it")
    name = manifest["predictor"]
    if name not in predictor_names():
        raise PredictorError(f"{path}: unknown predictor type {name!r}; known: "
                             f"{', '.join(predictor_names())}")
    predictor = get_predictor_class(name)(**manifest["params"])
    predictor.models_ = {}
    predictor.n_train_ = {}
    for kind, entry in manifest["kinds"].items():
        file = path / entry["file"]
        if not file.is_file():
            raise PredictorError(f"{path}: model file for kernel kind {kind!r} is missing ({file})")
        predictor.models_[kind] = predictor.load_kind(file)
        predictor.n_train_[kind] = int(entry["n_train"])
    predictor.call_overhead_ms_ = float(manifest["call_overhead_ms"])
    predictor.kind_scale_ = {k: float(v) for k, v in manifest.get("kind_scale", {}).items()}
    predictor.composition_terms_ = {k: float(v) for k, v in
                                    (manifest.get("composition_terms") or {}).items()}
    predictor.feature_version_ = version
    fusion = manifest.get("fusion")
    if isinstance(fusion, dict) and "attach" in fusion:
        from latbench.bench.fusion import attach_from_json

        predictor.attach_ = attach_from_json(fusion["attach"])
    return predictor, manifest
