"""Temperatures from whatever a device lets its shell read: the pure parsers on text in the
real formats of `dumpsys thermalservice` and `dumpsys battery`, and the whole path on the
stand-in phone (real adb client and server) whose thermal zones are unreadable, as on a
non-root phone, so readings come from dumpsys - also during a cooling wait and in the facts
taken around a batch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from standins.adb_standin_device import StandInAdbDevice
from standins.dumpsys import BATTERY, THERMALSERVICE, install_dumpsys
from standins.sysfs import FakeSysfs

from latbench.bench.thermal import ThermalControl
from latbench.device_agents import ADBTransport, Device
from latbench.device_agents.facts import dynamic_facts, split_sections
from latbench.device_agents.temperatures import (
    TEMPS_SCRIPT,
    describe_reading,
    hottest,
    parse_battery,
    parse_temperatures,
    parse_thermalservice,
    read_temperatures,
)


def test_thermalservice_current_hal_readings() -> None:
    readings = parse_thermalservice(THERMALSERVICE)
    # the stale cached 99.0, the unfitted SUBBAT (0.0), the current limiter's volts (type 6)
    # and the virtual placeholder are not temperatures of the device
    assert [(r["zone"], r["name"], r["celsius"], r["status"]) for r in readings] == [
        ("AP", "cpu", 44.800003, 0), ("PA", "power_amplifier", 36.9, 0),
        ("BAT", "battery", 32.2, 0), ("SKIN", "skin", 38.0, 1)]
    assert {r["source"] for r in readings} == {"thermalservice"}


def test_thermalservice_cached_block_when_the_hal_block_is_missing() -> None:
    cached_only = THERMALSERVICE.split("HAL Ready:")[0]
    assert [(r["zone"], r["celsius"]) for r in parse_thermalservice(cached_only)] == [
        ("AP", 99.0), ("BAT", 32.2)]
    assert parse_thermalservice("") == [] and parse_thermalservice("Thermal Status: 0") == []


def test_battery_temperature_in_tenths_of_a_degree() -> None:
    assert parse_battery(BATTERY) == [{"zone": "battery", "name": "battery", "celsius": 28.4,
                                       "source": "battery"}]
    stopped = BATTERY.replace("Current Battery Service state:\n",
                              "Current Battery Service state:\n"
                              "  (UPDATES STOPPED -- use 'reset' to restart)\n")
    assert parse_battery(stopped)[0]["celsius"] == 28.4
    # only the service's block counts, not an event-log line after it
    assert parse_battery(BATTERY.replace("  temperature: 284\n", "")) == []


def test_sections_combine_and_name_their_source() -> None:
    text = ("@temps\n@hwmon\nhwmon0/temp1_input 39000 pmic \n@thermalservice\n" + THERMALSERVICE
            + "@battery\n" + BATTERY)
    readings = parse_temperatures(split_sections(text))
    assert readings is not None
    assert [r["source"] for r in readings] == ["hwmon"] + ["thermalservice"] * 4 + ["battery"]
    assert describe_reading(hottest(readings)) == "thermalservice:AP"
    assert parse_temperatures(split_sections("@temps\n@hwmon\n")) is None


# --- on the stand-in phone -----------------------------------------------------------------------
@pytest.fixture
def dumpsys_phone(adb_server, tmp_path: Path):
    """A stand-in phone whose thermal zones are unreadable (an empty sysfs) and whose dumpsys
    prints the files of the folder it yields with it (the test may rewrite them)."""
    env, served = install_dumpsys(tmp_path)
    sysfs = FakeSysfs(tmp_path / "sys")  # nothing in it: no zone a shell user may read
    phone = StandInAdbDevice(env=sysfs.env(**env)).start()
    adb_server.connect(phone)
    yield phone, served
    phone.stop()


def phone_device(adb_server, phone: StandInAdbDevice, tmp_path: Path) -> Device:
    transport = ADBTransport(phone.serial, adb=adb_server.adb, server_port=adb_server.port,
                             env=adb_server.env, backoff_s=0.05)
    return Device(name="phone", transport=transport, runtimes=(), python=None,
                  work_dir=str(tmp_path / "phone" / "data" / "local" / "tmp" / "latbench"))


def test_phone_temperatures_come_from_dumpsys_through_adb(adb_server, dumpsys_phone,
                                                          tmp_path: Path) -> None:
    phone, _ = dumpsys_phone
    device = phone_device(adb_server, phone, tmp_path)
    readings = read_temperatures(device.transport)
    assert readings is not None
    assert {(r["source"], r["zone"], r["celsius"]) for r in readings} == {
        ("thermalservice", "AP", 44.800003), ("thermalservice", "PA", 36.9),
        ("thermalservice", "BAT", 32.2), ("thermalservice", "SKIN", 38.0),
        ("battery", "battery", 28.4)}
    assert any(e.startswith("shell") and "dumpsys thermalservice" in e for e in phone.log)
    # the facts taken around every native-tool batch read them the same way
    facts = dynamic_facts(device.transport, 0)
    assert max(t["celsius"] for t in facts["temps_c"]) == 44.800003
    assert {t["source"] for t in facts["temps_c"]} == {"thermalservice", "battery"}


def test_cooling_wait_on_a_phone_reads_dumpsys(adb_server, dumpsys_phone,
                                               tmp_path: Path) -> None:
    phone, served = dumpsys_phone
    device = phone_device(adb_server, phone, tmp_path)
    cooler = iter([41.5, 39.0])

    def sleep(seconds: float) -> None:  # the phone's AP sensor cools while latbench waits
        text = THERMALSERVICE.replace("mValue=44.800003, mType=0", f"mValue={next(cooler)}, "
                                      "mType=0")
        (served / "thermalservice.txt").write_text(text)

    control = ThermalControl(device, 40.0, max_wait_s=60, poll_s=5, sleep=sleep)
    control.before_batch(pytest.fail)
    [wait] = control.waits
    assert (wait.start_c, wait.end_c, wait.waited_s, wait.cooled) == (44.800003, 39.0, 10.0,
                                                                      True)
    assert wait.source == "thermalservice:AP" and control.report()["sources"] == [
        "thermalservice"]


def test_readable_zones_are_preferred_to_dumpsys(tmp_path: Path) -> None:
    from latbench.device_agents import LocalTransport

    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "dumpsys").write_text("#!/bin/sh\necho called >> \"$0.log\"\n")
    (tools / "dumpsys").chmod(0o755)
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.zone(0, 47.0)
    env = sysfs.env(PATH=f"{tools}{os.pathsep}{os.environ['PATH']}")
    result = LocalTransport(env=env).run(["sh", "-c", TEMPS_SCRIPT], 30)
    readings = parse_temperatures(split_sections(result.stdout))
    assert readings == [{"zone": "thermal_zone0", "name": "cpu-thermal", "celsius": 47.0,
                         "source": "thermal_zone"}]
    assert not (tools / "dumpsys.log").exists()  # dumpsys was not asked
