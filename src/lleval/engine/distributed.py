"""Data parallelism under the launchers users already have (torchrun, accelerate launch).

When the torch.distributed environment variables are present (``RANK``,
``WORLD_SIZE`` > 1, ``MASTER_ADDR``, ``MASTER_PORT``), lleval joins the
process group (NCCL on GPUs, gloo on CPU). Every rank reads and tokenizes the
same data and forms the same batches a single process would; batches are
shared among ranks by token count (`lleval.engine.scoring.assign_batches`), and the
window results are exchanged after each block. Every window therefore meets
the same batch-mates as in a single-process run and the numbers are
identical; only rank 0 prints, shows progress and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class DistContext:
    """This process's rank in an initialised process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, shows progress and writes files."""
        return self.rank == 0

    def exchange(self, results: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """All-gather every rank's window results (a few bytes per scored token)."""
        merged: dict[int, np.ndarray] = {}
        for part in self.all_gather(results):
            merged.update(part)
        return merged

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order."""
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def describe(self) -> dict[str, Any]:
        """The report's ``distributed`` block."""
        return {"world_size": self.world_size, "backend": self.backend, "work_split": "batches by token count"}


def launched_world_size() -> int:
    """WORLD_SIZE set by a launcher, or 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched_as_main() -> bool:
    """Whether this process is rank 0 of what a launcher started (a process started alone is):
    the one that prints and writes files, before or without a process group."""
    return os.environ.get("RANK", "0") == "0"


def from_env() -> DistContext | None:
    """Join the process group a launcher set up, or None when running alone."""
    if launched_world_size() <= 1 or "RANK" not in os.environ:
        return None
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)
