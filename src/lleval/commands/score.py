"""`evaluate()`: one score run, from an `EvalConfig` to a `Report`.

Read top to bottom, a run is three steps (the README's "How it works" has
the whole flow):

1. **prepare** (`open_inputs`, `load_and_plan`, `make_job`): validate the
   flags, check the output paths, open the data and read its first
   document, load the tokenizer and plan the protocol, then load the weights
   and resume a checkpoint; so a mistake costs milliseconds, not a model load;
2. **score** (`score`): one plain loop over what the engine yields: scored
   blocks go to the reducers and the checkpointer, ticks between batches to
   the progress display (through a `ProgressMeter`);
3. **finish** (`score_report`): the report, derived from the reducers' sums.

The heavy objects can be injected as a `LoadedModel`, so tests drive the
whole path with fakes and tiny models. ``lleval kld`` (`lleval.commands.kld`) runs the
same steps with a pair of models and one more reducer.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

from lleval import __version__
from lleval.plan.batching import Batching, auto_batching
from lleval.runner.checkpoint import Checkpoint, Checkpointer, verify_resumed
from lleval.config import EvalConfig
from lleval.data.sources import BUILTIN_DATASET, DataStats, Document, data_spec, iter_documents
from lleval.engine.distributed import DistContext
from lleval.errors import ConfigError, DataError, OutputError, ScoringError
from lleval.metrics import Totals, ratio_intervals
from lleval.backends.hf import LoadedModel, ModelSpec
from lleval.plan.protocols import Plan, plan
from lleval.reducers.base import NonFiniteLogProb, Reducer, finite_only
from lleval.reducers.context import ContextCurve
from lleval.reducers.documents import DocumentSums, StreamCounts
from lleval.reducers.samples import DocumentSamples
from lleval.report.score import (
    ContextBin,
    Report,
    bins_of_table,
    dataset_block,
    environment,
    model_block,
    now,
    timing_block,
    tokenizer_block,
)
from lleval.engine.scoring import EngineOptions, EngineStats, Stopped, WindowTooLarge, engine_stream
from lleval.engine.stream import EngineTick

__all__ = ["evaluate", "load", "LoadedModel", "Progress", "ScoringProgress"]


@dataclass(frozen=True)
class ScoringProgress:
    """How far scoring is, as the progress display shows it ("X / Y tokens, d/D docs").

    Counts include what a resumed checkpoint had done; the rate and the time
    left count only this process's work. ``tokens_planned`` grows block by
    block (a block is planned once its million tokens are read), so it is the
    run's total only when ``all_planned``.
    """

    documents: int  # finished
    documents_expected: int | None  # rows of the source, when its size is known
    tokens: int  # scored
    tokens_planned: int  # of the blocks planned so far
    all_planned: bool  # the last block is planned
    seconds: float  # since scoring began in this process
    new_documents: int  # finished in this process
    new_tokens: int  # scored in this process

    @property
    def tokens_per_second(self) -> float | None:
        """Tokens scored per second since scoring began (None before the first batch)."""
        return self.new_tokens / self.seconds if self.new_tokens and self.seconds > 0 else None

    @property
    def seconds_left(self) -> float | None:
        """From tokens once every block is planned, else from documents when their number is
        known (None when neither tells: a stream of unknown length)."""
        rate = self.tokens_per_second
        if self.all_planned and rate:
            return max(self.tokens_planned - self.tokens, 0) / rate
        if self.documents_expected and self.new_documents and self.seconds > 0:
            return max(self.documents_expected - self.documents, 0) * self.seconds / self.new_documents
        return None


class Progress(Protocol):
    """What a run tells the progress display: the stage it is in, then how far scoring is."""

    def stage(self, text: str) -> None:
        """A new stage begins (``"loading model"``, ``"scoring"``)."""
        ...

    def update(self, state: ScoringProgress) -> None:
        """Once a block is planned, after each batch and after each block (documents finish
        only with their block)."""
        ...


@dataclass
class ProgressMeter:
    """What the scoring loop asks to show progress: it keeps the engine's last tick and the
    counts a resumed run started from, and hands a `ScoringProgress` to the display."""

    display: Progress | None
    documents_expected: int | None
    documents_before: int  # restored from a checkpoint
    tokens_before: int
    started: float = field(default_factory=time.perf_counter)
    last: EngineTick = EngineTick(0, 0, 0, 0, False)

    def show(self, tick: EngineTick | None, documents: int, tokens: int) -> None:
        """Show ``documents`` and ``tokens`` done (with a tick: its plan, too)."""
        if self.display is None:
            return
        self.last = tick or self.last
        self.display.update(ScoringProgress(
            documents, self.documents_expected, tokens, self.tokens_before + self.last.planned, self.last.last_block,
            time.perf_counter() - self.started, documents - self.documents_before, tokens - self.tokens_before))


def model_spec(config: EvalConfig) -> ModelSpec:
    """The model part of a config."""
    return ModelSpec(config.model, config.revision, config.trust_remote_code, config.dtype, config.device,
                     config.device_map, config.model_cache, config.float32_head)


def load(config: EvalConfig) -> LoadedModel:
    """Load the model a config names (see `lleval.backends.hf.load`)."""
    from lleval.backends.hf import load as load_model

    return load_model(model_spec(config))


@dataclass
class Inputs:
    """What a run has found before any model work: checked flags and paths, open data."""

    config: EvalConfig
    stats: DataStats
    documents: Iterator[Document]  # the first one already read, so bad data fails early
    dist: DistContext | None
    started: float


@dataclass
class Job:
    """Everything the scoring loop needs, prepared."""

    inputs: Inputs
    loaded: LoadedModel
    protocol: Plan
    batching: Batching
    fingerprint: dict[str, Any]  # what a checkpoint must have been made with
    resumed: Checkpoint | None

    @property
    def config(self) -> EvalConfig:
        """The run's configuration."""
        return self.inputs.config


@dataclass
class ScoringRun:
    """How the scoring loop went."""

    engine: EngineStats
    seconds: float
    complete: bool  # False when stopped early (``should_stop``)
    checkpoint_problem: str | None = None  # why a checkpoint save failed (the run went on)


def open_inputs(config: EvalConfig) -> Inputs:
    """Validate the config, check that output files can be written (`lleval.preflight`), join
    a process group when launched by torchrun, and open the data, reading its first document:
    a source with no document to score (an empty standard input, rows that are all empty)
    fails here, before the tokenizer loads."""
    from lleval.engine.distributed import from_env
    from lleval.preflight import check_config

    started = time.perf_counter()
    check_config(config)
    dist = from_env()
    stats = DataStats()
    docs = iter_documents(data_spec(config), stats)
    first = next(docs, None)
    if first is None:
        rows = f"{stats.rows} row{'' if stats.rows == 1 else 's'}"
        raise DataError(
            f"nothing to score in {_source(config)}: {rows} read, {stats.skipped_empty} empty; check "
            f"{config.flag('limit')}, {config.flag('text_field')} and the data."
        )
    return Inputs(config, stats, itertools.chain([first], docs), dist, started)


def _source(config: EvalConfig) -> str:
    """The data source as messages name it."""
    return "standard input" if config.dataset == "-" else config.dataset or BUILTIN_DATASET


def load_and_plan(config: EvalConfig, progress: Progress | None = None) -> tuple[LoadedModel, Plan]:
    """Load the tokenizer and config, plan the protocol (so a flag that does not fit the
    tokenizer or the model's length fails now), then load the weights."""
    from lleval.backends.hf import load_weights, open_model

    if progress is not None:
        progress.stage("loading model")
    started = time.perf_counter()
    found = open_model(model_spec(config))
    protocol = plan(config, found.tokenizer, found.max_positions)
    loaded = load_weights(found)
    return dataclasses.replace(loaded, load_seconds=time.perf_counter() - started), protocol


def make_job(inputs: Inputs, loaded: LoadedModel, protocol: Plan) -> Job:
    """Size the batches and read the checkpoint to resume, if there is one."""
    from lleval.runner import checkpoint as ckpt

    config, dist = inputs.config, inputs.dist
    if config.token_stats:
        from lleval.backends.hf import with_token_stats

        loaded = with_token_stats(loaded)
    batching = batching_for(config, loaded, protocol.max_length)
    if dist is not None and batching.auto:  # every rank must form the same batches: rank 0's
        batching = dist.broadcast(batching)
    fingerprint = _fingerprint(config, loaded, protocol) if config.checkpoint else {}
    # Rank 0 reads the checkpoint and hands it to every rank, so all skip the same rows.
    resumed = None
    if config.checkpoint and (dist is None or dist.is_main):
        resumed = ckpt.load(config.checkpoint, fingerprint)
    if config.checkpoint and dist is not None:
        resumed = dist.broadcast(resumed)
    if resumed is not None and resumed.complete and config.tokens:
        raise ConfigError(
            f"checkpoint {config.checkpoint} is of a finished run, which wrote its token file then: nothing is "
            "scored again now, so there are no tokens to write. Drop --tokens to rebuild the report from the "
            "checkpoint, or delete the checkpoint to score again."
        )
    return Job(inputs, loaded, protocol, batching, fingerprint, resumed)


def _fingerprint(config: EvalConfig, loaded: LoadedModel, protocol: Plan) -> dict[str, Any]:
    """What decides every number of a run: hashing the tokenizer costs a pass over its
    vocabulary, so this is computed only when a checkpoint is used."""
    return {
        "model": {k: v for k, v in model_block(loaded.info).items() if k != "cache"},  # a cache hit is the same model
        "tokenizer": tokenizer_block(loaded.tokenizer, loaded.info.name)["fingerprint"],
        "protocol": {**protocol.describe(loaded.tokenizer), "batch_size": config.batch_size,
                     "max_batch_tokens": config.max_batch_tokens, "block_tokens": config.block_tokens},
        "columns": list(getattr(loaded.scorer, "columns", ())),  # the token file's further columns
    }


def batching_for(config: EvalConfig, loaded: LoadedModel, max_length: int) -> Batching:
    """The batch shape the engine uses: for ``auto`` (the default) the device's token
    budget and pass cost (`lleval.plan.batching.auto_batching`; an explicit
    ``max_batch_tokens`` still wins), else the config's numbers."""
    if config.batch_size != "auto":
        return Batching(int(config.batch_size), config.max_batch_tokens)
    auto = auto_batching(loaded.bytes_per_token, loaded.info.device, max_length=max_length)
    if config.max_batch_tokens is not None:
        auto = dataclasses.replace(auto, max_batch_tokens=config.max_batch_tokens)
    return auto


def score(
    job: Job,
    sums: DocumentSums,
    others: Mapping[str, Reducer] | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ScoringRun:
    """The scoring loop: every scored block goes to the reducers (``sums`` and ``others``,
    restored first from a resumed checkpoint), then to the progress display, then the
    checkpointer is asked whether a save is due; every tick between batches goes to the
    progress display. Stops early (``complete`` false) when ``should_stop`` turns true; a
    checkpoint is saved whenever the run ends."""
    config, dist = job.config, job.inputs.dist
    reducers: dict[str, Any] = {"documents": sums, **(others or {})}
    checkpointer = Checkpointer(config.checkpoint if dist is None or dist.is_main else None,
                                config.checkpoint_every, job.fingerprint)
    units = job.protocol.units(job.inputs.documents, job.loaded.tokenizer, keep_text=bool(config.tokens or config.html))
    if job.resumed is not None:
        Checkpointer.restore(job.resumed, reducers, config.checkpoint or "")
        units = verify_resumed(units, job.resumed, config.checkpoint or "")
    options = EngineOptions(batch_size=job.batching.batch_size, max_batch_tokens=job.batching.max_batch_tokens,
                            overhead_tokens=job.batching.overhead_tokens, pad_id=job.loaded.pad_id,
                            block_tokens=config.block_tokens,
                            skip_rows=len(sums.documents), should_stop=should_stop)
    engine, started, complete = EngineStats(), time.perf_counter(), True
    done_tokens = sum(d.tokens for d in sums.documents)
    if progress is not None:
        progress.stage("scoring")
    meter = ProgressMeter(progress, job.inputs.stats.expected_rows, len(sums.documents), done_tokens)
    try:
        for item in engine_stream(job.loaded.scorer, units, options, stats=engine, shard=dist):
            if isinstance(item, EngineTick):
                meter.show(item, len(sums.documents) + item.block_rows_done, done_tokens + item.block_scored)
                continue
            block = finite_only(item, config.allow_nonfinite)
            for reducer in reducers.values():
                reducer.update(block)
            done_tokens += block.tokens
            meter.show(None, len(sums.documents), done_tokens)
            if checkpointer.due():
                checkpointer.save(len(sums.documents), sums.data_hash, reducers)
    except Stopped:
        complete = False
    except (WindowTooLarge, NonFiniteLogProb) as exc:
        checkpointer.save(len(sums.documents), sums.data_hash, reducers)
        raise _scoring_error(job, exc) from None
    if complete or sums.documents:
        checkpointer.save(len(sums.documents), sums.data_hash, reducers, complete=complete)
    if complete and not any(d.tokens for d in sums.documents):
        stats = job.inputs.stats
        raise DataError(
            f"nothing left to score in {config.dataset or BUILTIN_DATASET}: {stats.rows} rows read, "
            f"{stats.skipped_empty} empty, {len(sums.documents)} documents with no token to predict. "
            "Check --limit, --text-field and --prefix-token."
        )
    return ScoringRun(engine, time.perf_counter() - started, complete, checkpointer.problem)


def _scoring_error(job: Job, exc: WindowTooLarge | NonFiniteLogProb) -> ScoringError:
    if isinstance(exc, WindowTooLarge):
        return ScoringError(
            f"out of memory on {job.loaded.info.device} for a single window of {exc.tokens} tokens: lower "
            "--max-length, or use --dtype bfloat16 or --device-map auto on GPUs."
        )
    return ScoringError(
        f"non-finite log-prob ({exc.value}) in document {exc.index} of {job.config.dataset or BUILTIN_DATASET}, "
        f"at token position {exc.position} of the document: the model produced NaN or infinity. Try --dtype "
        "float32, or --allow-nonfinite to count such tokens and leave them out."
    )


def evaluate(
    config: EvalConfig,
    *,
    loaded: LoadedModel | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Report:
    """Score the dataset a config names with the model it names, and return the `Report`.

    A run stopped by ``should_stop`` returns a report with ``complete`` false
    holding the documents finished so far.
    """
    inputs = open_inputs(config)
    if loaded is None:
        loaded, protocol = load_and_plan(config, progress)
    else:
        protocol = plan(config, loaded.tokenizer, loaded.info.max_positions)
    job = make_job(inputs, loaded, protocol)
    sums, counts, curve = DocumentSums(), StreamCounts(), ContextCurve()
    return score_with_files(job, sums, {"stream": counts, "curve": curve},
                            lambda run: score_report(job, run, sums, counts, curve), progress, should_stop)


def score_with_files(
    job: Job,
    sums: DocumentSums,
    others: Mapping[str, Reducer],
    build_report: Callable[[ScoringRun], Any],
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """`score` with the run's file outputs (``--tokens``, ``--html``) as further reducers, then
    the report ``build_report`` makes of the run, with every file written: a run that fails
    or is interrupted removes its token parts (unless its checkpoint will resume from them),
    and a file that cannot be written is in ``report.failed_outputs``, not raised."""
    files = file_reducers(job)
    try:
        run = score(job, sums, {**others, **files}, progress, should_stop)
    except BaseException:
        abandon_files(job, files)
        raise
    report = build_report(run)
    report.failed_outputs = write_files(job, run, report, files)
    return report


def file_reducers(job: Job) -> dict[str, Any]:
    """The reducers behind ``--tokens`` and ``--html`` (rank 0 alone writes files)."""
    config, dist = job.config, job.inputs.dist
    if dist is not None and not dist.is_main:
        return {}
    files: dict[str, Any] = {}
    if config.tokens:
        from lleval.report.tokens import TokenWriter

        files["tokens"] = TokenWriter(config.tokens, config.checkpoint)
    if config.html:
        files["samples"] = DocumentSamples(config.html_docs)
    return files


def write_files(job: Job, run: ScoringRun, report: Any, files: Mapping[str, Any]) -> list[OutputError]:
    """Write the token file and the HTML report a run was asked for, once its report exists.

    Each output that cannot be written (a full disk) is returned, not raised: the
    run is finished and one failed file must not cost the others, nor the report.
    """
    failed: list[OutputError] = []
    if "tokens" in files:
        header = {k: v for k, v in report.header_dict("tokens").items() if k not in ("timing", "notes")}
        try:
            files["tokens"].finish(header, keep_parts=not run.complete and _resumable(job.config))
        except OutputError as exc:
            failed.append(exc)
    if "samples" in files and job.config.html:
        from lleval.report.html import write_score_html

        try:
            write_score_html(report, files["samples"].samples(), job.config.html, files["samples"].snippets)
        except OutputError as exc:
            failed.append(exc)
    return failed


def abandon_files(job: Job, files: Mapping[str, Any]) -> None:
    """A run that failed or was killed by Ctrl-C: remove the token parts, unless the
    run's checkpoint will resume from them."""
    if "tokens" in files:
        files["tokens"].abandon(keep_parts=_resumable(job.config))


def _resumable(config: EvalConfig) -> bool:
    """Whether a checkpoint file exists that a rerun will resume from."""
    return bool(config.checkpoint) and Path(config.checkpoint or "").is_file()


def score_report(
    job: Job, run: ScoringRun, sums: DocumentSums, counts: StreamCounts, curve: ContextCurve | None = None
) -> Report:
    """The `Report` of a score run: every block of it derived from the reducers' state."""
    totals = sums.totals()
    intervals, bootstrap = document_intervals(job.config, sums, job.protocol.scores_every_token)
    notes = score_notes(job, run, sums, counts) + ([str(bootstrap["skipped"])] if "skipped" in bootstrap else [])
    bins = [] if curve is None else context_bins(job.config, curve, job.protocol.max_length)
    return Report(**header_fields(job, run, counts, totals, notes), totals=totals, documents=sums.documents,
                  intervals=intervals, bootstrap=bootstrap, by_context_length=bins)


def context_bins(config: EvalConfig, curve: ContextCurve, max_length: int) -> list[ContextBin]:
    """``by_context_length``: every power-of-two bin from 1 up to ``max_length``, with the
    bootstrap interval of its perplexity over documents."""
    return bins_of_table(curve.table(max_length), config.bootstrap, config.seed)


def header_fields(
    job: Job, run: ScoringRun, counts: StreamCounts, totals: Totals, notes: list[str], others: tuple[Any, ...] = ()
) -> dict[str, Any]:
    """The `ReportHeader` fields of a run's report (score and kld alike); ``others``: the
    `ModelInfo` of every other model the run used (kld's base), for the environment."""
    loaded, protocol = job.loaded, job.protocol
    half_on_cpu = [i.dtype for i in (loaded.info, *others) if i.device == "cpu" and i.dtype in ("bfloat16", "float16")]
    return {
        "lleval_version": __version__,
        "created": now(),
        "complete": run.complete,
        "model": model_block(loaded.info),
        "tokenizer": tokenizer_block(loaded.tokenizer, loaded.info.name),
        "dataset": dataset_block(data_spec(job.config), job.inputs.stats, totals.documents),
        "protocol": protocol.counted(protocol.describe(loaded.tokenizer), counts.stream_tokens, counts.unscored_tokens),
        "timing": timing_block(time.perf_counter() - job.inputs.started, loaded.load_seconds, run.seconds,
                               totals.tokens, run.engine, job.batching),
        "environment": environment(half_on_cpu),
        "distributed": None if job.inputs.dist is None else job.inputs.dist.describe(),
        "notes": notes,
    }


def score_notes(job: Job, run: ScoringRun, sums: DocumentSums, counts: StreamCounts) -> list[str]:
    """What a reader of the report must know about how its numbers were made."""
    config, protocol, info = job.config, job.protocol, job.loaded.info
    notes = []
    if not run.complete:
        notes.append(f"stopped early: {len(sums.documents)} documents finished; rerun with --checkpoint to resume.")
    if job.resumed is not None and job.resumed.complete:
        notes.append(f"checkpoint {config.checkpoint} is of a finished run on the same {job.resumed.rows} documents: "
                     "this report is rebuilt from it, nothing was scored again.")
    elif job.resumed is not None and job.resumed.rows:
        notes.append(f"resumed from {config.checkpoint}: {job.resumed.rows} documents were scored before.")
    nonfinite = sum(d.nonfinite for d in sums.documents)
    if nonfinite:
        notes.append(f"{nonfinite} tokens had a NaN or infinite log-prob and are left out (--allow-nonfinite).")
    if protocol.name == "rolling" and protocol.prefix_token is None:
        notes.append("--prefix-token none: the first token of each document is not scored.")
    if not protocol.scores_every_token:
        notes.append(
            f"the {protocol.name} protocol leaves {counts.unscored_tokens} of {counts.stream_tokens} "
            "tokens unscored, so bits per byte and word/byte perplexity are not reported."
        )
    if run.checkpoint_problem:
        notes.append(f"a checkpoint save failed ({run.checkpoint_problem}); {config.checkpoint} holds the last "
                     "save that succeeded, if any.")
    notes += model_notes(info)
    return notes


def model_notes(info: Any) -> list[str]:
    """What loading the model met that a reader must know (a model cache that cannot
    be written, a damaged entry rebuilt), then the dtype's note."""
    return list(info.notes) + dtype_notes(info)


def dtype_notes(info: Any) -> list[str]:
    """The note a run in a half precision needs (numbers differ from float32)."""
    if info.dtype == "float32":
        return []
    if info.device == "cpu":
        from lleval.hardware import half_speed_sentence

        return [f"scored in {info.dtype} on CPU: numbers differ from float32; {half_speed_sentence(info.dtype)}."]
    return [f"scored in {info.dtype}: compare only with runs in the same dtype (--dtype float32 for float32 numbers)."]


def document_intervals(
    config: EvalConfig, sums: DocumentSums, per_byte: bool
) -> tuple[dict[str, tuple[float, float] | None], dict[str, Any]]:
    """95% bootstrap intervals over documents for perplexity and bits per byte, and the
    report's ``bootstrap`` block (with a ``skipped`` sentence when there are none)."""
    import numpy as np

    info: dict[str, Any] = {"resamples": config.bootstrap, "seed": config.seed, "level": 0.95, "unit": "document"}
    if config.bootstrap == 0:
        info["skipped"] = "--bootstrap 0: no confidence intervals."
    elif len(sums.documents) < 2:
        info["skipped"] = "a single document gives no confidence interval: score two or more."
    docs = sums.documents
    nll = np.array([-d.log_likelihood for d in docs])
    tokens = np.array([d.tokens for d in docs], dtype=np.float64)
    n_bytes = np.array([d.bytes for d in docs], dtype=np.float64)
    intervals = ratio_intervals(nll, tokens, n_bytes, config.bootstrap, config.seed)
    if not per_byte:
        intervals["bits_per_byte"] = None
    return intervals, info
