"""Which batch shape scores fastest on this machine: the same 8 windows run as
1, 2, 4 or 8 per forward pass, alternated round by round, median per shape.

This is the measurement behind `lleval.batching.CPU_MAX_BATCH_TOKENS`.

    .venv/bin/python scripts/bench_batch_shapes.py --rounds 5 --length 400    # about 4 minutes here
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--length", type=int, default=400, help="tokens per window")
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from lleval.api import load
    from lleval.config import EvalConfig

    loaded = load(EvalConfig())
    ids = torch.randint(0, loaded.vocab or 1000, (args.windows, args.length), generator=torch.Generator().manual_seed(0))
    sizes = [b for b in (1, 2, 4, 8, 16) if b <= args.windows]

    def run(rows: int) -> float:
        started = time.perf_counter()
        for start in range(0, args.windows, rows):
            x = ids[start : start + rows]
            loaded.scorer(x, torch.ones_like(x), x, torch.ones_like(x, dtype=torch.bool))
        return args.windows * args.length / (time.perf_counter() - started)

    results: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(args.rounds):
        for rows in sorted(sizes, key=lambda b: -b):
            results[rows].append(run(rows))
    summary = {
        f"{rows} x {args.length} tokens": {"median_tokens_per_second": statistics.median(v), "runs": v}
        for rows, v in results.items()
    }
    for name, row in summary.items():
        print(f"{name:>18}: {row['median_tokens_per_second']:.0f} tokens/s (median of {args.rounds})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
