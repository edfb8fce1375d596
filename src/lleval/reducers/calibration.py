"""Calibration of the model's top-1 next-token probability (--calibration): expected
calibration error over 15 equal-width bins and top-1 accuracy, ``statistics.calibration``.

Per scored token, confidence is ``max_v p_v`` (the scorer's ``top1_prob``) and the
prediction is correct when no token has a strictly higher logit than the true one
(``top1_correct``: rank 1, so a tie for the top counts as correct). A confidence ``c``
goes to bin ``min(floor(15 c), 14)``: bins are ``[low, high)``, a value on a boundary
goes to the upper bin, and 1.0 to the last. The state is per-bin token counts, correct
counts and float64 confidence sums, added block by block in token order, so the result
is the same under any batching and through a checkpoint;
``ece = sum_b (n_b / N) |acc_b - conf_b|``, derived once at the end.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lleval.stream import ScoredBlock

BINS = 15


def bin_of(confidence: np.ndarray) -> np.ndarray:
    """The bin (0..14) of each confidence in [0, 1]: ``[low, high)``, 1.0 in the last."""
    return np.minimum(np.floor(confidence.astype(np.float64) * BINS), BINS - 1).astype(np.int64)


class Calibration:
    """A `Statistic`: ECE and top-1 accuracy of the next-token predictions."""

    key = "calibration"

    def __init__(self) -> None:
        self.tokens = np.zeros(BINS, dtype=np.int64)
        self.correct = np.zeros(BINS, dtype=np.int64)
        self.confidence_sum = np.zeros(BINS, dtype=np.float64)

    def update(self, block: ScoredBlock) -> None:
        for scores in block.units:
            if len(scores) == 0:
                continue
            confidence = scores.columns["top1_prob"].astype(np.float64)
            bins = bin_of(confidence)
            self.tokens += np.bincount(bins, minlength=BINS)
            self.correct += np.bincount(bins, weights=scores.columns["top1_correct"] > 0.5, minlength=BINS
                                        ).astype(np.int64)
            self.confidence_sum += np.bincount(bins, weights=confidence, minlength=BINS)

    def state(self) -> dict[str, Any]:
        return {"tokens": self.tokens.tolist(), "correct": self.correct.tolist(),
                "confidence_sum": self.confidence_sum.tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        self.tokens = np.asarray(state["tokens"], dtype=np.int64)
        self.correct = np.asarray(state["correct"], dtype=np.int64)
        self.confidence_sum = np.asarray(state["confidence_sum"], dtype=np.float64)

    def result(self) -> dict[str, Any]:
        total = int(self.tokens.sum())
        bins, ece = [], 0.0
        for b in range(BINS):
            n = int(self.tokens[b])
            confidence = float(self.confidence_sum[b]) / n if n else None
            accuracy = int(self.correct[b]) / n if n else None
            if n:
                ece += n / total * abs(accuracy - confidence)  # type: ignore[operator]
            bins.append({"low": b / BINS, "high": (b + 1) / BINS, "tokens": n, "correct": int(self.correct[b]),
                         "confidence": confidence, "accuracy": accuracy})
        return {"ece": ece if total else None, "top1_accuracy": int(self.correct.sum()) / total if total else None,
                "tokens": total, "bins": bins}
