"""What a phone's `dumpsys` prints for the two services latbench reads temperatures from, in
their real formats, and a stand-in `dumpsys` command serving them: put `bin` first on the PATH
of a StandInAdbDevice (or a LocalTransport) and rewrite the served files to change what the
phone reports."""

from __future__ import annotations

import os
from pathlib import Path

# The layout ThermalManagerService.dump prints (Android 10-14): listeners, the status, a cached
# block that may be stale, the HAL's current readings, then its cooling devices.
THERMALSERVICE = """\
IsStatusOverride: false
ThermalEventListeners:
\tcallbacks: 2
\tkilled: false
\tbroadcasts count: -1
ThermalStatusListeners:
\tcallbacks: 5
\tkilled: false
\tbroadcasts count: -1
Thermal Status: 1
Cached temperatures:
\tTemperature{mValue=99.0, mType=0, mName=AP, mStatus=3}
\tTemperature{mValue=32.2, mType=2, mName=BAT, mStatus=0}
HAL Ready: true
HAL connection:
\tThermalHAL AIDL 1  connected: yes
Current temperatures from HAL:
\tTemperature{mValue=0.0, mType=2, mName=SUBBAT, mStatus=0}
\tTemperature{mValue=44.800003, mType=0, mName=AP, mStatus=0}
\tTemperature{mValue=36.9, mType=5, mName=PA, mStatus=0}
\tTemperature{mValue=32.2, mType=2, mName=BAT, mStatus=0}
\tTemperature{mValue=38.0, mType=3, mName=SKIN, mStatus=1}
\tTemperature{mValue=4200.0, mType=6, mName=vbat, mStatus=0}
\tTemperature{mValue=-5700.0, mType=-1, mName=virtual-unused, mStatus=0}
Current cooling devices from HAL:
\tCoolingDevice{mValue=0, mType=2, mName=cpu-cluster0}
Temperature static thresholds from HAL:
\tTemperatureThreshold{mType=0, mName=AP, mHotThrottlingThresholds=[NaN, 50.0, 55.0]}
"""

BATTERY = """\
Current Battery Service state:
  AC powered: false
  USB powered: true
  Wireless powered: false
  Max charging current: 500000
  Max charging voltage: 5000000
  Charge counter: 2660000
  status: 2
  health: 2
  present: true
  level: 86
  scale: 100
  voltage: 4264
  temperature: 284
  technology: Li-ion
[EventLogBuffer]
08-11 18:34:14.721  Sending ACTION_BATTERY_CHANGED: level:72, health:2, temperature:345
"""


FAKE_DUMPSYS = """#!/bin/sh
# dumpsys on the stand-in phone: what a phone prints for the two services latbench asks
case "$1" in
  thermalservice) cat "$LATBENCH_TEST_DUMPSYS/thermalservice.txt" ;;
  battery) cat "$LATBENCH_TEST_DUMPSYS/battery.txt" ;;
  *) echo "Can't find service: $1" >&2; exit 1 ;;
esac
"""




def install_dumpsys(root: Path) -> tuple[dict[str, str], Path]:
    """A stand-in dumpsys under `root`: (environment entries that put it on the PATH, the
    folder whose thermalservice.txt and battery.txt it prints)."""
    tools, served = root / "bin", root / "dumpsys"
    tools.mkdir(parents=True, exist_ok=True)
    served.mkdir(parents=True, exist_ok=True)
    (tools / "dumpsys").write_text(FAKE_DUMPSYS)
    (tools / "dumpsys").chmod(0o755)
    (served / "thermalservice.txt").write_text(THERMALSERVICE)
    (served / "battery.txt").write_text(BATTERY)
    return {"PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
            "LATBENCH_TEST_DUMPSYS": str(served)}, served
