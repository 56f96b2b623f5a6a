"""Few-shot transfer to an unseen device: arch features, the model on a slice of the shared
NAS-Bench-201 / FBNet latency tables, and the `latbench predictor fewshot` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latbench.cli import main
from latbench.errors import ConfigError, DatasetError, PredictorError
from latbench.predictor.evaluate import error_metrics
from latbench.predictor.fewshot import (
    FBNET_CHOICES,
    FBNET_LAYERS,
    FewShotPredictor,
    ReferenceTable,
    fbnet_features,
    fbnet_onehot,
    fit_cost_tables,
    fit_full_mix,
    fit_reference_mix,
    leave_one_device_out,
    load_reference,
    nb201_features,
    nb201_onehot,
    select_samples,
    stacking_weights,
    table_features,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def slice_csv(space: str, rows: int, tmp_path: Path) -> Path:
    frame = pd.read_csv(DATA / space / "latency_ms.csv", nrows=rows)
    path = tmp_path / f"{space}.csv"
    frame.to_csv(path, index=False)
    return path


def test_nb201_features_count_live_ops() -> None:
    # Node 3 is reached only through the conv on edge 3<-0; the pool on 2<-1 feeds node 2,
    # which feeds nothing: it is computed but dead.
    arch = "|none~0|+|none~0|avg_pool_3x3~1|+|nor_conv_3x3~0|none~1|none~2|"
    every_skip, every_c1, every_c3, every_pool, live_skip, live_c1, live_c3, live_pool, \
        connected = nb201_features(arch)
    assert (every_c3, every_pool) == (1, 1) and (live_c3, live_pool) == (1, 0)
    assert connected == 1.0
    cut = "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    assert nb201_features(cut)[-1] == 0.0 and sum(nb201_features(cut)[4:8]) == 0
    with pytest.raises(ConfigError, match="NAS-Bench-201"):
        nb201_features("|conv~0|")


def test_fbnet_features() -> None:
    arch = "-".join(["k3_e1"] * 10 + ["skip"] * 12)
    assert fbnet_features(arch)[0] == 10 and sum(fbnet_features(arch)) == 10
    with pytest.raises(ConfigError, match="FBNet"):
        fbnet_features("k3_e1-skip")


def test_onehot_cost_table_terms() -> None:
    arch = "-".join(["k3_e1"] + ["skip"] * 20 + ["k5_e6"])
    row = fbnet_onehot(arch)
    assert len(row) == FBNET_LAYERS * len(FBNET_CHOICES) and sum(row) == FBNET_LAYERS
    assert row[FBNET_CHOICES.index("k3_e1")] == 1.0
    assert row[21 * len(FBNET_CHOICES) + FBNET_CHOICES.index("k5_e6")] == 1.0
    cell = "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|none~1|none~2|"
    nb = nb201_onehot(cell)
    assert len(nb) == 30 + 9 and sum(nb[:30]) == 6 and nb[30:] == nb201_features(cell)
    assert nb[3] == 1.0  # edge 1<-0 holds op 3 (nor_conv_3x3)
    with pytest.raises(ConfigError, match="FBNet"):
        fbnet_onehot("k3_e1")


def synthetic_fbnet(n_archs: int, n_devices: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Architectures and the exact latencies of devices with random additive cost tables."""
    rng = np.random.default_rng(seed)
    archs = sorted({"-".join(rng.choice(FBNET_CHOICES, FBNET_LAYERS)) for _ in range(n_archs)})
    costs = rng.uniform(0.05, 1.0, size=(FBNET_LAYERS * len(FBNET_CHOICES), n_devices))
    exact = table_features("fbnet", archs) @ costs + rng.uniform(1, 3, n_devices)
    return archs, exact


def test_denoised_references_recover_the_additive_part() -> None:
    archs, exact = synthetic_fbnet(800, 4, seed=1)
    rng = np.random.default_rng(2)
    # Measurement noise of the kinds seen in the shared data: integer ms and two clock regimes.
    regime = np.where(rng.random(exact.shape) < 0.4, 0.87, 1.0)
    measured = np.round(exact * regime * 1.0 / 0.95)
    table = ReferenceTable(tuple(archs), ("a", "b", "c", "d"), measured)
    clean = table.denoised("fbnet")
    assert clean.devices == table.devices and clean.ms.shape == measured.shape
    target = exact * np.mean(regime, axis=0) / 0.95  # the regime mix is a scale, not noise
    noise_raw = np.abs(measured / target - 1).mean()
    noise_clean = np.abs(clean.ms / target - 1).mean()
    assert noise_clean < noise_raw / 2, (noise_clean, noise_raw)
    # Exact additive data is reproduced exactly.
    intercept, costs = fit_cost_tables(table_features("fbnet", archs), exact, alpha=1e-9)
    np.testing.assert_allclose(table_features("fbnet", archs) @ costs + intercept, exact,
                               rtol=1e-6)


def test_denoised_basis_beats_raw_references_on_noisy_references() -> None:
    archs, exact = synthetic_fbnet(1000, 6, seed=3)
    rng = np.random.default_rng(4)
    measured = exact * rng.choice([0.87, 1.0], size=exact.shape)  # two clock regimes
    reference = ReferenceTable(tuple(archs), tuple(f"d{i}" for i in range(5)), measured[:, :5])
    truth = 0.6 * exact[:, 1] + 0.3 * exact[:, 3] + 0.5  # a mix of the references' true costs
    scores = {}
    for basis in ("ref", "rawref"):
        model = FewShotPredictor("fbnet", reference, candidates=[basis])
        within = []
        for seed in range(5):
            picked = select_samples(reference, 10, np.random.default_rng(seed))
            model.fit([archs[i] for i in picked], truth[picked])
            within.append(error_metrics(model.predict_all(), truth)["within5"])
        scores[basis] = float(np.mean(within))
    assert scores["ref"] > 0.8 and scores["ref"] > scores["rawref"] + 0.1, scores
    # The oracle fit on all architectures finds the mix almost exactly.
    best = FewShotPredictor("fbnet", reference, candidates=["ref", "rawref"]).fit_all(truth)
    assert best.candidate_ == "ref"
    assert error_metrics(best.predict_all(), truth)["within5"] > 0.97
    with pytest.raises(PredictorError, match="one latency per reference architecture"):
        best.fit_all(truth[:10])


@pytest.mark.parametrize("space", ["nasbench201", "fbnet"])
def test_transfer_to_a_held_out_device(space: str, tmp_path: Path) -> None:
    table = load_reference(slice_csv(space, 600, tmp_path))
    assert len(table.archs) == 600 and len(table.devices) == 13
    device = "silver_4210r"
    others = table.without(device)
    assert device not in others.devices
    truth = table.column(device)
    picked = select_samples(others, 10, np.random.default_rng(0))
    model = FewShotPredictor(space, others).fit([others.archs[i] for i in picked],
                                                truth[picked])
    expected = {"nasbench201": {"ref", "arch"}, "fbnet": {"ref"}}[space]
    assert set(model.weights_by_candidate_) == expected == set(model.cv_rmspe_)
    assert sum(model.weights_by_candidate_.values()) == pytest.approx(1.0)
    assert model.candidate_ in expected
    held = np.setdiff1d(np.arange(600), picked)
    m = error_metrics(model.predict_all()[held], truth[held])
    assert m["spearman"] > 0.8 and m["within10"] > 0.6, m
    np.testing.assert_allclose(model.predict([others.archs[i] for i in held[:5]]),
                               model.predict_all()[held[:5]], rtol=1e-12)


def test_more_samples_do_not_hurt(tmp_path: Path) -> None:
    table = load_reference(slice_csv("nasbench201", 800, tmp_path))
    frame = leave_one_device_out("nasbench201", table, [5, 50], seeds=[0, 1],
                                 devices=["gold_6240", "titanx_32"])
    assert len(frame) == 2 * 2 * 2
    by_k = frame.groupby("k")[["spearman", "within10"]].mean()
    assert by_k.loc[50, "within10"] >= by_k.loc[5, "within10"] - 0.02
    strat = leave_one_device_out("nasbench201", table, [10], seeds=[0],
                                 selection="stratified", devices=["gold_6240"])
    assert strat.iloc[0]["selection"] == "stratified"


def test_errors_name_the_problem(tmp_path: Path) -> None:
    table = load_reference(slice_csv("fbnet", 50, tmp_path))
    model = FewShotPredictor("fbnet", table)
    with pytest.raises(PredictorError, match="not fitted"):
        model.predict_all()
    with pytest.raises(PredictorError, match="not in the reference data: nope"):
        model.fit(["nope", table.archs[0]], [1.0, 2.0])
    with pytest.raises(PredictorError, match="positive"):
        model.fit(list(table.archs[:3]), [1.0, 0.0, 2.0])
    with pytest.raises(ConfigError, match="no device 'tpu'"):
        table.without("tpu")
    with pytest.raises(ConfigError, match="unknown few-shot space"):
        FewShotPredictor("darts", table)
    bad = tmp_path / "bad.csv"
    bad.write_text("index,name,gpu\n0,a,1.0\n")
    with pytest.raises(DatasetError, match="no 'arch' column"):
        load_reference(bad)


def test_fewshot_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reference = slice_csv("nasbench201", 400, tmp_path)
    full = pd.read_csv(reference)
    rng = np.random.default_rng(3)
    rows = rng.choice(len(full), 10, replace=False)
    samples = tmp_path / "samples.csv"
    full.iloc[rows][["arch", "pixel3"]].rename(columns={"pixel3": "latency_ms"}).to_csv(
        samples, index=False)
    query = tmp_path / "query.csv"
    queried = full.drop(index=rows)[["arch"]]
    queried.to_csv(query, index=False)
    out = tmp_path / "out" / "pred.csv"
    assert main(["predictor", "fewshot", "--space", "nasbench201", "--reference",
                 str(reference), "--samples", str(samples), "--query", str(query),
                 "--out", str(out), "--exclude-device", "pixel3"]) == 0
    said = capsys.readouterr().out
    assert "fitted on 10 samples: leave-one-out error on them" in said
    assert "most like: " in said and f"{len(queried)} predictions written" in said
    result = pd.read_csv(out)
    assert list(result.columns) == ["arch", "predicted_ms", "lo_ms", "hi_ms"]
    assert result["arch"].tolist() == queried["arch"].tolist()
    assert (result["predicted_ms"] > 0).all()
    truth = full.drop(index=rows)["pixel3"].to_numpy()
    assert error_metrics(result["predicted_ms"], truth)["spearman"] > 0.7
    # A sample column missing: one error line naming it.
    samples.write_text("arch,ms\nx,1\n")
    assert main(["predictor", "fewshot", "--space", "nasbench201", "--reference",
                 str(reference), "--samples", str(samples), "--query", str(query),
                 "--out", str(out)]) == 1


def test_select_uses_one_basis_and_ensemble_mixes(tmp_path: Path) -> None:
    table = load_reference(slice_csv("nasbench201", 300, tmp_path)).without("pixel3")
    rows = select_samples(table, 12, np.random.default_rng(0))
    archs, ms = [table.archs[i] for i in rows], table.column("gold_6240")[rows]
    select = FewShotPredictor("nasbench201", table.without("gold_6240"), combine="select")
    select.fit(archs, ms)
    assert sorted(select.weights_by_candidate_.values()) == [0.0, 1.0]
    mix = FewShotPredictor("nasbench201", table.without("gold_6240")).fit(archs, ms)
    assert sum(mix.weights_by_candidate_.values()) == pytest.approx(1.0)
    by_hand = sum(share * (mix._design(c, slice(None)) @ mix.coef_[c])
                  for c, share in mix.weights_by_candidate_.items() if share > 0)
    np.testing.assert_allclose(mix.predict_all(),
                               np.maximum(by_hand * mix.level_, 1e-3 * table.ms.min()))
    # the level: the median sample is predicted exactly
    assert np.median(np.log(ms / mix.predict(archs))) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ConfigError, match="combination"):
        FewShotPredictor("nasbench201", table, combine="vote")
    with pytest.raises(ConfigError, match="candidate"):
        FewShotPredictor("nasbench201", table, candidates=["denoised"])
    raw = FewShotPredictor("nasbench201", table.without("gold_6240"),
                           candidates=["rawref+arch"]).fit(archs, ms)
    assert raw._tables is None and raw.coef_["rawref+arch"].shape == (2 + 11 + 9,)


def test_small_mixes_find_a_two_device_mix_that_ten_samples_cannot_pin_down_in_full() -> None:
    archs, exact = synthetic_fbnet(2000, 12, seed=5)
    truth = 0.6 * exact[:, 1] + 0.3 * exact[:, 7] + 0.5
    design = np.hstack([np.ones((len(archs), 1)), -np.ones((len(archs), 1)), exact])
    rng = np.random.default_rng(6)
    errors = {"mixes": [], "full": []}
    for _ in range(10):
        picked = rng.choice(len(archs), 10, replace=False)
        noisy = truth[picked] * rng.normal(1.0, 0.03, 10)  # measured with 3% noise
        for name, fit in (("mixes", fit_reference_mix), ("full", fit_full_mix)):
            coef = fit(design[picked], noisy).coef
            errors[name].append(np.sqrt(np.mean(np.square(design @ coef / truth - 1))))
    assert np.mean(errors["mixes"]) < 0.8 * np.mean(errors["full"]), errors
    exact_fit = fit_reference_mix(design[:10], truth[:10])
    np.testing.assert_allclose(design @ exact_fit.coef, truth, rtol=0.01)
    assert exact_fit.loo.shape == (10,)
    np.testing.assert_allclose(exact_fit.loo, truth[:10], rtol=0.01)
    # A device that is a mix of five references: no pair describes it, the full mix takes over.
    wide = exact[:, [0, 2, 4, 6, 8]] @ np.array([0.3, 0.2, 0.2, 0.2, 0.1])
    picked = rng.choice(len(archs), 60, replace=False)
    coef = fit_reference_mix(design[picked], wide[picked]).coef
    np.testing.assert_allclose(design @ coef, wide, rtol=0.02)


def test_stacking_weights_use_how_the_errors_co_vary() -> None:
    truth = np.linspace(1.0, 5.0, 10)
    wobble = 0.1 * np.where(np.arange(10) % 2 == 0, 1.0, -1.0)
    opposite = np.column_stack([truth * (1 + wobble), truth * (1 - wobble)])
    np.testing.assert_allclose(stacking_weights(opposite, truth), [0.5, 0.5], atol=1e-6)
    one_exact = np.column_stack([truth * (1 + wobble), truth])
    np.testing.assert_allclose(stacking_weights(one_exact, truth), [0.0, 1.0], atol=1e-6)


def _fewshot_files(tmp_path: Path, rows: int = 300) -> tuple[Path, Path, pd.DataFrame]:
    reference = slice_csv("nasbench201", rows, tmp_path)
    full = pd.read_csv(reference)
    query = tmp_path / "query.csv"
    full[["arch"]].to_csv(query, index=False)
    return reference, query, full


@pytest.mark.parametrize(("cell", "shown", "why"), [
    ("abc", "'abc'", "not a latency in ms"),
    ("", "an empty cell", "not a latency in ms"),
    ("-2.5", "'-2.5'", "not positive"),
    ("inf", "'inf'", "not a latency in ms"),
])
def test_fewshot_bad_latencies_name_the_file_line_and_value(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], cell: str, shown: str,
        why: str) -> None:
    reference, query, full = _fewshot_files(tmp_path)
    samples = tmp_path / "samples.csv"
    lines = [f"{arch},{ms}" for arch, ms in zip(full["arch"][:6], full["pixel3"][:6],
                                                strict=True)]
    lines[2] = f"{full['arch'][2]},{cell}"
    samples.write_text("arch,latency_ms\n" + "\n".join(lines) + "\n")
    out = tmp_path / "pred.csv"
    capsys.readouterr()
    assert main(["predictor", "fewshot", "--space", "nasbench201", "--reference",
                 str(reference), "--samples", str(samples), "--query", str(query),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{samples}, line 4: latency_ms is {shown}, {why}" in err[0]
    assert not out.exists()


def test_median_relative_error_ignores_one_tiny_sample() -> None:
    from latbench.predictor.fewshot import _rmspe, median_relative_error

    target = np.array([10.0, 12.0, 8.0, 0.001, 11.0])
    predicted = np.array([10.5, 11.4, 8.4, 0.65, 11.0])
    assert median_relative_error(predicted, target) == pytest.approx(0.05)
    assert _rmspe(predicted, target) > 100  # the RMSPE the command used to print: 29,000%


def test_fewshot_error_estimate_survives_a_tiny_sample(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One sample measured at a thousandth of its true latency (a unit slip) must not turn the
    error estimate into thousands of percent; the command says which error it reports."""
    reference, query, full = _fewshot_files(tmp_path)
    rows = np.random.default_rng(4).choice(len(full), 10, replace=False)
    frame = full.iloc[rows][["arch", "gold_6240"]].rename(columns={"gold_6240": "latency_ms"})
    frame.iloc[3, 1] = frame.iloc[3, 1] / 1000
    samples = tmp_path / "samples.csv"
    frame.to_csv(samples, index=False)
    capsys.readouterr()
    assert main(["predictor", "fewshot", "--space", "nasbench201", "--reference",
                 str(reference), "--samples", str(samples), "--query", str(query), "--out",
                 str(tmp_path / "pred.csv"), "--exclude-device", "gold_6240", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert 0 < printed["loo_median_relative_error_pct"] < 30
    assert printed["samples"] == 10 and printed["predictions"] == len(full)
    assert main(["predictor", "fewshot", "--space", "nasbench201", "--reference",
                 str(reference), "--samples", str(samples), "--query", str(query), "--out",
                 str(tmp_path / "pred.csv"), "--exclude-device", "gold_6240"]) == 0
    assert "(median |predicted / measured - 1|;" in capsys.readouterr().out


def test_nb201_cells_are_read_by_the_search_space() -> None:
    """The few-shot features decode cells with bench.spaces.nasbench201 (one implementation)."""
    from latbench.bench.spaces import get_space
    from latbench.bench.spaces.nasbench201 import live_edges
    from latbench.predictor.fewshot import nb201_ops

    space = get_space("nasbench201")
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = space.sample(rng)
        ops = space.op_names(arch)
        assert nb201_ops(space.encode(arch)) == ops
        features = nb201_features(space.encode(arch))
        assert sum(features[4:8]) == len(live_edges(ops))
        assert features[-1] == float(bool(live_edges(ops)))
