"""Slow tests: a GPU or the network. Deselected by default (``-m 'not slow'`` in pyproject);
run them with ``pytest -m slow``: each skips itself where what it needs is missing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import rel_close, write_jsonl
from lleval.config import EvalConfig

pytestmark = pytest.mark.slow
TEXTS = [f"Document {i}: " + "the river runs past the mill and under the old stone bridge. " * (3 + i) for i in range(8)]


def _cuda() -> Any:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch


def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_gpu_bf16_run_agrees_with_cpu_float32(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from lleval.api import evaluate

    _cuda()
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    cpu = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=data, device="cpu", bootstrap=0))
    gpu = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=data, device="cuda", bootstrap=0))
    assert gpu.model["dtype"] == "bfloat16" and gpu.model["device"].startswith("cuda")  # --dtype auto on a GPU
    assert gpu.totals.tokens == cpu.totals.tokens
    assert rel_close(gpu.totals.log_likelihood, cpu.totals.log_likelihood, 2e-2)


def test_gpu_out_of_memory_backoff_changes_no_number(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A real CUDA out-of-memory error (a batch too big for a memory cap) is split and retried."""
    from lleval.api import evaluate, load

    torch = _cuda()
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS * 64)
    config = EvalConfig(model=str(tiny_llama_dir), dataset=data, device="cuda", dtype="float32", bootstrap=0)
    loaded = load(config)
    small = evaluate(EvalConfig(**{**config.__dict__, "batch_size": 1}), loaded=loaded)
    free, _total = torch.cuda.mem_get_info()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated() + (64 << 20)) / _total))
    try:
        big = evaluate(EvalConfig(**{**config.__dict__, "batch_size": 4096, "max_length": 64}), loaded=loaded)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert big.timing["out_of_memory_splits"] > 0
    assert big.totals.tokens == small.totals.tokens
    assert rel_close(big.totals.log_likelihood, small.totals.log_likelihood, 1e-5)


def test_hub_model_and_dataset(tmp_path: Path) -> None:
    if not _hub_reachable():
        pytest.skip("needs the Hugging Face hub")
    out = tmp_path / "r.json"
    lleval = str(Path(sys.executable).parent / "lleval")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    result = subprocess.run([lleval, "score", "-q", "-m", "HuggingFaceTB/SmolLM2-135M", "-d", "Salesforce/wikitext",
                             "--dataset-config", "wikitext-2-raw-v1", "--split", "test", "--limit", "40", "-o",
                             str(out)], capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["model"]["source"] == "hub" and report["model"]["revision"]
    assert 1.0 < report["metrics"]["perplexity"] < 100.0
