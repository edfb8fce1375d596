"""Datasets and local files in, a stream of `Document`s out.

Every source goes through Hugging Face ``datasets`` where it has a loader:
hub datasets, ``.txt`` (``text`` builder), ``.jsonl``/``.json`` (``json``),
``.csv``, ``.parquet`` and folders written by ``Dataset.save_to_disk``. Only
standard input is read directly, then split by the same rules as ``.txt``.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from lleval.config import EvalConfig, setting
from lleval.errors import ConfigError, DataError
from lleval.hub import datasets_offline, first_line, hub_access, is_hub_id

BUILTIN_DATASET = "builtin:sample-prose"
LOCAL_SPLIT = "train"  # the one split of a local file (what the datasets builders call it)
FILE_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


@dataclass(frozen=True)
class DataSpec:
    """What to read and how to cut it into documents."""

    dataset: str | None = None  # None: the built-in sample corpus; "-": stdin
    dataset_config: str | None = None
    split: str | None = None  # None: "train" for local files (their only split), "test" on the hub
    text_field: str = "text"
    sample_by: str = "document"  # for .txt and stdin
    limit: int | None = None
    streaming: bool = False
    encoding: str = "utf-8"  # of .txt, .jsonl, .json and .csv files
    errors: str = "strict"  # what to do with bytes that do not decode: strict | replace | ignore
    # field -> "config file PATH" for values from a config file: messages name them so (`lleval.config.setting`)
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def flag(self, name: str, value: object = None) -> str:
        """This spec's name for a setting in a message: the flag, or the config file's key."""
        return setting(self.origins, name, value)


def data_spec(config: EvalConfig) -> DataSpec:
    """The data part of a config (with the origins of its values, for messages)."""
    return DataSpec(config.dataset, config.dataset_config, config.split, config.text_field, config.sample_by,
                    config.limit, config.streaming, config.encoding, config.errors, config.origins)


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
    """Filled in while the stream is read: rows seen, empty rows skipped, texts hash."""

    rows: int = 0
    skipped_empty: int = 0
    expected_rows: int | None = None  # known for in-memory datasets, not for streams
    _hash: Any = field(default_factory=hashlib.sha256)

    def fingerprint(self) -> str:
        """sha256 over the scored texts, each prefixed by its UTF-8 length."""
        return self._hash.hexdigest()


def builtin_sample_path() -> Path:
    """The sample corpus shipped inside the package (JSON lines, one essay per line)."""
    return Path(__file__).parent.parent / "samples" / "prose.jsonl"


def describe_split(spec: DataSpec) -> str:
    """The split name that will be read, for the report."""
    if spec.split is not None:
        return spec.split
    return "test" if _kind(spec.dataset)[0] == "hub" else LOCAL_SPLIT


def check_spec(spec: DataSpec) -> None:
    """Refuse flags this source would accept and then ignore (a `ConfigError` naming each):
    a split or configuration of a local file, ``--sample-by`` on a file whose rows are
    already documents, ``--encoding``/``--errors`` on a source that holds no raw text, and
    ``--streaming`` on standard input."""
    kind, path = _kind(spec.dataset)
    where = spec.dataset or BUILTIN_DATASET
    builder = FILE_BUILDERS.get(path.suffix.lower()) if path is not None and kind in ("file", "builtin") else None
    what = {"stdin": "standard input", "saved": "a saved dataset", "builtin": "the built-in sample"}.get(
        kind, f"a local {path.suffix if path else ''} file")
    problems: list[str] = []
    if kind != "hub" and spec.dataset_config is not None:
        problems.append(f"{spec.flag('dataset_config')} names a configuration of a hub dataset, and {where} is {what}")
    if kind in ("file", "builtin", "stdin") and spec.split not in (None, LOCAL_SPLIT):
        problems.append(f"{where} has one split, {LOCAL_SPLIT!r}: drop {spec.flag('split', spec.split)}")
    if spec.sample_by != "document" and kind != "stdin" and builder != "text":
        problems.append(
            f"--sample-by cuts .txt files and standard input into documents, and in {where} ({what}) each "
            f"row is already a document: drop {spec.flag('sample_by')}"
        )
    decodes = kind == "stdin" or builder in ("text", "json", "csv")
    if not decodes and (_codec(spec.encoding) != "utf-8" or spec.errors != "strict"):
        given = [spec.flag(name, getattr(spec, name)) for name in ("encoding", "errors") if name in spec.origins]
        problems.append(
            f"--encoding and --errors apply to .txt, .jsonl, .json and .csv files and standard input, and "
            f"{where} is {what}: drop {' and '.join(given) if given else 'them'}"
        )
    if kind == "stdin" and spec.streaming:
        problems.append(f"{spec.flag('streaming')} applies to files and hub datasets; standard input is read as it "
                        "arrives")
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def _codec(encoding: str) -> str:
    import codecs

    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"unknown --encoding {encoding!r}: use a Python codec name such as utf-8 or latin-1.") from None


def _kind(name: str | None) -> tuple[str, Path | None]:
    if name is None:
        return "builtin", builtin_sample_path()
    if name == "-":
        return "stdin", None
    path = Path(name).expanduser()
    if path.is_dir():
        return "saved", path
    if path.exists():
        return "file", path
    if not is_hub_id(name) or Path(name).suffix.lower() in FILE_BUILDERS:
        raise DataError(f"data file {name} does not exist. Check the path.")
    return "hub", None


def _load(spec: DataSpec) -> Any:
    """A ``datasets`` Dataset or IterableDataset for the spec (not for stdin)."""
    kind, path = _kind(spec.dataset)
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


SNIFF_BYTES = 1 << 16  # bytes read to tell a binary file from a text file


def check_file(path: Path, builder: str, spec: DataSpec) -> None:
    """Catch what the ``datasets`` loaders report badly, or late, before they run: an empty
    file, a binary file, bytes that are not valid in the encoding (with the byte offset), a
    JSON file with a broken line or a row whose text is not a string (with its line or row:
    otherwise found only when scoring reaches that row, or turned into the text of a number
    by the loader), and a CSV file with an unterminated quote or too many fields (with its
    line, which the loader's "An error occurred while generating the dataset" does not give).
    Row types past ``--limit`` are not checked, as those rows are not read; the syntax of
    JSON and CSV is checked in the whole file, which the loader parses whole either way."""
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"data file {path} is empty: there is nothing to score.")
    if builder == "parquet":
        with path.open("rb") as handle:
            if handle.read(4) != b"PAR1":
                raise DataError(f"data file {path} is not a Parquet file (no PAR1 header): check the file.")
        _check_parquet_rows(path, spec)
        return
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if b"\x00" in head and spec.encoding.lower().replace("-", "") in ("utf8", "ascii", "latin1"):
        offset = head.index(b"\x00")
        raise DataError(
            f"data file {path} looks binary (a NUL byte at offset {offset}): pass a text file, or "
            "--encoding if it is UTF-16 or UTF-32 text."
        )
    if spec.errors == "strict":
        _check_decodes(path, spec.encoding)
    if builder == "json" and path.suffix.lower() == ".jsonl":
        _check_json_lines(path, spec)
    elif builder == "json":
        _check_json_file(path, spec)
    elif builder == "csv":
        _check_csv(path, spec)


def _check_parquet_rows(path: Path, spec: DataSpec) -> None:
    """The text column of a Parquet file, read alone (a column, not the rows): a null, or a
    column that holds no text, is named with its row before the model loads, not when
    scoring reaches it. A file pyarrow cannot open, or one without the column, is left
    to the loader, whose messages for those say what is wrong."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception:  # pyarrow raises several kinds; the loader reports a corrupt file
        return
    if spec.text_field not in parquet.schema_arrow.names:
        return
    kind = parquet.schema_arrow.field(spec.text_field).type
    text_like = (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                 or (pa.types.is_dictionary(kind) and pa.types.is_string(kind.value_type)))
    if not text_like:
        raise DataError(f"data file {path}: column {spec.text_field!r} holds {kind}, not text. Pick another "
                        f"{spec.flag('text_field')}.")
    offset = 0
    for batch in parquet.iter_batches(columns=[spec.text_field], batch_size=1 << 16):
        column = batch.column(0)
        if column.null_count:
            row = offset + column.is_null().to_pylist().index(True)
            if spec.limit is None or row < spec.limit:  # the row as every other source's row is checked
                _check_text({spec.text_field: None}, spec, f"data file {path}, row {row}")
        offset += len(column)
        if spec.limit is not None and offset >= spec.limit:
            return


def _check_decodes(path: Path, encoding: str) -> None:
    import codecs

    try:
        decoder = codecs.getincrementaldecoder(encoding)("strict")
    except LookupError:
        raise DataError(f"unknown --encoding {encoding!r}: use a Python codec name such as utf-8 or latin-1.") from None
    offset = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"data file {path} is not valid {encoding} at byte offset {offset + exc.start}: pass "
                    "--encoding with the file's encoding, or --errors replace to substitute bad bytes."
                ) from None
            offset += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(
                f"data file {path} ends in the middle of a {encoding} character (byte offset {offset}): "
                "the file is truncated. Pass --errors replace to score it anyway."
            ) from None


def _check_json_lines(path: Path, spec: DataSpec) -> None:
    """One object per line, each with a string text field (up to ``--limit`` rows): read line by
    line, so memory stays bounded."""
    import json

    row = 0
    with path.open(encoding=spec.encoding, errors=spec.errors) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue  # the loader skips blank lines: they are no row
            try:
                value = json.loads(line.lstrip("\ufeff") if number == 1 else line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"data file {path}, line {number}: not valid JSON ({exc.msg}, column {exc.colno}). "
                    "Fix or remove that line."
                ) from None
            if not isinstance(value, dict):
                raise DataError(
                    f"data file {path}, line {number}: a JSON {type(value).__name__}, not an object: each "
                    f"line must be an object with a {spec.text_field!r} field."
                )
            if spec.limit is None or row < spec.limit:  # the loader parses every line, --limit reads fewer rows
                _check_text(value, spec, f"data file {path}, line {number} (row {row})")
            row += 1


def _check_json_file(path: Path, spec: DataSpec) -> None:
    """A ``.json`` file, read once as the loader reads it: an array of objects (or of strings),
    an object holding a list under the text field, or JSON lines under a ``.json`` name."""
    import json

    text = path.read_text(encoding=spec.encoding, errors=spec.errors).lstrip("\ufeff")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # more than one value: one object per line
            return _check_json_lines(path, spec)
        raise DataError(
            f"data file {path} is not valid JSON ({exc.msg}, line {exc.lineno}, column {exc.colno}): fix the "
            "file, or write one object per line as .jsonl."
        ) from None
    if isinstance(value, dict) and isinstance(value.get(spec.text_field), list):
        value = [{spec.text_field: text} for text in value[spec.text_field]]  # one column, one row per item
    rows = value if isinstance(value, list) else [value]
    for index, row in enumerate(rows[:spec.limit] if spec.limit is not None else rows):
        if isinstance(row, str):
            continue  # an array of strings: the loader makes each a row of "text"
        if not isinstance(row, dict):
            raise DataError(
                f"data file {path}, row {index}: a JSON {type(row).__name__}, not an object: each row must be "
                f"an object with a {spec.text_field!r} field."
            )
        _check_text(row, spec, f"data file {path}, row {index}")


def _check_text(row: dict[str, Any], spec: DataSpec, where: str) -> None:
    """The row has the text field, and it is a string (an empty one is skipped and counted later)."""
    if spec.text_field not in row:
        raise DataError(
            f"{where} has no field {spec.text_field!r}; its columns are {', '.join(map(str, row)) or '(none)'}. "
            f"Add it to the row, or set {spec.flag('text_field')} to one of them."
        )
    text = row[spec.text_field]
    if not isinstance(text, str):
        raise DataError(
            f"{where}: field {spec.text_field!r} is {'null' if text is None else type(text).__name__}, not a "
            f"string. Fix the row or pick another {spec.flag('text_field')}."
        )


def _check_csv(path: Path, spec: DataSpec) -> None:
    """A quote left open runs to the end of the file, and a row with more fields than the
    header is refused by the loader: name the line where that row starts (Python's ``csv``
    reads the file as the loader does: comma, double quotes, "" inside quotes)."""
    import csv

    old_limit = csv.field_size_limit(sys.maxsize)  # a document may be longer than csv's 128 KiB default
    header: list[str] | None = None
    start = next_start = 1
    try:
        with path.open(encoding=spec.encoding, errors=spec.errors, newline="") as handle:
            reader = csv.reader(handle, strict=True)
            while (fields := next(reader, None)) is not None:  # a row that starts on line `start`
                start, next_start = next_start, reader.line_num + 1
                if fields and header is None:  # blank lines are skipped, as the loader does
                    header = fields
                elif header is not None and len(fields) > len(header):
                    raise DataError(
                        f"data file {path}, line {start}: {len(fields)} fields, but the header has {len(header)}: "
                        "put a field that holds a comma in double quotes, or fix the line."
                    )
    except csv.Error as exc:
        if "unexpected end of data" not in str(exc):
            return  # stricter than the loader (text after a closing quote): let the loader decide
        raise DataError(
            f"data file {path}, line {next_start}: a quote opened in this row is never closed (its field runs to "
            "the end of the file): close it, or double each quote inside a quoted field (\"\")."
        ) from None
    finally:
        csv.field_size_limit(old_limit)


def split_text(text: str, sample_by: str) -> list[str]:
    """Cut raw text into documents the way the ``datasets`` text builder does."""
    if sample_by == "line":
        return [line.rstrip("\n") for line in io.StringIO(text).readlines()]
    if sample_by == "paragraph":
        return [part for part in text.split("\n\n") if part]
    return [text]  # "document" (EvalConfig.validate allows only SAMPLE_BY)


def _rows(spec: DataSpec, stats: DataStats) -> Iterator[Any]:
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
        for text_part in split_text(text, spec.sample_by):
            yield {"text": text_part}
        return
    dataset = _load(spec)
    if hasattr(dataset, "__len__"):
        total = len(dataset)
        stats.expected_rows = total if spec.limit is None else min(total, spec.limit)
    columns = dataset.column_names
    if columns is not None and spec.text_field not in columns:
        raise DataError(_missing_field(spec, columns))
    yield from dataset


def _missing_field(spec: DataSpec, columns: list[str]) -> str:
    return (
        f"text field {spec.text_field!r} is not in {spec.dataset or BUILTIN_DATASET}; its columns are "
        f"{', '.join(columns) or '(none)'}. Pass --text-field with one of them."
    )


def iter_documents(spec: DataSpec, stats: DataStats) -> Iterator[Document]:
    """Yield the non-empty documents of the source, in order, up to ``spec.limit`` rows.

    Empty texts are skipped and counted in ``stats``;
    ``--limit N`` counts rows, so skipped rows count towards it.
    """
    check_spec(spec)
    for index, row in enumerate(_rows(spec, stats)):
        if spec.limit is not None and index >= spec.limit:
            return
        if spec.text_field not in row:
            raise DataError(_missing_field(spec, list(row)))
        _check_text(row, spec, f"row {index} of {spec.dataset or BUILTIN_DATASET}")
        text = row[spec.text_field]
        stats.rows += 1
        if not text:
            stats.skipped_empty += 1
            continue
        encoded = text.encode("utf-8")
        stats._hash.update(len(encoded).to_bytes(8, "little"))
        stats._hash.update(encoded)
        yield Document(index, text, row_id(row))
