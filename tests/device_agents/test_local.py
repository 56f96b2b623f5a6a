"""LocalTransport and the local Device: argv passthrough, timeouts that kill, copies, paths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latbench.device_agents import (
    TRANSPORTS,
    CommandResult,
    Device,
    LocalTransport,
    Transport,
    fetch_facts,
    get_transport_class,
    local_device,
    register_transport,
)
from latbench.errors import AgentError, ConfigError, TransportError


@pytest.fixture
def transport() -> LocalTransport:
    return LocalTransport()


def _gone(pid: int) -> bool:
    """True once pid no longer runs (reaped, or a zombie waiting for a reaper)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in state


def test_run_captures_output_and_exit_code(transport: LocalTransport) -> None:
    result = transport.run([sys.executable, "-c",
                            "import sys; print('out'); print('err', file=sys.stderr); "
                            "sys.exit(3)"], timeout_s=30)
    assert isinstance(result, CommandResult)
    assert result.returncode == 3 and not result.ok
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.argv[0] == sys.executable
    assert result.duration_s > 0


def test_argv_passes_through_unmangled(transport: LocalTransport) -> None:
    tricky = ["a b", "it's", '"quoted"', "$HOME", "`id`", "; rm -rf /", "*", "", "ünï"]
    result = transport.run([sys.executable, "-c",
                            "import json, sys; print(json.dumps(sys.argv[1:]))", *tricky],
                           timeout_s=30)
    assert result.ok, result.stderr
    assert json.loads(result.stdout) == tricky


def test_timeout_raises_and_kills(transport: LocalTransport) -> None:
    start = time.monotonic()
    with pytest.raises(TransportError, match=r"sleep 5.*timed out after 0\.5 s"):
        transport.run(["sleep", "5"], timeout_s=0.5)
    assert time.monotonic() - start < 4.0


def test_timeout_kills_the_whole_process_group(transport: LocalTransport,
                                               tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen(['sleep', '30'])\n"
              f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
              "time.sleep(30)\n")
    with pytest.raises(TransportError, match="timed out"):
        transport.run([sys.executable, "-c", script], timeout_s=3.0)
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5.0
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild), f"grandchild {grandchild} survived the timeout"


def test_missing_program_is_a_transport_error(transport: LocalTransport) -> None:
    with pytest.raises(TransportError, match="no-such-program-xyz"):
        transport.run(["no-such-program-xyz", "--flag"], timeout_s=5)


@pytest.mark.parametrize("argv", ["echo hi", [], ["echo", 3], ["echo", "a\0b"]])
def test_bad_argv_is_refused(transport: LocalTransport, argv: object) -> None:
    with pytest.raises(TransportError):
        transport.run(argv, timeout_s=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1, "soon"])
def test_bad_timeout_is_refused(transport: LocalTransport, timeout: object) -> None:
    with pytest.raises(TransportError, match="timeout"):
        transport.run(["true"], timeout_s=timeout)  # type: ignore[arg-type]


def test_push_and_pull_copy_and_create_parents(transport: LocalTransport,
                                               tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = bytes(range(256)) * 10
    src.write_bytes(data)
    remote = str(tmp_path / "remote" / "deep dir" / "model.bin")
    transport.push(src, remote)
    assert Path(remote).read_bytes() == data
    back = tmp_path / "back" / "again" / "model.bin"
    transport.pull(remote, back)
    assert back.read_bytes() == data


def test_push_missing_source_fails(transport: LocalTransport, tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="nothing-here"):
        transport.push(tmp_path / "nothing-here", str(tmp_path / "x"))


@pytest.mark.parametrize("remote", ["relative/path", "", "/tmp/a\nb", "/tmp/a\0b"])
def test_bad_remote_paths_are_refused(transport: LocalTransport, tmp_path: Path,
                                      remote: str) -> None:
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(TransportError, match="remote path"):
        transport.push(src, remote)
    with pytest.raises(TransportError, match="remote path"):
        transport.pull(remote, tmp_path / "out")


def test_registry_has_local_and_refuses_duplicates() -> None:
    assert TRANSPORTS["local"] is LocalTransport
    assert get_transport_class("local") is LocalTransport
    assert isinstance(LocalTransport(), Transport)
    with pytest.raises(ConfigError, match="already registered"):
        register_transport("local")(type("Other", (), {}))
    with pytest.raises(ConfigError, match="unknown transport 'carrier-pigeon'.*local"):
        get_transport_class("carrier-pigeon")
    assert TRANSPORTS["local"] is LocalTransport


def test_local_device(tmp_path: Path) -> None:
    device = local_device(str(tmp_path / "work"))
    assert device.name == "local"
    assert device.python == sys.executable
    assert isinstance(device.transport, LocalTransport)
    assert set(device.runtimes) == {"onnxruntime", "litert"}  # both are in the venv
    assert Path(device.work_dir).is_dir()
    first, second = local_device(), local_device()
    try:
        assert Path(first.work_dir).is_dir() and Path(first.work_dir).is_absolute()
        assert first.work_dir != second.work_dir
    finally:
        Path(first.work_dir).rmdir()
        Path(second.work_dir).rmdir()


@pytest.mark.parametrize("kwargs, match", [
    ({"work_dir": "relative"}, "work_dir"),
    ({"threads": 0}, "threads"),
    ({"cpu_affinity": ()}, "cpu_affinity"),
    ({"cpu_affinity": (-1,)}, "cpu_affinity"),
    ({"name": ""}, "name"),
])
def test_device_validation(kwargs: dict, match: str) -> None:
    base = {"name": "d", "transport": LocalTransport(), "runtimes": ("onnxruntime",),
            "work_dir": "/tmp/x"}
    with pytest.raises(ConfigError, match=match):
        Device(**{**base, **kwargs})


def test_fetch_facts_on_the_local_device(tmp_path: Path) -> None:
    device = local_device(str(tmp_path / "work"))
    facts = fetch_facts(device, timeout_s=120)
    assert facts["status"] == "ok" and facts["python"] == ".".join(
        map(str, sys.version_info[:3]))
    assert facts["work_dir"] == device.work_dir
    assert facts["runtimes"]["onnxruntime"]
    assert list(Path(device.work_dir).iterdir()) == []  # the agent copy was removed


def test_fetch_facts_garbage_is_an_agent_error(tmp_path: Path) -> None:
    device = Device("echo-box", LocalTransport(), (), str(tmp_path / "w"), python="echo")
    with pytest.raises(AgentError, match="echo-box"):
        fetch_facts(device, timeout_s=30)


def test_local_work_dir_is_removed_at_exit(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    code = ("from latbench.device_agents import local_device\n"
            "device = local_device()\n"
            "print(device.work_dir)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    work_dir = Path(proc.stdout.strip())
    assert work_dir.parent == tmp_path and work_dir.name.startswith("latbench-local-")
    assert not work_dir.exists()
    # A given work dir belongs to the caller and stays.
    mine = tmp_path / "mine"
    code = f"from latbench.device_agents import local_device\nlocal_device({str(mine)!r})\n"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert mine.is_dir()


CLI = "import sys; from latbench.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_cli_run_leaves_no_local_work_dir(tmp_path: Path, sig: int) -> None:
    """A `bench ops` on the local device, interrupted while a batch is on the device: the
    command ends as interrupted, and its temporary work dir is gone."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    argv = ["bench", "ops", "--plan", "quick", "--limit", "4", "--batch-size", "1",
            "--fixed-runs", "--runs", "3000", "--rounds", "1", "--calibration-runs", "1",
            "--out", str(tmp_path / "ds")]
    # SIGINT as a terminal's Ctrl-C delivers it: a test run started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then never raises on it.
    proc = subprocess.Popen([sys.executable, "-c", CLI, *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not list(tmp.glob("latbench-local-*/batch-*")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no batch reached the local device"
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert list(tmp.glob("latbench-local-*")) == []
