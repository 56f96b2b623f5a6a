"""The MLPerf-style single stream: never fewer than N queries or T seconds per replicate,
replicates a pause apart that must agree on their p90, percentiles in the records, the
command lines that ask for it, and the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from latbench.bench.campaign import _estimate_timeout
from latbench.bench.runners import AgentRunner, RunSettings, get_runner
from latbench.bench.stats import REPLICATION_TOLERANCE, replication_spread, summarize
from latbench.bench.store import LatencyDataset
from latbench.cli import main
from latbench.device_agents.agent import latbench_agent as agent
from latbench.errors import AgentError, ConfigError

STREAM = {"queries": 10, "min_seconds": 0.1, "replicates": 3, "pause_s": 2.5}


class Clock:
    """A model whose every call takes `call_ns` on a fake clock (no descheduling check)."""

    def __init__(self, call_ns: int) -> None:
        self.now = 0
        self.call_ns = call_ns
        self.calls: dict[str, int] = {}

    def runner(self, name: str):
        def run() -> None:
            self.calls[name] = self.calls.get(name, 0) + 1
            self.now += self.call_ns
        return run

    def __call__(self) -> int:
        return self.now


def stream(monkeypatch: pytest.MonkeyPatch, spec: dict, call_ns: int
           ) -> tuple[dict, list[float], Clock]:
    pauses: list[float] = []
    monkeypatch.setattr(agent.time, "sleep", pauses.append)
    clock = Clock(call_ns)
    runners = {"model": clock.runner("model"), "probe": clock.runner("probe")}
    by_id = {m: {"status": "ok", "samples_ms": [], "descheduled": {"retaken": 0, "kept": 0}}
             for m in runners}
    agent.measure_single_stream(runners, by_id, {"probe"}, spec, agent.Timer(by_id, False, clock),
                                clock, lambda *a: None, agent.random.Random(0))
    return by_id, pauses, clock


def test_seconds_bind_a_fast_model(monkeypatch: pytest.MonkeyPatch) -> None:
    by_id, pauses, _ = stream(monkeypatch, STREAM, call_ns=1_000_000)  # 1 ms per query
    model = by_id["model"]
    assert len(model["samples_ms"]) == 3
    # 10 queries take 10 ms: the 0.1 s minimum decides, in chunks of 16 queries
    assert all(100 <= len(r) < 100 + agent.STREAM_CHUNK for r in model["samples_ms"])
    assert model["stop"]["reason"] == "single_stream"
    assert model["stop"]["n"] == sum(len(r) for r in model["samples_ms"])
    assert model["stop"]["seconds"] >= 3 * 0.1
    # a probe is timed to the query count only
    assert all(10 <= len(r) <= agent.STREAM_CHUNK for r in by_id["probe"]["samples_ms"])
    assert pauses == [2.5, 2.5]  # between replicates, not before the first


def test_queries_bind_a_slow_model(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {**STREAM, "queries": 40, "replicates": 1}
    by_id, pauses, clock = stream(monkeypatch, spec, call_ns=50_000_000)  # 50 ms per query
    rounds = by_id["model"]["samples_ms"]
    # 0.1 s passes after 2 queries; 40 queries are still owed
    assert len(rounds) == 1 and 40 <= len(rounds[0]) < 40 + agent.STREAM_CHUNK
    assert pauses == [] and clock.calls["model"] == len(rounds[0])


@pytest.mark.parametrize("change, match", [
    ({"queries": 0}, "queries"), ({"replicates": 1.5}, "replicates"),
    ({"min_seconds": 0}, "min_seconds"), ({"pause_s": -1}, "pause_s"),
    ({"pause_s": True}, "pause_s"),
])
def test_agent_refuses_a_bad_single_stream(change: dict, match: str) -> None:
    with pytest.raises(agent.AgentFailure, match=match):
        agent.validate_single_stream({**STREAM, **change})


def test_agent_refuses_a_rule_and_a_stream_together() -> None:
    with pytest.raises(agent.AgentFailure, match="not both"):
        agent.validate_request({
            "runtime": "onnxruntime", "threads": 1, "warmup": 0, "runs": 1, "rounds": 1,
            "stop": {"target_rel_width": 0.02, "confidence": 0.95, "min_runs": 5,
                     "max_runs": 10, "max_seconds": 1.0, "futility": None},
            "single_stream": STREAM, "models": [{"id": "a", "path": "/a"}]})


def test_replication_spread_passes_and_fails() -> None:
    agree = [[10.0] * 9 + [10.2], [10.0] * 9 + [10.4]]
    spread = replication_spread(agree)
    assert spread == pytest.approx(10.04 / 10.02 - 1, rel=1e-6)  # interpolated p90s
    assert spread <= REPLICATION_TOLERANCE
    disagree = [[10.0] * 10, [11.0] * 10, [10.2] * 10]
    assert replication_spread(disagree) == pytest.approx(0.10)
    assert replication_spread(disagree) > REPLICATION_TOLERANCE
    assert math.isnan(replication_spread([[1.0, 2.0]]))  # one replicate: nothing to compare
    stats = summarize([[float(x) for x in range(1, 101)]])
    assert stats.p99_ms == pytest.approx(99.01) and stats.p90_ms < stats.p99_ms


def test_settings_key_request_and_refusals() -> None:
    settings = RunSettings(queries=1024, min_query_s=60, replicates=3, replicate_pause_s=5)
    assert settings.single_stream and not settings.adaptive
    assert settings.key("onnxruntime") == ("threads=1,warmup=10,queries=1024,min_s=60,"
                                           "replicates=3,pause_s=5,opt=all")
    runner = get_runner("onnxruntime")
    assert isinstance(runner, AgentRunner)
    from latbench.device_agents import local_device

    request = runner.request(settings, local_device(), [("m", "/m"), ("__reference__", "/r")])
    assert request["single_stream"] == {"queries": 1024, "min_seconds": 60.0,
                                        "replicates": 3, "pause_s": 5.0}
    assert request["stop"] is None
    assert [m.get("probe", False) for m in request["models"]] == [False, True]
    # the batch timeout leaves room for every replicate's minimum seconds
    assert _estimate_timeout(2, settings) > 2 * 3 * 60
    for kwargs, match in (({"queries": 0}, "queries"),
                          ({"queries": 10, "target_ci": 0.02}, "exclude"),
                          ({"replicates": 0}, "replicates"),
                          ({"min_query_s": 0}, "min_query_s"),
                          ({"replicate_pause_s": -1}, "replicate_pause_s")):
        with pytest.raises(ConfigError, match=match):
            RunSettings(**kwargs)


def test_reply_with_too_few_replicates_is_refused() -> None:
    settings = RunSettings(queries=4, replicates=2)
    item = {"id": "m", "status": "ok", "samples_ms": [[1.0] * 4],
            "stop": {"reason": "single_stream", "n": 4}}
    with pytest.raises(AgentError, match="2 replicates of >= 4 queries"):
        AgentRunner._measurement("agent", item, settings)
    item["samples_ms"] = [[1.0] * 4, [1.0] * 3]
    with pytest.raises(AgentError, match="replicates"):
        AgentRunner._measurement("agent", item, settings)
    item["samples_ms"] = [[1.0] * 4, [1.1] * 5]
    m = AgentRunner._measurement("agent", item, settings)
    assert m.stop_reason == "single_stream" and len(m.samples_ms) == 2


def test_bench_networks_single_stream(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nets"
    code = main(["bench", "networks", "--networks", "nasbench-macro:2", "--out", str(out),
                 "--single-stream", "--queries", "30", "--min-query-seconds", "0.2",
                 "--replicates", "2", "--replicate-pause", "0.1", "--json"])
    assert code == 0
    reply = json.loads(capsys.readouterr().out)
    results = reply["single_stream"]
    assert len(results) == 2
    for r in results:
        assert r["queries"] >= 2 * 30
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert isinstance(r["replication_ok"], bool)
        assert r["replication_ok"] == (r["replication_spread"] <= REPLICATION_TOLERANCE)
    records = LatencyDataset.open(out).records()
    assert set(records["stop_reason"]) == {"single_stream"}
    assert records["settings"].str.contains("queries=30,min_s=0.2,replicates=2").all()
    assert (records["p99_ms"] >= records["p90_ms"]).all()
    # both protocols at once is one clear error
    code = main(["bench", "networks", "--networks", "nasbench-macro:1", "--out",
                 str(tmp_path / "x"), "--single-stream", "--fixed-runs"])
    assert code != 0
    assert "--single-stream and --fixed-runs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
