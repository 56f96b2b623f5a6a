"""Thermal and frequency control around a campaign: wait for a device to cool down before a
batch, and pin its CPU governor to `performance` for the campaign (restored afterwards); the
cores a campaign is pinned to are chosen in bench.affinity.

Both go through the device's transport with fixed commands (no user text reaches a shell), so
they work on SSH boards and adb phones alike where the device permits: reading temperatures
needs nothing (thermal zones and hwmon, or a phone's thermal service and battery through
dumpsys: device_agents.temperatures), changing the governor needs root. Whatever the device
refuses is recorded and the campaign goes on - unpinned, or after a bounded wait with a warning.
Sysfs paths start at `$LATBENCH_AGENT_SYSFS` when the device's shell has it set (tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from latbench.device_agents import Device
from latbench.device_agents.temperatures import (
    TEMPS_SCRIPT,
    describe_reading,
    hottest,
    read_temperatures,
)
from latbench.errors import TransportError

# Every temperature the device's shell can read (device_agents.temperatures).
READ_TEMPS = ["sh", "-c", TEMPS_SCRIPT]
GOVERNORS = '"${LATBENCH_AGENT_SYSFS:-/sys}"/devices/system/cpu/cpu*/cpufreq/scaling_governor'
READ_GOVERNORS = ["sh", "-c", f'for g in {GOVERNORS}; do echo "$g $(cat "$g")"; done']
COMMAND_TIMEOUT_S = 30.0
PIN_GOVERNOR = "performance"


def hottest_reading(device: Device) -> dict[str, Any] | None:
    """The hottest temperature `device` reports now, with its source (see
    device_agents.temperatures); None when it has none readable or cannot be reached."""
    try:
        return hottest(read_temperatures(device.transport, COMMAND_TIMEOUT_S))
    except (TransportError, OSError):
        return None


def max_temperature(device: Device) -> float | None:
    """The hottest temperature of `device` in Celsius; None when it has none readable."""
    reading = hottest_reading(device)
    return None if reading is None else float(reading["celsius"])


@dataclass(frozen=True)
class ThermalWait:
    """One wait before a batch: temperatures at its start and end, seconds waited, whether
    the device got below the threshold within the limit, and where the last reading came from
    ('thermal_zone:thermal_zone0', 'thermalservice:AP', 'battery:battery')."""

    start_c: float
    end_c: float
    waited_s: float
    cooled: bool
    source: str = ""


@dataclass
class ThermalControl:
    """Before each batch, wait until the device's hottest zone is at most `max_temp_c`,
    polling every `poll_s`, for at most `max_wait_s` (`--cooldown`: a threshold below the idle
    temperature must not wait forever). `read` (the hottest reading with its source) and
    `sleep` are the device's thermometer and the clock's wait (tests pass stand-ins)."""

    device: Device
    max_temp_c: float
    max_wait_s: float = 300.0
    poll_s: float = 5.0
    read: Callable[[Device], dict[str, Any] | None] = hottest_reading
    sleep: Callable[[float], None] = time.sleep
    waits: list[ThermalWait] = field(default_factory=list)
    no_sensor: bool = False
    sources: set[str] = field(default_factory=set)  # every source a reading came from

    def before_batch(self, note: Callable[[str], None]) -> None:
        if self.no_sensor:
            return
        first = self.read(self.device)
        if first is None:
            self.no_sensor = True
            note(f"device {self.device.name} reports no temperature: --max-temp cannot wait")
            return
        self.sources.add(str(first.get("source") or "thermal_zone"))
        start = temp = float(first["celsius"])
        source, waited = describe_reading(first), 0.0
        while temp > self.max_temp_c and waited < self.max_wait_s:
            step = min(self.poll_s, self.max_wait_s - waited)
            self.sleep(step)
            waited += step
            now = self.read(self.device)
            if now is not None:
                temp, source = float(now["celsius"]), describe_reading(now)
                self.sources.add(str(now.get("source") or "thermal_zone"))
        if waited == 0.0:
            return
        cooled = temp <= self.max_temp_c
        self.waits.append(ThermalWait(start, temp, waited, cooled, source))
        if not cooled:
            note(f"WARNING: {self.device.name} still {temp:.1f} C after {waited:.0f} s of "
                 f"cooling (threshold {self.max_temp_c:g} C); measuring anyway")

    def describe(self) -> str:
        if self.no_sensor:
            return f"no temperature sensor: did not wait for {self.max_temp_c:g} C"
        text = f"never above {self.max_temp_c:g} C before a batch"
        if self.waits:
            text = (f"waited {sum(w.waited_s for w in self.waits):.0f} s before "
                    f"{len(self.waits)} batches to cool to {self.max_temp_c:g} C")
            hot = sum(not w.cooled for w in self.waits)
            if hot:
                text += f"; {hot} never got there within the {self.max_wait_s:g} s cooldown"
        return text + (f" (read from {', '.join(sorted(self.sources))})" if self.sources else "")

    def report(self) -> dict[str, Any]:
        return {"max_temp_c": self.max_temp_c, "max_wait_s": self.max_wait_s,
                "sources": sorted(self.sources),
                "no_sensor": self.no_sensor, "waits": [asdict(w) for w in self.waits],
                "waited_s": sum(w.waited_s for w in self.waits),
                "not_cooled": sum(not w.cooled for w in self.waits)}


@dataclass
class GovernorPin:
    """The device's CPU governors set to `performance` for a campaign and put back after:
    `pinned` maps each governor file to the value it had; `refused` says why it could not pin
    (no cpufreq, not root), and the campaign then runs unpinned; `restored` once put back."""

    device: Device
    pinned: dict[str, str] = field(default_factory=dict)
    refused: str = ""
    restored: bool = False

    def pin(self) -> None:
        try:
            before = self.device.transport.run(READ_GOVERNORS, COMMAND_TIMEOUT_S)
        except (TransportError, OSError) as exc:
            self.refused = f"cannot read the governors: {exc}"
            return
        current = dict(line.split(" ", 1) for line in before.stdout.splitlines()
                       if " " in line and line.split(" ", 1)[1].strip())
        if not before.ok or not current:
            self.refused = "the device has no CPU frequency governors (cpufreq)"
            return
        for path, governor in sorted(current.items()):
            if not self._write(path, PIN_GOVERNOR):
                self.restore()
                self.pinned.clear()
                return
            self.pinned[path] = governor.strip()

    def restore(self) -> None:
        """Every pinned governor back to what it was (once)."""
        if self.restored:
            return
        self.restored = all([self._write(path, governor)
                             for path, governor in self.pinned.items()])

    def _write(self, path: str, value: str) -> bool:
        # the path comes from the device's own listing and the value is a governor name; both
        # are passed as arguments of a fixed script, never pasted into it
        argv = ["sh", "-c", 'echo "$1" > "$2"', "latbench-pin", value, path]
        try:
            result = self.device.transport.run(argv, COMMAND_TIMEOUT_S)
        except (TransportError, OSError) as exc:
            self.refused = self.refused or f"writing {path}: {exc}"
            return False
        if not result.ok:
            detail = result.stderr.strip()[-200:] or f"exit {result.returncode}"
            self.refused = self.refused or f"writing {path} was refused ({detail})"
            return False
        return True

    def report(self) -> dict[str, Any]:
        return {"governor": PIN_GOVERNOR if self.pinned else None,
                "cpus": len(self.pinned), "was": sorted(set(self.pinned.values())),
                "restored": self.restored, "refused": self.refused}

    def describe(self) -> str:
        if self.pinned:
            was = ", ".join(sorted(set(self.pinned.values())))
            return (f"governor pinned to {PIN_GOVERNOR} on {len(self.pinned)} CPUs (was {was})"
                    f"{', restored' if self.restored else ''}")
        return f"governor not pinned: {self.refused}"
