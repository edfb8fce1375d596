"""The compact KL reference (``lleval score --save-reference ref.parquet``) and its reader.

A Parquet file with, per scored token, the token file's columns
(`lleval.report.tokens.COLUMNS`) and three more: ``top_ids`` (list<int32>, the
K most likely tokens of the model's distribution, most likely first),
``top_logprobs`` (list<float32>, their log-probs) and ``tail_logprob``
(float32, the log of the mass outside them; -inf when it underflows). About
8K + 40 bytes a token before compression, against 4V for a full float32 row
(196 KB for SmolLM2's 49,152 tokens). It is written by the token file's
writer (parts, atomic merge, checkpoint and resume, failure handling); its
metadata key ``lleval`` holds the run's header plus ``reference``:
``{"top_k": K, "vocab": V}``. Parquet only: the lists are compact and typed
there, and the reader needs row groups to read in step with scoring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lleval.errors import ReportError
from lleval.report.tokens import COLUMNS, TokenWriter, open_parquet
from lleval.stream import TokenScores

REFERENCE_COLUMNS = ("top_ids", "top_logprobs", "tail_logprob")


class ReferenceWriter(TokenWriter):
    """The `TokenWriter` of ``--save-reference``: the scorer's ``ref_`` columns packed into lists."""

    flag = "--save-reference"

    def __init__(self, path: str, checkpoint: str | None = None) -> None:
        super().__init__(path, checkpoint)
        self.jsonl = False

    def columns(self, scores: TokenScores) -> dict[str, Any]:
        """The token file's columns, then ``top_ids``, ``top_logprobs`` and ``tail_logprob``."""
        import pyarrow as pa

        base = super().columns(scores)
        extra = scores.columns
        k = sum(1 for name in extra if name.startswith("ref_id_"))
        ids = np.stack([extra[f"ref_id_{i}"] for i in range(k)], axis=1).astype(np.int32)  # (N, K), exact < 2^24
        lps = np.stack([extra[f"ref_lp_{i}"] for i in range(k)], axis=1).astype(np.float32)  # (N, K)
        base["top_ids"] = pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1)), k).cast(pa.list_(pa.int32()))
        base["top_logprobs"] = pa.FixedSizeListArray.from_arrays(pa.array(lps.reshape(-1)), k).cast(
            pa.list_(pa.float32()))
        base["tail_logprob"] = np.asarray(extra["ref_tail"], dtype=np.float32)
        return base


class ReferenceRows:
    """A reference file read in file order, ``take(n)`` rows at a time (a row group held at once).

    `take` returns a dict of arrays: ``document``, ``position``, ``token_id``, ``logprob``
    (N,), ``top_ids`` (N, K) int64, ``top_logprobs`` (N, K) float32, ``tail_logprob`` (N,).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        file = Path(path).expanduser()
        if not file.is_file():
            raise ReportError(f"reference {path} does not exist: make one with lleval score --save-reference {path}.")
        self.parquet, self.header = open_parquet(file)
        missing = [c for c in REFERENCE_COLUMNS if c not in self.parquet.schema_arrow.names]
        info = self.header.get("reference")
        if missing or not isinstance(info, dict) or not isinstance(info.get("top_k"), int):
            raise ReportError(f"{path} is a token file, not a reference: make one with lleval score "
                              "--save-reference.")
        self.top_k: int = info["top_k"]
        self.vocab: int | None = info.get("vocab")
        self.rows = int(self.parquet.metadata.num_rows)
        self._batches = self.parquet.iter_batches(columns=[*COLUMNS[:4], "logprob", *REFERENCE_COLUMNS])
        self._held: list[dict[str, np.ndarray]] = []
        self._held_rows = 0
        self.read = 0  # rows taken so far

    def take(self, n: int) -> dict[str, np.ndarray] | None:
        """The next ``n`` rows, or None when the file has fewer left."""
        while self._held_rows < n:
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._held.append(_arrays(batch, self.top_k))
            self._held_rows += batch.num_rows
        joined = {k: np.concatenate([h[k] for h in self._held]) for k in self._held[0]} if self._held else {}
        out = {k: v[:n] for k, v in joined.items()}
        rest = {k: v[n:] for k, v in joined.items()}
        self._held_rows -= n
        self._held = [rest] if self._held_rows else []
        self.read += n
        return out


def _arrays(batch: Any, k: int) -> dict[str, np.ndarray]:
    n = batch.num_rows
    names = batch.schema.names

    def flat(name: str, dtype: Any) -> np.ndarray:
        values = batch.column(names.index(name)).flatten().to_numpy(zero_copy_only=False)
        if values.size != n * k:
            raise ReportError(f"reference column {name} does not hold {k} values in every row: is the file damaged?")
        return values.astype(dtype).reshape(n, k)

    plain = {c: batch.column(names.index(c)).to_numpy(zero_copy_only=False)
             for c in ("document", "position", "token_id", "logprob", "tail_logprob")}
    return {**plain, "top_ids": flat("top_ids", np.int64), "top_logprobs": flat("top_logprobs", np.float32)}
