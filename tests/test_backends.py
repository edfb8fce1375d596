"""The backend seam: a model source registered in `lleval.backends.registry` serves
`evaluate` and `kl_divergence` without any other change, what it cannot compute is refused
in one line, and each name goes to the backend that serves it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import TINY_TOKENIZER
from helpers import write_jsonl
from lleval.backends import registry
from lleval.backends.base import FULL_VOCABULARY, TARGET_LOGPROBS, LoadedModel, ModelInfo, ModelSpec
from lleval.commands.kld import kl_divergence
from lleval.commands.score import evaluate
from lleval.config import EvalConfig
from lleval.engine.kernels import scorer_from_logits
from lleval.errors import ConfigError

VOCAB = 320  # the tiny tokenizer's vocabulary
TEXTS = ["the cat sat on the mat", "a dog ran far away", "rain fell all day long"]


@dataclass
class _Opened:
    """What the fake backend's `open` gives: a tokenizer, no weights yet."""

    name: str
    tokenizer: Any
    max_positions: int | None = 64
    loads: int = 0

    def load(self) -> LoadedModel:
        self.loads += 1
        info = ModelInfo(self.name, "fake", None, None, "float32", "cpu", 0, self.max_positions)
        # a served model gives each true token's log-prob only: no logits slices
        return LoadedModel(scorer_from_logits(lambda ids, mask: torch.zeros(*ids.shape, VOCAB)), self.tokenizer, info)


class _FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.opened: list[_Opened] = []

    def claims(self, spec: ModelSpec) -> bool:
        return spec.name is not None and spec.name.startswith("fake://")

    def open(self, spec: ModelSpec) -> _Opened:
        from transformers import AutoTokenizer

        self.opened.append(_Opened(str(spec.name), AutoTokenizer.from_pretrained(TINY_TOKENIZER)))
        return self.opened[-1]


@pytest.fixture
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> _FakeBackend:
    backend = _FakeBackend()
    monkeypatch.setattr(registry, "BACKENDS", (backend, *registry.BACKENDS))
    return backend


def test_a_registered_backend_serves_a_score_run(tmp_path: Path, fake_backend: _FakeBackend) -> None:
    """Uniform log-probs over the vocabulary: every token costs ln V, so the perplexity is V."""
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    report = evaluate(EvalConfig(model="fake://tiny", dataset=data, max_length=16, bootstrap=0))
    assert [o.loads for o in fake_backend.opened] == [1]
    assert report.model["name"] == "fake://tiny" and report.model["source"] == "fake"
    assert math.isclose(report.metrics["perplexity"], VOCAB, rel_tol=1e-6)
    assert report.totals.tokens > 0


def test_what_a_backend_cannot_compute_is_refused(tmp_path: Path, fake_backend: _FakeBackend) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    loaded = fake_backend.open(ModelSpec("fake://tiny")).load()
    assert loaded.capabilities == {TARGET_LOGPROBS} and FULL_VOCABULARY not in loaded.capabilities
    with pytest.raises(ConfigError, match="--token-stats needs every log-prob of the vocabulary"):
        evaluate(EvalConfig(model="fake://tiny", dataset=data, max_length=16, token_stats=True,
                            tokens=str(tmp_path / "t.parquet")))
    with pytest.raises(ConfigError, match="KL divergence needs every log-prob of the vocabulary"):
        kl_divergence(EvalConfig(model="fake://a", dataset=data, max_length=16), "fake://b")


def test_a_url_is_a_served_model_and_a_path_or_hub_id_a_transformers_model() -> None:
    assert registry.backend_for(ModelSpec("http://127.0.0.1:8000/v1")).name == "server"
    assert registry.backend_for(ModelSpec("https://models.example/v1")).name == "server"
    for name in (None, "gpt2", "org/model", "./folder", "model.gguf"):
        assert registry.backend_for(ModelSpec(name)).name == "transformers"
