"""Where latbench finds the reference data (accuracy tables, latency tables, lookup tables).

`$LATBENCH_DATA` wins; otherwise `shared/data` beside the latbench checkout (the repository's
parent folder), so that a command finds it from any working directory. Never the working
directory itself: a command must not read different data depending on where it was started.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "LATBENCH_DATA"


def project_root() -> Path | None:
    """The latbench checkout this code runs from (None for an installed wheel)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def default_data_dir() -> Path | None:
    """`$LATBENCH_DATA` if set, else `<checkout>/../shared/data` if it exists, else None."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    root = project_root()
    if root is None:
        return None
    candidate = root.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None
