"""How every report kind reaches a file: its JSON text, and writes that never leave half a file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from lleval.errors import write_failure
from lleval.files import file_mode, remove_quietly


def to_json(data: dict[str, Any]) -> str:
    """A report's JSON text: UTF-8, two-space indent, no NaN, trailing newline."""
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def json_float(value: float | None) -> float | None:
    """JSON has no infinity: an overflowing perplexity is written as null."""
    if value is None or not math.isfinite(value):
        return None
    return value


def json_interval(value: tuple[float, float] | None) -> list[float | None] | None:
    """An interval for JSON: a pair, with infinities as null; None stays None."""
    return None if value is None else [json_float(value[0]), json_float(value[1])]


def read_interval(value: list[float | None] | None) -> tuple[float, float] | None:
    """An interval read back from JSON (`json_interval`'s inverse): a null end is the
    infinity it was written for (the only non-finite end a ratio of sums reaches)."""
    if value is None:
        return None
    low, high = (math.inf if end is None else end for end in value)
    return low, high


def write_text_atomic(path: str, text: str, flag: str = "--output") -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder, fsync, rename.

    A crash leaves either the old file or the new one, never half of one; a failed
    write (a full disk) is an `OutputError` naming ``flag`` and the file, and leaves
    no temp file behind. The file gets the mode of any file the user creates.
    """
    target = Path(path).expanduser()
    tmp: str | None = None
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), file_mode())
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise write_failure(flag, path, exc) from None
    finally:
        if tmp is not None:
            remove_quietly(Path(tmp))


def write_report(report: Any, path: str, flag: str = "--output") -> None:
    """Write the JSON export of any report (anything with ``to_json()``) to ``path`` atomically."""
    write_text_atomic(path, report.to_json(), flag)
