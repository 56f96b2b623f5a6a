"""Few-shot transfer with kernel predictors as reference devices, suggested samples, the
structure prior and prediction intervals (`latbench predictor fewshot`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latbench.bench.ops import OpSpec
from latbench.bench.spaces import get_space
from latbench.cli import main
from latbench.errors import ConfigError, PredictorError
from latbench.predictor.evaluate import error_metrics
from latbench.predictor.features import kernel_cost
from latbench.predictor.fewshot import (
    STRUCTURE_STRENGTHS,
    FewShotPredictor,
    ReferenceTable,
    fbnet_onehot,
    interval_half_width,
    predictor_reference,
    reference_disagreement,
    suggest_samples,
)
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.models import XGBoostKernelPredictor

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def nb201_kernels(kinds: set[str]) -> list[OpSpec]:
    """The distinct kernels of NAS-Bench-201 networks (cells of every stage, stem, reductions,
    head) of the given kinds."""
    space = get_space("nasbench201")
    rng = np.random.default_rng(0)
    specs = {s.key(): s for _ in range(60) for s in space.ops(space.sample(rng))}
    return [s for s in specs.values() if s.kind in kinds]


def synthetic_ms(spec: OpSpec) -> float:
    return 0.005 + 2e-9 * kernel_cost(spec).flops


def tiny_predictor(kinds: set[str], path: Path, pools: str | None = None) -> Path:
    """Fitted on NAS-Bench-201's own kernels of `kinds` (with `pools`, every pool is of that
    type instead: a predictor that never measured the space's average pools)."""
    specs = [s.with_(pool=pools) if pools and s.kind == "pool" else s
             for s in nb201_kernels(kinds)]
    model = XGBoostKernelPredictor(n_estimators=30, max_depth=3, n_jobs=1).fit(
        specs, [synthetic_ms(s) for s in specs])
    return LatencyPredictor.from_kernels(
        model, call_overhead_ms=0.02, info={"device": "local", "runtime": "onnxruntime"},
        ranges_from=specs).save(path)


@pytest.fixture(scope="module")
def predictor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # no `act`: only the fixed head needs it, which every architecture runs alike
    return tiny_predictor({"conv", "pool", "add", "mul", "linear"},
                          tmp_path_factory.mktemp("fewshot") / "predictor")


@pytest.fixture(scope="module")
def predictor_column(predictor_dir: Path) -> ReferenceTable:
    return predictor_reference(LatencyPredictor.load(predictor_dir), "nasbench201", "tiny")


def test_predictor_column_prices_every_architecture_as_the_predictor_does(
        predictor_dir: Path, predictor_column: ReferenceTable) -> None:
    space = get_space("nasbench201")
    predictor = LatencyPredictor.load(predictor_dir)
    assert len(predictor_column.archs) == space.size == 15_625
    assert len(set(predictor_column.archs)) == space.size
    shared = pd.read_csv(DATA / "nasbench201" / "latency_ms.csv", usecols=["arch"])
    assert set(shared["arch"]) == set(predictor_column.archs)  # the same cell strings
    rng = np.random.default_rng(1)
    for row in rng.choice(space.size, 6, replace=False):
        arch = space.decode(predictor_column.archs[row])
        whole = predictor.predict([s for s in space.ops(arch) if s.kind != "act"])
        assert predictor_column.ms[row, 0] == pytest.approx(whole.predicted_ms, rel=1e-9)


def test_a_kernel_predictor_is_a_reference_device(
        predictor_column: ReferenceTable, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], predictor_dir: Path) -> None:
    # The new device is the predictor's machine at a third of its speed, 2% noise: with the
    # predictor as a reference, ten samples find it; the shared devices alone describe it worse.
    rng = np.random.default_rng(4)
    truth = 3 * predictor_column.ms[:, 0] * np.exp(rng.normal(0, 0.02, len(predictor_column.archs)))
    picked = rng.choice(len(truth), 10, replace=False)
    samples, query, out = tmp_path / "samples.csv", tmp_path / "query.csv", tmp_path / "p.csv"
    pd.DataFrame({"arch": [predictor_column.archs[i] for i in picked],
                  "latency_ms": truth[picked]}).to_csv(samples, index=False)
    pd.DataFrame({"arch": predictor_column.archs}).to_csv(query, index=False)
    assert main(["predictor", "fewshot", "--space", "nasbench201", "--reference",
                 str(DATA / "nasbench201" / "latency_ms.csv"), "--reference-predictor",
                 str(predictor_dir), "--samples", str(samples), "--query", str(query),
                 "--out", str(out), "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert next(iter(said["reference_shares"])) == f"predictor:{predictor_dir}"
    assert said["interval"]["level"] == 0.9 and said["interval"]["low_pct"] < 0
    result = pd.read_csv(out)
    assert list(result.columns) == ["arch", "predicted_ms", "lo_ms", "hi_ms"]
    assert (result["lo_ms"] < result["predicted_ms"]).all()
    assert (result["predicted_ms"] < result["hi_ms"]).all()
    with_predictor = error_metrics(result["predicted_ms"], truth)
    assert with_predictor["within10"] > 0.9
    # without the shared CSV: the predictor alone is the reference table
    assert main(["predictor", "fewshot", "--space", "nasbench201", "--reference-predictor",
                 str(predictor_dir), "--samples", str(samples), "--query", str(query),
                 "--out", str(out)]) == 0
    assert error_metrics(pd.read_csv(out)["predicted_ms"], truth)["within10"] > 0.9


def test_a_predictor_missing_a_kind_the_cells_need_is_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lacking = tiny_predictor({"conv", "add", "mul", "linear"}, tmp_path / "no-pool")
    with pytest.raises(PredictorError, match="no model for kernel kind.s. pool"):
        predictor_reference(LatencyPredictor.load(lacking), "nasbench201")
    assert main(["predictor", "fewshot", "--space", "nasbench201", "--reference-predictor",
                 str(lacking), "--suggest", "5", "--out", str(tmp_path / "s.csv")]) == 1
    err = capsys.readouterr().err.strip()
    assert "pool" in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_predictor_that_never_measured_the_cells_pool_type_is_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Its pool model knows max pools only: it would price the cells' 3x3 average pools from
    # them, a guess (a LiteRT predictor of the `platforms` plan priced them at 30x their time).
    max_only = tiny_predictor({"conv", "pool", "add", "mul", "linear"}, tmp_path / "max",
                              pools="max")
    with pytest.raises(PredictorError, match=r"never trained on pool kernels with pool=avg "
                                             r"\(trained: max\)"):
        predictor_reference(LatencyPredictor.load(max_only), "nasbench201")
    assert main(["predictor", "fewshot", "--space", "nasbench201", "--reference-predictor",
                 str(max_only), "--suggest", "5", "--out", str(tmp_path / "s.csv")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "--plan nasbench201" in err and not (tmp_path / "s.csv").exists()


def test_fbnet_cannot_take_a_kernel_predictor(predictor_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predictor", "fewshot", "--space", "fbnet", "--reference-predictor",
                 str(predictor_dir), "--suggest", "5", "--out", str(tmp_path / "s.csv")]) == 1
    assert "fbnet is not a latbench search space" in capsys.readouterr().err


def test_suggest_writes_k_distinct_architectures_of_the_space(
        predictor_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "suggested.csv"
    assert main(["predictor", "fewshot", "--space", "nasbench201", "--reference-predictor",
                 str(predictor_dir), "--suggest", "12", "--out", str(out)]) == 0
    assert "12 architectures to measure written" in capsys.readouterr().out
    archs = pd.read_csv(out)["arch"].tolist()
    space = get_space("nasbench201")
    assert len(archs) == len(set(archs)) == 12
    assert all(space.encode(space.decode(a)) == a for a in archs)
    # FBNet from a slice of the shared table: distinct rows of that table
    frame = pd.read_csv(DATA / "fbnet" / "latency_ms.csv", nrows=300)
    reference = tmp_path / "fbnet.csv"
    frame.to_csv(reference, index=False)
    assert main(["predictor", "fewshot", "--space", "fbnet", "--reference", str(reference),
                 "--suggest", "10", "--out", str(out), "--json"]) == 0
    said = json.loads(capsys.readouterr().out)["suggested"]
    assert len(set(said)) == 10 and set(said) <= set(frame["arch"])
    assert pd.read_csv(out)["arch"].tolist() == said


def test_suggested_samples_span_the_latency_range_and_are_deterministic() -> None:
    archs, references, _ = synthetic_fbnet(400, seed=3)
    table = ReferenceTable(tuple(archs), ("d0", "d1", "d2", "d3"), references)
    first = suggest_samples("fbnet", table, 10)
    assert first.tolist() == suggest_samples("fbnet", table, 10).tolist()
    assert len(set(first.tolist())) == 10
    level = np.log(references).mean(axis=1)
    picked = np.sort(level[first])
    # both ends of the latency range are sampled, not only its crowded middle
    assert picked[0] < np.quantile(level, 0.2) and picked[-1] > np.quantile(level, 0.8)


def test_suggested_samples_hold_on_a_device_unlike_every_reference() -> None:
    """NAS-Bench-201 networks measured with ONNX Runtime on this project's CI machine
    (datasets/), the 13 shared devices as references: ten suggested samples must rank the other
    measured networks and price most within 10% (issue 17's bar for such devices). Before the
    suggestion left out structurally rare cells it opened with a cell whose output is cut off,
    the structure model's leave-one-out error on it condemned that model, and the fit fell to
    the references: Spearman 0.921, 37% within 10%."""
    from latbench.bench.store import load_dataset
    from latbench.predictor.fewshot import arch_features, canonical_archs, load_reference

    frame = load_dataset(Path(__file__).resolve().parents[2] / "datasets" /
                         "xeon-2core-nb201-onnxruntime")
    nets = frame[(frame["kind"] == "network") & frame["key"].str.startswith("nasbench201:")
                 & ~frame["key"].str.contains("@")]
    per_arch = nets.groupby("key")["min_ms"].median()
    archs = canonical_archs("nasbench201", [k.split(":", 1)[1] for k in per_arch.index])
    truth = per_arch.to_numpy(dtype=np.float64)
    shared = load_reference(DATA / "nasbench201" / "latency_ms.csv")
    shared = ReferenceTable(tuple(canonical_archs("nasbench201", shared.archs)),
                            shared.devices, shared.ms)
    picked = suggest_samples("nasbench201", shared.subset(shared.rows(archs)), 10)
    assert arch_features("nasbench201", [archs[i] for i in picked])[:, -1].all()  # connected
    model = FewShotPredictor("nasbench201", shared).fit([archs[i] for i in picked],
                                                        truth[picked])
    held = np.setdiff1d(np.arange(len(archs)), picked)
    metrics = error_metrics(model.predict([archs[i] for i in held]), truth[held])
    assert metrics["spearman"] >= 0.93 and metrics["within10"] >= 0.60


def test_suggest_more_than_the_space_is_one_line_error(
        predictor_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predictor", "fewshot", "--space", "nasbench201", "--reference-predictor",
                 str(predictor_dir), "--suggest", "15626", "--out",
                 str(tmp_path / "s.csv")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "latbench: error: cannot suggest 15626 architectures: the reference has 15625"
    assert not (tmp_path / "s.csv").exists()
    with pytest.raises(ConfigError, match="cannot suggest 0"):
        suggest_samples("fbnet", ReferenceTable(("a",), ("d",), np.ones((1, 1))), 0)


def synthetic_fbnet(n_archs: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """FBNet architectures, four additive reference devices and a new device that is a mix of
    two of them with 5% log-normal noise."""
    from latbench.predictor.fewshot import FBNET_CHOICES, FBNET_LAYERS

    rng = np.random.default_rng(seed)
    archs = ["-".join(rng.choice(FBNET_CHOICES, FBNET_LAYERS)) for _ in range(n_archs)]
    onehot = np.array([fbnet_onehot(a) for a in archs])
    costs = rng.uniform(0.1, 1.0, (onehot.shape[1], 4))
    references = onehot @ costs + 1.0
    device = (0.7 * references[:, 0] + 0.4 * references[:, 2]) * np.exp(
        rng.normal(0, 0.05, n_archs))
    return archs, references, device


def test_intervals_cover_the_truth_at_about_the_nominal_rate() -> None:
    archs, references, device = synthetic_fbnet(300, seed=5)
    table = ReferenceTable(tuple(archs), ("d0", "d1", "d2", "d3"), references)
    model = FewShotPredictor("fbnet", table)
    coverage, widths = [], []
    for seed in range(20):
        picked = np.random.default_rng(seed).choice(len(archs), 10, replace=False)
        model.fit([archs[i] for i in picked], device[picked])
        held = np.setdiff1d(np.arange(len(archs)), picked)
        _, lo, hi = model.predict_interval([archs[i] for i in held], level=0.9)
        coverage.append(np.mean((device[held] >= lo) & (device[held] <= hi)))
        widths.append(np.log(hi / lo).mean())
    assert 0.8 <= np.mean(coverage) <= 0.99
    _, lo50, hi50 = model.predict_interval(level=0.5)
    _, lo90, hi90 = model.predict_interval(level=0.9)
    assert np.all(lo90 < lo50) and np.all(hi50 < hi90)
    with pytest.raises(ConfigError, match=r"interval level must be in \(0, 1\)"):
        model.predict_interval(level=90)


def test_interval_widens_for_small_k() -> None:
    residuals = np.array([0.05, -0.05])
    assert interval_half_width(residuals, 0.9) > 2 * interval_half_width(
        np.tile(residuals, 10), 0.9)


def test_reference_disagreement_ranks_where_the_references_disagree() -> None:
    rng = np.random.default_rng(0)
    base = np.exp(rng.normal(0, 0.3, 200))
    tables = np.column_stack([base, 2 * base, 5 * base])
    assert np.ptp(np.log(tables[:, 1] / tables[:, 0])) < 1e-12
    spread = np.zeros(200)
    spread[:10] = 0.5  # the references disagree on the first ten only
    tables[:, 2] *= np.exp(spread)
    disagreement = reference_disagreement(tables)
    assert disagreement.min() >= 0 and disagreement.max() <= 1
    assert set(np.argsort(-disagreement)[:10]) == set(range(10))
    assert np.all(reference_disagreement(tables[:, :1]) == 0)


def test_structure_prior_is_chosen_by_leave_one_out_and_can_be_off() -> None:
    archs, references, device = synthetic_fbnet(300, seed=6)
    table = ReferenceTable(tuple(archs), ("d0", "d1", "d2", "d3"), references)
    picked = np.random.default_rng(1).choice(len(archs), 10, replace=False)
    sample = ([archs[i] for i in picked], device[picked])
    on = FewShotPredictor("fbnet", table, structure=True).fit(*sample)
    off = FewShotPredictor("fbnet", table, structure=False).fit(*sample)
    assert on.structure_strength_ in STRUCTURE_STRENGTHS and off.structure_strength_ == 0
    if on.structure_strength_ == 0:
        assert np.allclose(on.predict_all(), off.predict_all())
    else:
        assert not np.allclose(on.predict_all(), off.predict_all())


def test_leave_one_device_out_scores_suggested_samples_and_coverage() -> None:
    from latbench.predictor.fewshot import leave_one_device_out, load_reference

    frame = pd.read_csv(DATA / "fbnet" / "latency_ms.csv", nrows=300)
    table = load_reference(DATA / "fbnet" / "latency_ms.csv")
    table = table.subset(table.rows(frame["arch"].tolist()))
    devices = ["titanx_1", "gold_6240"]
    suggested = leave_one_device_out("fbnet", table, (10,), range(3), selection="suggest",
                                     devices=devices)
    assert suggested["device"].tolist() == devices  # deterministic: one row per device
    random = leave_one_device_out("fbnet", table, (10,), range(3), devices=devices)
    assert len(random) == 6
    for result in (suggested, random):
        assert result["coverage"].between(0, 1).all() and result["spearman"].gt(0.5).all()
