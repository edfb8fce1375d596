"""The engine with fake models: analytic golden values, what each scored token is, and
batching and padding invariance."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import document_sums, document_sums_and_stats, units_of
from lleval.engine.kernels import scorer_from_logits
from lleval.plan.batching import Batching
from lleval.engine.scoring import EngineOptions, engine_stream, score_units
from lleval.stream import EngineTick, Row, ScoredBlock, Unit
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


def random_docs(seed: int, n: int = 20) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(rng.randrange(1, 90))] for _ in range(n)]


def expected_document(doc: list[int], max_length: int, stride: int) -> float:
    """The same windows scored one at a time: content_logits sees only a window's tokens."""
    total = 0.0
    for span in rolling_spans(len(doc), max_length, stride):
        total += sum(reference(doc[span.start : span.end])[-span.n_scored :])
    return total


def test_uniform_logits_give_perplexity_equal_to_vocab() -> None:
    docs = random_docs(0)
    rows = document_sums(scorer_from_logits(uniform_logits), units_of(docs, 16, 8), EngineOptions(Batching(4)))
    ll = sum(r.log_likelihood for r in rows)
    n = sum(r.tokens for r in rows)
    assert n == sum(len(d) - 1 for d in docs)
    assert math.isclose(math.exp(-ll / n), VOCAB, rel_tol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
@pytest.mark.parametrize("max_length,stride", [(16, 16), (16, 5), (1, 1)])
def test_totals_match_reference_for_any_batching(batch_size: int, max_length: int, stride: int) -> None:
    docs = random_docs(1)
    rows, stats = document_sums_and_stats(scorer_from_logits(content_logits), units_of(docs, max_length, stride),
                                          EngineOptions(Batching(batch_size), block_tokens=200))
    assert [r.index for r in rows] == list(range(len(docs)))
    for row, doc in zip(rows, docs):
        assert math.isclose(row.log_likelihood, expected_document(doc, max_length, stride), rel_tol=1e-6, abs_tol=1e-9)
    assert stats.scored_tokens == sum(len(d) - 1 for d in docs)


def test_owners_split_a_stream_into_rows() -> None:
    tokens = list(range(1, 30))
    owners = np.array([0] * 10 + [1] * 5 + [2] * 14)
    rows = tuple(Row(i, 1, 1, f"{i:064x}") for i in range(3))
    unit = Unit(tokens, rolling_spans(len(tokens), 8, 3), rows, 0, np.array([0, 10, 15]), owners)
    got = document_sums(scorer_from_logits(uniform_logits), [unit], EngineOptions(Batching(2)))
    assert [r.tokens for r in got] == [9, 5, 14]  # position 0 is never scored
    for r in got:
        assert math.isclose(r.log_likelihood, -r.tokens * math.log(VOCAB), rel_tol=1e-6)


def test_padding_share_is_counted() -> None:
    _, stats = document_sums_and_stats(scorer_from_logits(uniform_logits), units_of([[1] * 9, [1] * 3], 16, 16),
                                       EngineOptions(Batching(2)))
    assert stats.computed_tokens == 2 * 8 and stats.padding_tokens == 8 - 2


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=0, max_size=70), min_size=1, max_size=8),
    st.integers(1, 24),
    st.data(),
)
def test_aggregation_matches_reference_for_random_shapes(docs: list[list[int]], max_length: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, max_length))
    options = EngineOptions(Batching(data.draw(st.integers(1, 9))), block_tokens=data.draw(st.integers(1, 400)))
    rows = document_sums(scorer_from_logits(content_logits), units_of(docs, max_length, stride), options)
    assert [r.index for r in rows] == list(range(len(docs)))
    for doc, row in zip(docs, rows):
        assert row.tokens == max(len(doc) - 1, 0)
        assert math.isclose(row.log_likelihood, expected_document(doc, max_length, stride), rel_tol=1e-6, abs_tol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=5), st.integers(1, 12), st.data())
def test_each_scored_token_says_where_it_is(lengths: list[int], max_length: int, data: st.DataObject) -> None:
    """Document, position, context length and id of every token the engine yields, against
    the windows enumerated by hand, in window order."""
    stride = data.draw(st.integers(1, max_length))
    prefix = data.draw(st.booleans())
    docs = [[(7 * d + 3 * i) % VOCAB for i in range(n)] for d, n in enumerate(lengths)]
    units = [
        Unit(([VOCAB - 1] if prefix else []) + doc, rolling_spans(len(doc) + prefix, max_length, stride),
             (Row(d, 1, 1, f"{d:064x}"),), d, np.array([int(prefix)]))
        for d, doc in enumerate(docs)
    ]
    expected = []
    for unit in units:
        for span in unit.spans:
            for p in range(span.end - span.n_scored, span.end):
                expected.append((unit.first_row, p - int(prefix), p - span.start, unit.tokens[p]))
    options = EngineOptions(Batching(data.draw(st.integers(1, 6))), block_tokens=data.draw(st.integers(1, 200)))
    got = []
    for block in score_units(scorer_from_logits(uniform_logits), units, options):
        for scores in block.units:
            assert scores.windows[-1] == len(scores) and len(scores.windows) == len(scores.unit.spans) + 1
            got += list(zip(scores.row.tolist(), scores.position.tolist(), scores.context.tolist(), scores.token.tolist()))
            assert np.allclose(scores.logprob, -math.log(VOCAB))
    assert got == expected


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=8), st.integers(1, 12), st.integers(1, 5),
       st.integers(1, 200))
def test_the_engine_ticks_between_batches(lengths: list[int], max_length: int, batch_size: int,
                                          block_tokens: int) -> None:
    """A tick once each block is planned and after each batch: counts only grow, a block's
    last tick has scored exactly its tokens, and the plan ends at every token of the run."""
    docs = [[(5 * d + i) % VOCAB for i in range(n)] for d, n in enumerate(lengths)]
    expected_total = sum(n - 1 for n in lengths)  # position 0 of a document is never scored
    items = list(engine_stream(scorer_from_logits(uniform_logits), units_of(docs, max_length, min(3, max_length)),
                               EngineOptions(Batching(batch_size), block_tokens=block_tokens)))
    stats = items[-1].stats
    ticks = [item for item in items if isinstance(item, EngineTick)]
    blocks = [item for item in items if isinstance(item, ScoredBlock)]
    assert len(ticks) == stats.batches + len(blocks)
    assert all(a.scored <= b.scored and a.planned <= b.planned for a, b in zip(ticks, ticks[1:]))
    same_block = [(a, b) for a, b in zip(ticks, ticks[1:]) if b.block_scored >= a.block_scored and b.planned == a.planned]
    assert all(a.block_rows_done <= b.block_rows_done for a, b in same_block)  # documents only finish
    scored = 0
    for k, item in enumerate(items):
        if isinstance(item, ScoredBlock):
            last = items[k - 1]
            assert isinstance(last, EngineTick) and last.block_scored == item.tokens
            assert last.block_rows_done == len(item.rows)  # every document of the block is done
            scored += item.tokens
            assert last.scored == scored and last.last_block == (item is blocks[-1])
    assert ticks[-1].scored == ticks[-1].planned == expected_total == scored
    assert [b.tokens for b in score_units(scorer_from_logits(uniform_logits), units_of(docs, max_length, min(3, max_length)),
                                          EngineOptions(Batching(batch_size), block_tokens=block_tokens))] == [
        b.tokens for b in blocks]
