"""`latbench predictor transfer` as a user runs it: bad input refused in one line, and a real
run on the local CPU with ONNX Runtime on a tiny plan and budget whose output loads and prices a
network."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_run import run

from latbench.bench.network_sets import resolve_networks
from latbench.bench.ops import OpSpec
from latbench.bench.platform import Platform
from latbench.bench.store import LatencyDataset
from latbench.device_agents.agent.latbench_agent import parse_cpu_features
from latbench.predictor.features import kernel_cost
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.models import LinearKernelPredictor

PLAN_SPECS = [OpSpec("conv", h=16, w=16, cin=16, cout=c, kernel=3) for c in (16, 32)] + [
    OpSpec("pool", h=8, w=8, cin=16, pool="gavg"), OpSpec("linear", cin=64, cout=10)]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A source platform priced by FLOPs over the kinds of the plan and its networks."""
    nets = resolve_networks("nasbench-macro:2", seed=0, with_kernels=True)
    specs = PLAN_SPECS + [k for n in nets for k in n.kernels]
    kernels = LinearKernelPredictor().fit(specs, [0.005 + 1e-9 * kernel_cost(s).flops
                                                  for s in specs])
    predictor = LatencyPredictor.from_kernels(
        kernels, info={"platform": Platform("local", "onnxruntime", threads=2).to_json(),
                       "device": "local", "runtime": "onnxruntime"}, ranges_from=specs)
    return predictor.save(tmp_path_factory.mktemp("src") / "source")


def plan(tmp_path: Path, kinds: bool = True) -> Path:
    specs = PLAN_SPECS if kinds else PLAN_SPECS[:1]
    path = tmp_path / "tiny.yml"
    path.write_text("specs: [" + ", ".join(f"'{s.key()}'" for s in specs) + "]\n"
                    "networks: ['nasbench-macro:2']\n")
    return path


def one_line_error(code: int, err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "Traceback" not in err
    for word in words:
        assert word in lines[0]


def test_a_missing_source_is_refused(tmp_path, capsys):
    code, _, err = run(capsys, "predictor", "transfer", "--from", str(tmp_path / "none"),
                       "--plan", str(plan(tmp_path)), "--budget-minutes", "1",
                       "--out", str(tmp_path / "p"))
    one_line_error(code, err, "does not exist")


def test_a_source_without_a_needed_kind_is_refused(tmp_path, capsys):
    kernels = LinearKernelPredictor().fit(PLAN_SPECS[:2], [0.1, 0.2])
    partial = LatencyPredictor.from_kernels(
        kernels, info={"platform": Platform("local", "onnxruntime").to_json()}).save(
        tmp_path / "partial")
    code, _, err = run(capsys, "predictor", "transfer", "--from", str(partial), "--plan",
                       str(plan(tmp_path)), "--budget-minutes", "1", "--out",
                       str(tmp_path / "p"))
    one_line_error(code, err, "no model for kernel kind", "pool")


def test_a_budget_too_small_names_the_minimum(source, tmp_path, capsys):
    code, _, err = run(capsys, "predictor", "transfer", "--from", str(source), "--plan",
                       str(plan(tmp_path)), "--budget-minutes", "0.01", "--out",
                       str(tmp_path / "p"))
    one_line_error(code, err, "the least is", "--budget-minutes")
    assert not (tmp_path / "p").exists()


def test_a_real_transfer_on_the_local_cpu(source, tmp_path, capsys):
    out = tmp_path / "pred"
    argv = ("predictor", "transfer", "--from", str(source), "--plan", str(plan(tmp_path)),
            "--runtime", "onnxruntime", "--threads", "1", "--budget-minutes", "0.5",
            "--out", str(out), "--fixed-runs", "--runs", "5", "--rounds", "2", "--warmup", "2",
            "--calibration-runs", "1")
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert "measuring" in err and "predictor written to" in stdout
    # the covering kernels and networks are measured first; what they took prices the rest
    assert err.index("kernels covering the plan's") < err.index("calibration networks in")
    assert "rounds:" in err
    predictor = LatencyPredictor.load(out)
    assert predictor.platform.runtime == "onnxruntime" and predictor.platform.threads == 1
    transfer = predictor.info_["transfer"]
    assert transfer["kernels_measured"] >= 3 and transfer["sources"][0]["source"] == str(source)
    assert transfer["advice"] == []  # fp32 from fp32: no matrix unit in between
    # two calibration networks: too few to weigh a network ratio against the kernel map
    assert transfer["networks_priced_by"]["chosen"] == "kernel map"
    assert "networks priced by the kernel map with its composition" in stdout
    # the device's vector and matrix extensions travel from its facts to the predictor
    assert predictor.info_["dataset"]["cpu_features"] == \
        parse_cpu_features(Path("/proc/cpuinfo").read_text())
    net = resolve_networks("nasbench-macro:1", seed=5, with_kernels=True)[0]
    assert predictor.predict(list(net.kernels)).predicted_ms > 0
    # the same command again resumes into the same dataset: nothing is measured twice, and
    # the minutes reported are those of both runs together
    data = Path(predictor.info_["dataset"]["path"])
    records = len(LatencyDataset.open(data).records())
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    again = LatencyPredictor.load(out).info_["transfer"]
    assert len(LatencyDataset.open(data).records()) == records
    assert again["minutes_spent"] > transfer["minutes_spent"]
    assert LatencyDataset.open(data).card["transfer_seconds"] == \
        pytest.approx(60 * again["minutes_spent"])


def test_the_output_says_what_prices_networks_and_why():
    from latbench.cli.transfer import _networks_priced_by

    errors = {"kernel map": 14.14, "sample alone": 9.02, "preds/2t times a ratio": 5.13}
    ratio = _networks_priced_by({"chosen": "preds/2t times a ratio", "networks": 4,
                                 "folds": 4, "errors_pct": errors,
                                 "ratios": {"preds/2t times a ratio": 1.8065}})
    assert ratio == ("networks priced by preds/2t times 1.81 (5.1%), not the kernel map "
                     "(14.1%), the sample alone (9.0%): error over the 4 measured calibration "
                     "networks, 4-fold cross-validated")
    alone = _networks_priced_by({"chosen": "sample alone", "networks": 22, "folds": 8,
                                 "errors_pct": {"kernel map": 9.7, "sample alone": 9.3},
                                 "ratios": {}})
    assert alone.startswith("networks priced by the sample alone (9.3%), not the kernel map "
                            "(9.7%): error over the 22 measured calibration networks, 8-fold")
    few = _networks_priced_by({"chosen": "kernel map", "networks": 2})
    assert few.startswith("networks priced by the kernel map with its composition (2 "
                          "calibration networks measured: too few to choose")
