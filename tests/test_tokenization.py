"""A document longer than `PIECE_CHARS` is tokenized in pieces (memory), and must still get the
ids of the whole text: with a SentencePiece tokenizer (Llama-2's dummy prefix ``▁``) a plain
cut gained a token at every cut (424,027 tokens where the whole text gives 424,026). The
expected ids are always the tokenizer's own on the whole text."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lleval.plan import tokenization
from lleval.plan.tokenization import encode, encode_with_starts, split_for_tokenizing

TINY_TOKENIZER = Path(__file__).parent / "assets" / "tiny-tokenizer"
WORDS = ["the", "cat", "sat", "on", "mat", "and", "dog", "ran", "far", "away", "x1", "42", "über", "日本", "naïve"]
PIECE = 400  # characters: a document of a few thousand is cut a dozen times


def _corpus() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(200)]


def _llama2_style() -> Any:
    """Llama-2's tokenizer as transformers builds it (legacy): a ``▁`` prepended to the text
    and every space made ``▁``, then BPE with byte fallback."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    return tok


def _metaspace_unigram(scheme: str) -> Any:
    """A SentencePiece Unigram model behind a Metaspace pre-tokenizer (``prepend_scheme``
    ``first``: a ``▁`` before the text's first word only; ``always``: before every piece)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<s>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def _tokenizer(kind: str) -> Any:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if kind == "byte-level BPE":
        return AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    raw = _llama2_style() if kind == "llama-2" else _metaspace_unigram(kind.split()[-1])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>")


KINDS = ["llama-2", "metaspace first", "metaspace always", "byte-level BPE"]


def _texts() -> dict[str, str]:
    rng = random.Random(1)
    return {
        "words": " ".join(rng.choice(WORDS) + ("\n" if rng.random() < 0.1 else "") for _ in range(1200)),
        "no whitespace (CJK)": "".join(rng.choice(["日本", "語", "の", "文", "章", "。"]) for _ in range(3000)),
        "one long word": "ab" * 2500,
        "a long run of spaces": "a" + " " * 3000 + "b c  d",
        "mixed": "".join(rng.choice("ab c\n\té日") for _ in range(4000)),
        "leading spaces": "   " + " ".join(rng.choice(WORDS) for _ in range(800)),
    }


def _whole(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoding["input_ids"]), [start for start, _ in encoding["offset_mapping"]]


@pytest.fixture(scope="module", params=KINDS)
def tokenizer(request: pytest.FixtureRequest) -> Any:
    return _tokenizer(request.param)


@pytest.mark.parametrize("name", list(_texts()))
def test_a_long_text_in_pieces_gets_the_ids_of_the_whole_text(tokenizer: Any, name: str) -> None:
    text = _texts()[name]
    ids, starts = _whole(tokenizer, text)
    assert encode(tokenizer, [text, "short"], piece_chars=PIECE) == [ids, _whole(tokenizer, "short")[0]]
    (got_ids, got_starts), _short = encode_with_starts(tokenizer, [text, "short"], piece_chars=PIECE)
    assert got_ids == ids and got_starts.tolist() == starts


def test_plain_cuts_gained_a_token_per_cut_with_a_sentencepiece_tokenizer() -> None:
    """What the test above guards against: cut before whitespace and tokenized piece by piece,
    Llama-2's tokenizer adds its dummy prefix at every cut."""
    tokenizer = _tokenizer("llama-2")
    text = _texts()["words"]
    plain = [i for piece in split_for_tokenizing(text, PIECE)
             for i in tokenizer(piece, add_special_tokens=False)["input_ids"]]
    whole = _whole(tokenizer, text)[0]
    assert len(plain) > len(whole) and len(encode(tokenizer, [text], piece_chars=PIECE)[0]) == len(whole)


class _ContextTokenizer:
    """A tokenizer whose every id depends on the whole text given (its length): no two pieces
    ever agree, so a long text must be tokenized whole."""

    def __call__(self, text: Any, add_special_tokens: bool = False, return_offsets_mapping: bool = False) -> Any:
        if isinstance(text, list):
            rows = [self(t, add_special_tokens, return_offsets_mapping) for t in text]
            return {key: [row[key] for row in rows] for key in rows[0]}
        out: dict[str, Any] = {"input_ids": [(ord(c) + len(text)) % 1000 for c in text]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(k, k + 1) for k in range(len(text))]
        return out


class _SlowTokenizer(_ContextTokenizer):
    """A Python tokenizer: no offsets."""

    def __call__(self, text: Any, add_special_tokens: bool = False, return_offsets_mapping: bool = False) -> Any:
        if return_offsets_mapping:
            raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")
        return {"input_ids": [ord(c) % 1000 for c in text] if isinstance(text, str)
                else [[ord(c) % 1000 for c in t] for t in text]}


@pytest.mark.parametrize("fake", [_ContextTokenizer(), _SlowTokenizer()], ids=["no agreement", "no offsets"])
def test_pieces_that_cannot_be_spliced_with_certainty_fall_back_to_the_whole_text(fake: Any) -> None:
    text = "x y " * 600
    assert encode(fake, [text], piece_chars=PIECE) == [fake(text)["input_ids"]]


class _Spy:
    """A tokenizer that records the length of every text it is given."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.lengths = tokenizer, []

    def __call__(self, text: Any, **kwargs: Any) -> Any:
        self.lengths += [len(t) for t in ([text] if isinstance(text, str) else text)]
        return self.tokenizer(text, **kwargs)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def test_the_planner_gives_a_long_document_its_whole_text_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end through the protocol's units, the threshold (`PIECE_CHARS`) injected small:
    the document is tokenized in pieces no longer than it (it was not: the cut read the
    threshold when it was defined), and the sequence it is scored on is BOS and the whole
    text's ids, with every token's character."""
    from lleval.config import EvalConfig
    from lleval.data.sources import Document
    from lleval.plan.protocols import plan

    tokenizer = _tokenizer("llama-2")
    monkeypatch.setattr(tokenization, "PIECE_CHARS", PIECE)
    text = _texts()["words"]
    ids, starts = _whole(tokenizer, text)
    protocol = plan(EvalConfig(max_length=64), tokenizer, 128)
    for keep_text in (False, True):
        spy = _Spy(tokenizer)
        (unit,) = protocol.units(iter([Document(0, text)]), spy, keep_text=keep_text)
        assert spy.lengths and max(spy.lengths) <= PIECE < len(text)
        assert list(unit.tokens) == [tokenizer.bos_token_id] + ids
        if keep_text:
            assert np.array_equal(unit.char_starts, [-1] + starts)
