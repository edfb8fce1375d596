"""The reducer of ``lleval kld``: every token's KL, top-token agreement and delta p (the
statistics need every value), and each document's log-likelihood under the base model."""

from __future__ import annotations

import numpy as np

from lleval.stream import ScoredBlock
from lleval.reducers.base import row_sums


class KLStats:
    """Per-token KL, top-token agreement and delta p (kept: medians and percentiles need
    every value; 24 bytes a token), and each document's base log-likelihood."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.base_log_likelihood: list[float] = []  # per document, in input order

    def update(self, block: ScoredBlock) -> None:
        for scores in block.units:
            c = scores.columns
            self.parts.append(np.stack([c["kl"], c["top_token_agrees"], c["delta_p"]], axis=1).astype(np.float64))
            self.base_log_likelihood += row_sums(scores, c["base_logprob"].astype(np.float64))

    def values(self) -> np.ndarray:
        """``(tokens, 3)``: KL, agreement (0/1), delta p, in window order."""
        return np.concatenate(self.parts) if self.parts else np.zeros((0, 3), dtype=np.float64)
