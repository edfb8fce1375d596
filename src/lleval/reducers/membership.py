"""Membership (contamination) scores per document, from its scored tokens (--membership).

Three detectors of whether a text was in a model's training data, each a function of
the per-token stream (higher, closer to 0, means "more likely seen"; all three are
relative signals, to compare across datasets or models, not absolute tests):

- **Min-K% Prob** (Shi et al., 2023): the mean log-prob of the document's ``m``
  least likely tokens, ``m = max(1, floor(k n))`` of its ``n`` scored tokens (the
  papers' code takes ``int(k n)``; the floor of 1 keeps a short document's score
  defined);
- **Min-K%++** (Zhang et al., 2024): the mean of the ``m`` lowest standardised
  log-probs ``z = (log p(x_t) - mu_t) / sigma_t`` (``mu``, ``sigma``: mean and
  deviation of ``log p`` under the model's next-token distribution), the scorer's
  ``mink_pp_z`` column; None where the model gives only target log-probs;
- **zlib ratio**: the document's log-likelihood (nats, <= 0) over the zlib length
  (bytes, default level) of its UTF-8 text as scored (a concatenation's separator
  counts with the document before it), ``Row.zlib_bytes``.

Every document lies in one unit, so its scores are computed once, from its tokens in
position order; the state is one triple per finished document, in input order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lleval.metrics import MEMBERSHIP_FIELDS
from lleval.reducers.base import row_slices
from lleval.stream import ScoredBlock

#: The per-document fields, as the report's ``documents[]`` names them.
FIELDS = MEMBERSHIP_FIELDS


def lowest_count(k: float, n: int) -> int:
    """How many of ``n`` tokens "the lowest k%" takes: ``max(1, floor(k n))`` (0 for none)."""
    return 0 if n == 0 else max(1, int(k * n))


def lowest_mean(values: np.ndarray, k: float) -> float | None:
    """The float64 mean of the ``lowest_count(k, len(values))`` smallest values (None: no values)."""
    m = lowest_count(k, len(values))
    if m == 0:
        return None
    return float(np.sort(values.astype(np.float64))[:m].sum() / m)


class MembershipScores:
    """``min_k_prob``, ``min_k_plus_plus`` and ``zlib_ratio`` of every document, in input order."""

    def __init__(self, k: float) -> None:
        self.k = k
        self.documents: list[dict[str, float | None]] = []

    def update(self, block: ScoredBlock) -> None:
        for scores in block.units:
            z = scores.columns.get("mink_pp_z")
            for row, part in zip(scores.unit.rows, row_slices(scores)):
                logprobs = scores.logprob[part]
                log_likelihood = float(logprobs.astype(np.float64).sum())
                zlib = None if not row.zlib_bytes else log_likelihood / row.zlib_bytes
                self.documents.append({
                    "min_k_prob": lowest_mean(logprobs, self.k),
                    "min_k_plus_plus": None if z is None else lowest_mean(z[part], self.k),
                    "zlib_ratio": None if len(logprobs) == 0 else zlib,
                })

    def state(self) -> dict[str, Any]:
        return {"k": self.k, "documents": [[d[f] for f in FIELDS] for d in self.documents]}

    def restore(self, state: dict[str, Any]) -> None:
        self.k = float(state["k"])
        self.documents = [{f: (None if v is None else float(v)) for f, v in zip(FIELDS, row)}
                          for row in state["documents"]]

    def means(self) -> dict[str, float | None]:
        """The mean of each score over the documents that have it (None where none has)."""
        found = {}
        for f in FIELDS:
            values = [d[f] for d in self.documents if d[f] is not None]
            found[f] = math.fsum(values) / len(values) if values else None  # type: ignore[arg-type]
        return found
