"""Zero-cost proxies against NAS-Bench-Macro accuracy: Spearman rank correlation of each proxy
(and the vote) with the benchmark's CIFAR-10 accuracy, on a random sample of architectures.

Every architecture is scored at initialisation (one seed for all) on one batch of 32x32 images:
scikit-learn digits upsampled (the default) or CIFAR-like random images (--data random).

    .venv/bin/python benchmarks/proxies.py                 # 200 architectures, digits
    .venv/bin/python benchmarks/proxies.py --archs 50 --data random
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import publish  # noqa: E402

from latbench.bench.spaces import get_space  # noqa: E402
from latbench.bench.spaces.nasbench_macro import load_accuracy_table  # noqa: E402
from latbench.search.data import batch_of, digits, random_batch  # noqa: E402
from latbench.search.proxies import PROXIES, spearman, vote  # noqa: E402
from latbench.search.proxies import score as proxy_score  # noqa: E402

DATA_DIR = ROOT.parent / "shared" / "data"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--data", choices=("digits", "random"), default="digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = get_space("nasbench-macro")
    accuracy = load_accuracy_table(DATA_DIR)
    rng = np.random.default_rng(args.seed)
    codes = rng.choice(sorted(accuracy), size=args.archs, replace=False)
    archs = [space.decode(str(c)) for c in codes]
    truth = np.array([accuracy[str(c)] for c in codes])
    batch = (batch_of(digits(32, seed=args.seed).train, args.batch, seed=args.seed)
             if args.data == "digits" else random_batch(args.batch, 32, 10, args.seed))
    names = list(PROXIES)
    scores = {n: np.zeros(len(archs)) for n in names}
    seconds = {n: 0.0 for n in names}
    started = time.perf_counter()
    for i, arch in enumerate(archs):
        for name in names:
            t0 = time.perf_counter()
            scores[name][i] = proxy_score(space, arch, [name], batch, args.seed)[name]
            seconds[name] += time.perf_counter() - t0
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{len(archs)} architectures, {time.perf_counter() - started:.0f} s",
                  flush=True)
    scores["vote"] = vote(scores)
    rows = sorted(((n, spearman(scores[n], truth), seconds.get(n)) for n in scores),
                  key=lambda r: -r[1])
    lines = [f"{args.archs} random NAS-Bench-Macro architectures (seed {args.seed}); true "
             f"accuracy: the benchmark's mean CIFAR-10 test accuracy. Proxies scored at "
             f"initialisation on one batch of {args.batch} "
             f"{'digits images upsampled to 32x32' if args.data == 'digits' else 'random images'}"
             f" (one thread). The vote is the mean rank of synflow, jacob_cov and snip.", "",
             "| proxy | Spearman vs accuracy | seconds per architecture |", "|---|---:|---:|"]
    for name, rho, sec in rows:
        per = "-" if sec is None else f"{sec / len(archs):.3f}"
        lines.append(f"| {name} | {rho:.3f} | {per} |")
    lines += ["", "For comparison, the number of parameters of the same architectures: "
              f"Spearman {spearman(_params(space, archs), truth):.3f}."]
    publish("search_proxies", "Zero-cost proxies vs NAS-Bench-Macro accuracy", lines,
            write=not args.no_write)


def _params(space, archs) -> np.ndarray:
    return np.array([sum(p.numel() for p in space.to_torch(a).parameters()) for a in archs],
                    dtype=float)


if __name__ == "__main__":
    main()
