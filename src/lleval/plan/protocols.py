"""Scoring protocols: how texts become token sequences and windows.

Each protocol is a `Plan`: resolved window parameters, a generator of
`Unit`s for the engine, and a ``describe()`` block for the report that lists
every choice. All of them run through the same engine (`lleval.engine.scoring`).

- ``rolling`` (default): per document, prefix token, `rolling_spans`.
- ``lm-eval``: lm-evaluation-harness's ``loglikelihood_rolling``: rolling
  with S = L and its word count ``len(re.split(r"\\s+", text))``.
- ``hf-guide``: the transformers guide "Perplexity of fixed-length models":
  one stream joined with two newlines, tokenized with the tokenizer's default
  special tokens, `strided_spans` (defaults L = 1024, S = 512).
- ``llama-cpp``: llama.cpp's perplexity tool: one stream (BOS in front when
  the tokenizer adds BOS), disjoint chunks of L (default 512) with the tail
  dropped, BOS written over each chunk's first token when the tokenizer adds
  BOS, and only chunk positions L/2+1 .. L-1 scored.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import zlib as zlib_module
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from lleval.config import DEFAULT_MAX_LENGTH_CAP, DEFAULT_SEPARATOR, EvalConfig
from lleval.data.sources import Document
from lleval.errors import ConfigError, DataError
from lleval.stream import Row, Unit
from lleval.plan.tokenization import encode, encode_with_owners, encode_with_starts, resolve_prefix_token
from lleval.windows import Span, check_window_params, chunk_spans, rolling_spans, strided_spans

TOKENIZE_GROUP = 64  # documents tokenized per batched tokenizer call
_WHITESPACE = re.compile(r"\s+")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_words(text: str) -> int:
    """lleval's word count: whitespace-separated words, ``len(text.split())``."""
    return len(text.split())


def lm_eval_words(text: str) -> int:
    """lm-evaluation-harness's word count, ``len(re.split(r"\\s+", text))``: it counts an
    empty word at each end of a text that starts or ends with whitespace."""
    return len(_WHITESPACE.split(text))


@dataclass(frozen=True)
class Plan:
    """A protocol resolved against a config and a tokenizer: what it scores and how.

    Immutable: the counts a run produces (stream tokens, unscored tokens)
    come from reducers (`lleval.reducers.documents.StreamCounts`), not from the plan.
    """

    name: str
    max_length: int
    stride: int | None
    prefix_token: int | None
    separator: str | None
    special_tokens: bool
    words: Callable[[str], int] = split_words
    scores_every_token: bool = True
    chunk_bos: int | None = None  # llama-cpp: token written over each chunk's first token
    first_scored: int | None = None  # llama-cpp: first scored position in a chunk

    def units(self, docs: Iterator[Document], tokenizer: Any, keep_text: bool = False,
              zlib: bool = False) -> Iterator[Unit]:
        """The engine's input, read lazily from ``docs``. ``keep_text`` keeps each document's
        text on its `Row` (for reducers that show tokens, such as the per-token export);
        ``zlib`` puts the zlib-compressed length of its text as scored on it (--membership)."""
        if self.name in ("rolling", "lm-eval") and self.separator is None:
            return self._document_units(docs, tokenizer, keep_text, zlib)
        return self._stream_units(docs, tokenizer, keep_text, zlib)

    def _row(self, doc: Document, n_bytes: int | None, text: str | None, scored: str | None = None) -> Row:
        encoded = doc.text.encode("utf-8")
        size = len(encoded) if n_bytes is None else n_bytes
        packed = None if scored is None else len(zlib_module.compress(scored.encode("utf-8")))
        return Row(doc.index, size, self.words(doc.text), _sha(encoded), text, doc.id, packed)

    def _document_units(self, docs: Iterator[Document], tokenizer: Any, keep_text: bool,
                        zlib: bool) -> Iterator[Unit]:
        head = [] if self.prefix_token is None else [self.prefix_token]
        starts = np.array([len(head)], dtype=np.int64)
        assert self.stride is not None
        number = 0
        while group := list(itertools.islice(docs, TOKENIZE_GROUP)):
            texts = [d.text for d in group]
            encoded = (encode_with_starts(tokenizer, texts) if keep_text
                       else [(ids, None) for ids in encode(tokenizer, texts)])
            for doc, (ids, chars) in zip(group, encoded):
                sequence = head + ids
                spans = rolling_spans(len(sequence), self.max_length, self.stride)
                row = self._row(doc, None, doc.text if keep_text else None, doc.text if zlib else None)
                char_starts = None if chars is None else np.concatenate([np.full(len(head), -1), chars])
                yield Unit(sequence, spans, (row,), number, starts, char_starts=char_starts)
                number += 1

    def _stream_units(self, docs: Iterator[Document], tokenizer: Any, keep_text: bool,
                      zlib: bool) -> Iterator[Unit]:
        assert self.separator is not None
        read = list(docs)
        if not read:
            return
        ids, owners, n_bytes, chars = encode_with_owners(tokenizer, [d.text for d in read], self.separator,
                                                         self.special_tokens)
        # a document as scored is its text and the separator after it (not after the last)
        scored = [d.text + (self.separator if k < len(read) - 1 else "") for k, d in enumerate(read)]
        rows = tuple(self._row(doc, size, text if keep_text else None, text if zlib else None)
                     for doc, size, text in zip(read, n_bytes, scored))
        skip = 0 if self.prefix_token is None else 1
        if self.prefix_token is not None:
            ids = [self.prefix_token] + ids
            owners = np.concatenate([np.zeros(1, dtype=np.int64), owners])
            chars = np.concatenate([np.full(1, -1, dtype=np.int64), chars])
        # a document's first own token: the first position it owns, after the prefix
        starts = np.searchsorted(owners[skip:], np.arange(len(rows)), side="left").astype(np.int64) + skip
        spans = self._stream_spans(len(ids))
        unscored = len(ids) - sum(s.n_scored for s in spans)
        yield Unit(ids, spans, rows, 0, starts, owners, window_head=self.chunk_bos, unscored=unscored,
                   char_starts=chars if keep_text else None)

    def _stream_spans(self, n: int) -> list[Span]:
        if self.name == "llama-cpp":
            assert self.first_scored is not None
            if n < 2 * self.max_length:
                raise DataError(
                    f"the llama-cpp protocol needs at least 2 x {self.max_length} = "
                    f"{2 * self.max_length} tokens, and the text has {n}: add text or lower --max-length."
                )
            return chunk_spans(n, self.max_length, self.first_scored)
        assert self.stride is not None
        if self.name == "hf-guide":
            return strided_spans(n, self.max_length, self.stride)
        return rolling_spans(n, self.max_length, self.stride)

    def describe(self, tokenizer: Any) -> dict[str, Any]:
        """The report's ``protocol`` block: every choice this protocol made (the counts of
        a run are added by the report, from `lleval.reducers.documents.StreamCounts`)."""
        prefix_text = None if self.prefix_token is None else tokenizer.convert_ids_to_tokens(self.prefix_token)
        block: dict[str, Any] = {
            "name": self.name,
            "max_length": self.max_length,
            "stride": self.stride,
            "prefix_token": self.prefix_token,
            "prefix_token_text": prefix_text,
            "concat": self.separator,
            "special_tokens": self.special_tokens,
            "first_token_scored": self.prefix_token is not None,
            "word_count": "len(re.split(r'\\s+', text))" if self.words is lm_eval_words else "len(text.split())",
            "scores_every_token": self.scores_every_token,
        }
        if self.name in ("rolling", "lm-eval"):
            block["windows"] = (
                "first window predicts up to max_length tokens, each later one up to stride new "
                "tokens with as much preceding context as fits in max_length"
            )
        elif self.name == "hf-guide":
            block["windows"] = (
                "a window of up to max_length tokens starts every stride tokens and scores the "
                "tokens no earlier window scored; the stream's first token is never scored"
            )
        else:
            block["windows"] = (
                "disjoint chunks of max_length tokens, the tail that does not fill a chunk dropped; "
                "chunk positions first_scored_position..max_length-1 scored"
            )
            block["first_scored_position"] = self.first_scored
            block["chunk_bos"] = self.chunk_bos
        return block

    def counted(self, described: dict[str, Any], stream_tokens: int, unscored_tokens: int) -> dict[str, Any]:
        """``described`` with a run's counts: stream and unscored tokens (and llama-cpp's chunks)."""
        block = {**described, "stream_tokens": stream_tokens, "unscored_tokens": unscored_tokens}
        if self.name == "llama-cpp":
            block["chunks"] = stream_tokens // self.max_length
        return block


def _check_max_length(max_length: int, positions: int | None) -> None:
    if positions is not None and max_length > positions:
        raise ConfigError(
            f"--max-length {max_length} is larger than the model's {positions} positions: the model "
            f"cannot read windows that long. Use --max-length {positions} or less."
        )


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def plan(config: EvalConfig, tokenizer: Any, positions: int | None) -> Plan:
    """Resolve a validated config's protocol, window shape and prefix for this tokenizer and
    model: what needs the tokenizer or the model's positions is checked here, the rest
    in `EvalConfig.validate`."""
    name = config.protocol
    cap = min(positions or DEFAULT_MAX_LENGTH_CAP, DEFAULT_MAX_LENGTH_CAP)
    if name in ("rolling", "lm-eval"):
        max_length = config.max_length or cap
        stride = config.stride or max_length
        _check_max_length(max_length, positions)
        check_window_params(max_length, stride)
        return Plan(
            name=name,
            max_length=max_length,
            stride=stride,
            prefix_token=resolve_prefix_token(tokenizer, config.prefix_token),
            separator=config.concat,
            special_tokens=False,
            words=lm_eval_words if name == "lm-eval" else split_words,
        )
    separator = config.concat or DEFAULT_SEPARATOR
    if name == "hf-guide":
        max_length = config.max_length or min(1024, positions or 1024)
        stride = config.stride or max(1, max_length // 2)
        _check_max_length(max_length, positions)
        check_window_params(max_length, stride)
        return Plan(
            name=name, max_length=max_length, stride=stride, prefix_token=None, separator=separator,
            special_tokens=True, scores_every_token=stride < max_length,
        )
    max_length = config.max_length or 512  # llama-cpp
    _check_max_length(max_length, positions)
    bos = tokenizer.bos_token_id if _adds_bos(tokenizer) else None
    return Plan(
        name=name, max_length=max_length, stride=None, prefix_token=bos, separator=separator,
        special_tokens=False, scores_every_token=False, chunk_bos=bos, first_scored=max_length // 2 + 1,
    )
