"""Datasets and local files in, a stream of `Document`s out.

Every source goes through Hugging Face ``datasets`` where it has a loader:
hub datasets, ``.txt`` (``text`` builder), ``.jsonl``/``.json`` (``json``),
``.csv``, ``.parquet`` and folders written by ``Dataset.save_to_disk``. Only
standard input is read directly, then split by the same rules as ``.txt``."""

from __future__ import annotations

import hashlib
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lleval.data.checks import check_file, check_text
from lleval.data.spec import BUILTIN_DATASET, DataSpec, FILE_BUILDERS, LOCAL_SPLIT, check_spec, describe_split, source_kind
from lleval.errors import ConfigError, DataError
from lleval.hub import datasets_offline, first_line, hub_access
from lleval.quiet import quiet_datasets


@dataclass(frozen=True)
class Document:
    """One non-empty text; ``index`` is its row number in the source (0-based), ``id`` the
    row's own ``id`` field when it has one (what a person looks a document up by)."""

    index: int
    text: str
    id: str | int | None = None


def row_id(row: Any) -> str | int | None:
    """A row's ``id`` field, when it has one: an integer stays one, anything else becomes
    its text; null or no such field gives None (the report then has no ``id``)."""
    value = row.get("id") if isinstance(row, dict) else None
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value)


@dataclass
class DataStats:
    """What reading a source found so far: rows seen, empty rows skipped, texts hash. Kept
    by the `DocumentStream` that reads them; everyone else only reads it."""

    rows: int = 0
    skipped_empty: int = 0
    expected_rows: int | None = None  # known for in-memory datasets, not for streams
    sampled_from: int | None = None  # --sample: the rows it drew from (those --limit leaves), once known
    _hash: Any = field(default_factory=hashlib.sha256)

    def fingerprint(self) -> str:
        """sha256 over the scored texts, each prefixed by its UTF-8 length."""
        return self._hash.hexdigest()


def _load(spec: DataSpec) -> Any:
    """A ``datasets`` Dataset or IterableDataset for the spec (not for stdin), loaded without
    datasets' own progress bars (`lleval.quiet`)."""
    with quiet_datasets():
        return _load_quietly(spec)


def _load_quietly(spec: DataSpec) -> Any:
    kind, path = source_kind(spec.dataset)
    if kind == "saved":
        assert path is not None
        return _load_saved(path, spec)
    if kind in ("file", "builtin"):
        assert path is not None
        return _load_file(path, spec)
    import datasets

    access = hub_access()  # offline at once when the hub is out of reach
    try:
        with datasets_offline(access):
            return datasets.load_dataset(spec.dataset, spec.dataset_config, split=describe_split(spec),
                                         streaming=spec.streaming)
    except Exception as exc:
        raise DataError(f"cannot load hub dataset {spec.dataset}: {first_line(exc)}. {access.hint()}") from exc


def _load_saved(path: Path, spec: DataSpec) -> Any:
    """A folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``)."""
    import datasets

    if not any((path / marker).exists() for marker in ("dataset_info.json", "dataset_dict.json", "state.json")):
        raise DataError(
            f"{path} is a folder but not a saved dataset (no dataset_info.json or "
            "dataset_dict.json): pass a file, or a folder written by Dataset.save_to_disk."
        )
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many kinds; the user needs one line
        raise DataError(f"cannot read saved dataset {path}: {first_line(exc)}") from exc
    split = describe_split(spec)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            if spec.split is not None or len(loaded) != 1:
                raise DataError(
                    f"saved dataset {path} has no split {split!r}; it has {', '.join(loaded)}. Pass --split.")
            split = next(iter(loaded))
        loaded = loaded[split]
    elif spec.split not in (None, str(loaded.split or LOCAL_SPLIT)):
        raise ConfigError(
            f"saved dataset {path} has one split, {str(loaded.split or LOCAL_SPLIT)!r}: drop "
            f"{spec.flag('split', spec.split)}."
        )
    return loaded.to_iterable_dataset() if spec.streaming else loaded


def _load_file(path: Path, spec: DataSpec) -> Any:
    """A local file, through the ``datasets`` builder for its extension."""
    import datasets

    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"data file {path} is of an unknown kind ({path.suffix or 'no extension'}): "
            f"use one of {', '.join(sorted(FILE_BUILDERS))}, a saved dataset folder, or - for stdin."
        )
    if not os.access(path, os.R_OK):
        raise DataError(f"data file {path} is not readable: check its permissions.")
    check_file(path, builder, spec)
    kwargs: dict[str, Any] = {"data_files": {LOCAL_SPLIT: str(path)}}
    if builder == "text":
        kwargs["sample_by"] = spec.sample_by
    if builder in ("text", "json", "csv"):
        kwargs["encoding"] = spec.encoding
        kwargs["encoding_errors"] = spec.errors
    try:
        return datasets.load_dataset(builder, split=LOCAL_SPLIT, streaming=spec.streaming, **kwargs)
    except Exception as exc:
        raise DataError(f"cannot read data file {path}: {first_line(_reason(exc))}") from exc


def _reason(exc: BaseException) -> BaseException:
    """The error behind datasets' "An error occurred while generating the dataset", which
    says nothing of the file (the parser's own error names the line)."""
    generic = str(exc).startswith("An error occurred while generating the dataset")
    return exc.__cause__ if generic and exc.__cause__ is not None else exc


def split_text(text: str, sample_by: str) -> list[str]:
    """Cut raw text into documents the way the ``datasets`` text builder does."""
    if sample_by == "line":
        return [line.rstrip("\n") for line in io.StringIO(text).readlines()]
    if sample_by == "paragraph":
        return [part for part in text.split("\n\n") if part]
    return [text]  # "document" (EvalConfig.validate allows only SAMPLE_BY)


def _rows(spec: DataSpec, stats: DataStats) -> Iterator[tuple[int, Any]]:
    """(row number in the source, row) of every row to read: the first ``--limit``, or the
    rows ``--sample`` draws (`chosen_rows`)."""
    if spec.dataset == "-":
        raw = sys.stdin.buffer.read()
        try:
            text = raw.decode(spec.encoding, errors=spec.errors)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"standard input is not valid {spec.encoding} at byte offset {exc.start}: pass --encoding "
                "with its encoding, or --errors replace to substitute bad bytes."
            ) from None
        text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as for .txt files
        yield from chosen_rows([{"text": part} for part in split_text(text, spec.sample_by)], spec, stats)
        return
    dataset = _load(spec)
    columns = dataset.column_names
    if columns is not None and spec.text_field not in columns:
        raise DataError(_missing_field(spec, columns))
    if source_kind(spec.dataset)[0] == "hub":
        # a streamed hub dataset reads its files while it is iterated: offline then too
        with datasets_offline(hub_access()):
            yield from chosen_rows(dataset, spec, stats)
    else:
        yield from chosen_rows(dataset, spec, stats)


def chosen_rows(rows: Any, spec: DataSpec, stats: DataStats) -> Iterator[tuple[int, Any]]:
    """(row number, row) of the rows of ``rows`` (a list, a Dataset or a stream) that the run
    reads: in order up to ``--limit``; with ``--sample N``, the N of them (of the first
    ``--limit``) whose `sample_keys` are smallest, in source order. A source of known size
    draws them by index (the others are never read); a stream is read to its end (or
    ``--limit``), holding N rows. Both draw the same rows."""
    total = len(rows) if hasattr(rows, "__len__") else None
    within = None if total is None else total if spec.limit is None else min(total, spec.limit)
    if within is not None:
        stats.expected_rows = within if spec.sample is None else min(within, spec.sample)
    if spec.sample is None:
        for index, row in enumerate(rows):
            if spec.limit is not None and index >= spec.limit:
                return
            yield index, row
    elif within is not None:
        stats.sampled_from = within
        picked = sample_rows(within, spec.sample, spec.seed)
        source = rows.select(picked) if hasattr(rows, "select") else (rows[int(i)] for i in picked)
        yield from zip(picked.tolist(), source)
    else:
        yield from _sampled_stream(rows, spec, stats)


def _sampled_stream(rows: Any, spec: DataSpec, stats: DataStats) -> Iterator[tuple[int, Any]]:
    """``--sample`` of a stream of unknown length: the N rows of smallest key, kept in a heap."""
    import heapq

    assert spec.sample is not None
    heap: list[tuple[int, int, Any]] = []  # (-key, index, row): the largest key kept on top
    seen = 0
    for index, row in enumerate(rows):
        if spec.limit is not None and index >= spec.limit:
            break
        seen += 1
        key = -int(sample_keys(np.asarray([index]), spec.seed)[0])
        if len(heap) < spec.sample:
            heapq.heappush(heap, (key, index, row))
        elif key > heap[0][0]:
            heapq.heapreplace(heap, (key, index, row))
    stats.sampled_from = seen
    stats.expected_rows = min(seen, spec.sample)
    for _key, index, row in sorted(heap, key=lambda entry: entry[1]):
        yield index, row


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64 values (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_keys(indices: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random uint64 key per row number, fixed by ``seed``: ``--sample N`` takes the N
    rows of smallest key. A key depends on the row and the seed alone, so the rows drawn are
    the same whether the source is read whole or streamed, and ``--sample 100`` holds every
    row of ``--sample 50`` (same seed, same source)."""
    base = _mix(np.asarray([seed % 2**64], dtype=np.uint64) + _GOLDEN)  # the seed, mixed
    with np.errstate(over="ignore"):
        return _mix(np.asarray(indices, dtype=np.uint64) * _GOLDEN + base)


def sample_rows(total: int, n: int, seed: int) -> np.ndarray:
    """The row numbers (sorted) of ``--sample n`` among rows ``0 .. total - 1``: all of them when
    ``n >= total``."""
    if n >= total:
        return np.arange(total, dtype=np.int64)
    keys = sample_keys(np.arange(total), seed)
    return np.sort(np.argpartition(keys, n - 1)[:n]).astype(np.int64)


def _missing_field(spec: DataSpec, columns: list[str]) -> str:
    return (
        f"text field {spec.text_field!r} is not in {spec.dataset or BUILTIN_DATASET}; its columns are "
        f"{', '.join(columns) or '(none)'}. Pass --text-field with one of them."
    )


class DocumentStream:
    """The non-empty documents of a source, in order, up to ``spec.limit`` rows (or the rows
    ``spec.sample`` draws), and in `stats` what reading them found so far.

    Empty texts are skipped and counted; ``--limit N`` and ``--sample N`` count rows, so
    skipped rows count towards them. The source is opened at the first ``next``.
    """

    def __init__(self, spec: DataSpec) -> None:
        check_spec(spec)
        self.spec = spec
        self._stats = DataStats()
        self._documents = self._read()

    @property
    def stats(self) -> DataStats:
        """Rows read, empty rows skipped and the hash of the texts, so far."""
        return self._stats

    def __iter__(self) -> DocumentStream:
        return self

    def __next__(self) -> Document:
        return next(self._documents)

    def _read(self) -> Iterator[Document]:
        spec, stats = self.spec, self._stats
        for index, row in _rows(spec, stats):
            if spec.text_field not in row:
                raise DataError(_missing_field(spec, list(row)))
            check_text(row, spec, f"row {index} of {spec.dataset or BUILTIN_DATASET}")
            text = row[spec.text_field]
            stats.rows += 1
            if not text:
                stats.skipped_empty += 1
                continue
            encoded = text.encode("utf-8")
            stats._hash.update(len(encoded).to_bytes(8, "little"))
            stats._hash.update(encoded)
            yield Document(index, text, row_id(row))
