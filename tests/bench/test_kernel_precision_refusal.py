"""ONNX Runtime's float16 kernels off ARM64: its CPU provider casts around the convolutions and
matrix products it cannot compute in float16 and picks from each node's neighbours what else
does, so a kernel timed alone computes differently from the same kernel in a network. A kernel
campaign there is refused before anything is written; networks are still measured whole."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

from latbench.bench.campaign import (
    CampaignConfig,
    Subject,
    _check_kernel_precisions,
    measure_fleet_into_dataset,
    measure_into_dataset,
)
from latbench.bench.ops import OpSpec
from latbench.bench.runners import LiteRTRunner, OnnxRuntimeRunner, RunSettings
from latbench.bench.runners.onnxruntime import ARM64_MACHINES
from latbench.device_agents import Device, LocalTransport
from latbench.errors import ConfigError

ARM64 = platform.machine().lower() in ARM64_MACHINES
CONV16 = OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3, dtype="float16")


@pytest.mark.parametrize("machine, precision, refused", [
    ("x86_64", "float16", True), ("AMD64", "float16", True), ("i686", "float16", True),
    ("aarch64", "float16", False), ("arm64", "float16", False),
    ("x86_64", "float32", False), ("x86_64", "int8", False),
    ("", "float16", False),  # a device that does not say: measured, not guessed at
])
def test_onnxruntime_refuses_float16_kernels_off_arm64(machine: str, precision: str,
                                                       refused: bool) -> None:
    why = OnnxRuntimeRunner.kernel_refusal(precision, {"machine": machine})
    assert (why is not None) == refused
    if refused:
        assert f"no float16 convolutions or matrix products on {machine}" in why


def test_litert_computes_float16_kernels_on_any_cpu() -> None:
    assert LiteRTRunner.kernel_refusal("float16", {"machine": "x86_64"}) is None


def test_the_campaign_check_names_device_runtime_and_machine() -> None:
    kernels = [Subject.op(CONV16)]
    with pytest.raises(ConfigError, match=r"^runtime onnxruntime cannot measure fp16 kernels "
                                          r"on device pi \(x86_64\): "):
        _check_kernel_precisions(kernels, {"pi": ({"machine": "x86_64"},
                                                  ["litert", "onnxruntime"])})
    _check_kernel_precisions(kernels, {"phone": ({"machine": "aarch64"}, ["onnxruntime"])})
    _check_kernel_precisions(kernels, {"pi": ({"machine": "x86_64"}, ["litert"])})
    network = Subject.chain("net@float16", "chain", [CONV16, CONV16])
    _check_kernel_precisions([network], {"pi": ({"machine": "x86_64"}, ["onnxruntime"])})


def _config() -> CampaignConfig:
    return CampaignConfig(settings=RunSettings(threads=1, warmup=1, runs=3, rounds=1),
                          calibration_runs=0)


@pytest.mark.skipif(ARM64, reason="ONNX Runtime computes float16 on ARM64: nothing is refused")
def test_campaigns_on_this_cpu_refuse_before_writing(tmp_path: Path) -> None:
    device = Device(name="here", transport=LocalTransport(), runtimes=("onnxruntime",),
                    work_dir=str(tmp_path / "work"), python=sys.executable)
    expected = f"onnxruntime cannot measure fp16 kernels on device here \\({platform.machine()}"
    with pytest.raises(ConfigError, match=expected):
        measure_into_dataset([Subject.op(CONV16)], device, "onnxruntime", tmp_path / "one",
                             _config())
    with pytest.raises(ConfigError, match=expected):
        measure_fleet_into_dataset([Subject.op(CONV16)], [device], None, tmp_path / "fleet",
                                   _config())
    assert not (tmp_path / "one").exists() and not (tmp_path / "fleet").exists()
