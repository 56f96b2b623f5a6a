"""Energy per inference where the device exposes a power source: RAPL counters, hwmon power
and battery current x voltage found in a sysfs tree, counter wrap-around, and a campaign on
the local CPU reading a fixture power file with a known value - or saying "not available"."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from latbench.bench.campaign import CampaignConfig, Subject, measure_into_dataset
from latbench.bench.ops import OpSpec
from latbench.bench.runners import RunSettings
from latbench.bench.store import LatencyDataset
from latbench.device_agents import local_device
from latbench.device_agents.agent import latbench_agent as agent

WATTS = 5.0
# A kernel of about a millisecond: the timing's own per-call cost is negligible beside it.
KERNEL = OpSpec("conv", h=28, w=28, cin=64, cout=64, kernel=3)


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def power_sensor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A sysfs tree with one hwmon power sensor reading a steady 5 W."""
    root = tmp_path / "sys"
    write(root, "class/hwmon/hwmon0/name", "fakepower")
    write(root, "class/hwmon/hwmon0/power1_input", str(int(WATTS * 1e6)))  # microwatts
    monkeypatch.setenv("LATBENCH_AGENT_SYSFS", str(root))
    return root


def test_sources_found_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "sys"
    monkeypatch.setenv("LATBENCH_AGENT_SYSFS", str(root))
    assert agent.energy_meter() is None
    assert agent.energy_method(agent.energy_meter()) == "not available"
    write(root, "class/power_supply/BAT0/type", "Battery")
    write(root, "class/power_supply/BAT0/current_now", "-500000")  # discharging, uA
    write(root, "class/power_supply/BAT0/voltage_now", "4000000")  # uV
    battery = agent.energy_meter()
    assert battery is not None and battery.method.startswith("battery:BAT0")
    assert battery.read() == pytest.approx(2.0)  # watts
    write(root, "class/hwmon/hwmon3/power1_input", "1500000")
    hwmon = agent.energy_meter()
    assert hwmon is not None and hwmon.method == "hwmon:hwmon3/power1_input"
    assert hwmon.read() == pytest.approx(1.5) and not hwmon.counter
    write(root, "class/powercap/intel-rapl:0/name", "package-0")
    write(root, "class/powercap/intel-rapl:0/energy_uj", "123456")
    write(root, "class/powercap/intel-rapl:0/max_energy_range_uj", "262143328850")
    rapl = agent.energy_meter()
    assert rapl is not None and rapl.method.startswith("rapl:intel-rapl:0:package-0")
    assert rapl.counter and rapl.wrap == 262143328850


def test_counter_difference_and_wrap() -> None:
    values = iter([1_000.0, 301_000.0])
    meter = agent.EnergyMeter("rapl", "1 uJ", lambda: next(values), True, wrap=1_000_000)
    assert meter.joules(meter.start()) == pytest.approx(0.3)
    values = iter([999_900.0, 100.0])  # wrapped past the range
    assert meter.joules(meter.start()) == pytest.approx(200e-6)
    broken = agent.EnergyMeter("rapl", "1 uJ", lambda: None, True)
    assert math.isnan(broken.joules(broken.start()))


def test_power_is_integrated_over_the_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 10.5])
    monkeypatch.setattr(agent.time, "perf_counter", lambda: next(clock))
    readings = iter([4.0, 6.0])
    meter = agent.EnergyMeter("hwmon", "power", lambda: next(readings), False)
    assert meter.joules(meter.start()) == pytest.approx(2.5)  # 5 W mean x 0.5 s


def measure(tmp_path: Path) -> dict:
    settings = RunSettings(threads=1, warmup=2, runs=10, rounds=3)
    measure_into_dataset([Subject.op(KERNEL)], local_device(str(tmp_path / "work")),
                         "onnxruntime", tmp_path / "ds",
                         CampaignConfig(settings=settings, calibration_runs=0))
    return LatencyDataset.open(tmp_path / "ds").records().iloc[0].to_dict()


def test_campaign_records_energy_per_inference(tmp_path: Path, power_sensor: Path) -> None:
    record = measure(tmp_path)
    assert record["status"] == "ok"
    assert record["energy_method"] == "hwmon:fakepower/power1_input"
    # 5 W for the mean call of ~1 ms: millijoules = watts x milliseconds
    assert record["energy_mj"] == pytest.approx(WATTS * record["mean_ms"], rel=0.25)


def test_no_sensor_says_not_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATBENCH_AGENT_SYSFS", str(tmp_path / "empty"))
    record = measure(tmp_path)
    assert record["energy_method"] == "not available" and math.isnan(record["energy_mj"])
    facts = agent.facts(str(tmp_path))
    assert facts["energy"] == "not available"
