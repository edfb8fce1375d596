"""The batched scoring engine: windows in, float64 sums per row out.

The engine knows nothing about model names or files. It takes a
`TokenScorer`, a callable that returns the float32 log-probs of the labels at
the positions it is asked to score, and a stream of `Unit`s (token sequences
with their windows). It packs windows into length-sorted, right-padded
batches, scores them, and adds each window's log-probs into float64 sums of
the rows (documents) its tokens belong to, in window order, so that batch
size and sort order do not change the order of additions.

Memory stays bounded for any corpus: units are gathered into blocks of about
``block_tokens`` tokens, each block is sorted, scored and emitted, and only
then is the next block read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch

from lleval.windows import Span


class TokenScorer(Protocol):
    """Returns log P(label) for every position where ``score_mask`` is true.

    Arguments are ``(B, T)`` tensors: ``input_ids`` (right-padded),
    ``attention_mask`` (1 for real tokens), ``labels`` (the token each
    position predicts) and ``score_mask`` (bool, only real positions). The
    result is a 1-D float32 tensor of ``score_mask.sum()`` log-probs (<= 0),
    in row-major order of the true positions.
    """

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        score_mask: torch.Tensor,
    ) -> torch.Tensor: ...


@dataclass
class Unit:
    """One token sequence scored by `spans`, owned by one or more rows.

    ``owners[i]`` is the row (document number, 0-based among ``rows``) that
    position ``i`` belongs to; ``None`` means every position belongs to
    ``rows[0]``. ``rows`` lists the rows this unit completes, in order.
    """

    tokens: Sequence[int]
    spans: list[Span]
    rows: list[int]
    owners: np.ndarray | None = None
    window_head: int | None = None  # if set, written over the first token of every window


class NonFiniteLogProb(Exception):
    """A token's log-prob is NaN or infinite; ``row`` and ``position`` say where."""

    def __init__(self, row: int, position: int, value: float) -> None:
        super().__init__(f"non-finite log-prob {value} at row {row}, sequence position {position}")
        self.row, self.position, self.value = row, position, value


class Stopped(Exception):
    """Scoring stopped between batches because ``should_stop`` said so."""


class WindowTooLarge(Exception):
    """A single window ran out of device memory; ``tokens`` is its input length."""

    def __init__(self, tokens: int) -> None:
        super().__init__(f"out of memory on a single window of {tokens} tokens")
        self.tokens = tokens


@dataclass(frozen=True)
class EngineOptions:
    """How the engine batches and what it tolerates."""

    batch_size: int = 8
    max_batch_tokens: int | None = None  # also cap batch rows x padded width
    pad_id: int = 0
    block_tokens: int = 1 << 20
    allow_nonfinite: bool = False  # count NaN/inf log-probs and leave them out, instead of failing
    skip_rows: int = 0  # rows already done (resume): their units are read but not scored
    should_stop: Callable[[], bool] | None = None  # checked between batches


@dataclass
class RowSums:
    """Float64 log-likelihood and scored-token count of one row (document)."""

    row: int
    log_likelihood: float = 0.0
    tokens: int = 0
    logprob_sq_sum: float = 0.0  # sum of squared token log-probs, for variance estimates
    nonfinite: int = 0  # tokens left out because their log-prob was NaN or infinite
    extra: np.ndarray | None = None  # sums of a scorer's further columns, if it returns (N, k)


@dataclass
class EngineStats:
    """Counts the engine keeps for the report's timing block."""

    windows: int = 0
    batches: int = 0
    computed_tokens: int = 0  # tokens fed to the model, padding included
    padding_tokens: int = 0
    scored_tokens: int = 0
    oom_splits: int = 0  # times a batch ran out of memory and was split
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class _Job:
    unit: int
    span: Span
    result: np.ndarray | None = None


class Shard(Protocol):
    """This process's place in a data-parallel job (see `lleval.distributed`)."""

    rank: int
    world_size: int

    def exchange(self, results: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Share this rank's window results; return every rank's."""
        ...


def assign_batches(costs: Sequence[int], world_size: int) -> list[int]:
    """Rank of each batch: largest cost first, each to the least-loaded rank (lowest on ties).

    Deterministic, so every rank computes the same assignment without talking;
    no rank's load exceeds the average by more than the largest single batch.
    """
    loads = [0] * world_size
    owner = [0] * len(costs)
    for b in sorted(range(len(costs)), key=lambda i: -costs[i]):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owner[b] = rank
        loads[rank] += costs[b]
    return owner


def _run_batch(scorer: TokenScorer, units: list[Unit], jobs: list[_Job], pad_id: int) -> None:
    width = max(job.span.input_length for job in jobs)
    batch = len(jobs)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    score_mask = torch.zeros((batch, width), dtype=torch.bool)
    for b, job in enumerate(jobs):
        span = job.span
        unit = units[job.unit]
        window = torch.as_tensor(np.asarray(unit.tokens[span.start : span.end], dtype=np.int64))
        if unit.window_head is not None:
            window[0] = unit.window_head
        n = span.input_length
        input_ids[b, :n] = window[:-1]
        labels[b, :n] = window[1:]
        attention_mask[b, :n] = 1
        score_mask[b, n - span.n_scored : n] = True
    logprobs = scorer(input_ids, attention_mask, labels, score_mask)
    flat = logprobs.detach().to(device="cpu", dtype=torch.float32).numpy()
    expected = int(score_mask.sum())
    if flat.shape[:1] != (expected,) or flat.ndim > 2:
        raise ValueError(f"scorer returned shape {flat.shape}, expected ({expected},) or ({expected}, k)")
    offset = 0
    for job in jobs:
        job.result = flat[offset : offset + job.span.n_scored]
        offset += job.span.n_scored


class _Backoff:
    """Rows per forward pass this process has found to fit (None: whatever the batch holds).

    A batch that runs out of memory is split in halves; the smaller size is
    kept for every later batch of this process, so the error is paid once.
    Batches are still formed as before (every rank agrees on them): only how
    a batch is run changes, and with right padding that changes no number.
    """

    def __init__(self) -> None:
        self.rows: int | None = None

    def run(self, scorer: TokenScorer, units: list[Unit], jobs: list[_Job], pad_id: int, stats: EngineStats) -> None:
        start = 0
        while start < len(jobs):
            part = jobs[start : start + (self.rows or len(jobs))]
            try:
                _run_batch(scorer, units, part, pad_id)
            except torch.OutOfMemoryError:
                if len(part) == 1:
                    raise WindowTooLarge(part[0].span.input_length) from None
                self.rows = len(part) // 2
                stats.oom_splits += 1
                _release_cached_memory()
                continue
            start += len(part)


def _release_cached_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None) -> list[list[int]]:
    """Indices of windows, longest first, cut into batches of at most ``batch_size`` rows
    and (when given) at most ``max_batch_tokens`` padded tokens; a window longer than
    the token budget gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda j: -lengths[j])  # stable: ties keep input order
    batches: list[list[int]] = []
    for j in order:
        if batches:
            current = batches[-1]
            width = lengths[current[0]]  # longest first: the first window sets the width
            fits = len(current) < batch_size and (
                max_batch_tokens is None or (len(current) + 1) * width <= max_batch_tokens
            )
            if fits:
                current.append(j)
                continue
        batches.append([j])
    return batches


def _score_block(
    scorer: TokenScorer,
    units: list[Unit],
    options: EngineOptions,
    stats: EngineStats,
    shard: Shard | None,
    backoff: _Backoff,
) -> Iterator[RowSums]:
    jobs = [_Job(u, span) for u, unit in enumerate(units) for span in unit.spans]
    # Longest first: similar lengths share a batch, so little is padded, and an
    # out-of-memory error shows up on the first batch rather than the last.
    lengths = [job.span.input_length for job in jobs]
    batches = make_batches(lengths, options.batch_size, options.max_batch_tokens)
    pad_id = options.pad_id
    widths = [max(jobs[j].span.input_length for j in batch) for batch in batches]
    # Every rank forms the same batches a single process would, and runs its
    # share: each window meets the same batch-mates, so numbers are identical.
    owners = assign_batches([len(b) * w for b, w in zip(batches, widths)], shard.world_size) if shard else None
    for k, batch in enumerate(batches):
        if options.should_stop is not None and options.should_stop():
            raise Stopped()
        if owners is None or owners[k] == shard.rank:  # type: ignore[union-attr]
            backoff.run(scorer, units, [jobs[j] for j in batch], pad_id, stats)
        stats.batches += 1
        stats.computed_tokens += len(batch) * widths[k]
        stats.padding_tokens += sum(widths[k] - jobs[j].span.input_length for j in batch)
    if shard is not None and owners is not None:
        mine = {j: jobs[j].result for k, batch in enumerate(batches) if owners[k] == shard.rank for j in batch}
        for j, result in shard.exchange(mine).items():  # type: ignore[arg-type]
            jobs[j].result = result
    stats.windows += len(jobs)
    # Add in window order so the sums do not depend on how windows were batched.
    by_unit: list[list[_Job]] = [[] for _ in units]
    for job in jobs:
        by_unit[job.unit].append(job)
    for unit, unit_jobs in zip(units, by_unit):
        yield from _unit_sums(unit, unit_jobs, stats, options.allow_nonfinite)


def _unit_sums(unit: Unit, jobs: list[_Job], stats: EngineStats, allow_nonfinite: bool) -> Iterator[RowSums]:
    sums = [RowSums(row) for row in unit.rows]
    first_row = unit.rows[0] if unit.rows else 0
    for job in jobs:
        assert job.result is not None
        values = job.result.astype(np.float64)
        extra = values[:, 1:] if values.ndim == 2 else None
        values = values[:, 0] if values.ndim == 2 else values
        positions = np.arange(job.span.end - job.span.n_scored, job.span.end)
        finite = np.isfinite(values)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            owner = first_row if unit.owners is None else int(unit.owners[positions[bad]])
            if not allow_nonfinite:
                raise NonFiniteLogProb(owner, int(positions[bad]), float(values[bad]))
            for k in (~finite).nonzero()[0]:
                row = first_row if unit.owners is None else int(unit.owners[positions[k]])
                sums[row - first_row].nonfinite += 1
            values, positions = values[finite], positions[finite]
            extra = None if extra is None else extra[finite]
        stats.scored_tokens += len(values)
        if unit.owners is None:
            sums[0].log_likelihood += float(values.sum())
            sums[0].logprob_sq_sum += float(np.square(values).sum())
            sums[0].tokens += len(values)
            if extra is not None:
                sums[0].extra = extra.sum(axis=0) + (0.0 if sums[0].extra is None else sums[0].extra)
            continue
        local = unit.owners[positions] - first_row
        ll = np.bincount(local, weights=values, minlength=len(sums))
        sq = np.bincount(local, weights=np.square(values), minlength=len(sums))
        counts = np.bincount(local, minlength=len(sums))
        columns = (
            None if extra is None
            else np.stack([np.bincount(local, weights=extra[:, c], minlength=len(sums)) for c in range(extra.shape[1])], axis=1)
        )
        for k in np.flatnonzero(counts):
            sums[k].log_likelihood += float(ll[k])
            sums[k].logprob_sq_sum += float(sq[k])
            sums[k].tokens += int(counts[k])
            if columns is not None:
                sums[k].extra = columns[k] + (0.0 if sums[k].extra is None else sums[k].extra)
    yield from sums


def score_units(
    scorer: TokenScorer,
    units: Iterable[Unit],
    options: EngineOptions,
    *,
    stats: EngineStats | None = None,
    on_rows: Callable[[list[RowSums]], None] | None = None,
    shard: Shard | None = None,
) -> Iterator[RowSums]:
    """Score every window of every unit and yield one `RowSums` per row, in input order.

    ``options.block_tokens`` bounds how many sequence tokens are held (and
    sorted) at once; a single unit longer than that is a block of its own.
    Blocks depend only on the units, so a resumed run (``skip_rows``) forms
    the same blocks and batches as an uninterrupted one. Rows below
    ``skip_rows`` are not yielded. A batch that runs out of memory
    (``torch.OutOfMemoryError``) is run in smaller pieces (see `_Backoff`);
    a single window that does raises `WindowTooLarge`.
    """
    if options.batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    stats = stats if stats is not None else EngineStats()
    backoff = _Backoff()
    block: list[Unit] = []
    held = 0

    def flush() -> Iterator[RowSums]:
        if block[-1].rows and block[-1].rows[-1] < options.skip_rows:
            return  # done before the resume point: read again only to keep blocks aligned
        rows = list(_score_block(scorer, block, options, stats, shard, backoff))
        if on_rows:
            on_rows(rows)
        yield from rows

    for unit in units:
        block.append(unit)
        held += len(unit.tokens)
        if held >= options.block_tokens:
            yield from flush()
            block, held = [], 0
    if block:
        yield from flush()


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


def scorer_from_slices(slices: LogitsSlices, per_slice: int) -> TokenScorer:
    """The `TokenScorer` that takes the target's log-softmax from each slice of logits."""

    def scorer(
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        score_mask: torch.Tensor,
    ) -> torch.Tensor:
        targets = labels[score_mask]  # (N,)
        pieces, offset = [], 0
        with torch.inference_mode():
            for logits in slices(input_ids, attention_mask, score_mask, per_slice):
                n = logits.shape[0]
                pieces.append(target_logprobs(logits, targets[offset : offset + n].to(logits.device)))
                offset += n
        return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float32)

    return scorer


def slices_from_logits(logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> LogitsSlices:
    """Adapt a ``(input_ids, attention_mask) -> (B, T, V) logits`` callable to `LogitsSlices`.

    Meant for fakes and tiny models in tests: it holds full logits, which the
    real model path (`lleval.model`) never does.
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
    top = logits.amax(dim=1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # all -inf rows stay -inf
    log_total = logits.sub_(top).exp_().sum(dim=1).log_().add_(top.squeeze(1))
    return picked - log_total
