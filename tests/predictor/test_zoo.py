"""Every predictor of the zoo (every entry of PREDICTORS) passes the same estimator contract: fit,
predict, save/load bit for bit inside a LatencyPredictor, clone/get_params, parameters checked by
name and type, unknown kernels raise naming them (never a silent zero)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from latbench.bench.ops import OpSpec
from latbench.errors import PredictorError, UnknownKernelError
from latbench.predictor.features import kernel_cost
from latbench.predictor.io import read_manifest
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.models import (
    TreeArrays,
    check_params,
    get_predictor_class,
    predictor_names,
)

# Small settings so the contract suite stays fast; every member must accept its own defaults too.
FAST_PARAMS = {"xgboost": {"n_estimators": 40, "max_depth": 3, "n_jobs": 1},
               "rf": {"n_estimators": 25, "n_jobs": 1}}


def test_zoo_holds_the_four_members() -> None:
    assert {"xgboost", "rf", "linear", "lut"} <= set(predictor_names())


def synthetic(n: int = 40, seed: int = 0) -> tuple[list[OpSpec], np.ndarray]:
    """Convs and linears whose latency is a smooth function of FLOPs and bytes."""
    rng = np.random.default_rng(seed)
    specs: list[OpSpec] = []
    for _ in range(n):
        h = int(rng.choice([4, 8, 16, 32]))
        cin, cout = int(rng.integers(8, 129)), int(rng.integers(8, 129))
        specs.append(OpSpec("conv", h=h, w=h, cin=cin, cout=cout,
                            kernel=int(rng.choice([1, 3, 5])), stride=int(rng.choice([1, 2]))))
        specs.append(OpSpec("linear", cin=cin * 8, cout=cout))
    cost = [kernel_cost(s) for s in specs]
    y = np.array([0.01 + 1e-9 * c.flops + 2e-8 * (c.input_bytes + c.output_bytes) for c in cost])
    return specs, y


@pytest.fixture(scope="module")
def data() -> tuple[list[OpSpec], np.ndarray]:
    return synthetic()


@pytest.fixture(scope="module", params=predictor_names())
def fitted(request, data):
    specs, y = data
    cls = get_predictor_class(request.param)
    return cls(**FAST_PARAMS.get(request.param, {})).fit(specs, y)


def test_fit_predicts_positive_and_tracks_the_target(fitted, data) -> None:
    specs, y = data
    predicted = fitted.predict(specs)
    assert predicted.shape == (len(specs),)
    assert np.all(predicted > 0)
    # On its training kernels every member is within a factor 1.5 of the truth, in the median.
    assert np.median(np.abs(np.log(predicted / y))) < np.log(1.5)
    assert fitted.kinds == ["conv", "linear"]
    assert fitted.n_train_ == {"conv": 40, "linear": 40}


def test_lut_is_exact_and_xgboost_rf_beat_linear_on_new_kernels(data) -> None:
    specs, y = data
    table = get_predictor_class("lut")().fit(specs, y)
    np.testing.assert_array_equal(table.predict(specs), y)
    new_specs, new_y = synthetic(20, seed=1)
    errors = {}
    for name in ("xgboost", "rf", "linear"):
        model = get_predictor_class(name)(**FAST_PARAMS.get(name, {})).fit(specs, y)
        errors[name] = float(np.median(np.abs(model.predict(new_specs) / new_y - 1)))
    assert all(e < 0.5 for e in errors.values()), errors


def test_save_load_round_trip_bit_for_bit(fitted, data, tmp_path: Path) -> None:
    specs, _ = data
    probe = specs + synthetic(10, seed=2)[0]
    if fitted.registry_name == "lut":
        probe = specs
    network = LatencyPredictor.from_kernels(fitted, call_overhead_ms=0.02,
                                            info={"device": "test"}, ranges_from=specs)
    network.save(tmp_path / "p")
    manifest = read_manifest(tmp_path / "p")
    reloaded = LatencyPredictor.load(tmp_path / "p")
    loaded = reloaded.kernels_
    assert type(loaded) is type(fitted)
    assert manifest["predictor"] == fitted.registry_name
    assert loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.predict(probe), fitted.predict(probe))
    assert reloaded.call_overhead_ms_ == 0.02 and reloaded.device == "test"
    assert reloaded.predict(probe).predicted_ms == network.predict(probe).predicted_ms
    assert reloaded.training_ranges_ == network.training_ranges_
    files = sorted(p.name for p in (tmp_path / "p" / "kernels").iterdir())
    assert files and not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in files)
    assert read_manifest(tmp_path / "p")["kinds"].keys() == {"conv", "linear"}


def test_clone_and_get_params(fitted, data) -> None:
    params = fitted.get_params()
    twin = clone(fitted)
    assert type(twin) is type(fitted) and twin.get_params() == params
    assert not hasattr(twin, "models_")
    with pytest.raises(PredictorError, match="not fitted"):
        twin.predict(data[0][:1])
    specs, y = data
    refit = twin.fit(specs, y)
    assert refit is twin
    if params:
        name = sorted(params)[0]
        twin.set_params(**{name: params[name]})


def test_unknown_kernel_kind_raises_naming_it(fitted) -> None:
    dw = OpSpec("dwconv", h=8, w=8, cin=32, kernel=3)
    with pytest.raises(UnknownKernelError, match="dwconv") as info:
        fitted.predict([dw])
    assert dw.key() in str(info.value)


def test_lut_unknown_key_of_a_known_kind_names_the_key(data) -> None:
    specs, y = data
    table = get_predictor_class("lut")().fit(specs, y)
    unseen = OpSpec("conv", h=7, w=7, cin=3, cout=5, kernel=3)
    with pytest.raises(UnknownKernelError) as info:
        table.predict([specs[0], unseen])
    assert unseen.key() in str(info.value)


def test_lut_keeps_the_geometric_mean_of_repeats() -> None:
    spec = OpSpec("conv", h=8, w=8, cin=8, cout=8, kernel=3)
    table = get_predictor_class("lut")().fit([spec, spec], [1.0, 4.0])
    assert table.predict([spec])[0] == pytest.approx(2.0)


def test_forest_arrays_reproduce_sklearn(data) -> None:
    from sklearn.ensemble import RandomForestRegressor

    from latbench.predictor.features import feature_matrix

    specs, y = data
    x = feature_matrix(specs)
    forest = RandomForestRegressor(n_estimators=7, random_state=3).fit(x, np.log(y))
    arrays = TreeArrays.from_forest(forest)
    probe = feature_matrix(synthetic(15, seed=4)[0])
    np.testing.assert_allclose(arrays.predict(probe), forest.predict(probe), rtol=1e-12)


def test_fit_refuses_bad_targets(data) -> None:
    specs, _ = data
    for name in ("rf", "linear", "lut"):
        with pytest.raises(PredictorError):
            get_predictor_class(name)().fit(specs[:2], [1.0, 0.0])
        with pytest.raises(PredictorError):
            get_predictor_class(name)().fit(specs[:2], [1.0])


def test_unknown_predictor_name() -> None:
    with pytest.raises(PredictorError, match="unknown predictor 'nope'"):
        get_predictor_class("nope")


@pytest.mark.parametrize("name", predictor_names())
def test_params_are_checked_by_name_and_type(name: str) -> None:
    defaults = get_predictor_class(name)().get_params()
    assert check_params(name, dict(defaults)) == defaults  # its own defaults pass
    assert check_params(name, None) == {}
    with pytest.raises(PredictorError, match=f"predictor '{name}' has no parameter 'bogus'"):
        check_params(name, {"bogus": 1})
    with pytest.raises(PredictorError, match="must be a JSON object"):
        check_params(name, [1, 2])
    for param in defaults:  # no parameter takes a list
        with pytest.raises(PredictorError, match=f"'{name}' parameter '{param}' must be"):
            check_params(name, {param: [1]})
    with pytest.raises(PredictorError, match="has no parameter 'bogus'"):
        LatencyPredictor(name, {"bogus": 1})


def test_param_types_follow_the_annotations() -> None:
    assert check_params("xgboost", {"learning_rate": 1})  # an int where a float goes
    assert check_params("rf", {"max_depth": None, "max_features": "sqrt", "n_jobs": 2})
    for name, params in (("xgboost", {"max_depth": 3.5}), ("xgboost", {"n_estimators": True}),
                         ("linear", {"ridge": False}), ("rf", {"max_features": [1]}),
                         ("xgboost", {"random_state": None})):
        with pytest.raises(PredictorError, match=f"parameter '{next(iter(params))}' must be"):
            check_params(name, params)


def test_library_errors_at_fit_name_the_predictor(data) -> None:
    """A value of the right type the library refuses (no trees) is a PredictorError, not a
    scikit-learn traceback."""
    specs, y = data
    with pytest.raises(PredictorError, match="rf could not be fitted .*n_estimators"):
        get_predictor_class("rf")(n_estimators=0).fit(specs, y)
