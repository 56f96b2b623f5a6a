"""LocalTransport: the machine latbench runs on, reached through subprocess.

It is the reference transport (tests and `make demo` measure the host itself) and shows the
contract every remote transport keeps: argv without a shell, a hard timeout that kills the whole
process group (runtimes spawn thread pools and helpers), and copies that create parent dirs.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from latbench.device_agents.inventory import InventoryFields
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
from latbench.errors import TransportError

log = logging.getLogger(__name__)


@register_transport("local")
class LocalTransport(ClosesOnExit):
    """Run commands and copy files on this machine."""

    name = "local"
    # No fields of its own; the agent runs with this very interpreter, so the runtimes default
    # to what it can import.
    inventory = InventoryFields(python=sys.executable, here=True)

    @classmethod
    def from_inventory(cls, values: Mapping[str, Any], env: Mapping[str, str]) -> Self:
        return cls()

    def __init__(self, env: dict[str, str] | None = None) -> None:
        # None = inherit the caller's environment, as a remote shell would have its own.
        self._env = dict(env) if env is not None else None

    def run(self, argv: Sequence[str], timeout_s: float,
            on_stderr: LineCallback | None = None) -> CommandResult:
        args = check_argv(argv)
        timeout = check_timeout(timeout_s)
        start = time.perf_counter()
        try:
            proc = start_process(args, self._env)
        except OSError as exc:
            raise TransportError(f"cannot start {describe(args)} on local: {exc}") from exc
        out, err, timed_out = communicate(proc, timeout, on_stderr)
        if timed_out:
            raise TransportError(f"command {describe(args)} on local timed out after "
                                 f"{timeout:g} s; its process group was killed")
        duration = time.perf_counter() - start
        log.debug("local: %s -> %d in %.3f s", describe(args), proc.returncode, duration)
        return CommandResult(args, proc.returncode, decode(out), decode(err), duration)

    def push(self, local: Path, remote: str) -> None:
        self._copy(Path(local), Path(check_remote_path(remote)), "push")

    def pull(self, remote: str, local: Path) -> None:
        self._copy(Path(check_remote_path(remote)), Path(local), "pull")

    def close(self) -> None:
        """Nothing to release locally."""

    @staticmethod
    def _copy(src: Path, dst: Path, what: str) -> None:
        if not src.is_file():
            raise TransportError(f"{what} on local: source {src} is not a file")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        except OSError as exc:
            raise TransportError(f"{what} on local: copying {src} to {dst} failed: {exc}") from exc
