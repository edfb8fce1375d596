"""Tokenizer helpers: encoding without special tokens, the prefix token, fingerprints."""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from lleval.errors import ConfigError


def resolve_prefix_token(tokenizer: Any, option: str) -> int | None:
    """The token each document's first token is predicted from.

    ``auto``: BOS when the tokenizer has one, else EOS. ``none``: no prefix
    (the first token of each document is then not scored). An integer string
    names a token id, which must exist in the vocabulary.
    """
    if option == "none":
        return None
    if option == "auto":
        for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        raise ConfigError(
            "the tokenizer has neither a BOS nor an EOS token: pass --prefix-token with a token "
            "id, or --prefix-token none to leave each document's first token unscored."
        )
    token = int(option)  # EvalConfig.validate accepts only auto, none or digits
    if not 0 <= token < len(tokenizer):
        raise ConfigError(
            f"--prefix-token {token} is not in the tokenizer's vocabulary (0..{len(tokenizer) - 1})."
        )
    return token


# Texts longer than this are tokenized a piece at a time: a fast tokenizer needs
# several hundred bytes per character of working memory (offsets, encodings),
# so a 10-million-character document at once can take gigabytes.
PIECE_CHARS = 1_000_000
# The pieces of a long text overlap by 4 x this (at most a quarter of half a piece): where
# two pieces meet, their ids are spliced at a token both agree on, at least this far from
# either piece's edge.
MARGIN_CHARS = 2_048


def _cut(text: str, start: int, piece_chars: int, least: int = 1) -> int:
    """Where a piece of ``text`` from ``start`` ends: ``piece_chars`` on, or earlier just before
    a whitespace character (where pre-tokenizers split anyway), but not before ``start +
    least``; with no whitespace there it is cut where it is."""
    cut = back = start + piece_chars
    while back >= start + least and not text[back].isspace():
        back -= 1
    return back if back >= start + least else cut


def split_for_tokenizing(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """Cut ``text`` into pieces of about ``piece_chars``, each cut just before a whitespace
    character (`_cut`); `encode` tokenizes a long text in such pieces, overlapped."""
    pieces, start = [], 0
    while len(text) - start > piece_chars:
        cut = _cut(text, start, piece_chars)
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


@dataclass(frozen=True)
class _Piece:
    """The tokens of ``text[lo:hi]``: ids, and the character (in the whole text) each starts at."""

    lo: int
    hi: int
    ids: list[int]
    starts: list[int]


def _tokenize_piece(tokenizer: Any, text: str, lo: int, hi: int) -> _Piece:
    encoding = tokenizer(text[lo:hi], add_special_tokens=False, return_offsets_mapping=True)
    return _Piece(lo, hi, list(encoding["input_ids"]), [lo + start for start, _ in encoding["offset_mapping"]])


def _junction(a: _Piece, b: _Piece, margin: int) -> tuple[int, int] | None:
    """Where to splice two overlapping pieces: ``(i, j)`` such that ``a``'s tokens before ``i``
    and ``b``'s from ``j`` on are the whole text's. Token ``j`` of ``b`` starts a stretch of at
    least ``margin / 2`` characters over which both pieces give the same tokens (ids and
    starts), at least ``margin`` characters from ``b``'s start (where a SentencePiece
    tokenizer adds its dummy prefix) and from ``a``'s end (where a word is cut): both
    tokenizations agree there, away from their edges, so both are the whole text's. None
    where no such token exists (then the text is tokenized whole)."""
    stretch = max(1, margin // 2)
    first, last = b.lo + margin, a.hi - margin - stretch
    for j in range(bisect.bisect_left(b.starts, first), len(b.starts)):
        start = b.starts[j]
        if start > last:
            return None
        if j and b.starts[j - 1] == start:
            continue  # a token that shares its start with the one before (bytes of one character)
        i = bisect.bisect_left(a.starts, start)
        if i == len(a.starts) or a.starts[i] != start:
            continue
        end_a, end_b = bisect.bisect_left(a.starts, start + stretch), bisect.bisect_left(b.starts, start + stretch)
        if a.ids[i:end_a] == b.ids[j:end_b] and a.starts[i:end_a] == b.starts[j:end_b]:
            return i, j
    return None


def _encode_long(tokenizer: Any, text: str, piece_chars: int,
                 offsets: bool = True) -> tuple[list[int], list[int]] | None:
    """The ids of ``text`` and (with ``offsets``, else an empty list) the character each starts
    at, as tokenizing it whole gives them, tokenized in overlapping pieces of about
    ``piece_chars`` (`_junction` splices each pair); None where a junction cannot be
    verified, or the tokenizer gives no offsets."""
    margin = max(1, min(piece_chars // 16, MARGIN_CHARS))
    half = piece_chars // 2  # a piece holds at least this: each step moves at least half - 4 margin on
    if 4 * margin >= half:
        return None  # pieces too small to overlap (a test's injected size)
    ids: list[int] = []
    starts: list[int] = []
    try:
        piece, taken = _tokenize_piece(tokenizer, text, 0, _cut(text, 0, piece_chars, half)), 0
        while piece.hi < len(text):
            lo = piece.hi - 4 * margin
            hi = len(text) if len(text) - lo <= piece_chars else _cut(text, lo, piece_chars, half)
            following = _tokenize_piece(tokenizer, text, lo, hi)
            junction = _junction(piece, following, margin)
            if junction is None or junction[0] < taken:
                return None
            ids += piece.ids[taken:junction[0]]
            starts += piece.starts[taken:junction[0]] if offsets else []
            piece, taken = following, junction[1]
    except NotImplementedError:  # a slow (Python) tokenizer gives no offsets
        return None
    return ids + piece.ids[taken:], starts + piece.starts[taken:] if offsets else []


def _encode_one(tokenizer: Any, text: str, piece_chars: int, offsets: bool) -> tuple[list[int], list[int] | None]:
    """The ids of one text (and with ``offsets`` the character each starts at): in pieces when
    it is longer than ``piece_chars`` (`_encode_long`), else, or where its pieces cannot be
    spliced with certainty, whole."""
    if len(text) > piece_chars:
        found = _encode_long(tokenizer, text, piece_chars, offsets)
        if found is not None:
            return found[0], found[1] if offsets else None
    if not offsets:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), None
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoding["input_ids"]), [start for start, _ in encoding["offset_mapping"]]


def encode(tokenizer: Any, texts: Sequence[str], piece_chars: int | None = None) -> list[list[int]]:
    """Token ids of each text, without special tokens (one batched call for short texts). A
    text longer than ``piece_chars`` (default `PIECE_CHARS`) is tokenized in overlapping pieces
    spliced where they agree, which gives the ids of the whole text: cutting it into plain
    pieces gained a token at each cut with a SentencePiece tokenizer (its dummy prefix)."""
    piece = PIECE_CHARS if piece_chars is None else piece_chars
    if not texts:
        return []
    if all(len(t) <= piece for t in texts):
        return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return [_encode_one(tokenizer, text, piece, offsets=False)[0] for text in texts]


def encode_with_starts(tokenizer: Any, texts: Sequence[str],
                       piece_chars: int | None = None) -> list[tuple[list[int], np.ndarray]]:
    """Like `encode`, with the character where each token starts in its text: ``(ids, starts)``
    per text (a long text is tokenized in the same overlapping pieces as `encode`)."""
    piece = PIECE_CHARS if piece_chars is None else piece_chars
    if all(len(t) <= piece for t in texts) and texts:
        batch = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [(list(ids), np.asarray([s for s, _ in offsets], dtype=np.int64))
                for ids, offsets in zip(batch["input_ids"], batch["offset_mapping"])]
    out = []
    for text in texts:
        ids, starts = _encode_one(tokenizer, text, piece, offsets=True)
        out.append((ids, np.asarray(starts, dtype=np.int64)))
    return out


def encode_with_owners(
    tokenizer: Any, texts: Sequence[str], separator: str, special_tokens: bool = False
) -> tuple[list[int], np.ndarray, list[int], np.ndarray]:
    """Tokenize ``separator.join(texts)`` once, and say which text each token belongs to.

    ``special_tokens`` adds the tokenizer's default special tokens (those get
    offset 0, so they belong to the first text).

    Returns ``(ids, owners, bytes_per_text, starts)``. A token belongs to the
    text its first character falls in; each separator counts as part of the
    text before it, in tokens and in bytes, so per-text rows add up to the
    stream's totals. ``starts`` is the character where each token starts,
    counted from the start of its own text.
    """
    stream = separator.join(texts)
    ends = np.cumsum([len(t) + len(separator) for t in texts])  # exclusive char ends
    encoding = tokenizer(stream, add_special_tokens=special_tokens, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    starts = np.asarray([start for start, _ in encoding["offset_mapping"]], dtype=np.int64)
    owners = np.minimum(np.searchsorted(ends, starts, side="right"), len(texts) - 1)
    sep_bytes = len(separator.encode("utf-8"))
    n_bytes = [len(t.encode("utf-8")) + sep_bytes for t in texts]
    if n_bytes:
        n_bytes[-1] -= sep_bytes
    text_starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return ids, owners.astype(np.int64), n_bytes, starts - text_starts[owners]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what decides the token ids: the full tokenizer definition when it
    is a fast tokenizer, else the vocabulary, plus the special tokens."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    specials = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
    }
    digest.update(json.dumps(specials, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()
