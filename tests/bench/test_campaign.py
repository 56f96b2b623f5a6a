"""Campaigns on the local CPU with ONNX Runtime: one record per job, resuming, failed exports,
redoing batches measured in a slow phase, and giving up on a dead device without stopping the
others."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

import latbench.bench.campaign as campaign
from latbench.bench.campaign import (
    CampaignConfig,
    Subject,
    network_kernels,
    plan_batches,
    run_campaign,
)
from latbench.bench.ops import OpSpec
from latbench.bench.runners import BatchResult, ModelFile, OnnxRuntimeRunner, RunSettings
from latbench.bench.store import LatencyDataset, make_job_key
from latbench.device_agents import CommandResult, Device, local_device
from latbench.errors import ConfigError, TransportError

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
                settings: RunSettings | None = None, timeout_s: float = 600.0) -> BatchResult:
        result = super().measure(device, models, settings, timeout_s)
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
