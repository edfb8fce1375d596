"""Each --protocol against a naive loop written here from the protocol's description."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TINY_TOKENIZER
from helpers import naive_hf_guide, naive_llama_cpp, naive_rolling_logprobs, rel_close, write_jsonl
from lleval.commands.score import evaluate
from lleval.config import EvalConfig
from lleval.data.sources import Document
from lleval.data.spec import builtin_sample_path
from lleval.errors import ConfigError, DataError
from lleval.plan.protocols import lm_eval_words, plan

TEXTS = [json.loads(line)["text"][:260] for line in builtin_sample_path().read_text().splitlines()][:5]


def _jsonl(tmp_path: Path, texts: list[str]) -> str:
    return write_jsonl(tmp_path / "docs.jsonl", texts)


def _model(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def test_lm_eval_protocol(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path) -> None:
    texts = [" starts with a space", *TEXTS[:3], "ends with a newline\n"]
    report = evaluate(EvalConfig(dataset=_jsonl(tmp_path, texts), protocol="lm-eval", max_length=24, batch_size=3), loaded=tiny_loaded)
    model, tok = _model(tiny_model_dir), tiny_loaded.tokenizer
    ll, n = 0.0, 0
    for text in texts:
        lps = naive_rolling_logprobs(model, [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"], 24, 24)
        ll, n = ll + sum(lps), n + len(lps)
    assert report.totals.tokens == n and rel_close(report.totals.log_likelihood, ll, 1e-6)
    import re

    assert report.totals.words == sum(len(re.split(r"\s+", t)) for t in texts)
    assert report.protocol["name"] == "lm-eval" and report.protocol["stride"] == 24


def test_lm_eval_word_count_counts_edge_whitespace() -> None:
    assert lm_eval_words(" a b ") == 4 and lm_eval_words("a b") == 2


@pytest.mark.parametrize("max_length,stride", [(32, 16), (20, 7), (16, 16)])
def test_hf_guide_protocol(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path, max_length: int, stride: int) -> None:
    config = EvalConfig(dataset=_jsonl(tmp_path, TEXTS), protocol="hf-guide", max_length=max_length, stride=stride)
    report = evaluate(config, loaded=tiny_loaded)
    ids = tiny_loaded.tokenizer("\n\n".join(TEXTS))["input_ids"]  # default special tokens
    ll, n = naive_hf_guide(_model(tiny_model_dir), ids, max_length, stride)
    assert report.totals.tokens == n
    assert rel_close(report.totals.log_likelihood, ll, 1e-6)
    if stride < max_length:
        assert n == len(ids) - 1 and report.metrics["bits_per_byte"] is not None
    else:
        assert report.metrics["bits_per_byte"] is None


@pytest.mark.parametrize("add_bos", [False, True])
def test_llama_cpp_protocol(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path, add_bos: bool) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir, add_bos_token=add_bos)
    loaded = dataclasses.replace(tiny_loaded, tokenizer=tok)
    report = evaluate(EvalConfig(dataset=_jsonl(tmp_path, TEXTS), protocol="llama-cpp", max_length=32), loaded=loaded)
    stream = tok("\n\n".join(TEXTS), add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id if add_bos else None
    if add_bos:
        stream = [bos] + stream
    ll, n, sq = naive_llama_cpp(_model(tiny_model_dir), stream, 32, bos)
    assert report.totals.tokens == n == (len(stream) // 32) * (32 // 2 - 1)
    assert rel_close(report.totals.log_likelihood, ll, 1e-6)
    mean = -ll / n
    expected_se = math.exp(mean) * math.sqrt((sq / n - mean * mean) / (n - 1))
    assert rel_close(report.metrics["perplexity_stderr_llamacpp"], expected_se, 1e-5)
    assert report.protocol["chunk_bos"] == bos and report.metrics["word_perplexity"] is None


def test_llama_cpp_needs_two_chunks(tiny_loaded: Any, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 2 x 64 = 128 tokens, and the text has"):
        evaluate(EvalConfig(dataset=_jsonl(tmp_path, ["short text"]), protocol="llama-cpp", max_length=64), loaded=tiny_loaded)


@pytest.mark.parametrize(
    "overrides",
    [
        {"protocol": "lm-eval", "stride": 3, "max_length": 8},
        {"protocol": "lm-eval", "prefix_token": "none"},
        {"protocol": "lm-eval", "concat": "\n"},
        {"protocol": "llama-cpp", "stride": 4},
        {"protocol": "hf-guide", "prefix_token": "none"},
    ],
)
def test_protocol_conflicts_are_config_errors(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="--protocol"):
        EvalConfig(**overrides).validate()  # before any tokenizer or model is loaded


_TOKENIZER: list[Any] = []


def _tiny_tokenizer() -> Any:
    if not _TOKENIZER:
        from transformers import AutoTokenizer

        _TOKENIZER.append(AutoTokenizer.from_pretrained(TINY_TOKENIZER))
    return _TOKENIZER[0]


def _scored(config: EvalConfig, texts: list[str]) -> int:
    p = plan(config, _tiny_tokenizer(), None)
    units = list(p.units(iter([Document(i, t) for i, t in enumerate(texts)]), _tiny_tokenizer()))
    return sum(s.n_scored for u in units for s in u.spans)


def _stream_length(texts: list[str], special_tokens: bool) -> int:
    """Tokens of the texts joined by two newlines, straight from the tokenizer."""
    return len(_tiny_tokenizer()("\n\n".join(texts), add_special_tokens=special_tokens)["input_ids"])


words = st.text(alphabet="abcde fg\n", min_size=1, max_size=60)


@settings(max_examples=40, deadline=None)
@given(st.lists(words, min_size=1, max_size=6), st.integers(4, 40))
def test_llama_cpp_scores_chunks_times_half_minus_one(texts: list[str], max_length: int) -> None:
    tok = _tiny_tokenizer()
    adds_bos = tok("a")["input_ids"][:1] == [tok.bos_token_id]
    stream = _stream_length(texts, False) + adds_bos  # llama.cpp puts BOS in front when the tokenizer adds it
    config = EvalConfig(protocol="llama-cpp", max_length=max_length)
    if stream < 2 * max_length:
        with pytest.raises(DataError, match="at least 2 x"):
            _scored(config, texts)
        return
    assert _scored(config, texts) == (stream // max_length) * (max_length - max_length // 2 - 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(words, min_size=1, max_size=6), st.integers(2, 40), st.data())
def test_hf_guide_scores_stream_minus_one(texts: list[str], max_length: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, max_length - 1))
    scored = _scored(EvalConfig(protocol="hf-guide", max_length=max_length, stride=stride), texts)
    assert scored == _stream_length(texts, True) - 1
