"""Timed calls whose thread was descheduled (another process on its core): detected from the
thread's CPU time against the call's wall time, taken again, counted - on synthetic clock
traces, through the real agent, and with a real busy process sharing the timing core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latbench.bench.campaign import CampaignConfig, Subject, measure_into_dataset
from latbench.bench.export.graph import spec_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.ops import OpSpec
from latbench.bench.runners import AgentRunner, RunSettings, get_runner
from latbench.bench.store import LatencyDataset
from latbench.device_agents import AGENT_SCRIPT, local_device
from latbench.device_agents.agent import latbench_agent as agent
from latbench.errors import ConfigError

MS = 1_000_000  # ns


class Trace:
    """A model call and two clocks driven by a script of (wall ns, cpu ns) per call: what a
    thread sees when another process takes its core for part of a call."""

    def __init__(self, calls: list[tuple[int, int]]) -> None:
        self.calls = list(calls)
        self.wall = self.cpu = 0
        self.made = 0

    def run(self) -> None:
        wall, cpu = self.calls[self.made]
        self.made += 1
        self.wall += wall
        self.cpu += cpu

    def clock(self) -> int:
        return self.wall

    def cpu_clock(self) -> int:
        return self.cpu


def timed(calls: list[tuple[int, int]], count: int) -> tuple[list[float], dict, Trace]:
    trace = Trace(calls)
    tally = {"retaken": 0, "kept": 0}
    samples = agent.time_calls(trace.run, count, False, trace.clock, trace.cpu_clock, tally)
    return samples, tally, trace


def test_descheduled_threshold() -> None:
    assert not agent.descheduled(4 * MS, 4 * MS)
    assert not agent.descheduled(4 * MS, int(3.65 * MS))  # under 10% + 50 us lost: jitter
    assert agent.descheduled(4 * MS, int(3.5 * MS))
    assert agent.descheduled(8 * MS, 4 * MS)  # half the call spent off the CPU
    # a microsecond call never trips the floor on timer jitter alone
    assert not agent.descheduled(20_000, 0)


def test_steady_machine_retakes_nothing() -> None:
    calls = [(3 * MS + i * 1000, 3 * MS + i * 1000 - 2000) for i in range(10)]
    samples, tally, trace = timed(calls, 10)
    assert tally == {"retaken": 0, "kept": 0} and trace.made == 10
    assert samples == [w / 1e6 for w, _ in calls]


def test_busy_spell_is_detected_and_measured_again() -> None:
    quiet, busy = (3 * MS, 3 * MS), (7 * MS, 3 * MS)  # busy: 4 ms on another process
    calls = [quiet] * 3 + [busy] * 4 + [quiet] * 10
    samples, tally, trace = timed(calls, 8)
    assert tally == {"retaken": 4, "kept": 0}
    assert trace.made == 12 and samples == [3.0] * 8  # every sample a clean one


def test_spell_longer_than_the_retakes_is_kept_and_counted() -> None:
    busy = (7 * MS, 3 * MS)
    samples, tally, trace = timed([busy] * 20, 5)
    assert tally == {"retaken": 5, "kept": 5}  # `count` retakes, then kept
    assert trace.made == 10 and samples == [7.0] * 5


def test_counted_but_kept_when_retakes_are_off() -> None:
    busy, quiet = (7 * MS, 3 * MS), (3 * MS, 3 * MS)
    trace = Trace([busy, quiet, busy, quiet])
    tally = {"retaken": 0, "kept": 0}
    samples = agent.time_calls(trace.run, 4, False, trace.clock, trace.cpu_clock, tally,
                               retake=False)
    assert tally == {"retaken": 0, "kept": 2} and samples == [7.0, 3.0, 7.0, 3.0]


def test_retake_setting_reaches_the_key_and_the_request() -> None:
    on, off = RunSettings(), RunSettings(retake_descheduled=False)
    assert on.key("onnxruntime") == "threads=1,warmup=10,runs=20,rounds=5,opt=all"
    assert off.key("onnxruntime") == on.key("onnxruntime") + ",retake=off"
    device = local_device()
    runner = get_runner("onnxruntime")
    assert isinstance(runner, AgentRunner)
    assert runner.request(off, device, [("a", "/a")])["retake_descheduled"] is False
    with pytest.raises(ConfigError, match="retake_descheduled"):
        RunSettings(retake_descheduled="no")
    with pytest.raises(agent.AgentFailure, match="retake_descheduled"):
        agent.validate_request({"runtime": "onnxruntime", "threads": 1, "warmup": 0, "runs": 1,
                                "rounds": 1, "retake_descheduled": 1,
                                "models": [{"id": "a", "path": "/a"}]})


def test_check_only_where_the_calling_thread_does_the_work() -> None:
    assert agent.cpu_clock_for(1, False) is not None
    assert agent.cpu_clock_for(2, False) is None  # a thread pool computes elsewhere
    assert agent.cpu_clock_for(1, True) is None  # a device timing itself (GPU events)


def run_request(tmp_path: Path, threads: int, affinity: list[int] | None, spec: OpSpec,
                runs: int = 4, rounds: int = 3) -> dict:
    model = tmp_path / "m.onnx"
    model.write_bytes(to_onnx(spec_graph(spec)))
    req = {"runtime": "onnxruntime", "threads": threads, "warmup": 2, "runs": runs,
           "rounds": rounds, "graph_opt": "all", "delegate": "xnnpack", "affinity": affinity,
           "models": [{"id": "m", "path": str(model)}]}
    path = tmp_path / "request.json"
    path.write_text(json.dumps(req))
    proc = subprocess.run([sys.executable, str(AGENT_SCRIPT), "measure", str(path)],
                          capture_output=True, text=True, timeout=300)
    reply = json.loads(proc.stdout)
    assert proc.returncode == 0 and reply["status"] == "ok", reply
    return reply


SMALL = OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3)
# A kernel of a few milliseconds on one thread: longer than a scheduler time slice.
SLOW = OpSpec("conv", h=56, w=56, cin=128, cout=128, kernel=3)


@pytest.mark.parametrize("threads, checked", [(1, True), (2, False)])
def test_agent_reports_whether_it_checked(tmp_path: Path, threads: int, checked: bool) -> None:
    reply = run_request(tmp_path, threads, None, SMALL)
    assert reply["descheduling_checked"] is checked
    counts = reply["results"][0]["descheduled"]
    assert set(counts) == {"retaken", "kept"} and counts["kept"] <= counts["retaken"]
    if not checked:
        assert counts == {"retaken": 0, "kept": 0}


@pytest.fixture
def busy_core0():
    """A real busy process pinned to CPU 0, stopped afterwards."""
    if 0 not in os.sched_getaffinity(0):
        pytest.fail("the tests need CPU 0 to pin a busy process next to the timing thread")
    hog = subprocess.Popen([sys.executable, "-c", "import os; os.sched_setaffinity(0, {0})\n"
                                                  "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def test_busy_process_on_the_timing_core_is_seen_and_retaken(tmp_path: Path,
                                                             busy_core0) -> None:
    reply = run_request(tmp_path, 1, [0], SLOW, runs=5, rounds=4)
    counts = reply["results"][0]["descheduled"]
    # the busy process takes about every other time slice of CPU 0: most milliseconds-long
    # calls lose part of their wall time to it
    assert counts["retaken"] >= 5, counts


def test_campaign_records_and_reports_what_was_retaken(tmp_path: Path, busy_core0) -> None:
    device = local_device(str(tmp_path / "work"), cpu_affinity=(0,))
    settings = RunSettings(threads=1, warmup=2, runs=5, rounds=2)
    summary = measure_into_dataset([Subject.op(SLOW), Subject.op(SMALL)], device, "onnxruntime",
                                   tmp_path / "ds",
                                   CampaignConfig(settings=settings, calibration_runs=0))
    records = LatencyDataset.open(tmp_path / "ds").records()
    assert summary.measured == 2 and set(records["status"]) == {"ok"}
    assert records["descheduled_retaken"].notna().all()
    assert (records["memory_reference_ms"] > records["reference_ms"]).all()  # 16 MB streamed
    slow = records[records["key"] == SLOW.key()].iloc[0]
    assert slow["descheduled_retaken"] >= 1
    assert summary.retaken_runs == int(records["descheduled_retaken"].sum()) >= 1
    assert summary.checked_runs == int(records["n_runs"].sum()) + summary.retaken_runs
    assert "timed again" in summary.descheduling_report()
    card = json.loads((tmp_path / "ds" / "card.json").read_text())
    assert card["drift_last_run"]["descheduling"]["retaken_runs"] == summary.retaken_runs
