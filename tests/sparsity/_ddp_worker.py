"""Launched by tests/sparsity/test_schedules.py under ``torch.distributed.run`` (2 ranks, gloo).

Each rank prunes with every data-driven criterion on its own data, then runs gradual pruning inside
a DDP training loop; rank 0 writes every rank's masks to the path given as the first argument.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch
from torch import nn

import torchcompress as tc
from torchcompress.sparsity import GradualPruning, SparsitySchedule
from torchcompress.sparsity.masking import get_mask


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def rank_data(rank: int) -> list:
    g = torch.Generator().manual_seed(100 + rank)
    return [
        (torch.randn(4, 8, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(2)
    ]


def main(out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        results = {}
        for crit in ("taylor", "wanda", "fisher", "random"):
            m = model()
            tc.prune(
                m, tc.PruneConfig(sparsity=0.5, criterion=crit, scope="global"), rank_data(rank)
            )
            results[crit] = [get_mask(m[0]).clone(), get_mask(m[2]).clone()]
        # gradual pruning inside a DDP training loop
        m = model()
        ddp = nn.parallel.DistributedDataParallel(m)
        cb = GradualPruning(
            SparsitySchedule("linear", final=0.6, end_step=4, frequency=2),
            tc.PruneConfig(criterion="taylor"),
            data=rank_data(rank),
        )
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        state = SimpleNamespace(model=ddp, total_steps=4)
        cb.on_train_begin(state)
        for x, y in rank_data(rank) * 2:
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
            cb.on_step_end(state)
        results["gradual"] = [get_mask(m[0]).clone(), get_mask(m[2]).clone()]
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, results)
        if rank == 0:
            torch.save(gathered, out)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
