"""Properties of the pure windowing functions (hypothesis) and the docstring example."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import hf_guide_targets
from lleval.errors import ConfigError
from lleval.windows import Span, chunk_spans, rolling_spans, scored_positions, strided_spans


@st.composite
def shapes(draw: st.DrawFn) -> tuple[int, int, int]:
    max_length = draw(st.integers(1, 40))
    stride = draw(st.integers(1, max_length))
    seq_len = draw(st.integers(0, 300))
    return seq_len, max_length, stride


@given(shapes())
def test_rolling_scores_every_position_once(shape: tuple[int, int, int]) -> None:
    seq_len, max_length, stride = shape
    spans = rolling_spans(seq_len, max_length, stride)
    assert list(scored_positions(spans)) == list(range(1, seq_len))


def _naive_rolling(seq_len: int, max_length: int, stride: int) -> list[Span]:
    """The rolling protocol from its description, on lists of positions: the targets
    1..seq_len-1 cut into a first piece of L and then pieces of S; each piece's window
    reads the (at most) L positions just before its last target."""
    targets = list(range(1, seq_len))
    pieces = [targets[:max_length]] + [targets[i : i + stride] for i in range(max_length, len(targets), stride)]
    spans = []
    for piece in (p for p in pieces if p):
        inputs = list(range(0, piece[-1]))[-max_length:]  # the positions read: seq[inputs[0] : piece[-1]]
        spans.append(Span(inputs[0], piece[-1] + 1, len(piece)))
    return spans


@given(shapes())
def test_rolling_windows_fit_and_take_longest_context(shape: tuple[int, int, int]) -> None:
    seq_len, max_length, stride = shape
    spans = rolling_spans(seq_len, max_length, stride)
    assert spans == _naive_rolling(seq_len, max_length, stride)
    for span in spans:
        assert 1 <= span.input_length <= max_length
        assert span.end <= seq_len and span.start >= 0
        # the longest context that fits: a full L tokens, unless it already reaches position 0
        assert span.input_length == max_length or span.start == 0
        assert span.n_scored <= span.input_length


@given(st.integers(0, 300), st.integers(1, 40))
def test_stride_equal_to_length_gives_disjoint_chunks(seq_len: int, max_length: int) -> None:
    spans = rolling_spans(seq_len, max_length, max_length)
    targets = [set(range(s.end - s.n_scored, s.end)) for s in spans]
    for a, b in zip(targets, targets[1:]):
        assert max(a) < min(b)
    # every window but the last predicts exactly L targets from its own L inputs
    for span in spans[:-1]:
        assert span.n_scored == max_length == span.input_length


def test_docstring_example() -> None:
    assert rolling_spans(11, 4, 2) == [Span(0, 5, 4), Span(2, 7, 2), Span(4, 9, 2), Span(6, 11, 2)]


@given(shapes())
def test_strided_matches_guide_loop(shape: tuple[int, int, int]) -> None:
    seq_len, max_length, stride = shape
    expected = [p for _, positions in hf_guide_targets(seq_len, max_length, stride) for p in positions]
    assert list(scored_positions(strided_spans(seq_len, max_length, stride))) == expected
    if stride < max_length:
        assert expected == list(range(1, seq_len))


@given(st.integers(0, 500), st.integers(4, 40))
def test_chunks_score_half_minus_one(seq_len: int, chunk: int) -> None:
    """Position by position (llama.cpp's rule): p is scored when the whole chunk holding it
    fits in the sequence and p sits at chunk offset chunk//2 + 1 or later."""
    spans = chunk_spans(seq_len, chunk, chunk // 2 + 1)
    expected = [p for p in range(seq_len) if (p // chunk + 1) * chunk <= seq_len and p % chunk > chunk // 2]
    assert list(scored_positions(spans)) == expected
    for span in spans:  # each window reads its own chunk, and only it
        assert span.start % chunk == 0 and span.end == span.start + chunk


def test_chunks_by_hand() -> None:
    # 10 tokens in chunks of 4: chunks [0, 4) and [4, 8), the tail 8, 9 dropped; the first
    # scored offset 4 // 2 + 1 = 3 leaves one target per chunk (positions 3 and 7)
    assert chunk_spans(10, 4, 3) == [Span(0, 4, 1), Span(4, 8, 1)]
    # llama-perplexity -c 512 on 1,100 tokens: 2 chunks, each scoring offsets 257..511 (255 tokens)
    assert chunk_spans(1100, 512, 257) == [Span(0, 512, 255), Span(512, 1024, 255)]


@pytest.mark.parametrize("max_length,stride", [(0, 1), (4, 0), (4, 5)])
def test_bad_window_params(max_length: int, stride: int) -> None:
    with pytest.raises(ConfigError):
        rolling_spans(10, max_length, stride)
