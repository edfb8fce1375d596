"""Checkpoints: the reducers' state after the last finished block, the batches of the block
being scored, and what it was all computed with.

A checkpoint is a JSON file written atomically (temp file, fsync, rename) at
most every ``--checkpoint-every`` seconds: at the end of a block, and between
two batches of a block (a block holds a million tokens, tens of minutes on a
CPU), where it also holds the values of the block's batches done so far
(`lleval.stream.BlockPart`); and whenever the run ends (finished, stopped, or
failed after scoring something). So a Ctrl-C, a server that dies or a crash loses
at most ``--checkpoint-every`` seconds and a batch. Re-running the same command with
the same ``--checkpoint`` re-reads the data, checks that the documents already
done are the same texts (a hash chain over their text hashes), skips the blocks
already done (forming the remaining blocks and batches exactly as an
uninterrupted run would, with the batching the checkpoint recorded), takes the
saved batches of the block it stopped in instead of scoring them again, and
restores every resumable reducer, so it produces the same numbers. A checkpoint
made with another model (as its answers to a probe text show, `lleval.runner.fingerprint`),
tokenizer, data, protocol or any setting that changes a number is refused,
naming which; so is one whose documents the data given now does not hold
(fewer documents, another ``--limit``), and a checkpoint of a *finished* run
resumes only onto exactly the documents it finished: its last block may have
been cut short by the end of the data, so scoring more after it would batch
differently from an uninterrupted run.
"""

from __future__ import annotations

import base64
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from lleval.config import EvalConfig
from lleval.errors import ConfigError, OutputError
from lleval.plan.batching import Batching
from lleval.reducers.base import Resumable
from lleval.reducers.documents import EMPTY_CHAIN, chain_hash
from lleval.report.output import write_text_atomic
from lleval.runner.fingerprint import check
from lleval.stream import BlockPart, Unit

CHECKPOINT_VERSION = 3
# The flag behind a reducer that a checkpoint may lack.
REDUCER_FLAGS = {"tokens": "--tokens", "samples": "--html", "reference": "--save-reference"}


@dataclass(frozen=True)
class Checkpoint:
    """What a resumed run starts from."""

    fingerprint: dict[str, Any]
    rows: int  # documents finished
    data_hash: str  # hash chain over the finished documents' text hashes
    states: dict[str, dict[str, Any]]  # reducer name -> its state
    complete: bool = False  # saved when the run had scored every document
    batching: Batching | None = None  # the run's batches: a resumed run forms the same
    partial: BlockPart | None = None  # the batches done of the block after ``rows``

    def to_json(self) -> str:
        """The checkpoint file's text."""
        return json.dumps({
            "lleval_checkpoint": CHECKPOINT_VERSION,
            "fingerprint": self.fingerprint,
            "rows": self.rows,
            "data_hash": self.data_hash,
            "reducers": self.states,
            "complete": self.complete,
            "batching": None if self.batching is None else self.batching.describe(),
            "partial": None if self.partial is None else _part_json(self.partial),
        })

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        """Read a checkpoint file's text (`ValueError`, `KeyError`, `TypeError` for what is not one)."""
        data = json.loads(text)
        version = data.get("lleval_checkpoint")
        if version != CHECKPOINT_VERSION:
            older = isinstance(version, int) and version < CHECKPOINT_VERSION
            raise ValueError(f"it was written by an older lleval (checkpoint version {version}), which recorded "
                             "neither every setting nor the model's answers" if older else
                             f"not a version-{CHECKPOINT_VERSION} lleval checkpoint")
        partial, batching = data.get("partial"), data.get("batching")
        return cls(dict(data["fingerprint"]), int(data["rows"]), str(data["data_hash"]), dict(data["reducers"]),
                   bool(data.get("complete", False)), None if batching is None else Batching(**batching),
                   None if partial is None else _part_from_json(partial))


def _part_json(part: BlockPart) -> dict[str, Any]:
    """A block's batches done, as JSON: their float32 values in one base64 string, with each
    batch's shape (5.3 characters a token per column: a whole block of a million tokens is
    about 5 MB)."""
    values = [np.ascontiguousarray(v, dtype="<f4") for v in part.values]
    return {"first_row": part.first_row, "key": part.key, "shapes": [list(v.shape) for v in values],
            "values": base64.b64encode(b"".join(v.tobytes() for v in values)).decode("ascii")}


def _part_from_json(data: dict[str, Any]) -> BlockPart:
    flat = np.frombuffer(base64.b64decode(data["values"], validate=True), dtype="<f4")
    shapes = [tuple(int(n) for n in shape) for shape in data["shapes"]]
    sizes = [int(np.prod(shape)) for shape in shapes]
    if sum(sizes) != len(flat):
        raise ValueError("its partial block holds fewer values than its shapes say")
    ends = np.cumsum(sizes)
    values = tuple(flat[end - size: end].reshape(shape).astype(np.float32)
                   for end, size, shape in zip(ends, sizes, shapes))
    return BlockPart(int(data["first_row"]), str(data["key"]), values)


def load(path: str, fingerprint: dict[str, Any], config: EvalConfig) -> Checkpoint | None:
    """The checkpoint at ``path`` if it exists and matches ``fingerprint``; None if no file.

    A file made with a different model, tokenizer, protocol or setting (or a file that
    is not an lleval checkpoint of this version) is a `ConfigError` naming what differs
    (`lleval.runner.fingerprint.check`).
    """
    file = Path(path)
    if not file.exists():
        return None
    try:
        checkpoint = Checkpoint.from_json(file.read_text(encoding="utf-8"))
        saved = checkpoint.fingerprint
        if not isinstance(saved.get("settings"), dict):
            raise ValueError("it has no settings")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"checkpoint {path} cannot be read ({exc}): delete it or pass another --checkpoint."
        ) from None
    check(saved, fingerprint, config, path)
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
    """Decides when to save, and saves the reducers' state (and the current block's batches
    done) between batches.

    ``path`` None (no ``--checkpoint``) or a rank other than 0 makes every
    call a no-op, so the scoring loop asks the same questions either way. A
    save that fails (a full disk) does not stop the run: the checkpoint only
    saves time, the run's results do not depend on it. The first failure is
    one warning and is kept in `problem` for the report's notes. ``clock`` is
    what `due` measures with (tests give their own).
    """

    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, path: str | None, every_seconds: float, fingerprint: dict[str, Any],
                 batching: Batching | None = None) -> None:
        self.path = path
        self.every = every_seconds
        self.fingerprint = fingerprint
        self.batching = batching
        self.last_save = self.clock()
        self.saves = 0  # saves written (or tried)
        self.problem: str | None = None  # why a save failed, the first time one did

    def due(self) -> bool:
        """Whether ``--checkpoint-every`` seconds have passed since the last save."""
        return self.path is not None and self.clock() - self.last_save >= self.every

    def save(self, rows: int, data_hash: str, reducers: Mapping[str, Resumable], complete: bool = False,
             partial: BlockPart | None = None) -> None:
        """Write the state of ``reducers`` after ``rows`` finished documents (``complete``:
        the run scored every document; ``partial``: the batches done of the block after
        them); a failed write warns once and is retried at the next save."""
        if self.path is None:
            return
        states = {name: reducer.state() for name, reducer in reducers.items()}
        checkpoint = Checkpoint(self.fingerprint, rows, data_hash, states, complete, self.batching,
                                partial if partial is not None and partial.batches else None)
        try:
            write_text_atomic(self.path, checkpoint.to_json(), "--checkpoint")
        except OutputError as exc:
            if self.problem is None:
                warnings.warn(f"{exc} The run goes on without it.", stacklevel=2)
                self.problem = str(exc)
        self.saves += 1
        self.last_save = self.clock()

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
