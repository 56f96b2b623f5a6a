"""How latbench reaches a device: the Transport protocol, its result type and its registry.

A transport runs argv lists (never one shell string: quoting is the transport's job, so a model
path with spaces cannot turn into a second command) and copies files both ways. Local, SSH and
ADB transports implement the same four methods, so runners and campaigns never know which one
they hold. While a command runs, its stderr can be handed line by line to a callback (the agent
reports progress that way) without changing what the result's stderr holds otherwise.
"""

from __future__ import annotations

import os
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self, runtime_checkable

from latbench.device_agents.inventory import InventoryFields
from latbench.errors import ConfigError, TransportError
from latbench.registry import Registry

# Called with each complete stderr line (no newline) while a command runs; a line for which it
# returns True is consumed: it is left out of the result's stderr.
LineCallback = Callable[[str], bool]

# name -> Transport class; filled by @register_transport.
TRANSPORTS: Registry[type] = Registry("transport")


@dataclass(frozen=True)
class CommandResult:
    """What one command on a device gave back; stdout/stderr decoded as UTF-8 (bad bytes
    replaced) because agents and tools speak text."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@runtime_checkable
class Transport(Protocol):
    """Reach one device: run commands, move files. Remote paths are POSIX strings."""

    name: str

    def run(self, argv: Sequence[str], timeout_s: float,
            on_stderr: LineCallback | None = None) -> CommandResult:
        """Run argv on the device; raise TransportError on timeout or if it cannot start.
        A non-zero exit code is not an error here: it is in the result. `on_stderr` gets
        each stderr line as it arrives (see LineCallback)."""
        ...

    def push(self, local: Path, remote: str) -> None:
        """Copy a local file to an absolute remote path, creating parent directories."""
        ...

    def pull(self, remote: str, local: Path) -> None:
        """Copy a remote file to a local path, creating parent directories."""
        ...

    def close(self) -> None:
        """Release connections; calling it twice is harmless."""
        ...


class ClosesOnExit:
    """Base of the built-in transports: `with transport:` closes it at the end."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def register_transport(name: str) -> Callable[[type], type]:
    """Class decorator adding a transport under `name`; a second class for a name is refused.

    The class describes itself: `inventory` (an InventoryFields: the fields a fleet table may
    hold for it) and the classmethod `from_inventory(values, env)`, which builds the transport
    from a table's checked values (its own fields only) and the environment (for secrets named
    by a field), raising ConfigError that names the field when a value cannot be used.
    """

    def decorator(cls: type) -> type:
        if name not in TRANSPORTS:  # a taken name is refused by `add`, naming its holder
            if not isinstance(getattr(cls, "inventory", None), InventoryFields) \
                    or not callable(getattr(cls, "from_inventory", None)):
                raise ConfigError(f"transport {name!r} ({cls.__qualname__}) must declare "
                                  "`inventory = InventoryFields(...)` and a classmethod "
                                  "`from_inventory(values, env)`")
        return TRANSPORTS.add(name, cls)

    return decorator


def get_transport_class(name: str) -> type:
    """The transport class registered under `name`; ConfigError lists the known ones."""
    return TRANSPORTS.lookup(name)


def check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """Validate an argv list (non-empty strings, no NUL) and return it as a tuple."""
    if isinstance(argv, (str, bytes)):
        raise TransportError(f"command must be an argv list, not one string: {argv!r}")
    args = tuple(argv)
    if not args:
        raise TransportError("command argv is empty")
    for arg in args:
        if not isinstance(arg, str):
            raise TransportError(f"command argument {arg!r} in {list(args)!r} is not a string")
        if "\0" in arg:
            raise TransportError(f"command argument {arg!r} contains a NUL byte")
    return args


def check_remote_path(path: str) -> str:
    """A remote path must be absolute and free of NUL and newlines (they break every tool)."""
    if not isinstance(path, str) or not path:
        raise TransportError(f"remote path {path!r} is empty or not a string")
    if "\0" in path or "\n" in path or "\r" in path:
        raise TransportError(f"remote path {path!r} contains a NUL or newline character")
    if not path.startswith("/"):
        raise TransportError(f"remote path {path!r} is not absolute")
    return path


def check_timeout(timeout_s: float) -> float:
    """Timeouts are mandatory and positive: a hung device must never hang a campaign."""
    try:
        value = float(timeout_s)
    except (TypeError, ValueError):
        raise TransportError(f"timeout {timeout_s!r} is not a number") from None
    if not value > 0:
        raise TransportError(f"timeout must be > 0 seconds, got {timeout_s!r}")
    return value


def describe(argv: Sequence[str], limit: int = 200) -> str:
    """Readable one-line form of a command for error messages (not for execution)."""
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- local processes: the local transport's commands and the adb client ----------------------
def decode(data: bytes | None) -> str:
    """Command output as text: UTF-8 with bad bytes replaced (agents and tools speak text)."""
    return (data or b"").decode("utf-8", errors="replace")


def start_process(argv: Sequence[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    """Start argv without a shell, in a session of its own so that a timeout can kill its
    whole process group (runtimes spawn thread pools and helpers). OSError if it cannot."""
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)


class LineFilter:
    """Collects a byte stream, handing each complete line to a callback as it arrives; keeps
    the bytes of every line the callback does not consume (all of them without a callback),
    so what is kept is byte for byte the stream minus the consumed lines."""

    def __init__(self, on_line: LineCallback | None) -> None:
        self.on_line = on_line
        self.kept = bytearray()
        self._partial = bytearray()

    def feed(self, data: bytes) -> None:
        if self.on_line is None:
            self.kept += data
            return
        self._partial += data
        while (end := self._partial.find(b"\n")) >= 0:
            line = bytes(self._partial[:end + 1])
            del self._partial[:end + 1]
            self._offer(line)

    def finish(self) -> bytes:
        """Everything kept, the last unterminated line offered to the callback too."""
        if self._partial:
            line = bytes(self._partial)
            self._partial.clear()
            self._offer(line)
        return bytes(self.kept)

    def _offer(self, line: bytes) -> None:
        if self.on_line is None or not self.on_line(decode(line).rstrip("\r\n")):
            self.kept += line


_KILL_DRAIN_S = 5.0  # how long a killed process's pipes are read before they are closed


def _drain(proc: subprocess.Popen[bytes], deadline: float, out: bytearray,
           err: LineFilter) -> bool:
    """Read stdout and stderr until both end (True) or `deadline` passes (False)."""
    with selectors.DefaultSelector() as selector:
        for pipe, sink in ((proc.stdout, out.extend), (proc.stderr, err.feed)):
            if pipe is not None and not pipe.closed:
                selector.register(pipe, selectors.EVENT_READ, sink)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in selector.select(remaining):
                data = os.read(key.fd, 65536)
                if data:
                    key.data(data)
                else:
                    selector.unregister(key.fileobj)
    return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group (it leads its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def communicate(proc: subprocess.Popen[bytes], timeout_s: float,
                on_stderr: LineCallback | None = None) -> tuple[bytes, bytes, bool]:
    """(stdout, stderr, timed out) of a process from `start_process`, with stderr lines handed
    to `on_stderr` as they arrive (consumed ones left out). After `timeout_s` (or on any
    interruption, which is re-raised) its process group is killed.

    A grandchild that escaped into its own session may still hold the pipes open after the
    kill, so reading them then is bounded; the pipes are closed rather than waited on forever.
    """
    out, err = bytearray(), LineFilter(on_stderr)
    deadline = time.monotonic() + timeout_s
    try:
        finished = _drain(proc, deadline, out, err)
        if finished:  # both pipes ended; the process may still run without them
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                finished = False
        if not finished:
            _kill_group(proc)
            _drain(proc, time.monotonic() + _KILL_DRAIN_S, out, err)
    except BaseException:
        _kill_group(proc)
        _close_pipes(proc)
        proc.wait()
        raise
    _close_pipes(proc)
    proc.wait()
    return bytes(out), err.finish(), not finished
