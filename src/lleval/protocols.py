"""Scoring protocols: how texts become token sequences and windows.

Each protocol is a `Plan`: resolved window parameters, a generator of
`Unit`s for the engine, and a ``describe()`` block for the report that lists
every choice. All of them run through the same engine (`lleval.scoring`).

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
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from lleval.config import DEFAULT_MAX_LENGTH_CAP, DEFAULT_SEPARATOR, EvalConfig
from lleval.data import Document
from lleval.errors import ConfigError, DataError
from lleval.scoring import Unit
from lleval.tokenization import encode, encode_with_owners, resolve_prefix_token
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
class Row:
    """What the report needs of one document besides its sums."""

    index: int
    bytes: int
    words: int
    text_sha: str = ""  # sha256 of the text, for resuming checkpoints


@dataclass
class Plan:
    """A protocol resolved against a config and a tokenizer."""

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
    rows: list[Row] = field(default_factory=list)
    stream_tokens: int = 0
    dropped_tokens: int = 0

    def units(self, docs: Iterator[Document], tokenizer: Any) -> Iterator[Unit]:
        """The engine's input; fills ``rows`` as documents are read."""
        if self.name in ("rolling", "lm-eval") and self.separator is None:
            return self._document_units(docs, tokenizer)
        return self._stream_units(docs, tokenizer)

    def _document_units(self, docs: Iterator[Document], tokenizer: Any) -> Iterator[Unit]:
        head = [] if self.prefix_token is None else [self.prefix_token]
        assert self.stride is not None
        while group := list(itertools.islice(docs, TOKENIZE_GROUP)):
            for doc, ids in zip(group, encode(tokenizer, [d.text for d in group])):
                sequence = head + ids
                encoded = doc.text.encode("utf-8")
                self.rows.append(Row(doc.index, len(encoded), self.words(doc.text), _sha(encoded)))
                self.stream_tokens += len(sequence)
                spans = rolling_spans(len(sequence), self.max_length, self.stride)
                yield Unit(sequence, spans, [len(self.rows) - 1])

    def _stream_units(self, docs: Iterator[Document], tokenizer: Any) -> Iterator[Unit]:
        assert self.separator is not None
        texts = []
        for doc in docs:
            texts.append(doc.text)
            self.rows.append(Row(doc.index, 0, self.words(doc.text), _sha(doc.text.encode("utf-8"))))
        if not texts:
            return
        ids, owners, n_bytes = encode_with_owners(tokenizer, texts, self.separator, self.special_tokens)
        self.rows = [Row(row.index, size, row.words, row.text_sha) for row, size in zip(self.rows, n_bytes)]
        if self.prefix_token is not None:
            ids = [self.prefix_token] + ids
            owners = np.concatenate([np.zeros(1, dtype=np.int64), owners])
        self.stream_tokens = len(ids)
        spans = self._stream_spans(len(ids))
        scored = sum(s.n_scored for s in spans)
        self.dropped_tokens = len(ids) - scored
        yield Unit(ids, spans, list(range(len(texts))), owners, window_head=self.chunk_bos)

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

    def describe(self, tokenizer: Any, counts: bool = True) -> dict[str, Any]:
        """The report's ``protocol`` block: every choice this protocol made (and, with
        ``counts``, how many tokens the stream had and how many went unscored)."""
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
        if counts:
            block["stream_tokens"] = self.stream_tokens
            block["unscored_tokens"] = self.dropped_tokens
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
            if counts:
                block["chunks"] = self.stream_tokens // self.max_length
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
