"""Checkpoints: the per-document sums finished so far, and what they were computed with.

A checkpoint is a JSON file written atomically (temp file, fsync, rename) at
most every ``--checkpoint-every`` seconds, always at a block boundary of the
engine. Re-running the same command with the same ``--checkpoint`` re-reads
the data, skips the blocks already done (forming the remaining blocks and
batches exactly as an uninterrupted run would), and so produces the same
per-document numbers. A checkpoint made with another model, tokenizer, data
or protocol is refused, naming which.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lleval.errors import ConfigError
from lleval.report import write_text_atomic
from lleval.scoring import RowSums

CHECKPOINT_VERSION = 1
FINGERPRINT_PARTS = ("model", "tokenizer", "protocol")


def rows_hash(text_hashes: list[str]) -> str:
    """sha256 over the per-document text hashes, in order."""
    digest = hashlib.sha256()
    for h in text_hashes:
        digest.update(bytes.fromhex(h))
    return digest.hexdigest()


@dataclass
class Checkpoint:
    """What a resumed run starts from."""

    fingerprint: dict[str, Any]
    data_hash: str  # rows_hash of the texts of the finished rows
    rows: list[RowSums]

    def to_json(self) -> str:
        """The checkpoint file's text."""
        return json.dumps(
            {
                "lleval_checkpoint": CHECKPOINT_VERSION,
                "fingerprint": self.fingerprint,
                "data_hash": self.data_hash,
                "rows": [
                    {
                        "row": r.row,
                        "log_likelihood": r.log_likelihood,
                        "tokens": r.tokens,
                        "logprob_sq_sum": r.logprob_sq_sum,
                        "nonfinite": r.nonfinite,
                        "extra": None if r.extra is None else [float(x) for x in r.extra],
                    }
                    for r in self.rows
                ],
            }
        )


def save(path: str, checkpoint: Checkpoint) -> None:
    """Write the checkpoint atomically."""
    write_text_atomic(path, checkpoint.to_json())


def load(path: str, fingerprint: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint at ``path`` if it exists and matches ``fingerprint``; None if no file.

    A file made with a different model, tokenizer or protocol (or a file that
    is not an lleval checkpoint) is a `ConfigError` naming what differs.
    """
    file = Path(path)
    if not file.exists():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if data.get("lleval_checkpoint") != CHECKPOINT_VERSION:
            raise ValueError("not a version-1 lleval checkpoint")
        rows = [
            RowSums(
                int(r["row"]), float(r["log_likelihood"]), int(r["tokens"]), float(r["logprob_sq_sum"]),
                int(r["nonfinite"]), None if r["extra"] is None else np.asarray(r["extra"], dtype=np.float64),
            )
            for r in data["rows"]
        ]
        stored = data["fingerprint"]
        data_hash = str(data["data_hash"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"checkpoint {path} cannot be read ({exc}): delete it or pass another --checkpoint."
        ) from None
    differs = [part for part in FINGERPRINT_PARTS if stored.get(part) != fingerprint.get(part)]
    if differs:
        raise ConfigError(
            f"checkpoint {path} was made with a different {' and '.join(differs)}: it cannot be resumed "
            "with this command. Delete it, or pass another --checkpoint."
        )
    return Checkpoint(stored, data_hash, rows)


def check_data(path: str, checkpoint: Checkpoint, text_hashes: list[str]) -> None:
    """Refuse to resume when the documents already scored are not the ones read now."""
    if rows_hash(text_hashes) != checkpoint.data_hash:
        raise ConfigError(
            f"checkpoint {path} was made with different data: the first {len(text_hashes)} documents "
            "differ. Delete it, or pass another --checkpoint."
        )
