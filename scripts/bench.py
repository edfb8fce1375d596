"""Speed and memory of lleval against a naive transformers loop, measured in one run.

Prints a table and writes JSON (``--json``). Every comparison is against a
baseline measured in the same run, because this machine is noisy:

- throughput (scored tokens/s) of ``lleval.evaluate`` and of a naive loop
  (one window at a time, batch 1, full logits, log_softmax over the whole
  vocabulary), on many short documents and on a few long ones (L = 2048);
- the machine's float32 matmul GFLOP/s (2048 x 2048, measured before and
  after), the model's FLOPs per scored token (2 x matmul parameters plus
  attention), and each method's share of that limit;
- peak resident memory (ru_maxrss) after each step; a 256,000-token
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


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def flops_per_token(model: Any, mean_context: float) -> float:
    """2 x parameters of every Linear (the tied output projection included) + attention."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    config = model.config
    attention = 4 * config.num_hidden_layers * config.hidden_size * mean_context
    return 2 * linear + attention


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


def throughput_case(name: str, loaded: Any, texts: list[str], max_length: int, batch_size: int, work: Path) -> dict[str, Any]:
    from lleval.api import evaluate
    from lleval.config import EvalConfig

    data = write_jsonl(work / f"{name}.jsonl", texts)
    tok = loaded.tokenizer
    sequences = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    mean_len = sum(len(s) for s in sequences) / len(sequences)
    limit = matmul_gflops()
    config = EvalConfig(dataset=data, max_length=max_length, batch_size=batch_size, bootstrap=0)
    before = rss_mb()
    started = time.perf_counter()
    report = evaluate(config, loaded=loaded)
    ours_s = time.perf_counter() - started
    ours_peak = peak_mb()
    started = time.perf_counter()
    naive_tokens, naive_ll = naive_loop(loaded.model, sequences, max_length)
    naive_s = time.perf_counter() - started
    naive_peak = peak_mb()
    limit = (limit + matmul_gflops()) / 2
    fpt = flops_per_token(loaded.model, min(mean_len, max_length) / 2)
    ours_tps, naive_tps = report.totals.tokens / ours_s, naive_tokens / naive_s
    return {
        "case": name,
        "documents": len(texts),
        "mean_tokens_per_document": mean_len,
        "max_length": max_length,
        "batch_size": batch_size,
        "scored_tokens": report.totals.tokens,
        "same_tokens_as_naive": report.totals.tokens == naive_tokens,
        "relative_difference_vs_naive": abs(report.totals.log_likelihood - naive_ll) / abs(naive_ll),
        "lleval_tokens_per_second": ours_tps,
        "naive_tokens_per_second": naive_tps,
        "speedup": ours_tps / naive_tps,
        "matmul_gflops": limit,
        "model_gflop_per_token": fpt / 1e9,
        "lleval_share_of_matmul_limit": ours_tps * fpt / (limit * 1e9),
        "naive_share_of_matmul_limit": naive_tps * fpt / (limit * 1e9),
        "padding_share": report.timing["padding_share"],
        "rss_before_mb": before,
        "peak_rss_after_lleval_mb": ours_peak,
        "peak_rss_after_naive_mb": naive_peak,
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
def progress(docs, tokens, expected):
    if docs >= 1000 and "first_1000" not in marks:
        marks["first_1000"] = rss()
    marks["last"] = rss()
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
    long_docs = [" ".join(essays[i::2]) for i in range(2)]  # ~2,300 tokens each
    if args.quick:
        long_docs = long_docs[:1]
    results["short"] = throughput_case("short", loaded, short, 2048, args.batch_size, work)
    results["long"] = throughput_case("long", loaded, long_docs, 2048, args.batch_size, work)

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

    print(f"threads {results['torch_threads']}, weights {results['weights_mb']:.0f} MB")
    for case in ("short", "long"):
        r = results[case]
        print(
            f"{case:5}: lleval {r['lleval_tokens_per_second']:.0f} tok/s, naive {r['naive_tokens_per_second']:.0f} "
            f"tok/s, x{r['speedup']:.2f}; matmul {r['matmul_gflops']:.0f} GFLOP/s, "
            f"{r['model_gflop_per_token']:.3f} GFLOP/token, lleval {r['lleval_share_of_matmul_limit'] * 100:.0f}% "
            f"/ naive {r['naive_share_of_matmul_limit'] * 100:.0f}% of the limit; padding "
            f"{r['padding_share'] * 100:.1f}%; peak RSS {r['peak_rss_after_lleval_mb']:.0f} MB (lleval) "
            f"{r['peak_rss_after_naive_mb']:.0f} MB (after naive); same totals as naive: "
            f"{r['relative_difference_vs_naive']:.1e} relative"
        )
    v = results["vocab_256k"]
    print(f"256k vocabulary, L=2048, batch 8: peak RSS {v['peak_rss_mb']:.0f} MB ({v['tokens']} tokens)")
    s = results["streaming"]
    print(f"streaming {s['documents']} documents: RSS {s['rss_after_1000_mb']:.0f} MB after 1,000, "
          f"{s['rss_at_end_mb']:.0f} MB at the end, growth {s['growth_mb']:.0f} MB")
    print(f"start-up: --help {results['startup_help_seconds']:.2f} s, --version {results['startup_version_seconds']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
