"""What latbench prints on stdout: tables a person reads and JSON a program reads.

Piped, a table is as wide as it needs to be (no cell cut or folded: an architecture string or an
error message must stay readable in a log); on a terminal rich fits it to the window.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stdout. Piped, the console is as wide as the table needs: no cell is
    cut or folded (an architecture string or an error message must stay readable)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in header:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    if sys.stdout.isatty():
        Console().print(table)
    else:
        Console(width=100_000, no_color=True, highlight=False).print(table)


def print_json(value: Any) -> None:
    """JSON on stdout; NaN and infinity become null (strict JSON readers reject them)."""
    print(json.dumps(_finite(value), indent=2, default=str))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
