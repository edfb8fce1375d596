"""What a run tells a progress display: the stage it is in, then how far scoring is.

The engine never calls the display: the scoring loop hands each `EngineTick`
to a `ProgressMeter`, which adds what a resumed checkpoint had done and
passes a `ScoringProgress` to whatever `Progress` the caller gave (the CLI's
rich bar, `LineProgress` for a log, or a test's recorder).

The stages a run goes through, in order: ``loading model``, ``tokenizing`` (the
first block of documents is read and planned before any batch runs), ``scoring``
(then each `ScoringProgress`), ``writing report``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from lleval.stream import EngineStats, EngineTick


@dataclass(frozen=True)
class ScoringProgress:
    """How far scoring is, as the progress display shows it ("X / Y tokens, d/D docs").

    Counts include what a resumed checkpoint had done; the rate and the time
    left count only this process's work. ``tokens_planned`` grows block by
    block (a block is planned once its million tokens are read), so it is the
    run's total only when ``all_planned``.
    """

    documents: int  # finished
    documents_expected: int | None  # rows of the source, when its size is known
    tokens: int  # scored
    tokens_planned: int  # of the blocks planned so far
    all_planned: bool  # the last block is planned
    seconds: float  # since scoring began in this process
    new_documents: int  # finished in this process
    new_tokens: int  # scored in this process

    @property
    def tokens_per_second(self) -> float | None:
        """Tokens scored per second since scoring began (None before the first batch)."""
        return self.new_tokens / self.seconds if self.new_tokens and self.seconds > 0 else None

    @property
    def seconds_left(self) -> float | None:
        """From tokens once every block is planned, else from documents when their number is
        known (None when neither tells: a stream of unknown length)."""
        rate = self.tokens_per_second
        if self.all_planned and rate:
            return max(self.tokens_planned - self.tokens, 0) / rate
        if self.documents_expected and self.new_documents and self.seconds > 0:
            return max(self.documents_expected - self.documents, 0) * self.seconds / self.new_documents
        return None


class Progress(Protocol):
    """What a run tells the progress display: the stage it is in, then how far scoring is."""

    def stage(self, text: str) -> None:
        """A new stage begins (``"loading model"``, ``"scoring"``)."""
        ...

    def update(self, state: ScoringProgress) -> None:
        """Once a block is planned, after each batch and after each block (documents finish
        only with their block)."""
        ...


def progress_fields(state: ScoringProgress) -> dict[str, str]:
    """A `ScoringProgress` as the displays show it: ``tokens`` (done of planned, ``+`` while
    more blocks are to come), ``docs``, ``rate`` and ``left`` (empty when unknown)."""
    rate, left = state.tokens_per_second, state.seconds_left
    planned = "" if state.all_planned else "+"  # more blocks to come
    return {
        "tokens": f"{state.tokens:,}/{state.tokens_planned:,}{planned} tok",
        "docs": f"{state.documents}/{state.documents_expected} docs" if state.documents_expected
        else f"{state.documents} docs",
        "rate": "… tok/s" if rate is None else f"{rate:,.0f} tok/s",
        "left": "" if left is None else f"{clock_time(left)} left",
    }


def clock_time(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    whole = int(seconds)
    hours, minutes = divmod(whole // 60, 60)
    return f"{hours}:{minutes:02d}:{whole % 60:02d}" if hours else f"{minutes}:{whole % 60:02d}"


#: Seconds between two lines of `LineProgress`: a CI log that shows nothing for long looks
#: like a hung job (a 40-minute run wrote nothing until its end). 20 s, so that with the
#: heartbeat's one-second tick a line comes well within every 30 s; a 40-minute run writes
#: about 120 lines.
LINE_INTERVAL_SECONDS = 20.0


class LineProgress:
    """Progress as plain lines, for a log (stderr that is not a terminal: a CI job, a file):
    one line at each stage, then while scoring a line every ``interval`` seconds, and a line
    every ``interval`` seconds whatever happens (a model that loads for minutes, a batch that
    runs for minutes) from a background thread, once `start`ed. Each line says how long the
    run has taken: ``lleval 1:30 scoring: 12,288/50,000+ tok (24.6%), 10/40 docs, 136 tok/s,
    4:37 left``.

    ``write`` gets each line (without a newline); ``clock`` is the time in seconds (tests pass
    their own and call `heartbeat` instead of starting the thread).
    """

    def __init__(self, write: Callable[[str], None], interval: float = LINE_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._write, self.interval, self._clock = write, interval, clock
        self._started = clock()
        self._last_line = self._started
        self._stage = "starting"
        self._state: ScoringProgress | None = None
        self._shown = True  # the latest state has had its line
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def stage(self, text: str) -> None:
        """A new stage: its line at once (after the last scoring line, if it was not shown)."""
        with self._lock:
            if not self._shown:
                self._emit()
            self._stage, self._state, self._shown = text, None, True
            self._emit()

    def update(self, state: ScoringProgress) -> None:
        """How far scoring is: a line when ``interval`` seconds passed since the last."""
        with self._lock:
            self._state, self._shown = state, False
            if self._clock() - self._last_line >= self.interval:
                self._emit()

    def heartbeat(self) -> None:
        """A line when ``interval`` seconds passed since the last, whatever the run is doing."""
        with self._lock:
            if self._clock() - self._last_line >= self.interval:
                self._emit()

    def line(self) -> str:
        """The line for where the run stands now."""
        text = f"lleval {clock_time(self._clock() - self._started)} {self._stage}"
        state = self._state
        if state is None:
            return text
        fields = progress_fields(state)
        share = f" ({100 * state.tokens / state.tokens_planned:.1f}%)" if state.tokens_planned else ""
        parts = [fields["tokens"] + share, fields["docs"], fields["rate"]] + ([fields["left"]] if fields["left"] else [])
        return f"{text}: {', '.join(parts)}"

    def _emit(self) -> None:
        self._write(self.line())
        self._last_line, self._shown = self._clock(), True

    def start(self) -> "LineProgress":
        """Write a line at least every ``interval`` seconds from a daemon thread until `stop`."""
        self._thread = threading.Thread(target=self._beat, name="lleval-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (the last scoring line is written, if it was not)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if not self._shown:
                self._emit()

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.interval / 4)):
            self.heartbeat()

    def __enter__(self) -> "LineProgress":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class ProgressMeter:
    """What the scoring loop asks to show progress: it keeps the engine's last tick and the
    counts a resumed run started from, and hands a `ScoringProgress` to the display."""

    display: Progress | None
    documents_expected: int | None
    documents_before: int  # restored from a checkpoint
    tokens_before: int
    started: float = field(default_factory=time.perf_counter)
    last: EngineTick = EngineTick(EngineStats(), 0, False)
    scoring: bool = False  # the display was told the stage "scoring" (at the first tick)

    def show(self, tick: EngineTick | None, documents: int, tokens: int) -> None:
        """Show ``documents`` and ``tokens`` done (with a tick: its plan, too); the first tick
        ends tokenizing: the stage becomes ``scoring``."""
        if self.display is None:
            return
        if tick is not None and not self.scoring:
            self.scoring = True
            self.display.stage("scoring")
        self.last = tick or self.last
        self.display.update(ScoringProgress(
            documents, self.documents_expected, tokens, self.tokens_before + self.last.planned, self.last.last_block,
            time.perf_counter() - self.started, documents - self.documents_before, tokens - self.tokens_before))
