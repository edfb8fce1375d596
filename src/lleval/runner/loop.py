"""The one scoring loop every command runs, and what it tells a progress display.

`run_loop` reads what the engine yields: each scored block goes to the reducers
(restored first from a resumed checkpoint) and then the checkpointer is asked
whether a save is due; each tick between batches goes to the progress display,
the checkpointer is asked again (a save between batches keeps the batches of the
block done so far), and the loop asks ``should_stop`` whether to stop reading (a
batch is never cut in two). The engine's counts come with what it yields. A
command is then a scorer (in its `Job`), a set of reducers and a report builder
(`lleval.runner.run.run_job`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from lleval.data.spec import BUILTIN_DATASET
from lleval.stream import BlockPart, EngineStats, EngineTick, Unit
from lleval.errors import DataError, ScoringError
from lleval.reducers.base import NonFiniteLogProb, Reducer, finite_only
from lleval.reducers.documents import DocumentSums
from lleval.runner.checkpoint import Checkpointer, verify_resumed
from lleval.runner.prepare import Job
from lleval.runner.progress import Progress, ProgressMeter
from lleval.stopping import Interrupted


@dataclass(frozen=True)
class ScoringRun:
    """How the scoring loop went."""

    engine: EngineStats
    seconds: float
    complete: bool  # False when stopped early (``should_stop``)
    checkpoint_problem: str | None = None  # why a checkpoint save failed (the run went on)


def run_loop(
    job: Job,
    sums: DocumentSums,
    others: Mapping[str, Reducer] | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ScoringRun:
    """The scoring loop (see the module's docstring): stops early (``complete`` false) when
    ``should_stop`` turns true at a tick before a batch, or while a batch waits on a server
    (`lleval.stopping`); a checkpoint is saved whenever the run ends, a failure included once
    this process has scored a batch."""
    from lleval.engine.scoring import WindowTooLarge, engine_stream

    config, dist = job.config, job.inputs.dist
    reducers: dict[str, Any] = {"documents": sums, **(others or {})}
    checkpointer = _checkpointer(job)
    units = _units(job, reducers)
    options = _engine_options(job, len(sums.documents), checkpointer.path is not None)
    engine, started, complete = EngineStats(), time.perf_counter(), True
    done_tokens = sum(d.tokens for d in sums.documents)
    meter = _meter(job, progress, len(sums.documents), done_tokens)
    stream = engine_stream(job.loaded.scorer, units, options, shard=dist)
    part: BlockPart | None = None  # the batches done of the block being scored: a save between batches keeps them
    folding = False  # the reducers are taking a block: a failure now leaves them out of step with each other
    try:
        for item in stream:
            engine = item.stats
            if isinstance(item, EngineTick):
                part = item.done
                meter.show(item, len(sums.documents) + item.block_rows_done, done_tokens + item.block_scored)
                if item.batches_left and checkpointer.due():
                    checkpointer.save(len(sums.documents), sums.data_hash, reducers, partial=part)
                if item.batches_left and should_stop is not None and should_stop():
                    complete = False
                    break
                continue
            block = finite_only(item, config.allow_nonfinite)
            folding = True
            for reducer in reducers.values():
                reducer.update(block)
            folding, part = False, None
            done_tokens += block.tokens
            meter.show(None, len(sums.documents), done_tokens)
            if checkpointer.due():
                checkpointer.save(len(sums.documents), sums.data_hash, reducers)
    except Interrupted:  # a wait on a server cut short: as a stop before the batch it was in
        complete = False
    except BaseException as exc:
        if not folding and engine.batches:  # this process scored something: keep it for a rerun
            checkpointer.save(len(sums.documents), sums.data_hash, reducers, partial=part)
        if isinstance(exc, (WindowTooLarge, NonFiniteLogProb)):
            raise _scoring_error(job, exc) from None
        raise
    finally:
        stream.close()
    if complete or sums.documents or (part is not None and part.batches):
        checkpointer.save(len(sums.documents), sums.data_hash, reducers, complete=complete, partial=part)
    if complete and not any(d.tokens for d in sums.documents):
        raise _nothing_scored(job, sums)
    return ScoringRun(engine, time.perf_counter() - started, complete, checkpointer.problem)


def _engine_options(job: Job, done_rows: int, saves: bool) -> Any:
    """How the engine runs this job: the job's batching, a resumed run's rows skipped and the
    batches of its block taken back; ticks keep the block's batches done when a checkpoint
    is saved by this one process (``saves``)."""
    from lleval.engine.scoring import EngineOptions

    return EngineOptions(job.batching, pad_id=job.loaded.pad_id, block_tokens=job.config.block_tokens,
                         skip_rows=done_rows, keep_done=saves and job.inputs.dist is None,
                         resume=None if job.resumed is None else job.resumed.partial)


def _checkpointer(job: Job) -> Checkpointer:
    """The run's checkpointer: rank 0 alone saves (the others ask the same questions of a no-op)."""
    config, dist = job.config, job.inputs.dist
    return Checkpointer(config.checkpoint if dist is None or dist.is_main else None, config.checkpoint_every,
                        job.fingerprint, job.batching)


def _meter(job: Job, progress: Progress | None, rows_done: int, tokens_done: int) -> ProgressMeter:
    """What the progress display is told, starting at the stage before the first tick."""
    if progress is not None:
        progress.stage("tokenizing")  # the first block is read and planned before its first tick
    return ProgressMeter(progress, job.inputs.stats.expected_rows, rows_done, tokens_done)


def _units(job: Job, reducers: dict[str, Any]) -> Iterator[Unit]:
    """The units the engine scores: the job's own (a suite replays them), else planned from its
    documents; a resumed run's reducers restored and its units checked against the checkpoint;
    a scorer that reads its own file in step (kld --reference) follows them."""
    config = job.config
    units = job.units if job.units is not None else job.protocol.units(
        job.inputs.documents, job.loaded.tokenizer, keep_text=config.keeps_text, zlib=config.membership)
    if job.resumed is not None:
        Checkpointer.restore(job.resumed, reducers, config.checkpoint or "")
        units = verify_resumed(units, job.resumed, config.checkpoint or "")
    follow = getattr(job.loaded.scorer, "follow", None)
    return units if follow is None else follow(units)


def _nothing_scored(job: Job, sums: DocumentSums) -> DataError:
    stats = job.inputs.stats
    return DataError(
        f"nothing left to score in {job.config.dataset or BUILTIN_DATASET}: {stats.rows} rows read, "
        f"{stats.skipped_empty} empty, {len(sums.documents)} documents with no token to predict. "
        "Check --limit, --text-field and --prefix-token."
    )


def _scoring_error(job: Job, exc: Exception) -> ScoringError:
    if isinstance(exc, NonFiniteLogProb):
        return ScoringError(
            f"non-finite log-prob ({exc.value}) in document {exc.index} of {job.config.dataset or BUILTIN_DATASET}, "
            f"at token position {exc.position} of the document: the model produced NaN or infinity. Try --dtype "
            "float32, or --allow-nonfinite to count such tokens and leave them out."
        )
    return ScoringError(
        f"out of memory on {job.loaded.info.device} for a single window of {getattr(exc, 'tokens', '?')} tokens: "
        "lower --max-length, or use --dtype bfloat16 or --device-map auto on GPUs."
    )
