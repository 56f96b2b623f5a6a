"""Running argv on a remote shell safely: quoting, the pid wrapper, and killing on timeout.

SSH and ADB both hand the device ONE command string that its shell parses, so argv is quoted
with `shlex.join` (POSIX single quotes, understood by sh, bash, dash, mksh and toybox) and run
through a fixed wrapper that prints its pid and process group on stderr before exec'ing the
command. sshd and adbd start each command in a new session (the remote shell may fork before it
reaches the wrapper, so the group is read from /proc rather than assumed to be the pid); after a
timeout the transport kills that group and the pid rather than leaving a runaway benchmark
heating the device and skewing the next batch.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence

PID_MARKER = "latbench-pid"
# A constant: nothing user-given is pasted into it; argv follows as "$@".
WRAPPER = (f'echo "{PID_MARKER} $$ $(cut -d" " -f5 /proc/$$/stat 2>/dev/null)" >&2; '
           'exec "$@"')
WRAPPER_NAME = "latbench-run"
KILL_TIMEOUT_S = 10.0


def wrap_argv(argv: Sequence[str]) -> str:
    """The one command string sent to the remote shell for `argv` (every part quoted)."""
    return shlex.join(["sh", "-c", WRAPPER, WRAPPER_NAME, *argv])


def split_pid(stderr: str) -> tuple[tuple[int, int] | None, str]:
    """Take the wrapper's line out of stderr: ((pid, process group) or None, the rest).

    It is normally the first line, but a login shell's rc files or the adb client may write
    before it, so the first line that starts with the marker is taken. Where /proc is missing
    the group is taken to be the pid.
    """
    lines = stderr.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if not line.startswith(PID_MARKER + " "):
            continue
        fields = line[len(PID_MARKER) + 1:].split()
        try:
            pid = int(fields[0])
            group = int(fields[1]) if len(fields) > 1 else pid
        except (ValueError, IndexError):
            return None, stderr
        if pid <= 1 or group <= 1:
            return None, stderr
        return (pid, group), "".join(lines[:index] + lines[index + 1:])
    return None, stderr


def command_lines(on_stderr: Callable[[str], bool] | None
                  ) -> Callable[[str], bool] | None:
    """A stderr line callback that never sees (nor consumes) the wrapper's pid line, so the
    caller gets only the command's own lines and the transport always finds the pid."""
    if on_stderr is None:
        return None
    return lambda line: not line.startswith(PID_MARKER + " ") and on_stderr(line)


def kill_argv(ids: tuple[int, int]) -> list[str]:
    """Kill a process group and a pid (integers parsed from the wrapper, never device text).

    `kill -9 -PGID` is the one spelling dash, bash, mksh and toybox all accept ("--" is not).
    """
    pid, group = (int(x) for x in ids)
    return ["sh", "-c", 'kill -9 "-$2" 2>/dev/null; kill -9 "$1" 2>/dev/null; true',
            "latbench-kill", str(pid), str(group)]
