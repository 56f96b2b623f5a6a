"""Run every benchmark script in benchmarks/ (what `make bench` does), each in its own process.

Every `benchmarks/*.py` except this file and private helpers (`_*.py`) is a benchmark; each
writes its own section of BENCHMARKS.md. Scripts run one after another (they time things, so
they must not share the machine with each other) with this interpreter, from the repository
root; their output streams through. A failing script does not stop the others, but the run
ends with a non-zero exit naming every script that failed.

    .venv/bin/python benchmarks/run_all.py                  # all of them
    .venv/bin/python benchmarks/run_all.py --only throughput repeatability
    .venv/bin/python benchmarks/run_all.py --list
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run before the others: their campaigns are what kernel_transfer, litert_composition and
# builtin_bmm read.
PRODUCERS = ("platform_matrix",)


def discover(folder: Path | None = None) -> list[Path]:
    """Benchmark scripts in `folder` (default: benchmarks/): PRODUCERS first, the rest by
    name."""
    folder = HERE if folder is None else folder
    return sorted((p for p in folder.glob("*.py")
                   if not p.name.startswith("_") and p.name != Path(__file__).name),
                  key=lambda p: (p.stem not in PRODUCERS, p.name))


def select(scripts: list[Path], only: list[str] | None, skip: list[str] | None) -> list[Path]:
    names = {p.stem: p for p in scripts}
    for name in [*(only or []), *(skip or [])]:
        if name not in names:
            raise SystemExit(f"run_all: no benchmark named {name!r}; known: "
                             f"{', '.join(sorted(names))}")
    chosen = [p for p in scripts if not only or p.stem in only]
    return [p for p in chosen if p.stem not in set(skip or [])]


def run(scripts: list[Path], extra: list[str], python: str = sys.executable,
        cwd: Path = ROOT) -> list[tuple[str, int, float]]:
    """Run each script; returns (name, exit code, seconds) per script."""
    results = []
    for script in scripts:
        # relative to the repository root, so each section's "Command:" line reads as typed
        shown = script.relative_to(cwd) if script.is_relative_to(cwd) else script
        print(f"\n=== {script.stem} ({shown}) ===", flush=True)
        started = time.perf_counter()
        try:
            code = subprocess.run([python, str(shown), *extra], cwd=cwd).returncode
        except OSError as exc:
            print(f"run_all: cannot start {script}: {exc}", file=sys.stderr)
            code = 127
        seconds = time.perf_counter() - started
        print(f"=== {script.stem}: {'ok' if code == 0 else f'FAILED (exit {code})'} in "
              f"{seconds:.0f} s ===", flush=True)
        results.append((script.stem, code, seconds))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="run only these benchmarks (script names)")
    parser.add_argument("--skip", nargs="+", help="do not run these benchmarks")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--no-write", action="store_true",
                        help="pass --no-write to every script (BENCHMARKS.md untouched)")
    args = parser.parse_args(argv)
    scripts = select(discover(), args.only, args.skip)
    if args.list:
        print("\n".join(p.stem for p in scripts))
        return 0
    if not scripts:
        print("run_all: no benchmark selected", file=sys.stderr)
        return 2
    results = run(scripts, ["--no-write"] if args.no_write else [], cwd=ROOT)
    print("\n=== summary ===")
    for name, code, seconds in results:
        print(f"{name:28s} {'ok' if code == 0 else f'FAILED (exit {code})':18s} {seconds:7.0f} s")
    failed = [name for name, code, _ in results if code != 0]
    if failed:
        print(f"run_all: {len(failed)} of {len(results)} benchmarks FAILED: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
