"""KL against a saved top-K reference (score --save-reference, kld --reference): exact when K
covers the vocabulary, a lower bound (the coarsened formula, checked with a float64 loop)
otherwise, resumable, and refused when made from other data, tokenizer or protocol."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from helpers import write_jsonl
from lleval.cli import main
from lleval.commands.kld import kl_divergence
from lleval.commands.score import evaluate
from lleval.config import EvalConfig
from lleval.errors import ConfigError, DataError
from lleval.report.kld import KLReport
from transformers import AutoModelForCausalLM

TEXTS = [
    "The keeper wrote in the logbook every evening, and the gate was never mended for long.",
    "Bread needs flour, water, salt and yeast. Knead it for ten minutes, then let it rise.",
    "Blue light scatters more than red light, which is why the sky looks blue at noon.",
]


def _config(tmp_path: Path, **changes: Any) -> EvalConfig:
    return EvalConfig(dataset=write_jsonl(tmp_path / "d.jsonl", TEXTS), max_length=16, stride=8, batch_size=3,
                      **changes)


def _save(tmp_path: Path, model: str, k: int, name: str = "ref.parquet", **changes: Any) -> str:
    path = str(tmp_path / name)
    evaluate(_config(tmp_path, model=model, save_reference=path, reference_top_k=k, **changes))
    return path


def test_full_k_reproduces_two_model_kld(tiny_model_dir: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    vocab = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.vocab_size
    ref = _save(tmp_path, str(tiny_model_dir), vocab - 1)
    exact = kl_divergence(_config(tmp_path, model=str(tiny_llama_dir)), str(tiny_model_dir)).to_dict()
    found = kl_divergence(_config(tmp_path, model=str(tiny_llama_dir), reference=ref), None).to_dict()
    assert found["reference"]["exact"] and found["reference"]["top_k"] == vocab - 1
    assert found["tokens"] == exact["tokens"]
    for block in ("kl_divergence", "delta_p"):
        for key in ("mean", "median", "max", "min"):
            assert found[block][key] == pytest.approx(exact[block][key], rel=1e-4, abs=1e-6), (block, key)
        for key, value in exact[block]["percentiles"].items():
            assert found[block]["percentiles"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (block, key)
    assert found["top_token_agreement"] == exact["top_token_agreement"]
    assert found["perplexity"] == exact["perplexity"]  # the base's target log-probs are score's, bit for bit
    assert found["base"]["name"] == exact["base"]["name"]
    KLReport.from_dict(json.loads(json.dumps(found)))  # the schema holds the new field
