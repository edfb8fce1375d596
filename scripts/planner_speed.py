"""How long the batch planner (`lleval.plan.batching.make_batches`) takes per million tokens at
a GPU budget, against the stepwise loop it replaced (kept in tests/helpers).

The case the issue named: 1M tokens of 20-token windows (50,000 windows) and
a mixed one (1M tokens of windows of 1 to 20 tokens), planned for a
Llama-3.2-1B-shaped model in bf16 (``bytes_per_token``) with 70% of the free
GPU memory: the real free memory when CUDA is there, else ``--free-gib``
(136: an H200 once the 1B model is loaded). The planner is numpy on the CPU
either way, so this runs anywhere.

    .venv/bin/python scripts/planner_speed.py --json planner.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def free_bytes(free_gib: float) -> tuple[int, str]:
    """Free GPU memory and where the figure came from."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0] - 2.5e9), "cuda free memory less 2.5 GB for the 1B model"
    return int(free_gib * (1 << 30)), f"--free-gib {free_gib}"


def best_of(fn: Any, repeats: int) -> tuple[float, Any]:
    """Fastest of ``repeats`` timed calls (a shared machine: the minimum is the cost), and
    what the call returned."""
    times, result = [], None
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def measure(free_gib: float, repeats: int, stepwise: bool) -> dict[str, Any]:
    """Seconds per 1M tokens for each case, the new planner and (optionally) the old one,
    and whether both chose the same batches."""
    import random

    from helpers import stepwise_cheapest_runs
    from lleval.plan.batching import _cheapest_runs, auto_batching, bytes_per_token, make_batches

    per_token = bytes_per_token(SimpleNamespace(hidden_size=2048, intermediate_size=8192), 2)
    available, source = free_bytes(free_gib)
    batching = auto_batching(per_token, True, available=available, max_length=2048)
    rng = random.Random(0)
    cases = {"20-token windows": [20] * 50_000, "1-20 token windows": []}
    while sum(cases["1-20 token windows"]) < 1_000_000:
        cases["1-20 token windows"].append(rng.randint(1, 20))
    out: dict[str, Any] = {"batching": batching.describe(), "free_memory_source": source, "cases": {}}
    for name, lengths in cases.items():
        per_million = 1e6 / sum(lengths)
        widths = sorted(lengths, reverse=True)
        case: dict[str, Any] = {"windows": len(lengths), "tokens": sum(lengths)}
        seconds, batches = best_of(lambda: make_batches(lengths, batching), repeats)
        case.update(seconds_per_million_tokens=seconds * per_million, batches=len(batches))
        if stepwise:
            args = (widths, batching.batch_size, batching.max_batch_tokens, batching.overhead_tokens)
            seconds, old = best_of(lambda: stepwise_cheapest_runs(*args), 1)
            case["stepwise_seconds_per_million_tokens"] = seconds * per_million
            case["same_batches_as_stepwise"] = _cheapest_runs(*args) == old
        out["cases"][name] = case
    return out


def main() -> None:
    """Measure, print one line per case, write the JSON."""
    import platform

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--free-gib", type=float, default=136.0, help="free GPU memory to plan for without CUDA")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-stepwise", action="store_true", help="skip the old planner (about 1 s per case)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = measure(args.free_gib, args.repeats, not args.no_stepwise)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    result["cpu"] = cpu
    for name, case in result["cases"].items():
        old = case.get("stepwise_seconds_per_million_tokens")
        print(f"{name}: {case['seconds_per_million_tokens']:.3f} s per 1M tokens ({case['windows']} windows, "
              f"{case['batches']} batches)" + ("" if old is None else f"; stepwise {old:.3f} s, same batches: "
                                               f"{case['same_batches_as_stepwise']}") + f" on {cpu}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
