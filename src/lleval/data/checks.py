"""Checks of a local file's content before ``datasets`` reads it: a binary file named .txt,
text that does not decode, a JSON line or CSV row that does not parse, a missing or
non-text field. Each refusal is one line naming the file, the row and what to do, where
``datasets`` would raise a long traceback or, worse, read the wrong thing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lleval.data.spec import DataSpec
from lleval.errors import DataError


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
                check_text({spec.text_field: None}, spec, f"data file {path}, row {row}")
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
                check_text(value, spec, f"data file {path}, line {number} (row {row})")
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
        check_text(row, spec, f"data file {path}, row {index}")


def check_text(row: dict[str, Any], spec: DataSpec, where: str) -> None:
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
