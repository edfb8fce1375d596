"""Regenerate tests/assets/tiny-tokenizer: a 320-token byte-level BPE for fast tests.

Trained on the built-in sample corpus, with ``<|endoftext|>`` as BOS, EOS and
pad. Byte-level, so any UTF-8 text encodes without unknown tokens. Run from
the repository root: ``python scripts/make_tiny_tokenizer.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "assets" / "tiny-tokenizer"
SPECIAL = "<|endoftext|>"


def main() -> None:
    texts = [
        json.loads(line)["text"]
        for line in (ROOT / "src" / "lleval" / "samples" / "prose.jsonl").read_text().splitlines()
    ]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL
    )
    OUT.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(OUT)
    print(f"wrote {OUT} ({len(fast)} tokens)")


if __name__ == "__main__":
    main()
