"""benchmarks/run_all.py (what `make bench` runs): finds every benchmark script, runs each in
its own process, and fails loudly naming the scripts that failed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
assert spec is not None and spec.loader is not None
run_all = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_all)


def test_discovers_the_benchmarks_but_not_helpers() -> None:
    names = [p.stem for p in run_all.discover()]
    assert {"repeatability", "throughput", "predictor_accuracy"} <= set(names)
    assert "_report" not in names and "run_all" not in names
    assert names[0] == "platform_matrix"  # the campaigns later benchmarks read
    assert names[1:] == sorted(names[1:])


def test_runs_each_script_and_fails_loudly(tmp_path: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a_ok.py").write_text("import sys\nprint('A RAN', sys.argv[1:])\n")
    (tmp_path / "b_broken.py").write_text("raise SystemExit(3)\n")
    (tmp_path / "c_ok.py").write_text("print('C RAN')\n")
    (tmp_path / "_helper.py").write_text("raise SystemExit('a helper must not run')\n")
    scripts = run_all.discover(tmp_path)
    assert [p.stem for p in scripts] == ["a_ok", "b_broken", "c_ok"]
    results = run_all.run(scripts, ["--no-write"], cwd=tmp_path)
    assert [(name, code) for name, code, _ in results] == [("a_ok", 0), ("b_broken", 3),
                                                          ("c_ok", 0)]
    out = capfd.readouterr().out
    assert "A RAN ['--no-write']" in out and "C RAN" in out  # a failure did not stop c
    assert "b_broken: FAILED (exit 3)" in out


def test_main_exit_code_and_selection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "good.py").write_text("pass\n")
    (tmp_path / "bad.py").write_text("raise SystemExit(1)\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "ROOT", tmp_path)
    assert run_all.main(["--only", "good"]) == 0
    assert run_all.main([]) == 1
    assert "1 of 2 benchmarks FAILED: bad" in capfd.readouterr().err
    assert run_all.main(["--list", "--skip", "bad"]) == 0
    assert capfd.readouterr().out.strip() == "good"
    with pytest.raises(SystemExit, match="no benchmark named 'nope'"):
        run_all.main(["--only", "nope"])


def test_fewshot_order_drift_separates_drift_from_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The few-shot benchmark's bound: latency that drifts along the row order (a device
    warming up while it is measured) shows as a wide rolling mean and is divided out; i.i.d.
    noise of the same size does not."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the script imports its helpers
    script = importlib.util.spec_from_file_location("fewshot_bench",
                                                    ROOT / "benchmarks" / "fewshot.py")
    assert script is not None and script.loader is not None
    fewshot_bench = importlib.util.module_from_spec(script)
    script.loader.exec_module(fewshot_bench)
    from latbench.predictor.fewshot import (
        FBNET_CHOICES,
        FBNET_LAYERS,
        ReferenceTable,
        table_features,
    )

    rng = np.random.default_rng(0)
    archs = tuple("-".join(rng.choice(FBNET_CHOICES, FBNET_LAYERS)) for _ in range(3000))
    clean = table_features("fbnet", archs) @ rng.uniform(0.1, 1.0, FBNET_LAYERS
                                                          * len(FBNET_CHOICES)) + 5
    drift = 1 + 0.12 * np.sin(np.arange(len(archs)) / 150)  # slow, +-12%
    noise = 1 + 0.12 / np.sqrt(2) * rng.standard_normal(len(archs))  # same spread, i.i.d.
    table = ReferenceTable(archs, ("drifting", "noisy"),
                           np.column_stack([clean * drift, clean * noise]))
    result = fewshot_bench.order_drift("fbnet", table).set_index("device")
    assert result.loc["drifting", "drift_sd"] > 0.05 > 0.02 > result.loc["noisy", "drift_sd"]
    assert result.loc["drifting", "within10_drift_removed"] > 0.95 > \
        result.loc["drifting", "within10"]
    assert abs(result.loc["noisy", "within10_drift_removed"]
               - result.loc["noisy", "within10"]) < 0.03


def _platform_matrix(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("platform_matrix",
                                                  ROOT / "benchmarks" / "platform_matrix.py")
    assert spec is not None and spec.loader is not None
    matrix = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "platform_matrix", matrix)  # its dataclass looks it up
    monkeypatch.setattr(sys, "path", list(sys.path))  # it puts benchmarks/ first
    spec.loader.exec_module(matrix)
    return matrix


def test_platform_matrix_names_a_refused_platform(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform latbench refuses on this machine (ONNX Runtime FP16 off ARM64) is a row that
    says why, with no campaign minutes: nothing was measured."""
    matrix = _platform_matrix(monkeypatch)
    log = tmp_path / "log.txt"
    log.write_text("$ latbench bench ops ...\nlatbench: error: runtime onnxruntime cannot "
                   "measure fp16 kernels on device local (x86_64): why\n")
    assert matrix.refusal(log) == ("runtime onnxruntime cannot measure fp16 kernels on device "
                                   "local (x86_64): why")
    log.write_text("$ latbench bench ops ...\nTraceback (most recent call last):\n")
    assert matrix.refusal(log) is None
    row = {"platform": "onnxruntime/fp16/1t", "error": "bench ops: why"}
    header, rule, line = matrix.tables([matrix.median_row("onnxruntime/fp16/1t", [row])])
    assert header.count("|") == rule.count("|") == line.count("|")
    assert line.startswith("| onnxruntime/fp16/1t |  | | | bench ops: why |")


def test_platform_matrix_counts_every_attempt_of_a_resumed_campaign(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A campaign that stopped with jobs left (the machine never quiet enough) and was resumed
    (--keep) cost the platform both attempts' minutes, not the resumption's alone."""
    matrix = _platform_matrix(monkeypatch)
    outcomes = iter([(1, 600.0),  # bench ops stops unfinished
                     (0, 60.0), (1, 5.0)])  # resumed: bench ops finishes, predictor fit fails

    def fake_run(argv: list[str], log: Path) -> tuple[int, float]:
        log.write_text("$ latbench ...\n")
        return next(outcomes)

    monkeypatch.setattr(matrix, "run", fake_run)
    platform = matrix.MatrixPlatform("onnxruntime", "", "int8", 2)
    first = matrix.measure_platform(platform, "quick", "vit:1", tmp_path, passes=1)
    assert first["campaign_min"] == pytest.approx(10.0) and "bench ops exited 1" in first["error"]
    second = matrix.measure_platform(platform, "quick", "vit:1", tmp_path, passes=1)
    assert second["campaign_min"] == pytest.approx(11.0)
    assert "predictor fit exited 1" in second["error"]
