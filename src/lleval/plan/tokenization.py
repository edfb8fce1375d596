"""Tokenizer helpers: encoding without special tokens, the prefix token, fingerprints."""

from __future__ import annotations

import hashlib
import json
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


def split_for_tokenizing(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """Cut ``text`` into pieces of about ``piece_chars``, each cut just before a whitespace
    character, where pre-tokenizers split anyway, so the ids equal one-piece tokenizing
    for whitespace-splitting tokenizers. A run with no whitespace is cut where it is."""
    pieces, start = [], 0
    while len(text) - start > piece_chars:
        cut = start + piece_chars
        back = cut
        while back > start and not text[back].isspace():
            back -= 1
        cut = back if back > start else cut
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (one batched call for short texts)."""
    if not texts:
        return []
    if all(len(t) <= PIECE_CHARS for t in texts):
        return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    out = []
    for text in texts:
        ids: list[int] = []
        for piece in split_for_tokenizing(text):
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
        out.append(ids)
    return out


def encode_with_starts(tokenizer: Any, texts: Sequence[str]) -> list[tuple[list[int], np.ndarray]]:
    """Like `encode`, with the character where each token starts in its text: ``(ids, starts)``
    per text (a long text is tokenized in the same pieces as `encode`, so the ids are equal)."""
    if all(len(t) <= PIECE_CHARS for t in texts) and texts:
        batch = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [(list(ids), np.asarray([s for s, _ in offsets], dtype=np.int64))
                for ids, offsets in zip(batch["input_ids"], batch["offset_mapping"])]
    out = []
    for text in texts:
        ids: list[int] = []
        starts: list[int] = []
        offset = 0
        for piece in split_for_tokenizing(text) if len(text) > PIECE_CHARS else [text]:
            encoding = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
            ids.extend(encoding["input_ids"])
            starts.extend(offset + start for start, _ in encoding["offset_mapping"])
            offset += len(piece)
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
