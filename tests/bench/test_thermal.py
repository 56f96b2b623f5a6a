"""Thermal wait before batches and governor pinning around a campaign, through a stand-in
board's transport and through the real shell scripts reading a fake /sys (this machine has no
thermal zones and no cpufreq): the wait ends when the board is cool, is bounded when it never
gets there, and says so; governors are pinned and put back, and a refusal is recorded while the
campaign goes on unpinned; --cooldown bounds the wait (or pauses without --max-temp)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from standins.sysfs import FakeSysfs

from latbench.bench.campaign import CampaignConfig, Subject, measure_into_dataset
from latbench.bench.ops import OpSpec
from latbench.bench.runners import RunSettings
from latbench.bench.store import LatencyDataset
from latbench.bench.thermal import (
    READ_GOVERNORS,
    READ_TEMPS,
    GovernorPin,
    ThermalControl,
    hottest_reading,
    max_temperature,
)
from latbench.cli.common import cooling
from latbench.device_agents import CommandResult, Device, LocalTransport
from latbench.errors import ConfigError

FAST = RunSettings(threads=1, warmup=1, runs=3, rounds=1)


class StandInBoard(LocalTransport):
    """A stand-in for a Linux board's shell: thermal zones that cool by `cooling` C per
    reading, governors in a dict that a root (or not) shell changes; everything else (the
    agent) runs here for real."""

    def __init__(self, temps_c: Sequence[float], cooling: float = 0.0, root: bool = True
                 ) -> None:
        super().__init__()
        self.temps = list(temps_c)
        self.cooling, self.root = cooling, root
        self.governors = {f"/sys/devices/system/cpu/cpu{i}/cpufreq/scaling_governor":
                          "schedutil" for i in range(4)}
        self.history: list[dict[str, str]] = []
        self.reads = 0

    def run(self, argv, timeout_s, on_stderr=None):
        argv = list(argv)
        if argv == READ_TEMPS:
            self.reads += 1
            text = "@temps\n" + "".join(f"thermal_zone{i} {int(1000 * t)} cpu\n"
                                        for i, t in enumerate(self.temps))
            self.temps = [t - self.cooling for t in self.temps]
            return CommandResult(tuple(argv), 0, text + "@hwmon\n", "", 0.0)
        if argv == READ_GOVERNORS:
            text = "".join(f"{p} {g}\n" for p, g in self.governors.items())
            return CommandResult(tuple(argv), 0, text, "", 0.0)
        if argv[:3] == ["sh", "-c", 'echo "$1" > "$2"']:
            value, path = argv[4], argv[5]
            if not self.root:
                return CommandResult(tuple(argv), 1, "", f"sh: {path}: Permission denied\n",
                                     0.0)
            self.governors[path] = value
            self.history.append(dict(self.governors))
            return CommandResult(tuple(argv), 0, "", "", 0.0)
        return super().run(argv, timeout_s, on_stderr)


def board(tmp_path: Path, transport: StandInBoard) -> Device:
    return Device(name="board", transport=transport, runtimes=("onnxruntime",),
                  work_dir=str(tmp_path / "work"), python=sys.executable)


def test_reads_the_hottest_zone(tmp_path: Path) -> None:
    assert max_temperature(board(tmp_path, StandInBoard([41.5, 63.25, 50.0]))) == 63.25
    assert max_temperature(board(tmp_path, StandInBoard([]))) is None


def test_waits_until_cool(tmp_path: Path) -> None:
    stand_in = StandInBoard([70.0], cooling=4.0)  # 70, 66, 62, 58: cool at the 4th reading
    slept: list[float] = []
    control = ThermalControl(board(tmp_path, stand_in), 60.0, max_wait_s=300, poll_s=5,
                             sleep=slept.append)
    notes: list[str] = []
    control.before_batch(notes.append)
    assert slept == [5, 5, 5] and stand_in.reads == 4 and notes == []
    [wait] = control.waits
    assert (wait.start_c, wait.end_c, wait.waited_s, wait.cooled) == (70.0, 58.0, 15.0, True)
    control.before_batch(notes.append)  # already cool: no wait
    assert len(control.waits) == 1 and "waited 15 s before 1 batches" in control.describe()


def test_threshold_below_idle_waits_a_bounded_time_and_warns(tmp_path: Path) -> None:
    stand_in = StandInBoard([45.0])  # idles at 45 C, never cools further
    slept: list[float] = []
    control = ThermalControl(board(tmp_path, stand_in), 30.0, max_wait_s=12, poll_s=5,
                             sleep=slept.append)
    notes: list[str] = []
    control.before_batch(notes.append)
    assert slept == [5, 5, 2]  # bounded by max_wait_s
    assert control.waits[0].cooled is False
    assert notes and "still 45.0 C after 12 s" in notes[0]
    assert control.report()["not_cooled"] == 1


def test_no_sensor_is_said_once(tmp_path: Path) -> None:
    control = ThermalControl(board(tmp_path, StandInBoard([])), 60.0, sleep=pytest.fail)
    notes: list[str] = []
    control.before_batch(notes.append)
    control.before_batch(notes.append)
    assert len(notes) == 1 and "no temperature" in notes[0] and control.no_sensor


def test_pin_and_restore(tmp_path: Path) -> None:
    stand_in = StandInBoard([40.0])
    pin = GovernorPin(board(tmp_path, stand_in))
    pin.pin()
    assert set(stand_in.governors.values()) == {"performance"} and not pin.refused
    pin.restore()
    assert set(stand_in.governors.values()) == {"schedutil"} and pin.restored
    assert pin.report() == {"governor": "performance", "cpus": 4, "was": ["schedutil"],
                            "restored": True, "refused": ""}


def test_pin_refused_runs_unpinned(tmp_path: Path) -> None:
    stand_in = StandInBoard([40.0], root=False)
    pin = GovernorPin(board(tmp_path, stand_in))
    pin.pin()
    assert not pin.pinned and "Permission denied" in pin.refused
    assert set(stand_in.governors.values()) == {"schedutil"}
    assert pin.describe().startswith("governor not pinned:")


def test_campaign_pins_waits_and_records_it(tmp_path: Path) -> None:
    stand_in = StandInBoard([62.0], cooling=2.0)  # 62 C, then 60 C after one 5 s poll
    config = CampaignConfig(settings=FAST, calibration_runs=0, max_temp_c=60.0,
                            max_cool_wait_s=30, pin_governor=True)
    summary = measure_into_dataset([Subject.op(OpSpec("act", h=4, w=4, cin=4))],
                                   board(tmp_path, stand_in), "onnxruntime",
                                   tmp_path / "ds", config)
    assert summary.measured == 1
    # pinned during the campaign, restored after
    assert stand_in.history[3] == dict.fromkeys(stand_in.governors, "performance")
    assert set(stand_in.governors.values()) == {"schedutil"}
    control = summary.control["board/onnxruntime"]
    assert control["pin"]["restored"] and control["thermal"]["waits"][0]["cooled"]
    card = LatencyDataset.open(tmp_path / "ds").card
    assert card["drift_last_run"]["control"]["board/onnxruntime"]["pin"]["cpus"] == 4
    assert any("governor pinned to performance" in line for line in summary.drift_report())
    [batch] = card["drift_last_run"]["batches"]
    assert batch["time_unix"] > 0 and batch["seconds"] > 0
    assert control["thermal"]["sources"] == ["thermal_zone"]
    assert control["thermal"]["waits"][0]["source"] == "thermal_zone:thermal_zone0"
    # the drift figure is drawn next to the card and named in the summary
    assert summary.drift_plots == [tmp_path / "ds" / "drift.png"]
    assert (tmp_path / "ds" / "drift.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_thresholds_are_refused() -> None:
    with pytest.raises(ConfigError, match="max-temp"):
        CampaignConfig(max_temp_c=500.0)
    with pytest.raises(ConfigError, match="cooling wait"):
        CampaignConfig(max_cool_wait_s=-1)


# --- the real scripts on a fake /sys ------------------------------------------------------------
def sysfs_board(tmp_path: Path, sysfs: FakeSysfs) -> Device:
    return Device(name="board", transport=LocalTransport(env=sysfs.env()),
                  runtimes=("onnxruntime",), work_dir=str(tmp_path / "work"),
                  python=sys.executable)


def test_thermal_wait_on_a_fake_thermal_zone_file(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path / "sys")
    hot = sysfs.zone(0, 70.0, "cpu-thermal")
    sysfs.zone(1, 41.0, "gpu-thermal")
    temps = iter([64.0, 58.0])

    def sleep(seconds: float) -> None:  # the zone cools while latbench waits
        FakeSysfs.set_temp(hot, next(temps))

    control = ThermalControl(sysfs_board(tmp_path, sysfs), 60.0, max_wait_s=300, poll_s=5,
                             sleep=sleep)
    control.before_batch(pytest.fail)
    [wait] = control.waits
    assert (wait.start_c, wait.end_c, wait.waited_s, wait.cooled) == (70.0, 58.0, 10.0, True)
    assert wait.source == "thermal_zone:thermal_zone0"
    assert control.describe() == ("waited 10 s before 1 batches to cool to 60 C "
                                  "(read from thermal_zone)")


def test_hwmon_sensors_are_read_where_no_zone_is(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.hwmon(2, 81.5, "coretemp", "Package id 0")
    sysfs.hwmon(3, 38.0, "nvme")
    board = sysfs_board(tmp_path, sysfs)
    assert hottest_reading(board) == {"zone": "hwmon2/temp1_input",
                                      "name": "coretemp Package id 0", "celsius": 81.5,
                                      "source": "hwmon"}
    sysfs.zone(0, 45.0)  # a thermal zone is the CPU's own: hwmon (disks, boards) is not read
    assert hottest_reading(board) == {"zone": "thermal_zone0", "name": "cpu-thermal",
                                      "celsius": 45.0, "source": "thermal_zone"}


def test_no_sensor_at_all_reads_none(tmp_path: Path) -> None:
    # no zone, no hwmon, and no dumpsys on this machine: nothing to wait on
    sysfs = FakeSysfs(tmp_path / "sys")
    assert max_temperature(sysfs_board(tmp_path, sysfs)) is None


def test_governor_files_pinned_and_restored(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.cpus([1_800_000, 1_800_000, 2_400_000, None], governor="schedutil")
    pin = GovernorPin(sysfs_board(tmp_path, sysfs))
    pin.pin()
    assert dict(sysfs.governors()) == {0: "performance", 1: "performance", 2: "performance"}
    assert pin.describe() == "governor pinned to performance on 3 CPUs (was schedutil)"
    pin.restore()
    assert dict(sysfs.governors()) == {0: "schedutil", 1: "schedutil", 2: "schedutil"}
    assert pin.restored and pin.describe().endswith(", restored")


def test_no_cpufreq_is_a_recorded_refusal(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.cpus([None, None])
    pin = GovernorPin(sysfs_board(tmp_path, sysfs))
    pin.pin()
    assert not pin.pinned and pin.report()["refused"] == ("the device has no CPU frequency "
                                                          "governors (cpufreq)")


# --- --cooldown ---------------------------------------------------------------------------------
def flags(max_temp=None, cooldown=None, max_cool_wait=None) -> argparse.Namespace:
    return argparse.Namespace(max_temp=max_temp, cooldown=cooldown, max_cool_wait=max_cool_wait)


def test_cooldown_bounds_the_wait_of_max_temp_or_pauses_without_it() -> None:
    assert cooling(flags(55.0)) == {"max_temp_c": 55.0, "cooldown_s": 0.0,
                                    "max_cool_wait_s": 300.0}
    assert cooling(flags(55.0, cooldown=120)) == {"max_temp_c": 55.0, "cooldown_s": 0.0,
                                                  "max_cool_wait_s": 120}
    assert cooling(flags(55.0, max_cool_wait=90))["max_cool_wait_s"] == 90  # the older name
    assert cooling(flags(55.0, cooldown=90, max_cool_wait=90))["max_cool_wait_s"] == 90
    assert cooling(flags(cooldown=7)) == {"max_temp_c": None, "cooldown_s": 7}
    assert cooling(flags()) == {"max_temp_c": None, "cooldown_s": 0.0}
    with pytest.raises(ConfigError, match="same bound"):
        cooling(flags(55.0, cooldown=60, max_cool_wait=90))
    with pytest.raises(ConfigError, match="give --max-temp too"):
        cooling(flags(max_cool_wait=90))
    with pytest.raises(ConfigError, match="--cooldown must be >= 0"):
        cooling(flags(55.0, cooldown=-1))


def test_cooldown_flag_reaches_the_campaign_config() -> None:
    from latbench.cli import build_parser
    from latbench.cli.common import campaign_config

    args = build_parser().parse_args(["bench", "ops", "--out", "x", "--max-temp", "50",
                                      "--cooldown", "45", "--pin", "--cpus", "2-3"])
    config = campaign_config(args)
    assert (config.max_temp_c, config.max_cool_wait_s, config.cooldown_s) == (50.0, 45.0, 0.0)
    assert config.pin_governor and config.pin_affinity and config.pin_cpus == (2, 3)
    plain = campaign_config(build_parser().parse_args(["bench", "ops", "--out", "x",
                                                       "--cooldown", "3"]))
    assert (plain.cooldown_s, plain.max_temp_c, plain.pin_affinity) == (3.0, None, False)
