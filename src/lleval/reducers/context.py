"""Loss by context length: scored tokens grouped by how much context the model read
before them, in power-of-two bins."""

from __future__ import annotations

import numpy as np
from typing import Any

from lleval.reducers.base import row_slices
from lleval.stream import ScoredBlock


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
