"""Pure windowing: which tokens each model call sees and which it scores.

A *sequence* is the list of token ids one scoring unit is made of: a document
with its prefix token in front (``[BOS] + doc``), or the whole concatenated
stream. Position 0 of a sequence is never predicted (nothing precedes it);
every other position is predicted exactly once, by exactly one window.

A `Span` ``(start, end, n_scored)`` names the slice ``seq[start:end]``. The
model reads ``seq[start:end-1]`` (at most ``max_length`` tokens) and predicts
``seq[start+1:end]``; only the last ``n_scored`` of those predictions count.

Worked example, ``rolling_spans(11, max_length=4, stride=2)``; the sequence
is ``p a b c d e f g h i j`` (``p`` the prefix token, positions 0..10)::

    span           model input     scored targets
    (0, 5, 4)      p a b c         a b c d        first window: L targets
    (2, 7, 2)      b c d e         . . e f        2 new targets, 2 context
    (4, 9, 2)      d e f g         . . g h
    (6, 11, 2)     f g h i         . . i j

Every target is scored once (``a``..``j``: 10 = 11 - 1 tokens), no input is
longer than L = 4, and each window's context is the longest preceding span
that fits in L. With ``stride == max_length`` the spans are disjoint chunks
of L targets and the last, short chunk gets a full L of context: this is
lm-evaluation-harness's ``loglikelihood_rolling``. With ``stride < max_length``
it is the strided sliding window of the transformers perplexity guide, except
that the last window also gets full context.

The first window scores up to L targets rather than S: each of them already
sees the whole preceding sequence, so splitting it into S-sized pieces would
cost extra model calls without changing any number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

from lleval.errors import ConfigError


@dataclass(frozen=True)
class Span:
    """``seq[start:end]`` is fed to the model; the last ``n_scored`` predictions count."""

    start: int
    end: int
    n_scored: int

    @property
    def input_length(self) -> int:
        """Number of tokens the model reads (``end - start - 1``)."""
        return self.end - self.start - 1


def window_problem(max_length: int, stride: int) -> str | None:
    """What is wrong with a window shape (``1 <= stride <= max_length``), or None."""
    if max_length < 1:
        return f"max length must be at least 1 token, got {max_length}"
    if stride < 1:
        return f"stride must be at least 1 token, got {stride}"
    if stride > max_length:
        return (
            f"stride ({stride}) is larger than max length ({max_length}): tokens between windows would "
            "never be scored. Use a stride no larger than the max length"
        )
    return None


def check_window_params(max_length: int, stride: int) -> None:
    """Raise `ConfigError` unless ``1 <= stride <= max_length``."""
    problem = window_problem(max_length, stride)
    if problem:
        raise ConfigError(problem + ".")


def rolling_spans(seq_len: int, max_length: int, stride: int) -> list[Span]:
    """Spans that predict positions ``1..seq_len-1`` of a sequence exactly once.

    The first window predicts up to ``max_length`` targets; each later window
    predicts up to ``stride`` new targets and is given as much preceding
    context as fits in ``max_length`` input tokens. See the module docstring
    for a worked example. A sequence of fewer than 2 tokens has nothing to
    predict and gets no spans.
    """
    check_window_params(max_length, stride)
    spans: list[Span] = []
    scored_until = 1  # next target position to predict
    while scored_until < seq_len:
        step = max_length if scored_until == 1 else stride
        end = min(scored_until + step, seq_len)  # exclusive end of targets
        start = max(0, end - 1 - max_length)
        spans.append(Span(start, end, end - scored_until))
        scored_until = end
    return spans


def strided_spans(seq_len: int, max_length: int, stride: int) -> list[Span]:
    """The transformers perplexity guide's windows: one starts every ``stride`` tokens.

    Window ``k`` reads ``seq[k*S : k*S + L]`` (the guide feeds all L tokens;
    the prediction made at the last one has no label, so it is left out here)
    and scores the targets no earlier window scored; the loop stops once a
    window reaches the end of the sequence. With ``S < L`` every position but
    0 is scored exactly once. With ``S == L`` the guide's label shift loses
    the first token of every window after the first, and so does this
    function, because it reproduces the guide.
    """
    check_window_params(max_length, stride)
    spans: list[Span] = []
    prev_end = 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        n_scored = end - max(prev_end, begin + 1)
        if n_scored > 0:
            spans.append(Span(begin, end, n_scored))
        prev_end = end
        if end == seq_len:
            break
    return spans


def chunk_spans(seq_len: int, chunk: int, first_scored: int) -> list[Span]:
    """Disjoint chunks of ``chunk`` tokens; the tail that does not fill a chunk is dropped.

    Within each chunk, the tokens at chunk positions ``first_scored..chunk-1``
    are scored (llama.cpp's perplexity tool scores ``chunk//2 + 1 .. chunk-1``).
    """
    if chunk < 2 or not 1 <= first_scored < chunk:
        raise ConfigError(
            f"chunk length {chunk} with first scored position {first_scored} scores nothing."
        )
    return [
        Span(k * chunk, (k + 1) * chunk, chunk - first_scored) for k in range(seq_len // chunk)
    ]


def scored_positions(spans: Sequence[Span]) -> Iterator[int]:
    """Sequence positions the spans predict, in order (a helper for tests and checks)."""
    for span in spans:
        yield from range(span.end - span.n_scored, span.end)
