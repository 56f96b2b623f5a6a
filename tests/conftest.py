"""Shared fixtures: real OpenSSH servers on loopback, the real adb server with a stand-in
Android device, and stand-in native benchmark tools (see tests/standins).

These tests need `sshd` and `adb` (scripts/install-test-deps.sh installs them as root); when
they are missing the tests FAIL with that hint rather than being skipped, so CI cannot pass
without exercising the device paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Campaigns in the suite only report other programs' load (bench.load) instead of waiting for
# the machine to quiet down: a developer's busy machine must not stall or fail tests whose
# point is elsewhere. tests/bench/test_load.py sets the limit it tests explicitly.
os.environ.setdefault("LATBENCH_MAX_LOAD", "off")

# tests/standins importable as `standins`.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from standins.adb_standin_device import StandInAdbDevice  # noqa: E402
from standins.sshd_host import INSTALL_HINT, SshdHost, find_sshd, free_port, keygen  # noqa: E402

STANDINS = Path(__file__).resolve().parent / "standins"
ADB_HINT = ("the Android adb client is not installed; the device tests need it: run "
            "`bash scripts/install-test-deps.sh` as root (apt-get install adb)")


@pytest.fixture
def client_key(tmp_path: Path) -> Path:
    """A fresh ed25519 client key pair for this test (private key path; .pub next to it)."""
    if shutil.which("ssh-keygen") is None or find_sshd() is None:
        pytest.fail(INSTALL_HINT)
    return keygen(tmp_path / "client" / "id_ed25519")


@pytest.fixture
def sshd_hosts(tmp_path: Path, client_key: Path) -> Iterator[Callable[..., SshdHost]]:
    """Factory: start a real sshd on 127.0.0.1 (own port, own host key) accepting client_key;
    every started host is killed at teardown."""
    started: list[SshdHost] = []

    def make(name: str = "host") -> SshdHost:
        host = SshdHost(tmp_path / f"sshd-{name}", client_key, name).start()
        started.append(host)
        return host

    yield make
    for host in started:
        host.kill()


@pytest.fixture
def known_hosts(tmp_path: Path) -> Callable[..., Path]:
    """known_hosts(*hosts) -> a known_hosts file listing those hosts' keys."""

    def write(*hosts: SshdHost) -> Path:
        path = tmp_path / f"known_hosts-{len(list(tmp_path.glob('known_hosts-*')))}"
        path.write_text("".join(h.known_hosts_line() for h in hosts))
        return path

    return write


class AdbServer:
    """The real adb server on a private port, with HOME in a temp dir (its keys live there)."""

    def __init__(self, root: Path) -> None:
        adb = shutil.which("adb")
        if adb is None:
            pytest.fail(ADB_HINT)
        self.adb = adb
        self.port = free_port()
        home = root / "adb-home"
        home.mkdir(parents=True)
        self.env = {**os.environ, "HOME": str(home), "ANDROID_ADB_SERVER_PORT": str(self.port)}

    def cmd(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.adb, "-P", str(self.port), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self) -> AdbServer:
        result = self.cmd("start-server")
        if result.returncode != 0:
            pytest.fail(f"adb start-server failed: {result.stderr}")
        return self

    def stop(self) -> None:
        self.cmd("kill-server")

    def connect(self, device: StandInAdbDevice) -> None:
        result = self.cmd("connect", device.serial)
        if "connected to" not in result.stdout:
            pytest.fail(f"adb connect {device.serial} failed: {result.stdout} {result.stderr}")


@pytest.fixture
def adb_server(tmp_path: Path) -> Iterator[AdbServer]:
    server = AdbServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def standin_phone(adb_server: AdbServer) -> Iterator[StandInAdbDevice]:
    """A stand-in Android device the real adb server is connected to."""
    phone = StandInAdbDevice().start()
    adb_server.connect(phone)
    yield phone
    phone.stop()


def install_standin_tool(name: str, dest: Path) -> Path:
    """An executable copy of a stand-in tool script whose shebang is this interpreter."""
    source = (STANDINS / f"{name}_standin.py").read_text()
    body = source.split("\n", 1)[1] if source.startswith("#!") else source
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(f"#!{sys.executable}\n{body}")
    dest.chmod(0o755)
    return dest


@pytest.fixture
def benchmark_model_binary(tmp_path: Path) -> Path:
    return install_standin_tool("benchmark_model", tmp_path / "tools" / "benchmark_model")


@pytest.fixture
def perf_test_binary(tmp_path: Path) -> Path:
    return install_standin_tool("ort_perf_test", tmp_path / "tools" / "onnxruntime_perf_test")
