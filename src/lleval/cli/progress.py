"""The progress a command shows on stderr while a library call runs: a rich status line on
a terminal (`StderrProgress`), plain lines elsewhere (a CI log, a pipe, a file), or nothing
with ``--quiet`` (`progress_mode`); rank 0 only.

The library only reports (`lleval.runner.progress`); drawing it is the CLI's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from lleval.cli.calls import call
from lleval.cli.deliver import is_main_rank
from lleval.config import EvalConfig

if TYPE_CHECKING:
    from lleval.runner.progress import ScoringProgress


class StderrProgress:
    """lleval's one status line on stderr: the stage (``loading model``), then, batch by
    batch, a bar of tokens scored out of those planned, documents, tokens/s and the time
    left (`lleval.runner.progress.ScoringProgress`)."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

        self._progress = Progress(
            # a short bar and short fields: the whole line fits an 80-column terminal (rich cuts the last columns)
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=10), TextColumn("{task.fields[tokens]}"),
            TextColumn("{task.fields[docs]}"), TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[left]}"),
            console=console, transient=True,
        )
        self._task = self._progress.add_task("starting", total=None, tokens="", docs="", rate="", left="")

    def __enter__(self) -> "StderrProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def stage(self, text: str) -> None:
        self._progress.update(self._task, description=f"{text}…")

    def update(self, state: "ScoringProgress") -> None:
        from lleval.runner.progress import progress_fields

        fields: dict[str, Any] = dict(progress_fields(state))
        self._progress.update(self._task, completed=state.tokens, total=state.tokens_planned or None, **fields)


def progress_mode(config: EvalConfig, terminal: bool) -> str:
    """How stderr shows progress: ``none`` with --quiet, else --progress, where ``auto`` is a
    bar on a terminal and plain lines elsewhere (a CI log, a pipe, a file)."""
    if config.quiet:
        return "none"
    if config.progress == "auto":
        return "bar" if terminal else "lines"
    return config.progress


def with_progress(config: EvalConfig, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a library call with lleval's progress on stderr (`progress_mode`; rank 0 only)."""
    from rich.console import Console

    err = Console(stderr=True)
    mode = progress_mode(config, err.is_terminal) if is_main_rank() else "none"
    if mode == "none":
        return call(fn, *args, **kwargs)
    if mode == "lines":
        from lleval.runner.progress import LineProgress

        with LineProgress(lambda line: click.echo(line, err=True)) as lines:
            return call(fn, *args, progress=lines, **kwargs)
    with StderrProgress(err) as progress:
        return call(fn, *args, progress=progress, **kwargs)
