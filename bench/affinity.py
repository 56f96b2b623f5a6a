"""The cores a campaign is pinned to (`--pin`, `--cpus`): chosen, checked on the device, and
recorded.

A CPU affinity mask belongs to a process, so nothing on the device changes and nothing has to
be put back: the runner applies the device's `cpu_affinity` to every process it starts (the
agent calls os.sched_setaffinity on itself; a native tool runs under `taskset MASK`, util-linux
on boards and toybox on Android). What this module adds is the choice and the check:

- which cores: those asked for (`--cpus`), else the fleet file's `cpu_affinity`, else the
  fastest ones by their top clock (`cpuinfo_max_freq`: the big cores of a big.LITTLE phone),
  as many as the runtime has threads, preferring the highest-numbered among equals (cpu0
  takes most interrupts and housekeeping);
- whether the device permits it: the same mechanism the runner will use is tried once
  (`taskset MASK true`, or the device's python calling sched_setaffinity). A refusal (cores
  offline, a cpuset that excludes them, no taskset) is recorded and the campaign runs unpinned
  rather than failing every batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from latbench.device_agents import RUNTIMES, Device
from latbench.device_agents.agent.latbench_agent import parse_cpu_list
from latbench.device_agents.facts import split_sections
from latbench.errors import ConfigError, TransportError

# Online CPUs, then one "cpuN top-clock-kHz" line per CPU (the clock empty without cpufreq).
READ_CPUS = ["sh", "-c", r"""r=${LATBENCH_AGENT_SYSFS:-/sys}
echo @online; cat "$r/devices/system/cpu/online" 2>/dev/null
echo @clocks
for c in "$r"/devices/system/cpu/cpu[0-9]*; do
  echo "${c##*/} $(cat "$c/cpufreq/cpuinfo_max_freq" 2>/dev/null)"
done
"""]
PROBE_PY = "import os, sys; os.sched_setaffinity(0, {int(c) for c in sys.argv[1:]})"
COMMAND_TIMEOUT_S = 30.0


def parse_cpus_flag(text: str) -> tuple[int, ...]:
    """`--cpus 4-7` or `0,2` -> sorted CPU ids; ConfigError for anything else."""
    cpus = parse_cpu_list(text) if text and text.strip() else None
    if not cpus or any(c < 0 for c in cpus):
        raise ConfigError(f"--cpus must be a CPU list such as 4-7 or 0,2, got {text!r}")
    return tuple(sorted(set(cpus)))


def cpu_list_text(cpus: tuple[int, ...] | list[int]) -> str:
    """(4, 5, 6, 7, 9) -> '4-7,9'."""
    parts: list[str] = []
    ordered = sorted(set(cpus))
    start = prev = None
    for cpu in [*ordered, None]:
        if prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(parts)


def parse_cpu_clocks(text: str) -> tuple[list[int] | None, dict[int, int]]:
    """READ_CPUS' output -> (online CPUs or None, {cpu: top clock in kHz} of those that
    report one)."""
    sections = split_sections(text)
    clocks = {}
    for line in sections.get("clocks", "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("cpu") and parts[0][3:].isdigit() \
                and parts[1].isdigit():
            clocks[int(parts[0][3:])] = int(parts[1])
    return parse_cpu_list(sections.get("online") or None), clocks


def fastest_cpus(clocks: dict[int, int], threads: int,
                 online: list[int] | None = None) -> tuple[int, ...]:
    """The `threads` online CPUs with the highest top clock, the highest-numbered first among
    equals; () when no CPU reports a clock."""
    usable = [c for c in clocks if online is None or c in online]
    ranked = sorted(usable, key=lambda c: (-clocks[c], -c))
    return tuple(sorted(ranked[:max(1, threads)]))


@dataclass
class CorePin:
    """Pins one device/runtime lane of a campaign to cores: `pin()` returns the device to
    measure with (its `cpu_affinity` set, or cleared when the device refused) and records what
    was done. `asked` are the cores of `--cpus` (None: the fleet's, else the fastest)."""

    device: Device
    runtime: str
    threads: int = 1
    asked: tuple[int, ...] | None = None
    cpus: tuple[int, ...] = ()
    chosen_by: str = ""
    how: str = ""
    top_clock_khz: int | None = None
    refused: str = ""
    online: list[int] | None = field(default=None, repr=False)

    def pin(self) -> Device:
        needs = RUNTIMES.get(self.runtime)
        self.how = "taskset" if needs is not None and needs.tool else "sched_setaffinity"
        try:
            listing = self.device.transport.run(READ_CPUS, COMMAND_TIMEOUT_S)
        except (TransportError, OSError) as exc:
            return self._refuse(f"cannot read the device's CPUs: {exc}")
        self.online, clocks = parse_cpu_clocks(listing.stdout)
        if self.asked:
            want, self.chosen_by = self.asked, "--cpus"
        elif self.device.cpu_affinity:
            want, self.chosen_by = tuple(self.device.cpu_affinity), "the fleet's cpu_affinity"
        else:
            want, self.chosen_by = fastest_cpus(clocks, self.threads, self.online), \
                "fastest top clock"
            if not want:
                return self._refuse("the device reports no per-core clocks (cpufreq) to find "
                                    "its fastest cores; name them with --cpus")
        offline = [c for c in want if self.online is not None and c not in self.online]
        if offline:
            return self._refuse(f"CPU {cpu_list_text(offline)} is not online on "
                                f"{self.device.name} (online: {cpu_list_text(self.online or [])})")
        refusal = self._probe(want)
        if refusal:
            return self._refuse(refusal)
        self.cpus = want
        known = [clocks[c] for c in want if c in clocks]
        self.top_clock_khz = max(known) if known else None
        return replace(self.device, cpu_affinity=want)

    def _probe(self, cpus: tuple[int, ...]) -> str:
        """Why the device refuses to run a process on `cpus` the runner's way, or ""."""
        if self.how == "taskset":
            # the same mask format as the native runner's `taskset MASK tool ...` prefix
            argv = ["taskset", format(sum(1 << c for c in cpus), "x"), "true"]
        elif self.device.python:
            argv = [self.device.python, "-c", PROBE_PY, *map(str, cpus)]
        else:
            return f"device {self.device.name} has no python to set the agent's affinity"
        try:
            result = self.device.transport.run(argv, COMMAND_TIMEOUT_S)
        except (TransportError, OSError) as exc:
            return f"trying {self.how} failed: {exc}"
        if result.ok:
            return ""
        detail = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        if result.returncode == 127:
            return f"{argv[0]} is not on the device ({detail[-200:]})"
        return f"{self.how} to CPUs {cpu_list_text(cpus)} was refused ({detail[-200:]})"

    def _refuse(self, why: str) -> Device:
        self.refused, self.cpus = why, ()
        return replace(self.device, cpu_affinity=None)

    def report(self) -> dict[str, Any]:
        return {"cpus": list(self.cpus) or None, "chosen_by": self.chosen_by, "how": self.how,
                "threads": self.threads, "top_clock_khz": self.top_clock_khz,
                "refused": self.refused}

    def describe(self) -> str:
        if not self.cpus:
            return f"cores not pinned: {self.refused}"
        clock = f", top clock {self.top_clock_khz / 1e6:.2f} GHz" if self.top_clock_khz else ""
        crowded = (f"; {self.threads} threads on {len(self.cpus)} cores"
                   if self.threads > len(self.cpus) else "")
        return (f"cores {cpu_list_text(self.cpus)} pinned ({self.chosen_by}{clock}) via "
                f"{self.how}{crowded}")
