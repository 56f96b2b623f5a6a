"""Measurement fidelity through runners and campaigns: the stopping rule's settings and records,
drift detection on a synthetic slowdown (a runner whose reference probe slows down), drift
correction, kept samples, and the refusals."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_campaign import Lanes

import latbench.bench.campaign as campaign
from latbench.bench.campaign import (
    BatchDrift,
    CampaignConfig,
    Subject,
    detect_slowdown,
    run_campaign,
)
from latbench.bench.export.graph import spec_graph
from latbench.bench.ops import OpSpec
from latbench.bench.runners import (
    MEMORY_ID,
    REFERENCE_ID,
    BatchResult,
    ModelFile,
    OnnxRuntimeRunner,
    RunSettings,
    get_runner,
)
from latbench.bench.stats import STOP_REASONS
from latbench.device_agents import CommandResult, Device, LocalTransport, local_device
from latbench.errors import AgentError, ConfigError

ADAPTIVE = RunSettings(threads=1, warmup=2, runs=5, target_ci=0.05, min_runs=10, max_runs=60,
                       max_seconds=1.0)
FIXED = RunSettings(threads=1, warmup=1, runs=3, rounds=2)
SPECS = [OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3),
         OpSpec("dwconv", h=8, w=8, cin=8, kernel=3),
         OpSpec("act", h=8, w=8, cin=8, act="hswish"),
         OpSpec("pool", h=8, w=8, cin=16, pool="gavg")]


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return local_device(str(tmp_path / "work"))


# --- settings --------------------------------------------------------------------------------
def test_fixed_key_unchanged_and_adaptive_key_holds_the_rule() -> None:
    assert RunSettings().key("onnxruntime") == "threads=1,warmup=10,runs=20,rounds=5,opt=all"
    assert not RunSettings().adaptive and RunSettings().stop_rule() is None
    # the rule's parameters do not touch the fixed protocol's key (old datasets resume)
    assert RunSettings(min_runs=7, max_seconds=1.0).key("onnxruntime") == \
        RunSettings().key("onnxruntime")
    key = RunSettings(runs=10, target_ci=0.02).key("litert")
    assert key == ("threads=1,warmup=10,runs=10,target_ci=0.02,confidence=0.95,min_runs=20,"
                   "max_runs=1000,max_s=5,futility=4,delegate=xnnpack")
    assert RunSettings(target_ci=0.02, futility=None).key("torch-cuda").endswith("futility=off")
    keys = {RunSettings(**{"runs": 10, "target_ci": 0.02, **change}).key("onnxruntime")
            for change in ({}, {"target_ci": 0.01}, {"confidence": 0.99}, {"min_runs": 30},
                           {"max_runs": 500}, {"max_seconds": 2.0}, {"futility": None})}
    assert len(keys) == 7  # every parameter of the rule is part of the key
    assert ADAPTIVE.stop_rule() == {"target_rel_width": 0.05, "confidence": 0.95,
                                    "min_runs": 10, "max_runs": 60, "max_seconds": 1.0,
                                    "futility": 4.0}
    # JSON round trip through a card
    assert RunSettings(**dataclasses.asdict(ADAPTIVE)) == ADAPTIVE


@pytest.mark.parametrize("kwargs, match", [
    ({"target_ci": 0.0}, "target_ci"), ({"target_ci": 1.5}, "target_ci"),
    ({"target_ci": "2%"}, "target_ci"), ({"confidence": 1.0}, "confidence"),
    ({"min_runs": 0}, "min_runs"), ({"min_runs": 50, "max_runs": 10}, "below min_runs"),
    ({"max_seconds": 0}, "max_seconds"), ({"futility": 0.5}, "futility"),
])
def test_rule_settings_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RunSettings(**kwargs)


# --- runner ----------------------------------------------------------------------------------
def test_runner_with_the_stopping_rule(device: Device) -> None:
    runner = get_runner("onnxruntime")
    models = [ModelFile("conv", runner.export(spec_graph(SPECS[0]))),
              ModelFile("act", runner.export(spec_graph(SPECS[2])))]
    result = runner.measure(device, models, ADAPTIVE, timeout_s=120)
    for m in result.measurements:
        assert m.ok and m.stop_reason in STOP_REASONS
        n = sum(len(r) for r in m.samples_ms)
        assert 10 <= n <= 60 and all(1 <= len(r) <= 5 for r in m.samples_ms)
        q = m.quality(ADAPTIVE.confidence)
        assert q is not None and (q.ci_rel_width <= 0.05) == (m.stop_reason == "converged")
    assert result.reference_ms > 0


class AdaptiveCanned(LocalTransport):
    """Answers the agent call with a reply built from the request (mkdir/rm run for real)."""

    def __init__(self, make) -> None:
        super().__init__()
        self.make = make
        self.request: dict | None = None

    def run(self, argv: Sequence[str], timeout_s: float, on_stderr=None) -> CommandResult:
        import json

        if "measure" not in argv:
            return super().run(argv, timeout_s)
        self.request = json.loads(Path(argv[-1]).read_text())
        return CommandResult(tuple(argv), 0, json.dumps(self.make(self.request)), "", 0.01)


def adaptive_reply(request: dict, n: int = 10, reason: str = "converged") -> dict:
    def entry(model: dict) -> dict:
        tracked = model.get("track", False)
        rounds = [[1.0] * 5] * (n // 5)
        return {"id": model["id"], "status": "ok", "error": "", "samples_ms": rounds,
                "stop": {"reason": "tracked" if tracked else reason, "n": n,
                         "ci_rel_width": 0.0, "seconds": 0.01}}
    return {"status": "ok", "runtime": request["runtime"], "runtime_version": "9",
            "facts_before": {}, "facts_after": {}, "results": [entry(m) for m in
                                                               request["models"]]}


def test_request_carries_the_rule_and_tracks_the_reference(tmp_path: Path) -> None:
    transport = AdaptiveCanned(adaptive_reply)
    dev = Device("canned", transport, ("onnxruntime",), str(tmp_path / "w"))
    result = get_runner("onnxruntime").measure(dev, [ModelFile("a", b"1")], ADAPTIVE, 10)
    req = transport.request
    assert req is not None and req["stop"] == ADAPTIVE.stop_rule()
    assert [m.get("track", False) for m in req["models"]] == [False, False, True, True]
    assert [m["id"] for m in req["models"]][-2:] == [REFERENCE_ID, MEMORY_ID]
    assert result.measurements[0].stop_reason == "converged"


def test_adaptive_reference_is_the_median_round(tmp_path: Path) -> None:
    def reply(request: dict) -> dict:
        out = adaptive_reply(request)
        for entry in out["results"]:
            if entry["id"] == REFERENCE_ID:  # 5 rounds with medians 5, 1, 4, 2, 3 ms
                entry["samples_ms"] = [[v] * 5 for v in (5.0, 1.0, 4.0, 2.0, 3.0)]
        return out

    dev = Device("canned", AdaptiveCanned(reply), ("onnxruntime",), str(tmp_path / "w"))
    result = get_runner("onnxruntime").measure(dev, [ModelFile("a", b"1")], ADAPTIVE, 10)
    # not the best round (1.0): more rounds would make that lower by itself
    assert result.reference_ms == 3.0


@pytest.mark.parametrize("make, match", [
    (lambda r: adaptive_reply(r, n=5), "outside the rule's 10..60"),
    (lambda r: adaptive_reply(r, n=65), "outside the rule's 10..60"),
    (lambda r: adaptive_reply(r, reason="bored"), "stopping-rule entry"),
    (lambda r: {**adaptive_reply(r), "results": [
        {**e, "samples_ms": [[1.0] * 6, [1.0] * 4]} for e in adaptive_reply(r)["results"]]},
     "1..5 runs"),
])
def test_bad_adaptive_replies(tmp_path: Path, make, match: str) -> None:
    dev = Device("canned", AdaptiveCanned(make), ("onnxruntime",), str(tmp_path / "w"))
    with pytest.raises(AgentError, match=match):
        get_runner("onnxruntime").measure(dev, [ModelFile("a", b"1")], ADAPTIVE, 10)


# --- campaigns -------------------------------------------------------------------------------
class SlowingRunner(OnnxRuntimeRunner):
    """The real runner, but its reference probe reads from a script: a device slowing down
    (throttling) over the campaign. Fixed values, so real jitter cannot change the outcome."""

    def __init__(self, references: list[float]) -> None:
        super().__init__()
        self.references = list(references)

    def measure(self, device: Device, models: Sequence[ModelFile],
                settings: RunSettings | None = None, timeout_s: float = 600.0,
                progress: Callable[[float], None] | None = None) -> BatchResult:
        result = super().measure(device, models, settings, timeout_s, progress)
        return dataclasses.replace(result, reference_ms=self.references.pop(0))


def campaign_config(**changes) -> CampaignConfig:
    """One spec per batch, in the order given (the scripted probe follows that order)."""
    return CampaignConfig(**{"settings": FIXED, "batch_size": 1, "calibration_runs": 1,
                             "drift_retries": 0, "drift_pause_s": 0.0, "shuffle_seed": None,
                             **changes})


def test_drift_is_detected_flagged_and_reported(tmp_path: Path, device: Device,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # calibration 1.0 ms, then four one-spec batches at 1.0, 1.05, 1.3 and 1.6 ms
    runner = SlowingRunner([1.0, 1.0, 1.05, 1.3, 1.6])
    monkeypatch.setattr(campaign, "get_runner", lambda name: runner)
    dataset = campaign.LatencyDataset.create(tmp_path / "ds", {})
    summary = run_campaign([Subject.op(s) for s in SPECS], [device], ["onnxruntime"], dataset,
                           campaign_config())
    records = dataset.records().set_index("key").loc[[s.key() for s in SPECS]]
    assert list(records["drift_ratio"]) == pytest.approx([1.0, 1.05, 1.3, 1.6])
    assert list(records["drift_flag"]) == [False, False, True, True]
    assert records["min_corrected_ms"].isna().all()  # not asked for
    assert summary.drifted_batches == 2 and len(summary.drift) == 4
    line, load_line = summary.drift_report()  # the drift, then other programs' load
    assert "other programs" in load_line
    assert "1.00-1.60x its best" in line and "2 batches flagged" in line
    assert "slowdown over the campaign" in line and "1.60x vs first third 1.00x" in line
    card_view = summary.drift_json()
    assert card_view["flagged_batches"] == 2 and len(card_view["batches"]) == 4


def test_a_settled_slow_level_is_not_measured_again(tmp_path: Path, device: Device,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # calibration 1.0 ms; batches 1 and 2 read 1.2 on all four attempts (three retries each):
    # a level, not a phase. Batch 3 at it is stored at once; batch 4 first reads 1.5 (a phase
    # on top of the level: measured again) and then 1.22 (the level); batch 5 is at full speed.
    runner = SlowingRunner([1.0, 1.2, 1.2, 1.2, 1.2, 1.21, 1.2, 1.2, 1.2, 1.2, 1.5, 1.22, 1.0])
    monkeypatch.setattr(campaign, "get_runner", lambda name: runner)
    dataset = campaign.LatencyDataset.create(tmp_path / "ds", {})
    sink = Lanes()
    specs = [*SPECS, OpSpec("act", h=8, w=8, cin=8, act="relu")]
    summary = run_campaign([Subject.op(s) for s in specs], [device], ["onnxruntime"], dataset,
                           campaign_config(drift_retries=3), progress=sink)
    assert runner.references == []  # every scripted reading used: 13 calls, not 1 + 5 x 4
    assert summary.redone_batches == 3 + 3 + 1
    assert [d.settled for d in summary.drift] == [False, False, True, True, False]
    assert [d.flagged for d in summary.drift] == [True, True, True, True, False]
    records = dataset.records().set_index("key").loc[[s.key() for s in specs]]
    assert list(records["reference_ms"]) == pytest.approx([1.2, 1.2, 1.2, 1.22, 1.0])
    notes = [text for _, text in sink.notes]
    settled = [n for n in notes if "settled at 1.20x" in n]
    assert len(settled) == 1 and any(n.startswith("back to speed") for n in notes)
    assert "2 of them stored at the device's settled level" in summary.drift_report()[0]


def test_a_device_that_settles_lower_still_is_followed_to_its_new_level() -> None:
    level = campaign.SpeedLevel(tolerance=0.1)
    assert level.observe([1.2, 1.2]) == "" and "settled at 1.21x" in level.observe([1.21, 1.21])
    assert level.holds(1.23) and not level.holds(1.3)
    # slower than the level on every retry of two batches: the new level, not a phase
    assert level.observe([1.4, 1.4, 1.41]) == ""
    assert "settled at 1.41x" in level.observe([1.41, 1.41, 1.41])
    assert level.holds(1.45) and level.observe([1.45]) == ""
    assert level.observe([1.04]).startswith("back to speed") and not level.holds(1.2)


def test_a_slow_phase_that_moves_is_measured_again_every_time(
        tmp_path: Path, device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    # retries that read 1.2 then 1.4: the speed is moving, not settled - no batch skips them
    readings = [1.0] + [1.2, 1.4] * 3
    runner = SlowingRunner(readings)
    monkeypatch.setattr(campaign, "get_runner", lambda name: runner)
    dataset = campaign.LatencyDataset.create(tmp_path / "ds", {})
    summary = run_campaign([Subject.op(s) for s in SPECS[:3]], [device], ["onnxruntime"],
                           dataset, campaign_config(drift_retries=1))
    assert runner.references == [] and summary.redone_batches == 3
    assert not any(d.settled for d in summary.drift)


def test_retries_that_never_reach_speed_store_the_fastest_attempt(
        tmp_path: Path, device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    # calibration 1.0 ms; the batch reads 1.3, 1.15 and 1.4 (speed moving in bursts): all
    # three over the tolerance, and the one stored is the 1.15 attempt, not the last
    runner = SlowingRunner([1.0, 1.3, 1.15, 1.4])
    monkeypatch.setattr(campaign, "get_runner", lambda name: runner)
    dataset = campaign.LatencyDataset.create(tmp_path / "ds", {})
    sink = Lanes()
    summary = run_campaign([Subject.op(SPECS[0])], [device], ["onnxruntime"], dataset,
                           campaign_config(drift_retries=2), progress=sink)
    assert runner.references == [] and summary.redone_batches == 2
    record = dataset.records().set_index("key").loc[SPECS[0].key()]
    assert record["reference_ms"] == pytest.approx(1.15)
    assert record["drift_ratio"] == pytest.approx(1.15) and bool(record["drift_flag"])
    assert [d.ratio for d in summary.drift] == pytest.approx([1.15])
    assert any("stored the fastest of the batch's 3 attempts" in text for _, text in sink.notes)
    assert summary.drift[0].attempts == pytest.approx((1.3, 1.15, 1.4))
    card_view = json.loads(json.dumps(summary.drift_json()))  # as a dataset card keeps it
    assert card_view["batches"][0]["attempts"] == pytest.approx([1.3, 1.15, 1.4])


def test_an_interrupt_stops_the_retries_of_the_batch_being_measured(
        tmp_path: Path, device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C (or SIGTERM, which the CLI turns into it) while the first batch is timed in a
    # slow phase: it is not measured again (five retries allowed) and no later batch starts;
    # the batch keeps what was measured, flagged, so a rerun resumes after it
    events: list[threading.Event] = []

    class Recorded(threading.Event):
        def __init__(self) -> None:
            super().__init__()
            events.append(self)

    class InterruptedRunner(SlowingRunner):
        def measure(self, *args, **kwargs) -> BatchResult:
            result = super().measure(*args, **kwargs)
            if not self.references:  # the batch's first attempt: the user presses Ctrl-C
                os.kill(os.getpid(), signal.SIGINT)
                assert events[0].wait(30), "the campaign never saw the interrupt"
            return result

    runner = InterruptedRunner([1.0, 1.5])  # calibration, then the first attempt only
    # Python's own Ctrl-C handler, also where the suite was started with SIGINT ignored (a
    # shell's background job, `nohup ... &`), in which case Python never installs it
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(campaign, "get_runner", lambda name: runner)
    monkeypatch.setattr(campaign, "threading",
                        SimpleNamespace(**{**vars(threading), "Event": Recorded}))
    dataset = campaign.LatencyDataset.create(tmp_path / "ds", {})
    try:
        with pytest.raises(KeyboardInterrupt):
            run_campaign([Subject.op(s) for s in SPECS[:2]], [device], ["onnxruntime"],
                         dataset, campaign_config(drift_retries=5, drift_pause_s=60.0))
    finally:
        signal.signal(signal.SIGINT, previous)
    records = dataset.records()
    assert list(records["key"]) == [SPECS[0].key()]  # the second batch never started
    assert bool(records["drift_flag"].iloc[0]) and records["drift_ratio"].iloc[0] == 1.5


def test_drift_correction_and_kept_samples(tmp_path: Path, device: Device,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    runner = SlowingRunner([2.0, 2.0, 3.0])
    monkeypatch.setattr(campaign, "get_runner", lambda name: runner)
    dataset = campaign.LatencyDataset.create(tmp_path / "ds", {})
    run_campaign([Subject.op(s) for s in SPECS[:2]], [device], ["onnxruntime"], dataset,
                 campaign_config(drift_correct=True, keep_samples=True))
    rec = dataset.records().set_index("key")
    fast, slow = rec.loc[SPECS[0].key()], rec.loc[SPECS[1].key()]
    assert fast["drift_ratio"] == 1.0 and slow["drift_ratio"] == 1.5
    for stat in ("min", "median", "mean", "p90"):
        assert fast[f"{stat}_corrected_ms"] == pytest.approx(fast[f"{stat}_ms"])
        assert slow[f"{stat}_corrected_ms"] == pytest.approx(slow[f"{stat}_ms"] / 1.5)
    samples = slow["samples_ms"]
    assert len(samples) == FIXED.runs * FIXED.rounds == slow["n_runs"]
    assert min(samples) == slow["min_ms"]
    assert slow["stop_reason"] == "fixed" and slow["ci_rel_width"] > 0
    assert isinstance(bool(slow["bimodal"]), bool) and slow["tail_ratio"] >= 1.0


def test_adaptive_campaign_records(tmp_path: Path, device: Device) -> None:
    dataset = campaign.LatencyDataset.create(tmp_path / "ds", {})
    summary = run_campaign([Subject.op(s) for s in SPECS], [device], ["onnxruntime"], dataset,
                           campaign_config(settings=ADAPTIVE, batch_size=4))
    assert summary.measured == 4
    rec = dataset.records()
    assert set(rec["settings"]) == {ADAPTIVE.key("onnxruntime")}
    assert rec["stop_reason"].isin(STOP_REASONS).all()
    assert rec["n_runs"].between(10, 60).all()
    converged = rec["stop_reason"] == "converged"
    assert (rec.loc[converged, "ci_rel_width"] <= 0.05).all()
    assert (rec.loc[~converged, "ci_rel_width"] > 0.05).all()
    assert rec["samples_ms"].isna().all()  # not kept unless asked


def test_slowdown_needs_a_trend() -> None:
    def batches(ratios: list[float]) -> list[BatchDrift]:
        return [BatchDrift("d", "r", str(i), r, 1.0, r, r > 1.1) for i, r in enumerate(ratios)]

    assert detect_slowdown(batches([1.0, 1.3, 1.0, 1.02, 1.0, 1.01]), 0.1) == ""  # one spike
    assert detect_slowdown(batches([1.0, 1.2]), 0.1) == ""  # too few batches
    text = detect_slowdown(batches([1.0, 1.01, 1.04, 1.08, 1.1, 1.12]), 0.1)
    assert "last third of the batches 1.11x vs first third 1.00x" in text
    hot = [dataclasses.replace(b, temp_before_c=45.0, temp_after_c=70.0)
           for b in batches([1.0, 1.0, 1.2])]
    assert "temperature 45 -> 70 C" in detect_slowdown(hot, 0.1)


def test_bursts_are_told_from_phases_and_levels() -> None:
    def batch(attempts: tuple[float, ...], settled: bool = False) -> BatchDrift:
        stored = min(attempts)
        return BatchDrift("vm", "ort", "b", stored, 1.0, stored, stored > 1.1, settled=settled,
                          attempts=attempts)

    bursty = [batch((1.16, 1.3, 1.26, 1.14)), batch((1.17, 1.38, 1.2)), batch((1.29, 1.19)),
              batch((1.0,)), batch((1.3, 1.05))]
    text = campaign.detect_bursts(bursty, 0.1)
    assert "3 batches never came back to speed" in text and "up to 1.18x" in text
    assert "speed moving in bursts" in campaign.CampaignSummary(drift=bursty).drift_report()[0]
    # the same level on every attempt (a settled VM), or too few stuck batches: not bursts
    level = [batch((1.2, 1.21, 1.2, 1.2)) for _ in range(4)]
    assert campaign.detect_bursts(level, 0.1) == ""
    assert campaign.detect_bursts([*bursty[:2], *level], 0.1) == ""
    assert campaign.detect_bursts([batch((1.3, 1.2), settled=True)] * 4, 0.1) == ""


def test_steal_time_of_the_batches_is_reported() -> None:
    before = {"cpu_times": [100, 0, 10, 500, 0, 0, 0, 5]}
    after = {"cpu_times": [180, 0, 20, 560, 0, 0, 0, 35]}  # 180 ticks spent, 30 stolen
    assert campaign.steal_share(before, after) == pytest.approx(30 / 180)
    assert math.isnan(campaign.steal_share({}, after))  # not a Linux device, or an old agent
    batches = [BatchDrift("vm", "ort", str(i), 1.0, 1.0, 1.0, False, steal_share=share)
               for i, share in enumerate([0.01, 0.02, 0.2])]
    summary = campaign.CampaignSummary(drift=batches)
    assert "hypervisor steal 2.0% of CPU time (median batch), up to 20.0%" in \
        summary.drift_report()[0]
    # the agent reports the counters on Linux
    from latbench.device_agents.agent import latbench_agent as agent

    times = agent.dynamic_facts()["cpu_times"]
    assert isinstance(times, list) and len(times) == 8 and sum(times) > 0


def test_native_tools_cannot_apply_the_rule(tmp_path: Path) -> None:
    binary = tmp_path / "benchmark_model"
    binary.write_text("#!/bin/sh\n")
    phone = Device("phone", LocalTransport(), ("tflite-benchmark-model",), str(tmp_path / "w"),
                   python=None, tools={"benchmark_model": str(binary)})
    dataset = campaign.LatencyDataset.create(tmp_path / "ds", {})
    with pytest.raises(ConfigError, match="tflite-benchmark-model.*cannot apply the stopping "
                                          "rule.*--fixed-runs"):
        run_campaign([Subject.op(SPECS[0])], [phone], None, dataset,
                     campaign_config(settings=ADAPTIVE))
    assert len(dataset) == 0
