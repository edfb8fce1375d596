"""What a command changes in its own process while it runs, and puts back when it returns.

The environment the libraries read on import (no foreign progress bars), how warnings
are shown, the libraries' logs and progress bars (`lleval.quiet`), torch's threads, and
SIGINT/SIGTERM (`Interrupts`: the first asks the run to stop, the report is written
marked incomplete). A caller that runs the CLI in its own process, tests and notebooks,
keeps its own settings.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Any, Iterator

import click

# Read by tqdm, transformers and huggingface_hub when torch first imports them: no foreign
# progress bars, such as transformers' GGUF conversion bar, on lleval's stderr.
QUIET_ENVIRONMENT = {"TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@contextlib.contextmanager
def command_scope(quiet: bool) -> Iterator[None]:
    """What a scoring command changes in its process, for its run only: the environment
    libraries read on import, warnings, the libraries' logs and progress bars, all put back
    when the command returns (a caller that runs the CLI in its own process, tests and
    notebooks, keeps its settings). And torch's threads, capped at the CPUs this process may
    use (`lleval.threads`), which the entry point decides, not the library."""
    from lleval.threads import cap_torch_threads

    with _environment(QUIET_ENVIRONMENT), _warnings_shown(quiet), _quiet_libraries():
        cap_torch_threads()
        yield


@contextlib.contextmanager
def _environment(defaults: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``defaults`` for the variables it does not set, restored afterwards."""
    added = [name for name in defaults if name not in os.environ]
    os.environ.update({name: defaults[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _warnings_shown(quiet: bool) -> Iterator[None]:
    """For one command: warnings as one ``warning:`` line on stderr, or not at all with
    ``--quiet`` (the report's ``notes`` keep what matters). Restored when the command
    returns."""
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        else:
            warnings.showwarning = _show_warning
        yield


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence third-party progress bars and logs while a command runs: lleval draws its own
    progress and turns library errors into one line (warnings: `_warnings_shown`). Each
    library's verbosity and progress bars are put back afterwards (`lleval.quiet`:
    transformers at error level, datasets at critical). torch, datasets and transformers are
    imported here, before the load clock starts, with the garbage collector paused
    (`lleval.imports.import_frozen`)."""
    from lleval.imports import import_frozen
    from lleval.quiet import quiet_datasets, quiet_transformers

    import_frozen("torch", "datasets", "transformers")
    with quiet_transformers(), quiet_datasets():
        yield


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    click.echo(f"warning: {message}", err=True)


class Interrupts:
    """SIGINT/SIGTERM: the first asks the run to stop after the current batch, or at once
    while a batch waits on a server (the report is then written with ``complete: false``);
    a second Ctrl-C exits at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        import signal

        if self.signum is not None and signum == signal.SIGINT:
            os._exit(130)
        self.signum = signum

    def should_stop(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> "Interrupts":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        """Put the handlers back; a run that failed once a signal came (a wait on a server cut
        short while the model loaded: nothing scored) exits as a stopped one, 128 + the signal."""
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self.signum is not None and isinstance(exc, click.ClickException):
            exc.show()
            click.echo(f"stopped by signal {self.signum}", err=True)
            sys.exit(128 + self.signum)
