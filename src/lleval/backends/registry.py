"""Which backend serves a model: the one place backends are registered.

A new way to get log-probs is a module in this folder implementing
`lleval.backends.base.Backend`, plus one line in `BACKENDS`. Backends are
asked in order; the Hugging Face / GGUF loader, which serves any path or hub
id, comes last.
"""

from __future__ import annotations

from lleval.backends import served
from lleval.backends.hf import backend as hf
from lleval.backends.base import Backend, LoadedModel, ModelSpec, OpenedModel
from lleval.errors import ConfigError

BACKENDS: tuple[Backend, ...] = (served.BACKEND, hf.BACKEND)


def backend_for(spec: ModelSpec) -> Backend:
    """The first registered backend that claims ``spec``."""
    for backend in BACKENDS:
        if backend.claims(spec):
            return backend
    raise ConfigError(
        f"no backend serves {spec.name}: lleval loads a model folder, a .gguf file, a hub id or the URL of an "
        f"OpenAI-compatible server ({', '.join(b.name for b in BACKENDS)})."
    )


def open_model(spec: ModelSpec) -> OpenedModel:
    """The model ``spec`` names, opened by its backend (tokenizer ready, weights not read)."""
    return backend_for(spec).open(spec)


def load_model(spec: ModelSpec) -> LoadedModel:
    """`open_model`, then its weights: every failure a typed error that says what to do."""
    return open_model(spec).load()
