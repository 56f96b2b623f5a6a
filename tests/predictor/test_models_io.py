"""Kernel features, the per-kind xgboost predictor behind the scikit-learn contract, and saving /
loading predictors as plain files (bit for bit, never pickle)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from latbench.bench.ops import OpSpec
from latbench.errors import PredictorError, UnknownKernelError
from latbench.predictor import io as pio
from latbench.predictor.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    feature_matrix,
    kernel_cost,
    kernel_features,
)
from latbench.predictor.io import MANIFEST, read_manifest
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.model_level import Composition
from latbench.predictor.models import PREDICTORS, XGBoostKernelPredictor, register_predictor

EVERY_KIND = [
    OpSpec("conv", h=32, w=32, cin=16, cout=32, kernel=3, act="relu"),
    OpSpec("conv", h=16, w=16, cin=32, cout=64, kernel=1, stride=2, groups=4),
    OpSpec("dwconv", h=16, w=16, cin=96, kernel=5, stride=2, act="hswish"),
    OpSpec("mbconv", h=16, w=16, cin=32, cout=32, kernel=5, expand=6, act="relu", se=True),
    OpSpec("linear", cin=1280, cout=10),
    OpSpec("pool", h=8, w=8, cin=256, pool="gavg"),
    OpSpec("pool", h=32, w=32, cin=16, pool="max", kernel=3, stride=2),
    OpSpec("add", h=16, w=16, cin=64, act="relu"),
    OpSpec("mul", h=7, w=7, cin=160),
    OpSpec("act", h=28, w=28, cin=40, act="hsigmoid"),
    OpSpec("se", h=14, w=14, cin=120, expand=0.25),
    OpSpec("concat", h=16, w=16, cin=96, groups=3),
    OpSpec("conv", h=17, w=17, cin=64, cout=64, kernel=1, kernel_w=7, dilation=2),
    OpSpec("tlinear", tokens=197, cin=384, cout=1536, act="gelu"),
    OpSpec("bmm", heads=6, tokens=197, cin=64, cout=197),
    OpSpec("softmax", heads=6, tokens=197, cin=197),
    OpSpec("layernorm", tokens=197, cin=384),
    OpSpec("transpose", h=6, w=64, cin=197, axes="0213"),
    OpSpec("clstoken", tokens=196, cin=384),
    OpSpec("gather", tokens=197, cin=384),
    OpSpec("posembed", tokens=197, cin=384),
    OpSpec("convt", h=16, w=16, cin=64, cout=32, kernel=2, stride=2),
    OpSpec("resize", h=16, w=16, cin=64, scale=2, mode="bilinear"),
    OpSpec("pad", h=16, w=16, cin=64, pad=1, mode="reflect"),
    OpSpec("slice", h=28, w=28, cin=116, cout=58),
    OpSpec("instnorm", h=64, w=64, cin=32),
    OpSpec("reduce", h=7, w=7, cin=96, axes="23"),
    OpSpec("shuffle", h=28, w=28, cin=116, groups=2),
]


def synthetic_data(n_per_kind: int = 40, seed: int = 0) -> tuple[list[OpSpec], np.ndarray]:
    """Random convs, dwconvs and linears whose 'latency' is a smooth function of their FLOPs."""
    rng = np.random.default_rng(seed)
    specs: list[OpSpec] = []
    for _ in range(n_per_kind):
        h = int(rng.choice([4, 8, 16, 32]))
        cin, cout = int(rng.integers(8, 129)), int(rng.integers(8, 129))
        specs.append(OpSpec("conv", h=h, w=h, cin=cin, cout=cout,
                            kernel=int(rng.choice([1, 3, 5])), stride=int(rng.choice([1, 2]))))
        specs.append(OpSpec("dwconv", h=h, w=h, cin=cin, kernel=int(rng.choice([3, 5, 7]))))
        specs.append(OpSpec("linear", cin=cin * 8, cout=cout))
    y = np.array([0.01 + 1e-9 * kernel_cost(s).flops for s in specs])
    return specs, y


@pytest.fixture(scope="module")
def data() -> tuple[list[OpSpec], np.ndarray]:
    return synthetic_data()


@pytest.fixture(scope="module")
def fitted(data) -> XGBoostKernelPredictor:
    specs, y = data
    return XGBoostKernelPredictor(n_estimators=60, max_depth=4, n_jobs=1).fit(specs, y)


def save_predictor(kernels, path: Path, info: dict | None = None,
                   composition: Composition | None = None) -> Path:
    """Save a fitted kernel predictor as a network-level predictor (call overhead 0.03 ms)."""
    return LatencyPredictor.from_kernels(kernels, call_overhead_ms=0.03, info=info,
                                         composition=composition).save(path)


def load_predictor(path: Path) -> tuple[LatencyPredictor, dict]:
    return LatencyPredictor.load(path), read_manifest(path)


# --- features ---------------------------------------------------------------------------------
def test_features_finite_for_every_kind() -> None:
    from latbench.bench.ops import OP_KINDS

    assert {s.kind for s in EVERY_KIND} == set(OP_KINDS)
    matrix = feature_matrix(EVERY_KIND)
    assert matrix.shape == (len(EVERY_KIND), len(FEATURE_NAMES))
    assert np.isfinite(matrix).all()
    for spec, row in zip(EVERY_KIND, matrix, strict=True):
        np.testing.assert_array_equal(kernel_features(spec), row)
        named = dict(zip(FEATURE_NAMES, row, strict=True))
        assert named["flops"] >= 0 and named["input_bytes"] > 0 and named["output_bytes"] > 0
    assert feature_matrix([]).shape == (0, len(FEATURE_NAMES))


def test_conv_cost_exact() -> None:
    conv = OpSpec("conv", h=32, w=32, cin=16, cout=32, kernel=3)
    cost = kernel_cost(conv)
    assert cost.flops == 2 * 32 * 32 * 32 * 16 * 9 == 9_437_184
    assert cost.params == 32 * 16 * 9 + 32
    assert cost.input_bytes == 16 * 32 * 32 * 4 and cost.output_bytes == 32 * 32 * 32 * 4
    grouped = kernel_cost(OpSpec("conv", h=8, w=8, cin=32, cout=64, kernel=3, stride=2,
                                 groups=4))
    assert grouped.flops == 2 * 4 * 4 * 64 * (32 // 4) * 9
    dw = kernel_cost(OpSpec("dwconv", h=16, w=16, cin=24, kernel=5, stride=2))
    assert dw.flops == 2 * 8 * 8 * 24 * 25 and dw.params == 24 * 25 + 24
    fc = kernel_cost(OpSpec("linear", cin=1280, cout=10, batch=2))
    assert fc.flops == 2 * 2 * 1280 * 10 and fc.params == 1280 * 10 + 10
    add = kernel_cost(OpSpec("add", h=4, w=4, cin=8))
    assert add.flops == 128 and add.input_bytes == 2 * 128 * 4  # two inputs
    mb = OpSpec("mbconv", h=8, w=8, cin=16, cout=16, kernel=3, expand=6)
    from latbench.bench.ops import decompose

    assert kernel_cost(mb).flops == sum(kernel_cost(p).flops for p in decompose(mb))


# --- the estimator --------------------------------------------------------------------------------
def test_fit_predict_synthetic(data, fitted: XGBoostKernelPredictor) -> None:
    specs, y = data
    assert fitted.kinds == ["conv", "dwconv", "linear"]
    assert fitted.n_train_ == {"conv": 40, "dwconv": 40, "linear": 40}
    assert fitted.feature_version_ == FEATURE_VERSION
    # the call overhead is the network-level predictor's, not a kernel model's
    assert not hasattr(fitted, "call_overhead_ms_")
    pred = fitted.predict(specs)
    assert pred.shape == (len(specs),) and np.all(pred > 0)
    rel = np.abs(pred / y - 1)
    assert np.median(rel) < 0.1  # a learnable target is learned
    # it generalises in the right direction on kernels it never saw
    small = OpSpec("conv", h=8, w=8, cin=16, cout=16, kernel=1)
    big = OpSpec("conv", h=32, w=32, cin=128, cout=128, kernel=5)
    low, high = fitted.predict([small, big])
    assert high > 5 * low
    assert fitted.score(specs, y) > 0.9  # RegressorMixin's R^2 works on spec lists
    assert fitted.predict([]).shape == (0,)


def test_sklearn_contract(fitted: XGBoostKernelPredictor) -> None:
    params = fitted.get_params()
    assert params["n_estimators"] == 60 and params["max_depth"] == 4 and params["n_jobs"] == 1
    fresh = clone(fitted)
    assert fresh.get_params() == params
    assert not hasattr(fresh, "models_")
    with pytest.raises(PredictorError, match="not fitted"):
        fresh.predict(EVERY_KIND[:1])
    fresh.set_params(max_depth=2)
    assert fresh.get_params()["max_depth"] == 2 and fitted.max_depth == 4
    specs, y = synthetic_data(10, seed=3)
    assert fresh.fit(specs, y) is fresh  # fit returns self
    assert set(fresh.models_) == {"conv", "dwconv", "linear"}


def test_unknown_kernel_names_the_kind(fitted: XGBoostKernelPredictor) -> None:
    se = OpSpec("se", h=14, w=14, cin=120, expand=0.25)
    with pytest.raises(UnknownKernelError) as info:
        fitted.predict([EVERY_KIND[0], se])
    message = str(info.value)
    assert "se" in message and se.key() in message
    assert "conv, dwconv, linear" in message
    assert isinstance(info.value, PredictorError)


@pytest.mark.parametrize(("x", "y", "match"), [
    ([OpSpec("conv")], [1.0, 2.0], "1 specs but 2 latencies"),
    ([], [], "zero kernels"),
    ([OpSpec("conv")], [0.0], "finite and positive"),
    ([OpSpec("conv")], [float("nan")], "finite and positive"),
])
def test_fit_refusals(x, y, match: str) -> None:
    with pytest.raises(PredictorError, match=match):
        XGBoostKernelPredictor(n_estimators=2).fit(x, y)


def test_registry_refuses_duplicates() -> None:
    assert PREDICTORS["xgboost"] is XGBoostKernelPredictor
    with pytest.raises(PredictorError, match="registered twice"):
        register_predictor("xgboost")(XGBoostKernelPredictor)


# --- save / load --------------------------------------------------------------------------------
def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_save_load_bit_for_bit(tmp_path: Path, data, fitted: XGBoostKernelPredictor) -> None:
    specs, _ = data
    out = save_predictor(fitted, tmp_path / "pred", {"device": "local",
                                                     "runtime": "onnxruntime"},
                         Composition({"conv": 1.07}))
    loaded, manifest = load_predictor(out)
    probe = [*specs, OpSpec("conv", h=56, w=56, cin=3, cout=24, kernel=3, stride=2)]
    assert np.array_equal(loaded.kernels_.predict(probe), fitted.predict(probe))
    assert loaded.kernels_.get_params() == fitted.get_params()
    assert loaded.n_train == fitted.n_train_
    assert loaded.call_overhead_ms_ == 0.03
    assert loaded.composition_.kind_scale == {"conv": 1.07}
    assert manifest["device"] == "local" and manifest["runtime"] == "onnxruntime"

    again = loaded.save(tmp_path / "again")
    first, second = _files(out), _files(again)
    assert sorted(first) == sorted(second) == [
        "kernels/conv.baseline.json", "kernels/conv.json", "kernels/dwconv.baseline.json",
        "kernels/dwconv.json", "kernels/linear.baseline.json", "kernels/linear.json", MANIFEST]
    for name in first:
        if name != MANIFEST:  # the manifest has a creation time; the models must be identical
            assert first[name] == second[name], name
    reloaded, _ = load_predictor(again)
    assert np.array_equal(reloaded.kernels_.predict(probe), fitted.predict(probe))
    assert reloaded.predict(probe).predicted_ms == loaded.predict(probe).predicted_ms


def test_manifest_records_versions(tmp_path: Path, fitted: XGBoostKernelPredictor) -> None:
    from importlib import metadata

    manifest = read_manifest(save_predictor(fitted, tmp_path / "p"))
    assert manifest["format"] == "latbench-predictor"
    assert manifest["format_version"] == pio.FORMAT_VERSION
    assert manifest["feature_version"] == FEATURE_VERSION
    assert manifest["feature_names"] == list(FEATURE_NAMES)
    assert manifest["predictor"] == "xgboost"
    assert manifest["params"] == fitted.get_params()
    versions = manifest["library_versions"]
    assert versions["numpy"] == np.__version__
    assert versions["scikit-learn"] == metadata.version("scikit-learn")
    import xgboost

    assert xgboost.__version__ in (versions.get("xgboost"), versions.get("xgboost-cpu"))
    assert manifest["kinds"]["conv"] == {"file": "kernels/conv.json", "n_train": 40}
    assert manifest["created"]


def test_nothing_pickled(tmp_path: Path, fitted: XGBoostKernelPredictor) -> None:
    out = save_predictor(fitted, tmp_path / "p")
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.suffix in (".pkl", ".pickle", ".joblib")]
    for path in files:
        json.loads(path.read_text())  # every file is plain JSON
        assert not path.read_bytes().startswith(b"\x80")  # no pickle protocol header
    assert not list(tmp_path.glob(".p.*"))  # no staging leftovers


def _edit_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(("changes", "match"), [
    (dict(feature_version=FEATURE_VERSION + 1), f"features v{FEATURE_VERSION + 1}.*refit"),
    (dict(format_version=pio.FORMAT_VERSION + 1), "predictor format .* is not supported"),
    (dict(format="something-else"), "is not a latbench predictor manifest"),
    (dict(predictor="lightgbm"), "unknown predictor type 'lightgbm'"),
])
def test_load_refuses_other_versions(tmp_path: Path, fitted: XGBoostKernelPredictor, changes,
                                     match: str) -> None:
    out = save_predictor(fitted, tmp_path / "p")
    _edit_manifest(out, **changes)
    with pytest.raises(PredictorError, match=match) as info:
        load_predictor(out)
    assert str(out) in str(info.value)


def test_load_refuses_broken_dirs(tmp_path: Path, fitted: XGBoostKernelPredictor) -> None:
    with pytest.raises(PredictorError, match="missing manifest.json"):
        load_predictor(tmp_path / "absent")
    out = save_predictor(fitted, tmp_path / "p")
    (out / "kernels" / "dwconv.json").unlink()
    with pytest.raises(PredictorError, match="model file for kernel kind 'dwconv' is missing"):
        load_predictor(out)
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(PredictorError, match="is not valid JSON"):
        load_predictor(out)


def test_save_refuses_to_overwrite_other_dirs(tmp_path: Path,
                                              fitted: XGBoostKernelPredictor) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("do not delete")
    with pytest.raises(PredictorError, match="is not a latbench predictor; refusing"):
        save_predictor(fitted, precious)
    assert _files(precious) == {"chapter1.tex": b"do not delete"}
    with pytest.raises(PredictorError, match="not fitted"):
        save_predictor(XGBoostKernelPredictor(), tmp_path / "unfitted")
    with pytest.raises(PredictorError, match="not fitted"):
        LatencyPredictor().save(tmp_path / "unfitted")
    assert not (tmp_path / "unfitted").exists()


def test_save_replaces_an_existing_predictor(tmp_path: Path, data,
                                             fitted: XGBoostKernelPredictor) -> None:
    out = save_predictor(fitted, tmp_path / "p")
    specs, y = data
    only_conv = [i for i, s in enumerate(specs) if s.kind == "conv"]
    other = XGBoostKernelPredictor(n_estimators=5, n_jobs=1).fit(
        [specs[i] for i in only_conv], y[only_conv])
    save_predictor(other, out)
    loaded, manifest = load_predictor(out)
    assert loaded.kinds == ["conv"] and list(manifest["kinds"]) == ["conv"]
    assert sorted(_files(out)) == ["kernels/conv.baseline.json", "kernels/conv.json",
                                   MANIFEST]  # old kinds are gone
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


def test_feature_version_1_predictors_still_load(tmp_path: Path) -> None:
    """A predictor saved before feature version 2 (no baselines, the v1 columns) keeps loading
    and predicts exactly what it did: saved predictors must not stop working on an upgrade."""
    import xgboost

    from latbench.predictor.features import FEATURE_NAMES_V1

    specs, ms = synthetic_data()
    old = XGBoostKernelPredictor()
    specs, ms = [s for s in specs if s.kind == "conv"], ms[[s.kind == "conv" for s in specs]]
    booster = xgboost.XGBRegressor(n_estimators=20, max_depth=3).fit(
        feature_matrix(specs, version=1), np.log(ms))
    old.models_, old.n_train_ = {"conv": booster}, {"conv": len(specs)}
    old.feature_version_ = 1
    manifest = read_manifest(save_predictor(old, tmp_path / "v1"))
    assert manifest["feature_version"] == 1
    assert manifest["feature_names"] == list(FEATURE_NAMES_V1)
    assert not list((tmp_path / "v1").rglob("*.baseline.json"))
    loaded, _ = load_predictor(tmp_path / "v1")
    assert loaded.kernels_.feature_version_ == 1
    expected = np.exp(booster.predict(feature_matrix(specs, version=1)))
    np.testing.assert_allclose(loaded.kernels_.predict(specs), expected, rtol=1e-6)


def test_tree_members_extrapolate_over_their_baseline() -> None:
    """Trees alone price a layer far outside the training range like its nearest neighbour;
    over the log-linear baseline they follow the cost trend."""
    specs, ms = synthetic_data()
    fitted = XGBoostKernelPredictor(n_estimators=50).fit(specs, ms)
    big = OpSpec("conv", h=56, w=56, cin=256, cout=256, kernel=3)
    largest = max((s for s in specs if s.kind == "conv"), key=lambda s: kernel_cost(s).flops)
    assert fitted.predict([big])[0] > 2 * fitted.predict([largest])[0]
