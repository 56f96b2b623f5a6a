"""Cores a campaign is pinned to: chosen (the fastest top clocks, --cpus, the fleet's), checked
with the runner's own mechanism (taskset for native tools, sched_setaffinity for the agent)
through a stand-in transport that records the commands, refusals recorded while the campaign
runs unpinned; and a whole phone campaign through the real adb client with --pin, a cooling wait
read from dumpsys, the tool run under taskset and the drift figure written."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from standins.adb_standin_device import StandInAdbDevice
from standins.dumpsys import install_dumpsys
from standins.sysfs import FakeSysfs

from latbench.bench.affinity import (
    READ_CPUS,
    CorePin,
    cpu_list_text,
    fastest_cpus,
    parse_cpus_flag,
)
from latbench.bench.campaign import CampaignConfig, Subject, measure_into_dataset
from latbench.bench.ops import OpSpec
from latbench.bench.runners import RunSettings
from latbench.bench.store import LatencyDataset
from latbench.device_agents import ADBTransport, CommandResult, Device, LocalTransport
from latbench.errors import ConfigError

FAST = RunSettings(threads=1, warmup=1, runs=3, rounds=1)
PHONE_CLOCKS = [1_800_000] * 4 + [2_400_000] * 3 + [3_000_000]  # 4 little, 3 big, 1 prime


def test_fastest_cores_by_top_clock() -> None:
    clocks = dict(enumerate(PHONE_CLOCKS))
    assert fastest_cpus(clocks, 1) == (7,)              # the prime core
    assert fastest_cpus(clocks, 4) == (4, 5, 6, 7)      # prime + big
    assert fastest_cpus(clocks, 2) == (6, 7)            # highest-numbered big among equals
    assert fastest_cpus(clocks, 4, online=[0, 1, 2, 3, 4, 5]) == (2, 3, 4, 5)
    assert fastest_cpus({0: 1_500_000, 1: 1_500_000, 2: 1_500_000, 3: 1_500_000}, 1) == (3,)
    assert fastest_cpus({}, 1) == ()


def test_cpus_flag() -> None:
    assert parse_cpus_flag("4-7") == (4, 5, 6, 7)
    assert parse_cpus_flag("2,0,2") == (0, 2)
    for bad in ("", "big", "3-", "-1", "1,,2"):
        with pytest.raises(ConfigError, match="--cpus must be a CPU list"):
            parse_cpus_flag(bad)
    assert cpu_list_text((4, 5, 6, 7, 9)) == "4-7,9" and cpu_list_text([1]) == "1"
    with pytest.raises(ConfigError, match="--cpus"):
        CampaignConfig(pin_cpus=())


class RecordingBoard(LocalTransport):
    """A stand-in device shell: answers READ_CPUS from a fake /sys and the affinity probes as
    the device would (`allowed`: the CPUs a process may run on), recording every command."""

    def __init__(self, sysfs: FakeSysfs, allowed: set[int] | None = None,
                 taskset: bool = True) -> None:
        super().__init__(env=sysfs.env())
        self.allowed, self.taskset = allowed, taskset
        self.commands: list[list[str]] = []

    def run(self, argv, timeout_s, on_stderr=None):
        argv = list(argv)
        self.commands.append(argv)
        if argv == READ_CPUS:
            return super().run(argv, timeout_s, on_stderr)
        if argv[0] == "taskset" or (argv[0] == sys.executable and "sched_setaffinity" in argv[2]):
            cpus = ({c for c in range(64) if int(argv[1], 16) >> c & 1} if argv[0] == "taskset"
                    else {int(c) for c in argv[3:]})
            if argv[0] == "taskset" and not self.taskset:
                return CommandResult(tuple(argv), 127, "", "sh: taskset: not found\n", 0.0)
            if self.allowed is not None and not cpus <= self.allowed:
                return CommandResult(tuple(argv), 1, "", "taskset: failed to set pid 0's "
                                     "affinity: Invalid argument\n", 0.0)
            return CommandResult(tuple(argv), 0, "", "", 0.0)
        return super().run(argv, timeout_s, on_stderr)


def device(tmp_path: Path, transport, runtimes=("onnxruntime",), **kw) -> Device:
    tools = {"benchmark_model": sys.executable} if "tflite-benchmark-model" in runtimes else {}
    return Device(name="board", transport=transport, runtimes=runtimes, tools=tools,
                  work_dir=str(tmp_path / "work"), python=sys.executable, **kw)


def test_native_tool_cores_checked_with_taskset(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.cpus(PHONE_CLOCKS)
    board = RecordingBoard(sysfs)
    original = device(tmp_path, board, ("tflite-benchmark-model",))
    pin = CorePin(original, "tflite-benchmark-model", threads=4)
    pinned = pin.pin()
    assert board.commands[-1] == ["taskset", "f0", "true"]  # the mask the runner's prefix uses
    assert pinned.cpu_affinity == (4, 5, 6, 7) and original.cpu_affinity is None
    assert pin.report() == {"cpus": [4, 5, 6, 7], "chosen_by": "fastest top clock",
                            "how": "taskset", "threads": 4, "top_clock_khz": 3_000_000,
                            "refused": ""}
    assert pin.describe() == ("cores 4-7 pinned (fastest top clock, top clock 3.00 GHz) via "
                              "taskset")


def test_agent_cores_checked_with_sched_setaffinity(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.cpus(PHONE_CLOCKS)
    board = RecordingBoard(sysfs)
    pin = CorePin(device(tmp_path, board), "onnxruntime", threads=1, asked=(2, 3))
    assert pin.pin().cpu_affinity == (2, 3)
    probe = board.commands[-1]
    assert probe[0] == sys.executable and "sched_setaffinity" in probe[2]
    assert probe[3:] == ["2", "3"] and pin.chosen_by == "--cpus"


def test_refusals_leave_the_campaign_unpinned(tmp_path: Path) -> None:
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.cpus(PHONE_CLOCKS, online="0-5")
    fleet_pinned = device(tmp_path, RecordingBoard(sysfs), ("tflite-benchmark-model",),
                          cpu_affinity=(6, 7))
    pin = CorePin(fleet_pinned, "tflite-benchmark-model")
    assert pin.pin().cpu_affinity is None  # even the fleet's affinity: it cannot hold
    assert pin.refused == "CPU 6-7 is not online on board (online: 0-5)"
    assert pin.describe().startswith("cores not pinned: CPU 6-7 is not online")

    cpuset = device(tmp_path, RecordingBoard(sysfs, allowed={0, 1, 2, 3}),
                    ("tflite-benchmark-model",))
    pin = CorePin(cpuset, "tflite-benchmark-model", threads=2)
    assert pin.pin().cpu_affinity is None
    assert pin.refused == ("taskset to CPUs 4-5 was refused (taskset: failed to set pid 0's "
                           "affinity: Invalid argument)")

    no_taskset = device(tmp_path, RecordingBoard(sysfs, taskset=False),
                        ("tflite-benchmark-model",))
    pin = CorePin(no_taskset, "tflite-benchmark-model")
    assert pin.pin().cpu_affinity is None and pin.refused.startswith("taskset is not on the")

    bare = FakeSysfs(tmp_path / "vm")
    bare.cpus([None, None])
    pin = CorePin(device(tmp_path, RecordingBoard(bare)), "onnxruntime")
    assert pin.pin().cpu_affinity is None
    assert "no per-core clocks" in pin.refused and "--cpus" in pin.refused


def test_agent_campaign_pinned_and_recorded(tmp_path: Path) -> None:
    """The local agent really runs with the affinity chosen (sched_setaffinity), and a refused
    --cpus is recorded while the next campaign measures unpinned."""
    online = sorted(os.sched_getaffinity(0))
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.cpus([1_000_000 + 100_000 * i for i in range(max(online) + 1)], governor=None,
               online=",".join(map(str, online)))
    board = Device(name="board", transport=LocalTransport(env=sysfs.env()),
                   runtimes=("onnxruntime",), work_dir=str(tmp_path / "work"),
                   python=sys.executable)
    config = CampaignConfig(settings=FAST, calibration_runs=0, pin_governor=True,
                            pin_affinity=True)
    subject = [Subject.op(OpSpec("act", h=4, w=4, cin=4))]
    summary = measure_into_dataset(subject, board, "onnxruntime", tmp_path / "ds", config)
    assert summary.measured == 1
    control = summary.control["board/onnxruntime"]
    assert control["affinity"]["cpus"] == [max(online)]  # the fastest of this machine's CPUs
    assert control["affinity"]["how"] == "sched_setaffinity"
    assert control["pin"]["refused"] == "the device has no CPU frequency governors (cpufreq)"
    card = LatencyDataset.open(tmp_path / "ds").card
    assert card["drift_last_run"]["control"]["board/onnxruntime"]["affinity"]["cpus"] == \
        [max(online)]
    lines = summary.drift_report()
    assert f"board/onnxruntime: cores {max(online)} pinned (fastest top clock" in "\n".join(lines)

    refused = CampaignConfig(settings=FAST, calibration_runs=0, pin_cpus=(999,))
    again = measure_into_dataset([Subject.op(OpSpec("act", h=4, w=4, cin=8))], board,
                                 "onnxruntime", tmp_path / "ds", refused)
    assert again.measured == 1 and again.failed == 0  # measured unpinned
    assert again.control["board/onnxruntime"]["affinity"]["refused"].startswith(
        "CPU 999 is not online")


# --- a phone campaign through the real adb client ------------------------------------------------
def test_phone_campaign_with_pin_and_a_dumpsys_cooling_wait(adb_server, benchmark_model_binary,
                                                            tmp_path: Path) -> None:
    online = sorted(os.sched_getaffinity(0))
    fastest = max(online)
    env, _ = install_dumpsys(tmp_path)
    sysfs = FakeSysfs(tmp_path / "sys")  # no readable zone: a non-root phone
    sysfs.cpus([1_800_000 + 100_000 * i for i in range(fastest + 1)],
               online=",".join(map(str, online)))
    phone_shell = StandInAdbDevice(env=sysfs.env(**env)).start()
    try:
        adb_server.connect(phone_shell)
        work = tmp_path / "phone" / "data" / "local" / "tmp" / "latbench"
        phone = Device(
            name="phone", runtimes=("tflite-benchmark-model",), work_dir=str(work),
            python=None, tools={"benchmark_model": str(benchmark_model_binary)},
            transport=ADBTransport(phone_shell.serial, adb=adb_server.adb,
                                   server_port=adb_server.port, env=adb_server.env))
        # 44.8 C on the AP sensor is over 44 C, and the phone never cools: a bounded wait
        config = CampaignConfig(settings=RunSettings(threads=1, warmup=1, runs=3, rounds=1),
                                calibration_runs=0, pin_governor=True, pin_affinity=True,
                                max_temp_c=44.0, max_cool_wait_s=1.0)
        subjects = [Subject.op(OpSpec("act", h=4, w=4, cin=c)) for c in (4, 8)]
        summary = measure_into_dataset(subjects, phone, "tflite-benchmark-model",
                                       tmp_path / "ds", config)
    finally:
        phone_shell.stop()
    assert summary.measured == 2 and summary.failed == 0
    mask = format(1 << fastest, "x")
    frame = LatencyDataset.open(tmp_path / "ds").records()
    assert frame["tool_flags"].str.startswith(f"taskset {mask} ").all()
    assert (frame["temp_before_c"] == 44.800003).all()  # read from dumpsys around each batch
    commands = [e for e in phone_shell.log if e.startswith("shell")]
    assert any(f"taskset {mask} true" in c for c in commands)  # the probe, then the runs
    card = LatencyDataset.open(tmp_path / "ds").card
    control = card["drift_last_run"]["control"]["phone/tflite-benchmark-model"]
    assert control["affinity"]["cpus"] == [fastest] and control["affinity"]["how"] == "taskset"
    assert control["pin"]["governor"] == "performance" and control["pin"]["restored"]
    assert set(sysfs.governors().values()) == {"schedutil"}  # put back
    assert control["thermal"]["sources"] == ["thermalservice"]
    assert control["thermal"]["not_cooled"] == 1
    assert card["drift_last_run"]["batches"][0]["temp_source"] == "thermalservice:AP"
    assert summary.drift_plots == [tmp_path / "ds" / "drift.png"]
