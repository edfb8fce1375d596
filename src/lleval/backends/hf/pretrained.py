"""transformers' ``from_pretrained``, called the one way lleval calls it: with the spec's
revision, its remote-code choice and the hub decision as a value, every failure one
`ModelLoadError` line. On it: the tokenizer and config of a located model, and the
tokenizer alone, which the served backend reuses for a model behind a server.

This is the only module that calls ``from_pretrained``; transformers is imported inside
the functions that need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lleval.backends.base import ModelSpec
from lleval.backends.hf.locate import locate
from lleval.errors import ModelLoadError
from lleval.hub import HubAccess, first_line, hub_access
from lleval.quiet import quiet_transformers

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")


def _load_tokenizer(location: str, gguf_file: str | None, source: str, spec: ModelSpec,
                    folder: str = "model folder") -> Any:
    from transformers import AutoTokenizer

    if source == "local" and not any((Path(location) / name).exists() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{folder} {spec.name} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save it "
            "there with tokenizer.save_pretrained(folder)."
        )
    what = f"a tokenizer for {spec.name or location}"
    tokenizer = from_pretrained(AutoTokenizer, what, location, gguf_file, source, spec)
    if len(tokenizer) == 0:
        raise ModelLoadError(f"the tokenizer of {spec.name or location} has an empty vocabulary.")
    return tokenizer


def load_tokenizer(name: str) -> Any:
    """The tokenizer alone of a hub id, a folder (a model's, or one that holds only a tokenizer:
    no config.json needed) or a ``.gguf`` file (a served model's)."""
    spec = ModelSpec(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_tokenizer(str(path.resolve()), None, "local", spec, "tokenizer folder")
    location, gguf_file, source, _display = locate(spec)
    return _load_tokenizer(location, gguf_file, source, spec)


def from_pretrained(
    loader: Any, what: str, location: str, gguf_file: str | None, source: str, spec: ModelSpec, **extra: Any
) -> Any:
    """``loader.from_pretrained`` with the spec's revision and remote-code choice; any failure
    (loaders raise many kinds: struct.error on a truncated GGUF) becomes one `ModelLoadError` line."""
    # a local model needs no network, unless its remote code names another hub repository
    local = HubAccess(True, "local") if not spec.trust_remote_code else hub_access()
    access = hub_access() if source == "hub" else local
    try:
        with quiet_transformers():  # no "Loading weights" bar on a caller's stderr
            return loader.from_pretrained(
                location, revision=spec.revision, trust_remote_code=spec.trust_remote_code, gguf_file=gguf_file,
                local_files_only=access.offline, **extra
            )
    except Exception as exc:
        corrupt = " The .gguf file may be truncated or corrupted: download it again." if gguf_file else ""
        hint = " " + access.hint() if source == "hub" else ""
        raise ModelLoadError(f"cannot load {what}: {first_line(exc)}.{corrupt}{hint}") from exc


def tokenizer_and_config(location: str, gguf_file: str | None, source: str, spec: ModelSpec, display: str) -> Any:
    """The tokenizer and the model config of a located model (no weights)."""
    from transformers import AutoConfig

    tokenizer = _load_tokenizer(location, gguf_file, source, spec)
    return tokenizer, from_pretrained(AutoConfig, f"the model config of {display}", location, gguf_file, source, spec)


def max_positions(config: Any) -> int | None:
    """The longest input a model config says the model was built for, or None."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
