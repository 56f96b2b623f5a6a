"""How latbench installs: one top-level import name, a core that runs without the optional
extras, and reference data found from any working directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.ops import OpSpec

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT / "datasets" / "xeon-2core-onnxruntime-1t-nasbench-macro"
OPTIONAL = ("torch", "matplotlib", "paramiko", "ai_edge_litert", "tflite_runtime", "onnxscript")

# Runs the CLI with the optional extras made unimportable, as in an install of the core alone.
BLOCKED_CLI = """
import importlib.abc, sys
BLOCK = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
import importlib.util
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: (
    None if name.split(".")[0] in BLOCK else find_spec(name, *a))
from latbench.cli import main
code = main(sys.argv[2:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCK)
assert not leaked, leaked
sys.exit(code)
"""


def run_python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_pyproject_installs_every_package_under_latbench() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["packages"] and all(p == "latbench" or p.startswith("latbench.")
                                      for p in config["packages"])
    for folder in ("bench", "predictor", "search", "device_agents"):
        assert config["package-dir"][f"latbench.{folder}"] == folder


def test_wheel_holds_one_top_level_name(tmp_path: Path) -> None:
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "runs", "*.egg-info", "__pycache__", ".*_cache", "datasets",
        "tests", "benchmarks"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                             "--no-build-isolation", "-w", str(tmp_path), str(source)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("latbench-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"latbench"}
    assert "latbench/device_agents/agent/latbench_agent.py" in names
    assert "latbench/bench/runners/base.py" in names


def test_a_users_own_modules_do_not_collide(tmp_path: Path) -> None:
    """A project with its own search.py, predictor.py, bench.py and device_agents.py imports
    them and latbench's stages side by side."""
    for name in ("search", "predictor", "bench", "device_agents"):
        (tmp_path / f"{name}.py").write_text(f"WHO = 'user {name}'\n")
    code = """
import sys
sys.path.insert(0, '.')
import bench, device_agents, predictor, search
import latbench.bench.ops, latbench.device_agents, latbench.predictor.models, latbench.search.run
assert [m.WHO for m in (bench, device_agents, predictor, search)] == [
    'user bench', 'user device_agents', 'user predictor', 'user search']
assert latbench.bench.ops.OpSpec and latbench.search.run.SearchJob
print('ok')
"""
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_core_fits_and_predicts_without_optional_extras(tmp_path: Path) -> None:
    """The core install (no torch, LiteRT, paramiko, matplotlib) reads a dataset, fits a
    predictor and predicts an ONNX model."""
    model = tmp_path / "chain.onnx"
    model.write_bytes(to_onnx(chain_graph([
        OpSpec("conv", h=32, w=32, cin=3, cout=32, kernel=3, stride=2, act="relu"),
        OpSpec("mbconv", h=16, w=16, cin=32, cout=32, kernel=3, expand=3, act="relu"),
        OpSpec("pool", h=16, w=16, cin=32, pool="gavg"),
        OpSpec("linear", cin=32, cout=10)], seed=0)))
    blocked = ",".join(OPTIONAL)
    fit = run_python(BLOCKED_CLI, blocked, "predictor", "fit", "--data", str(DATASET),
                     "--out", str(tmp_path / "pred"), "--predictor", "linear", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-2000:]
    predict = run_python(BLOCKED_CLI, blocked, "predict", str(model), "--predictor",
                         str(tmp_path / "pred"), "--json", cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr[-2000:]
    assert '"predicted_ms"' in predict.stdout


def test_default_data_dir_does_not_depend_on_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """../shared/data beside the checkout (as CI and `make demo` have it), from any folder;
    $LATBENCH_DATA wins."""
    code = "from latbench.paths import default_data_dir; print(default_data_dir())"
    monkeypatch.delenv("LATBENCH_DATA", raising=False)
    found = run_python(code, cwd=tmp_path).stdout.strip()
    assert Path(found).resolve() == (ROOT.parent / "shared" / "data").resolve()
    monkeypatch.setenv("LATBENCH_DATA", str(tmp_path))
    assert Path(run_python(code, cwd=ROOT).stdout.strip()) == tmp_path


def test_a_command_needing_a_missing_extra_names_it(tmp_path: Path) -> None:
    """Family networks are PyTorch modules: without torch, one line naming the extra, before
    anything is measured."""
    result = run_python(BLOCKED_CLI, ",".join(OPTIONAL), "bench", "networks", "--networks",
                        "resnet:1", "--out", str(tmp_path / "nets"), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "latbench: error: resnet networks are PyTorch modules and torch is not installed: "
        "pip install 'latbench[torch]'"]
    assert not (tmp_path / "nets").exists()
    # deeper in: the supernet search imports torch; the CLI turns that into the same advice
    search = run_python(BLOCKED_CLI, ",".join(OPTIONAL), "search", "--space", "nasbench201",
                        "--predictor", "flops", "--strategy", "proxyless-g", "--budget-ms",
                        "1", "--out", str(tmp_path / "search"), cwd=tmp_path)
    assert search.returncode == 1 and search.stderr.strip().splitlines()[-1] == (
        "latbench: error: this needs torch, which is not installed: pip install "
        "'latbench[torch]'")
    assert not (tmp_path / "search").exists()


def test_reports_are_written_without_plots_when_matplotlib_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from latbench import extras
    from latbench.bench.campaign import CampaignSummary
    from latbench.predictor.evaluate import EvaluationReport, error_metrics, write_report

    monkeypatch.setattr(extras, "available", lambda module: module != "matplotlib")
    metrics = {"all": error_metrics([1.0, 2.0, 3.1], [1.1, 2.0, 3.0])}
    import pandas as pd

    table = pd.DataFrame({"network": ["a", "b", "c"], "family": ["x"] * 3,
                          "predicted_ms": [1.0, 2.0, 3.1], "measured_ms": [1.1, 2.0, 3.0]})
    paths = write_report(EvaluationReport(table, metrics, "min_ms", CampaignSummary()),
                         tmp_path / "eval")
    assert paths["json"].is_file() and paths["markdown"].is_file()
    assert not paths["scatter"].exists()
    assert "plots need matplotlib (pip install 'latbench[plots]')" in caplog.text
