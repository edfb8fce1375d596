"""Speed and memory of lleval against a naive transformers loop, measured in one run.

Every comparison is against a baseline measured in the same run (this
machine is noisy): runs alternate and each keeps its best time.

CPU (default): whole processes, as a user runs them. ``lleval score`` with
no batching flags (the model cache warm) against a naive script (load the
model with ``from_pretrained``, tokenize, score one window at a time, batch
1, full logits, log_softmax over the vocabulary), both on the built-in
SmolLM2-135M, on three corpora built from the docstrings of Python's own
standard library (text the project never tuned on):

- ``short``: 40 documents of 50 to 2,000+ tokens (a module's docstrings each);
- ``long``: 4 documents of about 4,000 tokens, 8 windows of L = 2048;
- ``tiny``: 2,000 paragraphs of 20 to 50 tokens.

It prints, with met/MISS against each target of the speed issue: the
whole-process speed-up over the naive script, the scoring throughput as a
share of the float32 matmul limit measured in the same run (FLOPs the
protocol needs), the padding share, the model load time with a cold and a
warm cache, bfloat16 against float32 on CPUs with native bf16 units (speed
and, from ``lleval kld``, the accuracy cost), peak memory at L = 2048, a
256,000-token vocabulary, memory growth while streaming 200,000 documents,
and ``--help`` start-up time.

GPU (``--device cuda``): the same comparison in process, in bfloat16, on a
1B-class Llama built with random weights (no download): tokens/s, MFU
against the GPU's bf16 peak and against the bf16 matmul rate measured in the
same run, peak memory (``torch.cuda.max_memory_allocated``), the padding
share and the totals' difference, for lleval and the naive loop. The corpora
are cut with the built-in model's tokenizer, or ``--tokenizer DIR`` (the
device check carries a saved copy: the GPU machine cannot read .gguf files);
``--work DIR`` keeps the random model and the corpora for later steps.

    .venv/bin/python scripts/bench.py --json bench.json        # CPU, about 25 minutes here
    .venv/bin/python scripts/bench.py --quick                  # smaller corpora, fewer targets
    .venv/bin/python scripts/bench.py --device cuda --json gpu.json
    .venv/bin/python scripts/bench.py --device cpu --in-process --model-config small --quick   # smoke test
    .venv/bin/python scripts/bench.py --device cpu --in-process --model-config small --smoke   # seconds, not minutes
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LLEVAL = str(Path(sys.executable).parent / "lleval")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}

# bf16 dense peak of GPUs, TFLOP/s (vendor datasheets), for MFU
GPU_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
                        "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0}


# ---------------------------------------------------------------- corpora

def stdlib_docstrings() -> list[tuple[str, list[str]]]:
    """(module name, its docstrings) for every module of the standard library's top folder."""
    out = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        docs = [ast.get_docstring(node) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        texts = [d for d in docs if d]
        if texts:
            out.append((path.stem, texts))
    return out


def corpora(tokenizer: Any, quick: bool, smoke: bool = False) -> dict[str, list[str]]:
    """The three corpora, chosen deterministically (modules in sha256 order of their names);
    ``smoke`` (the device check's CPU dry run) keeps 3 short documents, one long one of
    2,100 tokens (two windows of L = 2048) and 40 tiny ones."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    n_short, n_long, long_tokens, n_tiny = (3, 1, 2100, 40) if smoke else (12, 2, 4000, 300) if quick else (
        40, 4, 4000, 2000)
    modules = sorted(stdlib_docstrings(), key=lambda m: hashlib.sha256(m[0].encode()).hexdigest())
    joined = [(name, "\n\n".join(texts)) for name, texts in modules]
    short = [text for _, text in joined if 50 <= count(text) <= 2600][:n_short]
    by_size = sorted(joined, key=lambda m: -len(m[1]))
    long = []
    for _, text in by_size[:n_long]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:long_tokens]
        long.append(tokenizer.decode(ids))
    paragraphs = [" ".join(p.split()) for _, texts in modules for t in texts for p in t.split("\n\n")]
    tiny = [p for p in dict.fromkeys(paragraphs) if 20 <= count(p) <= 50][:n_tiny]
    return {"short": short, "long": long, "tiny": tiny}


def write_jsonl(path: Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


# ---------------------------------------------------------------- whole processes

HWM_WRAPPER = r"""
import atexit, json, sys
path = sys.argv[1]
def report():
    with open("/proc/self/status") as h:
        hwm = next(int(l.split()[1]) / 1e3 for l in h if l.startswith("VmHWM:"))
    with open(path, "w") as out:
        json.dump({"peak_rss_mb": hwm}, out)
atexit.register(report)
from lleval.cli import main
sys.argv = ["lleval", *sys.argv[2:]]
main()
"""

NAIVE = r"""
import json, sys, time
started = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, name, data, max_length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
loaded = time.perf_counter()
sys.path.insert(0, sys.argv[5])
from bench import naive_in_process
texts = [json.loads(line)["text"] for line in open(data)]
tokens, ll = naive_in_process(model, tokenizer, texts, max_length, "cpu")
done = time.perf_counter()
with open("/proc/self/status") as h:
    hwm = next(int(l.split()[1]) / 1e3 for l in h if l.startswith("VmHWM:"))
print(json.dumps({"tokens": tokens, "log_likelihood": ll, "load_seconds": loaded - started,
                  "scoring_seconds": done - loaded, "peak_rss_mb": hwm}))
"""


def run_lleval(args: list[str], work: Path) -> dict[str, Any]:
    """``lleval score ... --format json`` in a fresh process: wall seconds, report, peak RSS."""
    hwm = work / "hwm.json"
    started = time.perf_counter()
    out = subprocess.run([PYTHON, "-c", HWM_WRAPPER, str(hwm), "score", "-q", "--format", "json", *args],
                         capture_output=True, text=True, env=ENV, check=True)
    wall = time.perf_counter() - started
    return {"wall_seconds": wall, "report": json.loads(out.stdout), **json.loads(hwm.read_text())}


def run_naive(data: str, max_length: int) -> dict[str, Any]:
    from lleval.backends.hf import default_model_path

    gguf = default_model_path()
    started = time.perf_counter()
    out = subprocess.run([PYTHON, "-c", NAIVE, str(gguf.parent), gguf.name, data, str(max_length), str(ROOT / "scripts")],
                         capture_output=True, text=True, env=ENV, check=True)
    return {"wall_seconds": time.perf_counter() - started, **json.loads(out.stdout.strip().splitlines()[-1])}


def matmul_gflops(dtype: Any = None, size: int = 2048, repeats: int = 5) -> float:
    import torch

    dtype = dtype or torch.float32
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def required_flops(model: Any, sequences: list[list[int]], max_length: int) -> float:
    """FLOPs the rolling protocol needs, whoever runs it: for every window, 2 x the
    decoder's Linear parameters per input token, 2 x the output projection's per scored
    token, and causal attention (QK^T and AV: 2 x hidden per key, per layer)."""
    import torch

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


def cpu_case(name: str, data: str, loaded: Any, texts: list[str], work: Path, repeats: int) -> dict[str, Any]:
    """Whole-process lleval (default flags) and the naive script, alternated."""
    tok = loaded.tokenizer
    sequences = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    ours: list[dict[str, Any]] = []
    naive: list[dict[str, Any]] = []
    limits = [matmul_gflops()]
    for _ in range(repeats):
        ours.append(run_lleval(["-d", data, "--bootstrap", "0"], work))
        naive.append(run_naive(data, 2048))
        limits.append(matmul_gflops())
    best, base = min(ours, key=lambda r: r["wall_seconds"]), min(naive, key=lambda r: r["wall_seconds"])
    report = best["report"]
    flops = required_flops(loaded.model, sequences, 2048)
    limit = sum(limits) / len(limits)
    scoring = min(r["report"]["timing"]["scoring_seconds"] for r in ours)
    return {
        "case": name, "documents": len(texts), "tokens": report["totals"]["tokens"],
        "mean_tokens_per_document": report["totals"]["tokens"] / len(texts),
        "lleval_wall_seconds": best["wall_seconds"], "naive_wall_seconds": base["wall_seconds"],
        "speedup_whole_process": base["wall_seconds"] / best["wall_seconds"],
        "lleval_load_seconds": max(r["report"]["timing"]["load_seconds"] for r in ours),
        "naive_load_seconds": base["load_seconds"],
        "lleval_scoring_tokens_per_second": report["totals"]["tokens"] / scoring,
        "naive_scoring_tokens_per_second": base["tokens"] / min(r["scoring_seconds"] for r in naive),
        "matmul_gflops": limit, "required_gflop": flops / 1e9,
        "lleval_share_of_matmul_limit": flops / scoring / (limit * 1e9),
        "naive_share_of_matmul_limit": flops / min(r["scoring_seconds"] for r in naive) / (limit * 1e9),
        "padding_share": report["timing"]["padding_share"], "batches": report["timing"]["batches"],
        "batching": report["timing"]["batching"],
        "same_tokens_as_naive": report["totals"]["tokens"] == base["tokens"],
        "relative_difference_vs_naive": abs(report["totals"]["log_likelihood"] - base["log_likelihood"])
        / abs(base["log_likelihood"]),
        "peak_rss_lleval_mb": best["peak_rss_mb"], "peak_rss_naive_mb": base["peak_rss_mb"],
        "model_cache": report["model"]["cache"],
    }


BF16_VARIANTS = {"float32": ["--dtype", "float32"], "bfloat16": ["--dtype", "bfloat16"],
                  "bfloat16, bf16 head": ["--dtype", "bfloat16", "--no-float32-head"]}


def bf16_case(data: str, work: Path, repeats: int) -> dict[str, Any]:
    """bfloat16 (with its default float32 head, and with a bf16 head) against float32, whole
    process, and what each costs in accuracy against float32 (lleval kld)."""
    rates: dict[str, list[float]] = {name: [] for name in BF16_VARIANTS}
    for _ in range(repeats):
        for name, flags in BF16_VARIANTS.items():
            timing = run_lleval(["-d", data, "--bootstrap", "0", *flags], work)["report"]["timing"]
            rates[name].append(timing["tokens_per_second"])
    out: dict[str, Any] = {"float32_tokens_per_second": max(rates["float32"])}
    for name in ("bfloat16", "bfloat16, bf16 head"):
        done = subprocess.run([LLEVAL, "kld", "-q", "--format", "json", "-d", data, "--base-dtype", "float32",
                               *BF16_VARIANTS[name]], capture_output=True, text=True, env=ENV, check=True)
        kld = json.loads(done.stdout)
        out[name] = {"tokens_per_second": max(rates[name]), "speedup": max(rates[name]) / max(rates["float32"]),
                     "mean_kl_nats": kld["kl_divergence"]["mean"], "top_token_agreement": kld["top_token_agreement"],
                     "ln_ppl_ratio": kld["perplexity"]["ln_ratio"], "ln_ppl_ratio_ci": kld["perplexity"]["ln_ratio_ci"]}
    out["speedup"] = max(out[name]["speedup"] for name in ("bfloat16", "bfloat16, bf16 head"))
    return out


def cold_and_warm_load(data: str, work: Path) -> dict[str, Any]:
    """Model load with an empty cache (the conversion) and right after (the cache warm)."""
    cache = work / "fresh-cache"
    env = {**ENV, "LLEVAL_MODEL_CACHE": str(cache)}
    loads = []
    for _ in range(2):
        started = time.perf_counter()
        out = subprocess.run([LLEVAL, "score", "-q", "--format", "json", "-d", data, "--limit", "1"],
                             capture_output=True, text=True, env=env, check=True)
        report = json.loads(out.stdout)
        loads.append({"cache": report["model"]["cache"], "load_seconds": report["timing"]["load_seconds"],
                      "wall_seconds": time.perf_counter() - started})
    return {"cold": loads[0], "warm": loads[1]}


# ---------------------------------------------------------------- memory and start-up (children)

CHILD_BIG_VOCAB = r"""
import json, sys, time
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from lleval.commands.score import evaluate, load
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
report = evaluate(EvalConfig(dataset=data, max_length=2048, batch_size=8, bootstrap=0), loaded=loaded)
print(json.dumps({"peak_rss_mb": hwm(), "tokens": report.totals.tokens}))
"""

CHILD_STREAM = r"""
import json, os, sys
from lleval.commands.score import evaluate, load
from lleval.config import EvalConfig
def rss():
    with open("/proc/self/statm") as h:
        return int(h.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
marks = {}
class Progress:
    def stage(self, text):
        pass
    def update(self, state):
        docs = state.documents
        if docs >= 1000 and "first_1000" not in marks:
            marks["first_1000"] = rss()
        marks["last"] = rss()
loaded = load(EvalConfig(model=sys.argv[1]))
report = evaluate(EvalConfig(dataset=sys.argv[2], streaming=True, max_length=64, bootstrap=0, block_tokens=20000),
                  loaded=loaded, progress=Progress())
print(json.dumps({"documents": report.totals.documents, "rss_after_1000_mb": marks["first_1000"],
                  "rss_at_end_mb": marks["last"], "growth_mb": marks["last"] - marks["first_1000"]}))
"""


def child(code: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([PYTHON, "-c", code, *args], capture_output=True, text=True, check=True, env=ENV)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def startup_seconds(args: list[str], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([LLEVAL, *args], capture_output=True, check=True, env=ENV)
        best = min(best, time.perf_counter() - started)
    return best


def memory_checks(work: Path, texts: list[str], quick: bool) -> dict[str, Any]:
    tiny_tok = str(ROOT / "tests" / "assets" / "tiny-tokenizer")
    big_data = write_jsonl(work / "big.jsonl", [" ".join(texts)] * 2)
    results: dict[str, Any] = {"vocab_256k": child(CHILD_BIG_VOCAB, str(work / "big-vocab"), big_data, tiny_tok)}
    small = work / "small-model"
    child("import sys; sys.path.insert(0, sys.argv[2]); from conftest import _save_tiny; from pathlib import Path; "
          "p = Path(sys.argv[1]); p.mkdir(); _save_tiny(p, 'gpt2'); print('{}')", str(small), str(ROOT / "tests"))
    n_docs = 20_000 if quick else 200_000
    stream = write_jsonl(work / "stream.jsonl", [f"Short document number {i} about the weather." for i in range(n_docs)])
    results["streaming"] = child(CHILD_STREAM, str(small), stream)
    results["startup_help_seconds"] = startup_seconds(["--help"])
    return results


# ---------------------------------------------------------------- CPU run

def cpu_info() -> dict[str, Any]:
    import torch

    from lleval.hardware import cpu_features

    return {**cpu_features(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def cpu_targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    def check(value: float, op: str, bound: float) -> dict[str, Any]:
        return {"value": value, "op": op, "bound": bound, "met": value >= bound if op == ">=" else value < bound}

    t: dict[str, dict[str, Any]] = {}
    for case in ("short", "long", "tiny"):
        c = r[case]
        t[f"{case}: whole-process speed-up over the naive loop"] = check(c["speedup_whole_process"], ">=", 1.3)
        t[f"{case}: scoring share of the matmul limit"] = check(c["lleval_share_of_matmul_limit"], ">=", 0.85)
        t[f"{case}: padding share of computed tokens"] = check(c["padding_share"], "<", 0.05)
    t["second run: model load seconds (cache warm)"] = check(r["load"]["warm"]["load_seconds"], "<", 2.0)
    if "bf16" in r:
        t["bf16 on a CPU with bf16 units: speed-up over float32 (faster variant)"] = check(r["bf16"]["speedup"], ">=",
                                                                                           1.8)
    if "memory" in r:
        m = r["memory"]
        t["long (L=2048): peak RSS MB vs weights + 1500"] = check(r["long"]["peak_rss_lleval_mb"], "<",
                                                                   r["weights_mb"] + 1500)
        t["256k vocabulary: peak RSS MB"] = check(m["vocab_256k"]["peak_rss_mb"], "<", 2000)
        t["streaming: RSS growth MB"] = check(m["streaming"]["growth_mb"], "<", 200)
        t["start-up --help s"] = check(m["startup_help_seconds"], "<", 0.5)
    return t


def run_cpu(args: argparse.Namespace) -> dict[str, Any]:
    from lleval.commands.score import load
    from lleval.config import EvalConfig
    from lleval.hardware import has_fast_half

    loaded = load(EvalConfig())  # fills the model cache too
    work = Path(tempfile.mkdtemp(prefix="lleval-bench-"))
    texts = corpora(loaded.tokenizer, args.quick)
    files = {name: write_jsonl(work / f"{name}.jsonl", t) for name, t in texts.items()}
    results: dict[str, Any] = {"machine": cpu_info(), "weights_mb": sum(
        p.numel() * p.element_size() for p in loaded.model.parameters()) / 1e6}
    results["load"] = cold_and_warm_load(files["short"], work)
    repeats = 1 if args.quick else 2
    for name in ("short", "long", "tiny"):
        results[name] = cpu_case(name, files[name], loaded, texts[name], work, repeats)
        print_case(results[name], flush=True)
    if has_fast_half("bfloat16"):
        results["bf16"] = bf16_case(files["short"], work, repeats)
        results["bf16_matmul_gflops"] = matmul_gflops(__import__("torch").bfloat16)
    if not args.quick:
        results["memory"] = memory_checks(work, texts["long"], args.quick)
    results["targets"] = cpu_targets(results)
    return results


def print_case(c: dict[str, Any], flush: bool = False) -> None:
    print(f"{c['case']:5}: {c['documents']} docs, {c['tokens']} tokens; whole process lleval {c['lleval_wall_seconds']:.1f} s "
          f"vs naive {c['naive_wall_seconds']:.1f} s (x{c['speedup_whole_process']:.2f}); load {c['lleval_load_seconds']:.2f} "
          f"vs {c['naive_load_seconds']:.1f} s; scoring {c['lleval_scoring_tokens_per_second']:.0f} vs "
          f"{c['naive_scoring_tokens_per_second']:.0f} tok/s; {c['lleval_share_of_matmul_limit'] * 100:.0f}% / "
          f"{c['naive_share_of_matmul_limit'] * 100:.0f}% of {c['matmul_gflops']:.0f} GFLOP/s; padding "
          f"{c['padding_share'] * 100:.1f}% in {c['batches']} batches; peak RSS {c['peak_rss_lleval_mb']:.0f} / "
          f"{c['peak_rss_naive_mb']:.0f} MB; totals vs naive {c['relative_difference_vs_naive']:.1e}", flush=flush)


# ---------------------------------------------------------------- GPU run (in process)

def random_model(folder: Path, size: str, tokenizer: Any, device: str = "cpu") -> None:
    """A Llama of the given size with random weights, saved with ``tokenizer``; built on
    ``device`` (drawing 1.2 billion random weights takes seconds on a CPU, none on a GPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shapes = {  # 1b: the shape of Llama-3.2-1B; small: for a smoke test on a CPU
        "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=128256),
        "small": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=max(len(tokenizer), 1024)),
    }
    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=8192, tie_word_embeddings=True, **shapes[size])
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # else the batch budget (70% of free memory) counts this model's cache
    tokenizer.save_pretrained(folder)


def naive_in_process(model: Any, tokenizer: Any, texts: list[str], max_length: int, device: str) -> tuple[int, float]:
    """The naive loop in this process: tokenize, then one window at a time, full logits."""
    import torch

    tokens, ll = 0, 0.0
    with torch.inference_mode():
        for text in texts:
            seq = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
            target = 1
            while target < len(seq):
                last = min(target + max_length, len(seq)) - 1
                begin = max(0, last - max_length)
                logits = model(torch.tensor([seq[begin:last]], device=device)).logits[0]
                logp = torch.log_softmax(logits.float(), dim=-1)
                idx = torch.arange(target - 1 - begin, last - begin, device=device)
                ll += float(logp[idx, torch.tensor(seq[target : last + 1], device=device)].double().sum())
                tokens += last + 1 - target
                target = last + 1
    return tokens, ll


def peak_tflops(device: str) -> tuple[str, float | None]:
    import torch

    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, value in GPU_BF16_PEAK_TFLOPS.items():
        if key in name:
            return name, value
    return name, None


def gpu_case(name: str, data: str, texts: list[str], loaded: Any, device: str, repeats: int) -> dict[str, Any]:
    import torch

    from lleval.commands.score import evaluate
    from lleval.config import EvalConfig

    tok = loaded.tokenizer
    sequences = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    flops = required_flops(loaded.model, sequences, 2048)
    ours_s, naive_s, ours_mem, naive_mem = float("inf"), float("inf"), 0, 0
    report, naive_tokens, naive_ll = None, 0, 0.0
    on_gpu = device.startswith("cuda")
    for _ in range(repeats):
        if on_gpu:
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        report = evaluate(EvalConfig(dataset=data, bootstrap=0, device=device, dtype="bfloat16"), loaded=loaded)
        if on_gpu:
            torch.cuda.synchronize(); ours_mem = max(ours_mem, torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        ours_s = min(ours_s, time.perf_counter() - started)
        started = time.perf_counter()
        naive_tokens, naive_ll = naive_in_process(loaded.model, tok, texts, 2048, device)
        if on_gpu:
            torch.cuda.synchronize(); naive_mem = max(naive_mem, torch.cuda.max_memory_allocated())
        naive_s = min(naive_s, time.perf_counter() - started)
    assert report is not None
    gpu, peak = peak_tflops(device)
    mfu = (lambda seconds: None if peak is None else flops / seconds / (peak * 1e12))
    return {"case": name, "device": gpu, "tokens": report.totals.tokens, "naive_tokens": naive_tokens,
            "lleval_tokens_per_second": report.totals.tokens / ours_s, "naive_tokens_per_second": naive_tokens / naive_s,
            "speedup": naive_s / ours_s, "lleval_mfu": mfu(ours_s), "naive_mfu": mfu(naive_s), "bf16_peak_tflops": peak,
            "lleval_peak_memory_gb": ours_mem / 1e9, "naive_peak_memory_gb": naive_mem / 1e9,
            "padding_share": report.timing["padding_share"], "batches": report.timing["batches"],
            "batching": report.timing["batching"], "out_of_memory_splits": report.timing["out_of_memory_splits"],
            "relative_difference_vs_naive": abs(report.totals.log_likelihood - naive_ll) / max(1e-30, abs(naive_ll))}


def gpu_matmul_tflops(device: str, size: int = 8192, repeats: int = 10) -> float | None:
    """The bf16 matrix-product rate this GPU reaches on random data (8192^3, after warm-up):
    the ceiling MFU is also given against, next to the datasheet peak."""
    import torch

    if not device.startswith("cuda"):
        return None
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def bench_tokenizer(path: str | None) -> Any:
    """The tokenizer that cuts the corpora: a saved folder (the device check carries the
    built-in model's, saved by scripts/device_wheels.sh), else the built-in model's own."""
    if path:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    from lleval.commands.score import model_spec
    from lleval.config import EvalConfig
    from lleval.backends.hf import open_model

    return open_model(model_spec(EvalConfig(device="cpu"))).tokenizer


def run_gpu(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    from lleval.commands.score import load
    from lleval.config import EvalConfig

    tokenizer = bench_tokenizer(args.tokenizer)  # it cuts the texts; the model scores random weights
    work = Path(args.work or tempfile.mkdtemp(prefix="lleval-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    texts = corpora(tokenizer, args.quick, args.smoke)
    folder = work / f"random-{args.model_config}"
    if not (folder / "config.json").exists():  # kept in --work for later steps (lleval kld)
        random_model(folder, args.model_config, tokenizer, args.device)
    loaded = load(EvalConfig(model=str(folder), device=args.device, dtype="bfloat16"))
    results: dict[str, Any] = {"model_config": args.model_config, "parameters": loaded.info.parameters,
                               "torch": torch.__version__, "transformers": transformers.__version__,
                               "bf16_matmul_tflops_measured": gpu_matmul_tflops(args.device)}
    for name, corpus in texts.items():
        results[name] = gpu_case(name, write_jsonl(work / f"{name}.jsonl", corpus), corpus, loaded, args.device,
                                 1 if args.quick else 2)
        c = results[name]
        measured = results["bf16_matmul_tflops_measured"]
        c["lleval_share_of_measured_matmul"] = None if measured is None else (
            c["lleval_mfu"] * c["bf16_peak_tflops"] / measured if c["lleval_mfu"] is not None else None)
        mfu = "n/a" if c["lleval_mfu"] is None else f"{c['lleval_mfu'] * 100:.1f}% / {c['naive_mfu'] * 100:.1f}%"
        print(f"{name:5} on {c['device']}: lleval {c['lleval_tokens_per_second']:.0f} tok/s, naive "
              f"{c['naive_tokens_per_second']:.0f} (x{c['speedup']:.2f}); MFU {mfu}; peak memory "
              f"{c['lleval_peak_memory_gb']:.2f} / {c['naive_peak_memory_gb']:.2f} GB; padding "
              f"{c['padding_share'] * 100:.1f}%; totals vs naive {c['relative_difference_vs_naive']:.1e}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller corpora, one round, no memory checks")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--smoke", action="store_true",
                        help="in process: tiny corpora (3 short, 1 long, 40 tiny documents), to prove the code path")
    parser.add_argument("--device", default="cpu", help="cpu (whole processes) or cuda (in process, bf16)")
    parser.add_argument("--model-config", default="1b", choices=("1b", "small"),
                        help="in process: the random-weight Llama to score")
    parser.add_argument("--tokenizer", default=None,
                        help="in process: a saved tokenizer folder to cut the corpora (default: the built-in model's)")
    parser.add_argument("--work", default=None,
                        help="in process: folder for the random model and the corpora (kept; default: a temp dir)")
    parser.add_argument("--in-process", action="store_true",
                        help="the GPU comparison (implied by a device other than cpu); with --device cpu "
                        "--model-config small, a quick check that it runs")
    args = parser.parse_args()
    from lleval.threads import cap_torch_threads

    cap_torch_threads()  # as the CLI does: the library leaves torch's threads alone
    os.environ.update({k: v for k, v in ENV.items() if k not in os.environ})
    if args.device == "cpu" and not args.in_process:
        results = run_cpu(args)
        print(f"CPU: {results['machine']['model']} ({results['machine']['capability']}, bf16 units: "
              f"{results['machine']['bf16_matmul']}), {results['machine']['torch_threads']} torch threads")
        load = results["load"]
        print(f"model load: {load['cold']['load_seconds']:.1f} s converting ({load['cold']['cache']}), "
              f"{load['warm']['load_seconds']:.2f} s from the cache ({load['warm']['cache']})")
        if "bf16" in results:
            b = results["bf16"]
            for name in ("bfloat16", "bfloat16, bf16 head"):
                v = b[name]
                ci = "n/a" if v["ln_ppl_ratio_ci"] is None else "[{:+.5f}, {:+.5f}]".format(*v["ln_ppl_ratio_ci"])
                print(f"{name}: {v['tokens_per_second']:.0f} vs float32 {b['float32_tokens_per_second']:.0f} tok/s "
                      f"(x{v['speedup']:.2f}); mean KL {v['mean_kl_nats']:.5f} nats, top-token agreement "
                      f"{v['top_token_agreement'] * 100:.2f}%, ln PPL ratio {v['ln_ppl_ratio']:+.5f} {ci}")
        if "memory" in results:
            m = results["memory"]
            print(f"256k vocabulary: peak RSS {m['vocab_256k']['peak_rss_mb']:.0f} MB; streaming "
                  f"{m['streaming']['documents']} docs: RSS growth {m['streaming']['growth_mb']:.0f} MB; "
                  f"--help {m['startup_help_seconds']:.2f} s")
        print("targets:")
        for name, t in results["targets"].items():
            print(f"  {'met ' if t['met'] else 'MISS'} {name}: {t['value']:.3g} {t['op']} {t['bound']:.3g}")
    else:
        results = run_gpu(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
