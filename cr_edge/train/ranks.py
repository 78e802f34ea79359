"""A rank's place in a process group, for the training loop: its data shard, rank 0's
word, and the DDP-wrapped forward. Apart from the launcher (``distributed``) so that the
loop and the launcher import one way only: launcher -> loop -> ranks."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cr_edge.nets import CRNet


@dataclass(frozen=True)
class Rank:
    """This process's place in an initialised process group."""

    rank: int
    world: int

    def shard(self, n: int, seed: int, epoch: int) -> list[int]:
        """This rank's training indices for ``epoch``: ``DistributedSampler`` (shuffled with
        ``seed + epoch``, padded so that every rank takes the same number of steps)."""
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(
            range(n), num_replicas=self.world, rank=self.rank, shuffle=True, seed=seed
        )
        sampler.set_epoch(epoch)
        return list(sampler)

    def from_rank0(self, value: float) -> float:
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, src=0)
        return float(t.item())


def ddp_forward(net: CRNet) -> Callable:
    """``net.forward_with_terms`` through DistributedDataParallel, so that the backward pass
    averages every gradient (task loss, DREG and range penalty alike) over the ranks."""
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    class _WithTerms(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.forward_with_terms(x)

    return DistributedDataParallel(_WithTerms())


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
