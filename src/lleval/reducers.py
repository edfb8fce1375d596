"""Reducers: small classes that fold the engine's stream of scored tokens.

The engine (`lleval.scoring`) yields `ScoredBlock`s; each reducer has one
job: ``update(block)`` adds the block to its state, and a result method
reads the state out. State is only sums, counts and (where a statistic needs
every value) plain arrays, added in window order, so batch size, sort order
and world size change no number. A reducer that can be resumed from a
checkpoint also has ``state()`` (JSON-serialisable) and ``restore(state)``.

A new feature is a new reducer, never a new path through the engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Protocol

import numpy as np

from lleval.metrics import Totals
from lleval.report import DocumentResult
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


def chain_hash(previous: str, text_sha: str) -> str:
    """One link of the hash chain over the finished documents' text hashes (O(1) state)."""
    return hashlib.sha256(bytes.fromhex(previous) + bytes.fromhex(text_sha)).hexdigest()


EMPTY_CHAIN = hashlib.sha256(b"").hexdigest()


class DocumentSums:
    """Per-document float64 sums of log-probs, squared log-probs and tokens, in window order
    (see `row_sums`). Documents come out in input order, each once, with the bytes and
    words of its row."""

    def __init__(self) -> None:
        self.documents: list[DocumentResult] = []
        self.data_hash = EMPTY_CHAIN  # chain over the finished documents' text hashes

    def update(self, block: ScoredBlock) -> None:
        for scores in block.units:
            values = scores.logprob.astype(np.float64)
            ll, sq = row_sums(scores, values), row_sums(scores, np.square(values))
            tokens = np.bincount(scores.row - scores.unit.first_row, minlength=len(scores.unit.rows))
            for k, row in enumerate(scores.unit.rows):
                nonfinite = 0 if scores.nonfinite is None else int(scores.nonfinite[k])
                self.documents.append(DocumentResult(row.index, ll[k], int(tokens[k]), row.bytes, row.words, sq[k],
                                                     nonfinite, row.id))
                self.data_hash = chain_hash(self.data_hash, row.text_sha)

    def totals(self) -> Totals:
        """Corpus sums, added document by document in input order."""
        totals = Totals()
        for d in self.documents:
            totals.add(Totals(d.log_likelihood, d.tokens, d.bytes, d.words, 1, d.logprob_sq_sum, d.nonfinite))
        return totals

    def state(self) -> dict[str, Any]:
        return {
            "data_hash": self.data_hash,
            "documents": [[d.index, d.log_likelihood, d.tokens, d.bytes, d.words, d.logprob_sq_sum, d.nonfinite]
                          + ([] if d.id is None else [d.id]) for d in self.documents],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.data_hash = str(state["data_hash"])
        self.documents = [
            DocumentResult(int(i), float(ll), int(t), int(b), int(w), float(sq), int(nf), *row_id)
            for i, ll, t, b, w, sq, nf, *row_id in state["documents"]
        ]


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


class StreamCounts:
    """Tokens in the scored sequences and how many of them the protocol leaves unscored."""

    def __init__(self) -> None:
        self.stream_tokens = 0
        self.unscored_tokens = 0

    def update(self, block: ScoredBlock) -> None:
        for scores in block.units:
            self.stream_tokens += len(scores.unit.tokens)
            self.unscored_tokens += scores.unit.unscored

    def state(self) -> dict[str, Any]:
        return {"stream_tokens": self.stream_tokens, "unscored_tokens": self.unscored_tokens}

    def restore(self, state: dict[str, Any]) -> None:
        self.stream_tokens = int(state["stream_tokens"])
        self.unscored_tokens = int(state["unscored_tokens"])


def row_slices(scores: TokenScores) -> list[slice]:
    """Where each row of a unit lies in its scored tokens: positions only grow along a
    unit's windows, so a row's tokens are one run."""
    local = scores.row - scores.unit.first_row
    bounds = np.searchsorted(local, np.arange(len(scores.unit.rows) + 1), side="left")
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def context_bin(context: np.ndarray) -> np.ndarray:
    """Power-of-two bin of each context length (>= 1): bin b holds 2**b .. 2**(b+1) - 1."""
    return np.floor(np.log2(np.maximum(context, 1))).astype(np.int64)


class ContextCurve:
    """Scored tokens grouped by how much context the model read before them, in
    power-of-two bins (1, 2-3, 4-7, ...): tokens and log-likelihood per bin and per
    document (the per-document sums give intervals over documents), in window order.

    Kept as numpy chunks of (document number, bin, log-likelihood, tokens), about 24
    bytes per document and bin, so 200,000 short documents take a few megabytes.
    """

    def __init__(self) -> None:
        self.documents = 0
        self.chunks: list[np.ndarray] = []  # (entries, 4) float64

    def update(self, block: ScoredBlock) -> None:
        entries = []
        for scores in block.units:
            bins = context_bin(scores.context)
            values = scores.logprob.astype(np.float64)
            for mine in row_slices(scores):
                ll = np.bincount(bins[mine], weights=values[mine])
                n = np.bincount(bins[mine])
                full = np.flatnonzero(n)
                entries.append(np.column_stack([np.full(len(full), self.documents), full, ll[full], n[full]]))
                self.documents += 1
        if entries:
            self.chunks.append(np.concatenate(entries))

    def table(self, max_length: int) -> np.ndarray:
        """``(documents, bins, 2)``: each document's log-likelihood and tokens per bin, for
        every bin from 1 up to the one holding ``max_length``."""
        entries = np.concatenate(self.chunks) if self.chunks else np.zeros((0, 4))
        width = int(context_bin(np.asarray([max_length]))[0]) + 1
        width = max(width, int(entries[:, 1].max()) + 1 if len(entries) else 0)
        out = np.zeros((self.documents, width, 2))
        rows, bins = entries[:, 0].astype(np.int64), entries[:, 1].astype(np.int64)
        out[rows, bins, 0] = entries[:, 2]
        out[rows, bins, 1] = entries[:, 3]
        return out

    def state(self) -> dict[str, Any]:
        entries = np.concatenate(self.chunks) if self.chunks else np.zeros((0, 4))
        return {"documents": self.documents, "entries": entries.tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        self.documents = int(state["documents"])
        self.chunks = [np.asarray(state["entries"], dtype=np.float64).reshape(-1, 4)]


class DocumentSamples:
    """The ``n`` most and ``n`` least surprising documents (by their own perplexity), with
    every scored token's text and numbers, for the HTML report; memory bounded by ``n``.
    Also the opening words of every document (`document_snippet`, about 60 characters
    each), so the HTML's table of documents says which text a row is."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.worst: list[tuple[float, int, dict[str, Any]]] = []  # min-heap on perplexity: the n highest
        self.best: list[tuple[float, int, dict[str, Any]]] = []  # min-heap on -perplexity: the n lowest
        self.seen = 0
        self.snippets: dict[int, str] = {}  # document index -> its opening words

    def update(self, block: ScoredBlock) -> None:
        import heapq

        from lleval.tokens import token_columns

        for scores in block.units:
            self.snippets.update((row.index, document_snippet(row.text)) for row in scores.unit.rows
                                 if row.text is not None)
            if not len(scores) or self.n == 0:
                self.seen += len(scores.unit.rows)
                continue
            columns = token_columns(scores)
            for k, (row, run) in enumerate(zip(scores.unit.rows, row_slices(scores))):
                mine = np.arange(run.start, run.stop)
                if len(mine):
                    stats: dict[str, np.ndarray] = {name: columns[name][mine] for name in ("rank", "entropy")
                                                    if name in columns}
                    sample = document_sample(row.index, row.bytes, [columns["token"][i] for i in mine.tolist()],
                                             columns["logprob"][mine], stats)
                    for heap, key in ((self.worst, sample["perplexity"]), (self.best, -sample["perplexity"])):
                        entry = (key, self.seen + k, sample)
                        if len(heap) < self.n:
                            heapq.heappush(heap, entry)
                        elif entry[:2] > heap[0][:2]:
                            heapq.heapreplace(heap, entry)
            self.seen += len(scores.unit.rows)

    def samples(self) -> list[dict[str, Any]]:
        """The documents kept, most surprising first, each once."""
        chosen = {entry[1]: entry[2] for entry in self.worst + self.best}
        return sorted(chosen.values(), key=lambda s: -s["perplexity"])

    def state(self) -> dict[str, Any]:
        return {"seen": self.seen, "worst": [list(e) for e in self.worst], "best": [list(e) for e in self.best],
                "snippets": [[index, text] for index, text in self.snippets.items()]}

    def restore(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.snippets = {int(index): str(text) for index, text in state.get("snippets", [])}
        self.worst = [(float(a), int(b), c) for a, b, c in state["worst"]]
        self.best = [(float(a), int(b), c) for a, b, c in state["best"]]


SNIPPET_CHARS = 60


def document_snippet(text: str, chars: int = SNIPPET_CHARS) -> str:
    """A document's first ``chars`` characters with runs of whitespace made one space (an
    ellipsis when cut): enough to tell which text a row of the documents table is, at
    about 60 bytes a document."""
    words = " ".join(text[: 4 * chars].split())
    return words if len(words) <= chars else words[: chars - 1].rstrip() + "…"


def document_sample(
    index: int, n_bytes: int, text: list[str], logprob: np.ndarray, stats: dict[str, np.ndarray]
) -> dict[str, Any]:
    """One document's tokens as the HTML report shows them: text, log-prob (nats) and, when
    scored, rank and entropy, with the document's own log-likelihood and perplexity."""
    values = logprob.astype(np.float64)
    sample = {
        "index": index, "bytes": n_bytes, "tokens": len(text), "log_likelihood": float(values.sum()),
        "perplexity": float(np.exp(-values.mean())), "text": text, "logprob": values.round(5).tolist(),
    }
    for name, column in stats.items():
        sample[name] = column.astype(np.float64).round(4).tolist()
    return sample
