"""Tests of the latency dataset store: schema round trip, idempotent appends, resume, crashes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from latbench.bench.ops import OpSpec
from latbench.bench.store import (
    ADDED_COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    SPEC_FIELDS,
    LatencyDataset,
    LatencyRecord,
    load_dataset,
    make_job_key,
)
from latbench.errors import DatasetError

SPECS = [
    OpSpec("conv", h=32, w=32, cin=16, cout=32, kernel=3, act="relu"),
    OpSpec("conv", h=14, w=14, cin=64, cout=64, kernel=1, groups=4, stride=2),
    OpSpec("dwconv", h=28, w=28, cin=48, kernel=5, stride=2, act="hswish"),
    OpSpec("mbconv", h=16, w=16, cin=24, cout=24, kernel=3, expand=4.5, act="swish", se=True),
    OpSpec("mbconv", h=16, w=16, cin=24, cout=24, kernel=3, expand=6, residual=False),
    OpSpec("linear", cin=1280, cout=1000, batch=2),
    OpSpec("pool", h=7, w=7, cin=960, pool="gavg"),
    OpSpec("pool", h=56, w=56, cin=64, pool="max", kernel=3, stride=2),
    OpSpec("add", h=8, w=8, cin=40, act="relu6"),
    OpSpec("se", h=8, w=8, cin=96, expand=0.25),
    OpSpec("concat", h=8, w=8, cin=96, groups=3),
    OpSpec("act", h=8, w=8, cin=96, act="hsigmoid"),
]


def op_record(spec: OpSpec, settings: str = "t1", **rest) -> LatencyRecord:
    values = dict(device="pixel", runtime="onnxruntime", runtime_version="1.32.0",
                  settings=settings, threads=1, median_ms=1.25, min_ms=1.0, mean_ms=1.3,
                  std_ms=0.1, p90_ms=1.5, n_runs=40, overhead_ms=0.01,
                  round_min_median_ms=1.2, batch_id="b1", temp_before_c=41.5)
    values.update(rest)
    return LatencyRecord.for_op(spec, **values)


def many_records(n: int, device: str = "pixel") -> list[LatencyRecord]:
    """n distinct ok records: the spec list crossed with settings strings."""
    return [op_record(SPECS[i % len(SPECS)], settings=f"t{i // len(SPECS)}", device=device)
            for i in range(n)]


def dataset_in_parts(root: Path, n: int, part: int) -> LatencyDataset:
    """A new dataset holding many_records(n), appended `part` records at a time."""
    ds = LatencyDataset.create(root, {})
    recs = many_records(n)
    for i in range(0, n, part):
        ds.append(recs[i:i + part])
    return ds


def same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def assert_records_equal(got: LatencyRecord, want: LatencyRecord) -> None:
    for f in fields(LatencyRecord):
        a, b = getattr(got, f.name), getattr(want, f.name)
        assert same_value(a, b), f"{f.name}: {a!r} ({type(a).__name__}) != {b!r}"


def assert_unique(root: Path) -> pd.DataFrame:
    frame = pd.read_parquet(root / "records")
    assert not frame["job_key"].duplicated().any()
    return frame


# --- records and schema -------------------------------------------------------------------
def test_round_trip_preserves_types_and_rebuilds_specs(tmp_path):
    recs = [op_record(s) for s in SPECS]
    recs.append(LatencyRecord.for_network("nasbench-macro:22212220", "nasbench-macro",
                                          device="pixel", runtime="litert", median_ms=12.5,
                                          n_runs=10, threads=4, temp_after_c=50.0))
    ds = LatencyDataset.create(tmp_path / "ds", {"device": {"name": "pixel"}})
    assert ds.append(recs) == len(recs)

    frame = LatencyDataset.open(tmp_path / "ds").records()
    assert list(frame.columns) == SCHEMA.names == [f.name for f in fields(LatencyRecord)]
    assert list(SPEC_FIELDS) == [f.name for f in fields(OpSpec)]  # new OpSpec field: new column
    assert str(frame["h"].dtype) == "Int64" and str(frame["se"].dtype) == "boolean"
    assert frame["median_ms"].dtype == "float64"
    by_key = {r.job_key: r for r in recs}
    for row in frame.to_dict("records"):
        back = LatencyRecord.from_row(row)
        assert_records_equal(back, by_key[row["job_key"]])
        if back.subject == "op":
            assert back.spec().key() == back.key
            assert OpSpec.from_key(back.key) == back.spec()
        else:
            assert back.kind == "network" and back.h is None and back.act is None
    with pytest.raises(DatasetError, match="network"):
        LatencyRecord.from_row(frame.iloc[-1]).spec()


def test_job_key_is_stable_and_checked():
    key = make_job_key("conv:k", "pixel", "onnxruntime", "t1")
    assert len(key) == 16 and int(key, 16) >= 0
    assert key == make_job_key("conv:k", "pixel", "onnxruntime", "t1")
    others = {make_job_key("conv:x", "pixel", "onnxruntime", "t1"),
              make_job_key("conv:k", "rpi", "onnxruntime", "t1"),
              make_job_key("conv:k", "pixel", "litert", "t1"),
              make_job_key("conv:k", "pixel", "onnxruntime", "t4"),
              make_job_key("conv:k|pixel", "", "onnxruntime", "t1")}
    assert key not in others and len(others) == 5
    rec = op_record(SPECS[0])
    assert rec.job_key == make_job_key(SPECS[0].key(), "pixel", "onnxruntime", "t1")
    with pytest.raises(DatasetError, match="job_key"):
        LatencyRecord.for_op(SPECS[0], device="pixel", runtime="onnxruntime",
                             job_key="0123456789abcdef")
    with pytest.raises(DatasetError, match="status"):
        op_record(SPECS[0], status="maybe")
    with pytest.raises(DatasetError, match="come from the spec"):
        op_record(SPECS[0], h=3)


def test_numpy_scalars_are_stored_as_plain_values(tmp_path):
    import numpy as np

    rec = op_record(SPECS[0], median_ms=np.float32(2.5), n_runs=np.int64(7), threads=np.int32(2))
    assert type(rec.median_ms) is float and type(rec.n_runs) is int and type(rec.threads) is int
    with pytest.raises(DatasetError, match="n_runs"):
        op_record(SPECS[0], n_runs=2.5)
    ds = LatencyDataset.create(tmp_path / "ds", {})
    ds.append([rec])
    assert ds.records()["n_runs"].tolist() == [7]


# --- appends --------------------------------------------------------------------------------
def test_same_job_twice_keeps_one_row(tmp_path):
    ds = LatencyDataset.create(tmp_path / "ds", {})
    first = op_record(SPECS[0], median_ms=1.0)
    again = op_record(SPECS[0], median_ms=9.0)  # same job, another measurement
    assert ds.append([first, first]) == 1
    assert ds.append([again]) == 0
    assert ds.append([]) == 0
    frame = ds.records()
    assert len(frame) == 1 and frame["median_ms"].tolist() == [1.0]
    assert len(list((tmp_path / "ds" / "records").glob("part-*.parquet"))) == 1
    assert ds.done_keys() == {first.job_key} and len(ds) == 1
    with pytest.raises(DatasetError, match="LatencyRecord"):
        ds.append([{"key": "x"}])


def test_parts_are_readable_by_pandas_and_pyarrow(tmp_path):
    root = tmp_path / "ds"
    ds = dataset_in_parts(root, 30, 10)
    ds.append([LatencyRecord.for_network("net:1", "fam", device="pixel", runtime="ort")])
    assert len(list((root / "records").glob("part-*.parquet"))) == 4
    frame = pd.read_parquet(root / "records")
    assert len(frame) == 31 and list(frame.columns) == SCHEMA.names
    table = pads.dataset(root / "records", format="parquet").to_table()
    assert table.num_rows == 31 and table.schema.names == SCHEMA.names
    assert sorted(table.column("job_key").to_pylist()) == sorted(ds.done_keys())


def test_failed_then_ok_leaves_no_failure(tmp_path):
    ds = LatencyDataset.create(tmp_path / "ds", {})
    spec = SPECS[2]
    fail1 = op_record(spec, status="failed", error="timeout after 60 s", median_ms=math.nan)
    fail2 = op_record(spec, status="failed", error="device rebooted", median_ms=math.nan)
    other = op_record(SPECS[3], status="failed", error="export failed")
    assert ds.append([fail1, other]) == 0
    assert ds.append([fail2]) == 0
    assert ds.failed_keys() == {fail1.job_key, other.job_key}
    assert ds.done_keys() == set()
    errors = dict(zip(ds.failures()["job_key"], ds.failures()["error"], strict=True))
    assert errors[fail1.job_key] == "device rebooted"  # the last attempt wins

    assert ds.append([op_record(spec)]) == 1
    assert ds.failed_keys() == {other.job_key}
    assert ds.append([op_record(SPECS[3])]) == 1
    assert ds.failed_keys() == set() and ds.failures().empty
    assert not (tmp_path / "ds" / "failures.parquet").exists()
    # A failure of a job that is already done does not resurrect it as failed.
    assert ds.append([fail1]) == 0
    assert ds.failed_keys() == set() and len(ds.records()) == 2


# --- resume and crashes ---------------------------------------------------------------------
def test_interrupted_build_resumes_with_one_row_per_job(tmp_path):
    root = tmp_path / "ds"
    recs = many_records(40)
    ds = LatencyDataset.create(root, {"plan": "grid", "flags": ["--quick"]})
    created = ds.card["created"]
    assert ds.append(recs[:20]) == 20
    # The "crash": a writer died while writing its part; its temp file stays behind.
    garbage = root / "records" / ".part-x.tmp"
    garbage.write_bytes(b"PAR1 half a parquet file")
    (root / ".failures.parquet-dead.tmp").write_bytes(b"junk")
    assert len(pd.read_parquet(root / "records")) == 20  # readers never see the garbage

    rerun = LatencyDataset.create(root, {"plan": "grid", "resumed": True})
    assert not garbage.exists() and not (root / ".failures.parquet-dead.tmp").exists()
    assert rerun.done_keys() == {r.job_key for r in recs[:20]}
    assert rerun.append(recs) == 20
    frame = assert_unique(root)
    assert set(frame["job_key"]) == {r.job_key for r in recs} and len(frame) == 40
    card = json.loads((root / "card.json").read_text())
    assert card["created"] == created and card["updated"] >= created
    assert card["resumed"] is True and card["flags"] == ["--quick"]
    assert card["n_records"] == 40 and card["schema_version"] == SCHEMA_VERSION


def test_garbage_left_while_a_writer_holds_the_lock_is_cleaned_by_the_next_append(tmp_path):
    root = tmp_path / "ds"
    ds = LatencyDataset.create(root, {})
    garbage = root / "records" / ".part-y.tmp"
    garbage.write_bytes(b"junk")
    assert ds.append(many_records(3)) == 3
    assert not garbage.exists()


_CHILD = textwrap.dedent("""
    import sys
    from latbench.bench.ops import OpSpec
    from latbench.bench.store import LatencyDataset, LatencyRecord

    root, device, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stall_after = int(sys.argv[4]) if len(sys.argv) > 4 else -1


    def stalled_write(table, where, **kwargs):
        # Write half of the file, then hang: the parent kills us mid-write.
        import io
        import time

        buf = io.BytesIO()
        real_write(table, buf, **kwargs)
        data = buf.getvalue()
        where.write(data[: len(data) // 2])
        where.flush()
        print("stalled", flush=True)
        time.sleep(60)

    specs = [OpSpec("conv", h=h, w=h, cin=c, cout=c, kernel=3)
             for h in (4, 8, 16, 32) for c in (8, 16, 24, 32, 48)]
    ds = LatencyDataset.create(root, {"writer": device})
    i = 0
    while True:
        if i == stall_after:
            import pyarrow.parquet as pq

            real_write = pq.write_table
            pq.write_table = stalled_write
        batch = [LatencyRecord.for_op(specs[j % len(specs)], device=device, runtime="ort",
                                      settings=f"s{j // len(specs)}", median_ms=float(j))
                 for j in (k % n for k in range(i, i + 7))]
        ds.append(batch + batch[:3])  # overlap inside and across batches
        i = (i + 4) % n
        print(len(ds.done_keys()), flush=True)
""")


def _start_child(script: Path, root: Path, device: str, n: int,
                 *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(root), device, str(n), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])


def test_sigkill_mid_append_leaves_a_readable_dataset(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    root = tmp_path / "ds"
    for round_, delay in enumerate((0.0, 0.013, 0.029)):
        child = _start_child(script, root, "dev", 400)
        try:
            for _ in range(5 + round_ * 3):  # wait until a few appends went through
                line = child.stdout.readline()
                assert line, child.stderr.read()
            time.sleep(delay)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        ds = LatencyDataset.open(root)
        assert not list((root / "records").glob(".*.tmp"))  # cleaned on open
        frame = assert_unique(root)
        assert len(frame) == len(ds.records()) == len(ds.done_keys()) > 0
        assert pads.dataset(root / "records").to_table().num_rows == len(frame)


def test_sigkill_while_a_part_is_half_written(tmp_path):
    """Deterministic variant: the child hangs with half a part on disk, then is killed."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    root = tmp_path / "ds"
    child = _start_child(script, root, "dev", 400, "20")  # i == 20 after 5 appends
    try:
        lines = []
        while not lines or lines[-1] != "stalled":
            line = child.stdout.readline()
            assert line, child.stderr.read()
            lines.append(line.strip())
        assert list((root / "records").glob(".part-*.tmp"))  # the half-written part
        done_before = LatencyDataset(root).done_keys()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert len(done_before) == int(lines[-2]) > 0
    assert len(assert_unique(root)) == len(done_before)
    ds = LatencyDataset.open(root)
    assert not list((root / "records").glob(".*.tmp"))
    assert ds.done_keys() == done_before
    assert ds.append(many_records(5)) == 5
    assert len(assert_unique(root)) == len(done_before) + 5


def test_two_processes_appending_overlapping_records_never_duplicate(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    root = tmp_path / "ds"
    LatencyDataset.create(root, {})
    children = [_start_child(script, root, "dev", 60) for _ in range(2)]
    try:
        for child in children:
            for _ in range(25):
                line = child.stdout.readline()
                assert line, child.stderr.read()
    finally:
        for child in children:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    frame = assert_unique(root)
    assert len(frame) == 60  # both loops cover job indices 0..59 after 25 appends


# --- threads ----------------------------------------------------------------------------
@pytest.mark.parametrize("shared", [True, False], ids=["one-instance", "instance-per-thread"])
def test_concurrent_appends_from_threads_never_duplicate(tmp_path, shared):
    root = tmp_path / "ds"
    first = LatencyDataset.create(root, {})
    recs = many_records(120)
    written = [0] * 4
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(t: int) -> None:
        try:
            ds = first if shared else LatencyDataset.open(root)
            mine = recs[t * 20: t * 20 + 60]  # thread windows overlap by 40 records
            start.wait()
            for i in range(0, len(mine), 6):
                written[t] += ds.append(mine[i:i + 9])
        except BaseException as exc:  # noqa: B036 - re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    frame = assert_unique(root)
    assert len(frame) == sum(written) == 120
    assert first.card["n_records"] == 120


# --- compaction, cards, loading -----------------------------------------------------------
def test_compact_merges_parts_and_survives_a_crash_midway(tmp_path):
    root = tmp_path / "ds"
    ds = dataset_in_parts(root, 30, 5)
    before = ds.records().sort_values("job_key").reset_index(drop=True)
    assert ds.compact() == 30
    parts = list((root / "records").glob("part-*.parquet"))
    assert len(parts) == 1
    pd.testing.assert_frame_equal(ds.records().sort_values("job_key").reset_index(drop=True),
                                  before)

    # Crash after the merged part became visible but before the old parts were deleted.
    ds.append(many_records(36)[30:])
    old = sorted(p.name for p in (root / "records").glob("part-*.parquet"))
    merged = "part-99999999999999999999-feedfacecafe.parquet"
    (root / "records" / merged).write_bytes(
        b"".join(p.read_bytes() for p in [root / "records" / old[0]]))
    (root / ".compact.json").write_text(json.dumps({"merged": merged, "replaced": old[:1]}))
    reopened = LatencyDataset.open(root)
    assert not (root / ".compact.json").exists()
    assert not (root / "records" / old[0]).exists()
    assert len(assert_unique(root)) == 36 == len(reopened.records())


def test_card_updates_keep_created_and_reject_junk(tmp_path):
    ds = LatencyDataset.create(tmp_path / "ds", {"cpu": "A76", "created": "not yours"})
    card = ds.card
    assert card["cpu"] == "A76" and card["created"] != "not yours"
    out = ds.update_card(governor="performance", n_records=999)
    assert out["created"] == card["created"] and out["governor"] == "performance"
    assert out["n_records"] == 0 and ds.card == out
    text = (tmp_path / "ds" / "card.json").read_text()
    assert text.startswith("{\n  ")  # indented, human-readable
    with pytest.raises(DatasetError, match="JSON"):
        ds.update_card(when=object())
    assert ds.card == out  # the failed update left the card as it was


def test_missing_and_empty_datasets_raise_with_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=str(missing)):
        load_dataset(missing)
    with pytest.raises(DatasetError, match=str(missing)):
        LatencyDataset.open(missing)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="not a latency dataset"):
        LatencyDataset.open(plain)
    with pytest.raises(DatasetError, match="not empty"):
        LatencyDataset.create(plain, {})
    empty = tmp_path / "empty"
    ds = LatencyDataset.create(empty, {})
    ds.append([op_record(SPECS[0], status="failed", error="boom")])
    with pytest.raises(DatasetError, match=f"dataset at {empty} has no records"):
        load_dataset(empty)
    ds.append([op_record(SPECS[0])])
    assert len(load_dataset(empty)) == 1


def test_read_only_copy_can_be_read(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    LatencyDataset.create(root, {}).append(many_records(4))
    (root / ".lock").unlink()
    real_open = os.open

    def read_only_open(path, flags, *args):
        if flags & (os.O_CREAT | os.O_RDWR | os.O_WRONLY):
            raise PermissionError(13, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    import latbench.bench.store as store_module

    monkeypatch.setattr(store_module.os, "open", read_only_open)
    assert len(load_dataset(root)) == 4
    assert not (root / ".lock").exists()
    with pytest.raises(DatasetError, match="lock file"):
        LatencyDataset.open(root).append(many_records(5))


def test_files_written_before_added_columns_read_with_their_defaults(tmp_path):
    """A part written by schema version 1 (no freq/raw_output/tool_flags columns) still reads,
    and concatenates with new parts; the added columns take their documented defaults."""
    import pyarrow.parquet as pq

    root = tmp_path / "ds"
    ds = LatencyDataset.create(root, {})
    old, new = many_records(2)
    old_table = pa.Table.from_pylist([old.as_row()], schema=SCHEMA).drop_columns(
        list(ADDED_COLUMNS))
    pq.write_table(old_table, root / "records" / "part-00000000000000000001-old.parquet")
    new = LatencyRecord.from_row({**new.as_row(), "raw_output": "count=3 first=1", "tool_flags":
                                  "--num_runs=3", "freq_before_khz": 1.8e6})
    assert ds.append([new]) == 1
    frame = ds.records().set_index("job_key")
    assert len(frame) == 2 and list(frame.reset_index().columns) == SCHEMA.names
    assert frame.loc[old.job_key, "raw_output"] == "" and frame.loc[old.job_key, "tool_flags"] == ""
    assert math.isnan(frame.loc[old.job_key, "freq_after_khz"])
    assert frame.loc[new.job_key, "raw_output"] == "count=3 first=1"
    assert frame.loc[new.job_key, "freq_before_khz"] == 1.8e6


# Columns of schema version 3 (measurement fidelity) and how files without them read.
FIDELITY_DEFAULTS = {"ci_rel_width": math.nan, "stop_reason": "", "drift_ratio": math.nan,
                     "drift_flag": None, "min_corrected_ms": math.nan,
                     "median_corrected_ms": math.nan, "mean_corrected_ms": math.nan,
                     "p90_corrected_ms": math.nan, "bimodality": math.nan, "bimodal": None,
                     "tail_ratio": math.nan, "heavy_tail": None, "samples_ms": None}


def test_fidelity_columns_round_trip_and_old_files_read_as_unknown(tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    assert SCHEMA_VERSION >= 3
    assert {k: ADDED_COLUMNS[k] for k in FIDELITY_DEFAULTS}.keys() == FIDELITY_DEFAULTS.keys()
    assert SCHEMA.field("samples_ms").type == pa.list_(pa.float64())
    root = tmp_path / "ds"
    ds = LatencyDataset.create(root, {})
    old, new = many_records(2)
    # a part written before version 3: none of the fidelity columns
    v2 = pa.Table.from_pylist([old.as_row()], schema=SCHEMA).drop_columns(list(FIDELITY_DEFAULTS))
    pq.write_table(v2, root / "records" / "part-00000000000000000001-v2.parquet")
    new = LatencyRecord.from_row({
        **new.as_row(), "ci_rel_width": 0.015, "stop_reason": "converged", "drift_ratio": 1.2,
        "drift_flag": True, "min_corrected_ms": 0.5, "bimodality": 0.7, "bimodal": True,
        "tail_ratio": 1.8, "heavy_tail": True, "samples_ms": np.array([0.6, 0.61, 0.7])})
    assert new.samples_ms == (0.6, 0.61, 0.7)  # numpy in, plain floats out
    assert ds.append([new]) == 1
    frame = ds.records().set_index("job_key")
    got_old, got_new = frame.loc[old.job_key], frame.loc[new.job_key]
    for column, default in FIDELITY_DEFAULTS.items():
        value = got_old[column]
        if isinstance(default, float):
            assert math.isnan(value), column
        elif default is None:
            assert value is None or value is pd.NA, column
        else:
            assert value == default, column
    assert got_new["stop_reason"] == "converged" and bool(got_new["drift_flag"]) is True
    assert list(got_new["samples_ms"]) == [0.6, 0.61, 0.7]
    assert math.isnan(got_new["median_corrected_ms"])
    # a record read back from the frame is the same record
    back = LatencyRecord.from_row(frame.reset_index().set_index("job_key", drop=False)
                                  .loc[new.job_key])
    assert back.samples_ms == new.samples_ms and back.bimodal is True
    assert LatencyRecord.from_row(got_old.to_dict() | {"job_key": old.job_key}).samples_ms \
        is None
    with pytest.raises(DatasetError, match="samples_ms"):
        LatencyRecord.from_row({**new.as_row(), "samples_ms": ["fast"]})
