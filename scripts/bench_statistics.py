"""Cost of --membership and --calibration: tokens/s of the real model (SmolLM2-135M, float32, the
built-in sample) plain vs each flag vs both, alternated over several rounds in one run, with the CPU named.

    PYTHONPATH=src python scripts/bench_statistics.py [--rounds 3] [--limit 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics

from lleval.commands.score import evaluate, load
from lleval.config import EvalConfig

VARIANTS = {"plain": {}, "membership": {"membership": True}, "calibration": {"calibration": True},
            "both": {"membership": True, "calibration": True}}


def cpu_name() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    """Print a table of median tokens/s per variant and its cost against plain."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=8)
    args = parser.parse_args()
    base = EvalConfig(dtype="float32", limit=args.limit, bootstrap=0, max_length=512, quiet=True)
    loaded = load(base)
    speeds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, flags in VARIANTS.items():
            report = evaluate(dataclasses.replace(base, **flags), loaded=loaded)
            speeds[name].append(report.timing.tokens_per_second)
    plain = statistics.median(speeds["plain"])
    print(f"CPU: {cpu_name()}; model {loaded.name}; {args.rounds} rounds alternated")
    print(f"{'variant':<12} {'tokens/s (median)':>18} {'cost vs plain':>14}")
    for name, values in speeds.items():
        median = statistics.median(values)
        print(f"{name:<12} {median:>18.0f} {100 * (plain - median) / plain:>13.1f}%")


if __name__ == "__main__":
    main()
