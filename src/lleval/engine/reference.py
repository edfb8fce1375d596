"""Scorers of a compact saved reference: the base's top-K log-probs, and the KL against them.

``lleval score --save-reference`` keeps, per scored token, the K most likely
tokens of the model's distribution, their log-probs and the log of the mass
left over (the tail). ``lleval kld --reference`` then scores another model
alone and compares it with those K + 1 outcomes.

The estimator. Let S be the base's top-K set and T = V \\ S its tail. Coarsen
both distributions to the K + 1 outcomes (each v in S, and T as one bucket):
``p(T) = 1 - sum_{v in S} p(v)``, and the same for the model. The KL of the
coarsened pair is

    KL_K = sum_{v in S} p_b(v) log(p_b(v) / p_m(v)) + p_b(T) log(p_b(T) / p_m(T)).

By the log-sum inequality, ``sum_{v in T} p_b(v) log(p_b(v)/p_m(v)) >= p_b(T)
log(p_b(T)/p_m(T))``, so KL_K <= KL (the data-processing inequality: merging
outcomes never increases a divergence). It is a lower bound, not an estimate;
it is exact when K >= V - 1 (the tail holds at most one token) or when the
ratio p_b(v)/p_m(v) is the same for every tail token. A tail whose base mass
underflows to 0 (log p_b(T) = -inf) contributes 0 (0 log 0 = 0), as does any
top token of base probability 0; a model that puts no mass where the base
puts some gives +inf, as the exact KL does.

The model's tail log-mass is computed stably: the log-sum-exp of its logits
with S masked out, minus its log Z, never ``log(1 - sum)`` (which loses every
digit once the top-K mass is within float32 rounding of 1).

Ids travel in the scorer's float32 output: exact below 2^24 (16.7 million),
more than any vocabulary we know; `ReferenceScorer` refuses larger ones.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from lleval.engine.kernels import LogitsSlices, map_slices, target_logprobs

MAX_EXACT_ID = 1 << 24  # float32 holds every integer below this exactly


def reference_columns(k: int) -> tuple[str, ...]:
    """The further columns of a `ReferenceScorer` of top ``k``: ids, log-probs, tail."""
    return (*(f"ref_id_{i}" for i in range(k)), *(f"ref_lp_{i}" for i in range(k)), "ref_tail")


def top_k_slice(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, V), (N,) -> (N, 2 + 2k)`` float32: the target's log-prob (bit for bit
    `target_logprobs`'s), then the top ``k`` ids (most likely first), their log-probs,
    and the log of the mass outside them (-inf when it underflows)."""
    logits = logits.float()
    top_values, top_ids = logits.topk(k, dim=1)  # (N, k), sorted
    shifted = logits - top_values[:, :1]  # (N, V), the row max is the first top value
    weights = shifted.exp_()
    log_total = weights.sum(dim=1).log_()  # log Z - max
    weights.scatter_(1, top_ids, 0.0)
    tail = weights.sum(dim=1).log_() - log_total
    top_lp = top_values - top_values[:, :1] - log_total.unsqueeze(1)
    del weights, shifted
    target = target_logprobs(logits, targets)  # last: it overwrites float32 logits in place
    return torch.cat([target.unsqueeze(1), top_ids.float(), top_lp, tail.unsqueeze(1)], dim=1)


class ReferenceScorer:
    """The `TokenScorer` of ``--save-reference``: per token, the target's log-prob as a plain
    run scores it, then the `reference_columns` of the top ``k``."""

    def __init__(self, slices: LogitsSlices, per_slice: int, k: int) -> None:
        self.slices, self.per_slice, self.k = slices, per_slice, k
        self.columns = reference_columns(k)

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, score_mask: torch.Tensor
    ) -> torch.Tensor:
        pieces = map_slices(self.slices, self.per_slice, input_ids, attention_mask, labels, score_mask,
                            lambda logits, targets: top_k_slice(logits, targets, self.k).cpu())
        return torch.cat(pieces) if pieces else torch.zeros((0, 1 + len(self.columns)))


def coarse_kl(model_logits: torch.Tensor, ids: torch.Tensor, base_lp: torch.Tensor,
              base_tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, ``KL_K(P_base || P_model)`` over the base's top-K and its tail (see the module
    docstring), in float64, and whether the model's argmax is the base's top token:
    ``(n, V) logits, (n, K) ids, (n, K) base log-probs, (n,) base tail log-mass``."""
    lp = torch.log_softmax(model_logits.float(), dim=-1)  # (n, V)
    agree = (lp.argmax(dim=-1) == ids[:, 0]).float()
    model_top = lp.gather(1, ids).double()  # (n, K)
    model_tail = lp.scatter(1, ids, float("-inf")).logsumexp(dim=-1).double()  # (n,)
    base_lp, base_tail = base_lp.double(), base_tail.double()
    terms = torch.where(base_lp > float("-inf"), base_lp.exp() * (base_lp - model_top), 0.0).sum(dim=1)
    tail = torch.where(base_tail > float("-inf"), base_tail.exp() * (base_tail - model_tail), 0.0)
    return terms + tail, agree


class Entries:
    """The reference's rows of the windows a block holds, keyed by window content.

    A window's input ids (and how many of its last positions are scored) decide the base's
    distribution at each scored position, so they are the key: the engine may batch windows
    in any order. Two windows with the same content have the same entries, so which of
    them a batch row takes does not matter. Holds a block's windows at most.
    """

    def __init__(self) -> None:
        self.waiting: dict[bytes, list[np.ndarray]] = {}

    def put(self, key: bytes, rows: np.ndarray) -> None:
        """Hold ``rows`` (the window's scored tokens' reference values) for ``key``."""
        self.waiting.setdefault(key, []).append(rows)

    def take(self, key: bytes) -> np.ndarray | None:
        """The rows held for ``key`` (each once), or None."""
        found = self.waiting.get(key)
        if not found:
            return None
        rows = found.pop()
        if not found:
            del self.waiting[key]
        return rows


def window_key(window: np.ndarray, n_scored: int) -> bytes:
    """The key of a window: its input ids (int64) and how many positions it scores."""
    return np.ascontiguousarray(window, dtype=np.int64).tobytes() + int(n_scored).to_bytes(8, "little")


def batch_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor) -> Iterator[bytes]:
    """The `window_key` of every row of a batch."""
    ids, lengths, scored = input_ids.cpu().numpy(), attention_mask.sum(1).tolist(), score_mask.sum(1).tolist()
    for row, n, s in zip(ids, lengths, scored):
        yield window_key(row[:n], s)

