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


@given(shapes())
def test_rolling_windows_fit_and_take_longest_context(shape: tuple[int, int, int]) -> None:
    seq_len, max_length, stride = shape
    for k, span in enumerate(rolling_spans(seq_len, max_length, stride)):
        assert 1 <= span.input_length <= max_length
        assert span.end <= seq_len and span.start >= 0
        # the input is the longest span ending just before the last target that fits in L
        assert span.start == max(0, span.end - 1 - max_length)
        assert 1 <= span.n_scored <= (max_length if k == 0 else stride)
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
    spans = chunk_spans(seq_len, chunk, chunk // 2 + 1)
    assert len(spans) == seq_len // chunk
    assert sum(s.n_scored for s in spans) == len(spans) * (chunk - chunk // 2 - 1)


@pytest.mark.parametrize("max_length,stride", [(0, 1), (4, 0), (4, 5)])
def test_bad_window_params(max_length: int, stride: int) -> None:
    with pytest.raises(ConfigError):
        rolling_spans(10, max_length, stride)
