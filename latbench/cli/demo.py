"""`latbench demo`: the whole flow on one device (the local CPU by default)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from latbench.cli.common import add_device_options, add_json, data_dir, one_device
from latbench.tables import print_json


def cmd_demo(args: argparse.Namespace) -> int:
    from latbench.pipeline import DemoOptions, run_demo

    options = DemoOptions(quick=args.quick, data_dir=data_dir(args.data_dir),
                          runs_root=Path(args.runs_root), networks=args.networks,
                          seed=args.seed, plan_name=args.plan, print_summary=not args.json,
                          user_models=not args.no_user_models)
    run_dir = run_demo(options, device=one_device(args, threads=1))
    if args.json:
        print_json({"run": str(run_dir),
                    **json.loads((run_dir / "report.json").read_text())})
    return 0


def add_commands(sub: Any) -> None:
    from latbench.bench.presets import preset_names

    demo = sub.add_parser(
        "demo", help="the whole pipeline on one device (default: the local CPU)",
        description="With ONNX Runtime (1 thread) on the local CPU, or on --device: measure "
                    "operators, fit a predictor, evaluate it on held-out NAS-Bench-Macro "
                    "networks measured end to end, search under three latency budgets and "
                    "measure the winners, then predict two models a user might bring (a CNN and "
                    "a vision transformer built in PyTorch, exported with torch's default "
                    "exporter) from their files and measure them. Everything goes into "
                    "runs/<timestamp>/.")
    demo.add_argument("--quick", action="store_true",
                      help="small plan and 50 held-out networks (under 10 minutes on 2 cores)")
    demo.add_argument("--data-dir", help="reference data folder (default $LATBENCH_DATA or "
                                         "shared/data beside the latbench checkout)")
    demo.add_argument("--runs-root", default="runs", help="parent of the run directory")
    demo.add_argument("--networks", type=int, default=None,
                      help="held-out NAS-Bench-Macro networks (default 50 quick, 200 full)")
    demo.add_argument("--seed", type=int, default=0, help="seed")
    demo.add_argument("--plan", help=f"plan preset ({preset_names()}) or file instead of "
                                     "the default (quick: 'quick', full: 'nasbench-macro')")
    demo.add_argument("--no-user-models", action="store_true",
                      help="skip the last step (the CNN and vision transformer a user might "
                           "bring; it needs torch)")
    add_json(demo)
    add_device_options(demo)
    demo.set_defaults(func=cmd_demo)
