"""ADBTransport: an Android device reached through the real `adb` command-line client.

Driving the `adb` CLI (rather than reimplementing the host protocol) keeps latbench on the same
server, keys and USB handling the user already trusts. Every call is an argv list
(`adb [-P PORT] -s SERIAL shell|push|pull ...`) run without a local shell. `adb shell` joins its
arguments with spaces and hands the result to the device's shell (like ssh), so the command is
quoted and wrapped by device_agents.remote, which also gives the pid to kill after a timeout:
killing the local adb client alone would leave the benchmark running on the phone.

Network devices (serial "host:port") are `adb connect`ed on first use, with retries and
exponential back-off; USB devices must already be listed by `adb devices`. The device must speak
shell protocol v2 (Android 7+): without it adb reports neither exit codes nor stderr.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from latbench.device_agents.inventory import InventoryFields, integer, positive, text
from latbench.device_agents.remote import (
    KILL_TIMEOUT_S,
    command_lines,
    kill_argv,
    split_pid,
    wrap_argv,
)
from latbench.device_agents.transport import (
    ClosesOnExit,
    CommandResult,
    LineCallback,
    check_argv,
    check_remote_path,
    check_timeout,
    communicate,
    decode,
    describe,
    register_transport,
    start_process,
)
from latbench.errors import ConfigError, TransportError

log = logging.getLogger(__name__)


def _is_network_serial(serial: str) -> bool:
    host, sep, port = serial.rpartition(":")
    return bool(sep and host and port.isdigit())


@register_transport("adb")
class ADBTransport(ClosesOnExit):
    """Run commands and copy files on an Android device through `adb`."""

    name = "adb"
    inventory = InventoryFields(
        fields={"serial": text, "adb": text, "adb_server_port": integer(1, 65535),
                "connect_timeout_s": positive, "connect_retries": integer(1)},
        required=("serial",), work_dir="/data/local/tmp/latbench")

    @classmethod
    def from_inventory(cls, values: Mapping[str, Any], env: Mapping[str, str]) -> Self:
        retry = {k: values[k] for k in ("connect_timeout_s", "connect_retries") if k in values}
        return cls(values["serial"], adb=values.get("adb", "adb"),
                   server_port=values.get("adb_server_port"), **retry)

    def __init__(self, serial: str, *, adb: str = "adb", server_port: int | None = None,
                 connect_timeout_s: float = 20.0, connect_retries: int = 3,
                 backoff_s: float = 0.5, io_timeout_s: float = 300.0,
                 env: Mapping[str, str] | None = None) -> None:
        if not serial or not isinstance(serial, str) or serial.startswith("-"):
            raise ConfigError(f"adb serial must be a non-empty string not starting with '-', "
                              f"got {serial!r}")
        if server_port is not None and (not isinstance(server_port, int)
                                        or not 0 < server_port < 65536):
            raise ConfigError(f"adb server port for {serial} must be 1..65535, "
                              f"got {server_port!r}")
        if not isinstance(connect_retries, int) or connect_retries < 1:
            raise ConfigError(f"adb connect_retries for {serial} must be >= 1")
        self.serial = serial
        self.adb = adb
        self.server_port = server_port
        self.connect_timeout_s = check_timeout(connect_timeout_s)
        self.connect_retries = connect_retries
        self.backoff_s = float(backoff_s)
        self.io_timeout_s = check_timeout(io_timeout_s)
        self._env = dict(env) if env is not None else None
        self._ready = False
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        port = f" (adb server :{self.server_port})" if self.server_port else ""
        return f"{self.serial}{port}"

    def __repr__(self) -> str:
        return f"ADBTransport({self.address})"

    # --- the adb client ----------------------------------------------------------------------
    def _base(self, with_serial: bool = True) -> list[str]:
        argv = [self.adb]
        if self.server_port:
            argv += ["-P", str(self.server_port)]
        if with_serial:
            argv += ["-s", self.serial]
        return argv

    def _adb(self, args: Sequence[str], timeout_s: float, what: str,
             with_serial: bool = True) -> subprocess.CompletedProcess[bytes]:
        argv = [*self._base(with_serial), *args]
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout_s, env=self._env, start_new_session=True)
        except FileNotFoundError:
            raise TransportError(f"adb client {self.adb!r} not found; install Android platform "
                                 "tools (Debian: apt-get install adb) or set the fleet's 'adb' "
                                 "field") from None
        except subprocess.TimeoutExpired:
            raise TransportError(f"{what} on {self.address} timed out after "
                                 f"{timeout_s:g} s") from None
        except OSError as exc:
            raise TransportError(f"cannot run {describe(argv)} for {self.address}: "
                                 f"{exc}") from exc

    def _state(self) -> str:
        result = self._adb(["get-state"], self.connect_timeout_s, "adb get-state")
        return decode(result.stdout).strip() if result.returncode == 0 else ""

    def connect(self) -> None:
        """Make sure the device is online (`adb connect` for network serials), with retries
        and exponential back-off, and that it speaks shell protocol v2."""
        with self._lock:
            if self._ready:
                return
            last = ""
            for attempt in range(self.connect_retries):
                if attempt:
                    delay = self.backoff_s * 2 ** (attempt - 1)
                    log.info("adb %s: attempt %d/%d in %.1f s (%s)", self.address, attempt + 1,
                             self.connect_retries, delay, last)
                    time.sleep(delay)
                try:
                    if self._state() == "device":
                        break
                    if _is_network_serial(self.serial):
                        result = self._adb(["connect", self.serial], self.connect_timeout_s,
                                           "adb connect", with_serial=False)
                        last = (decode(result.stdout) + decode(result.stderr)).strip()
                        if self._state() == "device":
                            break
                    else:
                        last = f"device {self.serial} is not listed by `adb devices`"
                except TransportError as exc:
                    last = str(exc)
            else:
                raise TransportError(f"cannot reach adb device {self.address} after "
                                     f"{self.connect_retries} attempts: {last}")
            features = self._adb(["features"], self.connect_timeout_s, "adb features")
            names = set(decode(features.stdout).replace(",", "\n").split())
            if features.returncode != 0 or "shell_v2" not in names:
                raise TransportError(f"adb device {self.address} does not speak shell protocol "
                                     "v2 (Android 7+ does); without it exit codes and stderr "
                                     "are lost")
            self._ready = True

    def close(self) -> None:
        """Nothing persistent to release; a later call checks the device again."""
        self._ready = False

    # --- commands ----------------------------------------------------------------------------
    def run(self, argv: Sequence[str], timeout_s: float,
            on_stderr: LineCallback | None = None) -> CommandResult:
        args = check_argv(argv)
        timeout = check_timeout(timeout_s)
        self.connect()
        command = [*self._base(), "shell", "-T", wrap_argv(args)]
        start = time.perf_counter()
        try:
            proc = start_process(command, self._env)
        except OSError as exc:
            raise TransportError(f"cannot start adb for {describe(args)} on {self.address}: "
                                 f"{exc}") from exc
        out, err, timed_out = communicate(proc, timeout, command_lines(on_stderr))
        if timed_out:
            pid, _ = split_pid(decode(err))
            self._kill_remote(pid, args)
            raise TransportError(
                f"command {describe(args)} on {self.address} timed out after {timeout:g} s; "
                + (f"remote process group {pid[1]} was killed" if pid is not None else
                   "its remote pid was unknown, so it may still run"))
        duration = time.perf_counter() - start
        pid, stderr = split_pid(decode(err))
        if pid is None:
            # The wrapper never ran: adb could not reach the device (offline, unplugged).
            self._ready = False
            raise TransportError(f"adb could not run {describe(args)} on {self.address} (exit "
                                 f"{proc.returncode}): {stderr.strip()[-500:]}")
        log.debug("adb %s: %s -> %d in %.3f s", self.address, describe(args), proc.returncode,
                  duration)
        return CommandResult(args, proc.returncode, decode(out), stderr, duration)

    def _kill_remote(self, pid: tuple[int, int] | None, args: tuple[str, ...]) -> None:
        if pid is None:
            log.warning("adb %s: %s timed out before reporting its pid; cannot kill it",
                        self.address, describe(args))
            return
        try:
            self.run(kill_argv(pid), KILL_TIMEOUT_S)
        except TransportError as exc:
            log.warning("adb %s: could not kill timed-out process group %s: %s", self.address,
                        pid, exc)

    # --- files -------------------------------------------------------------------------------
    def push(self, local: Path, remote: str) -> None:
        """`adb push` (adbd creates missing parent directories)."""
        local = Path(local)
        remote = check_remote_path(remote)
        if not local.is_file():
            raise TransportError(f"push to {self.address}: source {local} is not a file")
        self.connect()
        result = self._adb(["push", str(local), remote], self.io_timeout_s, f"push of {local}")
        if result.returncode != 0:
            self._ready = False
            raise TransportError(f"push to {self.address}: copying {local} to {remote} failed: "
                                 f"{decode(result.stderr).strip()[-500:]}")

    def pull(self, remote: str, local: Path) -> None:
        local = Path(local)
        remote = check_remote_path(remote)
        self.connect()
        local.parent.mkdir(parents=True, exist_ok=True)
        result = self._adb(["pull", remote, str(local)], self.io_timeout_s, f"pull of {remote}")
        if result.returncode != 0:
            raise TransportError(f"pull from {self.address}: copying {remote} to {local} "
                                 f"failed: {decode(result.stderr).strip()[-500:]}")
