"""`latbench devices`: reach the devices of a fleet and show what they are."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from latbench.cli.common import add_device_options, add_json, devices
from latbench.tables import print_json, print_table


def cmd_devices_check(args: argparse.Namespace) -> int:
    from latbench.bench.targets import FLEET_ENV
    from latbench.device_agents import CHECK_HEADER, check_devices, check_row

    checks = check_devices(devices(args), timeout_s=args.check_timeout)
    if args.json:
        print_json([{"device": c.device, "address": c.address, "reachable": c.reachable,
                     "error": c.error, "problems": list(c.problems), "facts": c.facts,
                     "seconds": round(c.seconds, 3)} for c in checks])
    else:
        print_table(f"fleet {args.fleet or os.environ[FLEET_ENV]}", CHECK_HEADER,
                    [check_row(c) for c in checks])
    down = [c.device for c in checks if not c.reachable]
    if down:
        print(f"latbench: {len(down)} of {len(checks)} devices unreachable: "
              f"{', '.join(down)}", file=sys.stderr)
    return 1 if down else 0


def add_commands(sub: Any) -> None:
    group = sub.add_parser("devices", help="device fleets: health checks")
    group_sub = group.add_subparsers(dest="devices_command", required=True, metavar="SUBCOMMAND")
    check = group_sub.add_parser(
        "check", help="reach every device of a fleet and show its facts",
        description="Reach every device of a fleet inventory in parallel and print a table: "
                    "reachable, OS, CPU model and cores, runtime versions, free space, governor "
                    "and temperature where readable, and what would make measurements fail. "
                    "Exits non-zero if any device is unreachable.")
    add_device_options(check, fleet_required=True)
    add_json(check)
    check.set_defaults(func=cmd_devices_check)
