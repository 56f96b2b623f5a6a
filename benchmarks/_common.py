"""Setup several benchmarks share: a fresh output folder, an operator dataset measured from a
plan on the local CPU with the settings every predictor benchmark uses (ONNX Runtime, 1 thread,
the default run settings), and held-out networks as the ONNX files a user would bring."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latbench.bench.campaign import CampaignConfig, Subject, measure_into_dataset
from latbench.bench.network_sets import resolve_networks
from latbench.bench.plans import load_plan, plan_subjects
from latbench.bench.runners import RunSettings
from latbench.bench.spaces import get_space
from latbench.device_agents import local_device

HELD_OUT_SEED = 2024  # the held-out networks' seed: never a plan's calibration networks
# benchmarks/platform_matrix.py's default output, which the benchmarks of its campaigns read
# (run_all.py runs it first)
MATRIX_OUT = Path("/tmp/latbench-platform-matrix")


def matrix_predictor(label: str, matrix: Path = MATRIX_OUT) -> Path:
    """The predictor the platform matrix fitted for platform `label` (its folder name, e.g.
    litert-xnnpack_int8_1t): run 1's when it made several runs."""
    folder = matrix / label
    return (folder / "run1" if (folder / "run1").is_dir() else folder) / "predictor"


def fresh_dir(path: str | Path, keep: bool = False) -> Path:
    """`path`, removed first unless `keep` (resume an earlier run's output)."""
    out = Path(path)
    if out.exists() and not keep:
        shutil.rmtree(out)
    return out


@dataclass
class PlanDataset:
    """What `measure_plan` measured with, and how long it took."""

    device: Any
    config: CampaignConfig
    plan: Any
    subjects: list[Any]
    extras: list[Any]  # the `extra` subjects measured beside the plan's (not already in it)
    summary: Any
    seconds: float


def measure_plan(plan_name: str, dataset: Path, flags: list[str],
                 extra: Sequence[Any] = ()) -> PlanDataset:
    """Measure plan `plan_name` on the local CPU into `dataset` (resumed if it exists); the
    card records the plan and `flags`. `extra` subjects (held-out networks, their kernel lists
    removed so they do not calibrate anything) are measured in the same campaign, their batches
    mixed in time with the plan's: a slow phase of the machine then hits them and the plan's
    calibration networks alike. Extras the plan already holds are measured once, as the plan's."""
    device = local_device(threads=1)
    config = CampaignConfig(settings=RunSettings(threads=1))
    plan = load_plan(plan_name)
    started = time.perf_counter()
    subjects = plan_subjects(plan)
    planned = {s.key for s in subjects}
    extra = [s for s in extra if s.key not in planned]
    summary = measure_into_dataset([*subjects, *extra], device, "onnxruntime", dataset, config,
                                   card={"plan": plan.to_dict(), "flags": flags})
    return PlanDataset(device, config, plan, subjects, extra, summary,
                       time.perf_counter() - started)


def macro_files(count: int, exclude: set[str], folder: Path) -> list[Subject]:
    """Held-out NAS-Bench-Macro architectures (drawn as `resolve_networks` draws them) as ONNX
    files exported by torch's default exporter from the space's PyTorch module (what a user of
    the space would have)."""
    from latbench.bench.export.from_torch import torch_to_onnx

    space = get_space("nasbench-macro")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for net in resolve_networks(f"nasbench-macro:{count}", seed=HELD_OUT_SEED, exclude=exclude):
        code = net.key.split(":", 1)[1]
        path = folder / f"{code}.onnx"
        if not path.exists():
            path.write_bytes(torch_to_onnx(space.to_torch(space.decode(code)), space.input_shape,
                                           dynamo=True))
        out.append(Subject.model_file(net.key, "nasbench-macro", path.read_bytes, ".onnx"))
    return out


def family_files(families: Sequence[str], per_family: int, exclude: set[str],
                 folder: Path) -> list[Subject]:
    """Held-out networks of `families` (torch's default exporter), written as files."""
    spec = ",".join(f"{f}:{per_family}" for f in families)
    out = []
    for net in resolve_networks(spec, seed=HELD_OUT_SEED, exclude=exclude):
        path = folder / net.family / f"{net.key.split(':', 1)[1]}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(net.model())
        out.append(Subject.model_file(net.key, net.family, path.read_bytes, ".onnx"))
    return out
