"""Latency datasets on disk: the LatencyRecord schema and a resumable, crash-safe Parquet store.

A dataset is a directory that any Parquet tool can read (`pd.read_parquet(DIR / "records")`):

    DIR/card.json                 dataset card (indented JSON): the caller's facts + store fields
    DIR/records/part-*.parquet    ok records, one row per job key over all parts
    DIR/failures.parquet          jobs whose last attempt failed (absent when there are none)
    DIR/.lock                     flock target guarding writers across processes
    DIR/.campaign.lock            flock target held by the one campaign measuring into DIR

Why it is built this way: measurement campaigns run for hours on flaky devices and get killed.
Every write goes to a hidden temp file (pyarrow skips names starting with "." or "_"), is fsynced
and then renamed into place, so a reader sees the old state or the new part and never half a
file. The job key makes appends idempotent, so rerunning an interrupted build resumes it.
A campaign holds `campaign_lock` for its whole run, so a second campaign started on the same
dataset waits or refuses instead of measuring every job again; readers never take a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from latbench.bench.ops import OpSpec
from latbench.errors import DatasetError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5
# Columns added after version 1, with the value files written before them read as: clock
# frequencies around the batch (NaN: unknown), and a native tool's raw output and flags (empty
# for agent runs). Version 3 (measurement fidelity, docs/measurement.md): the achieved relative
# width of the median's confidence interval and why the run stopped ("fixed" protocol, or the
# stopping rule's "converged" / "max_runs" / "max_seconds"); the batch's drift ratio (its
# reference probe / the best seen) and whether it was over the tolerance; drift-corrected
# statistics (NaN unless asked for); sample-shape flags; the raw samples (null unless kept).
# Version 4 (measurement under load): how many timed calls were taken again because the timing
# thread was descheduled, and how many such calls had to be kept (null: not checked - a thread
# pool, a native tool, a self-timed device, or a dataset measured before the check).
# Also the 99th percentile of the samples, and for a single stream (MLPerf-style, several
# replicate runs) how far the replicates' 90th percentiles disagree and whether that is within
# the tolerance (NaN / null otherwise). Energy per inference in millijoules where the device has
# a readable sensor, and the sensor ("not available" where none; "" before energy was read).
# The batch's memory probe (an activation streaming 16 MB per call) beside its reference kernel.
# Version 5 (memory, docs/measurement.md): the peak memory a whole network added to its process
# and how it was measured (null / "" where not asked for: kernels, and datasets before it), and
# the size of the model file measured (null before version 5).
# Reading fills them in (NaN, "", null), so datasets of every version concatenate.
ADDED_COLUMNS: dict[str, Any] = {
    "freq_before_khz": math.nan, "freq_after_khz": math.nan, "raw_output": "", "tool_flags": "",
    "ci_rel_width": math.nan, "stop_reason": "", "drift_ratio": math.nan, "drift_flag": None,
    "min_corrected_ms": math.nan, "median_corrected_ms": math.nan,
    "mean_corrected_ms": math.nan, "p90_corrected_ms": math.nan,
    "bimodality": math.nan, "bimodal": None, "tail_ratio": math.nan, "heavy_tail": None,
    "samples_ms": None, "descheduled_retaken": None, "descheduled_kept": None,
    "p99_ms": math.nan, "replication_spread": math.nan, "replication_ok": None,
    "energy_mj": math.nan, "energy_method": "", "memory_reference_ms": math.nan,
    "peak_memory_bytes": None, "model_size_bytes": None, "memory_method": "",
    # OpSpec fields added after the first datasets: null in older files (the spec's default).
    "tokens": None, "heads": None, "dilation": None, "kernel_w": None, "pad_w": None,
    "out_pad": None, "scale": None, "mode": None, "axes": None, "alpha": None,
}
CARD_FILE = "card.json"
RECORDS_DIR = "records"
FAILURES_FILE = "failures.parquet"
LOCK_FILE = ".lock"
CAMPAIGN_LOCK_FILE = ".campaign.lock"
COMPACT_JOURNAL = ".compact.json"
STORE_CARD_KEYS = ("schema_version", "created", "updated", "n_records")
SUBJECTS = ("op", "network")
STATUSES = ("ok", "failed")

# OpSpec fields stored as columns (None for networks, except kind = "network").
SPEC_FIELDS = ("kind", "h", "w", "cin", "cout", "kernel", "stride", "pad", "groups", "expand",
               "act", "se", "residual", "pool", "batch", "dtype", "tokens", "heads", "dilation",
               "kernel_w", "pad_w", "out_pad", "scale", "mode", "axes", "alpha")

# The one schema every part and failures file is written with: stable order and types, so parts
# written by different runs always concatenate. Column order is LatencyRecord's field order.
SCHEMA = pa.schema(
    [
        ("job_key", pa.string()),
        ("key", pa.string()),
        ("subject", pa.string()),
        ("family", pa.string()),
        ("kind", pa.string()),
        ("h", pa.int64()),
        ("w", pa.int64()),
        ("cin", pa.int64()),
        ("cout", pa.int64()),
        ("kernel", pa.int64()),
        ("stride", pa.int64()),
        ("pad", pa.int64()),
        ("groups", pa.int64()),
        ("expand", pa.float64()),
        ("act", pa.string()),
        ("se", pa.bool_()),
        ("residual", pa.bool_()),
        ("pool", pa.string()),
        ("batch", pa.int64()),
        ("dtype", pa.string()),
        ("tokens", pa.int64()),
        ("heads", pa.int64()),
        ("dilation", pa.int64()),
        ("kernel_w", pa.int64()),
        ("pad_w", pa.int64()),
        ("out_pad", pa.int64()),
        ("scale", pa.int64()),
        ("mode", pa.string()),
        ("axes", pa.string()),
        ("alpha", pa.float64()),
        ("device", pa.string()),
        ("runtime", pa.string()),
        ("runtime_version", pa.string()),
        ("settings", pa.string()),
        ("threads", pa.int64()),
        ("median_ms", pa.float64()),
        ("min_ms", pa.float64()),
        ("mean_ms", pa.float64()),
        ("std_ms", pa.float64()),
        ("p90_ms", pa.float64()),
        ("n_runs", pa.int64()),
        ("overhead_ms", pa.float64()),
        ("round_min_median_ms", pa.float64()),
        ("reference_ms", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("timestamp", pa.string()),
        ("batch_id", pa.string()),
        ("temp_before_c", pa.float64()),
        ("temp_after_c", pa.float64()),
        ("freq_before_khz", pa.float64()),
        ("freq_after_khz", pa.float64()),
        ("raw_output", pa.string()),
        ("tool_flags", pa.string()),
        ("ci_rel_width", pa.float64()),
        ("stop_reason", pa.string()),
        ("drift_ratio", pa.float64()),
        ("drift_flag", pa.bool_()),
        ("min_corrected_ms", pa.float64()),
        ("median_corrected_ms", pa.float64()),
        ("mean_corrected_ms", pa.float64()),
        ("p90_corrected_ms", pa.float64()),
        ("bimodality", pa.float64()),
        ("bimodal", pa.bool_()),
        ("tail_ratio", pa.float64()),
        ("heavy_tail", pa.bool_()),
        ("samples_ms", pa.list_(pa.float64())),
        ("descheduled_retaken", pa.int64()),
        ("descheduled_kept", pa.int64()),
        ("p99_ms", pa.float64()),
        ("replication_spread", pa.float64()),
        ("replication_ok", pa.bool_()),
        ("energy_mj", pa.float64()),
        ("energy_method", pa.string()),
        ("memory_reference_ms", pa.float64()),
        ("peak_memory_bytes", pa.int64()),
        ("model_size_bytes", pa.int64()),
        ("memory_method", pa.string()),
    ],
    metadata={b"latbench.schema_version": str(SCHEMA_VERSION).encode()},
)
_PANDAS_TYPES = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


def make_job_key(key: str, device: str, runtime: str, settings: str) -> str:
    """Idempotency key of one measurement job: 16 hex chars of sha256 over its four parts.

    JSON-encoding the parts keeps the hash unambiguous whatever characters they contain.
    """
    blob = json.dumps([key, device, runtime, settings], separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def utc_now() -> str:
    """Current time as a UTC ISO-8601 string, the format of `LatencyRecord.timestamp`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _nan() -> float:
    return math.nan


@dataclass(frozen=True, kw_only=True)
class LatencyRecord:
    """One measured (or failed) job: one Parquet row. Units live in field names.

    `job_key` may be left empty: it is derived from (key, device, runtime, settings). When
    given it must match, so the idempotency key can never disagree with the row it names.
    Use `for_op` / `for_network` rather than filling the spec fields by hand.
    """

    job_key: str = ""
    key: str
    subject: str
    family: str = ""
    kind: str | None = None
    h: int | None = None
    w: int | None = None
    cin: int | None = None
    cout: int | None = None
    kernel: int | None = None
    stride: int | None = None
    pad: int | None = None
    groups: int | None = None
    expand: float | None = None
    act: str | None = None
    se: bool | None = None
    residual: bool | None = None
    pool: str | None = None
    batch: int | None = None
    dtype: str | None = None
    tokens: int | None = None
    heads: int | None = None
    dilation: int | None = None
    kernel_w: int | None = None
    pad_w: int | None = None
    out_pad: int | None = None
    scale: int | None = None
    mode: str | None = None
    axes: str | None = None
    alpha: float | None = None
    device: str
    runtime: str
    runtime_version: str = ""
    settings: str = ""
    threads: int = 1
    median_ms: float = field(default_factory=_nan)
    min_ms: float = field(default_factory=_nan)
    mean_ms: float = field(default_factory=_nan)
    std_ms: float = field(default_factory=_nan)
    p90_ms: float = field(default_factory=_nan)
    n_runs: int = 0
    overhead_ms: float = field(default_factory=_nan)
    round_min_median_ms: float = field(default_factory=_nan)
    reference_ms: float = field(default_factory=_nan)
    status: str = "ok"
    error: str = ""
    timestamp: str = field(default_factory=utc_now)
    batch_id: str = ""
    temp_before_c: float = field(default_factory=_nan)
    temp_after_c: float = field(default_factory=_nan)
    freq_before_khz: float = field(default_factory=_nan)
    freq_after_khz: float = field(default_factory=_nan)
    raw_output: str = ""
    tool_flags: str = ""
    ci_rel_width: float = field(default_factory=_nan)
    stop_reason: str = ""
    drift_ratio: float = field(default_factory=_nan)
    drift_flag: bool | None = None
    min_corrected_ms: float = field(default_factory=_nan)
    median_corrected_ms: float = field(default_factory=_nan)
    mean_corrected_ms: float = field(default_factory=_nan)
    p90_corrected_ms: float = field(default_factory=_nan)
    bimodality: float = field(default_factory=_nan)
    bimodal: bool | None = None
    tail_ratio: float = field(default_factory=_nan)
    heavy_tail: bool | None = None
    samples_ms: tuple[float, ...] | None = None
    descheduled_retaken: int | None = None
    descheduled_kept: int | None = None
    p99_ms: float = field(default_factory=_nan)
    replication_spread: float = field(default_factory=_nan)
    replication_ok: bool | None = None
    energy_mj: float = field(default_factory=_nan)
    energy_method: str = ""
    memory_reference_ms: float = field(default_factory=_nan)
    peak_memory_bytes: int | None = None
    model_size_bytes: int | None = None
    memory_method: str = ""

    def __post_init__(self) -> None:
        if self.subject not in SUBJECTS:
            raise DatasetError(f"record {self.key!r}: subject must be one of {SUBJECTS}, "
                               f"got {self.subject!r}")
        if self.status not in STATUSES:
            raise DatasetError(f"record {self.key!r}: status must be one of {STATUSES}, "
                               f"got {self.status!r}")
        if self.subject == "op" and self.kind in (None, "network"):
            raise DatasetError(f"op record {self.key!r} has no op kind; use LatencyRecord.for_op")
        # Coerce numpy scalars and the like to plain Python values of the declared type.
        for f in fields(self):
            value = getattr(self, f.name)
            coerced = _coerce(f.name, value)
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)
        expected = make_job_key(self.key, self.device, self.runtime, self.settings)
        if not self.job_key:
            object.__setattr__(self, "job_key", expected)
        elif self.job_key != expected:
            raise DatasetError(f"record {self.key!r} on {self.device}/{self.runtime}: job_key "
                               f"{self.job_key!r} does not match its fields ({expected!r})")

    @classmethod
    def for_op(cls, spec: OpSpec, **rest: Any) -> LatencyRecord:
        """Record for one operator: key and spec columns come from the (normalised) spec."""
        spec_values = {name: getattr(spec, name) for name in SPEC_FIELDS}
        clash = sorted(set(rest) & (set(spec_values) | {"key", "subject", "family"}))
        if clash:
            raise DatasetError(f"for_op({spec.key()}): fields {clash} come from the spec")
        return cls(key=spec.key(), subject="op", family="", **spec_values, **rest)

    @classmethod
    def for_network(cls, key: str, family: str, **rest: Any) -> LatencyRecord:
        """Record for a whole network (e.g. key "nasbench-macro:22212220"); spec columns null
        but `dtype`, its kernels' precision where known (bench.platform)."""
        clash = sorted(set(rest) & ((set(SPEC_FIELDS) - {"dtype"}) | {"subject"}))
        if clash:
            raise DatasetError(f"for_network({key}): networks have no fields {clash}")
        return cls(key=key, subject="network", family=family, kind="network", **rest)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> LatencyRecord:
        """Rebuild a record from a dataset row (dict, pandas Series); missing values -> defaults."""
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for name in names:
            if name not in row:
                continue
            value = row[name]
            if _is_missing(value):
                if name in SPEC_FIELDS:
                    values[name] = None
                continue  # the field's default (NaN for measurements, "" for strings)
            values[name] = value
        return cls(**values)

    def as_row(self) -> dict[str, Any]:
        """The record as a plain dict in schema column order."""
        row = asdict(self)
        if row["samples_ms"] is not None:
            row["samples_ms"] = list(row["samples_ms"])
        return row

    def spec(self) -> OpSpec:
        """The OpSpec rebuilt from the spec columns (ops only)."""
        if self.subject != "op":
            raise DatasetError(f"record {self.key!r} is a {self.subject}, not an op")
        return OpSpec(**{name: getattr(self, name) for name in SPEC_FIELDS
                         if not (name in ADDED_COLUMNS and getattr(self, name) is None)})


_PY_TYPES: dict[str, type] = {
    f.name: {pa.float64(): float, pa.int64(): int, pa.bool_(): bool}.get(
        f.type, tuple if pa.types.is_list(f.type) else str)
    for f in SCHEMA
}


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _coerce(name: str, value: Any) -> Any:
    """Plain Python value for column `name` (numpy/pandas scalars in, int/float/bool/str out)."""
    want = _PY_TYPES[name]
    if want is tuple:  # a list of floats (raw samples): None, or a tuple of plain floats
        if value is None or value is pd.NA:
            return None
        if isinstance(value, tuple) and all(type(v) is float for v in value):
            return value
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"record field {name}: cannot store {value!r:.80} as a list of "
                               "floats") from exc
    if value is None or value is pd.NA:
        # Unknown measurements are NaN (the schema's convention); other columns stay null.
        return math.nan if want is float and name not in SPEC_FIELDS else None
    if type(value) is want:
        return value
    try:
        if want is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return want(value)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"record field {name}: cannot store {value!r} as "
                           f"{want.__name__}") from exc


# --- the dataset ------------------------------------------------------------------------------
class LatencyDataset:
    """A latency dataset directory; safe to append from many threads and processes.

    Writers serialise on an in-process lock and on `flock(DIR/.lock)` taken through a fresh file
    descriptor per operation (flock excludes across descriptors, so this also covers several
    LatencyDataset objects on the same directory in one process). Readers never lock.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        """Use `create` or `open`; this only binds the path."""
        self.root = Path(root)
        self.records_dir = self.root / RECORDS_DIR
        self._mutex = threading.RLock()
        self._part_keys: dict[str, frozenset[str]] = {}  # part name -> its job keys (immutable)

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike[str], card: Mapping[str, Any]) -> LatencyDataset:
        """Create a dataset, or open the one already there and merge `card` into its card.

        Rerunning a build with the same root therefore resumes it instead of failing.
        """
        path = Path(root)
        if (path / CARD_FILE).exists():
            ds = cls.open(path)
            ds.update_card(**dict(card))
            return ds
        if path.exists() and not path.is_dir():
            raise DatasetError(f"cannot create dataset at {path}: it is a file")
        if path.is_dir():
            strays = [p.name for p in path.iterdir()
                      if p.name not in (RECORDS_DIR, LOCK_FILE, CAMPAIGN_LOCK_FILE,
                                        FAILURES_FILE)
                      and not _is_temp(p.name)]
            if strays:
                raise DatasetError(f"cannot create dataset at {path}: directory is not empty and "
                                   f"holds no {CARD_FILE} (found {', '.join(sorted(strays)[:5])})")
        (path / RECORDS_DIR).mkdir(parents=True, exist_ok=True)
        (path / LOCK_FILE).touch(exist_ok=True)
        ds = cls(path)
        with ds._writer():
            if (path / CARD_FILE).exists():  # another process created it meanwhile
                ds._merge_card(dict(card))
            else:
                now = utc_now()
                body = {k: v for k, v in dict(card).items() if k not in STORE_CARD_KEYS}
                body.update(schema_version=SCHEMA_VERSION, created=now, updated=now,
                            n_records=len(ds._scan_keys()))
                ds._write_card(body)
        log.info("created latency dataset at %s", path)
        return ds

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> LatencyDataset:
        """Open an existing dataset; cleans up temp files a killed writer left behind."""
        path = Path(root)
        if not path.exists():
            raise DatasetError(f"no latency dataset at {path}: path does not exist")
        if not (path / CARD_FILE).is_file() or not (path / RECORDS_DIR).is_dir():
            raise DatasetError(f"{path} is not a latency dataset (needs {CARD_FILE} and "
                               f"{RECORDS_DIR}/)")
        ds = cls(path)
        version = ds.card.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise DatasetError(f"dataset at {path} has schema_version {version!r}; this latbench "
                               f"reads up to {SCHEMA_VERSION}")
        with ds._writer(blocking=False) as got:  # readers of read-only copies skip this
            if got:
                ds._recover()
        return ds

    # --- card --------------------------------------------------------------------------------
    @property
    def card(self) -> dict[str, Any]:
        """The dataset card as stored now."""
        path = self.root / CARD_FILE
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DatasetError(f"dataset card {path} is missing") from exc
        except (OSError, ValueError) as exc:
            raise DatasetError(f"dataset card {path} is unreadable: {exc}") from exc
        if not isinstance(card, dict):
            raise DatasetError(f"dataset card {path} is not a JSON object")
        return card

    def update_card(self, **fields_: Any) -> dict[str, Any]:
        """Merge top-level fields into the card (atomic); keeps `created`, sets `updated`.

        The store's own keys (schema_version, created, n_records) are not the caller's to set
        and are ignored if passed (e.g. when a card read from disk is merged back).
        """
        with self._writer():
            return self._merge_card(fields_)

    def _merge_card(self, fields_: Mapping[str, Any]) -> dict[str, Any]:
        card = self.card
        card.update({k: v for k, v in fields_.items() if k not in STORE_CARD_KEYS})
        card.setdefault("created", utc_now())
        card.update(schema_version=SCHEMA_VERSION, updated=utc_now(),
                    n_records=len(self._scan_keys()))
        self._write_card(card)
        return card

    def _write_card(self, card: Mapping[str, Any]) -> None:
        try:
            text = json.dumps(card, indent=2, ensure_ascii=False, allow_nan=True) + "\n"
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"card for dataset {self.root} is not JSON-serialisable: "
                               f"{exc}") from exc
        _atomic_write(self.root / CARD_FILE, lambda f: f.write(text.encode("utf-8")))

    # --- writing -----------------------------------------------------------------------------
    def append(self, records: Iterable[LatencyRecord]) -> int:
        """Store a batch of records; returns the number of ok records actually written.

        Ok records whose job key is stored already (or repeated in the batch) are skipped; the
        new ones go into one new part file. Failed records replace earlier failures of the
        same job in failures.parquet, and a job that succeeds leaves the failures. A failure
        of a job that is already done is dropped: the job has its measurement.
        """
        batch = list(records)
        for rec in batch:
            if not isinstance(rec, LatencyRecord):
                raise DatasetError(f"append to {self.root}: expected LatencyRecord, got "
                                   f"{type(rec).__name__}")
        if not batch:
            return 0
        with self._writer():
            self._recover()
            done = self._scan_keys()
            new_ok: dict[str, LatencyRecord] = {}
            new_failed: dict[str, LatencyRecord] = {}
            for rec in batch:
                if rec.status == "ok":
                    if rec.job_key not in done and rec.job_key not in new_ok:
                        new_ok[rec.job_key] = rec
                    new_failed.pop(rec.job_key, None)
                elif rec.job_key not in done and rec.job_key not in new_ok:
                    new_failed[rec.job_key] = rec  # the last attempt wins
            if new_ok:
                name = self._write_part(_to_table(new_ok.values()))
                self._part_keys[name] = frozenset(new_ok)
            failed_before = self._read_failures()
            stale = failed_before is not None and not new_ok.keys().isdisjoint(
                failed_before.column("job_key").to_pylist())
            if new_failed or stale:
                self._rewrite_failures(failed_before, new_ok.keys(), new_failed)
            if new_ok:
                self._merge_card({})
            log.debug("appended %d ok / %d failed records to %s (%d skipped)",
                      len(new_ok), len(new_failed), self.root,
                      len(batch) - len(new_ok) - len(new_failed))
            return len(new_ok)

    def compact(self) -> int:
        """Merge all parts into one (crash-safe through a journal); returns the rows kept."""
        with self._writer():
            self._recover()
            parts = self._part_paths()
            if len(parts) <= 1:
                return len(self._scan_keys())
            table = _dedupe(self._read_parts(parts))
            name = self._part_name()
            journal = {"merged": name, "replaced": [p.name for p in parts]}
            tmp = self.records_dir / f".{name}.tmp"
            _write_parquet(tmp, table)
            _atomic_write(self.root / COMPACT_JOURNAL,
                          lambda f: f.write(json.dumps(journal).encode("utf-8")))
            os.replace(tmp, self.records_dir / name)
            _fsync_dir(self.records_dir)
            self._finish_compaction(journal)
            self._part_keys = {name: frozenset(table.column("job_key").to_pylist())}
            log.info("compacted %d parts of %s into %s", len(parts), self.root, name)
            return table.num_rows

    # --- reading -----------------------------------------------------------------------------
    def done_keys(self) -> set[str]:
        """Job keys that have an ok record."""
        with self._mutex:
            return set(self._scan_keys())

    def failed_keys(self) -> set[str]:
        """Job keys whose last attempt failed (and that have no ok record)."""
        table = self._read_failures(columns=["job_key"])
        return set() if table is None else set(table.column("job_key").to_pylist())

    def records(self) -> pd.DataFrame:
        """All ok rows in schema column order (ints as Int64, bools as boolean: nullable)."""
        for attempt in range(5):
            try:
                table = self._read_parts(self._part_paths())
                break
            except FileNotFoundError:  # a part vanished under a concurrent compaction
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        # During a concurrent compaction a reader may see merged and old parts together.
        return _to_frame(_dedupe(table))

    def failures(self) -> pd.DataFrame:
        """Failed jobs (last attempt each), in schema column order."""
        table = self._read_failures()
        return _to_frame(SCHEMA.empty_table() if table is None else table)

    def __len__(self) -> int:
        return len(self.done_keys())

    def __repr__(self) -> str:
        return f"LatencyDataset({str(self.root)!r})"

    # --- internals ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writer(self, blocking: bool = True) -> Iterator[bool]:
        """Hold the in-process lock and flock(DIR/.lock); yields False if non-blocking failed."""
        with self._mutex:
            try:
                fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if not blocking:  # e.g. a read-only copy: nothing to recover, read on
                    yield False
                    return
                raise DatasetError(f"cannot open lock file of dataset {self.root}: {exc}") from exc
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _recover(self) -> None:
        """Undo what a killed writer left: finish or drop a compaction, delete temp files."""
        journal_path = self.root / COMPACT_JOURNAL
        if journal_path.exists():
            try:
                journal = json.loads(journal_path.read_text(encoding="utf-8"))
                self._finish_compaction(journal)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("dropping unreadable compaction journal %s: %s", journal_path, exc)
                journal_path.unlink(missing_ok=True)
        for folder in (self.root, self.records_dir):
            for path in folder.iterdir():
                if _is_temp(path.name):
                    log.info("removing stray temp file %s", path)
                    path.unlink(missing_ok=True)

    def _finish_compaction(self, journal: Mapping[str, Any]) -> None:
        if (self.records_dir / journal["merged"]).exists():
            for name in journal["replaced"]:
                (self.records_dir / name).unlink(missing_ok=True)
            _fsync_dir(self.records_dir)
        (self.root / COMPACT_JOURNAL).unlink(missing_ok=True)

    def _part_paths(self) -> list[Path]:
        try:
            names = sorted(p.name for p in self.records_dir.iterdir()
                           if p.name.startswith("part-") and p.name.endswith(".parquet"))
        except FileNotFoundError as exc:
            raise DatasetError(f"dataset at {self.root} has no {RECORDS_DIR}/ folder") from exc
        return [self.records_dir / n for n in names]

    def _scan_keys(self) -> frozenset[str]:
        """Job keys of all parts; parts are immutable, so only parts not seen before are read."""
        for attempt in range(5):
            try:
                paths = self._part_paths()
                names = {p.name for p in paths}
                for gone in set(self._part_keys) - names:
                    del self._part_keys[gone]
                for path in paths:
                    if path.name not in self._part_keys:
                        table = _read_parquet(path, columns=["job_key"])
                        self._part_keys[path.name] = frozenset(table.column("job_key").to_pylist())
                break
            except FileNotFoundError:  # compaction removed a part between listing and reading
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        keys: set[str] = set()
        for part in self._part_keys.values():
            keys |= part
        return frozenset(keys)

    def _part_name(self) -> str:
        # Time first so names sort in write order; the uuid keeps concurrent writers apart.
        return f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"

    def _write_part(self, table: pa.Table) -> str:
        name = self._part_name()
        tmp = self.records_dir / f".{name}.tmp"
        _write_parquet(tmp, table)
        os.replace(tmp, self.records_dir / name)
        _fsync_dir(self.records_dir)
        return name

    def _read_parts(self, paths: list[Path]) -> pa.Table:
        if not paths:
            return SCHEMA.empty_table()
        return pa.concat_tables([_read_parquet(p) for p in paths])

    def _read_failures(self, columns: list[str] | None = None) -> pa.Table | None:
        path = self.root / FAILURES_FILE
        try:
            return _read_parquet(path, columns=columns)
        except FileNotFoundError:
            return None

    def _rewrite_failures(self, before: pa.Table | None, ok_keys: Iterable[str],
                          new_failed: Mapping[str, LatencyRecord]) -> None:
        drop = set(ok_keys) | set(new_failed)
        kept: list[pa.Table] = []
        if before is not None and before.num_rows:
            mask = pa.array([k not in drop for k in before.column("job_key").to_pylist()])
            kept.append(before.filter(mask))
        if new_failed:
            kept.append(_to_table(new_failed.values()))
        table = pa.concat_tables(kept) if kept else SCHEMA.empty_table()
        path = self.root / FAILURES_FILE
        if table.num_rows == 0:
            path.unlink(missing_ok=True)
            _fsync_dir(self.root)
            return
        _atomic_write(path, lambda f: pq.write_table(table, f))


# --- the campaign lock ------------------------------------------------------------------------
@contextlib.contextmanager
def campaign_lock(root: str | os.PathLike[str], wait_s: float = 0.0,
                  on_wait: Callable[[str], None] | None = None,
                  poll_s: float = 0.2) -> Iterator[None]:
    """Hold the campaign lock of the dataset at `root` (created if missing) while the block runs.

    One campaign measures into a dataset at a time: two would each see the same jobs missing and
    measure every one of them twice. The lock is `flock(DIR/.campaign.lock)`, so the system drops
    it when its holder exits, crashes or is killed; the file names the holder (pid, host, since
    when) for the others' messages. Another holder makes this wait up to `wait_s` seconds
    (`math.inf`: as long as it takes; `on_wait` hears once why), then raise a DatasetError naming
    the dataset and the holder; `wait_s=0` refuses at once. The lock is re-entrant within one
    thread (a campaign function calling another on the same dataset). A folder this call created
    and that holds nothing but the lock when the block ends is removed again.
    """
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise DatasetError(f"cannot measure into dataset {path}: it is a file")
    created = [p for p in (path, *path.parents) if not p.exists()]
    me = {"pid": os.getpid(), "thread": threading.get_ident(), "host": os.uname().nodename}
    fd = _acquire_campaign_lock(path, me, wait_s, on_wait, poll_s)
    if fd is None:  # this thread holds it already
        yield
        return
    try:
        yield
    finally:
        try:
            if created and {p.name for p in path.iterdir()} == {CAMPAIGN_LOCK_FILE}:
                (path / CAMPAIGN_LOCK_FILE).unlink()
                for folder in created:  # innermost first; stops at one that is not empty
                    folder.rmdir()
            else:
                os.ftruncate(fd, 0)
        except OSError as exc:
            log.debug("leaving the campaign lock of %s as it is: %s", path, exc)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _acquire_campaign_lock(path: Path, me: dict[str, Any], wait_s: float,
                           on_wait: Callable[[str], None] | None, poll_s: float) -> int | None:
    """The locked descriptor of DIR/.campaign.lock, or None when `me` holds the lock already."""
    if math.isnan(wait_s) or wait_s < 0:
        raise DatasetError(f"waiting for the campaign lock of dataset {path}: the wait must be "
                           f">= 0 seconds, got {wait_s}")
    lock = path / CAMPAIGN_LOCK_FILE
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            path.mkdir(parents=True, exist_ok=True)  # again if the last holder removed it
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # removed between the two calls by its last holder
            continue
        except OSError as exc:
            raise DatasetError(f"cannot open the campaign lock of dataset {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            if {k: holder.get(k) for k in me} == me:
                return None
            who = _describe_holder(holder)
            left = deadline - time.monotonic()
            if left <= 0:
                waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
                raise DatasetError(f"dataset {path} is being measured by another campaign "
                                   f"({who}){waited}; wait for it (--lock-wait SECONDS) or "
                                   "measure into another folder") from None
            if not told and on_wait is not None:
                on_wait(f"dataset {path} is being measured by another campaign ({who}); "
                        "waiting for it" + ("" if math.isinf(wait_s) else
                                            f" (up to {wait_s:g} s)"))
                told = True
            time.sleep(min(poll_s, left))
            continue
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:  # its last holder removed it: take the new one
            same = False
        if not same:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            continue
        text = json.dumps({**me, "since": utc_now()}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode("utf-8"), 0)
        return fd


def _lock_holder(fd: int) -> dict[str, Any]:
    """What the holder wrote into the lock file ({} while it has not written yet)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe_holder(holder: Mapping[str, Any]) -> str:
    if "pid" not in holder:
        return "its process has not said who it is yet"
    return (f"pid {holder['pid']} on {holder.get('host', 'an unknown host')} since "
            f"{holder.get('since', 'an unknown time')}")


# --- module helpers ---------------------------------------------------------------------------
def load_dataset(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The one-call loader: all ok records of the dataset at `path` as a DataFrame."""
    ds = LatencyDataset.open(path)
    frame = ds.records()
    if frame.empty:
        raise DatasetError(f"dataset at {ds.root} has no records")
    return frame


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _to_table(records: Iterable[LatencyRecord]) -> pa.Table:
    rows = [r.as_row() for r in records]
    try:
        return pa.Table.from_pylist(rows, schema=SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DatasetError(f"records do not fit the dataset schema: {exc}") from exc


def _to_frame(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=_PANDAS_TYPES.get)


def _dedupe(table: pa.Table) -> pa.Table:
    """Keep the first row of each job key (a no-op for a consistent dataset)."""
    keys = table.column("job_key").to_pylist()
    if len(set(keys)) == len(keys):
        return table
    seen: set[str] = set()
    mask = []
    for k in keys:
        mask.append(k not in seen)
        seen.add(k)
    return table.filter(pa.array(mask))


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """Read one file of the dataset in the store schema; FileNotFoundError passes through."""
    try:
        table = pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as exc:
        if not path.exists():
            raise FileNotFoundError(str(path)) from exc
        raise DatasetError(f"cannot read dataset file {path}: {exc}") from exc
    want = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
    for name in want.names:  # a file written before a column existed: its default value
        if name in ADDED_COLUMNS and name not in table.column_names:
            table = table.append_column(want.field(name), pa.array(
                [ADDED_COLUMNS[name]] * table.num_rows, type=want.field(name).type))
    missing = [n for n in want.names if n not in table.column_names]
    if missing:
        raise DatasetError(f"dataset file {path} lacks columns {missing}")
    try:
        return table.select(want.names).cast(want)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise DatasetError(f"dataset file {path} does not match the store schema: {exc}") from exc


def _write_parquet(path: Path, table: pa.Table) -> None:
    """Write and fsync a Parquet file (no rename: callers decide when it becomes visible)."""
    try:
        with open(path, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, pa.ArrowException) as exc:
        path.unlink(missing_ok=True)
        raise DatasetError(f"cannot write dataset file {path}: {exc}") from exc


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write `path` through a hidden temp file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, pa.ArrowException) as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"cannot write {path}: {exc}") from exc
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace a text file (card, report) so that readers see the old or the new one, never half."""
    _atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX needs the directory itself fsynced)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "CAMPAIGN_LOCK_FILE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SPEC_FIELDS",
    "LatencyDataset",
    "LatencyRecord",
    "campaign_lock",
    "load_dataset",
    "make_job_key",
    "utc_now",
]


def stream_results(root: str | os.PathLike[str], keys: Sequence[str]) -> list[dict[str, Any]]:
    """The single-stream records of `keys` in the dataset at `root`, as a report reads them:
    key, device, queries, p50/p90/p99 ms, the replicates' p90 spread and whether it is within
    the tolerance (None: one replicate)."""
    records = LatencyDataset.open(root).records()
    wanted = records[(records["status"] == "ok") & records["key"].isin(list(keys))
                     & (records["stop_reason"] == "single_stream")]
    out = []
    for row in wanted.itertuples(index=False):
        spread = float(row.replication_spread)
        ok = row.replication_ok
        out.append({"key": row.key, "device": row.device, "queries": int(row.n_runs),
                    "p50_ms": float(row.median_ms), "p90_ms": float(row.p90_ms),
                    "p99_ms": float(row.p99_ms),
                    "replication_spread": spread if math.isfinite(spread) else None,
                    "replication_ok": None if pd.isna(ok) else bool(ok)})
    return out


def replication_verdict(result: dict[str, Any]) -> str:
    """A `stream_results` entry's replication check in words: pass / FAIL with the spread."""
    if result["replication_ok"] is None:
        return "n/a (one replicate)"
    return (f"{'pass' if result['replication_ok'] else 'FAIL'} "
            f"(p90 spread {result['replication_spread']:.1%})")
