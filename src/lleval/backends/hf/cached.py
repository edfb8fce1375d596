"""The transformers backend's side of the model cache: a ``.gguf`` file is converted to a
transformers model once and kept (`lleval.backends.model_cache`), so later runs load the
converted entry and skip a conversion that takes a minute.

Here: the check of a ``.gguf`` file's entry when the model is opened, the store of a fresh
conversion, and the notes (one warning each, the same line in the report) for an entry
that was damaged or cannot be written.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from lleval.backends.base import ModelSpec
from lleval.errors import ConfigError
from lleval.quiet import quiet_transformers


def cached_conversion(spec: ModelSpec, location: str, gguf_file: str | None, dtype: Any) -> tuple[Any, ...]:
    """For a .gguf file: its sha256, the check of its cache entry (None when the cache is
    off) and what is known so far: ``checking`` (a plausible entry, its hashes being
    checked), ``miss`` or ``off``. For other models: Nones."""
    from lleval.backends.model_cache import CacheEntry, cache_root, source_sha256, sweep

    if gguf_file is None:
        if not spec.cache:
            raise ConfigError("--no-model-cache bypasses the cache of converted .gguf files, and this model is "
                              "not one (it loads from its own files): drop --no-model-cache.")
        return None, None, None
    root = cache_root() if spec.cache else None
    sha = source_sha256(Path(location) / gguf_file, root)
    if root is None:
        return sha, None, "off"
    sweep(root)  # what runs that died left, at every open: not only when one more entry is stored
    # one entry per file, in float32: a bf16/fp16 run loads it in its dtype (see `backend._load_model`)
    check = CacheEntry(root, sha, "float32").verify()
    return sha, check, "checking" if check.plausible else "miss"


def damage_notes(check: Any, display: str) -> tuple[str, ...]:
    """A cache entry that was there but is rebuilt costs a whole conversion (SmolLM2: 5 s
    become 50 s): one warning now, and the same line in the report's notes. One of an
    older cache format is said so, not called damaged."""
    from lleval.backends.model_cache import CACHE_FORMAT

    if check is None or (check.damage is None and check.outdated is None):
        return ()
    why = (f"was damaged ({check.damage})" if check.damage is not None else
           f"was written by an older lleval (cache format {check.outdated}; this one writes {CACHE_FORMAT})")
    note = (f"the model cache entry {check.entry.folder} {why}: it was moved aside and "
            f"{display} is converted again, as slow as a first run.")
    warnings.warn(note, stacklevel=2)
    return (note,)


def store_notes(cache: Any, model: Any, tokenizer: Any, display: str) -> tuple[str | None, tuple[str, ...]]:
    """Keep a converted .gguf (a cache miss) in its cache entry ``cache``: its ``cache``
    status and the note of a cache that cannot be written (one warning; otherwise every
    run converts again, silently)."""
    with quiet_transformers():  # no "Writing model shards" bar
        problem = cache.store(model, tokenizer)
    if problem is None:
        return "stored", ()
    note = (f"the model cache {cache.root} cannot be written ({problem}): {display} was converted "
            "but not kept, so every run converts it again. Set LLEVAL_MODEL_CACHE to a folder you can write, "
            "or pass --no-model-cache.")
    warnings.warn(note, stacklevel=2)
    return "miss", (note,)
