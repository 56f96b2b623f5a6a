"""latbench command line: one module per stage, each adding its own subcommands.

Every latbench error is printed as one line on stderr with a non-zero exit; tracebacks are for
bugs (use --debug to see them for latbench errors too).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from latbench import __version__
from latbench.cli import bench, demo, devices, predictor, search, transfer
from latbench.errors import LatbenchError
from latbench.extras import missing_extra_message


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latbench",
        description="On-device latency of neural networks: measure operators on a device, "
                    "build a dataset, fit a predictor, check it on held-out networks, search "
                    "architectures under a latency budget.",
        epilog="Start with `latbench demo --quick`. Every command has --help.")
    parser.add_argument("--version", action="version", version=f"latbench {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench.add_commands(sub)
    devices.add_commands(sub)
    pred = sub.add_parser("predictor", help="fit, evaluate and transfer latency predictors")
    pred_sub = pred.add_subparsers(dest="predictor_command", required=True, metavar="SUBCOMMAND")
    predictor.add_commands(sub, pred_sub)
    transfer.add_commands(pred_sub)
    search.add_commands(sub)
    demo.add_commands(sub)
    return parser


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a command like Ctrl-C (KeyboardInterrupt), so its clean-up still runs:
    campaigns stop, temporary work dirs are removed at exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        with _terminate_as_interrupt():
            return int(args.func(args) or 0)
    except LatbenchError as exc:
        if args.debug:
            raise
        print(f"latbench: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        advice = missing_extra_message(exc)
        if advice is None or args.debug:
            raise
        print(f"latbench: error: {advice}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("latbench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
