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

    def __init__(self, slices: LogitsSlices, per_slice: int, stats: bool = False,
                 extra: tuple[str, ...] = ()) -> None:
        self.slices, self.per_slice, self.stats, self.extra = slices, per_slice, stats, extra
        self.columns: tuple[str, ...] = (("rank", "entropy") if stats else ()) + extra

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, score_mask: torch.Tensor
    ) -> torch.Tensor:
        pieces = map_slices(self.slices, self.per_slice, input_ids, attention_mask, labels, score_mask, self._score)
        if pieces:
            return torch.cat(pieces)
        return torch.zeros((0, 1 + len(self.columns)) if self.columns else 0, dtype=torch.float32)

    def _score(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.extra:
            values = target_columns(logits, targets, self.columns)
            return torch.stack([values["logprob"], *(values[name] for name in self.columns)], 1)
        return torch.stack(target_stats(logits, targets), 1) if self.stats else target_logprobs(logits, targets)


def map_slices(
    slices: LogitsSlices, per_slice: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    labels: torch.Tensor, score_mask: torch.Tensor, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> list[torch.Tensor]:
    """``score(logits, targets)`` of every slice of logits at the scored positions, in order
    (``targets``: the slice's true tokens, on the logits' device), without autograd."""
    targets = labels[score_mask]  # (N,)
    pieces, offset = [], 0
    with torch.inference_mode():
        for logits in slices(input_ids, attention_mask, score_mask, per_slice):
            n = logits.shape[0]
            pieces.append(score(logits, targets[offset : offset + n].to(logits.device)))
            offset += n
    return pieces


def scorer_from_slices(slices: LogitsSlices, per_slice: int, stats: bool = False,
                       extra: tuple[str, ...] = ()) -> SliceScorer:
    """The `SliceScorer` of a `LogitsSlices` (``stats``: also rank and entropy; ``extra``:
    further `COLUMNS` of `target_columns`)."""
    return SliceScorer(slices, per_slice, stats, extra)


def slices_from_logits(logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> LogitsSlices:
    """Adapt a ``(input_ids, attention_mask) -> (B, T, V) logits`` callable to `LogitsSlices`.

    Meant for fakes and tiny models in tests: it holds full logits, which the
    real model path (`lleval.backends.hf.logits`) never does.
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


#: The per-token columns `target_columns` computes: ``rank``, ``entropy`` (--token-stats),
#: ``mink_pp_z`` (Min-K%++'s standardised log-prob, --membership), ``top1_prob`` (the
#: largest probability) and ``top1_correct`` (1.0 where the true token has it, --calibration).
COLUMNS = ("rank", "entropy", "mink_pp_z", "top1_prob", "top1_correct")


def target_columns(logits: torch.Tensor, targets: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The target's ``logprob`` and the columns ``names`` (of `COLUMNS`) per row, in float32.

    The log-prob is computed with the same operations as `target_logprobs`
    (bit-identical, whatever columns are asked for). With ``s = l - max l``,
    ``w = exp(s)`` and ``Z = sum w``: the entropy is ``log Z - sum(w s) / Z``;
    Min-K%++'s ``mu = sum p log p = -entropy`` and ``sigma^2 = sum p (log p)^2 -
    mu^2``, which is the variance of ``s`` under ``p`` (``sum(w s^2)/Z - (sum(w s)/Z)^2``,
    shift-free), and ``z = (log p(target) - mu) / sigma`` (0 where ``sigma`` is 0: every
    token equally likely). ``top1_prob`` is ``max p = 1 / Z``; ``top1_correct`` is 1 where
    no logit is strictly above the target's (rank 1: a tie for the top counts as correct).
    Holds one more (N, V) tensor than `target_logprobs`, as `target_stats` does.
    """
    logits = logits.float()
    picked = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    out: dict[str, torch.Tensor] = {}
    if "rank" in names:
        out["rank"] = (logits > picked.unsqueeze(1)).sum(dim=1).float() + 1.0
    top = _row_max(logits)
    if "top1_correct" in names:
        out["top1_correct"] = (picked >= top.squeeze(1)).float()
    shifted = logits.sub_(top)
    weights = shifted.exp()  # (N, V)
    total = weights.sum(dim=1)
    log_total = total.log().add_(top.squeeze(1))
    out["logprob"] = picked - log_total
    if "top1_prob" in names:
        out["top1_prob"] = total.reciprocal()
    if "entropy" in names or "mink_pp_z" in names:
        mean_s = weights.mul_(shifted).sum(dim=1) / total  # E_p[s]; weights now hold w s
        entropy = total.log() - mean_s
        out["entropy"] = entropy
        if "mink_pp_z" in names:
            mean_s2 = weights.mul_(shifted).sum(dim=1) / total  # E_p[s^2]; weights now hold w s^2
            sigma = (mean_s2 - mean_s * mean_s).clamp_(min=0.0).sqrt_()
            z = (out["logprob"] + entropy) / sigma
            out["mink_pp_z"] = torch.where(sigma > 0, z, torch.zeros_like(z))
    return out
