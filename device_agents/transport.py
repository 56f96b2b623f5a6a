"""How latbench reaches a device: the Transport protocol, its result type and its registry.

A transport runs argv lists (never one shell string: quoting is the transport's job, so a model
path with spaces cannot turn into a second command) and copies files both ways. Local, SSH and
ADB transports implement the same four methods, so runners and campaigns never know which one
they hold.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self, runtime_checkable

from latbench.errors import TransportError
from latbench.registry import Registry

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

    def run(self, argv: Sequence[str], timeout_s: float) -> CommandResult:
        """Run argv on the device; raise TransportError on timeout or if it cannot start.
        A non-zero exit code is not an error here: it is in the result."""
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
    """Class decorator adding a transport under `name`; a second class for a name is refused."""
    return TRANSPORTS.register(name)


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


def kill_process_group(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """SIGKILL the child's process group (it leads its own session), reap the child and return
    what it printed.

    A grandchild that escaped into its own session may still hold the pipes open, so draining
    them is bounded; the pipes are closed rather than waited on forever (and b"" returned).
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        return proc.communicate(timeout=5.0)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
        return b"", b""


def communicate(proc: subprocess.Popen[bytes], timeout_s: float
                ) -> tuple[bytes, bytes, bool]:
    """(stdout, stderr, timed out) of a process from `start_process`. After `timeout_s` (or
    on any interruption, which is re-raised) its process group is killed."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        out, err = kill_process_group(proc)
        return out, err, True
    except BaseException:
        kill_process_group(proc)
        raise
    return out, err, False
