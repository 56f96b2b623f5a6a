"""The one way tests run the `latbench` command line in-process."""

from __future__ import annotations

import pytest

from latbench.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `latbench ARGV` (output captured before it is dropped)."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
