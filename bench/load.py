"""Other programs on the device during a campaign: how many cores they kept busy while a batch
was timed, and a bounded wait for the device to quiet down before a disturbed batch is measured
again.

Why CPU time and not the reference probe: a program busy on the *other* core slows the timed
kernels (shared caches, memory bandwidth, a hyperthread sibling) without descheduling them, and
the probe - a short compute loop - barely moves (docs/measurement.md, section 2b). What the
device's kernel counts does not miss it: /proc/stat says how much CPU time every program used
(the hypervisor's steal included), and the agent knows how much of it was its own. The rest,
divided by the batch's wall time, is the load of other programs in cores.

The wait between batches reads /proc/stat twice through the device's transport (a fixed
command, no user text), so it works on SSH boards and adb phones alike where /proc/stat is
readable; where it is not, nothing is detected and the report says so.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from latbench.device_agents import Device
from latbench.errors import ConfigError, TransportError

DEFAULT_MAX_LOAD = 0.5  # cores other programs may keep busy while a batch is timed
MAX_LOAD_ENV = "LATBENCH_MAX_LOAD"  # overrides it: a number of cores, or 'off'
POLL_S = 2.0  # one reading of the device's load between batches
# Both snapshots of every /proc/stat cpu line, `POLL_S` apart.
READ_STAT = ["sh", "-c", f"grep '^cpu' /proc/stat; echo --; sleep {POLL_S:g}; "
                         "grep '^cpu' /proc/stat"]
COMMAND_TIMEOUT_S = 30.0
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (idle 3, iowait 4 not)
STEAL_FIELD = 7


def parse_max_load(text: str) -> float:
    """A --max-load value: a positive number of cores, or 'off' (infinity: loads are still
    read and reported, nothing is measured again)."""
    if text.strip().lower() == "off":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--max-load must be a number of cores or 'off', got {text!r}") \
            from None
    if not value > 0:
        raise ConfigError(f"--max-load must be a positive number of cores, got {text}")
    return value


def default_max_load() -> float:
    """DEFAULT_MAX_LOAD, or $LATBENCH_MAX_LOAD where it is set (a farm whose phones always run
    background services, a test suite sharing its machine)."""
    text = os.environ.get(MAX_LOAD_ENV)
    return DEFAULT_MAX_LOAD if text is None else parse_max_load(text)


def _share(first: Sequence[int], last: Sequence[int], fields: Sequence[int]) -> float:
    """The share of all CPUs' time between two /proc/stat aggregate lines spent in `fields`;
    NaN when no time passed."""
    spent = [b - a for a, b in zip(first[:8], last[:8], strict=True)]
    total = sum(spent)
    return sum(spent[i] for i in fields) / total if total > 0 else math.nan


def busy_share(first: Sequence[int], last: Sequence[int]) -> float:
    """The share of all CPUs' time between two /proc/stat aggregate lines that some program
    (or the hypervisor's other tenants) used; NaN when no time passed."""
    return _share(first, last, BUSY_FIELDS)


def steal_share(before: dict[str, Any], after: dict[str, Any]) -> float:
    """The share of the machine's CPU time that the hypervisor gave to other tenants between
    two `cpu_times` facts (NaN where the device does not report them)."""
    first, last = before.get("cpu_times"), after.get("cpu_times")
    if not (isinstance(first, list) and isinstance(last, list) and len(first) == len(last) == 8):
        return math.nan
    return _share(first, last, (STEAL_FIELD,))


def foreign_cores(before: dict[str, Any], after: dict[str, Any]) -> float:
    """Cores other programs kept busy while the agent timed a batch, from two agent facts
    (`cpu_times`, `n_cpus`, `own_cpu_s`, `time_unix`): all CPU time used on the device minus
    the agent's own (its threads and its tools), over the wall time. NaN where the device does
    not tell (no /proc/stat, an older agent)."""
    try:
        first, last = before["cpu_times"], after["cpu_times"]
        n_cpus = int(after["n_cpus"])
        own = float(after["own_cpu_s"]) - float(before["own_cpu_s"])
        wall = float(after["time_unix"]) - float(before["time_unix"])
    except (KeyError, TypeError, ValueError):
        return math.nan
    if not (isinstance(first, list) and isinstance(last, list) and len(first) >= 8
            and len(last) >= 8) or n_cpus < 1 or not wall > 0:
        return math.nan
    share = busy_share(first, last)
    return max(0.0, share * n_cpus - own / wall) if math.isfinite(share) else math.nan


def parse_stat_pair(text: str) -> float | None:
    """Busy cores of the whole device between the two snapshots READ_STAT prints."""
    halves = text.split("--")
    if len(halves) != 2:
        return None
    snapshots = []
    for half in halves:
        total, cpus = None, 0
        for line in half.splitlines():
            parts = line.split()
            if parts[:1] == ["cpu"]:
                try:
                    total = [int(x) for x in parts[1:9]]
                except ValueError:
                    return None
            elif parts and parts[0].startswith("cpu") and parts[0][3:].isdigit():
                cpus += 1
        if total is None or len(total) < 8 or not cpus:
            return None
        snapshots.append((total, cpus))
    (first, _), (last, cpus) = snapshots
    share = busy_share(first, last)
    return share * cpus if math.isfinite(share) else None


def busy_cores(device: Device) -> float | None:
    """How many cores the device's programs keep busy now (over POLL_S), None when /proc/stat
    cannot be read there."""
    try:
        result = device.transport.run(READ_STAT, COMMAND_TIMEOUT_S)
    except (TransportError, OSError):
        return None
    return parse_stat_pair(result.stdout) if result.returncode == 0 else None


@dataclass
class LoadControl:
    """Judges each batch by the load other programs put on the device while it was timed
    (`foreign_cores`): over `max_cores` the batch is disturbed. Before a disturbed batch is
    measured again, `wait_quiet` polls the device until its load falls under `max_cores`, for
    at most `max_wait_s` over the whole campaign (a machine that never quiets down must not
    stall it). `read` and `sleep` are the device's load reading and the clock's wait (None:
    this module's `busy_cores` and `time.sleep`, looked up when called so tests can stand in
    for them)."""

    device: Device
    max_cores: float = 0.5
    max_wait_s: float = 300.0
    read: Callable[[Device], float | None] | None = None
    sleep: Callable[[float], None] | None = None
    waited_s: float = 0.0
    waits: int = 0
    unreadable: bool = False
    refused: int = 0  # batches still disturbed when they ran out of retries: not stored
    loads: list[float] = field(default_factory=list)  # every measured attempt's foreign cores

    def disturbed(self, before: dict[str, Any], after: dict[str, Any]) -> float | None:
        """The foreign load of an attempt if it is over the limit, else None (also when the
        device does not tell)."""
        load = foreign_cores(before, after)
        if not math.isfinite(load):
            self.unreadable = True
            return None
        self.loads.append(load)
        return load if load > self.max_cores else None

    def wait_quiet(self, note: Callable[[str], None],
                   stopped: Callable[[], bool] = lambda: False) -> bool:
        """Wait until the device's load is under the limit; False when the campaign's waiting
        time ran out (or the load cannot be read) with the device still busy, or when
        `stopped` says the campaign was interrupted meanwhile."""
        started = self.waited_s
        read, sleep = self.read or busy_cores, self.sleep or time.sleep
        while self.waited_s < self.max_wait_s and not stopped():
            clock = time.perf_counter()
            load = read(self.device)
            read_s = time.perf_counter() - clock
            if load is None:
                self.unreadable = True
                return False
            if load <= self.max_cores:
                if self.waited_s > started:
                    note(f"{self.device.name} quiet again ({load:.2f} cores busy) after "
                         f"{self.waited_s - started:.0f} s")
                return True
            if self.waited_s == started:
                self.waits += 1
                note(f"other programs keep {load:.2f} cores of {self.device.name} busy; "
                     f"waiting for them (up to {self.max_wait_s - self.waited_s:.0f} s more)")
            sleep(POLL_S)
            self.waited_s += POLL_S + read_s
        return False

    def describe(self) -> str:
        """One line for the campaign's report: how busy other programs kept the device, what
        was waited for and what was not stored."""
        if not self.loads:
            return ("other programs' load: not readable on this device (no /proc/stat), not "
                    "checked")
        loads = sorted(self.loads)
        limit = "off" if math.isinf(self.max_cores) else f"{self.max_cores:g}"
        text = (f"other programs kept up to {loads[-1]:.2f} cores busy while a batch was timed "
                f"(median {loads[len(loads) // 2]:.2f}; --max-load {limit})")
        if self.waits:
            text += (f"; waited {self.waited_s:.0f} s for quiet before measuring "
                     f"{self.waits} batches again")
        if self.refused:
            text += (f"; WARNING: {self.refused} batches still disturbed were not stored "
                     "(rerun to measure them)")
        return text

    def report(self) -> dict[str, Any]:
        """What the card keeps: the limit, the waits and the loads seen."""
        return {"max_cores": self.max_cores, "max_wait_s": self.max_wait_s,
                "waited_s": round(self.waited_s, 1), "waits": self.waits,
                "refused_batches": self.refused, "unreadable": self.unreadable,
                "max_load_cores": round(max(self.loads), 3) if self.loads else None,
                "median_load_cores": (round(sorted(self.loads)[len(self.loads) // 2], 3)
                                      if self.loads else None)}
