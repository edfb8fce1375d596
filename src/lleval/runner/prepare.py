"""Preparing a run, cheapest checks first, so a mistake costs milliseconds, not a model load.

`open_inputs` validates the flags, checks the output paths and opens the data,
reading its first document; `open_and_plan` opens the model through its
backend (tokenizer and length known, weights not read), plans the protocol,
then loads the weights; `make_job` sizes the batches and reads the checkpoint
to resume. A command calls them in that order and hands the `Job` to
`lleval.runner.run.run_job`.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from lleval.backends.base import FULL_VOCABULARY, LoadedModel, ModelSpec, OpenedModel, with_columns
from lleval.config import EvalConfig
from lleval.data.sources import DataStats, Document, DocumentStream
from lleval.data.spec import BUILTIN_DATASET, data_spec
from lleval.engine.distributed import DistContext
from lleval.errors import DataError
from lleval.plan.batching import Batching, auto_batching
from lleval.plan.protocols import Plan, plan
from lleval.runner.checkpoint import Checkpoint
from lleval.runner.progress import Progress
from lleval.stream import Unit


@dataclass(frozen=True)
class Inputs:
    """What a run has found before any model work: checked flags and paths, open data."""

    config: EvalConfig
    stats: DataStats
    documents: Iterator[Document]  # the first one already read, so bad data fails early
    dist: DistContext | None
    started: float


@dataclass(frozen=True)
class Job:
    """Everything the scoring loop needs, prepared."""

    inputs: Inputs
    loaded: LoadedModel
    protocol: Plan
    batching: Batching
    fingerprint: dict[str, Any]  # what a checkpoint must have been made with
    resumed: Checkpoint | None
    others: tuple[LoadedModel, ...] = ()  # every other model the run uses (kld's base), for the report
    #: the protocol's units, planned already (a suite replays them to every model of one tokenizer,
    #: `lleval.runner.replay`); None: the loop plans them from ``inputs.documents``
    units: Iterator[Unit] | None = None

    @property
    def config(self) -> EvalConfig:
        """The run's configuration."""
        return self.inputs.config


def model_spec(config: EvalConfig) -> ModelSpec:
    """The model part of a config."""
    return ModelSpec(**config.section("model"))


def open_inputs(config: EvalConfig) -> Inputs:
    """Validate the config, check that output files can be written (`lleval.preflight`), join
    a process group when launched by torchrun, and open the data, reading its first
    document: a source with no document to score (an empty standard input, rows that are
    all empty) fails here, before the tokenizer loads."""
    from lleval.engine.distributed import from_env
    from lleval.preflight import check_config

    started = time.perf_counter()
    check_config(config)
    dist = from_env()
    docs = DocumentStream(data_spec(config))
    stats = docs.stats
    first = next(docs, None)
    if first is None:
        rows = f"{stats.rows} row{'' if stats.rows == 1 else 's'}"
        raise DataError(
            f"nothing to score in {source_name(config)}: {rows} read, {stats.skipped_empty} empty; check "
            f"{config.flag('limit')}, {config.flag('text_field')} and the data."
        )
    return Inputs(config, stats, itertools.chain([first], docs), dist, started)


def source_name(config: EvalConfig) -> str:
    """The data source as messages name it."""
    return "standard input" if config.dataset == "-" else config.dataset or BUILTIN_DATASET


def load_and_plan(
    configs: Sequence[EvalConfig],
    given: Sequence[LoadedModel | None],
    progress: Progress | None = None,
    check: Callable[[Sequence[OpenedModel | LoadedModel]], None] | None = None,
) -> tuple[list[LoadedModel], Plan]:
    """Open the model of each config through its backend (`lleval.backends.registry`; a
    model in ``given`` stands for its config's), run ``check`` on them (kld compares the
    tokenizers), plan the protocol on the first model's tokenizer and length (so a flag
    that does not fit them fails now), and only then load the weights, the first model
    last: its ``load_seconds`` covers opening and loading every model it needed."""
    from lleval.backends.registry import open_model

    if progress is not None and any(g is None for g in given):
        progress.stage("loading model" if len(configs) == 1 else "loading models")
    started = time.perf_counter()
    opened: list[OpenedModel | LoadedModel] = [g or open_model(model_spec(c)) for c, g in zip(configs, given)]
    if check is not None:
        check(opened)
    protocol = plan(configs[0], opened[0].tokenizer, opened[0].max_positions)
    loaded = [model.load() for model in reversed(opened)][::-1]
    if given[0] is None:
        loaded[0] = dataclasses.replace(loaded[0], load_seconds=time.perf_counter() - started)
    return loaded, protocol


def with_scorer_columns(config: EvalConfig, loaded: LoadedModel) -> LoadedModel:
    """``loaded`` with a scorer that also returns the per-token columns the flags need, all in one
    pass over each logits slice: rank and entropy (--token-stats), Min-K%++'s ``mink_pp_z``
    (--membership, where the model gives the full vocabulary: else the documents'
    ``min_k_plus_plus`` is null, with a note) and ``top1_prob``/``top1_correct`` (--calibration)."""
    extra: tuple[str, ...] = ()
    if config.membership and FULL_VOCABULARY in loaded.capabilities:
        extra += ("mink_pp_z",)
    if config.calibration:
        extra += ("top1_prob", "top1_correct")
    if not (config.token_stats or extra):
        return loaded
    what = " and ".join(name for name, on in (("--token-stats", config.token_stats),
                                               ("--calibration", config.calibration),
                                               ("--membership", config.membership)) if on)
    return with_columns(loaded, config.token_stats, extra, what)


def make_job(inputs: Inputs, loaded: LoadedModel, protocol: Plan, others: tuple[LoadedModel, ...] = ()) -> Job:
    """Size the batches and read the checkpoint to resume, if there is one: a resumed run
    batches as the checkpoint's run did (``--batch-size auto`` sizes batches by the memory
    free, which changes between runs)."""
    from lleval.runner import checkpoint as ckpt
    from lleval.runner.fingerprint import make_fingerprint

    config, dist = inputs.config, inputs.dist
    loaded = with_scorer_columns(config, loaded)
    batching = batching_for(config, loaded, protocol.max_length)
    if dist is not None and batching.auto:  # every rank must form the same batches: rank 0's
        batching = dist.broadcast(batching)
    main = dist is None or dist.is_main
    fingerprint = make_fingerprint(config, loaded, protocol, probe=main) if config.checkpoint else {}
    # Rank 0 reads the checkpoint and hands it to every rank, so all skip the same rows.
    resumed = None
    if config.checkpoint and main:
        resumed = ckpt.load(config.checkpoint, fingerprint, config)
    if config.checkpoint and dist is not None:
        resumed = dist.broadcast(resumed)
    if resumed is not None and resumed.batching is not None:
        batching = resumed.batching
    return Job(inputs, loaded, protocol, batching, fingerprint, resumed, others)


def batching_for(config: EvalConfig, loaded: LoadedModel, max_length: int) -> Batching:
    """The batch shape the engine uses: for ``auto`` (the default) the budget of the model's
    device (`lleval.plan.batching.auto_batching`; an explicit ``max_batch_tokens`` still
    wins), else the config's numbers."""
    if config.batch_size != "auto":
        return Batching(int(config.batch_size), config.max_batch_tokens)
    available = loaded.free_memory() if loaded.free_memory is not None else None
    auto = auto_batching(loaded.bytes_per_token, loaded.accelerator, available, max_length=max_length)
    if config.max_batch_tokens is not None:
        auto = dataclasses.replace(auto, max_batch_tokens=config.max_batch_tokens)
    return auto
