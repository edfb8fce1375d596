"""The libraries lleval calls print nothing of their own while it calls them.

transformers draws a "Loading weights" bar on every ``from_pretrained`` (and a
"Writing model shards" bar on ``save_pretrained``), datasets a "Generating train
split" bar when it reads a local file for the first time: a caller of the Python API
(``evaluate(config)``) saw them on its stderr although it gave no progress display.
The library prints nothing unless given one (`lleval.runner.progress.Progress`);
each context here turns one library's bars and chatter off around one call and puts
back what the caller had. The CLI does the same for a whole command
(``lleval.cli.scope``); warnings that matter become lleval's own
(`warnings.warn`, and the report's notes).
"""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' progress bars off and its logs at error level, restored afterwards."""
    import transformers

    log = transformers.utils.logging
    verbosity, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(verbosity)
        if bars:
            log.enable_progress_bar()


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """datasets' progress bars off and its logs at critical level, restored afterwards."""
    import datasets

    log = datasets.utils.logging
    verbosity, bars = log.get_verbosity(), datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    log.set_verbosity(log.CRITICAL)
    try:
        yield
    finally:
        log.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
