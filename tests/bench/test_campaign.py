"""Campaigns on the local CPU with ONNX Runtime: one record per job, resuming, failed exports,
redoing batches measured in a slow phase, giving up on a dead device without stopping the
others, progress per job, and the dataset's campaign lock between real processes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import latbench.bench.campaign as campaign
from latbench.bench.campaign import (
    NETWORK_BATCH_SIZE,
    CampaignConfig,
    Subject,
    network_kernels,
    plan_batches,
    run_campaign,
    split_pool_advice,
)
from latbench.bench.ops import OpSpec
from latbench.bench.runners import BatchResult, ModelFile, OnnxRuntimeRunner, RunSettings
from latbench.bench.store import CAMPAIGN_LOCK_FILE, LatencyDataset, campaign_lock, make_job_key
from latbench.cli import main
from latbench.device_agents import CommandResult, Device, local_device
from latbench.errors import ConfigError, DatasetError, RunnerError, TransportError

SETTINGS = RunSettings(threads=1, warmup=1, runs=3, rounds=2)
SPECS = [
    OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3),
    OpSpec("conv", h=8, w=8, cin=8, cout=8, kernel=1, act="relu"),
    OpSpec("dwconv", h=8, w=8, cin=8, kernel=3),
    OpSpec("dwconv", h=8, w=8, cin=16, kernel=5, stride=2),
    OpSpec("mbconv", h=8, w=8, cin=8, cout=8, kernel=3, expand=3, act="relu"),
    OpSpec("linear", cin=32, cout=10),
    OpSpec("pool", h=8, w=8, cin=16, pool="gavg"),
    OpSpec("pool", h=8, w=8, cin=8, pool="max", kernel=3, stride=2),
    OpSpec("add", h=8, w=8, cin=8),
    OpSpec("act", h=8, w=8, cin=8, act="hswish"),
]


def config(**changes) -> CampaignConfig:
    return CampaignConfig(**{"settings": SETTINGS, "drift_pause_s": 0.01, **changes})


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return local_device(str(tmp_path / "work"))


def subjects(specs: Sequence[OpSpec] = SPECS) -> list[Subject]:
    return [Subject.op(s) for s in specs]


def stored(dataset: LatencyDataset) -> tuple[list[str], list[str]]:
    """(job keys of ok records, job keys of failed records)."""
    return list(dataset.records()["job_key"]), list(dataset.failures()["job_key"])


def job_keys(subs: Sequence[Subject], device: str = "local") -> set[str]:
    key = SETTINGS.key("onnxruntime")
    return {make_job_key(s.key, device, "onnxruntime", key) for s in subs}


def test_one_record_per_job_and_rerun_skips(tmp_path: Path, device: Device) -> None:
    dataset = LatencyDataset.create(tmp_path / "ds", {"purpose": "test"})
    summary = run_campaign(subjects(), [device], ["onnxruntime"], dataset, config(batch_size=4))
    assert (summary.total, summary.skipped, summary.measured, summary.failed) == (10, 0, 10, 0)
    ok, failed = stored(dataset)
    assert sorted(ok) == sorted(job_keys(subjects())) and failed == []
    records = dataset.records()
    assert list(records["key"].sort_values()) == sorted(s.key() for s in SPECS)
    assert (records["status"] == "ok").all() and (records["subject"] == "op").all()
    assert set(records["settings"]) == {SETTINGS.key("onnxruntime")}
    assert set(records["n_runs"]) == {SETTINGS.runs * SETTINGS.rounds}
    assert (records["min_ms"] > 0).all() and (records["median_ms"] >= records["min_ms"]).all()
    assert (records["overhead_ms"] > 0).all() and (records["reference_ms"] > 0).all()
    assert records["batch_id"].nunique() == 3  # 10 jobs in batches of 4
    parts = sorted((tmp_path / "ds" / "records").iterdir())

    again = run_campaign(subjects(), [device], ["onnxruntime"], dataset, config(batch_size=4))
    assert (again.total, again.skipped, again.measured, again.failed) == (10, 10, 0, 0)
    assert sorted((tmp_path / "ds" / "records").iterdir()) == parts  # nothing written
    assert len(dataset.records()) == 10


def batches_of(dataset: LatencyDataset) -> list[set[str]]:
    records = dataset.records()
    return sorted((set(g["key"]) for _, g in records.groupby("batch_id")), key=sorted)


def test_jobs_are_visited_in_a_seeded_random_order(tmp_path: Path, device: Device) -> None:
    """A plan lists kernels of one kind (or networks of one family) together; measured in that
    order, a slow phase would bias all of them. The default order is a seeded shuffle: the
    batches mix the listed groups, and the same seed gives the same batches."""
    given = [s.key() for s in SPECS]
    in_order = [set(given[:5]), set(given[5:])]
    grouped = []
    for run, seed in enumerate((0, 0, None)):
        dataset = LatencyDataset.create(tmp_path / f"ds{run}", {})
        run_campaign(subjects(), [device], ["onnxruntime"], dataset,
                     config(batch_size=5, shuffle_seed=seed))
        grouped.append(batches_of(dataset))
    assert grouped[0] == grouped[1]
    assert grouped[0] != sorted(in_order, key=sorted)
    assert grouped[2] == sorted(in_order, key=sorted)


def test_batches_keep_kernels_and_networks_apart_in_random_order() -> None:
    ops = subjects(SPECS)
    nets = [Subject.chain(f"toy:{i}", "toy", SPECS[:2]) for i in range(7)]
    batches = plan_batches([*ops, *nets], 4)
    assert sorted(s.key for b in batches for s in b) == sorted(s.key for s in [*ops, *nets])
    assert all(len(b) <= 4 and len({s.subject for s in b}) == 1 for b in batches)
    assert len(batches) == 3 + 2  # 10 kernels and 7 networks in batches of at most 4
    kinds = [b[0].subject for b in batches]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)  # interleaved
    assert [[s.key for s in b] for b in plan_batches([*ops, *nets], 4)] == \
        [[s.key for s in b] for b in batches]  # seeded
    in_order = plan_batches([*ops, *nets], 4, seed=None)
    assert [s.key for b in in_order for s in b] == [s.key for s in [*ops, *nets]]


def test_networks_go_in_small_batches() -> None:
    """One slow phase during a batch must not move every calibration network at once."""
    nets = [Subject.chain(f"toy:{i}", "toy", SPECS[:2]) for i in range(34)]
    batches = plan_batches([*subjects(SPECS), *nets], 40)
    sizes = sorted(len(b) for b in batches if b[0].subject == "network")
    assert sizes == [2, 8, 8, 8, 8] and NETWORK_BATCH_SIZE == 8
    assert [len(b) for b in batches if b[0].subject == "op"] == [len(SPECS)]


def test_failed_export_is_one_failed_record(tmp_path: Path, device: Device) -> None:
    # concat cannot be chained into a network: the export raises ExportError for this subject
    broken = Subject.chain("net:broken", "test", [OpSpec("concat", h=8, w=8, cin=8, groups=2)])
    subs = [*subjects(SPECS[:4]), broken, *subjects(SPECS[4:6])]
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    summary = run_campaign(subs, [device], ["onnxruntime"], dataset, config())
    assert (summary.measured, summary.failed) == (6, 1)
    assert summary.failures == [("local", "net:broken", summary.failures[0][2])]
    assert "ExportError" in summary.failures[0][2] and "concat" in summary.failures[0][2]
    ok, failed = stored(dataset)
    assert len(ok) == 6 and failed == [next(iter(job_keys([broken])))]
    failure = dataset.failures().iloc[0]
    assert failure["status"] == "failed" and failure["subject"] == "network"
    assert "cannot be chained" in failure["error"]

    # a rerun retries only the failed job; it fails again and still has one record
    again = run_campaign(subs, [device], ["onnxruntime"], dataset, config())
    assert (again.skipped, again.measured, again.failed) == (6, 0, 1)
    assert [len(x) for x in stored(dataset)] == [6, 1]


def test_rerun_after_interruption(tmp_path: Path, device: Device) -> None:
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    first = run_campaign(subjects(SPECS[:5]), [device], ["onnxruntime"], dataset,
                         config(batch_size=3))
    assert first.measured == 5
    full = run_campaign(subjects(), [device], ["onnxruntime"], dataset, config(batch_size=3))
    assert (full.total, full.skipped, full.measured) == (10, 5, 5)
    ok, failed = stored(dataset)
    assert len(ok) == len(set(ok)) == 10 and failed == []
    assert set(ok) == job_keys(subjects())


class SlowOnceRunner(OnnxRuntimeRunner):
    """The real runner, but the reference probe reads 1 ms, or 5 ms on chosen calls: a device
    that hits a slow phase (throttling, a neighbour) during a batch. (Fixed values, so the real
    probe's own jitter on a busy machine cannot add redos.)"""

    def __init__(self, slow_calls: set[int]) -> None:
        super().__init__()
        self.slow_calls = slow_calls
        self.calls = 0
        self.batch_sizes: list[int] = []

    def measure(self, device: Device, models: Sequence[ModelFile],
                settings: RunSettings | None = None, timeout_s: float = 600.0,
                progress: Callable[[float], None] | None = None) -> BatchResult:
        result = super().measure(device, models, settings, timeout_s, progress)
        self.calls += 1
        self.batch_sizes.append(len(models))
        return dataclasses.replace(result, reference_ms=5.0 if self.calls in self.slow_calls
                                   else 1.0)


def test_slow_batch_is_measured_again(tmp_path: Path, device: Device,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # calls 1-3 calibrate the device, call 4 is the first batch: slow, so it is redone (call 5)
    runner = SlowOnceRunner(slow_calls={4})
    monkeypatch.setattr(campaign, "get_runner", lambda name: runner)
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    summary = run_campaign(subjects(SPECS[:4]), [device], ["onnxruntime"], dataset,
                           config(batch_size=10))
    assert summary.redone_batches == 1
    assert runner.calls == 5 and runner.batch_sizes == [1, 1, 1, 4, 4]
    records = dataset.records()
    assert len(records) == 4 and records["batch_id"].nunique() == 1
    # what was stored is the fast measurement, not the slow one
    assert set(records["reference_ms"]) == {1.0}


def test_slow_phase_gives_up_after_retries(tmp_path: Path, device: Device,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    runner = SlowOnceRunner(slow_calls={4, 5, 6})
    monkeypatch.setattr(campaign, "get_runner", lambda name: runner)
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    summary = run_campaign(subjects(SPECS[:2]), [device], ["onnxruntime"], dataset,
                           config(drift_retries=2))
    # two redos allowed; the third slow measurement is stored rather than looping forever
    assert summary.redone_batches == 2 and runner.calls == 6
    assert summary.measured == 2 and set(dataset.records()["reference_ms"]) == {5.0}


class DeadTransport:
    """A device that cannot be reached at all."""

    name = "dead"

    def __init__(self) -> None:
        self.commands: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], timeout_s: float) -> CommandResult:
        self.commands.append(tuple(argv))
        raise TransportError("connection refused by device dead")

    def push(self, local: Path, remote: str) -> None:
        raise TransportError("connection refused by device dead")

    def pull(self, remote: str, local: Path) -> None:
        raise TransportError("connection refused by device dead")

    def close(self) -> None:
        pass


def test_dead_device_fails_every_job_and_gives_up(tmp_path: Path) -> None:
    transport = DeadTransport()
    dead = Device("dead", transport, ("onnxruntime",), work_dir="/tmp/latbench-dead")
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    summary = run_campaign(subjects(), [dead], ["onnxruntime"], dataset,
                           config(batch_size=2, max_device_failures=2))
    assert (summary.measured, summary.failed) == (0, 10)
    ok, failed = stored(dataset)
    assert ok == [] and sorted(failed) == sorted(job_keys(subjects(), "dead"))
    errors = [e for _, _, e in summary.failures]
    assert sum("TransportError" in e and "connection refused" in e for e in errors) == 4
    assert sum("gave up after 2 failed batches" in e for e in errors) == 6
    # one calibration attempt and two batches reached the device; the other 3 batches did not
    assert sum(1 for c in transport.commands if c[0] == "mkdir") == 3


def test_dead_device_does_not_stop_the_others(tmp_path: Path, device: Device) -> None:
    dead = Device("dead", DeadTransport(), ("onnxruntime",), work_dir="/tmp/latbench-dead")
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    summary = run_campaign(subjects(SPECS[:3]), [dead, device], ["onnxruntime"], dataset,
                           config(max_device_failures=1))
    assert (summary.total, summary.measured, summary.failed) == (6, 3, 3)
    records = dataset.records()
    assert set(records["device"]) == {"local"} and len(records) == 3
    assert set(dataset.failures()["device"]) == {"dead"}


def test_campaign_refusals(tmp_path: Path, device: Device) -> None:
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    with pytest.raises(ConfigError, match="duplicate keys"):
        run_campaign(subjects(SPECS[:2] * 2), [device], ["onnxruntime"], dataset, config())
    no_litert = dataclasses.replace(device, runtimes=("onnxruntime",))
    with pytest.raises(ConfigError, match="device local has no runtime litert"):
        run_campaign(subjects(SPECS[:2]), [no_litert], ["litert"], dataset, config())
    with pytest.raises(ConfigError, match="batch size"):
        config(batch_size=0)
    with pytest.raises(ConfigError, match="drift tolerance"):
        config(drift_tolerance=0)
    assert len(dataset) == 0


def test_network_subjects_and_kernels(tmp_path: Path, device: Device) -> None:
    chain = [SPECS[0], OpSpec("conv", h=8, w=8, cin=8, cout=16, kernel=3, stride=2),
             OpSpec("pool", h=4, w=4, cin=16, pool="gavg"), OpSpec("linear", cin=16, cout=10)]
    net = Subject.chain("toy:1", "toy", chain)
    assert network_kernels([net, *subjects(SPECS[:2])]) == {"toy:1": [s.key() for s in chain]}
    merged = network_kernels([net], {"network_kernels": {"old:1": ["x"]}})
    assert set(merged) == {"old:1", "toy:1"}
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    summary = run_campaign([net], [device], ["onnxruntime"], dataset, config())
    assert summary.measured == 1
    row = dataset.records().iloc[0]
    assert (row["key"], row["subject"], row["family"], row["kind"]) == ("toy:1", "network",
                                                                         "toy", "network")


# --- progress per job ---------------------------------------------------------------------------
class Lanes:
    """A progress sink that keeps every call."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.advances: list[tuple[str, float]] = []
        self.notes: list[tuple[str, str]] = []

    def start(self, lane: str, total: int) -> None:
        self.totals[lane] = total

    def advance(self, lane: str, done: float) -> None:
        assert done > 0
        self.advances.append((lane, done))

    def note(self, lane: str, text: str) -> None:
        self.notes.append((lane, text))

    def done(self, lane: str) -> float:
        return sum(d for name, d in self.advances if name == lane)


class ReportingRunner(SlowOnceRunner):
    """The real runner measuring for real; it then reports each model finished through the
    `progress` callback (in halves, as a runner streaming partial progress would), and fails
    the calls listed in `fail_calls` after reporting one model."""

    def __init__(self, slow_calls: set[int], fail_calls: frozenset[int] = frozenset()) -> None:
        super().__init__(slow_calls)
        self.fail_calls = fail_calls

    def measure(self, device: Device, models: Sequence[ModelFile],
                settings: RunSettings | None = None, timeout_s: float = 600.0,
                progress: Callable[[float], None] | None = None) -> BatchResult:
        result = super().measure(device, models, settings, timeout_s)
        if models[0].id == "calibration":  # probes are not jobs: no callback
            assert progress is None
            return result
        assert progress is not None  # the campaign passes it to every batch
        if self.calls in self.fail_calls:
            progress(1.0)
            raise RunnerError("the runtime crashed after one model")
        for _ in models:
            progress(0.5)
            progress(0.5)
        return result


def test_progress_advances_per_job_and_never_twice_for_a_redone_batch(
        tmp_path: Path, device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    # calls 1-3 calibrate; call 4 (first batch) is slow and redone as call 5
    runner = ReportingRunner(slow_calls={4})
    monkeypatch.setattr(campaign, "get_runner", lambda name: runner)
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    sink = Lanes()
    summary = run_campaign(subjects(SPECS[:5]), [device], ["onnxruntime"], dataset,
                           config(batch_size=3, shuffle_seed=None), sink)
    assert summary.redone_batches == 1 and summary.measured == 5
    assert sink.totals == {"local/onnxruntime": 5}
    # every model advanced the bar as it was reported: 3 models x 2 halves, then 2 x 2; the
    # redone attempt reported its 3 models again and added nothing
    assert [d for _, d in sink.advances] == [0.5] * 10
    assert sink.done("local/onnxruntime") == 5
    assert any("measuring the batch again" in text for _, text in sink.notes)


def test_failed_batch_still_advances_the_bar_to_its_size(
        tmp_path: Path, device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = ReportingRunner(slow_calls=set(), fail_calls=frozenset({4}))
    monkeypatch.setattr(campaign, "get_runner", lambda name: runner)
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    sink = Lanes()
    summary = run_campaign(subjects(SPECS[:5]), [device], ["onnxruntime"], dataset,
                           config(batch_size=3, shuffle_seed=None), sink)
    assert (summary.measured, summary.failed) == (2, 3)
    # the failed batch: 1 model reported, the other 2 added when it was stored as failed
    assert [d for _, d in sink.advances] == [1.0, 2.0, 0.5, 0.5, 0.5, 0.5]
    assert sink.done("local/onnxruntime") == 5


class SilentRunner(SlowOnceRunner):
    """The real runner, reporting no progress while it measures."""

    def measure(self, device: Device, models: Sequence[ModelFile],
                settings: RunSettings | None = None, timeout_s: float = 600.0,
                progress: Callable[[float], None] | None = None) -> BatchResult:
        return super().measure(device, models, settings, timeout_s)


def test_runner_reporting_no_progress_advances_per_batch(
        tmp_path: Path, device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = SilentRunner(slow_calls=set())
    monkeypatch.setattr(campaign, "get_runner", lambda name: runner)
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    sink = Lanes()
    run_campaign(subjects(SPECS[:5]), [device], ["onnxruntime"], dataset,
                 config(batch_size=3, shuffle_seed=None), sink)
    assert [d for _, d in sink.advances] == [3, 2]


def test_time_left_column_estimates_from_the_lane_pace() -> None:
    from rich.progress import Progress

    from latbench.progress import TimeLeftColumn

    now = [100.0]
    progress = Progress(TimeLeftColumn(), get_time=lambda: now[0], auto_refresh=False)
    column = TimeLeftColumn()
    task_id = progress.add_task("lane", total=10)
    task = progress.tasks[0]
    assert column.render(task).plain == "-:--:--"  # nothing done yet: no estimate
    now[0] += 60.0
    progress.advance(task_id, 2)  # 2 jobs in a minute: 8 left take 4 minutes
    assert column.render(task).plain == "0:04:00"
    now[0] += 600.0  # a long batch, no advance: the estimate stays, from the average pace
    progress.advance(task_id, 3)  # 5 in 11 minutes
    assert column.render(task).plain == "0:11:00"
    progress.advance(task_id, 5)
    assert column.render(task).plain == "0:11:00"  # finished: the lane's elapsed time


def test_bars_add_fractions_up_to_whole_jobs() -> None:
    import io

    from rich.console import Console

    from latbench.progress import Bars

    with Bars("measuring", Console(file=io.StringIO())) as bars:
        bars.start("board/onnxruntime", 3)
        for _ in range(30):
            bars.advance("board/onnxruntime", 0.1)  # 30 x 0.1 is 2.9999999999999996 in floats
        task = bars.progress.tasks[0]
        assert task.completed == 3 and task.finished


# --- the campaign lock: one campaign per dataset, across real processes -------------------------
LATBENCH = str(Path(sys.executable).parent / "latbench")
FAST = ["--warmup", "1", "--runs", "3", "--rounds", "1", "--fixed-runs", "--calibration-runs",
        "0", "--check-timeout", "600"]


def gated_fleet(tmp_path: Path) -> tuple[Path, Path]:
    """A fleet with one local device whose Python waits for a gate file before starting: a
    campaign on it holds its dataset until the test opens the gate. Returns (fleet, gate). The
    waiting shell runs in its own session (the local transport's), so killing a campaign leaves
    it: it gives up when a `stop` file appears beside the gate or the folder is removed."""
    gate, stop = tmp_path / "gate", tmp_path / "stop"
    python = tmp_path / "gated-python"
    python.write_text(f"#!/bin/sh\nwhile [ ! -e '{gate}' ]; do\n"
                      f"  {{ [ -e '{stop}' ] || [ ! -d '{tmp_path}' ]; }} && exit 1\n"
                      f"  sleep 0.05\ndone\nexec '{sys.executable}' \"$@\"\n")
    python.chmod(0o755)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[devices.gated]\ntransport = "local"\npython = "{python}"\n'
                     f'work_dir = "{tmp_path / "work"}"\nruntimes = ["onnxruntime"]\n')
    return fleet, gate


def tiny_plan(tmp_path: Path) -> Path:
    plan = tmp_path / "tiny.yaml"
    plan.write_text("specs:\n" + "".join(f"  - '{s.key()}'\n" for s in SPECS[:3]))
    return plan


def start_campaign(out: Path, plan: Path, fleet: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([LATBENCH, "bench", "ops", "--plan", str(plan), "--out", str(out),
                             "--fleet", str(fleet), "--device", "gated", *FAST, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    """Wait (up to minutes on a loaded machine) until `ready()`; fail if `proc` exits first."""
    deadline = time.monotonic() + 300
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"{what}: the campaign exited first: {proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: gave up waiting")
        time.sleep(0.05)


def holder(out: Path) -> dict:
    try:
        return json.loads((out / CAMPAIGN_LOCK_FILE).read_text() or "{}")
    except (FileNotFoundError, ValueError):
        return {}


def test_second_campaign_refuses_or_waits_and_measures_nothing_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet, gate = gated_fleet(tmp_path)
    plan, out = tiny_plan(tmp_path), tmp_path / "ds"
    first = start_campaign(out, plan, fleet)
    procs = [first]
    try:
        wait_for("first campaign holds the dataset", lambda: holder(out).get("pid") == first.pid,
                 first)
        # a second campaign in this process: refused at once, one line naming dataset and pid
        code = main(["bench", "ops", "--plan", str(plan), "--out", str(out), "--fleet",
                     str(fleet), "--device", "gated", *FAST])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1, err
        assert err[0].startswith(f"latbench: error: dataset {out} is being measured by another "
                                 f"campaign (pid {first.pid} on ")
        assert sorted(p.name for p in out.iterdir()) == [CAMPAIGN_LOCK_FILE]  # wrote nothing
        assert holder(out)["pid"] == first.pid

        # a third, in another process, waits for the first and then finds every job stored
        third = start_campaign(out, plan, fleet, "--lock-wait", "inf")
        procs.append(third)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(third.stderr), daemon=True)
        reader.start()
        wait_for("third campaign waits", lambda: any("waiting for it" in line
                                                     for line in lines), third)
        gate.touch()
        assert first.wait(timeout=300) == 0, first.communicate()
        third.wait(timeout=300)
        out_third = third.stdout.read()
        reader.join(timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        (tmp_path / "stop").touch()
    assert third.returncode == 0, lines
    assert f"dataset {out} is being measured by another campaign (pid {first.pid}" in \
        "".join(lines)
    assert summary_value(out_third, "already stored") == 3
    assert summary_value(out_third, "measured") == 0
    assert len(LatencyDataset.open(out).records()) == 3
    assert holder(out) == {}  # released: the file no longer names anyone


def summary_value(out: str, label: str) -> int:
    import re

    match = re.search(rf"{re.escape(label)}\s*[│|]\s*(\d+)", out)
    assert match, out
    return int(match.group(1))


def test_killed_campaign_releases_the_dataset(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    fleet, _ = gated_fleet(tmp_path)  # the gate never opens: the campaign hangs until killed
    plan, out = tiny_plan(tmp_path), tmp_path / "ds"
    hung = start_campaign(out, plan, fleet)
    try:
        wait_for("campaign holds the dataset", lambda: holder(out).get("pid") == hung.pid, hung)
    finally:
        os.killpg(hung.pid, signal.SIGKILL)
        hung.wait()
        (tmp_path / "stop").touch()  # the device's waiting shell outlives the campaign
    assert holder(out)["pid"] == hung.pid  # it had no chance to clear the file
    code = main(["bench", "ops", "--plan", str(plan), "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert summary_value(captured.out, "measured") == 3
    assert len(LatencyDataset.open(out).records()) == 3


def test_lock_waits_up_to_its_timeout_is_reentrant_and_leaves_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "new" / "ds"
    heard: list[str] = []
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from latbench.bench.store import campaign_lock\n"
         f"with campaign_lock({str(out)!r}):\n"
         "    print('held', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(DatasetError, match=r"after waiting 0\.3 s; wait for it"):
            with campaign_lock(out, wait_s=0.3, on_wait=heard.append, poll_s=0.05):
                pass
        assert heard == [f"dataset {out} is being measured by another campaign (pid "
                         f"{child.pid} on {os.uname().nodename} since "
                         f"{holder(out)['since']}); waiting for it (up to 0.3 s)"]
    finally:
        child.communicate("\n", timeout=60)
    assert child.returncode == 0
    assert not (tmp_path / "new").exists()  # the child made the folders and removed them

    with campaign_lock(out):
        with campaign_lock(out):  # the same thread again: no deadlock
            dataset = LatencyDataset.create(out, {})
        # another thread of this process is a different campaign
        errors: list[Exception] = []

        def other() -> None:
            try:
                with campaign_lock(out):
                    pass
            except DatasetError as exc:
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(errors) == 1 and "being measured by another campaign" in str(errors[0])
    assert out.is_dir() and dataset.card  # a dataset it created stays
    with pytest.raises(ConfigError, match="must be >= 0 seconds"):
        config(lock_wait_s=-1)
    with pytest.raises(ConfigError, match="must be >= 0 seconds"):
        config(lock_wait_s=float("nan"))


def test_split_pool_advice_only_where_the_two_pools_fill_the_cores() -> None:
    """TFLite's built-in kernels at as many threads as cores: the campaign says the platform
    is noisy (the pools collide); one pool, one thread or spare cores: nothing."""
    builtin = dataclasses.replace(SETTINGS, threads=2, delegate="builtin")
    advice = split_pool_advice("litert", config(settings=builtin), {"cores": 2})
    assert "builtin kernels run two thread pools" in advice
    assert "at 2 threads on 2 cores" in advice and "XNNPACK" in advice
    assert split_pool_advice("tflite-benchmark-model", config(settings=builtin), {"cores": 2})
    # a thread sweep reaching the cores counts too
    swept = config(settings=dataclasses.replace(builtin, threads=1), thread_counts=(1, 4))
    assert "at 4 threads on 4 cores" in split_pool_advice("litert", swept, {"cores": 4})
    quiet = [("litert", config(settings=builtin), {"cores": 4}),  # spare cores
             ("litert", config(settings=dataclasses.replace(builtin, threads=1)), {"cores": 1}),
             ("litert", config(settings=dataclasses.replace(builtin, delegate="xnnpack")),
              {"cores": 2}),
             ("onnxruntime", config(settings=builtin), {"cores": 2}),
             ("litert", config(settings=builtin), {})]  # cores unknown
    assert [split_pool_advice(*case) for case in quiet] == [""] * len(quiet)
