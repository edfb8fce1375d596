"""Which batch shapes score fastest on this CPU, and whether packing short documents pays.

1. Tokens/s of lleval's scorer (forward, logits at every position, log-softmax)
   for batches of ``rows x width`` tokens, best of a few runs each: the
   measurement behind `lleval.plan.batching` (the CPU token budget and the cost of
   a forward pass).
2. Decoder-only tokens/s of the same short documents as a length-sorted batch
   (one row each, no padding) against packed rows (several documents in one
   row, position ids restarting per document, attention kept within each, as
   transformers does for packed sequences).

    .venv/bin/python scripts/bench_batch_shapes.py             # about 3 minutes here
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch


def best_rate(fn: Any, tokens: int, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return tokens / best


def shapes(loaded: Any, repeats: int, budget: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    out = {}
    for width in (16, 32, 64, 128, 256, 512, 1024, 2048):
        for rows in (1, 2, 4, 8, 16, 32, 64):
            if rows * width > budget or (rows > 1 and rows * width > 4096):
                break
            x = torch.randint(0, loaded.vocab or 1000, (rows, width), generator=generator)
            ones, mask = torch.ones_like(x), torch.ones_like(x, dtype=torch.bool)
            out[f"{rows}x{width}"] = best_rate(lambda: loaded.scorer(x, ones, x, mask), rows * width, repeats)
        print(f"width {width:5}: " + ", ".join(f"{k.split('x')[0]} rows {v:.0f}" for k, v in out.items()
                                               if k.endswith(f"x{width}")), flush=True)
    return out


def packing(loaded: Any, repeats: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1)
    model = loaded.model
    out = {}
    with torch.inference_mode():
        for rows, width in ((64, 16), (32, 32), (16, 64), (8, 128)):
            x = torch.randint(0, loaded.vocab or 1000, (rows, width), generator=generator)
            packed, positions = x.reshape(1, -1), torch.arange(width).repeat(rows).unsqueeze(0)
            batched = best_rate(lambda: model.base_model(input_ids=x, use_cache=False), rows * width, repeats)
            packed_rate = best_rate(lambda: model.base_model(input_ids=packed, position_ids=positions, use_cache=False),
                                    rows * width, repeats)
            out[f"{rows} documents of {width}"] = {"batched": batched, "packed": packed_rate}
            print(f"{rows} documents of {width} tokens: batched {batched:.0f} tok/s, packed in one row "
                  f"{packed_rate:.0f} tok/s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=int, default=4096, help="largest rows x width to try")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from lleval.threads import cap_torch_threads

    cap_torch_threads()  # as the CLI does: the library leaves torch's threads alone
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from lleval.commands.score import load
    from lleval.config import EvalConfig
    from lleval.hardware import cpu_features

    loaded = load(EvalConfig())
    print(f"CPU {cpu_features()['model']}, {torch.get_num_threads()} threads, {loaded.info.dtype}")
    results = {"cpu": cpu_features(), "shapes": shapes(loaded, args.repeats, args.budget),
               "packing": packing(loaded, args.repeats)}
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
