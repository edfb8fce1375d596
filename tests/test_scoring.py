"""The engine with fake models: analytic golden values, batching and padding invariance."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lleval.scoring import EngineOptions, EngineStats, Unit, score_units, scorer_from_logits
from lleval.windows import rolling_spans

VOCAB = 50


def uniform_logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(*input_ids.shape, VOCAB)


def content_logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Causal fake: logits at t depend only on tokens 0..t of the row (cumulative sum)."""
    generator = torch.Generator().manual_seed(1)
    table = torch.randn(VOCAB, VOCAB, generator=generator)
    state = torch.cumsum(input_ids, dim=1) % VOCAB  # (B, T)
    return table[state] * 3.0  # (B, T, V)


def reference(tokens: list[int]) -> list[float]:
    """Log-probs of content_logits computed one position at a time, no batching."""
    out = []
    ids = torch.tensor([tokens])
    logits = content_logits(ids, torch.ones_like(ids))[0].double()
    for pos in range(1, len(tokens)):
        out.append(float(torch.log_softmax(logits[pos - 1], dim=-1)[tokens[pos]]))
    return out


def make_units(docs: list[list[int]], max_length: int, stride: int) -> list[Unit]:
    return [Unit(d, rolling_spans(len(d), max_length, stride), [i]) for i, d in enumerate(docs)]


def random_docs(seed: int, n: int = 20) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(rng.randrange(1, 90))] for _ in range(n)]


def test_uniform_logits_give_perplexity_equal_to_vocab() -> None:
    docs = random_docs(0)
    rows = list(score_units(scorer_from_logits(uniform_logits), make_units(docs, 16, 8), EngineOptions(batch_size=4)))
    ll = sum(r.log_likelihood for r in rows)
    n = sum(r.tokens for r in rows)
    assert n == sum(len(d) - 1 for d in docs)
    assert math.isclose(math.exp(-ll / n), VOCAB, rel_tol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
@pytest.mark.parametrize("max_length,stride", [(16, 16), (16, 5), (1, 1)])
def test_totals_match_reference_for_any_batching(batch_size: int, max_length: int, stride: int) -> None:
    # content_logits depends on the whole prefix, so windows see truncated context:
    # compare against the same windows scored one at a time.
    docs = random_docs(1)
    expected_rows = []
    for doc in docs:
        lp = 0.0
        for span in rolling_spans(len(doc), max_length, stride):
            window = doc[span.start : span.end]
            lp += sum(reference(window)[-span.n_scored :])
        expected_rows.append(lp)
    stats = EngineStats()
    rows = list(
        score_units(
            scorer_from_logits(content_logits), make_units(docs, max_length, stride),
            EngineOptions(batch_size=batch_size, block_tokens=200), stats=stats,
        )
    )
    assert [r.row for r in rows] == list(range(len(docs)))
    for row, expected in zip(rows, expected_rows):
        assert math.isclose(row.log_likelihood, expected, rel_tol=1e-6, abs_tol=1e-9)
    assert stats.scored_tokens == sum(len(d) - 1 for d in docs)


def test_owners_split_a_stream_into_rows() -> None:
    tokens = list(range(1, 30))
    owners = np.array([0] * 10 + [1] * 5 + [2] * 14)
    unit = Unit(tokens, rolling_spans(len(tokens), 8, 3), [0, 1, 2], owners)
    rows = list(score_units(scorer_from_logits(uniform_logits), [unit], EngineOptions(batch_size=2)))
    assert [r.tokens for r in rows] == [9, 5, 14]  # position 0 is never scored
    for r in rows:
        assert math.isclose(r.log_likelihood, -r.tokens * math.log(VOCAB), rel_tol=1e-6)


def test_padding_share_is_counted() -> None:
    stats = EngineStats()
    docs = [[1] * 9, [1] * 3]
    list(score_units(scorer_from_logits(uniform_logits), make_units(docs, 16, 16), EngineOptions(batch_size=2), stats=stats))
    assert stats.computed_tokens == 2 * 8 and stats.padding_tokens == 8 - 2


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=0, max_size=70), min_size=1, max_size=8),
    st.integers(1, 24),
    st.data(),
)
def test_aggregation_matches_reference_for_random_shapes(docs: list[list[int]], max_length: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, max_length))
    batch_size = data.draw(st.integers(1, 9))
    block_tokens = data.draw(st.integers(1, 400))
    rows = list(
        score_units(
            scorer_from_logits(content_logits), make_units(docs, max_length, stride),
            EngineOptions(batch_size=batch_size, block_tokens=block_tokens),
        )
    )
    assert [r.row for r in rows] == list(range(len(docs)))
    for doc, row in zip(docs, rows):
        expected = 0.0
        for span in rolling_spans(len(doc), max_length, stride):
            expected += sum(reference(doc[span.start : span.end])[-span.n_scored :])
        assert row.tokens == max(len(doc) - 1, 0)
        assert math.isclose(row.log_likelihood, expected, rel_tol=1e-6, abs_tol=1e-6)
