"""lleval through a served model against lm-evaluation-harness's ``local-completions`` backend
on the same server, and against lleval in process: tokens/s and the log-likelihood each gets.

All three score the same documents (the docstrings of the first ``--docs`` modules of Python's
standard library, 3,000 characters each at most: text no one tuned on) with lm-eval's
rolling protocol (``loglikelihood_rolling``; lleval's ``--protocol lm-eval``) at the same
window length, so the numbers must agree; the speed figures are whole-process wall time
(each pays its start-up) and, for lleval, its scoring time alone. lm-eval runs with its
default ``num_concurrent=1`` (one window per request, in turn) and with ``--concurrent``.

    # a vLLM server serving the built-in SmolLM2 in float32 (the folder lleval's cache writes)
    .venv/bin/python scripts/bench_served.py --url http://127.0.0.1:8000/v1 --model-folder DIR \\
        --lm-eval-python /path/to/venv-with-lm_eval/bin/python --docs 20 --max-length 512
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

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
LLEVAL = str(Path(sys.executable).parent / "lleval")

TASK = """task: lleval_bench
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
"""


def lleval_run(model: list[str], data: Path, length: int, out: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    subprocess.run([LLEVAL, "score", "-q", *model, "-d", str(data), "--protocol", "lm-eval", "--max-length",
                    str(length), "--bootstrap", "0", "-o", str(out)], check=True, env=ENV, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, json.loads(out.read_text())


def lm_eval_run(python: str, url: str, served: str, folder: str, data: Path, length: int, concurrent: int,
                work: Path) -> tuple[float, float]:
    """Wall seconds and the summed log-likelihood of lm-eval's local-completions run."""
    tasks = work / f"tasks-{concurrent}"
    tasks.mkdir()
    (tasks / "lleval_bench.yaml").write_text(TASK.format(data=data))
    args = (f"model={served},base_url={url}/completions,tokenizer_backend=huggingface,tokenizer={folder},"
            f"max_length={length + 1},num_concurrent={concurrent},tokenized_requests=True")  # it keeps max_length - 1
    out = work / f"lm-eval-{concurrent}"
    started = time.perf_counter()
    subprocess.run([python, "-m", "lm_eval", "--model", "local-completions", "--model_args", args,
                    "--tasks", "lleval_bench", "--include_path", str(tasks), "--output_path", str(out),
                    "--log_samples"], check=True, env=ENV, capture_output=True)
    seconds = time.perf_counter() - started
    samples = [json.loads(line) for path in out.rglob("samples_lleval_bench_*.jsonl") for line in path.open()]
    return seconds, sum(float(s["filtered_resps"][0]) if not isinstance(s["filtered_resps"][0], list)
                        else float(s["filtered_resps"][0][0]) for s in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server's base URL, .../v1")
    parser.add_argument("--model-folder", required=True, help="the served model's folder (its tokenizer)")
    parser.add_argument("--served-model", default=None, help="its name on the server (default: the only one)")
    parser.add_argument("--lm-eval-python", required=True, help="python of a venv with lm_eval[api]")
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--concurrent", type=int, default=8, help="lm-eval's num_concurrent in its second run")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import stdlib_docstrings

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "docs.jsonl"
        texts = [" ".join(docs)[:3000] for _, docs in stdlib_docstrings()[: args.docs]]
        data.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
        served_flags = ["-m", args.url] + (["--served-model", args.served_model] if args.served_model else [])
        served_s, served = lleval_run(served_flags, data, args.max_length, work / "served.json")
        name = served["model"]["server"]["model"]
        local_s, local = lleval_run([], data, args.max_length, work / "local.json")
        tokens = served["totals"]["tokens"]
        rows = [("lleval via server", served_s, tokens / served_s, served["totals"]["log_likelihood"]),
                ("lleval in process", local_s, tokens / local_s, local["totals"]["log_likelihood"])]
        for concurrent in (1, args.concurrent):
            seconds, ll = lm_eval_run(args.lm_eval_python, args.url, name, args.model_folder, data, args.max_length,
                                      concurrent, work)
            rows.append((f"lm-eval local-completions, num_concurrent={concurrent}", seconds, tokens / seconds, ll))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"{cpu}, {os.cpu_count()} CPUs; {len(texts)} documents, {tokens} tokens, lm-eval protocol, L = "
          f"{args.max_length}; reference log-likelihood: lleval in process")
    print(f"lleval's scoring alone (timing.tokens_per_second): via server {served['timing']['tokens_per_second']:.0f}, "
          f"in process {local['timing']['tokens_per_second']:.0f} tokens/s")
    reference = local["totals"]["log_likelihood"]
    for label, seconds, rate, ll in rows:
        print(f"{label:48s} {seconds:7.1f} s wall  {rate:8.0f} tokens/s (wall)  log-likelihood {ll:.4f} "
              f"({(ll - reference) / abs(reference):+.2e} relative)")


if __name__ == "__main__":
    main()
