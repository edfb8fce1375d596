"""The batched scoring engine: units in, scored tokens out.

The engine knows nothing about model names, files or metrics. It takes a
`TokenScorer`, a callable that returns the float32 log-probs of the labels at
the positions it is asked to score, and a stream of `Unit`s (token sequences
with their windows and the documents they belong to). It packs windows into
length-sorted, right-padded batches, scores them, and yields, block by
block, every scored token with what it is: its document, its position in
the document, how much context the model saw, its id and its log-prob (plus
any further columns the scorer returns), unit by unit and window by window,
in input order. What is made of those tokens (per-document sums, KL
statistics, ...) is the business of the reducers (`lleval.reducers`).

Memory stays bounded for any corpus: units are gathered into blocks of about
``block_tokens`` tokens, each block is sorted, scored and yielded, and only
then is the next block read. Between batches `engine_stream` also yields an
`EngineTick` (how many tokens are scored and planned), so a progress display
learns how far a block of a million tokens is without the engine calling it,
and a consumer that wants to stop early simply stops reading. Every item
carries the engine's counts (`EngineStats`) as they stand.

The types it reads and yields are in `lleval.stream` (numpy only, so what only
folds scored tokens never imports torch); the scorers it calls, and the
log-prob kernels they use, in `lleval.engine.kernels`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Generator, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch

from lleval.plan.batching import Batching, make_batches
from lleval.engine.kernels import TokenScorer
from lleval.stream import BlockPart, EngineItem, EngineStats, EngineTick, ScoredBlock, TokenScores, Unit, block_key
from lleval.windows import Span


class WindowTooLarge(Exception):
    """A single window ran out of device memory; ``tokens`` is its input length."""

    def __init__(self, tokens: int) -> None:
        super().__init__(f"out of memory on a single window of {tokens} tokens")
        self.tokens = tokens


@dataclass(frozen=True)
class EngineOptions:
    """How the engine batches: the `Batching` (rows, padded tokens and the cost of a pass),
    the pad id, how many tokens a block holds, and the rows a resumed run skips; whether
    ticks carry the block's batches done so far (``keep_done``: a checkpoint saves them),
    and such a part of a block that a resumed run takes instead of scoring it (``resume``)."""

    batching: Batching = field(default_factory=lambda: Batching(8))
    pad_id: int = 0
    block_tokens: int = 1 << 20
    skip_rows: int = 0  # rows already done (resume): their units are read but not scored
    keep_done: bool = False  # ticks carry the block's batches done (`EngineTick.done`); one process only
    resume: BlockPart | None = None  # the first batches of the block at ``skip_rows``, done before


@dataclass(frozen=True)
class _Job:
    unit: int
    span: Span


class Shard(Protocol):
    """This process's place in a data-parallel job (see `lleval.engine.distributed`)."""

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


def _run_batch(scorer: TokenScorer, units: list[Unit], jobs: list[_Job], pad_id: int) -> list[np.ndarray]:
    """One forward pass over ``jobs``' windows, right-padded: each window's scored values."""
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
    ends = np.cumsum([job.span.n_scored for job in jobs])
    return np.split(flat, ends[:-1])


class _Tally:
    """The engine's running counts: an `EngineStats` replaced as they grow, so what a tick or
    a block carries is the value itself, never a view of counts that change later."""

    def __init__(self) -> None:
        self.stats = EngineStats()

    def add(self, **counts: int) -> None:
        self.stats = dataclasses.replace(self.stats, **{k: getattr(self.stats, k) + n for k, n in counts.items()})


class _Backoff:
    """Rows per forward pass this process has found to fit (None: whatever the batch holds).

    A batch that runs out of memory is split in halves; the smaller size is
    kept for every later batch of this process, so the error is paid once.
    Batches are still formed as before (every rank agrees on them): only how
    a batch is run changes, and with right padding that changes no number.
    """

    def __init__(self) -> None:
        self.rows: int | None = None

    def run(self, scorer: TokenScorer, units: list[Unit], jobs: list[_Job], pad_id: int,
            tally: _Tally) -> list[np.ndarray]:
        start, results = 0, []
        while start < len(jobs):
            part = jobs[start : start + (self.rows or len(jobs))]
            try:
                results += _run_batch(scorer, units, part, pad_id)
            except torch.OutOfMemoryError:
                if len(part) == 1:
                    raise WindowTooLarge(part[0].span.input_length) from None
                self.rows = len(part) // 2
                tally.add(oom_splits=1)
                _release_cached_memory()
                continue
            start += len(part)
        return results


def _release_cached_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _BlockPlan:
    """One block's windows (``jobs``) cut into batches, and what a block done in part brings
    back: the values of its first batches, when ``resume`` is a part of this very block."""

    def __init__(self, scorer: TokenScorer, units: list[Unit], options: EngineOptions, keep: bool) -> None:
        self.units = units
        self.jobs = [_Job(u, span) for u, unit in enumerate(units) for span in unit.spans]
        # Longest first: similar lengths share a batch, so little is padded, and an
        # out-of-memory error shows up on the first batch rather than the last.
        self.lengths = [job.span.input_length for job in self.jobs]
        self.batches = make_batches(self.lengths, options.batching)
        self.widths = [max(self.lengths[j] for j in batch) for batch in self.batches]
        self.first_row = units[0].first_row
        self.key = block_key(units, self.batches) if keep or options.resume is not None else ""
        self.width = 1 + len(tuple(getattr(scorer, "columns", ())))
        self.done: list[np.ndarray] = self._restored(options.resume)
        # a document is done once its unit's last window is scored (batches are sorted by
        # length, so within a block documents finish out of order)
        self.windows_left = [len(unit.spans) for unit in units]
        self.rows_done = sum(len(unit.rows) for unit in units if not unit.spans)

    def finish(self, batch: list[int]) -> None:
        """Count the documents whose last window is in ``batch``."""
        for j in batch:
            unit = self.jobs[j].unit
            self.windows_left[unit] -= 1
            self.rows_done += len(self.units[unit].rows) if self.windows_left[unit] == 0 else 0

    def _restored(self, resume: BlockPart | None) -> list[np.ndarray]:
        """The values of the first batches from ``resume`` when it is a part of this block (its
        units, windows and batches), each of the shape the scorer gives; else none."""
        if resume is None or (resume.first_row, resume.key) != (self.first_row, self.key):
            return []
        if resume.batches > len(self.batches):
            return []
        for k, values in enumerate(resume.values):
            rows = sum(self.jobs[j].span.n_scored for j in self.batches[k])
            if values.shape != ((rows,) if self.width == 1 else (rows, self.width)):
                return []
        return list(resume.values)

    def split(self, k: int, values: np.ndarray) -> list[np.ndarray]:
        """Batch ``k``'s values cut into its windows' (as `_run_batch` returns them)."""
        ends = np.cumsum([self.jobs[j].span.n_scored for j in self.batches[k]])
        return np.split(values, ends[:-1])

    def part(self, keep: bool) -> BlockPart | None:
        """The batches done so far, when kept."""
        return BlockPart(self.first_row, self.key, tuple(self.done)) if keep else None


def _score_block(
    scorer: TokenScorer, units: list[Unit], options: EngineOptions, tally: _Tally, shard: Shard | None,
    backoff: _Backoff, last_block: bool,
) -> Iterator[EngineItem]:
    """Score one block: a tick once it is planned and after each batch, then the block. The
    batches a resumed part of this block holds (``options.resume``) are taken from it."""
    keep = options.keep_done and shard is None  # a rank holds only its own batches' values
    plan = _BlockPlan(scorer, units, options, keep)
    jobs, batches, widths, lengths = plan.jobs, plan.batches, plan.widths, plan.lengths
    # Every rank forms the same batches a single process would, and runs its
    # share: each window meets the same batch-mates, so numbers are identical.
    owners = assign_batches([len(b) * w for b, w in zip(batches, widths)], shard.world_size) if shard else None
    block_start = tally.stats.batch_tokens
    tally.add(planned_tokens=sum(job.span.n_scored for job in jobs))
    results: dict[int, np.ndarray] = {}

    def tick(k: int) -> EngineTick:
        return EngineTick(tally.stats, tally.stats.batch_tokens - block_start, last_block, plan.rows_done,
                          len(batches) - k, plan.part(keep))

    restored = len(plan.done)
    for k in range(restored):  # scored before the run was resumed
        results.update(zip(batches[k], plan.split(k, plan.done[k])))
        tally.add(batch_tokens=sum(jobs[j].span.n_scored for j in batches[k]))
        plan.finish(batches[k])
    yield tick(restored)
    for k in range(restored, len(batches)):
        batch = batches[k]
        if owners is None or owners[k] == shard.rank:  # type: ignore[union-attr]
            results.update(zip(batch, backoff.run(scorer, units, [jobs[j] for j in batch], options.pad_id, tally)))
        tally.add(batches=1, windows=len(batch), computed_tokens=len(batch) * widths[k],
                  padding_tokens=sum(widths[k] - lengths[j] for j in batch),
                  batch_tokens=sum(jobs[j].span.n_scored for j in batch))
        if keep:
            plan.done.append(np.concatenate([results[j] for j in batch]))
        plan.finish(batch)
        yield tick(k + 1)
    yield _finished_block(scorer, units, jobs, results, shard, tally)


def _finished_block(scorer: TokenScorer, units: list[Unit], jobs: list[_Job], results: dict[int, np.ndarray],
                    shard: Shard | None, tally: _Tally) -> ScoredBlock:
    """The block's scored tokens, every rank's windows gathered, unit by unit in input order."""
    if shard is not None:
        results = shard.exchange(results)
    by_unit: list[list[tuple[Span, np.ndarray]]] = [[] for _ in units]
    for j, job in enumerate(jobs):
        by_unit[job.unit].append((job.span, results[j]))
    columns = tuple(getattr(scorer, "columns", ()))
    scored = [_token_scores(unit, windows, columns) for unit, windows in zip(units, by_unit)]
    tally.add(scored_tokens=sum(len(s) for s in scored))
    return ScoredBlock(scored, tally.stats)


def _token_scores(unit: Unit, windows: list[tuple[Span, np.ndarray]], columns: tuple[str, ...]) -> TokenScores:
    """Lay one unit's window results out as per-token arrays, in window order."""
    spans = [span for span, _ in windows]
    positions = np.concatenate(
        [np.arange(span.end - span.n_scored, span.end, dtype=np.int64) for span in spans]
    ) if spans else np.zeros(0, dtype=np.int64)
    starts = np.repeat(np.asarray([span.start for span in spans], dtype=np.int64), [span.n_scored for span in spans])
    width = 1 + len(columns)
    values = np.concatenate([result for _, result in windows]) if windows else np.zeros(
        (0, width) if columns else 0, np.float32)
    local = np.zeros(len(positions), dtype=np.int64) if unit.owners is None else unit.owners[positions]
    tokens = np.asarray(unit.tokens, dtype=np.int64)[positions] if len(positions) else positions
    logprob = values[:, 0] if values.ndim == 2 else values
    extra = {name: values[:, 1 + c] for c, name in enumerate(columns)} if values.ndim == 2 else {}
    return TokenScores(
        unit=unit,
        windows=np.concatenate([[0], np.cumsum([span.n_scored for span in spans], dtype=np.int64)]),
        row=unit.first_row + local,
        position=positions - unit.starts[local],
        context=positions - starts,
        token=tokens,
        logprob=np.ascontiguousarray(logprob, dtype=np.float32),
        columns={name: np.ascontiguousarray(col) for name, col in extra.items()},
    )


def score_units(
    scorer: TokenScorer, units: Iterable[Unit], options: EngineOptions, *, shard: Shard | None = None
) -> Iterator[ScoredBlock]:
    """The blocks of `engine_stream`, without its ticks: for consumers that show no progress
    (tests, scripts), which then need not tell the two kinds of item apart."""
    return (item for item in engine_stream(scorer, units, options, shard=shard) if isinstance(item, ScoredBlock))


def engine_stream(
    scorer: TokenScorer, units: Iterable[Unit], options: EngineOptions, *, shard: Shard | None = None
) -> Generator[EngineItem, None, None]:
    """Score every window of every unit; yield a `ScoredBlock` per block, in input order,
    and between batches an `EngineTick` saying how far scoring is.

    ``options.block_tokens`` bounds how many sequence tokens are held (and
    sorted) at once; a single unit longer than that is a block of its own.
    Blocks depend only on the units, so a resumed run (``skip_rows``) forms
    the same blocks and batches as an uninterrupted one: blocks whose rows
    all lie below ``skip_rows`` are read but not scored or yielded. A batch
    that runs out of memory (``torch.OutOfMemoryError``) is run in smaller
    pieces (see `_Backoff`); a single window that does raises
    `WindowTooLarge`. Ticks come once a block is planned and after each of its
    batches; the block's `ScoredBlock` follows its last tick. To stop early,
    stop reading (close the generator) at a tick.
    """
    if options.batching.batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    tally, backoff = _Tally(), _Backoff()
    block: list[Unit] = []
    held = 0
    ahead = iter(units)
    unit = next(ahead, None)
    while unit is not None:
        block.append(unit)
        held += len(unit.tokens)
        unit = next(ahead, None)  # read one unit ahead, to know whether this block is the last
        if held >= options.block_tokens or unit is None:
            if block[-1].last_row >= options.skip_rows:
                yield from _score_block(scorer, block, options, tally, shard, backoff, last_block=unit is None)
            block, held = [], 0
