"""``--batch-size auto``: how many windows go into one forward pass.

A batch's working set is the model's activations for its tokens (the weights
are already in memory, and logits are held one slice of positions at a time),
so "auto" turns a memory budget into a token budget (``max_batch_tokens``):

- on a GPU, 70% of the memory free once the model is loaded;
- on a CPU, a quarter of the memory available to this process (cgroup-aware),
  and never more than `CPU_MAX_BATCH_TOKENS`: measured here
  (`scripts/bench_batch_shapes.py`, SmolLM2, 2 cores), 8 windows of 400 tokens
  ran at 190 tokens/s one at a time, 196 two at a time, 192 four at a time
  and 191 all eight together (medians of 3 alternated rounds; two at a time
  was also best in an earlier run of 5): past about a thousand tokens a
  batch's activations leave the cache and it gets no faster.

The engine also backs off when a batch still runs out of memory (see
`lleval.scoring`): the batch is split and the split size is kept for the
rest of the run, so "auto" never needs to be exact.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Rows (windows) an "auto" batch may hold at most.
AUTO_MAX_ROWS = 256
#: Padded tokens an "auto" batch may hold at most on a CPU.
CPU_MAX_BATCH_TOKENS = 1024
GPU_BUDGET_SHARE = 0.7
CPU_BUDGET_SHARE = 0.25


@dataclass(frozen=True)
class Batching:
    """What the engine is given: rows per batch and (if any) a padded-token cap."""

    batch_size: int
    max_batch_tokens: int | None
    auto: bool = False
    budget_bytes: int | None = None  # the memory budget "auto" sized the batch for

    def describe(self) -> dict[str, Any]:
        """The report's view of it: every field."""
        return dataclasses.asdict(self)


def available_memory_bytes(proc: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Memory this process may still use: MemAvailable, capped by a cgroup v2 limit; None if unknown."""
    available: int | None = None
    try:
        for line in proc.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        available = None
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        current = int((cgroup / "memory.current").read_text())
        if limit != "max":
            room = max(0, int(limit) - current)
            available = room if available is None else min(available, room)
    except (OSError, ValueError):
        pass
    return available


def bytes_per_token(config: Any, element_bytes: int, logits_held: int = 0) -> int:
    """Activation bytes one token of a batch needs at the widest point of a decoder layer.

    The residual stream, the attention projections and the MLP's gate, up and
    activated tensors are alive together (``4 x hidden + 3 x intermediate``),
    doubled for the temporaries of norms and rotary embeddings. ``logits_held``
    is the vocabulary size when the model's own forward returns logits for
    every scored position (architectures without a plain output projection).
    """
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 1024)
    intermediate = int(getattr(config, "intermediate_size", 0) or getattr(config, "n_inner", 0) or 4 * hidden)
    return 2 * (4 * hidden + 3 * intermediate) * element_bytes + 4 * logits_held


def auto_batching(
    per_token: int, device: str, available: int | None = None, max_length: int | None = None
) -> Batching:
    """A `Batching` whose batches fit the memory budget of ``device``.

    ``available`` overrides the measured free memory (for tests). The token
    cap is never below ``max_length``: one full window always fits a batch.
    """
    if device.startswith("cuda"):
        if available is None:
            import torch

            available, _total = torch.cuda.mem_get_info(torch.device(device))
        budget = int(available * GPU_BUDGET_SHARE)
        tokens = budget // max(1, per_token)
    else:
        if available is None:
            available = available_memory_bytes() or 4 << 30
        budget = int(available * CPU_BUDGET_SHARE)
        tokens = min(CPU_MAX_BATCH_TOKENS, budget // max(1, per_token))
    tokens = max(tokens, max_length or 1)
    return Batching(batch_size=AUTO_MAX_ROWS, max_batch_tokens=tokens, auto=True, budget_bytes=budget)
