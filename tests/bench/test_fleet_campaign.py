"""Campaigns over device fleets with real parts: sshd hosts on loopback running the agent, the
stand-in phone through the real adb server running a stand-in benchmark_model, and the faults
the issue lists (a host killed mid-campaign, a run past its timeout, a device answering garbage);
every test ends with exactly one record per job after a rerun."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import pytest
from standins.procs import wait_gone

import latbench.bench.campaign as campaign
from latbench import cli
from latbench.bench.campaign import (
    CampaignConfig,
    Subject,
    measure_fleet_into_dataset,
    run_campaign,
)
from latbench.bench.ops import OpSpec
from latbench.bench.runners import BatchResult, ModelFile, OnnxRuntimeRunner, RunSettings
from latbench.bench.store import LatencyDataset, make_job_key
from latbench.device_agents import ADBTransport, Device, LocalTransport, SSHTransport

SETTINGS = RunSettings(threads=1, warmup=1, runs=3, rounds=1)
SPECS = [
    OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3),
    OpSpec("dwconv", h=8, w=8, cin=8, kernel=3),
    OpSpec("linear", cin=32, cout=10),
    OpSpec("add", h=8, w=8, cin=8),
    OpSpec("pool", h=8, w=8, cin=16, pool="gavg"),
    OpSpec("act", h=8, w=8, cin=8, act="hswish"),
]


def config(**changes) -> CampaignConfig:
    return CampaignConfig(**{"settings": SETTINGS, "batch_size": 2, "drift_pause_s": 0.01,
                             "calibration_runs": 0, **changes})


def subjects(specs=SPECS) -> list[Subject]:
    return [Subject.op(s) for s in specs]


def ssh_device(name: str, host, key: Path, known_hosts: Path, python: str = sys.executable,
               **kw) -> Device:
    transport = SSHTransport("127.0.0.1", port=host.port, key_file=key,
                             known_hosts=known_hosts, backoff_s=0.05, connect_retries=2)
    return Device(name=name, transport=transport, runtimes=("onnxruntime",),
                  work_dir=str(host.work_dir), python=python, **kw)


def assert_one_record_per_job(dataset: LatencyDataset, devices: list[str], runtime: str,
                              specs=SPECS, settings: RunSettings = SETTINGS) -> pd.DataFrame:
    frame = dataset.records()
    expected = {make_job_key(s.key(), d, runtime, settings.key(runtime))
                for s in specs for d in devices}
    assert sorted(frame["job_key"]) == sorted(expected)  # no loss, no duplicates
    assert dataset.failures().empty
    return frame


class KillAfterFirstBatch:
    """A progress sink that kills one host's sshd once its first batch is stored."""

    def __init__(self, lane: str, host) -> None:
        self.lane, self.host, self.killed = lane, host, False
        self.notes: list[tuple[str, str]] = []

    def start(self, lane: str, total: int) -> None:
        pass

    def advance(self, lane: str, done: float) -> None:
        if lane == self.lane and not self.killed:
            self.host.kill()
            self.killed = True

    def note(self, lane: str, text: str) -> None:
        self.notes.append((lane, text))


class PerBatchRunner(OnnxRuntimeRunner):
    """The real runner, reporting no progress while it measures: the campaign then advances
    the bar once a batch is stored."""

    def measure(self, device: Device, models: Sequence[ModelFile],
                settings: RunSettings | None = None, timeout_s: float = 600.0,
                progress: Callable[[float], None] | None = None) -> BatchResult:
        return super().measure(device, models, settings, timeout_s)


def test_killed_host_fails_alone_and_rerun_completes(sshd_hosts, client_key, known_hosts,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = {name: sshd_hosts(name) for name in ("a", "b", "c")}
    kh = known_hosts(*hosts.values())
    devices = [ssh_device(n, h, client_key, kh) for n, h in hosts.items()]
    out = tmp_path / "ds"
    # The bar advances once a batch is stored, which is when the sink kills the host: between
    # two batches.
    monkeypatch.setattr(campaign, "get_runner", lambda name: PerBatchRunner())
    sink = KillAfterFirstBatch("c/onnxruntime", hosts["c"])
    summary, checks = measure_fleet_into_dataset(subjects(), devices, None, out,
                                                 config(max_device_failures=1), progress=sink)
    assert sink.killed and all(c.reachable for c in checks)
    dataset = LatencyDataset.open(out)
    frame = dataset.records()
    assert (frame["device"] == "a").sum() == len(SPECS) == (frame["device"] == "b").sum()
    assert (frame["device"] == "c").sum() == 2  # its first batch, stored before the kill
    failed = dataset.failures()
    assert set(failed["device"]) == {"c"} and len(failed) == len(SPECS) - 2
    assert summary.failed == len(SPECS) - 2 and summary.measured == 2 * len(SPECS) + 2
    assert any("gave up" in text for lane, text in sink.notes if lane == "c/onnxruntime")
    card = dataset.card
    assert set(card["device_facts"]) == {"a", "b", "c"} and card["device_facts"]["a"]["cores"]

    # The host is unreachable at the next start: its jobs fail at once, the others are skipped.
    again, checks = measure_fleet_into_dataset(subjects(), devices, None, out, config())
    assert [c.device for c in checks if not c.reachable] == ["c"]
    assert again.skipped == 2 * len(SPECS) + 2 and again.measured == 0
    assert "unreachable" in dataset.failures()["error"].iloc[0]

    hosts["c"].start()  # back (same port, same host key): the rerun completes the campaign
    final, _ = measure_fleet_into_dataset(subjects(), devices, None, out, config())
    assert final.measured == len(SPECS) - 2 and final.failed == 0
    frame = assert_one_record_per_job(dataset, ["a", "b", "c"], "onnxruntime")
    assert frame["median_ms"].gt(0).all() and frame["raw_output"].eq("").all()
    assert frame["tool_flags"].eq("").all()
    for host in hosts.values():  # model files and agents were removed from every device
        assert list(host.work_dir.iterdir()) == []


def test_hung_run_and_garbage_device_fail_alone_then_rerun_completes(
        sshd_hosts, client_key, known_hosts, tmp_path: Path) -> None:
    hosts = {name: sshd_hosts(name) for name in ("good", "hang", "garbage")}
    kh = known_hosts(*hosts.values())
    hang = tmp_path / "bin" / "hang-python"
    garbage = tmp_path / "bin" / "garbage-python"
    hang.parent.mkdir()
    hang.write_text("#!/bin/sh\nexec sleep 515.151\n")  # an agent that never answers
    garbage.write_text("#!/bin/sh\necho 'rm -rf /; {not json'\n")  # nor does this one
    for script in (hang, garbage):
        script.chmod(0o755)
    broken = [ssh_device("good", hosts["good"], client_key, kh),
              ssh_device("hang", hosts["hang"], client_key, kh, python=str(hang)),
              ssh_device("garbage", hosts["garbage"], client_key, kh, python=str(garbage))]
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    summary = run_campaign(subjects(), broken, ["onnxruntime"], dataset,
                           config(timeout_s=2.0, max_device_failures=2))
    frame = dataset.records()
    assert set(frame["device"]) == {"good"} and len(frame) == len(SPECS)
    failed = dataset.failures().set_index("key")
    errors = {d: set(failed[failed["device"] == d]["error"]) for d in ("hang", "garbage")}
    assert len(failed) == 2 * len(SPECS) and summary.failed == 2 * len(SPECS)
    assert any("timed out after 2 s" in e for e in errors["hang"])
    assert any("did not print its JSON reply" in e for e in errors["garbage"])
    assert wait_gone("515.151") == []  # the hung agent was killed, not left running
    for host in hosts.values():
        assert list(host.work_dir.iterdir()) == []

    fixed = [ssh_device(name, host, client_key, kh) for name, host in hosts.items()]
    again = run_campaign(subjects(), fixed, ["onnxruntime"], dataset, config())
    assert again.skipped == len(SPECS) and again.measured == 2 * len(SPECS)
    assert_one_record_per_job(dataset, ["good", "hang", "garbage"], "onnxruntime")


def test_android_phone_campaign_with_benchmark_model(adb_server, standin_phone,
                                                     benchmark_model_binary,
                                                     tmp_path: Path) -> None:
    work = tmp_path / "phone" / "data" / "local" / "tmp" / "latbench"
    phone = Device(
        name="phone", runtimes=("tflite-benchmark-model",), work_dir=str(work), python=None,
        transport=ADBTransport(standin_phone.serial, adb=adb_server.adb,
                               server_port=adb_server.port, env=adb_server.env),
        tools={"benchmark_model": str(benchmark_model_binary)},
        tool_args={"benchmark_model": ("--enable_op_profiling=true",)}, cpu_affinity=(0,))
    settings = RunSettings(threads=1, warmup=2, runs=5, rounds=2)
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    specs = SPECS[:3]
    summary = run_campaign(subjects(specs), [phone], None, dataset,
                           config(settings=settings, calibration_runs=1))
    assert summary.measured == 3 and summary.failed == 0
    frame = assert_one_record_per_job(dataset, ["phone"], "tflite-benchmark-model", specs,
                                      settings)
    for _, rec in frame.iterrows():
        assert rec["n_runs"] == 10 and 0 < rec["min_ms"] <= rec["mean_ms"]
        assert rec["median_ms"] > 0 and math.isnan(rec["p90_ms"])  # the tool prints no p90
        assert rec["raw_output"].count("Inference timings in us") == 2  # both rounds kept
        assert "Run Order" in rec["raw_output"] and "stand-in" in rec["raw_output"]
        assert rec["tool_flags"].startswith("taskset 1 --num_threads=1 --warmup_runs=2")
        assert "--num_runs=5" in rec["tool_flags"] and \
            "--enable_op_profiling=true" in rec["tool_flags"]
        assert rec["runtime_version"].startswith("benchmark_model sha256:")
        assert rec["overhead_ms"] > 0 and rec["settings"].endswith("delegate=xnnpack")
    assert list(work.iterdir()) == []  # binary and models removed from the phone
    commands = [e for e in standin_phone.log if e.startswith("shell")]
    assert any("taskset 1" in c and "--graph=" in c for c in commands)

    # The GPU delegate fails on this phone: its jobs are failed records with the tool's words.
    gpu = RunSettings(threads=1, warmup=1, runs=2, rounds=1, delegate="gpu")
    summary = run_campaign(subjects(specs[:1]), [phone], None, dataset,
                           config(settings=gpu, max_device_failures=1))
    assert summary.failed == 1
    assert "GPU delegate" in dataset.failures()["error"].iloc[0]


def test_onnxruntime_perf_test_runner(perf_test_binary, tmp_path: Path) -> None:
    host = Device(name="host", transport=LocalTransport(), runtimes=("onnxruntime-perf-test",),
                  work_dir=str(tmp_path / "work"), python=None,
                  tools={"onnxruntime_perf_test": str(perf_test_binary)})
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    summary = run_campaign(subjects(SPECS[:2]), [host], ["onnxruntime-perf-test"], dataset,
                           config())
    assert summary.measured == 2
    frame = assert_one_record_per_job(dataset, ["host"], "onnxruntime-perf-test", SPECS[:2])
    assert frame["p90_ms"].gt(0).all() and frame["median_ms"].gt(0).all()
    assert frame["std_ms"].isna().all()  # the tool reports no spread
    assert frame["tool_flags"].str.contains("-r 3 -x 1 -e cpu -o 99").all()
    assert frame["raw_output"].str.contains("Average inference time cost").all()


def test_cli_bench_ops_and_networks_on_a_fleet(sshd_hosts, client_key, known_hosts, capsys,
                                               tmp_path: Path) -> None:
    a, b = sshd_hosts("a"), sshd_hosts("b")
    kh = known_hosts(a, b)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text("\n".join(
        f'[devices.{name}]\ntransport = "ssh"\nhost = "127.0.0.1"\nport = {h.port}\n'
        f'key_file = "{client_key}"\nknown_hosts = "{kh}"\nwork_dir = "{h.work_dir}"\n'
        f'python = "{sys.executable}"\nruntimes = ["onnxruntime"]\n'
        for name, h in (("a", a), ("b", b))))
    common = ["--warmup", "1", "--runs", "3", "--rounds", "1", "--batch-size", "4",
              "--calibration-runs", "0", "--fleet", str(fleet)]
    out = tmp_path / "ops"
    assert cli.main(["bench", "ops", "--plan", "quick", "--limit", "3", "--out", str(out),
                     *common]) == 0
    frame = LatencyDataset.open(out).records()
    assert sorted(frame["device"].value_counts().items()) == [("a", 3), ("b", 3)]
    assert cli.main(["bench", "ops", "--plan", "quick", "--limit", "3", "--out", str(out),
                     *common]) == 0  # a rerun measures nothing new
    assert len(LatencyDataset.open(out).records()) == 6
    nets = tmp_path / "nets"
    assert cli.main(["bench", "networks", "--networks", "nasbench-macro:2", "--out", str(nets),
                     "--only", "b", *common]) == 0
    frame = LatencyDataset.open(nets).records()
    assert list(frame["device"]) == ["b", "b"] and set(frame["subject"]) == {"network"}
    # --device picks a device of --fleet; one the inventory lacks is named in the error
    assert cli.main(["bench", "ops", "--device", "local", "--fleet", str(fleet), "--out",
                     str(out)]) == 1
    assert "has no device 'local'; it has a, b" in capsys.readouterr().err


def test_records_carry_temperature_and_clock_around_the_batch(tmp_path: Path) -> None:
    from latbench.bench.campaign import _record
    from latbench.bench.runners import BatchResult, Measurement

    device = Device(name="board", transport=LocalTransport(), runtimes=("onnxruntime",),
                    work_dir=str(tmp_path))
    before = {"temps_c": [{"zone": "z0", "name": "cpu", "celsius": 41.5},
                          {"zone": "z1", "name": "gpu", "celsius": 44.0}],
              "cur_freq_khz": 1_800_000}
    after = {"temps_c": [{"zone": "z0", "name": "cpu", "celsius": 52.0}], "cur_freq_khz": None}
    m = Measurement("j0", "ok", ((1.0, 1.2, 1.1),))
    result = BatchResult([m], "onnxruntime", "1.32.0", 0.01, 2.0, before, after, "board")
    rec = _record(Subject.op(SPECS[0]), device, "onnxruntime", SETTINGS.key("onnxruntime"),
                  result, m, "b1", 1)
    assert (rec.temp_before_c, rec.temp_after_c) == (44.0, 52.0)
    assert rec.freq_before_khz == 1_800_000 and math.isnan(rec.freq_after_khz)
    assert rec.raw_output == "" and rec.tool_flags == "" and rec.min_ms == 1.0


def test_progress_over_ssh_advances_as_models_finish(sshd_hosts, client_key, known_hosts,
                                                     tmp_path: Path) -> None:
    """The agent's progress lines travel back over SSH while a batch runs: one batch of four
    kernels moves its lane's bar several times, and by exactly four jobs in all."""
    host = sshd_hosts("board")
    device = ssh_device("board", host, client_key, known_hosts(host))
    advances: list[tuple[str, float]] = []

    class Sink:
        def start(self, lane: str, total: int) -> None:
            assert (lane, total) == ("board/onnxruntime", 4)

        def advance(self, lane: str, done: float) -> None:
            advances.append((lane, done))

        def note(self, lane: str, text: str) -> None:
            pass

    dataset = LatencyDataset.create(tmp_path / "ds", {})
    summary = run_campaign(subjects(SPECS[:4]), [device], ["onnxruntime"], dataset,
                           config(batch_size=4), Sink())
    assert summary.measured == 4 and len(dataset.records()) == 4
    assert len(advances) > 1 and all(d > 0 for _, d in advances)
    assert sum(d for _, d in advances) == pytest.approx(4)
