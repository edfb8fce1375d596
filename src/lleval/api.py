"""`evaluate()`: one score run, from an `EvalConfig` to a `Report`.

The heavy objects (model, tokenizer) can be injected as a `LoadedModel`, so
tests drive the whole path with fakes and tiny models.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from lleval import __version__
from lleval.batching import Batching, auto_batching
from lleval.config import EvalConfig
from lleval.data import BUILTIN_DATASET, DataSpec, DataStats, Document, describe_split, iter_documents
from lleval.errors import DataError, ScoringError
from lleval.metrics import Totals
from lleval.model import ModelInfo, ModelSpec
from lleval.report import DocumentResult, Report, check_writable
from lleval.scoring import (
    EngineOptions,
    EngineStats,
    NonFiniteLogProb,
    RowSums,
    Stopped,
    TokenScorer,
    Unit,
    WindowTooLarge,
    score_units,
)
from lleval.protocols import Plan, plan
from lleval.tokenization import tokenizer_fingerprint

#: Called after each scored block with (documents done, tokens scored, documents expected or None).
ProgressFn = Callable[[int, int, "int | None"], None]


@dataclass
class LoadedModel:
    """A scorer with the tokenizer that feeds it and a description for the report."""

    scorer: TokenScorer
    tokenizer: Any
    info: ModelInfo
    pad_id: int = 0
    model: Any = None  # the underlying transformers model, when there is one
    slices: Any = None  # its LogitsSlices (for KL divergence), when there is one
    vocab: int | None = None
    bytes_per_token: int | None = None  # activation working set per batch token, for --batch-size auto


def model_spec(config: EvalConfig) -> ModelSpec:
    """The model part of a config."""
    return ModelSpec(
        name=config.model,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        dtype=config.dtype,
        device=config.device,
        device_map=config.device_map,
    )


def data_spec(config: EvalConfig) -> DataSpec:
    """The data part of a config."""
    return DataSpec(
        dataset=config.dataset,
        dataset_config=config.dataset_config,
        split=config.split,
        text_field=config.text_field,
        sample_by=config.sample_by,
        limit=config.limit,
        streaming=config.streaming,
        encoding=config.encoding,
        errors=config.errors,
    )


def load(config: EvalConfig) -> LoadedModel:
    """Load the model and tokenizer a config names (the only slow step before scoring)."""
    from lleval.model import (
        activation_bytes_per_token,
        load_model,
        make_logits_slices,
        slice_positions,
        vocab_size,
    )
    from lleval.scoring import scorer_from_slices

    model, tokenizer, info = load_model(model_spec(config))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    slices = make_logits_slices(model)
    vocab = vocab_size(model)
    scorer = scorer_from_slices(slices, slice_positions(vocab))
    return LoadedModel(
        scorer, tokenizer, info, int(pad or 0), model, slices, vocab, activation_bytes_per_token(model)
    )


def batching_for(config: EvalConfig, loaded: LoadedModel, max_length: int) -> Batching:
    """The batch shape the engine uses: the config's numbers, or for ``auto`` a token
    budget sized from the memory left on the model's device (an explicit
    ``max_batch_tokens`` still wins). Models without a size estimate (fakes) get 8 rows."""
    if config.batch_size != "auto":
        return Batching(int(config.batch_size), config.max_batch_tokens)
    if loaded.bytes_per_token is None:
        return Batching(8, config.max_batch_tokens, auto=True)
    auto = auto_batching(loaded.bytes_per_token, loaded.info.device, max_length=max_length)
    if config.max_batch_tokens is not None:
        auto = dataclasses.replace(auto, max_batch_tokens=config.max_batch_tokens)
    return auto


def _peeked(docs: Iterator[Document]) -> Iterator[Document]:
    """Read the first document now, so bad data fails before the model loads."""
    first = next(docs, None)
    return docs if first is None else itertools.chain([first], docs)


def _environment() -> dict[str, Any]:
    import datasets
    import torch
    import transformers

    from lleval.hardware import cpu_features

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "lleval": __version__,
        "cpu": dict(cpu_features()),
        "torch_threads": torch.get_num_threads(),
    }


@dataclass
class ScoreRun:
    """What one pass of the engine over a dataset produced, before it becomes a report."""

    loaded: LoadedModel
    protocol: Plan
    data: DataStats
    engine: EngineStats
    documents: list[DocumentResult]
    extra: list[Any]  # per document: sums of the scorer's further columns (or None)
    totals: Totals
    started: float
    load_seconds: float
    scoring_seconds: float
    distributed: dict[str, Any] | None = None
    complete: bool = True
    resumed_documents: int = 0
    batching: Batching | None = None


def run_engine(
    config: EvalConfig,
    *,
    loaded: LoadedModel | None = None,
    loader: Callable[[], LoadedModel] | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ScoreRun:
    """Validate, read the first document, load, then score every window of the dataset.

    Order of work, so that mistakes cost seconds, not a run: the config is
    validated, the output path checked, the first document read, and only
    then the model loaded (``loader``, default `load`) and the corpus scored.
    With ``config.checkpoint`` the finished documents are saved as it goes
    and a matching checkpoint is resumed. When ``should_stop`` turns true the
    run stops after the current batch and returns what is finished, with
    ``complete`` false.
    """
    from lleval import checkpoint as ckpt
    from lleval.distributed import from_env

    started = time.perf_counter()
    config.validate()
    for path, flag in ((config.output, "--output"), (config.checkpoint, "--checkpoint")):
        if path:
            check_writable(path, flag)
    dist = from_env()
    stats = DataStats()
    docs = _peeked(iter_documents(data_spec(config), stats))
    if loaded is None:
        loaded = loader() if loader is not None else load(config)
    load_seconds = time.perf_counter() - started
    protocol = plan(config, loaded.tokenizer, loaded.info.max_positions)
    fingerprint: dict[str, Any] = {}
    if config.checkpoint:  # hashing the tokenizer costs a pass over its vocabulary: only when needed
        fingerprint = {
            "model": model_block(loaded.info),
            "tokenizer": tokenizer_block(loaded)["fingerprint"],
            "protocol": {**protocol.describe(loaded.tokenizer, counts=False), "batch_size": config.batch_size,
                         "max_batch_tokens": config.max_batch_tokens, "block_tokens": config.block_tokens},
        }
    # Rank 0 reads the checkpoint and hands it to every rank, so all skip the same rows.
    # The world size may change between runs: every rank forms the same batches anyway.
    resumed = None
    if config.checkpoint and (dist is None or dist.is_main):
        resumed = ckpt.load(config.checkpoint, fingerprint)
    if config.checkpoint and dist is not None:
        resumed = dist.broadcast(resumed)
    finished: list[RowSums] = list(resumed.rows) if resumed else []
    units = protocol.units(docs, loaded.tokenizer)
    if resumed is not None and finished:
        units = _checking_resumed_data(units, protocol, config.checkpoint or "", resumed)
    engine = EngineStats()
    last_save = [time.monotonic()]

    def save_checkpoint() -> None:
        if not config.checkpoint or (dist is not None and not dist.is_main):
            return
        hashes = [protocol.rows[r.row].text_sha for r in finished]
        ckpt.save(config.checkpoint, ckpt.Checkpoint(fingerprint, ckpt.rows_hash(hashes), finished))
        last_save[0] = time.monotonic()

    scored = [sum(r.tokens for r in finished)]

    def on_rows(block: list[RowSums]) -> None:
        finished.extend(block)
        scored[0] += sum(r.tokens for r in block)
        if progress is not None:
            progress(len(finished), scored[0], stats.expected_rows)
        if config.checkpoint and time.monotonic() - last_save[0] >= config.checkpoint_every:
            save_checkpoint()

    batching = batching_for(config, loaded, protocol.max_length)
    if dist is not None and batching.auto:  # every rank must form the same batches: rank 0's
        batching = dist.broadcast(batching)
    options = EngineOptions(
        batch_size=batching.batch_size, max_batch_tokens=batching.max_batch_tokens, pad_id=loaded.pad_id,
        block_tokens=config.block_tokens,
        allow_nonfinite=config.allow_nonfinite, skip_rows=len(finished), should_stop=should_stop,
    )
    scoring_started = time.perf_counter()
    complete = True
    try:
        for _ in score_units(loaded.scorer, units, options, stats=engine, on_rows=on_rows, shard=dist):
            pass
    except Stopped:
        complete = False
    except WindowTooLarge as exc:
        save_checkpoint()
        raise ScoringError(
            f"out of memory on {loaded.info.device} for a single window of {exc.tokens} tokens: lower "
            "--max-length, or use --dtype bfloat16 or --device-map auto on GPUs."
        ) from None
    except NonFiniteLogProb as exc:
        save_checkpoint()
        row = protocol.rows[exc.row] if exc.row < len(protocol.rows) else None
        where = f"document {row.index}" if row else f"row {exc.row}"
        raise ScoringError(
            f"non-finite log-prob ({exc.value}) in {where} of {config.dataset or BUILTIN_DATASET}, at "
            f"token position {exc.position} of its sequence: the model produced NaN or infinity. Try "
            "--dtype float32, or --allow-nonfinite to count such tokens and leave them out."
        ) from None
    if config.checkpoint and (complete or finished):
        save_checkpoint()
    scoring_seconds = time.perf_counter() - scoring_started
    totals = Totals()
    documents: list[DocumentResult] = []
    extra: list[Any] = []
    for sums in finished:
        row = protocol.rows[sums.row]
        documents.append(DocumentResult(row.index, sums.log_likelihood, sums.tokens, row.bytes, row.words))
        extra.append(sums.extra)
        totals.add(Totals(sums.log_likelihood, sums.tokens, row.bytes, row.words, 1, sums.logprob_sq_sum,
                          sums.nonfinite))
    if totals.tokens == 0 and complete:
        raise DataError(
            f"nothing left to score in {config.dataset or BUILTIN_DATASET}: {stats.rows} rows read, "
            f"{stats.skipped_empty} empty, {totals.documents} documents with no token to predict. "
            "Check --limit, --text-field and --prefix-token."
        )
    return ScoreRun(
        loaded, protocol, stats, engine, documents, extra, totals, started, load_seconds, scoring_seconds,
        None if dist is None else dist.describe(), complete, len(resumed.rows) if resumed else 0, batching,
    )


def _checking_resumed_data(units: Iterator[Unit], protocol: Plan, path: str, resumed: Any) -> Iterator[Unit]:
    """Pass units through; once the resumed rows have been read again, check they are the same texts."""
    from lleval import checkpoint as ckpt

    done = len(resumed.rows)
    checked = False
    for unit in units:
        if not checked and len(protocol.rows) >= done:
            ckpt.check_data(path, resumed, [row.text_sha for row in protocol.rows[:done]])
            checked = True
        yield unit


def evaluate(
    config: EvalConfig,
    *,
    loaded: LoadedModel | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Report:
    """Score the dataset a config names with the model it names, and return the `Report`.

    A run stopped by ``should_stop`` returns a report with ``complete`` false
    holding the documents finished so far.
    """
    run = run_engine(config, loaded=loaded, progress=progress, should_stop=should_stop)
    loaded, protocol, stats, engine = run.loaded, run.protocol, run.data, run.engine
    documents, totals = run.documents, run.totals
    load_seconds, scoring_seconds, started = run.load_seconds, run.scoring_seconds, run.started
    intervals, bootstrap_info = _intervals(config, documents, protocol.scores_every_token)
    notes = []
    if not run.complete:
        notes.append(f"stopped early: {len(documents)} documents finished; rerun with --checkpoint to resume.")
    if run.resumed_documents:
        notes.append(f"resumed from {config.checkpoint}: {run.resumed_documents} documents were scored before.")
    if totals.nonfinite:
        notes.append(f"{totals.nonfinite} tokens had a NaN or infinite log-prob and are left out (--allow-nonfinite).")
    if bootstrap_info.get("skipped"):
        notes.append(str(bootstrap_info["skipped"]))
    if protocol.name == "rolling" and protocol.prefix_token is None:
        notes.append("--prefix-token none: the first token of each document is not scored.")
    if not protocol.scores_every_token:
        notes.append(
            f"the {protocol.name} protocol leaves {protocol.dropped_tokens} of {protocol.stream_tokens} "
            "tokens unscored, so bits per byte and word/byte perplexity are not reported."
        )
    if loaded.info.dtype != "float32" and loaded.info.device == "cpu":
        from lleval.hardware import has_fast_half

        speed = "" if has_fast_half(loaded.info.dtype) else " and, without native units on this CPU, slow"
        notes.append(f"scored in {loaded.info.dtype} on CPU: numbers differ from float32{speed}.")
    elif loaded.info.dtype != "float32":
        notes.append(f"scored in {loaded.info.dtype}: compare only with runs in the same dtype "
                     "(--dtype float32 for float32 numbers).")
    tok = loaded.tokenizer
    return Report(
        lleval_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        complete=run.complete,
        model=model_block(loaded.info),
        tokenizer=tokenizer_block(loaded),
        dataset=dataset_block(config, stats, totals.documents),
        protocol=protocol.describe(tok),
        totals=totals,
        documents=documents,
        timing={
            "seconds": time.perf_counter() - started,
            "load_seconds": load_seconds,
            "scoring_seconds": scoring_seconds,
            "tokens_per_second": totals.tokens / scoring_seconds if scoring_seconds > 0 else 0.0,
            "windows": engine.windows,
            "batches": engine.batches,
            "padding_share": engine.padding_tokens / engine.computed_tokens if engine.computed_tokens else 0.0,
            "batching": run.batching.describe() if run.batching else None,
            "out_of_memory_splits": engine.oom_splits,
        },
        environment=_environment(),
        notes=notes,
        intervals=intervals,
        bootstrap=bootstrap_info,
        distributed=run.distributed,
    )


def model_block(info: ModelInfo) -> dict[str, Any]:
    """The report's ``model`` block."""
    return {
        "name": info.name,
        "source": info.source,
        "revision": info.revision,
        "sha256": info.sha256,
        "dtype": info.dtype,
        "device": info.device,
        "parameters": info.parameters,
        "max_positions": info.max_positions,
        "device_map": info.device_map,
    }


def tokenizer_block(loaded: LoadedModel) -> dict[str, Any]:
    """The report's ``tokenizer`` block."""
    tok = loaded.tokenizer
    return {
        "name": loaded.info.name,
        "vocab_size": len(tok),
        "fingerprint": tokenizer_fingerprint(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }


def dataset_block(config: EvalConfig, stats: DataStats, documents: int) -> dict[str, Any]:
    """The report's ``dataset`` block."""
    return {
        "spec": config.dataset or BUILTIN_DATASET,
        "config": config.dataset_config,
        "split": describe_split(data_spec(config)),
        "text_field": config.text_field,
        "sample_by": config.sample_by,
        "limit": config.limit,
        "streaming": config.streaming,
        "rows": stats.rows,
        "documents": documents,
        "skipped_empty": stats.skipped_empty,
        "fingerprint": stats.fingerprint(),
    }


def _intervals(
    config: EvalConfig, documents: list[DocumentResult], per_byte: bool
) -> tuple[dict[str, tuple[float, float] | None], dict[str, Any]]:
    """95% bootstrap intervals over documents for perplexity and bits per byte."""
    import numpy as np

    from lleval.metrics import ratio_intervals

    info: dict[str, Any] = {"resamples": config.bootstrap, "seed": config.seed, "level": 0.95, "unit": "document"}
    if config.bootstrap == 0:
        info["skipped"] = "--bootstrap 0: no confidence intervals."
    elif len(documents) < 2:
        info["skipped"] = "a single document gives no confidence interval: score two or more."
    nll = np.array([-d.log_likelihood for d in documents])
    tokens = np.array([d.tokens for d in documents], dtype=np.float64)
    n_bytes = np.array([d.bytes for d in documents], dtype=np.float64)
    intervals = ratio_intervals(nll, tokens, n_bytes, config.bootstrap, config.seed)
    if not per_byte:
        intervals["bits_per_byte"] = None
    return intervals, info


def compare_files(
    base: str,
    candidates: list[str],
    *,
    max_regression_pct: float | None = None,
    require_significant: bool = False,
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[Any]:
    """Load reports and compare each candidate with the base (see `lleval.compare`)."""
    from lleval.compare import compare_reports, load_report

    base_report = load_report(base)
    loaded = [(path, load_report(path)) for path in candidates]
    return [
        compare_reports(
            base_report, report, base_name=base, candidate_name=path,
            max_regression_pct=max_regression_pct, require_significant=require_significant,
            n_resamples=n_resamples, seed=seed,
        )
        for path, report in loaded
    ]
