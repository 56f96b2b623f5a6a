"""Thermal and frequency control around a campaign: wait for a device to cool down before a
batch, and pin its CPU governor to `performance` for the campaign (restored afterwards).

Both go through the device's transport with fixed commands (no user text reaches a shell), so
they work on SSH boards and adb phones alike where the device permits: reading thermal zones
needs nothing, changing the governor needs root. Whatever the device refuses is recorded and
the campaign goes on - unpinned, or after a bounded wait with a warning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from latbench.device_agents import Device
from latbench.errors import TransportError

# Every thermal zone's millidegrees, one per line (Linux boards and Android alike).
READ_TEMPS = ["sh", "-c", "cat /sys/class/thermal/thermal_zone*/temp 2>/dev/null"]
GOVERNORS = "/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"
READ_GOVERNORS = ["sh", "-c", f"for g in {GOVERNORS}; do echo \"$g $(cat $g)\"; done"]
COMMAND_TIMEOUT_S = 30.0
PIN_GOVERNOR = "performance"


def max_temperature(device: Device) -> float | None:
    """The hottest thermal zone of `device` in Celsius; None when it has none readable."""
    try:
        result = device.transport.run(READ_TEMPS, COMMAND_TIMEOUT_S)
    except (TransportError, OSError):
        return None
    values = []
    for line in result.stdout.split():
        try:
            values.append(int(line) / 1000.0)
        except ValueError:
            continue
    return max(values) if values else None


@dataclass(frozen=True)
class ThermalWait:
    """One wait before a batch: temperatures at its start and end, seconds waited, and whether
    the device got below the threshold within the limit."""

    start_c: float
    end_c: float
    waited_s: float
    cooled: bool


@dataclass
class ThermalControl:
    """Before each batch, wait until the device's hottest zone is at most `max_temp_c`,
    polling every `poll_s`, for at most `max_wait_s` (a threshold below the idle temperature
    must not wait forever). `read` and `sleep` are the device's thermometer and the clock's
    wait (tests pass stand-ins)."""

    device: Device
    max_temp_c: float
    max_wait_s: float = 300.0
    poll_s: float = 5.0
    read: Callable[[Device], float | None] = max_temperature
    sleep: Callable[[float], None] = time.sleep
    waits: list[ThermalWait] = field(default_factory=list)
    no_sensor: bool = False

    def before_batch(self, note: Callable[[str], None]) -> None:
        if self.no_sensor:
            return
        start = self.read(self.device)
        if start is None:
            self.no_sensor = True
            note(f"device {self.device.name} reports no temperature: --max-temp cannot wait")
            return
        temp, waited = start, 0.0
        while temp > self.max_temp_c and waited < self.max_wait_s:
            step = min(self.poll_s, self.max_wait_s - waited)
            self.sleep(step)
            waited += step
            now = self.read(self.device)
            temp = now if now is not None else temp
        if waited == 0.0:
            return
        cooled = temp <= self.max_temp_c
        self.waits.append(ThermalWait(start, temp, waited, cooled))
        if not cooled:
            note(f"WARNING: {self.device.name} still {temp:.1f} C after {waited:.0f} s of "
                 f"cooling (threshold {self.max_temp_c:g} C); measuring anyway")

    def describe(self) -> str:
        if self.no_sensor:
            return f"no temperature sensor: did not wait for {self.max_temp_c:g} C"
        if not self.waits:
            return f"never above {self.max_temp_c:g} C before a batch"
        hot = sum(not w.cooled for w in self.waits)
        return (f"waited {sum(w.waited_s for w in self.waits):.0f} s before {len(self.waits)} "
                f"batches to cool to {self.max_temp_c:g} C"
                + (f"; {hot} never got there within {self.max_wait_s:g} s" if hot else ""))

    def report(self) -> dict[str, Any]:
        return {"max_temp_c": self.max_temp_c, "max_wait_s": self.max_wait_s,
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
