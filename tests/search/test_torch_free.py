"""Torch is imported only by what builds or trains networks: the space and family descriptions,
the latency table, the search job and the command line (help, an exhaustive search on the
FLOPs table) run without it, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"

SCRIPT = """
import contextlib, io, sys

def torch_modules():
    return sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))

import numpy as np
import latbench.bench.spaces, latbench.bench.families, latbench.search.latency
import latbench.search.run, latbench.search.session, latbench.search.strategies, latbench.cli
assert not torch_modules(), ("import", torch_modules()[:5])

from latbench.bench.families import list_families, sample_networks
from latbench.bench.spaces import SPACES, get_space
for name in SPACES:
    space = get_space(name)
    arch = space.sample(np.random.default_rng(0))
    assert space.decode(space.encode(arch)) == arch and space.ops(arch)
for family in list_families():
    sample_networks(family, 2, np.random.default_rng(0))
assert not torch_modules(), ("describe", torch_modules()[:5])

from latbench.cli import main
for argv in (["--help"], ["search", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
assert not torch_modules(), ("help", torch_modules()[:5])

with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(["search", "--predictor", "flops", "--strategy", "exhaustive", "--budget-ms",
                 "0.1", "--data-dir", sys.argv[1], "--json"])
assert code == 0 and '"strategy": "exhaustive"' in out.getvalue(), out.getvalue()
assert not torch_modules(), ("search", torch_modules()[:5])
print("torch-free")
"""


def test_descriptions_and_cli_do_not_import_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(DATA_DIR)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("torch-free")


def test_the_check_sees_torch_when_a_network_is_built() -> None:
    """The same check fails once a network is built (so the test above can fail)."""
    script = ("import sys, numpy as np\nfrom latbench.bench.spaces import get_space\n"
              "space = get_space('nasbench-macro', resolution=8)\n"
              "space.to_torch(space.sample(np.random.default_rng(0)))\n"
              "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "True"
