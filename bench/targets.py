"""Which devices a command measures on: `--device NAME` and `--fleet FILE` resolved in one place.

- neither: this machine (`local`);
- `--device local` without a fleet: this machine;
- `--fleet FILE`: every device of the inventory (`only` keeps some of them);
- `--fleet FILE --device NAME`: that device of the inventory (`local` too only if the
  inventory lists it);
- `--device NAME` without `--fleet`: NAME from the inventory named by `$LATBENCH_FLEET`.
Every measuring command (campaigns, evaluation, fusion pairs, repeats, search winners, the demo)
goes through `resolve_devices`, so a phone or a board of a farm is measured exactly like the
local CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

# Registers the runners, and with them the runtimes a fleet file is checked against.
import latbench.bench.runners  # noqa: F401
from latbench.device_agents import Device, load_fleet, local_device
from latbench.errors import ConfigError

LOCAL = "local"
FLEET_ENV = "LATBENCH_FLEET"


def resolve_devices(device: str | None = None, fleet: str | os.PathLike[str] | None = None, *,
                    only: Sequence[str] | None = None, threads: int | None = None,
                    insecure_accept_unknown_host_key: bool = False) -> list[Device]:
    """The devices a command names (see the module docstring), in inventory order.

    `threads` overrides the local device's thread count (inventory devices keep their own)."""
    fleet = fleet or os.environ.get(FLEET_ENV) or None
    if fleet is None:
        if device not in (None, LOCAL):
            raise ConfigError(f"unknown device {device!r}: without a fleet inventory latbench "
                              f"knows only {LOCAL!r}; pass --fleet FILE (or set {FLEET_ENV}) "
                              f"naming {device!r}")
        if only and set(only) != {LOCAL}:
            raise ConfigError("--only needs --fleet FILE")
        return [local_device(threads=threads or 1)]
    devices = load_fleet(Path(fleet), only=only,
                         insecure_accept_unknown_host_key=insecure_accept_unknown_host_key)
    if device is None:
        return devices
    chosen = [d for d in devices if d.name == device]
    if chosen:
        return chosen
    raise ConfigError(f"fleet {fleet} has no device {device!r}; it has "
                      f"{', '.join(d.name for d in devices)}")


def resolve_device(device: str | None = None, fleet: str | os.PathLike[str] | None = None, *,
                   threads: int | None = None,
                   insecure_accept_unknown_host_key: bool = False) -> Device:
    """The one device a single-device command measures on."""
    devices = resolve_devices(device, fleet, threads=threads,
                              insecure_accept_unknown_host_key=insecure_accept_unknown_host_key)
    if len(devices) != 1:
        raise ConfigError(f"this command measures on one device and fleet {fleet} has "
                          f"{len(devices)} ({', '.join(d.name for d in devices)}); pick one "
                          "with --device NAME")
    return devices[0]
