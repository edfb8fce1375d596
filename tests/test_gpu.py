"""GPU tests: what lleval promises on CUDA, checked on a real device.

Marked ``gpu`` and deselected by default (``-m 'not slow and not gpu'`` in
pyproject); ``scripts/device_check.sh`` runs them on a lent GPU machine with
``pytest -m gpu tests/test_gpu.py``. Without CUDA each test skips itself,
unless ``LLEVAL_DEVICE_CHECK_CPU=1`` (``device_check.sh --dry-run``): then it
runs the same code on the CPU where that means something (float32 against
the naive loop, the back-off with a scorer that fails above a row count, the
device map, torchrun with gloo), so the plumbing is proven before any GPU
minute is spent. The data goes through .jsonl files: the device check carries
the ``datasets`` wheel (``scripts/device_wheels.sh``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import naive_rolling_logprobs, rel_close, write_jsonl
from lleval.config import EvalConfig

pytestmark = pytest.mark.gpu
TEXTS = [f"Document {i}: " + "the river runs past the mill and under the old stone bridge. " * (2 + i % 5)
         for i in range(12)]
ON_GPU = torch.cuda.is_available()
ROOT = Path(__file__).resolve().parent.parent


def _device() -> str:
    """cuda, or cpu in the device check's dry run; otherwise the test is skipped."""
    if ON_GPU:
        return "cuda"
    if os.environ.get("LLEVAL_DEVICE_CHECK_CPU") == "1":
        return "cpu"
    pytest.skip("needs a CUDA GPU (or LLEVAL_DEVICE_CHECK_CPU=1 for the CPU dry run)")


def _naive_total(model_dir: Path, texts: list[str], max_length: int, device: str, dtype: Any) -> tuple[float, int]:
    """Sum of log-probs and token count, one window at a time with full logits (float64
    log-softmax), the model loaded by plain transformers on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    ll, n = 0.0, 0
    for text in texts:
        tokens = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        lps = naive_rolling_logprobs(model, tokens, max_length, max_length, device=device)
        ll, n = ll + sum(lps), n + len(lps)
    return ll, n


def test_dtype_auto_is_bf16_on_the_gpu_and_the_report_says_so(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from lleval.commands.score import evaluate

    device = _device()
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    cpu = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=data, device="cpu", bootstrap=0))
    run = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=data, device=device, bootstrap=0))
    expected = "bfloat16" if ON_GPU and torch.cuda.is_bf16_supported() else "float32"
    assert run.model["dtype"] == expected and run.model["device"].startswith(device)
    dtype_notes = [note for note in run.notes if note.startswith(f"scored in {expected}")]
    assert len(dtype_notes) == (0 if expected == "float32" else 1)
    assert run.totals.tokens == cpu.totals.tokens
    assert rel_close(run.totals.log_likelihood, cpu.totals.log_likelihood, 2e-2)


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-5), ("bfloat16", 1e-2)])
def test_totals_match_a_naive_full_logits_loop_on_the_device(
    tiny_llama_dir: Path, tmp_path: Path, dtype: str, tol: float
) -> None:
    """lleval's padded, length-sorted batches (GPU budget and pass cost) against one window
    at a time with full logits, both on the device in the same dtype (in bf16 without the
    float32 head, so that both round the logits the same way and only the batching differs)."""
    from lleval.commands.score import evaluate

    device = _device()
    if dtype == "bfloat16" and not ON_GPU:
        pytest.skip("bf16 on this CPU measures the CPU, not the GPU path")
    expected_ll, expected_n = _naive_total(tiny_llama_dir, TEXTS, 32, device, getattr(torch, dtype))
    report = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=write_jsonl(tmp_path / "d.jsonl", TEXTS),
                                 device=device, dtype=dtype, float32_head=dtype == "float32", max_length=32,
                                 bootstrap=0))
    assert report.model["dtype"] == dtype
    assert report.timing["batching"]["auto"] and report.timing["batches"] < len(TEXTS)  # windows shared passes
    assert report.totals.tokens == expected_n
    assert rel_close(report.totals.log_likelihood, expected_ll, tol)


def _fails_above(scorer: Any, rows: int, calls: list[int]) -> Any:
    """``scorer``, raising the out-of-memory error a GPU raises on a batch of more than ``rows``."""

    def wrapped(input_ids: torch.Tensor, *rest: torch.Tensor) -> Any:
        calls.append(input_ids.shape[0])
        if input_ids.shape[0] > rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated on CPU)")
        return scorer(input_ids, *rest)

    return wrapped


def test_out_of_memory_backoff_changes_no_number(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A batch too big for the memory is split and retried; the numbers stay those of batch
    size 1. On the GPU the error is real (the allocator capped with
    ``set_per_process_memory_fraction``); in the dry run a scorer fails above 8 rows."""
    from lleval.commands.score import evaluate, load

    device = _device()
    copies = 64 if ON_GPU else 8  # about 1,000 windows on the GPU: one pass of them needs 80 MB of logits
    config = EvalConfig(model=str(tiny_llama_dir), dataset=write_jsonl(tmp_path / "d.jsonl", TEXTS * copies),
                        device=device, dtype="float32", bootstrap=0, max_length=64)
    loaded = load(config)
    small = evaluate(dataclasses.replace(config, batch_size=1), loaded=loaded)
    big_config = dataclasses.replace(config, batch_size=4096)
    if ON_GPU:
        torch.cuda.empty_cache()  # the cap counts memory the caching allocator holds
        _free, total = torch.cuda.mem_get_info()
        torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated() + (64 << 20)) / total))
        try:
            big = evaluate(big_config, loaded=loaded)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
            torch.cuda.empty_cache()
    else:
        calls: list[int] = []
        big = evaluate(big_config, loaded=dataclasses.replace(loaded, scorer=_fails_above(loaded.scorer, 8, calls)))
        # every failed pass is one split, and once split no later pass fails again
        assert sum(rows > 8 for rows in calls) == big.timing["out_of_memory_splits"]
    assert big.timing["out_of_memory_splits"] > 0
    assert big.totals.tokens == small.totals.tokens
    assert [d.log_likelihood for d in big.documents] == pytest.approx([d.log_likelihood for d in small.documents],
                                                                      rel=1e-5)


def test_device_map_auto_on_one_device_changes_no_number(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """``--device-map auto`` (accelerate) on one GPU puts every module there and scores as
    the plain ``--device cuda`` run does."""
    from lleval.commands.score import evaluate

    device = _device()
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    plain = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=data, device=device, dtype="float32", bootstrap=0))
    mapped = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=data, device="auto", device_map="auto",
                                 dtype="float32", bootstrap=0))
    placement = mapped.model["device_map"]
    assert placement and all(str(v) in (("0", "cuda:0") if ON_GPU else ("cpu",)) for v in placement.values())
    assert mapped.totals.tokens == plain.totals.tokens
    assert rel_close(mapped.totals.log_likelihood, plain.totals.log_likelihood, 1e-5)


def _torchrun(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_torchrun_one_process_places_the_rank_on_its_local_device(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Under ``torchrun --nproc-per-node 1`` LOCAL_RANK=0 picks ``cuda:0``; a world of one
    joins no process group, so the report equals the plain run's."""
    device = _device()
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    args = ["score", "-m", str(tiny_llama_dir), "-d", data, "--device", device, "--dtype", "float32", "-L", "32",
            "-q"]
    dist = _torchrun(["-m", "lleval", *args, "-o", str(tmp_path / "dist.json")])
    assert dist.returncode == 0, dist.stderr
    plain = subprocess.run([sys.executable, "-m", "lleval", *args, "-o", str(tmp_path / "plain.json")],
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("dist.json", "plain.json"))
    assert a["model"]["device"] == ("cuda:0" if ON_GPU else "cpu") and a["distributed"] is None
    assert a["documents"] == b["documents"]


def test_process_group_exchange_over_nccl(tmp_path: Path) -> None:
    """lleval's all-gather and broadcast (`DistContext`) over NCCL in a one-rank group on
    the GPU (gloo in the dry run): what every multi-GPU run exchanges after each block."""
    _device()
    out = tmp_path / "exchange.json"
    result = _torchrun([str(ROOT / "tests" / "helpers" / "exchange_world1.py"), str(out)])
    assert result.returncode == 0, result.stderr
    got = json.loads(out.read_text())
    assert got["backend"] == ("nccl" if ON_GPU else "gloo")
    assert got["exchanged"] == {"3": [0.5, -1.25], "7": [2.0]} and got["broadcast"] == {"rank0": True}
