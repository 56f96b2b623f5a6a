"""Fields of a fleet inventory: the value checks, and how a transport describes what it reads.

A transport class declares `inventory = InventoryFields(...)` (its fields with their checks,
which are required, which hold local paths, its default work dir and interpreter) and builds
itself from a checked table with `from_inventory(values, env)`; device_agents.fleet reads only
that, so a transport registered by a plug-in works from a fleet file like the built-in ones.
A check takes the raw TOML value and returns the clean one, or raises `BadField` (a
ValueError) saying what is wrong; the fleet adds the file, the device and the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from latbench.errors import ConfigError

Check = Callable[[Any], Any]


class BadField(ValueError):
    """A field value is invalid; the message says how (the caller adds device and field)."""


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadField(f"must be a non-empty string, got {value!r}")
    return value


def integer(lo: int, hi: int | None = None) -> Check:
    def check(value: Any) -> int:
        if (not isinstance(value, int) or isinstance(value, bool) or value < lo
                or (hi is not None and value > hi)):
            bounds = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise BadField(f"must be an integer {bounds}, got {value!r}")
        return value
    return check


def positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise BadField(f"must be a number > 0, got {value!r}")
    return float(value)


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadField(f"must be true or false, got {value!r}")
    return value


def names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or any(not isinstance(v, str) or not v for v in value):
        raise BadField(f"must be a list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise BadField(f"lists a name twice: {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class InventoryFields:
    """What a transport reads from its device's table in a fleet inventory.

    `fields` maps each field to its check; `required` must be present; `paths` hold local
    paths, taken relative to the inventory's folder; `work_dir` is the default work dir on the
    device (None: a folder in this machine's temp dir); `python` the default interpreter for
    the agent (None: the device runs native tools only unless its table names one); `here`
    marks the machine latbench runs on, whose runtimes default to what this Python imports.
    """

    fields: Mapping[str, Check] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    work_dir: str | None = None
    python: str | None = None
    here: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", dict(self.fields))
        stray = [f for f in (*self.required, *self.paths) if f not in self.fields]
        if stray:
            raise ConfigError(f"inventory fields {stray} are required or paths but have no "
                              "check in `fields`")
        if not all(callable(check) for check in self.fields.values()):
            raise ConfigError("every inventory field needs a check (a callable)")
