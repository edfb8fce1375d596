"""What a run tells a progress display: the stage it is in, then how far scoring is.

The engine never calls the display: the scoring loop hands each `EngineTick`
to a `ProgressMeter`, which adds what a resumed checkpoint had done and
passes a `ScoringProgress` to whatever `Progress` the caller gave (the CLI's
rich bar, or a test's recorder).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

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

    def show(self, tick: EngineTick | None, documents: int, tokens: int) -> None:
        """Show ``documents`` and ``tokens`` done (with a tick: its plan, too)."""
        if self.display is None:
            return
        self.last = tick or self.last
        self.display.update(ScoringProgress(
            documents, self.documents_expected, tokens, self.tokens_before + self.last.planned, self.last.last_block,
            time.perf_counter() - self.started, documents - self.documents_before, tokens - self.tokens_before))
