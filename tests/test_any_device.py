"""Every measuring command on any fleet device, through the command line, on a real sshd on
loopback ("board"): measure a plan into a dataset, fit a predictor on it, evaluate that predictor
on held-out networks measured on the board itself and measure its search winner there; measure
fusion pairs and repeat a dataset there.

The board's Python is a wrapper that notes who started it (the sshd session's SSH_CONNECTION
and HOME) and keeps a copy of every measure request before running the real interpreter, so the
tests see that the models travelled to the board's work dir and ran in its SSH sessions - not
on the local CPU under the board's name.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from latbench.bench.ops import OpSpec
from latbench.bench.store import LatencyDataset
from latbench.cli import main

# Few runs, and no batch measured again for a slow phase (the tests check where things ran).
FAST = ["--warmup", "1", "--runs", "3", "--rounds", "1", "--calibration-runs", "1",
        "--drift-tolerance", "10"]


@dataclass
class Board:
    host: object  # standins.sshd_host.SshdHost
    fleet: Path
    log: Path

    @property
    def fleet_args(self) -> list[str]:
        return ["--fleet", str(self.fleet), "--device", "board"]

    def calls(self) -> list[tuple[str, str, str]]:
        """(SSH_CONNECTION, HOME, agent command) of every run of the board's Python so far."""
        path = self.log / "calls.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [tuple(line.split("|")) for line in lines]  # type: ignore[misc]

    def requests(self) -> dict[str, dict]:
        """Every measure request the agent received on the board so far, by file name."""
        return {p.name: json.loads(p.read_text()) for p in sorted(self.log.glob("request.*"))}


@pytest.fixture
def board(sshd_hosts, client_key: Path, known_hosts: Callable[..., Path],
          tmp_path: Path) -> Board:
    host = sshd_hosts("board")
    log = tmp_path / "board-log"
    log.mkdir()
    python = tmp_path / "board-python"
    python.write_text(
        "#!/bin/sh\n"
        f"printf '%s|%s|%s\\n' \"$SSH_CONNECTION\" \"$HOME\" \"$2\" >> '{log}/calls.log'\n"
        f"if [ \"$2\" = measure ]; then cp \"$3\" \"$(mktemp '{log}/request.XXXXXX')\"; fi\n"
        f"exec '{sys.executable}' \"$@\"\n")
    python.chmod(0o755)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[devices.board]\ntransport = "ssh"\nhost = "127.0.0.1"\n'
                     f'port = {host.port}\nkey_file = "{client_key}"\n'
                     f'known_hosts = "{known_hosts(host)}"\nwork_dir = "{host.work_dir}"\n'
                     f'python = "{python}"\nruntimes = ["onnxruntime"]\n')
    return Board(host, fleet, log)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    """Run a command with --json; its parsed output (the command must succeed)."""
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def ran_on_the_board(board: Board, before: set[str]) -> list[str]:
    """The job ids (`j0`, `j1`, ... per batch; a batch measured again repeats them) of the
    measure requests since `before`, after checking that every model file of them lay in the
    board's work dir, that every run of the agent was an SSH session of the board's sshd with
    its home, and that the work dir was emptied again."""
    new = [req for name, req in board.requests().items() if name not in before]
    assert new, "no measure request reached the board"
    jobs = []
    for request in new:
        for model in request["models"]:
            assert model["path"].startswith(f"{board.host.work_dir}/"), model
            if model["id"].startswith("j"):
                jobs.append(model["id"])
    calls = board.calls()
    assert calls and {c[2] for c in calls} <= {"facts", "measure"}
    for connection, home, _ in calls:
        assert connection.split()[-2:] == ["127.0.0.1", str(board.host.port)], connection
        assert home == str(board.host.home)
    assert list(board.host.work_dir.iterdir()) == []  # models and agents removed again
    return jobs


def ids(n: int) -> set[str]:
    return {f"j{i}" for i in range(n)}


def test_fit_on_an_ssh_device_and_evaluate_the_predictor_there(
        board: Board, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan = tmp_path / "board.yaml"
    plan.write_text("name: board\nspaces: [nasbench-macro]\nprimitives: false\n"
                    "networks: ['nasbench-macro:4']\n")
    data, predictor, evaluation = tmp_path / "data", tmp_path / "pred", tmp_path / "eval"

    summary = run(capsys, "bench", "ops", "--plan", str(plan), "--out", str(data),
                  "--fixed-runs", *FAST, *board.fleet_args)
    assert (summary["jobs"], summary["measured"], summary["failed"]) == (23, 23, 0)
    records = LatencyDataset.open(data).records()
    assert set(records["device"]) == {"board"} and len(records) == 23
    assert (records["subject"] == "network").sum() == 4
    jobs = ran_on_the_board(board, set())
    assert set(jobs) == ids(19) and len(jobs) >= 23  # kernels and networks batch apart

    code = main(["predictor", "fit", "--data", str(data), "--out", str(predictor),
                 "--params", '{"n_estimators": 20, "n_jobs": 1}'])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    manifest = json.loads((predictor / "manifest.json").read_text())
    assert manifest["device"] == "board" and manifest["runtime"] == "onnxruntime"

    before = set(board.requests())
    report = run(capsys, "predictor", "eval", "--predictor", str(predictor), "--networks",
                 "nasbench-macro:3", "--out", str(evaluation), "--calibration-runs", "1",
                 "--drift-tolerance", "10", *board.fleet_args)  # run settings: the predictor's
    assert report["device"] == "board"
    assert report["metrics"]["nasbench-macro"]["n"] == 3
    measured = LatencyDataset.open(evaluation / "networks").records()
    assert set(measured["device"]) == {"board"} and len(measured) == 3
    assert set(measured["subject"]) == {"network"}
    assert not set(measured["key"]) & set(manifest["composition"].get("keys", []))  # held out
    # measured with the settings the predictor was trained with
    assert set(measured["settings"]) == set(records["settings"])
    assert set(ran_on_the_board(board, before)) == ids(3)

    # the search's winner (under a budget every architecture meets) is measured there too
    before = set(board.requests())
    outcomes = run(capsys, "search", "--predictor", str(predictor), "--budget-ms", "1000",
                   "--measure", "--out", str(tmp_path / "search"), "--calibration-runs", "1",
                   "--drift-tolerance", "10", *board.fleet_args)
    assert len(outcomes) == 1 and outcomes[0]["measured_ms"] > 0
    winners = LatencyDataset.open(tmp_path / "search" / "winners").records()
    assert list(winners["device"]) == ["board"]
    assert list(winners["key"]) == [f"nasbench-macro:{outcomes[0]['arch']}"]
    assert set(ran_on_the_board(board, before)) == ids(1)


def test_fusion_pairs_and_repeat_on_an_ssh_device(board: Board, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "tiny.yaml"
    specs = [OpSpec("linear", cin=64, cout=32), OpSpec("pool", h=8, w=8, cin=16, pool="gavg"),
             OpSpec("conv", h=8, w=8, cin=8, cout=16, kernel=3, act="relu")]
    plan.write_text("specs:\n" + "".join(f"  - '{s.key()}'\n" for s in specs))
    data = tmp_path / "data"
    summary = run(capsys, "bench", "ops", "--plan", str(plan), "--out", str(data),
                  "--fixed-runs", *FAST, *board.fleet_args)
    assert summary["measured"] == 3

    before = set(board.requests())
    # --fleet without --device: the dataset's own device is measured again
    report = run(capsys, "bench", "repeat", "--data", str(data), "--fleet", str(board.fleet),
                 "--sample", "2", "--out", str(tmp_path / "repeat"))
    assert (report["device"], report["runtime"], report["n_records"]) == ("board",
                                                                         "onnxruntime", 2)
    again = LatencyDataset.open(tmp_path / "repeat" / "remeasured").records()
    assert set(again["device"]) == {"board"} and len(again) == 2
    assert set(again["key"]) < set(LatencyDataset.open(data).records()["key"])
    assert set(ran_on_the_board(board, before)) == ids(2)

    before = set(board.requests())
    fusion = tmp_path / "fusion"
    rules = run(capsys, "bench", "fusion", "--producers", "linear", "--out", str(fusion),
                "--fixed-runs", *FAST, *board.fleet_args)
    # (which pairs count as evidence depends on the times: a cheap activation says nothing)
    assert rules["device"] == "board" and rules["runtime"] == "onnxruntime"
    assert {p["producer"] for p in rules["pairs"]} <= {"linear"}
    pairs = LatencyDataset.open(fusion)
    assert set(pairs.records()["device"]) == {"board"}
    assert pairs.card["fusion"]["device"] == "board"
    n_subjects = len(pairs.records())  # every A, B and A->B of the pairs, measured there
    assert n_subjects >= 2 * len(rules["pairs"])
    assert len(ran_on_the_board(board, before)) >= n_subjects
