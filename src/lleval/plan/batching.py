"""How windows are grouped into forward passes.

The default (``--batch-size auto``) is a token budget per forward pass, sized
per device, and batches chosen to waste as little as possible: windows are
sorted by length and cut into consecutive groups that minimise the padded
tokens computed plus a fixed cost per forward pass (`make_batches`). Padding
is paid only where it saves more than a forward pass costs, so a long window
runs alone, exactly as at batch size 1, and many short ones share a pass.

- **CPU**: at most `CPU_BATCH_TOKENS` padded tokens per pass, and one pass
  costs `CPU_FORWARD_OVERHEAD_TOKENS` tokens' worth of time: throughput peaks
  once a pass holds 512 to 1,024 tokens and falls past that (the activations
  leave the cache), and a pass of w tokens takes about w + 17 tokens' time
  (`scripts/bench_batch_shapes.py`; the figures, per CPU, are in the README's
  "Performance").
- **GPU**: 70% of the memory free once the model is loaded, in tokens of
  activations (`bytes_per_token`), and a pass costs `GPU_FORWARD_OVERHEAD_TOKENS`
  (a forward pass of a small batch is bound by kernel launches: about 3 ms for
  30 layers, in which a large GPU computes thousands of tokens). Not measured
  here (no GPU was available): an estimate.

An explicit ``--batch-size N`` keeps the old rule: up to N windows per pass,
filled greedily longest first (and ``--max-batch-tokens`` caps either). The
engine also backs off when a batch still runs out of memory (see
`lleval.engine.scoring`): the batch is split and the split size is kept for the rest
of the run, so the budget never needs to be exact.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

#: Rows (windows) a batch may hold at most under "auto".
AUTO_MAX_ROWS = 256
#: Padded tokens per forward pass on a CPU.
CPU_BATCH_TOKENS = 1024
#: What one more forward pass costs on a CPU, in tokens (see the module docstring).
CPU_FORWARD_OVERHEAD_TOKENS = 32
#: What one more forward pass costs on a GPU, in tokens (an estimate).
GPU_FORWARD_OVERHEAD_TOKENS = 4096
GPU_BUDGET_SHARE = 0.7
CPU_BUDGET_SHARE = 0.25


@dataclass(frozen=True)
class Batching:
    """What the engine is given: rows and padded tokens per pass at most, and (when above
    zero) the cost of a pass, which makes batches minimise padding plus passes."""

    batch_size: int
    max_batch_tokens: int | None = None
    auto: bool = False
    budget_bytes: int | None = None  # the memory budget "auto" sized the batch for
    overhead_tokens: int = 0  # 0: fill batches greedily, longest first

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
    per_token: int | None, accelerator: bool, available: int | None = None, max_length: int | None = None
) -> Batching:
    """The default `Batching` for a model's device: a token budget and the cost of a pass.

    ``per_token`` is the activation estimate (`bytes_per_token`; None for
    fakes, which then get the CPU rule without a memory cap); ``available``
    is the free memory of the device (an accelerator's, as its backend
    measured it; None, unknown, gets the CPU rule, which measures this machine's
    memory). The token budget is
    never below ``max_length``: one full window always fits a batch.
    """
    if accelerator and available is not None:
        budget = int(available * GPU_BUDGET_SHARE)
        tokens = budget // max(1, per_token or 1)
        overhead = GPU_FORWARD_OVERHEAD_TOKENS
    else:
        if available is None:
            available = available_memory_bytes() or 4 << 30
        budget = int(available * CPU_BUDGET_SHARE)
        tokens = CPU_BATCH_TOKENS if per_token is None else min(CPU_BATCH_TOKENS, budget // max(1, per_token))
        overhead = CPU_FORWARD_OVERHEAD_TOKENS
    tokens = max(tokens, max_length or 1)
    return Batching(AUTO_MAX_ROWS, tokens, auto=True, budget_bytes=budget, overhead_tokens=overhead)


def make_batches(lengths: Sequence[int], batching: Batching) -> list[list[int]]:
    """Indices of windows (given their input lengths), longest first, cut into batches.

    No batch holds more than ``batch_size`` windows or (when set) more than
    ``max_batch_tokens`` padded tokens, except that a window longer than the
    budget gets a batch of its own. With ``overhead_tokens`` zero, batches are
    filled greedily; otherwise the cut minimises the padded tokens computed
    plus ``overhead_tokens`` per batch (dynamic programming over the sorted
    windows: a batch is always a run of consecutive ones, and the best cut of
    the first ``j`` windows extends the best cut of a shorter prefix).
    """
    order = sorted(range(len(lengths)), key=lambda j: -lengths[j])  # stable: ties keep input order
    widths = [lengths[j] for j in order]
    if batching.overhead_tokens <= 0:
        runs = _greedy_runs(widths, batching.batch_size, batching.max_batch_tokens)
    else:
        runs = _cheapest_runs(widths, batching.batch_size, batching.max_batch_tokens, batching.overhead_tokens)
    return [order[start:end] for start, end in runs]


def _greedy_runs(widths: list[int], max_rows: int, budget: int | None) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    start = 0
    for end in range(1, len(widths) + 1):
        rows = end - start
        if rows > max_rows or (budget is not None and rows > 1 and rows * widths[start] > budget):
            runs.append((start, end - 1))
            start = end - 1
    if widths:
        runs.append((start, len(widths)))
    return runs


#: Ends of batches the planner handles per vectorised step (see `_cheapest_runs`).
PLAN_BLOCK = 32


def _cheapest_runs(widths: list[int], max_rows: int, budget: int | None, overhead: int) -> list[tuple[int, int]]:
    """The cut of the sorted ``widths`` into runs that minimises padded tokens plus
    ``overhead`` per run (see `make_batches`), the earliest start winning ties.

    ``best[end]``, the cheapest cut of the first ``end`` windows, is the minimum
    over starts ``s`` of ``best[s] + (end - s) * widths[s] + overhead``. One numpy
    step per window cost 11 to 20 us: 0.55 to 1 s for the 50,000 windows of 1M
    tokens of 20-token windows at a GPU budget (256 rows). So ends are taken
    ``PLAN_BLOCK`` at a time: the starts before the block are compared for all
    its ends at once (`_block_candidates`), and only the few starts inside the
    block in Python: 0.15 s per 1M tokens on the same CPU
    (``scripts/planner_speed.py``). Costs are exact integers, so the cut is the one
    the step-by-step loop chose. The valid starts of an end are a contiguous
    run ending at ``end - 1``: ``rows * widths[s]`` shrinks as ``s`` grows.
    """
    import numpy as np

    n = len(widths)
    w = np.asarray(widths, dtype=np.int64)
    # rows a batch ending at end may hold, bounded by its narrowest window, widths[end - 1]
    caps = np.full(n, max_rows, dtype=np.int64) if budget is None else np.maximum(
        1, np.minimum(max_rows, budget // np.maximum(1, w)))
    cap_list = caps.tolist()
    # pre[s] = best[s] - s * widths[s] + overhead, so a batch (s, end) costs pre[s] + end * widths[s]
    pre = [0] * (n + 1)
    pre[0] = overhead
    pre_np = np.zeros(n + 1, dtype=np.int64)
    cut = [0] * (n + 1)
    best_end = 0
    for first in range(1, n + 1, PLAN_BLOCK):
        last = min(first + PLAN_BLOCK, n + 1)
        pre_np[first - 1] = pre[first - 1]
        lo = max(0, first - max_rows)
        outside_cost, outside_start = _block_candidates(pre_np[lo:first], w[lo:first], lo, first, last,
                                                        caps[first - 1 : last - 1], budget)
        for i, end in enumerate(range(first, last)):
            best_end, start = outside_cost[i], outside_start[i]
            for s in range(max(first, end - cap_list[end - 1]), end):
                cost = pre[s] + end * widths[s]
                if cost < best_end and (budget is None or s == end - 1 or (end - s) * widths[s] <= budget):
                    best_end, start = cost, s
            cut[end] = start
            if end < n:
                pre[end] = best_end - end * widths[end] + overhead
        pre_np[first:last] = pre[first:last]
    runs = []
    end = n
    while end > 0:
        runs.append((cut[end], end))
        end = cut[end]
    return runs[::-1]


def _block_candidates(pre: Any, w: Any, lo: int, first: int, last: int, caps: Any,
                      budget: int | None) -> tuple[list[int], list[int]]:
    """For each end in ``first..last-1``: the cheapest allowed start among ``lo..first-1``
    and its cost (the earliest on ties); one (ends x starts) array, a few numpy calls."""
    import numpy as np

    starts = np.arange(lo, first)
    ends = np.arange(first, last)[:, None]
    rows = ends - starts[None, :]  # (E, S), every entry >= 1
    allowed = rows <= caps[:, None]
    if budget is not None:
        allowed &= (rows * w[None, :] <= budget) | (rows == 1)
    cost = np.where(allowed, pre[None, :] + ends * w[None, :], np.iinfo(np.int64).max)
    k = cost.argmin(axis=1)  # the first minimum: the earliest start
    return cost[np.arange(last - first), k].tolist(), starts[k].tolist()
