"""The stream the engine yields and the reducers fold: rows, units, scored tokens, blocks.

numpy only, no torch: whatever only reads scored tokens (the reducers, the
token file, checkpoints, ``lleval inspect``) imports these types without
loading a deep-learning framework (about a second and a few hundred MB).

- `Row`: one document as the report needs it (bytes, words, text hash).
- `Unit`: a token sequence, the windows that score it and the rows it holds.
- `TokenScores`: every token one unit's windows scored, window by window.
- `ScoredBlock`: what the engine yields per block of units, in input order.
- `EngineTick`: where scoring stands, yielded between batches.
- `EngineStats`: what the engine has done, carried by both.
- `BlockPart`: the batches of a block scored so far, which a checkpoint saves mid-block.
- `token_columns`: one unit's scored tokens as the columns of the ``--tokens`` file and the
  HTML report (document, position, context, token id, its text and span, log-prob).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np

from lleval.windows import Span


@dataclass(frozen=True)
class Row:
    """What the report needs of one document besides what its tokens scored."""

    index: int  # row in the source
    bytes: int  # UTF-8 bytes it contributes (a separator counts with the document before it)
    words: int
    text_sha: str = ""  # sha256 of the text, to check resumed data
    text: str | None = None  # as scored (with a concatenation's separator after it), kept when a reducer shows tokens
    id: str | int | None = None  # the row's own ``id`` field, if it has one
    zlib_bytes: int | None = None  # zlib-compressed length of the text as scored (--membership only)


@dataclass(frozen=True)
class Unit:
    """One token sequence scored by ``spans``, owned by one or more consecutive rows.

    ``owners[i]`` is the row (0-based within ``rows``) that position ``i``
    belongs to; ``None`` means every position belongs to ``rows[0]``.
    ``starts[r]`` is the sequence position of row ``r``'s first own token
    (after a prefix token), so a token's position in its document is its
    sequence position minus its row's start. ``first_row`` numbers
    ``rows[0]`` among all rows of the run; ``unscored`` counts the tokens of
    the sequence the protocol leaves unscored (for the report).
    """

    tokens: Sequence[int]
    spans: list[Span]
    rows: tuple[Row, ...]
    first_row: int
    starts: np.ndarray  # (len(rows),) int64
    owners: np.ndarray | None = None  # (len(tokens),) int64
    window_head: int | None = None  # if set, written over the first token of every window
    unscored: int = 0
    char_starts: np.ndarray | None = None  # (len(tokens),) where each token starts in its row's text; -1: prefix

    @property
    def last_row(self) -> int:
        """Number of the last row this unit completes."""
        return self.first_row + len(self.rows) - 1


@dataclass(frozen=True)
class TokenScores:
    """Every token one unit's windows scored, window by window: arrays of one length N.

    ``windows[w]:windows[w + 1]`` are the tokens window ``w`` scored, in
    position order. ``row`` numbers the token's document among all rows of
    the run, ``position`` is its place in the document (0 = its first
    token), ``context`` the number of tokens the model read before
    predicting it in that window.
    """

    unit: Unit
    windows: np.ndarray  # (W + 1,) int64 offsets
    row: np.ndarray  # (N,) int64
    position: np.ndarray  # (N,) int64
    context: np.ndarray  # (N,) int64
    token: np.ndarray  # (N,) int64
    logprob: np.ndarray  # (N,) float32, log P(token | context) in nats, <= 0
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # the scorer's further (N,) columns
    nonfinite: np.ndarray | None = None  # (len(unit.rows),) tokens left out as NaN/inf, per row

    def __len__(self) -> int:
        return int(self.logprob.shape[0])


@dataclass(frozen=True)
class EngineStats:
    """What the engine has done so far, for the report's ``timing`` block and the progress
    display: every `EngineTick` and `ScoredBlock` carries the counts as they stand."""

    windows: int = 0
    batches: int = 0
    computed_tokens: int = 0  # tokens fed to the model, padding included
    padding_tokens: int = 0
    scored_tokens: int = 0  # tokens of the blocks yielded so far
    oom_splits: int = 0  # times a batch ran out of memory and was split
    planned_tokens: int = 0  # tokens to score in the blocks planned so far
    batch_tokens: int = 0  # tokens scored in the batches run so far (every rank's share)


@dataclass(frozen=True)
class ScoredBlock:
    """What the engine yields: the scored tokens of a run of consecutive units, in order,
    and the engine's counts once they are scored."""

    units: list[TokenScores]
    stats: EngineStats = EngineStats()

    @property
    def rows(self) -> list[Row]:
        """The rows (documents) this block completes, in order."""
        return [row for scores in self.units for row in scores.unit.rows]

    @property
    def tokens(self) -> int:
        """Scored tokens in the block."""
        return sum(len(scores) for scores in self.units)


@dataclass(frozen=True)
class BlockPart:
    """The batches of one block scored so far, in the block's batch order: what a checkpoint
    saves between the ends of blocks (a block holds a million tokens: tens of minutes on a
    CPU), and what a resumed run puts back instead of scoring them again.

    The block's batches depend only on its units and the batching (both checked: ``key``),
    so a resumed run forms the same batches, takes the first ``batches`` of them from
    here, scores the rest, and yields the block an uninterrupted run yields.
    """

    first_row: int  # the block's first row
    key: str  # `block_key` of the block's units and batches
    values: tuple[np.ndarray, ...] = ()  # per batch done: its windows' scored values, in batch order

    @property
    def batches(self) -> int:
        """How many of the block's batches are done."""
        return len(self.values)


def block_key(units: Sequence[Unit], batches: Sequence[Sequence[int]]) -> str:
    """sha256 of what decides a block's scored values: every unit's token ids, windows, rows
    (their text hashes) and window head, and how its windows were cut into batches."""
    digest = hashlib.sha256()
    for unit in units:
        spans = [(s.start, s.end, s.n_scored) for s in unit.spans]
        head = [unit.first_row, len(unit.tokens), spans, unit.window_head, [row.text_sha for row in unit.rows]]
        digest.update(json.dumps(head).encode("utf-8"))
        digest.update(np.asarray(unit.tokens, dtype=np.int64).tobytes())
    digest.update(json.dumps([list(map(int, batch)) for batch in batches]).encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineTick:
    """Where scoring stands: yielded once a block is planned, then after each of its batches.

    A block holds up to ``block_tokens`` (a million) tokens, so a run on most
    corpora is one block: counting blocks alone, a progress display would show
    nothing until the end. Counts are of scored tokens, since this call began.
    A consumer that wants to stop early stops reading at a tick with
    ``batches_left`` (no batch is cut in two, and a block whose batches all ran
    is still yielded).
    """

    stats: EngineStats
    block_scored: int  # tokens of this block's batches run so far
    last_block: bool  # no unit is left to read: ``planned`` is every token this call scores
    block_rows_done: int = 0  # rows (documents) of this block whose every window is scored
    batches_left: int = 0  # batches of this block still to run
    #: the block's batches done so far, kept when asked (``EngineOptions.keep_done``): a checkpoint saves it
    done: BlockPart | None = None

    @property
    def scored(self) -> int:
        """Tokens of the batches run so far."""
        return self.stats.batch_tokens

    @property
    def planned(self) -> int:
        """Tokens of the blocks planned so far, this one included: grows block by block."""
        return self.stats.planned_tokens


EngineItem = Union[ScoredBlock, EngineTick]


def token_columns(scores: TokenScores) -> dict[str, Any]:
    """The export's columns for one unit's scored tokens (its rows must hold their text)."""
    unit = scores.unit
    local = scores.row - unit.first_row
    sequence = scores.position + unit.starts[local]  # (N,) positions in the unit's token sequence
    starts, ends = _token_spans(unit)
    texts = [row.text or "" for row in unit.rows]
    begin, finish = starts[sequence], ends[sequence]
    columns: dict[str, Any] = {
        "document": np.asarray([unit.rows[k].index for k in local], dtype=np.int64),
        "position": scores.position,
        "context": scores.context,
        "token_id": scores.token,
        "token": [texts[k][b:e] for k, b, e in zip(local.tolist(), begin.tolist(), finish.tolist())],
        "start": begin,
        "end": finish,
        "logprob": scores.logprob,
    }
    columns.update(scores.columns)
    return columns


def _token_spans(unit: Unit) -> tuple[np.ndarray, np.ndarray]:
    """Character span in its row's text of every position of a unit's sequence: from where
    the token starts to where the next token of the same row starts (the first token of a
    row from 0, the last to the end of the text)."""
    if unit.char_starts is None or any(row.text is None for row in unit.rows):
        raise ValueError("the per-token export needs units made with keep_text=True")
    n = len(unit.tokens)
    starts = np.maximum(unit.char_starts, 0)
    begin, finish = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    bounds = list(unit.starts) + [n]
    for k, row in enumerate(unit.rows):
        own = slice(int(bounds[k]), int(bounds[k + 1]))
        edges = np.maximum.accumulate(starts[own]) if bounds[k + 1] > bounds[k] else starts[own]
        if len(edges):
            edges[0] = 0
        begin[own] = edges
        finish[own] = np.append(edges[1:], len(row.text or ""))
    return begin, finish
