"""``torch.distributed`` helpers: the rank, and a sum over ranks (both no-ops without a process group)."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["world_rank", "all_reduce_sum"]


def world_rank() -> int:
    """This process's rank, 0 when ``torch.distributed`` is not initialised."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks in place when ``torch.distributed`` runs with more than one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
