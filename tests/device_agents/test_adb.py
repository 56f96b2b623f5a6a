"""ADBTransport through the real adb client and server, talking to StandInAdbDevice (a fake
phone speaking the ADB device protocol that runs commands on this host)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from standins.adb_standin_device import StandInAdbDevice
from standins.procs import HANDSHAKE, TRICKY, handshake, wait_gone

from latbench.device_agents import ADBTransport, Transport, get_transport_class
from latbench.errors import TransportError


def phone_transport(adb_server, phone: StandInAdbDevice, **kw) -> ADBTransport:
    kw.setdefault("backoff_s", 0.05)
    return ADBTransport(phone.serial, adb=adb_server.adb, server_port=adb_server.port,
                        env=adb_server.env, **kw)


def test_shell_passes_argv_verbatim_with_exit_code_and_stderr(adb_server, standin_phone) -> None:
    t = phone_transport(adb_server, standin_phone)
    assert isinstance(t, Transport) and get_transport_class("adb") is ADBTransport
    echo = t.run(["python3", "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *TRICKY],
                 timeout_s=30)
    assert echo.ok and json.loads(echo.stdout) == TRICKY
    failed = t.run(["sh", "-c", "echo out; echo err >&2; exit 7"], timeout_s=30)
    assert (failed.returncode, failed.stdout, failed.stderr) == (7, "out\n", "err\n")
    # The real adb client chose shell protocol v2 (separate stderr, exit codes).
    assert any(entry.startswith("shell sh -c") for entry in standin_phone.log)


def test_push_and_pull_through_sync_protocol(adb_server, standin_phone, tmp_path: Path) -> None:
    t = phone_transport(adb_server, standin_phone)
    data = os.urandom(300_000)  # several 64 KiB sync DATA chunks
    (tmp_path / "blob").write_bytes(data)
    remote = str(tmp_path / "phone" / "data" / "local" / "tmp" / "blob")
    t.push(tmp_path / "blob", remote)
    assert Path(remote).read_bytes() == data
    t.pull(remote, tmp_path / "back" / "blob")
    assert (tmp_path / "back" / "blob").read_bytes() == data
    assert any(entry.startswith("sync SEND") for entry in standin_phone.log)
    with pytest.raises(TransportError, match="pull from"):
        t.pull(str(tmp_path / "phone" / "missing"), tmp_path / "missing")


def test_timeout_kills_the_process_group_on_the_phone(adb_server, standin_phone) -> None:
    t = phone_transport(adb_server, standin_phone)
    marker = "414.2135"
    started = time.monotonic()
    with pytest.raises(TransportError, match="timed out after 1.5 s; remote process group"):
        t.run(["sh", "-c", f"sleep {marker} & sleep {marker}"], timeout_s=1.5)
    assert time.monotonic() - started >= 1.5
    assert wait_gone(marker) == []
    assert t.run(["echo", "again"], 30).stdout == "again\n"


def test_unreachable_device_fails_after_retries(adb_server) -> None:
    phone = StandInAdbDevice().start()
    serial = phone.serial
    phone.stop()  # nothing listens there any more
    t = ADBTransport(serial, adb=adb_server.adb, server_port=adb_server.port,
                     env=adb_server.env, connect_retries=2, backoff_s=0.05,
                     connect_timeout_s=10)
    with pytest.raises(TransportError, match=f"cannot reach adb device {serial}.*2 attempts"):
        t.run(["true"], 30)


def test_device_without_shell_v2_is_refused(adb_server) -> None:
    old = StandInAdbDevice(features=("cmd",)).start()
    try:
        adb_server.connect(old)
        with pytest.raises(TransportError, match="shell protocol v2"):
            phone_transport(adb_server, old).run(["true"], 30)
    finally:
        old.stop()


def test_stderr_lines_stream_to_a_callback_while_the_command_runs(adb_server, standin_phone,
                                                                  tmp_path: Path) -> None:
    t = phone_transport(adb_server, standin_phone)
    seen, on_line = handshake(tmp_path / "flag")
    result = t.run(["sh", "-c", HANDSHAKE, "sh", str(tmp_path / "flag")], 60, on_stderr=on_line)
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "keep-1\nkeep-2\n")
    assert seen == ["keep-1", "latbench-test ping", "keep-2"]  # not the wrapper's pid line
