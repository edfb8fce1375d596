"""Shared fixtures: offline environment, tiny models saved once per run (reference loops and
data helpers are in `helpers`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# converted .gguf models go to a folder of this test session, not the user's cache
os.environ.setdefault("LLEVAL_MODEL_CACHE", tempfile.mkdtemp(prefix="lleval-model-cache-"))

import pytest  # noqa: E402

ASSETS = Path(__file__).parent / "assets"
TINY_TOKENIZER = ASSETS / "tiny-tokenizer"
MAX_POSITIONS = 64


def _save_tiny(folder: Path, kind: str) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=MAX_POSITIONS, n_layer=1, n_head=2, n_embd=16,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        model: Any = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, hidden_size=16, intermediate_size=32,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        model = LlamaForCausalLM(config)
    # Random init gives near-uniform predictions; sharpen them so numbers differ per token.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0) if p.dim() > 1 else None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer GPT-2 (16 wide, 64 positions) saved with the tiny tokenizer."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer Llama saved with the tiny tokenizer (the real model's architecture)."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama as a float32 .gguf file (converts in milliseconds)."""
    from helpers import write_tiny_gguf

    return write_tiny_gguf(tiny_llama_dir, tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Path) -> Any:
    """The tiny GPT-2 loaded through lleval's own loader, once per run."""
    from lleval.commands.score import load
    from lleval.config import EvalConfig

    return load(EvalConfig(model=str(tiny_model_dir)))
