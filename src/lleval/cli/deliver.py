"""Where a command's result goes: its JSON file (``-o``), stdout (a table, JSON or
markdown), the trackers of ``--log-to``; on rank 0 only.

An output that fails costs that output alone: its one line is collected (`try_output`),
the other outputs are still written and stdout still gets the result, and the command
exits 1 after printing every failure on stderr (`deliver`).
"""

from __future__ import annotations

from typing import Any

import click

from lleval.cli.calls import call
from lleval.config import EvalConfig


def try_output(write: Any, *args: Any) -> list[str]:
    """Write one output; its failure (a typed error, one line) is returned, not raised, so the
    other outputs are still written and stdout still gets the result; the command exits 1."""
    from lleval.errors import LlevalError

    try:
        write(*args)
    except LlevalError as exc:
        return [str(exc)]
    return []


def deliver(result: Any, output: str | None, format: str, earlier: list[str] | None = None) -> list[str]:
    """Rank 0 writes the result's JSON to ``output`` and renders it on stdout, even when
    an output failed: each failure (``earlier`` ones, the library's, then ``output``'s) is
    one line on stderr after the result, and returned so the command exits 1."""
    if not is_main_rank():
        return []
    from lleval.report.output import write_report

    failures = list(earlier or []) + [str(exc) for exc in getattr(result, "failed_outputs", [])]
    if output:
        failures += try_output(write_report, result, output)
    if format == "json":
        click.echo(result.to_json(), nl=False)
    elif format == "markdown":
        click.echo(result.render_markdown(), nl=False)
    else:
        result.render_table(stdout_console())
    for failure in failures:
        click.echo(f"Error: {failure}", err=True)
    return failures


def log_result(result: Any, config: EvalConfig, command: str, params: dict[str, Any] | None = None) -> list[str]:
    """``--log-to``: the result to each tracker (`lleval.trackers.log_results`) with the run's
    settings; each tracker that failed is one line, and the command exits 1."""
    if not config.log_to:
        return []
    from lleval.trackers import config_params, log_results

    settings = config_params(config) if params is None else params
    failed = call(log_results, result, config.log_to, config.log_dir, f"lleval {command}", settings, config.html)
    return [str(exc) for exc in failed]


LOG_WIDTH = 10_000  # columns of stdout when it is not a terminal: no table is narrower than its cells


def stdout_console() -> Any:
    """The console tables are rendered on: the terminal's own width on a terminal, else
    (a CI log, a pipe, a file) `LOG_WIDTH` columns.

    rich lays out a stdout that is not a terminal on 80 columns, and `compare`'s
    table of eight columns then cuts its cells to ``candid…``, ``[-0.13…`` and
    ``REGRES…``: a CI log lost the verdict. A table is only as wide as its
    cells, so the wide console changes nothing else but that long notes and
    documents stay on one line each.
    """
    from rich.console import Console

    console = Console(markup=False)  # paths and names such as "[v2] run" are text, not rich markup
    return console if console.is_terminal else Console(width=LOG_WIDTH, markup=False)


def is_main_rank() -> bool:
    """Whether this process is rank 0 (or the only one): the one that writes and shows results."""
    from lleval.engine.distributed import launched_as_main

    return launched_as_main()
