"""`lleval.Evaluator` against ``lleval score`` on the same model and data (issue 32's benchmark).

One run, on one machine, builds an evaluator on the model in memory (its construction,
which reads and tokenizes the data, timed apart), then ``--rounds`` times, alternated (each
going first in half the rounds) so both meet the same load of the machine:

- cli: ``lleval score -m FOLDER -d DATA -o r.json`` in a process of its own; its time is the
  report's ``timing.seconds - timing.load_seconds``: what the run spent from opening the
  data to the finished report, without the interpreter's start, the imports and the
  model's load (the evaluator pays none of those at a call);
- evaluator: one call, timed.

It prints both, the CPU, and the counts over the calls: documents read and tokenizer calls
(both 0 after construction: nothing is read or tokenized again), and whether every call's
numbers equal the CLI's (they must: the same weights, the same path); exits 1 otherwise.

Setup, cached under ``--work``: the built-in SmolLM2-135M loaded by lleval in float32 (its
model cache warm: run ``lleval score --limit 4`` once) and saved with ``save_pretrained``
as a folder, and the built-in sample as a jsonl file (``--scale`` copies of each
document, each tagged, for a longer run). The CPU is named in the output.

    PYTHONPATH=src python scripts/bench_evaluator.py [--rounds 4] [--scale 1] [--max-length 512]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def setup(work: Path, scale: int) -> tuple[Path, Path]:
    """The model folder and the data file (made once)."""
    from lleval.commands.score import load
    from lleval.config import EvalConfig
    from lleval.data.spec import builtin_sample_path

    folder, data = work / "smollm2", work / f"sample-x{scale}.jsonl"
    if not (folder / "config.json").is_file():
        loaded = load(EvalConfig(dtype="float32"))
        loaded.model.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
    if not data.is_file():
        rows = [json.loads(line) for line in builtin_sample_path().read_text().splitlines() if line.strip()]
        data.write_text("".join(json.dumps({"text": f"[copy {k}] {row['text']}"}) + "\n"
                                for k in range(scale) for row in rows))
    return folder, data


def cli_run(folder: Path, data: Path, out: Path, max_length: int) -> dict[str, Any]:
    """``lleval score`` in a process of its own: its report's JSON."""
    subprocess.run([sys.executable, "-m", "lleval", "score", "-m", str(folder), "-d", str(data), "-L",
                    str(max_length), "-q", "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
    return dict(json.loads(out.read_text()))


class Counted:
    """Counts documents read (`DocumentStream`) and tokenizer calls from now on."""

    def __init__(self, tokenizer: Any) -> None:
        from lleval.data.sources import DocumentStream

        self.counts = {"documents": 0, "tokenizer": 0}
        real_next, real_call = DocumentStream.__next__, type(tokenizer).__call__
        counts = self.counts

        def counted_next(stream: Any) -> Any:
            counts["documents"] += 1
            return real_next(stream)

        def counted_call(tok: Any, *args: Any, **kwargs: Any) -> Any:
            counts["tokenizer"] += 1
            return real_call(tok, *args, **kwargs)

        DocumentStream.__next__ = counted_next  # type: ignore[method-assign,assignment]
        type(tokenizer).__call__ = counted_call


def run(folder: Path, data: Path, work: Path, rounds: int, max_length: int) -> dict[str, Any]:
    """An evaluator built on the model in memory, then ``rounds`` times: one ``lleval score``
    process and one evaluator call (each first in half the rounds, so both meet the same load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lleval import Evaluator

    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    counter = Counted(tokenizer)
    started = time.perf_counter()
    evaluator = Evaluator(model, tokenizer, str(data), max_length=max_length)
    built, after_build = time.perf_counter() - started, dict(counter.counts)
    found: dict[str, Any] = {"built": built, "read_at_build": after_build, "calls": [], "cli": []}
    for step in range(rounds):
        for who in ("cli", "call") if step % 2 == 0 else ("call", "cli"):  # each goes first in half the rounds
            if who == "cli":
                found["cli"].append(cli_run(folder, data, work / f"cli-{step}.json", max_length))
                continue
            started = time.perf_counter()
            report = evaluator(step=step).to_dict()
            found["calls"].append((time.perf_counter() - started, report))
    found["read_by_calls"] = {k: counter.counts[k] - after_build[k] for k in after_build}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lleval-bench-evaluator"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from lleval.hardware import cpu_features
    from lleval.threads import cap_torch_threads

    cap_torch_threads()  # as the CLI does
    folder, data = setup(args.work, args.scale)
    found = run(folder, data, args.work, args.rounds, args.max_length)
    cli = found["cli"]
    cli_seconds = [r["timing"]["seconds"] - r["timing"]["load_seconds"] for r in cli]
    call_seconds = [seconds for seconds, _ in found["calls"]]
    same = all(r["documents"] == cli[0]["documents"] for _, r in found["calls"])
    print(f"CPU: {cpu_features()['model']} ({cli[0]['environment']['torch_threads']} torch threads)")
    print(f"model: SmolLM2-135M float32 (saved folder), data: {data.name}, {cli[0]['totals']['documents']} "
          f"documents, {cli[0]['totals']['tokens']} tokens, L={args.max_length}")
    print(f"cli (lleval score, minus start-up and load): median {statistics.median(cli_seconds):.2f} s "
          f"{[round(s, 2) for s in cli_seconds]}")
    print(f"evaluator call: median {statistics.median(call_seconds):.2f} s {[round(s, 2) for s in call_seconds]}; "
          f"built once in {found['built']:.2f} s (reads and tokenizes)")
    print(f"ratio call / cli, round by round: {[round(a / b, 3) for a, b in zip(call_seconds, cli_seconds)]}")
    print(f"read at construction: {found['read_at_build']}; "
          f"read again by {args.rounds} calls: {found['read_by_calls']}")
    print(f"every call's documents equal the CLI's: {same}")
    if not same or any(found["read_by_calls"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
