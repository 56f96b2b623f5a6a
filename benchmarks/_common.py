"""Setup several benchmarks share: a fresh output folder, and an operator dataset measured from
a plan on the local CPU with the settings every predictor benchmark uses (ONNX Runtime,
1 thread, the default run settings)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latbench.bench.campaign import CampaignConfig, measure_into_dataset
from latbench.bench.plans import load_plan, plan_subjects
from latbench.bench.runners import RunSettings
from latbench.device_agents import local_device


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
