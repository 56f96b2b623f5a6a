"""Write one benchmark's section of BENCHMARKS.md, leaving the other sections as they are.

Each section sits between `<!-- section:NAME -->` and `<!-- end:NAME -->` markers and carries
the command that produced it, the date and the machine.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADER = ("# latbench benchmarks\n\nFigures measured by the scripts in `benchmarks/` (`make bench` "
          "runs them all). Each section says the command, the date and the machine; timings on "
          "the 2-core CI-class machine are noisy (bursts up to 1.8x slower), so every figure "
          "comes from interleaved, repeated measurements within one run.\n")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def command() -> str:
    return " ".join([".venv/bin/python", *[a for a in sys.argv]])


def write_section(name: str, title: str, body: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = (f"<!-- section:{name} -->\n## {title}\n\n"
             f"Command: `{command()}`  \nDate: {stamp}  \nMachine: {machine()}\n\n"
             f"{body.strip()}\n<!-- end:{name} -->")
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    pattern = re.compile(rf"<!-- section:{re.escape(name)} -->.*?<!-- end:{re.escape(name)} -->",
                         re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = BENCHMARKS_MD.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(BENCHMARKS_MD)


def publish(name: str, title: str, body: str | Sequence[str], write: bool = True) -> None:
    """Print a benchmark's result and, when `write`, store it as section `name` of
    BENCHMARKS.md (`body`: the text, or its lines)."""
    text = body if isinstance(body, str) else "\n".join(body)
    print(text)
    if write:
        write_section(name, title, text)
