"""A library call as a command makes it: typed errors become one line and an exit code.

Library code raises `LlevalError`s and never exits; this is the one place that turns
them into click exceptions the command line shows as one line: `InputProblem` (exit 2)
for input the user must fix, `RunFailure` (exit 1) for a failure at run time. A bug is
one ``internal error`` line, with the traceback under ``LLEVAL_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import click


class InputProblem(click.ClickException):
    """Input the user must fix (a path, a value, a file's contents): exit code 2."""

    exit_code = 2


class RunFailure(click.ClickException):
    """A failure while running (or a bug): exit code 1."""

    exit_code = 1


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a library call; its typed errors become one line and an exit code."""
    from lleval.errors import LlevalError
    from lleval.hub import first_line

    try:
        return fn(*args, **kwargs)
    except LlevalError as exc:
        raise (InputProblem if exc.exit_code == 2 else RunFailure)(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: one line, with the traceback on request
        if os.environ.get("LLEVAL_DEBUG"):
            traceback.print_exc()
        raise RunFailure(
            f"internal error ({type(exc).__name__}: {first_line(exc)}). Rerun with LLEVAL_DEBUG=1 for the "
            "traceback and report it."
        ) from None
