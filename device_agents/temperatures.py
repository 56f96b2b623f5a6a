"""Device temperatures read through a plain shell, from whatever source the device lets a user
read, each reading naming its source.

Linux boards expose thermal zones (`/sys/class/thermal/thermal_zone*/temp`) and hwmon sensors
(`/sys/class/hwmon/hwmon*/temp*_input`), both in millidegrees. A phone's non-root adb shell
usually cannot read either (SELinux), but it may ask the system services: `dumpsys
thermalservice` prints the thermal HAL's current readings and `dumpsys battery` the battery's
temperature in tenths of a degree. The script below reads the thermal zones and, only when none
is readable, the hwmon sensors (which also hold disks' and boards' own temperatures) and
dumpsys, where the device has it; the pure parsers turn its sectioned output into
readings `{"zone", "name", "celsius", "source"}` (the shape of a device's `temps_c` facts) with
`source` one of `thermal_zone`, `hwmon`, `thermalservice`, `battery`.

The sysfs root is `$LATBENCH_AGENT_SYSFS` when set (a folder laid out like /sys: how tests
serve sensor files of known values, as for the agent), else /sys.
"""

from __future__ import annotations

import math
import re
from typing import Any

from latbench.device_agents.transport import Transport

# Part of the facts scripts (device_agents.facts) and run alone by `read_temperatures`: the
# section @temps (zones) and, without a readable zone, @hwmon, @thermalservice and @battery.
TEMPS_SCRIPT = r"""r=${LATBENCH_AGENT_SYSFS:-/sys}
zones=
echo @temps
for z in "$r"/class/thermal/thermal_zone*; do
  t=$(cat "$z/temp" 2>/dev/null) || continue
  [ -n "$t" ] || continue
  zones=1
  echo "${z##*/} $t $(cat "$z/type" 2>/dev/null)"
done
if [ -z "$zones" ]; then
  echo @hwmon
  for s in "$r"/class/hwmon/hwmon*/temp*_input; do
    t=$(cat "$s" 2>/dev/null) || continue
    [ -n "$t" ] || continue
    h=${s%/*}
    echo "${h##*/}/${s##*/} $t $(cat "$h/name" 2>/dev/null) $(cat "${s%_input}_label" 2>/dev/null)"
  done
  if command -v dumpsys >/dev/null 2>&1; then
    echo @thermalservice; dumpsys thermalservice 2>/dev/null
    echo @battery; dumpsys battery 2>/dev/null
  fi
fi
"""

SOURCES = ("thermal_zone", "hwmon", "thermalservice", "battery")

# android.os.Temperature types; 6-8 (BCL_VOLTAGE, BCL_CURRENT, BCL_PERCENTAGE) are battery
# current-limiter readings in volts, amperes or percent, not temperatures.
HAL_TYPES = {-1: "unknown", 0: "cpu", 1: "gpu", 2: "battery", 3: "skin", 4: "usb_port",
             5: "power_amplifier", 9: "npu", 10: "tpu", 11: "display", 12: "modem", 13: "soc",
             14: "wifi", 15: "camera", 16: "flashlight", 17: "speaker", 18: "ambient",
             19: "pogo"}
NOT_TEMPERATURES = frozenset({6, 7, 8})
# Readings outside this range are a sensor's placeholder (virtual sensors report -5700), not
# the device's temperature; exactly 0.0 is what the HAL reports for a sensor that is not fitted.
PLAUSIBLE_C = (-40.0, 150.0)

_HAL_RE = re.compile(
    r"Temperature\{mValue=(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|NaN), "
    r"mType=(?P<type>-?\d+), mName=(?P<name>[^,}]*)(?:, mStatus=(?P<status>-?\d+))?")
_BATTERY_RE = re.compile(r"^\s+temperature:\s*(?P<tenths>-?\d+)\s*$")


def _plausible(celsius: float) -> bool:
    return math.isfinite(celsius) and celsius != 0.0 and \
        PLAUSIBLE_C[0] < celsius < PLAUSIBLE_C[1]


def parse_zone_lines(text: str | None, source: str = "thermal_zone") -> list[dict[str, Any]]:
    """Lines 'thermal_zone0 45000 cpu-thermal' (or 'hwmon1/temp1_input 45000 coretemp Core 0')
    -> readings. Most kernels report millidegrees; a few old zone drivers whole degrees."""
    readings = []
    for line in (text or "").splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2:
            continue
        try:
            milli = int(parts[1])
        except ValueError:
            continue
        celsius = milli / 1000.0 if abs(milli) >= 1000 else float(milli)
        readings.append({"zone": parts[0],
                         "name": parts[2].strip() if len(parts) > 2 else parts[0],
                         "celsius": celsius, "source": source})
    return readings


def _block(text: str, title: str) -> list[str] | None:
    """The indented lines after the line `title` (None when there is no such line)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip() == title:
            block = []
            for following in lines[index + 1:]:
                if following.strip() and not following[:1].isspace():
                    break
                block.append(following)
            return block
    return None


def parse_thermalservice(text: str | None) -> list[dict[str, Any]]:
    """`dumpsys thermalservice` -> readings of its "Current temperatures from HAL:" block (the
    "Cached temperatures:" block, which may be stale, only when the HAL block is missing).
    Current-limiter entries, placeholders and unfitted sensors (0.0) are left out; `status` is
    the HAL's throttling status of the sensor (0 none ... 6 shutdown)."""
    text = text or ""
    block = _block(text, "Current temperatures from HAL:")
    if block is None:
        block = _block(text, "Cached temperatures:") or []
    readings = []
    for line in block:
        match = _HAL_RE.search(line)
        if match is None:
            continue
        kind = int(match["type"])
        celsius = float(match["value"])
        if kind in NOT_TEMPERATURES or not _plausible(celsius):
            continue
        readings.append({"zone": match["name"].strip(), "name": HAL_TYPES.get(kind, "unknown"),
                         "celsius": celsius, "source": "thermalservice",
                         "status": int(match["status"]) if match["status"] else None})
    return readings


def parse_battery(text: str | None) -> list[dict[str, Any]]:
    """`dumpsys battery` -> the battery's reading: its `temperature:` line in the "Current
    Battery Service state:" block, in tenths of a degree (event-log lines after the block are
    not read)."""
    for line in _block(text or "", "Current Battery Service state:") or []:
        match = _BATTERY_RE.match(line)
        if match:
            celsius = int(match["tenths"]) / 10.0
            return [{"zone": "battery", "name": "battery", "celsius": celsius,
                     "source": "battery"}] if _plausible(celsius) else []
    return []


def parse_temperatures(sections: dict[str, str]) -> list[dict[str, Any]] | None:
    """The sections of TEMPS_SCRIPT's output (see facts.split_sections) -> every reading, or
    None when the device reported none."""
    readings = (parse_zone_lines(sections.get("temps"), "thermal_zone")
                + parse_zone_lines(sections.get("hwmon"), "hwmon")
                + parse_thermalservice(sections.get("thermalservice"))
                + parse_battery(sections.get("battery")))
    return readings or None


def hottest(readings: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The hottest reading, or None when there is none."""
    valid = [r for r in readings or [] if isinstance(r, dict)
             and isinstance(r.get("celsius"), (int, float)) and math.isfinite(r["celsius"])]
    return max(valid, key=lambda r: r["celsius"]) if valid else None


def describe_reading(reading: dict[str, Any]) -> str:
    """'thermalservice:AP' - where a reading came from, for cards and messages. Agents of
    older versions give zones without a source: those are thermal zones."""
    return f"{reading.get('source') or 'thermal_zone'}:{reading.get('zone') or reading.get('name')}"


def read_temperatures(transport: Transport, timeout_s: float = 30.0
                      ) -> list[dict[str, Any]] | None:
    """Every temperature the device lets its shell read now (TransportError if unreachable)."""
    from latbench.device_agents.facts import split_sections

    result = transport.run(["sh", "-c", TEMPS_SCRIPT], timeout_s)
    return parse_temperatures(split_sections(result.stdout))
