"""What every stage's commands share: option groups, device resolution, tables, campaign
summaries, JSON output.

Handlers stay thin: parse, call one library function, print. Anything a library user would also
need (resolving devices, run settings from a predictor) lives in the library; this module only
turns flags into those calls and results into text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from latbench.bench.stats import DEFAULT_STATISTIC, RECORD_STATISTICS
from latbench.errors import ConfigError
from latbench.tables import print_json, print_table

PASSES_HELP = ("measure the networks N times, one whole pass after another, and score "
               "against the median: on a machine with slow phases a network's time moves by "
               "several percent between passes (the report gives the spread); default 1")


def networks_help(default: str | None = None, held_out: bool = False) -> str:
    """--networks help naming every registered space and family; `held_out`: the command
    leaves out the predictor's calibration networks and draws past them to each count."""
    from latbench.bench.families import list_families
    from latbench.bench.spaces import SPACES

    text = (f"network set: comma-separated NAME:COUNT (search spaces: {', '.join(sorted(SPACES))};"
            f" families: {', '.join(list_families())}) and/or paths of .onnx/.tflite files or "
            "folders of them")
    if held_out:
        text += ("; NAME:COUNT gives COUNT networks the predictor was not calibrated on (its "
                 "calibration networks are skipped and others drawn in their place)")
    return f"{text} (default {default})" if default else text


def add_legacy_export(parser: argparse.ArgumentParser) -> None:
    """--legacy-export, for commands that export family networks to ONNX."""
    parser.add_argument("--legacy-export", action="store_true",
                        help="export family networks with torch's legacy (TorchScript) "
                             "exporter, several times faster, instead of the default one users "
                             "call")


def runtime_names() -> list[str]:
    """Every registered runtime, for --runtime choices."""
    from latbench.bench.runners import RUNNERS

    return sorted(RUNNERS)


# --- output -----------------------------------------------------------------------------------
def summary_rows(summary: Any) -> list[tuple[str, Any]]:
    return [("jobs", summary.total), ("already stored", summary.skipped),
            ("measured", summary.measured), ("failed", summary.failed),
            ("batches redone after a slow phase", summary.redone_batches),
            ("batches stored drifted (flagged)", getattr(summary, "drifted_batches", 0)),
            ("timed calls taken again (thread descheduled)",
             f"{getattr(summary, 'retaken_runs', 0):,} of {getattr(summary, 'checked_runs', 0):,}"),
            ("descheduled calls kept", getattr(summary, "kept_descheduled_runs", 0)),
            ("seconds", f"{summary.seconds:.1f}")]


def summary_json(summary: Any) -> dict[str, Any]:
    return {"jobs": summary.total, "already_stored": summary.skipped,
            "measured": summary.measured, "failed": summary.failed,
            "redone_batches": summary.redone_batches,
            "drifted_batches": getattr(summary, "drifted_batches", 0),
            "descheduling": {"checked_runs": getattr(summary, "checked_runs", 0),
                             "retaken_runs": getattr(summary, "retaken_runs", 0),
                             "kept_runs": getattr(summary, "kept_descheduled_runs", 0),
                             "unchecked_records": getattr(summary, "unchecked_records", 0)},
            "seconds": round(summary.seconds, 3),
            "control": getattr(summary, "control", {}),
            "drift_plots": [str(p) for p in getattr(summary, "drift_plots", [])],
            "failures": [{"device": d, "job": k, "error": e} for d, k, e in summary.failures]}


def campaign_done(title: str, summary: Any, as_json: bool = False) -> int:
    """Print a campaign's summary and failures; exit code 1 if any job failed."""
    if as_json:
        print_json(summary_json(summary))
    else:
        print_table(title, ["", "value"], summary_rows(summary))
        report_failures(summary)
    return 1 if summary.failed else 0


def report_failures(summary: Any) -> None:
    for line in getattr(summary, "drift_report", lambda: [])():
        print(f"drift: {line}")
    for path in getattr(summary, "drift_plots", []):
        print(f"drift plot: {path}")
    descheduling = getattr(summary, "descheduling_report", lambda: "")()
    if descheduling:
        print(descheduling)
    if not summary.failures:
        return
    print_table("failures", ["device", "job", "error"],
                [(d, k, e) for d, k, e in summary.failures[:20]])
    if len(summary.failures) > 20:
        print(f"... and {len(summary.failures) - 20} more failures", file=sys.stderr)


# --- parsing helpers --------------------------------------------------------------------------
def json_params(text: str | None, flag: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{flag} is not valid JSON: {exc}") from exc


def data_dir(given: str | None) -> Path | None:
    """--data-dir if given (it must exist), else the default reference data folder."""
    from latbench.paths import default_data_dir

    if given:
        path = Path(given)
        if not path.is_dir():
            raise ConfigError(f"data dir {path} does not exist")
        return path
    return default_data_dir()


# --- devices ----------------------------------------------------------------------------------
def devices(args: argparse.Namespace, threads: int | None = None) -> list[Any]:
    """The devices --device NAME / --fleet FILE (with --only) name; see
    `bench.targets.resolve_devices`."""
    from latbench.bench.targets import resolve_devices

    only = [n.strip() for n in args.only.split(",") if n.strip()] \
        if getattr(args, "only", None) else None
    return resolve_devices(getattr(args, "device", None), getattr(args, "fleet", None),
                           only=only, threads=threads,
                           insecure_accept_unknown_host_key=getattr(args, "insecure_host_keys",
                                                                    False))


def one_device(args: argparse.Namespace, threads: int | None = None) -> Any:
    """The one device a command measures on: --device NAME, or the single device --fleet
    (with --only / --device) leaves."""
    found = devices(args, threads)
    if len(found) != 1:
        raise ConfigError(f"this command measures on one device; --fleet {args.fleet} has "
                          f"{', '.join(d.name for d in found)}: pick one with --device NAME")
    return found[0]


# --- option groups ----------------------------------------------------------------------------
def run_settings(args: argparse.Namespace) -> Any:
    """Stopping rule by default (--target-ci); --fixed-runs: --rounds x --runs per model."""
    from latbench.bench.runners import RunSettings

    fixed = args.fixed_runs
    runs = args.runs if args.runs is not None else (20 if fixed else 10)
    return RunSettings(threads=thread_counts(args)[0], warmup=args.warmup, runs=runs,
                       rounds=args.rounds, graph_opt=args.graph_opt, delegate=args.delegate,
                       target_ci=None if fixed else args.target_ci, confidence=args.confidence,
                       min_runs=args.min_runs, max_runs=args.max_runs,
                       max_seconds=args.max_seconds, futility=args.futility or None,
                       retake_descheduled=not args.keep_descheduled, settle=not args.no_settle)


def thread_counts(args: argparse.Namespace) -> list[int]:
    """--threads as a list: one count, or the several of `bench ops` / `bench networks`."""
    threads = args.threads
    return list(threads) if isinstance(threads, list) else [threads]


def stream_settings(args: argparse.Namespace) -> Any:
    """The single-stream settings of --single-stream (None without it)."""
    import dataclasses

    if not getattr(args, "single_stream", False):
        return None
    return dataclasses.replace(run_settings(args), target_ci=None, queries=args.queries,
                               min_query_s=args.min_query_seconds, replicates=args.replicates,
                               replicate_pause_s=args.replicate_pause)


def max_load(flag: str | None) -> float:
    """--max-load as CampaignConfig takes it (bench.load: a number of cores, 'off', or the
    default)."""
    from latbench.bench.load import default_max_load, parse_max_load

    return default_max_load() if flag is None else parse_max_load(flag)


def campaign_config(args: argparse.Namespace, settings: Any = None) -> Any:
    from latbench.bench.campaign import CampaignConfig

    if settings is None and getattr(args, "single_stream", False) and args.fixed_runs:
        raise ConfigError("--single-stream and --fixed-runs are two protocols for the same "
                          "measurements: pick one")
    settings = settings or stream_settings(args) or run_settings(args)
    return CampaignConfig(settings=settings, batch_size=args.batch_size,
                          timeout_s=args.timeout, drift_tolerance=args.drift_tolerance,
                          **cooling(args),
                          pin_governor=getattr(args, "pin", False),
                          pin_affinity=getattr(args, "pin", False),
                          pin_cpus=cpus_flag(getattr(args, "cpus", None)),
                          max_device_failures=getattr(args, "max_device_failures", 3),
                          calibration_runs=getattr(args, "calibration_runs", 3),
                          max_load=max_load(getattr(args, "max_load", None)),
                          max_load_wait_s=getattr(args, "max_load_wait", 300.0),
                          drift_correct=getattr(args, "drift_correct", False),
                          keep_samples=getattr(args, "keep_samples", False),
                          shuffle_seed=None if getattr(args, "keep_order", False) else 0,
                          lock_wait_s=getattr(args, "lock_wait", 0.0),
                          thread_counts=_several_threads(args))


def _several_threads(args: argparse.Namespace) -> tuple[int, ...]:
    """The thread counts of a campaign measuring several (--threads 1 2), else ()."""
    counts = getattr(args, "threads", None)
    return tuple(counts) if isinstance(counts, list) and len(counts) > 1 else ()


DEFAULT_COOLDOWN_S = 300.0  # the longest cooling wait of --max-temp without --cooldown


def cooling(args: argparse.Namespace) -> dict[str, Any]:
    """--cooldown S: with --max-temp the longest wait for the device to cool before each
    batch (default 300 s; --max-cool-wait is its older name), without it a fixed pause between
    batches (default none) - a cool-down that a thermometer ends early."""
    max_temp = getattr(args, "max_temp", None)
    cooldown = getattr(args, "cooldown", None)
    alias = getattr(args, "max_cool_wait", None)
    if alias is not None:
        if max_temp is None:
            raise ConfigError("--max-cool-wait bounds the wait of --max-temp; give --max-temp "
                              "too, or --cooldown S for a fixed pause between batches")
        if cooldown is not None and cooldown != alias:
            raise ConfigError(f"--cooldown {cooldown:g} and --max-cool-wait {alias:g} are the "
                              "same bound (--max-cool-wait is its older name): give one")
        cooldown = alias
    if cooldown is not None and not cooldown >= 0:
        raise ConfigError(f"--cooldown must be >= 0 seconds, got {cooldown:g}")
    if max_temp is None:
        return {"max_temp_c": None, "cooldown_s": cooldown or 0.0}
    return {"max_temp_c": max_temp, "cooldown_s": 0.0,
            "max_cool_wait_s": DEFAULT_COOLDOWN_S if cooldown is None else cooldown}


def cpus_flag(text: str | None) -> tuple[int, ...] | None:
    """--cpus LIST as CPU ids (None when not given)."""
    from latbench.bench.affinity import parse_cpus_flag

    return None if text is None else parse_cpus_flag(text)


def add_single_stream(p: argparse.ArgumentParser) -> None:
    """The MLPerf-style single-stream protocol for whole models."""
    g = p.add_argument_group("single stream (MLPerf-style model timing, docs/measurement.md)")
    g.add_argument("--single-stream", action="store_true",
                   help="time each model alone, one query after the other, for at least "
                        "--queries queries and --min-query-seconds seconds, --replicates times "
                        "--replicate-pause seconds apart; reports p50/p90/p99 and whether the "
                        "replicates' p90 agree within 5%%")
    g.add_argument("--queries", type=int, default=1024,
                   help="single stream: least queries per replicate (default 1024)")
    g.add_argument("--min-query-seconds", type=float, default=60.0,
                   help="single stream: least seconds per replicate (default 60)")
    g.add_argument("--replicates", type=int, default=3,
                   help="single stream: runs per model that must agree (default 3)")
    g.add_argument("--replicate-pause", type=float, default=5.0,
                   help="single stream: seconds between replicates (default 5)")


def add_device_options(p: argparse.ArgumentParser, *, fleet_required: bool = False,
                       what: str = "device to measure on") -> None:
    """--device NAME, --fleet FILE, --only, host-key trust and the health-check timeout.
    `fleet_required`: a fleet must be named, by --fleet or $LATBENCH_FLEET."""
    import os

    from latbench.bench.targets import FLEET_ENV

    g = p.add_argument_group("device (see docs/fleet.md)")
    if not fleet_required:
        g.add_argument("--device", help=f"{what}: 'local' or a device of --fleet (default "
                                        "local, or the only device of --fleet)")
    g.add_argument("--fleet", required=fleet_required and not os.environ.get(FLEET_ENV),
                   help="fleet inventory TOML file (see docs/fleet.md; default "
                        "$LATBENCH_FLEET)")
    g.add_argument("--only", help="comma-separated device names of the fleet to use")
    g.add_argument("--insecure-accept-unknown-host-key", dest="insecure_host_keys",
                   action="store_true",
                   help="trust SSH host keys missing from known_hosts WITHOUT verifying them "
                        "(a changed key is still refused)")
    g.add_argument("--check-timeout", type=float, default=60.0,
                   help="seconds per device for its health check (default 60)")


def add_run_settings(p: argparse.ArgumentParser, defaults_from_predictor: bool = False,
                     several_threads: bool = False) -> None:
    """The measurement flags; `several_threads`: --threads takes several counts, each measured
    as a platform of its own (`bench ops`, `bench networks`)."""
    g = p.add_argument_group("measurement settings")
    if not defaults_from_predictor:
        if several_threads:
            g.add_argument("--threads", type=int, nargs="+", default=[1], metavar="N",
                           help="runtime threads; several (e.g. --threads 1 2) measure every "
                                "subject at each, a platform per count in one dataset "
                                "(default 1)")
        else:
            g.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
        g.add_argument("--warmup", type=int, default=10,
                       help="untimed calls per model before timing (default 10)")
        g.add_argument("--runs", type=int, default=None,
                       help="timed calls per model per round (default 10 with the stopping "
                            "rule, 20 with --fixed-runs)")
        g.add_argument("--rounds", type=int, default=5,
                       help="interleaved rounds over each batch with --fixed-runs (default 5)")
        g.add_argument("--target-ci", type=float, default=0.02,
                       help="stopping rule: repeat rounds until the confidence interval of the "
                            "median is within this relative width (default 0.02 = 2%%)")
        g.add_argument("--fixed-runs", action="store_true",
                       help="no stopping rule: exactly --rounds x --runs timed calls per model "
                            "(the protocol of datasets measured before the rule existed)")
        g.add_argument("--confidence", type=float, default=0.95,
                       help="confidence of the median's interval (default 0.95)")
        g.add_argument("--min-runs", type=int, default=20,
                       help="stopping rule: never stop a model before this many runs "
                            "(default 20)")
        g.add_argument("--max-runs", type=int, default=1000,
                       help="stopping rule: stop a model at this many runs (default 1000)")
        g.add_argument("--max-seconds", type=float, default=5.0,
                       help="stopping rule: stop a model after this much timing (default 5)")
        g.add_argument("--futility", type=float, default=4.0,
                       help="stopping rule: stop a model early when reaching --target-ci is "
                            "projected to take more than this many times --max-seconds "
                            "(default 4; 0: measure such models up to the caps)")
        g.add_argument("--no-settle", action="store_true",
                       help="time a whole network from its first call at each visit instead of "
                            "after untimed calls that settle it (the protocol of datasets "
                            "measured before settling existed; docs/measurement.md)")
        g.add_argument("--keep-descheduled", action="store_true",
                       help="keep timed calls whose thread was descheduled (another process "
                            "ran on its core) instead of timing them again; they are counted "
                            "either way (one thread only, see docs/measurement.md)")
        g.add_argument("--graph-opt", default="all",
                       choices=("disable", "basic", "extended", "all"),
                       help="ONNX Runtime graph optimisation level (default all)")
        g.add_argument("--delegate", default="xnnpack", choices=("xnnpack", "builtin", "gpu"),
                       help="LiteRT kernels: XNNPACK delegate or built-in (default xnnpack); "
                            "gpu: the GPU delegate, with tflite-benchmark-model only")
    g.add_argument("--batch-size", type=int, default=40,
                   help="models per agent call (default 40)")
    g.add_argument("--timeout", type=float, default=None,
                   help="seconds per batch before it is marked failed (default: estimated)")
    g.add_argument("--drift-tolerance", type=float, default=0.10,
                   help="redo a batch whose reference probe is this much slower than the "
                        "device's best (default 0.10)")
    g.add_argument("--max-load", default=None, metavar="CORES",
                   help="cores other programs may keep busy while a batch is timed (read from "
                        "/proc/stat minus the agent's own CPU time); over it the batch is timed "
                        "again once the device is quiet, and a batch still disturbed is not "
                        "stored (default 0.5, or $LATBENCH_MAX_LOAD; 'off': only report the "
                        "load)")
    g.add_argument("--max-load-wait", type=float, default=300.0, metavar="SECONDS",
                   help="the longest the campaign waits, in all, for other programs to quiet "
                        "down (default 300)")
    g.add_argument("--max-temp", type=float, default=None, metavar="CELSIUS",
                   help="before each batch wait until the device's hottest temperature (thermal "
                        "zones, else hwmon and, on Android phones, dumpsys thermalservice and "
                        "battery) is at most this warm, polled every 5 s for at most --cooldown "
                        "seconds")
    g.add_argument("--cooldown", type=float, default=None, metavar="SECONDS",
                   help="the cool-down before each batch: with --max-temp the longest wait for "
                        "the device to cool (default 300; past it the batch is measured and a "
                        "warning recorded), without it a fixed pause between batches "
                        "(default 0)")
    g.add_argument("--max-cool-wait", type=float, default=None, metavar="SECONDS",
                   help="older name of --cooldown with --max-temp")
    g.add_argument("--pin", action="store_true",
                   help="pin for the campaign: CPU governors to performance (restored after; "
                        "needs root) and the runtime to the device's fastest cores, as many as "
                        "--threads (or --cpus, or the fleet's cpu_affinity); whatever the device "
                        "refuses is recorded and the campaign runs unpinned")
    g.add_argument("--cpus", default=None, metavar="LIST",
                   help="run the runtime on these cores, e.g. 4-7 or 0,2 (taskset for native "
                        "tools, sched_setaffinity for the agent); with --pin, instead of the "
                        "fastest cores")
    g.add_argument("--max-device-failures", type=int, default=3,
                   help="failed batches in a row before a device's remaining jobs are marked "
                        "failed (default 3)")
    g.add_argument("--calibration-runs", type=int, default=3,
                   help="probe-only batches per device before measuring (default 3)")
    g.add_argument("--drift-correct", action="store_true",
                   help="also store drift-corrected statistics (*_corrected_ms: raw / the "
                        "batch's drift ratio), next to the raw ones")
    g.add_argument("--keep-samples", action="store_true",
                   help="store every timed sample with its record (samples_ms column)")
    g.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another campaign measuring into the same dataset "
                        "to finish (default 0: refuse at once; inf: as long as it takes)")
    g.add_argument("--keep-order", action="store_true",
                   help="measure the subjects in the order given instead of a seeded random "
                        "order (the default spreads a slow phase over every kind of subject "
                        "rather than biasing whichever ones were listed together)")


def add_platform_choice(p: argparse.ArgumentParser, *, what: str = "the predictor's",
                        device_runtime: bool = False, default: str | None = None) -> None:
    """--threads, --precision and --delegate (with `device_runtime` also --device and
    --runtime): which of the platforms (bench.platform) a predictor or dataset holds to use;
    `default` says what happens without them (else: `what` only one)."""
    from latbench.bench.platform import PRECISION_NAMES

    default = default or f"{what} only one"
    g = p.add_argument_group(f"platform (which of {what} platforms; docs/predictors.md, "
                             "Platforms)")
    if device_runtime:
        g.add_argument("--device", help=f"the platform of this device (default: {default})")
        g.add_argument("--runtime", choices=runtime_names(),
                       help=f"the platform of this runtime (default: {default})")
    g.add_argument("--threads", type=int, metavar="N",
                   help=f"the platform of N runtime threads (default: {default})")
    g.add_argument("--precision", metavar="P",
                   help=f"the platform of this precision: {', '.join(PRECISION_NAMES.values())}"
                        f" (default: {default})")
    g.add_argument("--delegate", metavar="NAME",
                   help=f"the platform of this runtime delegate, e.g. LiteRT's xnnpack or "
                        f"builtin (default: {default})")


def platform_choice(args: argparse.Namespace) -> Any:
    """The PlatformChoice the flags of `add_platform_choice` make (with --device and --runtime
    where the command has them)."""
    from latbench.bench.platform import PlatformChoice, parse_precision

    precision = getattr(args, "precision", None)
    return PlatformChoice(device=getattr(args, "device", None),
                          runtime=getattr(args, "runtime", None),
                          delegate=getattr(args, "delegate", None),
                          precision=None if precision is None else parse_precision(precision),
                          threads=getattr(args, "threads", None))


def predictor_choice(args: argparse.Namespace, path: str | Path, *,
                     measured_on: bool = False) -> Any:
    """The PlatformChoice of the flags for the predictor at `path`. With `measured_on`,
    --device names the device to measure on (eval, search --measure): it then chooses only
    among a predictor's several devices, one fitted elsewhere being measured here on
    purpose."""
    import dataclasses

    from latbench.predictor.io import read_platforms

    choice = platform_choice(args)
    if measured_on and choice.device and len({p.device for p in read_platforms(Path(path))}) < 2:
        choice = dataclasses.replace(choice, device=None)
    return choice


def load_predictor(args: argparse.Namespace, *, measured_on: bool = False) -> Any:
    """The predictor at --predictor, at the platform the flags choose (`predictor_choice`)."""
    from latbench.predictor.latency_predictor import LatencyPredictor

    path = Path(args.predictor)
    return LatencyPredictor.load(path, predictor_choice(args, path, measured_on=measured_on))


def add_statistic(p: argparse.ArgumentParser, help_text: str | None = None) -> None:
    p.add_argument("--statistic", default=DEFAULT_STATISTIC, choices=RECORD_STATISTICS,
                   help=help_text or f"latency statistic (default {DEFAULT_STATISTIC})")


def add_interval_level(p: argparse.ArgumentParser,
                       what: str = "the measured latency should fall inside them that often"
                       ) -> None:
    p.add_argument("--interval-level", type=float, default=0.9, metavar="P",
                   help=f"nominal level of the prediction intervals, in (0, 1): {what} "
                        "(default 0.9)")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
