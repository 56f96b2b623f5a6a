"""Issue 3 target: a campaign over 4 loopback SSH devices, one killed midway, completes on rerun
with exactly one record per job; and the per-job overhead of the SSH path against the local
path for the same specs, measured in the same run.

The devices are real OpenSSH servers on 127.0.0.1 (tests/standins/sshd_host.py: own port, own
host key, key-only login, host keys verified against a known_hosts file), all on this machine, so
"4 devices" share its 2 cores: the fleet figures show the machinery (fault handling, resume,
one record per job), not 4x throughput. The overhead comparison runs the same specs with the same
settings through LocalTransport and through SSH to one host, alternating A/B/A/B, and reports
medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
# The repository root too: tests/device_agents (a folder without __init__) must not shadow the
# device_agents package as a namespace package once tests/ is on the path.
sys.path[1:1] = [str(ROOT), str(ROOT / "tests")]

from _report import publish  # noqa: E402
from standins.sshd_host import SshdHost, keygen  # noqa: E402

from latbench.bench.campaign import (  # noqa: E402,I001
    CampaignConfig,
    Subject,
    measure_fleet_into_dataset,
    run_campaign,
)
from latbench.bench.plans import build_specs, load_plan  # noqa: E402
from latbench.bench.runners import RunSettings  # noqa: E402
from latbench.bench.store import LatencyDataset, make_job_key  # noqa: E402
from latbench.device_agents import Device, LocalTransport, SSHTransport  # noqa: E402


class KillMidway:
    """Progress sink: kills one host's sshd (listener, sessions, the agent) after its batch k."""

    def __init__(self, lane: str, host: SshdHost, after_batches: int) -> None:
        self.lane, self.host, self.after = lane, host, after_batches
        self.seen = 0
        self.killed_at: float | None = None

    def start(self, lane: str, total: int) -> None:
        pass

    def advance(self, lane: str, done: int) -> None:
        if lane == self.lane and self.killed_at is None:
            self.seen += 1
            if self.seen >= self.after:
                self.host.kill()
                self.killed_at = time.perf_counter()

    def note(self, lane: str, text: str) -> None:
        print(f"  {lane}: {text}", file=sys.stderr)


def ssh_device(name: str, host: SshdHost, key: Path, known_hosts: Path) -> Device:
    transport = SSHTransport("127.0.0.1", port=host.port, key_file=key, known_hosts=known_hosts,
                             connect_retries=3, backoff_s=0.5)
    return Device(name=name, transport=transport, runtimes=("onnxruntime",),
                  work_dir=str(host.work_dir), python=sys.executable)


def one_record_per_job(dataset: LatencyDataset, subjects: list[Subject], names: list[str],
                       settings: RunSettings) -> bool:
    keys = sorted(dataset.records()["job_key"])
    want = sorted(make_job_key(s.key, n, "onnxruntime", settings.key("onnxruntime"))
                  for s in subjects for n in names)
    return keys == want and dataset.failures().empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--specs", type=int, default=24, help="kernels per device")
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5, help="A/B repetitions of the overhead")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()

    settings = RunSettings(threads=1, warmup=5, runs=10, rounds=2)
    config = CampaignConfig(settings=settings, batch_size=args.batch_size, calibration_runs=1,
                            drift_pause_s=0.5, max_device_failures=2)
    specs = build_specs(load_plan("quick"))[:args.specs]
    subjects = [Subject.op(s) for s in specs]
    jobs_per_device = len(subjects)
    batches = -(-jobs_per_device // args.batch_size)
    tmp = Path(tempfile.mkdtemp(prefix="latbench-bench-ssh-"))
    hosts: list[SshdHost] = []
    try:
        key = keygen(tmp / "client" / "id_ed25519")
        names = ["dev0", "dev1", "dev2", "dev3"]
        hosts = [SshdHost(tmp / n, key, n).start() for n in names]
        known_hosts = tmp / "known_hosts"
        known_hosts.write_text("".join(h.known_hosts_line() for h in hosts))
        devices = [ssh_device(n, h, key, known_hosts) for n, h in zip(names, hosts, strict=True)]

        # --- 1. the fleet campaign with one device killed midway, then the rerun -------------
        out = tmp / "fleet-dataset"
        killer = KillMidway("dev3/onnxruntime", hosts[3], after_batches=max(1, batches // 2))
        started = time.perf_counter()
        first, _ = measure_fleet_into_dataset(subjects, devices, None, out, config,
                                              progress=killer)
        first_s = time.perf_counter() - started
        dataset = LatencyDataset.open(out)
        stored_first = len(dataset.records())
        failed_first = len(dataset.failures())
        hosts[3].start()
        started = time.perf_counter()
        rerun, _ = measure_fleet_into_dataset(subjects, devices, None, out, config)
        rerun_s = time.perf_counter() - started
        exact = one_record_per_job(dataset, subjects, names, settings)
        stored_final, failed_final = len(dataset.records()), len(dataset.failures())
        total_jobs = len(names) * jobs_per_device
        leftovers = sum(len(list(h.work_dir.iterdir())) for h in hosts)

        # --- 2. per-job overhead: the same specs through LocalTransport and through SSH -----
        local_work = tmp / "local-work"
        local = Device(name="local", transport=LocalTransport(), runtimes=("onnxruntime",),
                       work_dir=str(local_work), python=sys.executable)
        remote = devices[0]
        timings: dict[str, list[float]] = {"local": [], "ssh": []}
        for rep in range(args.repeats):
            for label, device in (("local", local), ("ssh", remote)):
                ds = LatencyDataset.create(tmp / f"ab-{label}-{rep}", {})
                t0 = time.perf_counter()
                summary = run_campaign(subjects, [device], ["onnxruntime"], ds,
                                       CampaignConfig(settings=settings,
                                                      batch_size=args.batch_size,
                                                      calibration_runs=0, drift_retries=0))
                timings[label].append((time.perf_counter() - t0) / summary.measured)
        # The transport itself: a no-op command and a 100 kB push, 20 times each.
        blob = tmp / "blob"
        blob.write_bytes(b"\0" * 100_000)
        micro: dict[str, dict[str, float]] = {}
        for label, device in (("local", local), ("ssh", remote)):
            t = device.transport
            cmd, push = [], []
            for i in range(20):
                t0 = time.perf_counter()
                t.run(["true"], 30)
                cmd.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                t.push(blob, f"{device.work_dir}/blob-{i}")
                push.append(time.perf_counter() - t0)
            t.run(["sh", "-c", 'rm -f "$1"/blob-*', "rm", device.work_dir], 30)
            micro[label] = {"cmd_ms": statistics.median(cmd) * 1e3,
                            "push_ms": statistics.median(push) * 1e3}
    finally:
        for host in hosts:
            host.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    local_ms = statistics.median(timings["local"]) * 1e3
    ssh_ms = statistics.median(timings["ssh"]) * 1e3
    spread = {k: f"{min(v) * 1e3:.1f}-{max(v) * 1e3:.1f}" for k, v in timings.items()}
    pushes = args.batch_size + 4
    extra_batch_ms = (3 * (micro["ssh"]["cmd_ms"] - micro["local"]["cmd_ms"])
                      + pushes * (micro["ssh"]["push_ms"] - micro["local"]["push_ms"]))
    body = f"""
Four real OpenSSH servers on 127.0.0.1 (`tests/standins/sshd_host.py`; key-only login, host
keys checked against a known_hosts file) act as four Linux devices running the latbench agent
with ONNX Runtime; all four share this machine's 2 cores. {jobs_per_device} kernels of the
`quick` plan per device, batches of {args.batch_size}, settings `{settings.key("onnxruntime")}`.

**Fault tolerance.** dev3's sshd (listener, sessions and the running agent) was SIGKILLed after
{killer.seen} of its {batches} batches.

| run | jobs | stored ok | failed | seconds |
| --- | ---: | ---: | ---: | ---: |
| first (dev3 killed midway) | {total_jobs} | {stored_first} | {failed_first} | {first_s:.1f} |
| rerun (dev3 back) | {total_jobs} | {stored_final} | {failed_final} | {rerun_s:.1f} |

The rerun skipped the {rerun.skipped} stored jobs and measured {rerun.measured}; afterwards the
dataset holds **{"exactly one record per job" if exact else "NOT one record per job"}**
({stored_final} records for {total_jobs} jobs, {failed_final} failures left), and
{leftovers} files remain in the devices' work dirs.

**Per-job overhead, SSH vs local** (same {jobs_per_device} kernels and settings, one device,
A/B alternated {args.repeats} times in this run, medians; wall time of `run_campaign` per job):

| path | ms per job (median) | range over repeats | no-op command ms | 100 kB push ms |
| --- | ---: | ---: | ---: | ---: |
| local (subprocess) | {local_ms:.1f} | {spread["local"]} | {micro["local"]["cmd_ms"]:.1f} | \
{micro["local"]["push_ms"]:.2f} |
| SSH (paramiko, loopback) | {ssh_ms:.1f} | {spread["ssh"]} | {micro["ssh"]["cmd_ms"]:.1f} | \
{micro["ssh"]["push_ms"]:.2f} |

SSH / local per job: **{ssh_ms / local_ms:.2f}x** ({ssh_ms - local_ms:+.1f} ms per job). A batch
costs three commands (mkdir, agent, rm) and {pushes} file pushes (agent, models, two probes,
request) whatever the transport, so from the transport figures SSH adds about
3 x {micro["ssh"]["cmd_ms"] - micro["local"]["cmd_ms"]:.1f} + {pushes} x \
{micro["ssh"]["push_ms"] - micro["local"]["push_ms"]:.1f} = {extra_batch_ms:.0f} ms per batch,
{extra_batch_ms / args.batch_size:.1f} ms per job: small against the agent's start-up and the
timing itself, and of the order of the run-to-run noise on this shared 2-core machine (see the
ranges). Loopback hides network latency: on a real network add about three round trips plus the
models' transfer time per batch. The test sshd gives its user a clean HOME; a login shell that
sources a slow ~/.bashrc (this machine's runs `pyenv init`, about 0.25 s) adds that to every
command. TCP_NODELAY matters: without it each push after a command waited ~45 ms on Nagle's
algorithm and delayed ACKs (measured while writing this benchmark; now set on every connection).
"""
    publish("campaign_ssh", "Fleet campaign over SSH: fault tolerance and overhead", body,
            write=exact and not args.no_write)
    if not exact:
        raise SystemExit("the rerun did not leave exactly one record per job")


if __name__ == "__main__":
    main()
