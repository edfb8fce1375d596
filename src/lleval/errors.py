"""Typed errors raised by the library.

Library code never exits the process: it raises a subclass of `LlevalError`
whose message says what was wrong and what to do next. Only `lleval.cli` turns
these into exit codes (usage problems 2, runtime problems 1).
"""

from __future__ import annotations

import errno
from pathlib import Path


class LlevalError(Exception):
    """Base class of every error lleval raises on purpose."""

    #: Exit code the CLI uses: 2 for bad usage/input the user must fix, 1 for runtime failures.
    exit_code: int = 1


class ConfigError(LlevalError):
    """A configuration value (flag or config file) is invalid or inconsistent."""

    exit_code = 2


class DataError(LlevalError):
    """The dataset cannot be read, or it holds nothing that can be scored."""

    exit_code = 2


class ModelLoadError(LlevalError):
    """The model or its tokenizer cannot be loaded, or is not a causal LM."""

    exit_code = 2


class OutputError(LlevalError):
    """A result file cannot be written where the user asked."""

    exit_code = 2


class ReportError(LlevalError):
    """A report file cannot be read, is not an lleval report, or cannot be compared."""

    exit_code = 2


class ScoringError(LlevalError):
    """Scoring produced a value that cannot be trusted (for example a NaN log-prob)."""

    exit_code = 1


def read_text_file(path: str | Path, what: str, error: type[LlevalError]) -> str:
    """The UTF-8 text of a file the user named; a missing or unreadable file raises ``error``
    with one line that names it as ``what`` (for example "config file")."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {exc}.") from None


def os_cause(exc: OSError) -> str:
    """The cause of a failed write in words a user acts on: a full disk and a denied
    permission are said plainly (errno 28 and 13 mean nothing to most readers), anything
    else is the system's own words."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is exceeded"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    return (exc.strerror or str(exc) or type(exc).__name__).strip().splitlines()[0]


def write_failure(flag: str, path: str | Path, exc: OSError) -> OutputError:
    """The one-line `OutputError` of an output (``flag``, ``path``) that could not be
    written: what failed, why, and what to do next."""
    cause = os_cause(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = f"Free some space, or give {flag} a path on another disk."
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = f"Give {flag} a path in a folder you can write."
    else:
        advice = f"Give {flag} another path."
    return OutputError(f"{flag} {path} could not be written: {cause}. {advice}")
