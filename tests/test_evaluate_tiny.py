"""The whole library path on tiny random models, against a naive loop written here."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import naive_rolling_logprobs, rel_close, write_jsonl
from lleval.commands.score import evaluate
from lleval.config import EvalConfig
from lleval.data.spec import builtin_sample_path

TEXTS = [json.loads(line)["text"] for line in builtin_sample_path().read_text().splitlines()]


def _naive_totals(model_dir: Path, texts: list[str], max_length: int, stride: int, prefix: bool = True) -> tuple[float, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ll, n = 0.0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        tokens = ([tokenizer.bos_token_id] if prefix else []) + ids
        lps = naive_rolling_logprobs(model, tokens, max_length, stride)
        ll += sum(lps)
        n += len(lps)
    return ll, n


def _jsonl(tmp_path: Path, texts: list[str]) -> str:
    return write_jsonl(tmp_path / "docs.jsonl", texts)


@pytest.mark.parametrize(("batch_size", "max_batch_tokens"), [(1, None), (3, None), (8, None), (8, 70), ("auto", None)])
def test_batch_sizes_match_naive_loop(
    tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path, batch_size: int | str, max_batch_tokens: int | None
) -> None:
    texts = [t[: 150 + 40 * i] for i, t in enumerate(TEXTS[:6])]
    expected_ll, expected_n = _naive_totals(tiny_model_dir, texts, 32, 32)
    config = EvalConfig(
        dataset=_jsonl(tmp_path, texts), max_length=32, batch_size=batch_size, max_batch_tokens=max_batch_tokens
    )
    report = evaluate(config, loaded=tiny_loaded)
    assert report.totals.tokens == expected_n
    assert rel_close(report.totals.log_likelihood, expected_ll, 1e-6)


def test_strided_windows_match_naive_loop(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path) -> None:
    texts = [t[:400] for t in TEXTS[:3]]
    expected_ll, expected_n = _naive_totals(tiny_model_dir, texts, 24, 7)
    report = evaluate(EvalConfig(dataset=_jsonl(tmp_path, texts), max_length=24, stride=7, batch_size=5), loaded=tiny_loaded)
    assert report.totals.tokens == expected_n
    assert rel_close(report.totals.log_likelihood, expected_ll, 1e-6)


def test_prefix_none_leaves_first_token_unscored(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path) -> None:
    texts = [t[:200] for t in TEXTS[:2]]
    expected_ll, expected_n = _naive_totals(tiny_model_dir, texts, 64, 64, prefix=False)
    report = evaluate(EvalConfig(dataset=_jsonl(tmp_path, texts), prefix_token="none"), loaded=tiny_loaded)
    assert report.totals.tokens == expected_n
    assert report.protocol["first_token_scored"] is False and report.protocol["prefix_token"] is None
    assert rel_close(report.totals.log_likelihood, expected_ll, 1e-6)


def test_llama_plain_head_path_equals_full_logits(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from lleval.commands.score import load

    texts = [t[:300] for t in TEXTS[3:6]]
    expected_ll, expected_n = _naive_totals(tiny_llama_dir, texts, 40, 13)
    loaded = load(EvalConfig(model=str(tiny_llama_dir)))
    report = evaluate(EvalConfig(dataset=_jsonl(tmp_path, texts), max_length=40, stride=13, batch_size=4), loaded=loaded)
    assert report.totals.tokens == expected_n
    assert rel_close(report.totals.log_likelihood, expected_ll, 1e-6)


def test_generic_head_path_equals_plain(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lleval.backends.hf.logits as model_mod
    from lleval.commands.score import load

    data = _jsonl(tmp_path, [t[:300] for t in TEXTS[:4]])
    plain = evaluate(EvalConfig(dataset=data, batch_size=3), loaded=tiny_loaded)
    monkeypatch.setattr(model_mod, "PLAIN_HEAD_MODEL_TYPES", frozenset())
    generic = evaluate(EvalConfig(dataset=data, batch_size=3), loaded=load(EvalConfig(model=str(tiny_model_dir))))
    assert generic.totals.tokens == plain.totals.tokens
    assert rel_close(generic.totals.log_likelihood, plain.totals.log_likelihood, 1e-6)


def test_small_logit_slices_change_nothing(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path) -> None:
    from lleval.commands.score import LoadedModel
    from lleval.backends.hf import make_scorer
    from transformers import AutoModelForCausalLM

    data = _jsonl(tmp_path, [t[:300] for t in TEXTS[:4]])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    # 4 * 320 bytes per position: a slice of exactly one position
    sliced = LoadedModel(make_scorer(model, slice_bytes=4 * 320), tiny_loaded.tokenizer, tiny_loaded.info)
    a = evaluate(EvalConfig(dataset=data), loaded=tiny_loaded)
    b = evaluate(EvalConfig(dataset=data), loaded=sliced)
    assert rel_close(a.totals.log_likelihood, b.totals.log_likelihood, 1e-6)


def test_concat_rows_add_up_to_stream(tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = [t[:120] for t in TEXTS[:5]]
    report = evaluate(EvalConfig(dataset=_jsonl(tmp_path, texts), concat="\n\n", max_length=48, stride=16), loaded=tiny_loaded)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    stream = [tokenizer.bos_token_id] + tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    lps = naive_rolling_logprobs(model, stream, 48, 16)
    assert report.totals.tokens == len(stream) - 1 == len(lps)
    assert rel_close(report.totals.log_likelihood, sum(lps), 1e-6)
    assert report.totals.bytes == len("\n\n".join(texts).encode())
    assert sum(d.tokens for d in report.documents) == report.totals.tokens
    assert [d.index for d in report.documents] == list(range(5))


def test_report_metrics_follow_from_totals(tiny_loaded: Any, tmp_path: Path) -> None:
    texts = ["héllo wörld, " * 5, "", "second document here"]
    report = evaluate(EvalConfig(dataset=_jsonl(tmp_path, texts)), loaded=tiny_loaded)
    data = report.to_dict()
    t = data["totals"]
    assert data["dataset"]["skipped_empty"] == 1 and t["documents"] == 2
    assert [d["index"] for d in data["documents"]] == [0, 2]
    assert t["bytes"] == sum(len(x.encode("utf-8")) for x in texts)
    assert t["words"] == sum(len(x.split()) for x in texts)
    assert math.isclose(data["metrics"]["perplexity"], math.exp(-t["log_likelihood"] / t["tokens"]))
    assert math.isclose(data["metrics"]["bits_per_byte"], -t["log_likelihood"] / (math.log(2) * t["bytes"]))
    assert math.isclose(data["metrics"]["word_perplexity"], math.exp(-t["log_likelihood"] / t["words"]))
    assert t["log_likelihood"] <= 0


def test_tokenizer_checks_fail_before_the_weights_load(tiny_model_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A --prefix-token outside the vocabulary, or --max-length past the model's positions,
    is found from the tokenizer and config alone: the weights are never loaded."""
    import lleval.backends.hf.backend
    from lleval.errors import ConfigError

    def no_weights(*args: Any) -> Any:
        raise AssertionError("weights loaded before the flags were checked")

    monkeypatch.setattr(lleval.backends.hf.backend, "load_weights", no_weights)
    data = _jsonl(tmp_path, ["a short text"])
    with pytest.raises(ConfigError, match="not in the tokenizer's vocabulary"):
        evaluate(EvalConfig(model=str(tiny_model_dir), dataset=data, prefix_token="99999"))
    with pytest.raises(ConfigError, match="larger than the model's 64 positions"):
        evaluate(EvalConfig(model=str(tiny_model_dir), dataset=data, max_length=128))


def test_kld_compares_tokenizers_before_the_weights_load(tiny_model_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import lleval.backends.hf.backend
    from lleval.errors import ConfigError
    from lleval.commands.kld import kl_divergence
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<|extra|>"])
    tokenizer.save_pretrained(other)
    monkeypatch.setattr(lleval.backends.hf.backend, "load_weights", lambda *a: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(ConfigError, match="tokenizers .* differ"):
        kl_divergence(EvalConfig(model=str(tiny_model_dir), dataset=_jsonl(tmp_path, ["text"])), str(other))


class _Collect:
    """A progress display that keeps every update."""

    def __init__(self) -> None:
        self.stages: list[str] = []
        self.updates: list[Any] = []

    def stage(self, text: str) -> None:
        self.stages.append(text)

    def update(self, state: Any) -> None:
        self.updates.append(state)


@pytest.mark.parametrize("block_tokens", [1 << 20, 300])
def test_progress_counts_tokens_batch_by_batch(tiny_loaded: Any, tmp_path: Path, block_tokens: int) -> None:
    texts = [t[:400] for t in TEXTS]
    progress = _Collect()
    report = evaluate(EvalConfig(dataset=_jsonl(tmp_path, texts), batch_size=2, max_length=32, bootstrap=0,
                                 block_tokens=block_tokens), loaded=tiny_loaded, progress=progress)
    updates = progress.updates
    tokens = [u.tokens for u in updates]
    assert progress.stages == ["tokenizing", "scoring", "writing report"] and tokens == sorted(tokens)
    assert tokens[-1] == report.totals.tokens == updates[-1].tokens_planned
    assert [u.documents for u in updates] == sorted(u.documents for u in updates)
    assert updates[-1].documents == len(texts) == updates[-1].documents_expected
    assert updates[-1].all_planned and updates[-1].tokens_per_second and updates[-1].tokens_per_second > 0
    assert updates[-1].seconds_left == 0
    assert len(set(tokens)) > len(texts) // 2  # counted batch by batch, not block by block
    if block_tokens > report.totals.tokens:  # one block: documents are counted as their last window is scored
        assert any(0 < u.documents < len(texts) for u in updates)
    if block_tokens < report.totals.tokens:  # several blocks: the plan grows as they are read
        assert not updates[0].all_planned and updates[0].tokens_planned < report.totals.tokens
