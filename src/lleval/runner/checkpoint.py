"""Checkpoints: the reducers' state after the last finished block, and what it was computed with.

A checkpoint is a JSON file written atomically (temp file, fsync, rename) at
most every ``--checkpoint-every`` seconds, always at a block boundary of the
engine. Re-running the same command with the same ``--checkpoint`` re-reads
the data, checks that the documents already done are the same texts (a hash
chain over their text hashes), skips the blocks already done (forming the
remaining blocks and batches exactly as an uninterrupted run would), and
restores every resumable reducer, so it produces the same numbers. A
checkpoint made with another model, tokenizer, data or protocol is refused,
naming which; so is one whose documents the data given now does not hold
(fewer documents, another ``--limit``), and a checkpoint of a *finished* run
resumes only onto exactly the documents it finished: its last block may have
been cut short by the end of the data, so scoring more after it would batch
differently from an uninterrupted run.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from lleval.errors import ConfigError, OutputError
from lleval.reducers.base import Resumable
from lleval.reducers.documents import EMPTY_CHAIN, chain_hash
from lleval.report.output import write_text_atomic
from lleval.stream import Unit

CHECKPOINT_VERSION = 2
FINGERPRINT_PARTS = ("model", "tokenizer", "protocol", "columns", "sample")
# How a refusal names a part of the fingerprint; "columns" are the scorer's further per-token
# columns, which the token file's parts hold (a checkpoint before them had none); "sample" the
# rows --sample drew and the --seed that drew them (None: every row, as before --sample).
PART_NAMES = {"columns": "set of per-token columns (--token-stats adds rank and entropy)",
              "sample": "random sample of rows (--sample, --seed)"}
# The flag behind a reducer that a checkpoint may lack.
REDUCER_FLAGS = {"tokens": "--tokens", "samples": "--html"}


@dataclass(frozen=True)
class Checkpoint:
    """What a resumed run starts from."""

    fingerprint: dict[str, Any]
    rows: int  # documents finished
    data_hash: str  # hash chain over the finished documents' text hashes
    states: dict[str, dict[str, Any]]  # reducer name -> its state
    complete: bool = False  # saved when the run had scored every document

    def to_json(self) -> str:
        """The checkpoint file's text."""
        return json.dumps({
            "lleval_checkpoint": CHECKPOINT_VERSION,
            "fingerprint": self.fingerprint,
            "rows": self.rows,
            "data_hash": self.data_hash,
            "reducers": self.states,
            "complete": self.complete,
        })


def load(path: str, fingerprint: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint at ``path`` if it exists and matches ``fingerprint``; None if no file.

    A file made with a different model, tokenizer or protocol (or a file that
    is not an lleval checkpoint of this version) is a `ConfigError` naming
    what differs.
    """
    file = Path(path)
    if not file.exists():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if data.get("lleval_checkpoint") != CHECKPOINT_VERSION:
            raise ValueError(f"not a version-{CHECKPOINT_VERSION} lleval checkpoint")
        checkpoint = Checkpoint(dict(data["fingerprint"]), int(data["rows"]), str(data["data_hash"]),
                                dict(data["reducers"]), bool(data.get("complete", False)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"checkpoint {path} cannot be read ({exc}): delete it or pass another --checkpoint."
        ) from None
    empty: dict[str, Any] = {"columns": [], "sample": None}  # what a checkpoint from before a part was fingerprinted held
    differs = [PART_NAMES.get(part, part) for part in FINGERPRINT_PARTS
               if checkpoint.fingerprint.get(part, empty.get(part)) != fingerprint.get(part, empty.get(part))]
    if differs:
        raise ConfigError(
            f"checkpoint {path} was made with a different {' and '.join(differs)}: it cannot be resumed "
            "with this command. Rerun it as it was made, delete it, or pass another --checkpoint."
        )
    return checkpoint


def verify_resumed(units: Iterator[Unit], checkpoint: Checkpoint, path: str) -> Iterator[Unit]:
    """Pass units through, refusing (`ConfigError`) data the checkpoint was not made with:
    once the documents already done have been read again, they must be the same texts;
    the data must hold at least that many documents (checked when it ends, before
    anything is scored: every block up to there is skipped); and after a finished run's
    checkpoint no further document may follow."""
    chain, seen = EMPTY_CHAIN, 0
    for unit in units:
        for row in unit.rows:
            if seen == checkpoint.rows and checkpoint.complete:
                raise ConfigError(
                    f"checkpoint {path} is of a finished run on {checkpoint.rows} documents, and the data given "
                    "now has more: it was made with other data (or another --limit). Delete it, or pass another "
                    "--checkpoint."
                )
            if seen < checkpoint.rows:
                chain, seen = chain_hash(chain, row.text_sha), seen + 1
                if seen == checkpoint.rows and chain != checkpoint.data_hash:
                    raise ConfigError(
                        f"checkpoint {path} was made with different data: the first {seen} documents "
                        "differ. Delete it, or pass another --checkpoint."
                    )
        yield unit
    if seen < checkpoint.rows:
        raise ConfigError(
            f"checkpoint {path} holds {checkpoint.rows} scored documents, and the data given now has only {seen}: "
            "it was made with other data (or another --limit). Delete it, or pass another --checkpoint."
        )


class Checkpointer:
    """Decides when to save, and saves the reducers' state at a block boundary.

    ``path`` None (no ``--checkpoint``) or a rank other than 0 makes every
    call a no-op, so the scoring loop asks the same questions either way. A
    save that fails (a full disk) does not stop the run: the checkpoint only
    saves time, the run's results do not depend on it. The first failure is
    one warning and is kept in `problem` for the report's notes.
    """

    def __init__(self, path: str | None, every_seconds: float, fingerprint: dict[str, Any]) -> None:
        self.path = path
        self.every = every_seconds
        self.fingerprint = fingerprint
        self.last_save = time.monotonic()
        self.problem: str | None = None  # why a save failed, the first time one did

    def due(self) -> bool:
        """Whether ``--checkpoint-every`` seconds have passed since the last save."""
        return self.path is not None and time.monotonic() - self.last_save >= self.every

    def save(self, rows: int, data_hash: str, reducers: Mapping[str, Resumable], complete: bool = False) -> None:
        """Write the state of ``reducers`` after ``rows`` finished documents (``complete``:
        the run scored every document); a failed write warns once and is retried at the
        next save."""
        if self.path is None:
            return
        states = {name: reducer.state() for name, reducer in reducers.items()}
        try:
            write_text_atomic(self.path, Checkpoint(self.fingerprint, rows, data_hash, states, complete).to_json(),
                              "--checkpoint")
        except OutputError as exc:
            if self.problem is None:
                warnings.warn(f"{exc} The run goes on without it.", stacklevel=2)
                self.problem = str(exc)
        self.last_save = time.monotonic()

    @staticmethod
    def restore(checkpoint: Checkpoint, reducers: Mapping[str, Resumable], path: str = "") -> None:
        """Put each reducer back to its saved state; a reducer the checkpoint has no state of
        (an output asked for now, not when it was made) is refused, naming its flag."""
        missing = sorted(set(reducers) - set(checkpoint.states))
        if missing:
            flags = " and ".join(REDUCER_FLAGS.get(name, name) for name in missing)
            raise ConfigError(f"checkpoint {path} was made without {flags}: drop {flags} to resume it, or delete "
                              "the checkpoint to start again.")
        for name, reducer in reducers.items():
            reducer.restore(checkpoint.states[name])
