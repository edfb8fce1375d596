"""What every reducer is: ``update(block)`` folds one `ScoredBlock` into its state (and, for
the resumable ones, ``state()``/``restore()``), the NaN/inf filter run before any reducer sees a
block, and the helpers that cut a unit's scored tokens into its rows.

Reducers fold the engine's stream of scored tokens; their state is only sums,
counts and (where a statistic needs every value) plain arrays, added in window
order, so batch size, sort order and world size change no number. A new
statistic is a new reducer, never a new path through the engine."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

from lleval.stream import ScoredBlock, TokenScores


class Reducer(Protocol):
    """Folds scored blocks into a result."""

    def update(self, block: ScoredBlock) -> None:
        """Add one block (its units in order) to the state."""
        ...


class Resumable(Reducer, Protocol):
    """A reducer whose state a checkpoint can save and a resumed run restore."""

    def state(self) -> dict[str, Any]:
        """The state as JSON-serialisable values (floats exact through JSON)."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a saved state."""
        ...


class Statistic(Resumable, Protocol):
    """A reducer whose result is a block of the score report: ``statistics.<key>`` in its
    JSON. Resumable, so a checkpointed run resumes it with the documents' sums."""

    key: str

    def result(self) -> dict[str, Any]:
        """The block (JSON values), read once the run is over."""
        ...


class NonFiniteLogProb(Exception):
    """A token's log-prob is NaN or infinite; ``index`` (the document's row in the source)
    and ``position`` (the token's place in the document) say where."""

    def __init__(self, index: int, position: int, value: float) -> None:
        super().__init__(f"non-finite log-prob {value} in document {index}, token position {position}")
        self.index, self.position, self.value = index, position, value


def finite_only(block: ScoredBlock, allow_nonfinite: bool) -> ScoredBlock:
    """The block with its NaN/inf log-probs dealt with before any reducer sees it.

    Without ``allow_nonfinite`` the first one raises `NonFiniteLogProb`;
    with it, such tokens are left out of every column and counted per row in
    ``TokenScores.nonfinite``. Checking the whole block first keeps every
    reducer at the same block boundary, which is where checkpoints are made.
    """
    if all(np.isfinite(scores.logprob).all() for scores in block.units):
        return block
    return ScoredBlock([_drop_nonfinite(scores, allow_nonfinite) for scores in block.units])


def _drop_nonfinite(scores: TokenScores, allow: bool) -> TokenScores:
    finite = np.isfinite(scores.logprob)
    if finite.all():
        return scores
    bad = int(np.flatnonzero(~finite)[0])
    if not allow:
        row = scores.unit.rows[int(scores.row[bad]) - scores.unit.first_row]
        raise NonFiniteLogProb(row.index, int(scores.position[bad]), float(scores.logprob[bad]))
    window_of = np.repeat(np.arange(len(scores.windows) - 1), np.diff(scores.windows))
    kept_per_window = np.bincount(window_of[finite], minlength=len(scores.windows) - 1)
    rows = scores.row[~finite] - scores.unit.first_row
    return dataclasses.replace(
        scores,
        windows=np.concatenate([[0], np.cumsum(kept_per_window)]).astype(np.int64),
        row=scores.row[finite],
        position=scores.position[finite],
        context=scores.context[finite],
        token=scores.token[finite],
        logprob=scores.logprob[finite],
        columns={name: column[finite] for name, column in scores.columns.items()},
        nonfinite=np.bincount(rows, minlength=len(scores.unit.rows)),
    )


def row_sums(scores: TokenScores, values: np.ndarray) -> list[float]:
    """The float64 sum of ``values`` (one per scored token) for each row of a unit.

    Added window by window, in window order: a window whose tokens all belong
    to one document is summed as one array (numpy's pairwise summation); a
    window of a concatenated stream is split among its documents with one
    ``bincount`` (sequential). So the sums do not depend on how windows were
    batched, sorted or shared among ranks.
    """
    n_rows = len(scores.unit.rows)
    sums = [0.0] * n_rows
    for w in range(len(scores.windows) - 1):
        start, end = int(scores.windows[w]), int(scores.windows[w + 1])
        if scores.unit.owners is None:
            sums[0] += float(values[start:end].sum())
            continue
        local = scores.row[start:end] - scores.unit.first_row
        window = np.bincount(local, weights=values[start:end], minlength=n_rows)
        for k in np.flatnonzero(np.bincount(local, minlength=n_rows)):
            sums[k] += float(window[k])
    return sums


def row_slices(scores: TokenScores) -> list[slice]:
    """Where each row of a unit lies in its scored tokens: positions only grow along a
    unit's windows, so a row's tokens are one run."""
    local = scores.row - scores.unit.first_row
    bounds = np.searchsorted(local, np.arange(len(scores.unit.rows) + 1), side="left")
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
