"""Stopping a run when asked, even in the middle of a long wait.

A run is asked to stop through its ``should_stop`` (the CLI's turns true at the first
Ctrl-C or SIGTERM). The scoring loop asks it between batches, which is soon enough for a
model computing on this machine. A served model's batch waits on a server, which may take
minutes, or never answer: its waits ask `stop_requested` every `POLL_SECONDS` and give up
with `Interrupted`. The loop takes that as a stop between batches (the finished documents
are reported and checkpointed); a stop while the model loads lets it through (nothing is
scored yet, and the message says so).

`evaluate` and `run_suite` make their ``should_stop`` the one `stop_requested` asks, for as
long as they run (`heeds_should_stop`): a wait deep in a backend then needs no parameter
threaded through every layer above it, none of which waits itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable, Iterator, ParamSpec, TypeVar

from lleval.errors import LlevalError

#: How often a long wait asks whether the run should stop: a signal is honoured within this.
POLL_SECONDS = 0.1

_SHOULD_STOP: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("should_stop", default=None)

P = ParamSpec("P")
R = TypeVar("R")


class Interrupted(LlevalError):
    """A wait was cut short because the run was asked to stop (the message says where)."""

    exit_code = 1


def stop_requested() -> bool:
    """Whether the run in progress was asked to stop (False outside a run, or with no ``should_stop``)."""
    should_stop = _SHOULD_STOP.get()
    return should_stop is not None and bool(should_stop())


@contextlib.contextmanager
def stopping_when(should_stop: Callable[[], bool] | None) -> Iterator[None]:
    """Within this scope, `stop_requested` asks ``should_stop`` (None: keep the caller's)."""
    if should_stop is None:
        yield
        return
    token = _SHOULD_STOP.set(should_stop)
    try:
        yield
    finally:
        _SHOULD_STOP.reset(token)


def heeds_should_stop(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run within `stopping_when` its own ``should_stop`` keyword argument."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        should_stop = kwargs.get("should_stop")
        with stopping_when(should_stop if callable(should_stop) else None):
            return fn(*args, **kwargs)

    return run
