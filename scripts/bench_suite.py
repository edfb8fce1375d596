"""A suite in one process against separate ``lleval score`` processes (issue 19's benchmark).

Three checkpoints x three held-out datasets, scored two ways in the same run,
alternated over ``--rounds``:

- suite: ONE process, ``lleval score -m C1 -m C2 -m C3 -d A -d B -d C -o suite.json``;
- separate: NINE processes, ``lleval score -m CI -d D -o cell.json`` each, wall times summed.

Each figure is the wall time of whole processes (``time.perf_counter`` around
``subprocess.run``: interpreter start, imports, loads, tokenization, scoring,
bootstrap, writing). It then checks that every suite cell's report equals the
separate run's (totals, metrics, ``by_context_length`` and ``documents`` rows,
compared as JSON), reads the suite's ``counts`` (model loads, tokenizations,
replays; expected 3 and 3) and splits each mode's time into what the reports'
``timing`` blocks account for (model loads, the cells' own runs) and the rest
(interpreter start, imports, writing). It exits 1 if any number differs.

Setup, cached under ``--work``: the built-in SmolLM2-135M loaded in float32 by
lleval (its model cache must be warm: run ``lleval score --limit 4`` once),
saved with ``save_pretrained`` three times as ``checkpoint-1000``, ``-2000``,
``-3000`` with seeded Gaussian noise of ``--noise`` times each tensor's standard
deviation added (0.02, 0.01, 0: the later step is the better one), plus the
tokenizer; and three datasets, the built-in sample's 12 documents split into
three jsonl files of 4 (about 1,500 tokens each); ``--large`` repeats each
document ``--scale`` times (each copy tagged, so no two documents are equal).
Every checkpoint is run once untimed first, so no cold cache is timed.

    PYTHONPATH=src python scripts/bench_suite.py [--rounds 2] [--large --scale 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STEPS = (1000, 2000, 3000)
DATASETS = ("heldout-a", "heldout-b", "heldout-c")
COMPARED = ("totals", "metrics", "by_context_length", "documents")
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "lleval" / "samples" / "prose.jsonl"

SAVE = r"""
import sys, torch
from lleval.backends.base import ModelSpec
from lleval.backends.hf import load
folder, noise, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
loaded = load(ModelSpec(None, dtype="float32"))
model, tokenizer = loaded.model, loaded.tokenizer
generator = torch.Generator().manual_seed(seed)
with torch.no_grad():
    for _, param in sorted(model.named_parameters()):
        if noise > 0 and param.numel() > 1:
            param.add_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * noise * param.std())
model.save_pretrained(folder)
tokenizer.save_pretrained(folder)
"""


def cpu_name() -> str:
    """The CPU's model name and family/model numbers (from /proc/cpuinfo where there is one)."""
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        return f"{fields.get('model name')} (family {fields.get('cpu family')} model {fields.get('model')})"
    except OSError:
        return platform.processor() or platform.machine()


def env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error"}


def make_checkpoints(work: Path, noises: list[float]) -> list[Path]:
    """``checkpoint-STEP`` folders (float32 safetensors and the tokenizer), written once."""
    folders = []
    for k, (step, noise) in enumerate(zip(STEPS, noises)):
        folder = work / "models" / f"checkpoint-{step}"
        done = folder / "bench-noise.txt"
        if not done.exists() or done.read_text() != str(noise):
            folder.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-c", SAVE, str(folder), str(noise), str(k)], check=True, env=env())
            done.write_text(str(noise))
        folders.append(folder)
    return folders


def make_datasets(work: Path, scale: int) -> list[Path]:
    """The sample's documents split into three jsonl files, each document ``scale`` times."""
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    folder = work / f"data-x{scale}"
    folder.mkdir(parents=True, exist_ok=True)
    paths, share = [], len(rows) // len(DATASETS)
    for k, name in enumerate(DATASETS):
        docs = rows[k * share:(k + 1) * share]
        lines = [json.dumps({"text": doc["text"] if copy == 0 else f"(Copy {copy}.) {doc['text']}"})
                 for copy in range(scale) for doc in docs]
        path = folder / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def score(args: list[str], extra: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one whole ``lleval score`` process (it must succeed). CPU time
    is the steadier figure on a shared machine: waiting for a core is not in it."""
    start, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run([sys.executable, "-m", "lleval", "score", "--quiet", *args, *extra], env=env(),
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"lleval score {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, children_cpu() - cpu


def run_suite(models: list[Path], data: list[Path], out: Path, extra: list[str]) -> tuple[float, float]:
    flags = [f for m in models for f in ("-m", str(m))] + [f for d in data for f in ("-d", str(d))]
    return score([*flags, "-o", str(out / "suite.json")], extra)


def run_separate(models: list[Path], data: list[Path], out: Path, extra: list[str]) -> tuple[float, float]:
    runs = [score(["-m", str(m), "-d", str(d), "-o", str(out / f"cell-{m.name}-{d.stem}.json")], extra)
            for m in models for d in data]
    return sum(wall for wall, _ in runs), sum(cpu for _, cpu in runs)


def differences(out: Path, models: list[Path], data: list[Path]) -> list[str]:
    """Where a suite cell's report differs from its separate run's (empty: the same numbers)."""
    suite = json.loads((out / "suite.json").read_text())
    cells = {(c["model"], c["dataset"]): c["report"] for c in suite["cells"]}
    problems = []
    for m in models:
        for d in data:
            alone = json.loads((out / f"cell-{m.name}-{d.stem}.json").read_text())
            cell = cells.get((m.name, d.stem))
            if cell is None:
                problems.append(f"{m.name} x {d.stem}: no report in the suite")
                continue
            problems += [f"{m.name} x {d.stem}: {key} differs" for key in COMPARED if cell[key] != alone[key]]
    return problems


def accounted(out: Path, models: list[Path], data: list[Path]) -> dict[str, dict[str, float]]:
    """Each mode's seconds its reports account for: the cells' own runs (``timing.seconds``:
    opening, tokenizing or replaying, scoring, bootstrap) and, of separate runs, the model
    loads (a suite's cells are given their model: its loads are not in their reports)."""
    suite = json.loads((out / "suite.json").read_text())
    result = {"suite": {"cells": sum(c["report"]["timing"]["seconds"] for c in suite["cells"])}}
    alone = [json.loads((out / f"cell-{m.name}-{d.stem}.json").read_text())["timing"] for m in models for d in data]
    result["separate"] = {"loads": sum(t["load_seconds"] for t in alone),
                          "cells": sum(t["seconds"] - t["load_seconds"] for t in alone)}
    return result


#: where a suite's time goes: (what, file ending, function) of the cProfile of one suite run
PROFILED = (
    ("imports (all, nested once)", "<frozen importlib._bootstrap>", "_find_and_load"),
    ("suite run (datasets opened, loads, cells)", "lleval/commands/suite.py", "run_suite"),
    ("  model loads", "lleval/backends/registry.py", "load_model"),
    ("  cells (evaluate)", "lleval/commands/score.py", "evaluate"),
    ("    tokenizer fingerprints", "lleval/plan/tokenization.py", "tokenizer_fingerprint"),
    ("    tokenization (encode)", "lleval/plan/tokenization.py", "encode"),
    ("    tokenization (encode_with_starts)", "lleval/plan/tokenization.py", "encode_with_starts"),
    ("    tokenization (encode_with_owners)", "lleval/plan/tokenization.py", "encode_with_owners"),
    ("    scoring (engine_stream)", "lleval/engine/scoring.py", "engine_stream"),
    ("    report, bootstrap (score_report)", "lleval/commands/score.py", "score_report"),
    ("writing, rendering (deliver)", "lleval/cli/deliver.py", "deliver"),
)


def profile_suite(models: list[Path], data: list[Path], out: Path, extra: list[str]) -> None:
    """One suite run under cProfile: the cumulative seconds of its stages (cProfile slows
    Python-heavy stages such as imports; torch's kernels run at speed)."""
    import pstats

    flags = [f for m in models for f in ("-m", str(m))] + [f for d in data for f in ("-d", str(d))]
    start = time.perf_counter()
    code = ("import cProfile, sys; from lleval.cli import main; p = cProfile.Profile(); p.enable()\n"
            "try: main(sys.argv[2:], standalone_mode=False)\nfinally: p.disable(); p.dump_stats(sys.argv[1])")
    # not python -m cProfile: lleval's entry ends with os._exit, before cProfile writes its file
    subprocess.run([sys.executable, "-c", code, str(out / "suite.prof"), "score", "--quiet", *flags, "-o",
                    str(out / "suite-profiled.json"), *extra], env=env(), check=True, capture_output=True)
    print(f"profile of one suite run (cProfile, wall {time.perf_counter() - start:.1f} s):")
    stats: Any = getattr(pstats.Stats(str(out / "suite.prof")), "stats")  # undeclared in typeshed
    for what, ending, name in PROFILED:
        found = [(calls, cumulative) for (path, _, function), (_, calls, _, cumulative, _) in stats.items()
                 if path.endswith(ending) and function == name]
        calls, seconds = sum(c for c, _ in found), sum(t for _, t in found)
        print(f"  {what:44s} {seconds:8.2f} s ({calls} calls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lleval-bench-suite"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--large", action="store_true", help="each document --scale times")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--noise", type=float, nargs=3, default=[0.02, 0.01, 0.0],
                        help="noise of each checkpoint, times each tensor's standard deviation")
    parser.add_argument("--profile", action="store_true", help="only profile one suite run, timing nothing")
    parser.add_argument("--extra", default="", help="more flags for every lleval score, e.g. '--bootstrap 0'")
    args = parser.parse_args()
    extra = args.extra.split()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores (shared with other jobs: only figures of one "
          f"invocation compare); python {platform.python_version()}")
    models = make_checkpoints(args.work, args.noise)
    data = make_datasets(args.work, args.scale if args.large else 1)
    out = args.work / ("out-large" if args.large else "out-small")
    out.mkdir(exist_ok=True)
    if args.profile:
        return profile_suite(models, data, out, extra)
    for model in models:  # untimed: caches and the page cache warm
        score(["-m", str(model), "-d", str(data[0]), "--limit", "1", "-o", str(out / "warm.json")], extra)
    times: dict[str, list[tuple[float, float]]] = {"suite": [], "separate": []}
    for r in range(args.rounds):
        order = ("suite", "separate") if r % 2 == 0 else ("separate", "suite")
        for mode in order:
            run = run_suite if mode == "suite" else run_separate
            times[mode].append(run(models, data, out, extra))
        (wall, cpu), (wall9, cpu9) = times["suite"][-1], times["separate"][-1]
        print(f"round {r + 1} ({' then '.join(order)}): wall suite {wall:.1f} s, 9 separate {wall9:.1f} s, ratio "
              f"{wall / wall9:.3f}; CPU suite {cpu:.1f} s, 9 separate {cpu9:.1f} s, ratio {cpu / cpu9:.3f}",
              flush=True)
    report(args, out, models, data, times)


def report(args: Any, out: Path, models: list[Path], data: list[Path],
           times: dict[str, list[tuple[float, float]]]) -> None:
    """Print the figures of the last round and the medians; exit 1 if any number differs."""
    suite = json.loads((out / "suite.json").read_text())
    tokens = {c["dataset"]: c["report"]["totals"]["tokens"] for c in suite["cells"]}
    print(f"datasets: {', '.join(f'{k} {v} tokens' for k, v in tokens.items())}"
          f"{f' (x{args.scale})' if args.large else ''}; extra flags: {args.extra or 'none'}")
    for row in suite["matrix"]:
        print(f"  {row['model']:16s} {row['dataset']:10s} perplexity {row['perplexity']:.3f}")
    for k, what in enumerate(("wall", "CPU")):
        median = {mode: statistics.median(run[k] for run in runs) for mode, runs in times.items()}
        ratios = [s[k] / t[k] for s, t in zip(times["suite"], times["separate"])]
        print(f"median {what} over {args.rounds} rounds: suite {median['suite']:.1f} s, 9 separate "
              f"{median['separate']:.1f} s, ratio of medians {median['suite'] / median['separate']:.3f} "
              f"(median of the rounds' ratios {statistics.median(ratios):.3f})")
    for mode, parts in accounted(out, models, data).items():
        wall = times[mode][-1][0]
        rest = wall - parts.get("loads", 0.0) - parts["cells"]
        loads = f"model loads {parts['loads']:.1f} + " if "loads" in parts else ""
        what = "interpreter, imports, writing" + ("" if loads else ", the 3 model loads")
        print(f"last round, {mode:8s}: wall {wall:.1f} s = {loads}cells {parts['cells']:.1f} + the rest ({what}) "
              f"{rest:.1f}")
    print(f"counts: {suite['counts']} (expected model_loads 3, tokenizations 3)")
    problems = differences(out, models, data)
    print("numbers: " + ("the same in every cell (" + ", ".join(COMPARED) + ")" if not problems
                         else "DIFFERENT: " + "; ".join(problems)))
    if problems or suite["counts"]["model_loads"] != 3 or suite["counts"]["tokenizations"] != 3:
        sys.exit(1)


if __name__ == "__main__":
    main()
