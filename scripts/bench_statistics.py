"""Cost of --membership, --calibration and --save-reference: tokens/s of the real model (SmolLM2-135M,
float32, the built-in sample) plain vs each flag vs membership and calibration together, over several rounds
in one run, the order of the variants rotated each round (none always runs first), with the CPU named.

    PYTHONPATH=src python scripts/bench_statistics.py [--rounds 3] [--limit 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

from lleval.commands.score import evaluate, load
from lleval.config import EvalConfig
from lleval.hardware import cpu_description

VARIANTS = {"plain": {}, "membership": {"membership": True}, "calibration": {"calibration": True},
            "both": {"membership": True, "calibration": True}, "reference": {"save_reference": "ref.parquet"}}


def main() -> None:
    """Print a table of median tokens/s per variant and its cost against plain."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=8)
    args = parser.parse_args()
    base = EvalConfig(dtype="float32", limit=args.limit, bootstrap=0, max_length=512, quiet=True)
    loaded = load(base)
    speeds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                flags = {k: str(Path(folder) / v) if k == "save_reference" else v for k, v in VARIANTS[name].items()}
                report = evaluate(dataclasses.replace(base, **flags), loaded=loaded)
                speeds[name].append(report.timing.tokens_per_second)
    plain = statistics.median(speeds["plain"])
    print(f"CPU: {cpu_description()}; model {loaded.name}; {args.rounds} rounds, order rotated; {args.limit} documents")
    print(f"{'variant':<12} {'tokens/s (median)':>18} {'cost vs plain':>14}")
    for name, values in speeds.items():
        median = statistics.median(values)
        spread = f"{min(values):.0f}-{max(values):.0f}"
        print(f"{name:<12} {median:>18.0f} {100 * (plain - median) / plain:>13.1f}%   (rounds: {spread})")


if __name__ == "__main__":
    main()
