"""The per-token export (``--tokens FILE``): one row per scored token, written as scoring goes.

Columns, in this order (`COLUMNS`; kld adds ``base_logprob`` and ``kl``,
``--token-stats`` adds ``rank`` and ``entropy``):

- ``document``: the document's row in the source (as the report's ``documents[].index``);
- ``position``: the token's place in the document (0: its first token);
- ``context``: how many tokens the model read before predicting it, in its window;
- ``token_id`` and ``token``: the id, and the text it covers: from where the
  token starts in the document to where the next one starts, so the texts of a
  document's tokens join back into the document wherever the protocol scores
  every token (with ``--concat``, a document is followed by its separator);
- ``start``, ``end``: that text's character offsets in the document;
- ``logprob``: log P(token | context) in nats (float32, as scored).

A ``.jsonl`` path writes JSON lines, a ``.parquet`` path Parquet (in row groups
of at most 65,536 rows; the file's metadata key ``lleval`` holds the run's
report header as JSON); `EvalConfig.validate` refuses any other extension.
The file is written in parts as blocks are scored (memory stays bounded), in
a folder of this run alone (``.NAME.parts-<pid>-<random>``), merged into a
temporary file of this run when it ends and renamed into place: never
half-written, and two runs writing the same file never touch each other's
parts. A checkpoint records the folder and the parts written so far, so a
resumed run keeps them and writes the rest, and its file is the
uninterrupted run's. A write that fails (a full disk) ends this output only,
leaving nothing behind; the run and its other outputs go on.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lleval.errors import OutputError, ReportError, write_failure
from lleval.files import pid_alive, remove_quietly
from lleval.stream import ScoredBlock, TokenScores, token_columns
from lleval.report.blocks import DatasetBlock, ModelBlock, ProtocolBlock, TokenizerBlock
from lleval.report.schema import compile_check, load_schema

COLUMNS = ("document", "position", "context", "token_id", "token", "start", "end", "logprob")
ROW_GROUP = 65_536


PARTS_MARKER = "checkpoint"  # in a parts folder: the checkpoint that will resume from it


class TokenWriter:
    #: the flag that asked for this file, as messages name it
    flag = "--tokens"

    """A reducer that writes every scored token to ``path`` (see the module docstring).

    Parts live in a hidden folder next to ``path``, ``.NAME.parts-<pid>-<random>``,
    until `finish` merges them: two runs writing the same ``--tokens`` at once
    never touch each other's parts, and the last to finish wins. The folder
    is removed when the run ends, unless a run with ``checkpoint`` stopped
    early (its checkpoint records the folder, and the resumed run finds its
    parts there). A write that fails (a full disk) stops only this output:
    the folder goes, later blocks are ignored, and `finish` raises the
    `OutputError`. Folders of this ``path`` left by dead runs are removed when
    a run starts writing, unless their checkpoint still exists.
    """

    def __init__(self, path: str, checkpoint: str | None = None) -> None:
        self.path = Path(path).expanduser()
        self.jsonl = self.path.suffix.lower() == ".jsonl"
        self.checkpoint = checkpoint
        self.parts_dir = self.path.parent / f"{self._prefix}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.parts: list[str] = []  # finished parts, in order
        self.rows = 0
        self.failure: OutputError | None = None  # why this output failed, once it has
        self._open: Any = None  # the part being written: a file handle or a ParquetWriter
        self._open_name = ""
        self._started = False

    @property
    def _prefix(self) -> str:
        return f".{self.path.name}.parts"

    def update(self, block: ScoredBlock) -> None:
        """Write the block's tokens to the open part; a failed write ends this output only."""
        if self.failure is not None:
            return
        try:
            for scores in block.units:
                if len(scores):
                    self._write(self.columns(scores))
        except OSError as exc:
            self._fail(exc)

    def columns(self, scores: TokenScores) -> dict[str, Any]:
        """One unit's rows of this file: the export's columns and the scorer's further ones
        (less a reference's ``ref_`` columns, which are `lleval.report.reference`'s)."""
        return {k: v for k, v in token_columns(scores).items() if not k.startswith("ref_")}

    def _fail(self, exc: OSError) -> None:
        self.failure = write_failure(self.flag, self.path, exc)
        self.abandon()

    def _start(self) -> None:
        """Sweep what dead runs left for this path, make the parts folder, and drop from it
        what is not a finished part of this run (a resumed run's part cut short)."""
        sweep_parts(self.path, keep=self.parts_dir)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        if self.checkpoint:
            (self.parts_dir / PARTS_MARKER).write_text(str(Path(self.checkpoint).expanduser().resolve()))
        for path in self.parts_dir.iterdir():
            if path.name not in self.parts and path.name != PARTS_MARKER:
                path.unlink()
        self._started = True

    def _write(self, columns: dict[str, Any]) -> None:
        if not self._started:
            self._start()
        if self._open is None:
            self._open_name = f"part-{len(self.parts):05d}.{'jsonl' if self.jsonl else 'parquet'}"
            path = self.parts_dir / self._open_name
            if self.jsonl:
                self._open = path.open("w", encoding="utf-8")
            else:
                import pyarrow.parquet as pq

                self._open = pq.ParquetWriter(str(path), _arrow_table(columns).schema)
        if self.jsonl:
            self._open.write(_jsonl(columns))
        else:
            self._open.write_table(_arrow_table(columns), row_group_size=ROW_GROUP)
        self.rows += len(columns["token"])

    def _close_part(self) -> None:
        if self._open is not None:
            self._open.close()
            self.parts.append(self._open_name)
            self._open = None

    def state(self) -> dict[str, Any]:
        """Close the part being written: a checkpoint lists only finished parts, and the
        folder that holds them."""
        if self.failure is None:
            try:
                self._close_part()
            except OSError as exc:
                self._fail(exc)
        state = {"parts": list(self.parts), "rows": self.rows, "folder": self.parts_dir.name}
        return state if self.failure is None else {**state, "failed": str(self.failure)}

    def restore(self, state: dict[str, Any]) -> None:
        """Go on in the folder the checkpoint names, with the parts it lists (the interrupted
        run wrote them); what else is there is dropped when writing starts."""
        if state.get("failed"):
            raise OutputError(f"{self.flag} {self.path} failed in the run this checkpoint comes from "
                              f"({state['failed']}): resume without {self.flag}, or delete the checkpoint and rerun.")
        folder = str(state.get("folder", self._prefix))  # checkpoints from before unique folders
        if not folder.startswith(self._prefix) or Path(folder).name != folder:
            raise OutputError(f"{self.flag} {self.path}: the checkpoint names a parts folder {folder!r} that is not "
                              "this file's: delete the checkpoint and rerun.")
        missing = [name for name in state["parts"] if not (self.path.parent / folder / name).is_file()]
        if missing:
            raise OutputError(
                f"{self.flag} {self.path}: the token parts written before the checkpoint are gone from "
                f"{self.path.parent / folder}: delete the checkpoint and rerun."
            )
        self.parts_dir = self.path.parent / folder
        self.parts, self.rows = list(state["parts"]), int(state["rows"])

    def finish(self, header: dict[str, Any], keep_parts: bool = False) -> None:
        """Merge the parts into ``path`` (a temporary file of this run, fsynced, renamed into
        place), then remove the parts folder. ``keep_parts`` keeps it for a run that will
        resume (a stopped run with a checkpoint). Raises the `OutputError` of a write that
        failed, now or while scoring."""
        tmp = self.path.parent / f".{self.path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"
        try:
            if self.failure is None:
                if not self._started:
                    self._start()
                self._close_part()
                self._merge(tmp, header)
                os.replace(tmp, self.path)
        except OSError as exc:
            self.failure = write_failure(self.flag, self.path, exc)
        finally:
            remove_quietly(tmp)
            if not keep_parts:
                shutil.rmtree(self.parts_dir, ignore_errors=True)
        if self.failure is not None:
            raise self.failure

    def abandon(self, keep_parts: bool = False) -> None:
        """A run that failed: close the open part and remove the folder (``keep_parts``:
        keep it, for a checkpoint that will resume from it)."""
        try:
            if self._open is not None:
                self._open.close()
        except OSError:
            pass
        self._open = None
        if not keep_parts:
            shutil.rmtree(self.parts_dir, ignore_errors=True)

    def _merge(self, tmp: Path, header: dict[str, Any]) -> None:
        if not self.jsonl:
            _merge_parquet([self.parts_dir / name for name in self.parts], tmp, header)
            return
        with tmp.open("wb") as out:
            for name in self.parts:
                with (self.parts_dir / name).open("rb") as part:
                    shutil.copyfileobj(part, out)
            out.flush()
            os.fsync(out.fileno())


class FinishedFile:
    """The token file (or reference) of a finished run that a rerun rebuilds from its
    checkpoint: nothing is scored again, so nothing is added; the file is kept as that run
    wrote it, untouched, and its checkpoint's state is kept as it was (a later rerun finds
    it again). A file gone since is this output's failure (`finish` raises it), not the run's."""

    def __init__(self, path: str, flag: str) -> None:
        self.path = Path(path).expanduser()
        self.flag = flag
        self._state: dict[str, Any] = {}

    def update(self, block: ScoredBlock) -> None:
        """A finished run's rerun scores nothing: there is nothing to write."""

    def state(self) -> dict[str, Any]:
        """The state the finished run saved, unchanged."""
        return dict(self._state)

    def restore(self, state: dict[str, Any]) -> None:
        self._state = dict(state)

    def finish(self, header: dict[str, Any], keep_parts: bool = False) -> None:
        """Nothing to write; a file that is gone is an `OutputError` naming what to do."""
        if not self.path.is_file():
            raise OutputError(f"{self.flag} {self.path} of the finished run this checkpoint comes from is gone, and "
                              "nothing is scored again to write it: delete the checkpoint and rerun to write it anew.")

    def abandon(self, keep_parts: bool = False) -> None:
        """Nothing of this run's to remove: the finished run's file stays."""


def sweep_parts(path: Path, keep: Path) -> None:
    """Remove the parts folders and merge files that dead runs left for ``path`` (their
    names carry the writer's pid): a SIGKILLed run cannot clean up after itself. A folder
    whose checkpoint still exists is kept for the run that will resume from it."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*"):
        owner = _owner_pid(leftover.name, path.name)
        if leftover == keep or owner is None or pid_alive(owner):
            continue
        marker = leftover / PARTS_MARKER
        try:
            if leftover.is_dir():
                if not (marker.is_file() and Path(marker.read_text().strip()).is_file()):
                    shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink()
        except OSError:
            pass  # another run is sweeping it too


def _owner_pid(name: str, target: str) -> int | None:
    """The pid in ``.TARGET.parts-<pid>-<hex>`` or ``.TARGET.<pid>-<hex>.tmp``; None otherwise."""
    rest = name[len(target) + 2:]
    found = re.fullmatch(r"(?:parts-(\d+)-[0-9a-f]+)|(?:(\d+)-[0-9a-f]+\.tmp)", rest)
    return None if found is None else int(found.group(1) or found.group(2))


def _arrow_table(columns: dict[str, Any]) -> Any:
    import pyarrow as pa

    return pa.table({name: value if isinstance(value, pa.Array) else pa.array(value)
                     for name, value in columns.items()})


def _jsonl(columns: dict[str, Any]) -> str:
    names = list(columns)
    values = [c.tolist() if isinstance(c, np.ndarray) else c for c in columns.values()]
    return "".join(json.dumps(dict(zip(names, row)), ensure_ascii=False) + "\n" for row in zip(*values))


def _merge_parquet(parts: list[Path], target: Path, header: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(parts[0]) if parts else pa.schema([(c, pa.int64()) for c in COLUMNS])
    schema = schema.with_metadata({"lleval": json.dumps(header)})
    with pq.ParquetWriter(str(target), schema) as writer:
        for part in parts:
            file = pq.ParquetFile(part)
            for group in range(file.num_row_groups):
                writer.write_table(file.read_row_group(group).replace_schema_metadata(schema.metadata))
    with target.open("rb") as handle:
        os.fsync(handle.fileno())


def read_token_file(path: str) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """A token file's header (empty for JSON lines) and its rows, as dicts, in file order."""
    file = Path(path)
    if not file.is_file():
        raise ReportError(f"token file {path} does not exist.")
    if file.suffix.lower() == ".jsonl":
        return {}, _jsonl_rows(file)
    parquet, header = open_parquet(file)
    return header, (row for batch in parquet.iter_batches() for row in batch.to_pylist())


def open_parquet(file: Path) -> tuple[Any, dict[str, Any]]:
    """A Parquet token file, checked to hold the export's columns, and its header."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
    except Exception as exc:  # pyarrow raises several kinds
        raise ReportError(f"token file {file} is not a Parquet file ({exc}).") from None
    missing = [c for c in COLUMNS if c not in parquet.schema_arrow.names]
    if missing:
        raise ReportError(f"token file {file} lacks the columns {', '.join(missing)}: is it from lleval --tokens?")
    meta = parquet.schema_arrow.metadata or {}
    return parquet, json.loads(meta[b"lleval"]) if b"lleval" in meta else {}


def _jsonl_rows(file: Path) -> Iterator[dict[str, Any]]:
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ReportError(f"token file {file}, line {number}: not valid JSON ({exc.msg}).") from None
            if not isinstance(row, dict) or any(c not in row for c in COLUMNS):
                raise ReportError(f"token file {file}, line {number}: not a token row of lleval --tokens.")
            yield row


@dataclass(frozen=True)
class TokenHeader:
    """What a Parquet token file's header says of its run, as the report's typed blocks
    (the header is the score report's, less ``timing`` and ``notes``)."""

    model: ModelBlock
    tokenizer: TokenizerBlock
    dataset: DatasetBlock
    protocol: ProtocolBlock


def token_header(header: dict[str, Any], path: str) -> TokenHeader | None:
    """The typed blocks of a token file's ``header`` (`read_token_file`'s), each checked
    against the score schema's; None for a file without one (JSON lines). A broken block
    is a `ReportError` naming the file and the first problem."""
    if not header.get("model"):
        return None
    schema = load_schema("score")["properties"]
    for name in ("model", "tokenizer", "dataset", "protocol"):
        problem = compile_check(schema[name])(header.get(name))
        if problem is not None:
            raise ReportError(f"token file {path}: the header's {problem.inside(name).where} {problem.what}.")
    return TokenHeader(ModelBlock.from_dict(header["model"]), TokenizerBlock.from_dict(header["tokenizer"]),
                       DatasetBlock.from_dict(header["dataset"]), ProtocolBlock.from_dict(header["protocol"]))
