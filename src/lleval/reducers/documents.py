"""Per-document sums (log-likelihood, tokens, bytes, words) in input order, with the
hash chain of the texts a resumed run checks, and the stream's token counts."""

from __future__ import annotations

import hashlib
import numpy as np
from typing import Any

from lleval.metrics import DocumentResult, Totals
from lleval.reducers.base import row_sums
from lleval.stream import ScoredBlock


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
