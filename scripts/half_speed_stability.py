"""Six measurements of the bf16 (or fp16) matmul speed-up, each in a fresh process as a run
makes it, while a busy loop keeps another core loaded: the check that the figure
`lleval.hardware.half_matmul_speed` reports is stable on a busy machine (issue 30: six runs
once read 2.44, 30.6, 0.52, 3.97, 1.18 and 2.01).

Run: ``python scripts/half_speed_stability.py [bfloat16|float16] [--idle]`` (a few seconds).
Prints the CPU, each run's figure, spread and rounds, and the largest over the smallest figure.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = (
    "import json, sys, time\n"
    "from lleval.threads import cap_torch_threads\n"
    "cap_torch_threads()\n"
    "from lleval.hardware import half_matmul_speed\n"
    "t = time.perf_counter(); s = half_matmul_speed(sys.argv[1]); wall = time.perf_counter() - t\n"
    "print(json.dumps({'speedup': s.speedup, 'low': s.low, 'high': s.high, 'rounds': s.rounds, 'wall': wall,\n"
    "                  'slower': s.clearly_slower, 'sentence': s.sentence(sys.argv[1])}))\n"
)


def main() -> None:
    from lleval.hardware import cpu_description

    dtype = next((a for a in sys.argv[1:] if not a.startswith("--")), "bfloat16")
    busy = None if "--idle" in sys.argv else subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        runs = [json.loads(subprocess.run([sys.executable, "-c", PROBE, dtype], capture_output=True, text=True,
                                          check=True).stdout) for _ in range(6)]
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    print(f"{cpu_description()}; {'idle' if busy is None else 'a busy loop on another core'}; {dtype}")
    for run in runs:
        print(f"  {run['speedup']:.2f}x (spread {run['low']:.2f}-{run['high']:.2f}, {run['rounds']} rounds, "
              f"{run['wall'] * 1000:.0f} ms){'  warns: slower' if run['slower'] else ''}")
    figures = [run["speedup"] for run in runs]
    print(f"largest / smallest: {max(figures) / min(figures):.2f}")


if __name__ == "__main__":
    main()
