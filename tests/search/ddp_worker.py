"""Run by `torchrun --nproc_per_node 2` from test_search_ddp.py: train a small supernet with
DistributedDataParallel (gloo) and save what each rank ends with."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from latbench.bench.spaces import get_space
from latbench.search.data import digits
from latbench.search.latency import LatencyTable
from latbench.search.supernet import SupernetConfig, SupernetSearch, init_distributed


def main(out: Path, mode: str) -> None:
    torch.set_num_threads(1)
    dist_info = init_distributed("gloo")
    assert dist_info is not None and dist_info.world_size == 2
    space = get_space("nasbench-macro", resolution=8)
    table = LatencyTable.from_flops(space, ms_per_gflop=100.0)
    config = SupernetConfig(mode=mode, epochs=2, warmup_epochs=1, max_steps=3, batch_size=16,
                            arch_lr=0.05, eval_batches=1, seed=11)
    search = SupernetSearch(space, table, table.fixed_ms + 0.3 * sum(max(r) for r in
                                                                    table.layer_ms),
                            config, dist_info)
    initial = {k: v.detach().clone() for k, v in search.supernet.state_dict().items()}
    search.train(digits(resolution=8, seed=0))
    torch.save({"state": search.supernet.state_dict(), "alpha": search.arch.alpha.detach(),
                "initial": initial, "history": search.history,
                "rank": dist_info.rank, "seen": search.sampled_paths},
               out / f"rank{dist_info.rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
