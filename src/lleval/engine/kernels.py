"""Log-probs from logits, a slice of positions at a time: the scorers the engine calls.

A `TokenScorer` is what the engine (`lleval.engine.scoring`) is given: a callable
returning the float32 log-probs of the labels at the scored positions. The
ones here build on `LogitsSlices` (logits at scored positions, at most
``per_slice`` of them at a time, so no (B, T, V) tensor is held) and take
log-softmax of the target with an in-place log-sum-exp (`target_logprobs`),
optionally with the rank and entropy of every prediction (`target_stats`).
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch


class TokenScorer(Protocol):
    """Returns log P(label) for every position where ``score_mask`` is true.

    Arguments are ``(B, T)`` tensors: ``input_ids`` (right-padded),
    ``attention_mask`` (1 for real tokens), ``labels`` (the token each
    position predicts) and ``score_mask`` (bool, only real positions). The
    result is a float32 tensor of ``score_mask.sum()`` log-probs (<= 0), in
    row-major order of the true positions: 1-D, or ``(N, 1 + k)`` with ``k``
    further columns named by the scorer's ``columns`` attribute.
    """

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        score_mask: torch.Tensor,
    ) -> torch.Tensor: ...


class LogitsSlices(Protocol):
    """Yields float logits ``(n, V)`` at the true positions of ``score_mask``, in row-major
    order, at most ``per_slice`` positions at a time."""

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        score_mask: torch.Tensor,
        per_slice: int,
    ) -> Iterator[torch.Tensor]: ...


class SliceScorer:
    """The `TokenScorer` that takes the target's log-softmax from each slice of logits.

    With ``stats`` it also returns, per token, the rank of the true token
    among the vocabulary (1: the most likely) and the entropy of the
    predicted distribution (nats), from the same slices (columns ``rank``,
    ``entropy``); the log-probs are computed exactly as without them.
    """

    def __init__(self, slices: LogitsSlices, per_slice: int, stats: bool = False) -> None:
        self.slices, self.per_slice, self.stats = slices, per_slice, stats
        self.columns: tuple[str, ...] = ("rank", "entropy") if stats else ()

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, score_mask: torch.Tensor
    ) -> torch.Tensor:
        targets = labels[score_mask]  # (N,)
        pieces, offset = [], 0
        with torch.inference_mode():
            for logits in self.slices(input_ids, attention_mask, score_mask, self.per_slice):
                n = logits.shape[0]
                chunk = targets[offset : offset + n].to(logits.device)
                pieces.append(torch.stack(target_stats(logits, chunk), 1) if self.stats else target_logprobs(logits, chunk))
                offset += n
        if pieces:
            return torch.cat(pieces)
        return torch.zeros((0, 3) if self.stats else 0, dtype=torch.float32)


def scorer_from_slices(slices: LogitsSlices, per_slice: int, stats: bool = False) -> SliceScorer:
    """The `SliceScorer` of a `LogitsSlices` (``stats``: also rank and entropy)."""
    return SliceScorer(slices, per_slice, stats)


def slices_from_logits(logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> LogitsSlices:
    """Adapt a ``(input_ids, attention_mask) -> (B, T, V) logits`` callable to `LogitsSlices`.

    Meant for fakes and tiny models in tests: it holds full logits, which the
    real model path (`lleval.backends.hf`) never does.
    """

    def slices(
        input_ids: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor, per_slice: int
    ) -> Iterator[torch.Tensor]:
        logits = logits_fn(input_ids, attention_mask)[score_mask]  # (N, V)
        for i in range(0, logits.shape[0], per_slice):
            yield logits[i : i + per_slice]

    return slices


def scorer_from_logits(logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> TokenScorer:
    """A `TokenScorer` from a full-logits callable (for fakes in tests)."""
    return scorer_from_slices(slices_from_logits(logits_fn), per_slice=1 << 30)


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[target]`` per row, in float32: ``(N, V), (N,) -> (N,)``.

    Float32 ``logits`` are used as scratch space and overwritten: the
    log-sum-exp runs in place, a third faster than `torch.logsumexp`, which
    allocates two more (N, V) tensors.
    """
    logits = logits.float()
    picked = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    top = _row_max(logits)
    log_total = logits.sub_(top).exp_().sum(dim=1).log_().add_(top.squeeze(1))
    return picked - log_total


def _row_max(logits: torch.Tensor) -> torch.Tensor:
    top = logits.amax(dim=1, keepdim=True)  # (N, 1)
    return torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # all -inf rows stay -inf


def target_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log-prob of the target, its rank, entropy)`` per row, in float32: ``(N, V), (N,)``.

    The log-prob is computed with the same operations as `target_logprobs`
    (so asking for statistics changes no number); the rank counts the
    tokens whose logit is strictly higher, plus one; the entropy is
    ``log Z - sum(exp(l - top) (l - top)) / Z`` with ``Z = sum(exp(l - top))``.
    Holds one more (N, V) tensor than `target_logprobs`.
    """
    logits = logits.float()
    picked = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    rank = (logits > picked.unsqueeze(1)).sum(dim=1).float() + 1.0
    top = _row_max(logits)
    shifted = logits.sub_(top)
    weights = shifted.exp()  # (N, V)
    total = weights.sum(dim=1)
    log_total = total.log().add_(top.squeeze(1))
    entropy = total.log() - (weights.mul_(shifted)).sum(dim=1) / total
    return picked - log_total, rank, entropy
