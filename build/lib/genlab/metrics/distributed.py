"""Split metric work across ranks so that the result does not depend on the number of ranks.

Work is cut into fixed-size chunks whose boundaries and random seeds depend only on the chunk
index; ranks take chunks round-robin and the results are gathered back in chunk order. A
2-process run therefore computes exactly the same chunks as a 1-process run.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from genlab.utils import seeded


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_chunks(n_items: int, chunk_size: int) -> list[tuple[int, int, int]]:
    """(chunk_id, start, stop) of the chunks this rank computes."""
    rank, world = rank_and_world()
    n_chunks = (n_items + chunk_size - 1) // chunk_size
    return [
        (j, j * chunk_size, min((j + 1) * chunk_size, n_items)) for j in range(rank, n_chunks, world)
    ]


def map_chunks(
    n_items: int, chunk_size: int, seed: int, fn: Callable[[int, int], Tensor]
) -> Tensor:
    """Compute ``fn(start, stop)`` for every chunk (seeded by its index) on the ranks that own
    it, and return the concatenation of all chunks, in order, on every rank (on the CPU)."""
    local = {}
    for chunk_id, start, stop in my_chunks(n_items, chunk_size):
        with seeded(seed + chunk_id):
            local[chunk_id] = fn(start, stop).detach().cpu()
    if is_distributed():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        for part in gathered:
            local.update(part)
    return torch.cat([local[j] for j in sorted(local)], dim=0)
