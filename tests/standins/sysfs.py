"""FakeSysfs: a folder laid out like /sys with sensor and CPU files of known values, for the
device shell scripts that honour $LATBENCH_AGENT_SYSFS (temperatures, governors, per-core
clocks). Pass `env()` to a LocalTransport or a StandInAdbDevice: the real scripts then read and
write these files instead of this machine's /sys."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


class FakeSysfs:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def env(self, **more: str) -> dict[str, str]:
        return {**os.environ, "LATBENCH_AGENT_SYSFS": str(self.root), **more}

    def zone(self, index: int, celsius: float, kind: str = "cpu-thermal") -> Path:
        """thermal_zoneN with `temp` in millidegrees; returns the temp file."""
        zone = self.root / "class" / "thermal" / f"thermal_zone{index}"
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "type").write_text(f"{kind}\n")
        return self.set_temp(zone / "temp", celsius)

    def hwmon(self, index: int, celsius: float, name: str, label: str = "") -> Path:
        """hwmonN/temp1_input (+ name, label); returns the input file."""
        hwmon = self.root / "class" / "hwmon" / f"hwmon{index}"
        hwmon.mkdir(parents=True, exist_ok=True)
        (hwmon / "name").write_text(f"{name}\n")
        if label:
            (hwmon / "temp1_label").write_text(f"{label}\n")
        return self.set_temp(hwmon / "temp1_input", celsius)

    @staticmethod
    def set_temp(path: Path, celsius: float) -> Path:
        path.write_text(f"{round(celsius * 1000)}\n")
        return path

    def cpus(self, clocks_khz: Sequence[int | None], governor: str | None = "schedutil",
             online: str | None = None) -> None:
        """cpu0..N with cpuinfo_max_freq (None: no cpufreq) and scaling_governor files, and
        the `online` list (default all)."""
        base = self.root / "devices" / "system" / "cpu"
        base.mkdir(parents=True, exist_ok=True)
        (base / "online").write_text(f"{online or f'0-{len(clocks_khz) - 1}'}\n")
        for cpu, clock in enumerate(clocks_khz):
            freq = base / f"cpu{cpu}" / "cpufreq"
            (base / f"cpu{cpu}").mkdir(exist_ok=True)
            if clock is None:
                continue
            freq.mkdir(exist_ok=True)
            (freq / "cpuinfo_max_freq").write_text(f"{clock}\n")
            if governor is not None:
                (freq / "scaling_governor").write_text(f"{governor}\n")

    def governors(self) -> Mapping[int, str]:
        base = self.root / "devices" / "system" / "cpu"
        return {int(p.parent.parent.name[3:]): p.read_text().strip()
                for p in sorted(base.glob("cpu*/cpufreq/scaling_governor"))}
