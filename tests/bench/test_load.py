"""Other programs' load during a campaign (bench.load): read from /proc/stat and the agent's own
CPU time, a busy spell is detected and its batch measured again once the device is quiet, a
steady machine is left alone, and a batch that stays disturbed is not stored."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from latbench.bench import campaign, load
from latbench.bench.campaign import CampaignConfig, Subject, run_campaign
from latbench.bench.load import LoadControl, busy_cores, foreign_cores, parse_stat_pair
from latbench.bench.ops import OpSpec
from latbench.bench.runners import BatchResult, ModelFile, RunSettings
from latbench.bench.runners.onnxruntime import OnnxRuntimeRunner
from latbench.bench.store import LatencyDataset
from latbench.device_agents import Device, local_device
from latbench.device_agents.agent.latbench_agent import dynamic_facts
from latbench.errors import ConfigError

SETTINGS = RunSettings(warmup=1, runs=3, rounds=1, threads=1)
SPECS = [OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3), OpSpec("linear", cin=32, cout=10)]


def facts(t: float, busy: int, idle: int, own_s: float, n_cpus: int = 2) -> dict:
    """Agent facts at time t: the machine's busy and idle ticks so far (100 per second per
    core), and the agent's own CPU seconds."""
    return {"time_unix": t, "cpu_times": [busy, 0, 0, idle, 0, 0, 0, 0], "n_cpus": n_cpus,
            "own_cpu_s": own_s}


def spell(other_cores: float, seconds: float = 10.0, own_cores: float = 1.0
          ) -> tuple[dict, dict]:
    """Facts around a batch of `seconds` in which the agent kept `own_cores` busy and other
    programs `other_cores`, on 2 cores."""
    busy = round(100 * seconds * (own_cores + other_cores))
    return (facts(0.0, 0, 0, 0.0),
            facts(seconds, busy, round(200 * seconds) - busy, own_cores * seconds))


def test_foreign_cores_from_synthetic_traces() -> None:
    assert foreign_cores(*spell(0.0)) == pytest.approx(0.0, abs=1e-9)
    assert foreign_cores(*spell(1.0)) == pytest.approx(1.0)
    assert foreign_cores(*spell(0.3, own_cores=0.5)) == pytest.approx(0.3)
    before, after = spell(1.0)
    for missing in ("cpu_times", "n_cpus", "own_cpu_s", "time_unix"):  # an older agent
        assert math.isnan(foreign_cores(before, {k: v for k, v in after.items()
                                                 if k != missing}))
    assert math.isnan(foreign_cores(before, {**after, "cpu_times": None}))  # no /proc/stat


def test_the_agent_facts_see_another_program() -> None:
    """The real agent's facts: quiet, then with a real busy process beside this one."""
    before = dynamic_facts()
    time.sleep(1.0)
    quiet = foreign_cores(before, dynamic_facts())
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        before = dynamic_facts()
        time.sleep(1.5)
        loaded = foreign_cores(before, dynamic_facts())
    finally:
        busy.kill()
        busy.wait()
    # the busy loop is a core of someone else's work (less of one when the machine's other
    # programs already fill it: then it adds what is left)
    assert loaded > 0.6 and loaded > quiet


BOARD = Device("board", None, (), "/tmp")  # type: ignore[arg-type]  # readings: stand-ins

STAT = """cpu  {a} 0 0 {b} 0 0 0 0 0 0
cpu0 1 0 0 1 0 0 0 0 0 0
cpu1 1 0 0 1 0 0 0 0 0 0
"""


def test_parse_stat_pair() -> None:
    text = STAT.format(a=1000, b=1000) + "--\n" + STAT.format(a=1150, b=1250)
    assert parse_stat_pair(text) == pytest.approx(2 * 150 / 400)
    assert parse_stat_pair("cpu 1 2 3\n--\n") is None
    assert parse_stat_pair("nothing") is None


def test_busy_cores_through_the_local_transport(tmp_path: Path) -> None:
    cores = busy_cores(local_device(str(tmp_path / "work")))
    assert cores is not None and 0 <= cores <= 2.5


def readings(values: Sequence[float | None]) -> Callable[[Device], float | None]:
    it: Iterator[float | None] = iter(values)
    return lambda device: next(it)


def test_wait_quiet_waits_for_the_load_to_go() -> None:
    notes: list[str] = []
    control = LoadControl(BOARD, 0.5, 60.0, read=readings([1.0, 0.9, 0.1]),
                          sleep=lambda s: None)
    assert control.wait_quiet(notes.append)
    assert control.waits == 1 and control.waited_s == pytest.approx(2 * load.POLL_S, abs=0.5)
    assert "waiting for them" in notes[0] and "quiet again" in notes[-1]
    # a quiet device is not waited for
    steady = LoadControl(BOARD, 0.5, 60.0, read=readings([0.1]),
                         sleep=lambda s: None)
    assert steady.wait_quiet(notes.append) and steady.waits == 0 and steady.waited_s == 0


def test_wait_quiet_is_bounded() -> None:
    control = LoadControl(BOARD, 0.5, 5.0, read=lambda d: 1.0,
                          sleep=lambda s: None)
    assert not control.wait_quiet(lambda text: None)
    assert 5.0 <= control.waited_s < 5.0 + load.POLL_S + 1
    assert not control.wait_quiet(lambda text: None)  # nothing left for later batches
    blind = LoadControl(BOARD, 0.5, 5.0, read=lambda d: None)
    assert not blind.wait_quiet(lambda text: None) and blind.unreadable


def test_wait_quiet_gives_up_when_the_campaign_is_interrupted() -> None:
    polls: list[float] = []
    control = LoadControl(BOARD, 0.5, 300.0, read=lambda d: 1.0, sleep=polls.append)
    assert not control.wait_quiet(lambda text: None, stopped=lambda: len(polls) >= 2)
    assert len(polls) == 2 and control.waited_s < 300.0


class SpellRunner(OnnxRuntimeRunner):
    """The real runner, whose facts say other programs kept `loads[i]` cores busy during its
    i-th call (calibration calls included): a synthetic busy spell over real measurements."""

    def __init__(self, loads: Sequence[float]) -> None:
        super().__init__()
        self.loads, self.calls = list(loads), 0

    def measure(self, device: Device, models: Sequence[ModelFile],
                settings: RunSettings | None = None, timeout_s: float = 600.0,
                progress: Callable[[float], None] | None = None) -> BatchResult:
        result = super().measure(device, models, settings, timeout_s, progress)
        other = self.loads[min(self.calls, len(self.loads) - 1)]
        self.calls += 1
        before, after = spell(other)
        return dataclasses.replace(result, reference_ms=1.0,
                                   facts_before={**result.facts_before, **before},
                                   facts_after={**result.facts_after, **after})


def run_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loads: Sequence[float],
             device_loads: Sequence[float], **changes) -> tuple[SpellRunner, LatencyDataset,
                                                                 campaign.CampaignSummary]:
    runner = SpellRunner(loads)
    monkeypatch.setattr(campaign, "get_runner", lambda name: runner)
    polled = iter(device_loads)
    monkeypatch.setattr(load, "busy_cores", lambda device: next(polled))
    monkeypatch.setattr(load.time, "sleep", lambda s: None)
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    config = CampaignConfig(**{"settings": SETTINGS, "drift_pause_s": 0.0,
                               "calibration_runs": 1, "max_load": 0.5, **changes})
    summary = run_campaign([Subject.op(s) for s in SPECS], [local_device(str(tmp_path / "w"))],
                           ["onnxruntime"], dataset, config)
    return runner, dataset, summary


def test_a_busy_spell_is_measured_again_once_quiet(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # call 1 calibrates; the batch's first attempt (call 2) sees another program on a core,
    # the device is polled busy twice then quiet, the second attempt (call 3) is clean
    runner, dataset, summary = run_with(tmp_path, monkeypatch, [0.0, 1.0, 0.0],
                                        [1.0, 1.0, 0.05])
    assert runner.calls == 3 and summary.redone_batches == 1
    records = dataset.records()
    assert len(records) == 2 and summary.failed == 0
    [batch] = summary.drift
    assert batch.foreign_cores == pytest.approx(0.0, abs=1e-9) and not batch.disturbed
    control = summary.control["local/onnxruntime"]["load"]
    assert control["waits"] == 1 and control["waited_s"] > 0
    assert control["max_load_cores"] == pytest.approx(1.0)
    report = "\n".join(summary.drift_report())
    assert "other programs kept up to 1.00 cores busy" in report and "waited" in report


def test_a_steady_machine_is_not_measured_again(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    runner, dataset, summary = run_with(tmp_path, monkeypatch, [0.1], [])
    assert runner.calls == 2 and summary.redone_batches == 0
    assert len(dataset.records()) == 2
    control = summary.control["local/onnxruntime"]["load"]
    assert control["waits"] == 0 and control["refused_batches"] == 0


def test_a_batch_that_stays_disturbed_is_not_stored(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The device never quiets down within --max-load-wait: the batch is not measured again
    while it stays busy, and not stored; the failures say why, and a rerun on a quiet device
    measures those jobs."""
    runner, dataset, summary = run_with(tmp_path, monkeypatch, [0.0, 1.2], [1.2] * 100,
                                        max_load_wait_s=4.0)
    assert summary.measured == 0 and summary.failed == 2
    assert all("measured under load: other programs kept 1.20 cores busy" in error
               and "it resumes" in error for _, _, error in summary.failures)
    assert dataset.records().empty and len(dataset.failures()) == 2
    assert summary.drift[0].disturbed
    assert "WARNING: 1 batches still disturbed were not stored" in "\n".join(
        summary.drift_report())
    monkeypatch.setattr(campaign, "get_runner", lambda name: SpellRunner([0.0]))
    again = run_campaign([Subject.op(s) for s in SPECS], [local_device(str(tmp_path / "w"))],
                         ["onnxruntime"], LatencyDataset.open(tmp_path / "ds"),
                         CampaignConfig(settings=SETTINGS, calibration_runs=1))
    assert again.measured == 2 and len(LatencyDataset.open(tmp_path / "ds").records()) == 2


class SlowSpellRunner(SpellRunner):
    """A SpellRunner whose reference probe also reads from a script."""

    def __init__(self, loads: Sequence[float], references: Sequence[float]) -> None:
        super().__init__(loads)
        self.references = list(references)

    def measure(self, *args, **kwargs) -> BatchResult:
        result = super().measure(*args, **kwargs)
        return dataclasses.replace(result, reference_ms=self.references[self.calls - 1])


def test_an_undisturbed_attempt_is_stored_when_the_retry_stays_disturbed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the batch's first attempt is quiet but slow (1.3x), its retry runs under load and the
    # device never quiets down: the quiet attempt is stored (flagged), not the batch refused
    runner = SlowSpellRunner([0.0, 0.0, 1.2], [1.0, 1.3, 1.0])
    monkeypatch.setattr(campaign, "get_runner", lambda name: runner)
    polled = iter([1.2] * 100)
    monkeypatch.setattr(load, "busy_cores", lambda device: next(polled))
    monkeypatch.setattr(load.time, "sleep", lambda s: None)
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    config = CampaignConfig(settings=SETTINGS, drift_pause_s=0.0, calibration_runs=1,
                            max_load=0.5, max_load_wait_s=4.0)
    summary = run_campaign([Subject.op(s) for s in SPECS], [local_device(str(tmp_path / "w"))],
                           ["onnxruntime"], dataset, config)
    assert runner.calls == 3 and summary.measured == 2 and summary.failed == 0
    [batch] = summary.drift
    assert not batch.disturbed and batch.flagged and batch.ratio == pytest.approx(1.3)
    assert set(dataset.records()["reference_ms"]) == {1.3}


def test_max_load_none_does_not_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, dataset, summary = run_with(tmp_path, monkeypatch, [0.0, 1.5], [],
                                        max_load=None)
    assert summary.redone_batches == 0 and summary.measured == 2
    assert "load" not in summary.control.get("local/onnxruntime", {})


def test_the_default_limit_and_its_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATBENCH_MAX_LOAD", raising=False)
    assert CampaignConfig().max_load == load.DEFAULT_MAX_LOAD == 0.5
    monkeypatch.setenv("LATBENCH_MAX_LOAD", "1.5")
    assert CampaignConfig().max_load == 1.5
    monkeypatch.setenv("LATBENCH_MAX_LOAD", "off")
    assert math.isinf(CampaignConfig().max_load)
    monkeypatch.setenv("LATBENCH_MAX_LOAD", "lots")
    with pytest.raises(ConfigError, match="--max-load must be a number of cores or 'off', got "
                                          "'lots'"):
        CampaignConfig()


def test_off_still_reports_the_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, dataset, summary = run_with(tmp_path, monkeypatch, [0.0, 1.5], [],
                                        max_load=math.inf)
    assert summary.redone_batches == 0 and summary.measured == 2
    assert "kept up to 1.50 cores busy" in "\n".join(summary.drift_report())
    assert "--max-load off" in "\n".join(summary.drift_report())


@pytest.mark.parametrize(("changes", "message"), [
    ({"max_load": 0.0}, "--max-load must be a positive number of cores"),
    ({"max_load_wait_s": -1.0}, "--max-load-wait must be >= 0 seconds"),
])
def test_bad_limits_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CampaignConfig(**changes)


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-load", "lots"], "--max-load must be a number of cores or 'off', got 'lots'"),
    (["--max-load", "-1"], "--max-load must be a positive number of cores"),
    (["--max-load-wait", "-3"], "--max-load-wait must be >= 0 seconds"),
])
def test_bad_flags_are_one_line(tmp_path: Path, capsys, flags: list[str], message: str) -> None:
    from latbench.cli import main

    code = main(["bench", "ops", "--plan", "quick", "--out", str(tmp_path / "d"), *flags])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()
