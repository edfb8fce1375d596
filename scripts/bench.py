"""Speed and memory of lleval against a naive transformers loop, measured in one run.

Prints a table and writes JSON (``--json``). Every comparison is against a
baseline measured in the same run, because this machine is noisy:

- throughput (scored tokens/s, end to end: reading and tokenizing included)
  of ``lleval.evaluate`` and of a naive loop (one window at a time, batch 1,
  full logits, log_softmax over the whole vocabulary), alternated twice with
  the best time of each kept, on 24 short documents and on 4 long ones
  (L = 2048, 8 windows: one batch of 8);
- the machine's float32 matmul GFLOP/s (2048 x 2048, measured before and
  after), the FLOPs the protocol needs (see `required_flops`: context that a
  window re-reads counts, logits at unscored positions do not), and each
  method's share of that limit;
- peak resident memory (VmHWM) after each step; a 256,000-token
  vocabulary tiny model at L = 2048, batch 8 (full logits would be 16 GB),
  scored in a child process; resident-memory growth while streaming 200,000
  short documents; ``lleval --help`` / ``--version`` start-up time.

    .venv/bin/python scripts/bench.py --json bench.json          # about 10 minutes here
    .venv/bin/python scripts/bench.py --quick                    # smaller corpora
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
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    """Current resident set size of this process, MB."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_mb() -> float:
    """Peak resident set size of this process so far (VmHWM), MB.

    Not ru_maxrss: on Linux a child started with fork+exec inherits the
    parent's high-water mark in ru_maxrss, so children would report the
    parent's peak.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e3
    return float("nan")


def reset_peak() -> None:
    """Start VmHWM afresh from the current RSS (Linux: writing 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def required_flops(model: Any, sequences: list[list[int]], max_length: int) -> float:
    """FLOPs the rolling protocol needs, whoever runs it: for every window, 2 x the
    decoder's Linear parameters per input token, 2 x the output projection's per
    scored token, and causal attention (QK^T and AV: 2 x hidden per key, per layer).

    Windows after the first re-read up to L tokens of context, so a scored token
    can cost more than one token's forward pass; that is the protocol's cost, not
    waste, and is counted here. Logits at unscored positions are waste and are not.
    """
    from lleval.windows import rolling_spans

    config = model.config
    head = model.get_output_embeddings().weight.numel()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) - head
    total = 0.0
    for seq in sequences:
        for span in rolling_spans(len(seq), max_length, max_length):
            n = span.input_length
            total += 2 * linear * n + 2 * head * span.n_scored
            total += 2 * config.num_hidden_layers * config.hidden_size * n * (n + 1)
    return total


def naive_loop(model: Any, sequences: list[list[int]], max_length: int) -> tuple[int, float]:
    """One window at a time, batch 1, full logits: the transformers-recipe baseline."""
    tokens, ll = 0, 0.0
    with torch.inference_mode():
        for seq in sequences:
            target = 1
            while target < len(seq):
                last = min(target + max_length, len(seq)) - 1
                begin = max(0, last - max_length)
                logits = model(torch.tensor([seq[begin:last]])).logits[0]  # (T, V)
                logp = torch.log_softmax(logits.float(), dim=-1)
                idx = torch.arange(target - 1 - begin, last - begin)
                ll += float(logp[idx, torch.tensor(seq[target : last + 1])].double().sum())
                tokens += last + 1 - target
                target = last + 1
    return tokens, ll


def write_jsonl(path: Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def throughput_case(
    name: str, loaded: Any, texts: list[str], max_length: int, batch_size: int, work: Path, repeats: int
) -> dict[str, Any]:
    """lleval and the naive loop, alternated ``repeats`` times; the best time of each counts."""
    from lleval.api import evaluate
    from lleval.config import EvalConfig

    data = write_jsonl(work / f"{name}.jsonl", texts)
    tok = loaded.tokenizer
    sequences = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    mean_len = sum(len(s) for s in sequences) / len(sequences)
    limit = matmul_gflops()
    config = EvalConfig(dataset=data, max_length=max_length, batch_size=batch_size, bootstrap=0)
    before = rss_mb()
    ours_s = naive_s = float("inf")
    ours_peak = naive_peak = 0.0
    for _ in range(repeats):
        reset_peak()
        started = time.perf_counter()
        report = evaluate(config, loaded=loaded)
        ours_s = min(ours_s, time.perf_counter() - started)
        ours_peak = max(ours_peak, peak_mb())
        reset_peak()
        started = time.perf_counter()
        naive_tokens, naive_ll = naive_loop(loaded.model, sequences, max_length)
        naive_s = min(naive_s, time.perf_counter() - started)
        naive_peak = max(naive_peak, peak_mb())
    limit = (limit + matmul_gflops()) / 2
    flops = required_flops(loaded.model, sequences, max_length)
    ours_tps, naive_tps = report.totals.tokens / ours_s, naive_tokens / naive_s
    return {
        "case": name,
        "documents": len(texts),
        "mean_tokens_per_document": mean_len,
        "max_length": max_length,
        "batch_size": batch_size,
        "repeats": repeats,
        "scored_tokens": report.totals.tokens,
        "same_tokens_as_naive": report.totals.tokens == naive_tokens,
        "relative_difference_vs_naive": abs(report.totals.log_likelihood - naive_ll) / abs(naive_ll),
        "lleval_tokens_per_second": ours_tps,
        "naive_tokens_per_second": naive_tps,
        "speedup": ours_tps / naive_tps,
        "matmul_gflops": limit,
        "required_gflop": flops / 1e9,
        "model_gflop_per_token": flops / report.totals.tokens / 1e9,
        "lleval_share_of_matmul_limit": flops / ours_s / (limit * 1e9),
        "naive_share_of_matmul_limit": flops / naive_s / (limit * 1e9),
        "padding_share": report.timing["padding_share"],
        "rss_before_mb": before,
        "peak_rss_lleval_mb": ours_peak,
        "peak_rss_naive_mb": naive_peak,
    }


CHILD_BIG_VOCAB = r"""
import json, sys, time, torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from lleval.api import evaluate, load
from lleval.config import EvalConfig
folder, data = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(sys.argv[3])
config = LlamaConfig(vocab_size=256000, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096, tie_word_embeddings=True)
LlamaForCausalLM(config).save_pretrained(folder)
tok.save_pretrained(folder)
def hwm():
    with open("/proc/self/status") as h:
        return next(int(l.split()[1]) / 1e3 for l in h if l.startswith("VmHWM:"))
loaded = load(EvalConfig(model=folder))
base = hwm()
started = time.perf_counter()
report = evaluate(EvalConfig(dataset=data, max_length=2048, batch_size=8, bootstrap=0), loaded=loaded)
print(json.dumps({"peak_rss_mb": hwm(),
                  "peak_before_scoring_mb": base, "tokens": report.totals.tokens,
                  "seconds": time.perf_counter() - started}))
"""

CHILD_STREAM = r"""
import json, os, sys
from lleval.api import evaluate, load
from lleval.config import EvalConfig
def rss():
    with open("/proc/self/statm") as h:
        return int(h.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
marks = {}
class Progress:
    def stage(self, text):
        pass
    def update(self, docs, tokens, expected):
        if docs >= 1000 and "first_1000" not in marks:
            marks["first_1000"] = rss()
        marks["last"] = rss()
progress = Progress()
loaded = load(EvalConfig(model=sys.argv[1]))
report = evaluate(EvalConfig(dataset=sys.argv[2], streaming=True, max_length=64, batch_size=64, bootstrap=0,
                             block_tokens=20000), loaded=loaded, progress=progress)
print(json.dumps({"documents": report.totals.documents, "rss_after_1000_mb": marks["first_1000"],
                  "rss_at_end_mb": marks["last"], "growth_mb": marks["last"] - marks["first_1000"]}))
"""


def child(code: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def startup_seconds(args: list[str], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "lleval"), *args], capture_output=True, check=True)
        best = min(best, time.perf_counter() - started)
    return best


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of the speed-and-memory issue, with the figure measured and whether it is met."""

    def check(value: float, op: str, bound: float) -> dict[str, Any]:
        return {"value": value, "op": op, "bound": bound, "met": value >= bound if op == ">=" else value < bound}

    short, long = results["short"], results["long"]
    return {
        "short: speedup over naive": check(short["speedup"], ">=", 1.3),
        "long: speedup over naive": check(long["speedup"], ">=", 1.1),
        "short: share of matmul limit": check(short["lleval_share_of_matmul_limit"], ">=", 0.85),
        "long: share of matmul limit": check(long["lleval_share_of_matmul_limit"], ">=", 0.85),
        "long (L=2048, batch 8): peak RSS MB vs weights + 1500": check(
            long["peak_rss_lleval_mb"], "<", results["weights_mb"] + 1500),
        "256k vocabulary: peak RSS MB": check(results["vocab_256k"]["peak_rss_mb"], "<", 2000),
        "streaming: RSS growth MB": check(results["streaming"]["growth_mb"], "<", 200),
        "start-up --help s": check(results["startup_help_seconds"], "<", 0.5),
        "start-up --version s": check(results["startup_version_seconds"], "<", 0.5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller corpora")
    parser.add_argument("--json", default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from lleval.api import load
    from lleval.config import EvalConfig
    from lleval.data import builtin_sample_path

    essays = [json.loads(line)["text"] for line in builtin_sample_path().read_text().splitlines()]
    work = Path(tempfile.mkdtemp(prefix="lleval-bench-"))
    results: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    loaded = load(EvalConfig())
    results["weights_mb"] = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 1e6
    results["rss_after_load_mb"] = rss_mb()
    short = essays if args.quick else essays * 2  # ~380 tokens each
    # ~2,300 tokens each: two windows of L = 2048 per document, so 8 windows fill one batch of 8
    long_docs = [" ".join(essays[i::2]) for i in range(2)] * 2
    if args.quick:
        long_docs = long_docs[:1]
    repeats = 1 if args.quick else 2
    results["short"] = throughput_case("short", loaded, short, 2048, args.batch_size, work, repeats)
    results["long"] = throughput_case("long", loaded, long_docs, 2048, args.batch_size, work, repeats)

    tiny_tok = str(ROOT / "tests" / "assets" / "tiny-tokenizer")
    big_data = write_jsonl(work / "big.jsonl", [" ".join(essays)] * 2)
    results["vocab_256k"] = child(CHILD_BIG_VOCAB, str(work / "big-vocab"), big_data, tiny_tok)

    small = work / "small-model"
    child(
        "import sys; sys.path.insert(0, sys.argv[2]); from conftest import _save_tiny; from pathlib import Path; "
        "p = Path(sys.argv[1]); p.mkdir(); _save_tiny(p, 'gpt2'); print('{}')",
        str(small), str(ROOT / "tests"),
    )
    n_docs = 20_000 if args.quick else 200_000
    stream = write_jsonl(work / "stream.jsonl", [f"Short document number {i} about the weather." for i in range(n_docs)])
    results["streaming"] = child(CHILD_STREAM, str(small), stream)
    results["startup_help_seconds"] = startup_seconds(["--help"])
    results["startup_version_seconds"] = startup_seconds(["--version"])

    results["targets"] = targets(results)
    print(f"threads {results['torch_threads']}, weights {results['weights_mb']:.0f} MB, "
          f"RSS after loading {results['rss_after_load_mb']:.0f} MB")
    for case in ("short", "long"):
        r = results[case]
        print(
            f"{case:5}: lleval {r['lleval_tokens_per_second']:.0f} tok/s, naive {r['naive_tokens_per_second']:.0f} "
            f"tok/s, x{r['speedup']:.2f}; matmul {r['matmul_gflops']:.0f} GFLOP/s, "
            f"{r['model_gflop_per_token']:.3f} GFLOP/scored token, lleval {r['lleval_share_of_matmul_limit'] * 100:.0f}% "
            f"/ naive {r['naive_share_of_matmul_limit'] * 100:.0f}% of the limit; padding "
            f"{r['padding_share'] * 100:.1f}%; peak RSS {r['peak_rss_lleval_mb']:.0f} MB (lleval) "
            f"{r['peak_rss_naive_mb']:.0f} MB (naive); totals vs naive: "
            f"{r['relative_difference_vs_naive']:.1e} relative"
        )
    v = results["vocab_256k"]
    print(f"256k vocabulary, L=2048, batch 8: peak RSS {v['peak_rss_mb']:.0f} MB ({v['tokens']} tokens)")
    s = results["streaming"]
    print(f"streaming {s['documents']} documents: RSS {s['rss_after_1000_mb']:.0f} MB after 1,000, "
          f"{s['rss_at_end_mb']:.0f} MB at the end, growth {s['growth_mb']:.0f} MB")
    print(f"start-up: --help {results['startup_help_seconds']:.2f} s, --version {results['startup_version_seconds']:.2f} s")
    print("targets:")
    for name, t in results["targets"].items():
        print(f"  {'met ' if t['met'] else 'MISS'} {name}: {t['value']:.3g} {t['op']} {t['bound']:.3g}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
