"""`latbench search` with a predictor folder of two platforms (1 and 2 threads): --threads
chooses the latency table, the output names the platform predicted for, and --measure measures
the winner at that platform's thread count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latbench.bench.ops import decompose
from latbench.bench.platform import Platform
from latbench.bench.spaces import get_space
from latbench.bench.store import LatencyDataset
from latbench.cli import main
from latbench.predictor.features import kernel_cost
from latbench.predictor.latency_predictor import LatencyPredictor, save_platforms
from latbench.predictor.models import LinearKernelPredictor

pytestmark = pytest.mark.usefixtures("one_thread")
SPACE = ["--space", "nasbench201", "--space-option", "resolution=16", "--space-option",
         "cells=1", "--strategy", "random", "--queries", "4"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two made-up platforms of every kernel of the small NAS-Bench-201 space: the 2-thread one
    predicts everything 40% faster."""
    space = get_space("nasbench201", resolution=16, cells=1)
    specs = list({s.key(): s for spec in space.layer_specs()
                  for s in (spec, *decompose(spec))}.values())
    predictors = []
    for threads, speed in ((1, 1.0), (2, 0.6)):
        model = LinearKernelPredictor().fit(
            specs, [speed * (0.002 + 1e-9 * kernel_cost(s).flops) for s in specs])
        predictors.append(LatencyPredictor.from_kernels(model, call_overhead_ms=0.01, info={
            "device": "local", "runtime": "onnxruntime", "statistic": "min_ms",
            "run_settings": {"threads": threads, "warmup": 2, "runs": 5, "rounds": 1}}))
    return save_platforms(predictors, tmp_path_factory.mktemp("search") / "predictor")


def test_search_names_and_measures_the_chosen_platform(folder: Path, tmp_path: Path,
                                                       capsys) -> None:
    code = main(["search", "--predictor", str(folder), *SPACE, "--budget-ms", "5", "--margin",
                 "0", "--threads", "2", "--measure", "--out", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    [result] = json.loads(out)
    assert result["platform"]["label"] == "local · onnxruntime · fp32 · 2 threads"
    assert result["platform"]["threads"] == 2
    winners = LatencyDataset.open(tmp_path / "winners").records()
    assert set(winners["threads"]) == {2}
    one = main(["search", "--predictor", str(folder), *SPACE, "--budget-ms", "5", "--margin",
                "0", "--threads", "1", "--json"])
    out, err = capsys.readouterr()
    assert one == 0, err
    [slower] = json.loads(out)
    assert Platform.from_json({k: v for k, v in slower["platform"].items() if k != "label"}) \
        == Platform("local", "onnxruntime", threads=1)
    code = main(["search", "--predictor", str(folder), *SPACE, "--budget-ms", "5", "--threads",
                 "2"])
    out, _ = capsys.readouterr()
    assert code == 0 and "random on local · onnxruntime · fp32 · 2 threads" in out


def test_search_without_a_choice_lists_the_platforms(folder: Path, capsys) -> None:
    code = main(["search", "--predictor", str(folder), *SPACE, "--budget-ms", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0] == (f"latbench: error: predictor {folder} holds 2 platforms (local · "
                      "onnxruntime · fp32 · 1 thread; local · onnxruntime · fp32 · 2 threads); "
                      "choose one with --threads 1|2")
