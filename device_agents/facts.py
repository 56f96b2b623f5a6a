"""Device facts read with plain shell commands, for devices without Python (Android phones).

The agent reports facts itself where Python runs; a phone only has a POSIX shell (mksh, toybox),
so this module sends one fixed script (a constant: nothing user-given is pasted into it, the work
dir travels as "$1") and parses its sectioned output with a pure parser. Every reading may be
missing; a missing one is None, never an error. The result has the same keys as the agent's
`facts` (os, kernel, machine, cpu_model, cpu_features, cores, governor, cur_freq_khz, temps_c,
free_bytes, ...), so tables and dataset cards treat both alike. Temperatures come from
device_agents.temperatures (thermal zones, hwmon, or a phone's thermal service and battery,
each reading naming its source).
"""

from __future__ import annotations

import time
from typing import Any

from latbench.device_agents.agent.latbench_agent import (
    parse_cpu_features,
    parse_cpu_list,
    parse_cpu_model,
)
from latbench.device_agents.temperatures import TEMPS_SCRIPT, parse_temperatures
from latbench.device_agents.transport import Transport, check_remote_path

# One "@name" line starts each section; the text until the next marker is the section's value.
SHELL_FACTS_SCRIPT = r"""
echo @os; uname -s 2>/dev/null
echo @kernel; uname -r 2>/dev/null
echo @machine; uname -m 2>/dev/null
echo @cpuinfo; cat /proc/cpuinfo 2>/dev/null
echo @online; cat /sys/devices/system/cpu/online 2>/dev/null
echo @cores; getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null
echo @governor; cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null
echo @cur_freq; cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq 2>/dev/null
echo @max_freq; cat /sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq 2>/dev/null
""" + TEMPS_SCRIPT + r"""echo @loadavg; cat /proc/loadavg 2>/dev/null
echo @model; getprop ro.product.model 2>/dev/null
echo @android; getprop ro.build.version.release 2>/dev/null
echo @abi; getprop ro.product.cpu.abi 2>/dev/null
echo @df; mkdir -p "$1" 2>/dev/null; df -kP "$1" 2>/dev/null || df -k "$1" 2>/dev/null
echo @end
"""

# Before/after a batch: only what drifts (temperatures, the clock of the measured CPU, load).
DYNAMIC_FACTS_SCRIPT = r"""
echo @cur_freq; cat "/sys/devices/system/cpu/cpu$1/cpufreq/scaling_cur_freq" 2>/dev/null
""" + TEMPS_SCRIPT + r"""echo @loadavg; cat /proc/loadavg 2>/dev/null
echo @end
"""


def split_sections(text: str) -> dict[str, str]:
    """'@name' marker lines -> {name: text until the next marker} (stripped)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("@") and stripped[1:].replace("_", "").isalnum():
            current = sections.setdefault(stripped[1:], [])
            continue
        if current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in sections.items()}


def _int(text: str | None) -> int | None:
    try:
        return int(str(text).strip().split()[0])
    except (ValueError, IndexError, TypeError):
        return None


def parse_df_free_bytes(text: str | None) -> int | None:
    """Free bytes from `df -kP DIR` (or toybox `df -k`): the data line's 'Available' column."""
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    header = lines[0].lower().split()
    data = " ".join(lines[1:]).split()  # a long device name may wrap onto its own line
    for name in ("available", "avail", "free"):
        if name in header:
            # Count from the right: the mount point (last column) holds no spaces in practice.
            from_right = len(header) - header.index(name)
            if header[-2:] == ["mounted", "on"]:
                from_right -= 1  # "Mounted on" is two header words but one column
            kib = _int(data[-from_right]) if from_right <= len(data) else None
            return kib * 1024 if kib is not None else None
    return None


def parse_loadavg(text: str | None) -> list[float] | None:
    try:
        return [float(x) for x in (text or "").split()[:3]] or None
    except ValueError:
        return None


def parse_shell_facts(text: str) -> dict[str, Any]:
    """The output of SHELL_FACTS_SCRIPT -> a facts dict shaped like the agent's."""
    s = split_sections(text)
    online = parse_cpu_list(s.get("online"))
    android = {k: s.get(k) or None for k in ("model", "android", "abi")}
    return {
        "source": "shell",
        "os": ("Android" if android["android"] else s.get("os")) or None,
        "kernel": s.get("kernel") or None,
        "machine": s.get("machine") or None,
        "cpu_model": parse_cpu_model(s.get("cpuinfo")) or android["model"],
        "cpu_features": parse_cpu_features(s.get("cpuinfo")),
        "cores": _int(s.get("cores")) or (len(online) if online else None),
        "cores_online": len(online) if online else None,
        "governor": s.get("governor") or None,
        "cur_freq_khz": _int(s.get("cur_freq")),
        "max_freq_khz": _int(s.get("max_freq")),
        "temps_c": parse_temperatures(s),
        "load_avg": parse_loadavg(s.get("loadavg")),
        "android": android if any(android.values()) else None,
        "free_bytes": parse_df_free_bytes(s.get("df")),
        "complete": "end" in s,
    }


def parse_dynamic_facts(text: str, cpu: int = 0) -> dict[str, Any]:
    """The output of DYNAMIC_FACTS_SCRIPT -> the agent's `facts_before`/`facts_after` shape."""
    s = split_sections(text)
    return {"time_unix": time.time(), "temps_c": parse_temperatures(s), "freq_cpu": cpu,
            "cur_freq_khz": _int(s.get("cur_freq")), "load_avg": parse_loadavg(s.get("loadavg"))}


def shell_facts(transport: Transport, work_dir: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Static facts of a device through its shell (TransportError if it cannot be reached)."""
    result = transport.run(["sh", "-c", SHELL_FACTS_SCRIPT, "latbench-facts",
                            check_remote_path(work_dir)], timeout_s)
    facts = parse_shell_facts(result.stdout)
    facts["work_dir"] = work_dir
    return facts


def dynamic_facts(transport: Transport, cpu: int = 0, timeout_s: float = 30.0) -> dict[str, Any]:
    """Temperatures, clock and load right now (before or after a batch)."""
    result = transport.run(["sh", "-c", DYNAMIC_FACTS_SCRIPT, "latbench-facts", str(int(cpu))],
                           timeout_s)
    return parse_dynamic_facts(result.stdout, cpu)
