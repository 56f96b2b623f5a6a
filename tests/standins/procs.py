"""Helpers for tests that check what runs on a (stand-in) device: find processes by a marker in
their command line, wait until they are gone, argv that tries to break quoting, and a command
that proves a transport streams stderr while it runs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

# Arguments a shell would mangle if a transport pasted them into a command string.
TRICKY = ["a b", "it's", '"quoted"', "$HOME", "`id`", "; rm -rf /", "*", "", "ünï", "-n"]


def alive_with(marker: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains marker."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        if marker.encode() in cmdline and "\nState:\tZ" not in state:
            found.append(int(entry))
    return found


def wait_gone(marker: str, within_s: float = 10.0) -> list[int]:
    """Wait until no live process carries marker; returns the survivors (empty = all gone)."""
    deadline = time.monotonic() + within_s
    while (pids := alive_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids


# Prints a line, then waits until the callback has seen it and made the flag file ($1): a
# transport that handed stderr over only at the end would never let it finish (it times out).
HANDSHAKE = ('echo keep-1 >&2; echo "latbench-test ping" >&2; '
             'while [ ! -e "$1" ]; do sleep 0.05; done; echo keep-2 >&2; echo out')


def handshake(flag: Path) -> tuple[list[str], Callable[[str], bool]]:
    """(lines seen, stderr callback) for HANDSHAKE: the ping line makes the flag file and is
    consumed; the others are kept."""
    seen: list[str] = []

    def on_line(line: str) -> bool:
        seen.append(line)
        if line == "latbench-test ping":
            flag.touch()
            return True
        return False

    return seen, on_line
