"""Supernet training under torchrun with DistributedDataParallel: 2 CPU processes (gloo) train
on different shards of the data and must end with identical weights, BatchNorm statistics and
architecture parameters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")
REPO = Path(__file__).resolve().parents[2]


def run_torchrun(out: Path, mode: str) -> list[dict]:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                           str(WORKER), str(out), mode],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("mode", ["two_path",
                                  pytest.param("reinforce", marks=pytest.mark.slow)])
def test_two_ranks_end_identical(tmp_path: Path, mode: str) -> None:
    ranks = run_torchrun(tmp_path, mode)
    a, b = ranks
    assert (a["rank"], b["rank"]) == (0, 1)
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
    assert torch.equal(a["alpha"], b["alpha"])
    # it trained: weights and architecture parameters moved away from the start
    moved = [k for k in a["state"] if a["state"][k].is_floating_point()
             and not torch.equal(a["state"][k], a["initial"][k])]
    assert any("candidates" in k and "weight" in k for k in moved)
    assert float(a["alpha"].abs().max()) > 0
    assert a["seen"] == b["seen"] > 0
    # ranks saw different data: their validation scores are their own shards'
    assert len(a["history"]) == 2


@pytest.mark.slow
def test_cli_search_under_torchrun(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m latbench.cli search --strategy proxyless-g ...`: both
    ranks train, rank 0 alone writes the outputs."""
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "latbench.cli",
         "search", "--predictor", "flops", "--space-option", "resolution=8", "--strategy",
         "proxyless-g", "--budget-ms", "0.055", "--epochs", "2", "--option", "max_steps=2",
         "--option", "batch_size=16", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = out / "proxyless-g-0.055ms"
    assert (folder / "winner.onnx").is_file() and (folder / "winner.pt").is_file()
    assert proc.stdout.count('"strategy": "proxyless-g"') == 1  # printed once, by rank 0
