"""`evaluate()`: one score run, from an `EvalConfig` to a `Report`.

The heavy objects (model, tokenizer) can be injected as a `LoadedModel`, so
tests drive the whole path with fakes and tiny models.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from lleval import __version__
from lleval.config import EvalConfig, DEFAULT_MAX_LENGTH_CAP
from lleval.data import BUILTIN_DATASET, DataSpec, DataStats, Document, describe_split, iter_documents
from lleval.errors import ConfigError, DataError
from lleval.metrics import Totals
from lleval.model import ModelInfo, ModelSpec
from lleval.report import DocumentResult, Report, check_writable
from lleval.scoring import EngineStats, TokenScorer, Unit, score_units
from lleval.tokenization import encode, encode_with_owners, resolve_prefix_token, tokenizer_fingerprint
from lleval.windows import check_window_params, rolling_spans

#: Called after each scored block with (documents done, tokens scored, documents expected or None).
ProgressFn = Callable[[int, int, "int | None"], None]

TOKENIZE_GROUP = 64  # documents tokenized per batched tokenizer call


@dataclass
class LoadedModel:
    """A scorer with the tokenizer that feeds it and a description for the report."""

    scorer: TokenScorer
    tokenizer: Any
    info: ModelInfo
    pad_id: int = 0
    model: Any = None  # the underlying transformers model, when there is one


def model_spec(config: EvalConfig) -> ModelSpec:
    """The model part of a config."""
    return ModelSpec(
        name=config.model,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        dtype=config.dtype,
        device=config.device,
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
    )


def load(config: EvalConfig) -> LoadedModel:
    """Load the model and tokenizer a config names (the only slow step before scoring)."""
    from lleval.model import load_model, make_scorer

    model, tokenizer, info = load_model(model_spec(config))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return LoadedModel(make_scorer(model), tokenizer, info, int(pad or 0), model)


def _peeked(docs: Iterator[Document]) -> Iterator[Document]:
    """Read the first document now, so bad data fails before the model loads."""
    first = next(docs, None)
    return docs if first is None else itertools.chain([first], docs)


def _window_params(config: EvalConfig, info: ModelInfo) -> tuple[int, int]:
    limit = info.max_positions
    max_length = config.max_length or min(limit or DEFAULT_MAX_LENGTH_CAP, DEFAULT_MAX_LENGTH_CAP)
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"--max-length {max_length} is larger than the model's {limit} positions: the model "
            f"cannot read windows that long. Use --max-length {limit} or less."
        )
    stride = config.stride or max_length
    check_window_params(max_length, stride)
    return max_length, stride


def _words(text: str) -> int:
    return len(text.split())


def _document_units(
    docs: Iterator[Document], tokenizer: Any, prefix: int | None, max_length: int, stride: int,
    rows: list[tuple[int, int, int]],
) -> Iterator[Unit]:
    head = [] if prefix is None else [prefix]
    while group := list(itertools.islice(docs, TOKENIZE_GROUP)):
        for doc, ids in zip(group, encode(tokenizer, [d.text for d in group])):
            sequence = head + ids
            rows.append((doc.index, len(doc.text.encode("utf-8")), _words(doc.text)))
            yield Unit(sequence, rolling_spans(len(sequence), max_length, stride), [len(rows) - 1])


def _concat_unit(
    docs: Iterator[Document], tokenizer: Any, prefix: int | None, max_length: int, stride: int,
    separator: str, rows: list[tuple[int, int, int]],
) -> Iterator[Unit]:
    texts: list[str] = []
    for doc in docs:
        texts.append(doc.text)
        rows.append((doc.index, 0, _words(doc.text)))
    if not texts:
        return
    ids, owners, n_bytes = encode_with_owners(tokenizer, texts, separator)
    for row, size in enumerate(n_bytes):
        index, _, words = rows[row]
        rows[row] = (index, size, words)
    import numpy as np

    if prefix is not None:
        ids = [prefix] + ids
        owners = np.concatenate([np.zeros(1, dtype=np.int64), owners])
    yield Unit(ids, rolling_spans(len(ids), max_length, stride), list(range(len(texts))), owners)


def _environment() -> dict[str, str]:
    import datasets
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "lleval": __version__,
    }


def evaluate(
    config: EvalConfig,
    *,
    loaded: LoadedModel | None = None,
    progress: ProgressFn | None = None,
) -> Report:
    """Score the dataset a config names with the model it names, and return the `Report`.

    Order of work, so that mistakes cost seconds, not a run: the config is
    validated, the output path checked, the first document read, and only
    then the model loaded and the corpus scored.
    """
    started = time.perf_counter()
    config.validate()
    if config.output:
        check_writable(config.output)
    dspec = data_spec(config)
    stats = DataStats()
    docs = _peeked(iter_documents(dspec, stats))
    if loaded is None:
        loaded = load(config)
    load_seconds = time.perf_counter() - started
    max_length, stride = _window_params(config, loaded.info)
    prefix = resolve_prefix_token(loaded.tokenizer, config.prefix_token)

    rows: list[tuple[int, int, int]] = []
    if config.concat is not None:
        units = _concat_unit(docs, loaded.tokenizer, prefix, max_length, stride, config.concat, rows)
    else:
        units = _document_units(docs, loaded.tokenizer, prefix, max_length, stride, rows)
    engine = EngineStats()
    done = {"docs": 0, "tokens": 0}

    def on_rows(block: list[Any]) -> None:
        done["docs"] += len(block)
        done["tokens"] += sum(r.tokens for r in block)
        if progress is not None:
            progress(done["docs"], done["tokens"], stats.expected_rows)

    scoring_started = time.perf_counter()
    totals = Totals()
    documents: list[DocumentResult] = []
    for sums in score_units(
        loaded.scorer, units, batch_size=config.batch_size, pad_id=loaded.pad_id,
        stats=engine, on_rows=on_rows,
    ):
        index, n_bytes, n_words = rows[sums.row]
        result = DocumentResult(index, sums.log_likelihood, sums.tokens, n_bytes, n_words)
        documents.append(result)
        totals.add(Totals(result.log_likelihood, result.tokens, result.bytes, result.words, 1))
    scoring_seconds = time.perf_counter() - scoring_started
    if totals.tokens == 0:
        raise DataError(
            f"nothing left to score in {config.dataset or BUILTIN_DATASET}: {stats.rows} rows read, "
            f"{stats.skipped_empty} empty, {totals.documents} documents with no token to predict. "
            "Check --limit, --text-field and --prefix-token."
        )

    notes = []
    if prefix is None:
        notes.append("--prefix-token none: the first token of each document is not scored.")
    if loaded.info.dtype != "float32" and loaded.info.device == "cpu":
        notes.append(f"scored in {loaded.info.dtype} on CPU: numbers differ from float32 and it is slow.")
    tok = loaded.tokenizer
    return Report(
        lleval_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        complete=True,
        model={
            "name": loaded.info.name,
            "source": loaded.info.source,
            "revision": loaded.info.revision,
            "sha256": loaded.info.sha256,
            "dtype": loaded.info.dtype,
            "device": loaded.info.device,
            "parameters": loaded.info.parameters,
            "max_positions": loaded.info.max_positions,
        },
        tokenizer={
            "name": loaded.info.name,
            "vocab_size": len(tok),
            "fingerprint": tokenizer_fingerprint(tok),
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        },
        dataset={
            "spec": config.dataset or BUILTIN_DATASET,
            "config": config.dataset_config,
            "split": describe_split(dspec),
            "text_field": config.text_field,
            "sample_by": config.sample_by,
            "limit": config.limit,
            "streaming": config.streaming,
            "rows": stats.rows,
            "documents": totals.documents,
            "skipped_empty": stats.skipped_empty,
            "fingerprint": stats.fingerprint(),
        },
        protocol={
            "name": config.protocol,
            "max_length": max_length,
            "stride": stride,
            "prefix_token": prefix,
            "prefix_token_text": None if prefix is None else tok.convert_ids_to_tokens(prefix),
            "first_token_scored": prefix is not None,
            "concat": config.concat,
            "special_tokens": False,
            "windows": "rolling: first window predicts up to max_length tokens, each later one "
            "up to stride new tokens with as much preceding context as fits in max_length",
        },
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
        },
        environment=_environment(),
        notes=notes,
    )
