"""Speed of two source trees of lleval, measured in one run (a refactor's before and after).

Runs ``lleval score`` as a whole process from each tree in turn (``PYTHONPATH``
set to its ``src``), alternating ``--rounds`` times, on the built-in SmolLM2
with the model cache warm, on two corpora cut from the docstrings of Python's
standard library (``short``: many documents of mixed length; ``long``: a few
documents of several windows), and prints for each tree the best whole-process
seconds and the best scoring throughput (``timing.tokens_per_second``), and
checks that both trees report the same totals. This machine is noisy: only
alternated runs in one invocation compare.

    .venv/bin/python scripts/bench_trees.py BEFORE_DIR AFTER_DIR --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import stdlib_docstrings  # noqa: E402


def write_corpora(folder: Path) -> dict[str, Path]:
    modules = stdlib_docstrings()
    short = [" ".join(docs)[:1200] for _, docs in modules[:40]]  # about 300 tokens each
    long = [" ".join(" ".join(docs) for _, docs in modules[40:120])[i * 12000:(i + 1) * 12000] for i in range(2)]
    paths = {}
    for name, texts in (("short", short), ("long", long)):
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps({"text": t}) + "\n" for t in texts if t.strip()))
    return paths


def run(tree: Path, data: Path, out: Path) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lleval", "score", "-d", str(data), "-q", "--bootstrap", "0",
                    "-o", str(out)], check=True, env=env, capture_output=True)
    return time.perf_counter() - started, json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpora = write_corpora(Path(tmp))
        for tree in args.trees:  # warm the model cache and the page cache
            run(tree, corpora["short"], Path(tmp) / "warm.json")
        best: dict[tuple[str, str], tuple[float, float]] = {}
        totals: dict[tuple[str, str], dict] = {}
        for _ in range(args.rounds):
            for name, data in corpora.items():
                for tree in args.trees:
                    seconds, report = run(tree, data, Path(tmp) / "r.json")
                    key = (str(tree), name)
                    old = best.get(key, (float("inf"), 0.0))
                    best[key] = (min(old[0], seconds), max(old[1], report["timing"]["tokens_per_second"]))
                    totals[key] = report["totals"]
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                    if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        cpu = f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family')}, model {info.get('model')})"
        print(f"{cpu}, {os.cpu_count()} CPUs, best of {args.rounds} alternated rounds")
        for name in corpora:
            a, b = (best[(str(t), name)] for t in args.trees)
            same = totals[(str(args.trees[0]), name)] == totals[(str(args.trees[1]), name)]
            print(f"{name:6s} process {a[0]:6.2f} s -> {b[0]:6.2f} s ({b[0] / a[0]:.3f}x); scoring "
                  f"{a[1]:7.0f} -> {b[1]:7.0f} tokens/s ({b[1] / a[1]:.3f}x); totals identical: {same}")


if __name__ == "__main__":
    main()
