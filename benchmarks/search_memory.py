"""Peak training memory of the supernet modes against one sampled network of the same space.

Each configuration trains in a fresh process (so peaks do not mix): two weight updates (and, for
the supernets, two architecture updates) of the ProxylessNAS mobile space, batch of random
images. Reported: the growth of the process's resident set over its size before the model was
built (peak RSS via getrusage, so parameters, gradients, optimizer state and activations all
count), and the bytes autograd saves for backward in one weight update (activations only).

Targets (issue 5): two-path supernet <= 1.5x one sampled network; full (DARTS) mode grows with
the number of candidates per layer.

    .venv/bin/python benchmarks/search_memory.py            # resolution 128, batch 32
    .venv/bin/python benchmarks/search_memory.py --quick    # resolution 64, batch 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# candidate sets: (kernels, expansions) -> 2, 4 and 6 MBConv candidates (+ skip)
CANDIDATES = {2: ((3,), (3, 6)), 4: ((3, 5), (3, 6)), 6: ((3, 5, 7), (3, 6))}


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(cfg: dict) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from latbench.bench.spaces import Arch, get_space
    from latbench.search.latency import LatencyTable
    from latbench.search.supernet import SupernetConfig, SupernetSearch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    kernels, expansions = CANDIDATES[cfg["candidates"]]
    space = get_space("proxyless", resolution=cfg["resolution"], width_mult=1.0,
                      num_classes=10, kernels=kernels, expansions=expansions)
    table = LatencyTable.from_flops(space)
    x = torch.randn(cfg["batch"], 3, cfg["resolution"], cfg["resolution"])
    y = torch.randint(0, 10, (cfg["batch"],))
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    before, before_peak = rss_mb(), peak_mb()
    if cfg["mode"] == "single":
        model = space.to_torch(Arch(space.name, tuple(cfg["choices"]))).train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
        for step in range(2):
            with torch.autograd.graph.saved_tensors_hooks(pack if step == 0 else
                                                          (lambda t: t), lambda t: t):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        choices = cfg["choices"]
    else:
        search = SupernetSearch(space, table, float(np.mean([table.latency(space.sample(
            np.random.default_rng(i))) for i in range(50)])),
            SupernetConfig(mode=cfg["mode"], seed=0))
        params = {p.untyped_storage().data_ptr() for p in search.supernet.parameters()}
        choices = None
        for step in range(2):
            with torch.autograd.graph.saved_tensors_hooks(pack if step == 0 else
                                                          (lambda t: t), lambda t: t):
                _, sampled = search.weight_step(x, y)
            choices = choices or sampled
            search.arch_step(x, y)
    activations = sum(v for k, v in saved.items() if k not in params)
    return {**cfg, "rss_before_mb": before, "peak_before_mb": before_peak,
            "peak_mb": peak_mb(), "growth_mb": peak_mb() - before,
            "activation_mb": activations / 2**20,
            "choices": list(choices) if choices is not None else None}


def run_child(cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)],
                          capture_output=True, text=True, cwd=ROOT, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"child {cfg} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    resolution = args.resolution or (64 if args.quick else 128)
    batch = args.batch or (16 if args.quick else 32)
    rows = []
    for n in sorted(CANDIDATES):
        base = {"resolution": resolution, "batch": batch, "candidates": n}
        two_path = run_child({**base, "mode": "two_path"})
        single = run_child({**base, "mode": "single", "choices": two_path["choices"]})
        full = run_child({**base, "mode": "full"})
        for r in (single, two_path, full):
            print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v)
                              for k, v in r.items() if k != "choices"}), flush=True)
        rows.append((n, single, two_path, full))
    lines = ["| MBConv candidates per layer (+ skip) | one sampled network: growth MB "
             "(activations MB) | two-path supernet | full (DARTS) supernet | two-path / "
             "network | full / network |", "|---:|---:|---:|---:|---:|---:|"]
    for n, single, two_path, full in rows:
        lines.append(
            f"| {n} | {single['growth_mb']:.0f} ({single['activation_mb']:.0f}) | "
            f"{two_path['growth_mb']:.0f} ({two_path['activation_mb']:.0f}) | "
            f"{full['growth_mb']:.0f} ({full['activation_mb']:.0f}) | "
            f"**{two_path['growth_mb'] / single['growth_mb']:.2f}x** | "
            f"**{full['growth_mb'] / single['growth_mb']:.2f}x** |")
    worst = max(r[2]["growth_mb"] / r[1]["growth_mb"] for r in rows)
    full_ratios = [r[3]["growth_mb"] / r[1]["growth_mb"] for r in rows]
    body = f"""
ProxylessNAS mobile space (width 1.0, 21 searchable layers, 10 classes) at
{resolution}x{resolution}, batch {batch}, SGD with momentum, one thread. Each cell: peak RSS
growth of a fresh process over its size before the model was built (parameters + gradients +
optimizer state + activations), two weight updates plus, for supernets, two architecture
updates; in brackets the activations autograd saved in one weight update. The sampled network is
the one the two-path supernet sampled in its first weight update.

{chr(10).join(lines)}

Target: two-path <= 1.5x one sampled network: **{'met' if worst <= 1.5 else 'NOT met'}**
(worst {worst:.2f}x). Full mode grows with the number of candidates:
{' -> '.join(f'{r:.2f}x' for r in full_ratios)} for {', '.join(str(n) for n in CANDIDATES)}
candidates. The two-path supernet keeps one path of activations per weight update (its
activation bytes equal the sampled network's); what it adds is the other candidates' weights.
"""
    from _report import publish

    publish("search_memory", "Supernet training memory: two-path vs full vs one network", body,
            write=not args.no_write)


if __name__ == "__main__":
    main()
