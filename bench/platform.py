"""Platform: what a latency depends on besides the network - the device, the runtime and its
delegate, the precision the kernels compute in, and the runtime's thread count.

A dataset may hold records of several platforms (one campaign measuring 1 and 2 threads, a
fleet of devices); a predictor is fitted per platform and answers only for its own, so every
record, predictor and report names one. `record_platform` reads a dataset row's platform;
`PlatformChoice` is what a user asks for with --device, --runtime, --delegate, --precision and
--threads, and `choose_platform` picks the one platform it names, or says which exist.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from latbench.bench.ops import DTYPES
from latbench.errors import ConfigError, PlatformError

DEFAULT_PRECISION = "float32"
# A precision is named by its OpSpec dtype; labels and flags use the short name.
PRECISION_NAMES = {"float32": "fp32", "float16": "fp16", "int8": "int8"}
# The flag that chooses each field of a platform (`choose_platform`'s advice).
CHOICE_FLAGS = {"device": "--device", "runtime": "--runtime", "delegate": "--delegate",
                "precision": "--precision", "threads": "--threads"}


def precision_name(dtype: str) -> str:
    """The short name of a precision: fp32, fp16, int8."""
    return PRECISION_NAMES.get(dtype, dtype)


def parse_precision(text: str) -> str:
    """A precision as a user writes it (fp32, float32, fp16, int8, any case) -> its dtype."""
    wanted = text.strip().lower()
    for dtype in DTYPES:
        if wanted in (dtype, precision_name(dtype)):
            return dtype
    known = ", ".join(precision_name(d) for d in DTYPES)
    raise ConfigError(f"unknown precision {text!r}; known: {known}")


@dataclass(frozen=True, order=True)
class Platform:
    """One platform. `delegate` is the runtime's delegate where its settings name one (LiteRT:
    xnnpack, builtin, gpu), else ""; `precision` an OpSpec dtype (float32, float16, int8)."""

    device: str
    runtime: str
    delegate: str = ""
    precision: str = DEFAULT_PRECISION
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("device", "runtime", "delegate"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"platform {name} must be a string, got "
                                  f"{getattr(self, name)!r}")
        if not self.device or not self.runtime:
            raise ConfigError(f"a platform needs a device and a runtime, got device="
                              f"{self.device!r} runtime={self.runtime!r}")
        if self.precision not in DTYPES:
            raise ConfigError(f"unknown platform precision {self.precision!r}; known: "
                              f"{', '.join(DTYPES)}")
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) \
                or self.threads < 1:
            raise ConfigError(f"platform threads must be an integer >= 1, got "
                              f"{self.threads!r}")

    def label(self) -> str:
        """`local · onnxruntime · fp32 · 2 threads` (`litert (xnnpack)` with a delegate)."""
        runtime = f"{self.runtime} ({self.delegate})" if self.delegate else self.runtime
        threads = f"{self.threads} thread{'' if self.threads == 1 else 's'}"
        return " · ".join((self.device, runtime, precision_name(self.precision), threads))

    def __str__(self) -> str:
        return self.label()

    def slug(self) -> str:
        """A folder name for the platform: `local-onnxruntime-fp32-2t`."""
        parts = [self.device, self.runtime, *([self.delegate] if self.delegate else []),
                 precision_name(self.precision), f"{self.threads}t"]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)).lstrip(".") or "platform"

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def choice(self) -> PlatformChoice:
        """The choice that picks exactly this platform."""
        return PlatformChoice(**self.to_json())

    @classmethod
    def from_json(cls, data: Any, where: str = "platform") -> Platform:
        """A platform from its JSON form; a malformed one is an error naming `where`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be an object with device, runtime, delegate, "
                              f"precision and threads, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r}")
        try:
            return cls(**dict(data))
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) \
        or str(value) in ("", "<NA>", "nan", "None")


def settings_field(settings: str, name: str) -> str | None:
    """The value of `name` in a settings key (`threads=2,...,delegate=xnnpack`), or None."""
    for part in str(settings or "").split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    return None


def record_platform(row: Mapping[str, Any]) -> Platform:
    """The platform of a dataset row: its device and runtime, the delegate its settings key
    names, its `threads` (else the key's), and its `dtype` - float32 where the row has none
    (network records measured before networks carried their kernels' precision)."""
    settings = "" if _missing(row.get("settings")) else str(row.get("settings"))
    threads = row.get("threads")
    if _missing(threads):
        threads = settings_field(settings, "threads") or 1
    dtype = row.get("dtype")
    return Platform(str(row["device"]), str(row["runtime"]),
                    settings_field(settings, "delegate") or "",
                    DEFAULT_PRECISION if _missing(dtype) else str(dtype), int(threads))


def platforms_of(records: Any) -> list[Platform]:
    """The platform of every row of a records frame, in row order."""
    columns = [c for c in ("device", "runtime", "settings", "threads", "dtype")
               if c in records.columns]
    cache: dict[tuple[Any, ...], Platform] = {}
    out = []
    for values in zip(*(records[c].tolist() for c in columns), strict=True):
        key = tuple(None if _missing(v) else v for v in values)
        if key not in cache:
            cache[key] = record_platform(dict(zip(columns, key, strict=True)))
        out.append(cache[key])
    return out


def precision_of_kernels(kernels: Iterable[Any]) -> str | None:
    """The precision of a network from its kernels' dtypes: the one they share, or the one
    reduced precision among float32 kernels (a quantized network keeps some float kernels);
    None when there are no kernels or they mix reduced precisions."""
    dtypes = {k.dtype for k in kernels}
    reduced = dtypes - {DEFAULT_PRECISION}
    if len(reduced) == 1:
        return next(iter(reduced))
    return DEFAULT_PRECISION if dtypes == {DEFAULT_PRECISION} else None


@dataclass(frozen=True)
class PlatformChoice:
    """Which platform a user asks for; a field left None matches any."""

    device: str | None = None
    runtime: str | None = None
    delegate: str | None = None
    precision: str | None = None
    threads: int | None = None

    def matches(self, platform: Platform) -> bool:
        return all(getattr(self, f.name) is None
                   or getattr(self, f.name) == getattr(platform, f.name) for f in fields(self))

    def flags(self) -> str:
        """`--threads 2 --precision int8`: the choice as the flags that make it."""
        return " ".join(f"{CHOICE_FLAGS[f.name]} {_flag_value(f.name, getattr(self, f.name))}"
                        for f in fields(self) if getattr(self, f.name) is not None)


def _flag_value(name: str, value: Any) -> str:
    return precision_name(value) if name == "precision" else str(value)


def listing(platforms: Iterable[Platform]) -> str:
    """The platforms' labels, sorted, `; `-separated (a label holds ` · `)."""
    return "; ".join(p.label() for p in sorted(set(platforms)))


def choosing_flags(platforms: Sequence[Platform]) -> str:
    """The flags, with their values, that tell `platforms` apart: `--threads 1|2`."""
    out = []
    for name, flag in CHOICE_FLAGS.items():
        values = sorted({getattr(p, name) for p in platforms})
        if len(values) > 1:
            out.append(f"{flag} {'|'.join(_flag_value(name, v) for v in values)}")
    return " and ".join(out)


def choose_platform(available: Iterable[Platform], choice: PlatformChoice | None,
                    owner: str) -> Platform:
    """The one platform of `available` that `choice` matches. None of them: an error naming
    what `owner` (e.g. "predictor runs/p") has; several: an error listing them and the flags
    that choose."""
    available = sorted(set(available))
    choice = choice or PlatformChoice()
    matching = [p for p in available if choice.matches(p)]
    if len(matching) == 1:
        return matching[0]
    if not matching:
        raise PlatformError(f"{owner} has no platform for {choice.flags()}; it has: "
                            f"{listing(available)}")
    asked = f" for {choice.flags()}" if choice.flags() else ""
    raise PlatformError(f"{owner} holds {len(matching)} platforms{asked} ({listing(matching)}); "
                        f"choose one with {choosing_flags(matching)}")
