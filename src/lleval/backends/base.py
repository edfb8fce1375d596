"""What every source of log-probs must say: the backend seam.

A backend turns a `ModelSpec` (what the user named) into an `OpenedModel`
(located, its tokenizer and maximum length known, its weights not yet read,
so every flag that needs the tokenizer is checked before the slow part) and
then into a `LoadedModel`: a `TokenScorer` with the tokenizer that feeds it,
a `ModelInfo` for the report, and what it can compute (`capabilities`). The
orchestrator (`lleval.runner`) and the commands only ever see these types;
which backend serves a spec is decided in `lleval.backends.registry`.

No torch here: a backend imports what it needs when it loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from lleval.config import DEFAULT_API_KEY_ENV, DEFAULT_REQUEST_TIMEOUT
from lleval.errors import ConfigError

#: Bytes of float32 logits one slice of positions may hold: 128 MiB is 680
#: positions of SmolLM2's 49,152-token vocabulary, 131 of a 256,000-token one.
LOGITS_SLICE_BYTES = 128 * 1024 * 1024

#: The log-prob of each true token: every backend computes it.
TARGET_LOGPROBS = "target_logprobs"
#: Every log-prob of the vocabulary at a scored position, a slice at a time: KL
#: divergence, the true token's rank and the entropy need it.
FULL_VOCABULARY = "full_vocabulary"


def slice_positions(vocab: int, slice_bytes: int = LOGITS_SLICE_BYTES) -> int:
    """Positions per logits slice so one float32 slice holds at most ``slice_bytes``."""
    return max(1, slice_bytes // (4 * vocab))


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: a hub id, a local folder or a ``.gguf`` file."""

    name: str | None = None  # None: the built-in default
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | mps
    device_map: str | None = None  # auto | balanced | sequential: spread over visible devices
    cache: bool = True  # keep a converted .gguf for later runs (lleval.backends.model_cache)
    float32_head: bool = True  # a bf16/fp16 model projects to logits in float32 (see make_logits_slices)
    tokenizer: str | None = None  # a server's model: the tokenizer to load here
    served_model: str | None = None  # a server's model: which of those it serves
    api_key_env: str = DEFAULT_API_KEY_ENV  # a server's model: the variable holding its API key
    replicas: tuple[str, ...] = ()  # a server's model: more servers of it, sharing the windows
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT  # a server's model: seconds per request, retries included


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, for the report's ``model`` block."""

    name: str
    source: str  # builtin | gguf | local | hub
    revision: str | None
    sha256: str | None
    dtype: str
    device: str
    parameters: int
    max_positions: int | None
    device_map: dict[str, str] | None = None  # module -> device, when loaded with a device map
    cache: str | None = None  # .gguf only: hit | stored | miss (not stored) | off
    head_dtype: str | None = None  # dtype of the output projection and log-softmax, when not the model's
    notes: tuple[str, ...] = ()  # what loading met that the report must say (a model cache problem)
    server: dict[str, Any] | None = None  # a served model: url (no credentials), model, version, request style
    #: a local folder's weight files and config: (name, bytes, modification time in ns), a ``stat`` each,
    #: which a checkpoint records (`lleval.runner.fingerprint`); not part of the report
    files: tuple[tuple[str, int, int], ...] = ()


@dataclass
class LoadedModel:
    """A scorer with the tokenizer that feeds it, a description for the report, and what
    the batch planner needs to know of its device."""

    scorer: Any  # a lleval.engine.kernels.TokenScorer
    tokenizer: Any
    info: ModelInfo
    pad_id: int = 0
    model: Any = None  # the underlying model object, when there is one (scripts inspect it)
    slices: Any = None  # its LogitsSlices (full-vocabulary log-probs), when it has them
    vocab: int | None = None
    bytes_per_token: int | None = None  # activation working set per batch token, for --batch-size auto
    load_seconds: float = 0.0  # reading the tokenizer, config and weights (0 for a model handed in)
    accelerator: bool = False  # it runs on a GPU: batches are sized by that device's memory
    free_memory: Callable[[], int] | None = None  # bytes free on that device (None: unknown, the CPU rule)

    @property
    def name(self) -> str:
        """The model's display name."""
        return self.info.name

    @property
    def max_positions(self) -> int | None:
        """The longest input the model was built for, when its config says."""
        return self.info.max_positions

    @property
    def capabilities(self) -> frozenset[str]:
        """What it can compute: `TARGET_LOGPROBS` always, `FULL_VOCABULARY` with logits slices."""
        return frozenset({TARGET_LOGPROBS, *([FULL_VOCABULARY] if self.slices is not None else [])})

    def require(self, capability: str, what: str) -> None:
        """Refuse (`ConfigError`) what this model cannot compute, naming ``what`` needed it."""
        if capability not in self.capabilities:
            raise ConfigError(f"{what} needs every log-prob of the vocabulary, and {self.name} gives only the "
                              "log-prob of each true token: use a model lleval loads itself (a folder, a hub id "
                              "or a .gguf file).")

    def load(self) -> LoadedModel:
        """Already loaded: itself (so a model handed in stands where an `OpenedModel` does)."""
        return self


class OpenedModel(Protocol):
    """A model located, its tokenizer ready, its weights not read yet."""

    @property
    def name(self) -> str:
        """Its display name."""
        ...

    @property
    def tokenizer(self) -> Any:
        """The tokenizer that feeds it."""
        ...

    @property
    def max_positions(self) -> int | None:
        """The longest input it takes, when known."""
        ...

    def load(self) -> LoadedModel:
        """Read the weights and build the scorer (the slow part)."""
        ...


class Backend(Protocol):
    """A way to get log-probs: which specs it serves, and how it opens them."""

    name: str

    def claims(self, spec: ModelSpec) -> bool:
        """Whether this backend serves ``spec`` (asked in registration order)."""
        ...

    def open(self, spec: ModelSpec) -> OpenedModel:
        """Locate the model and load its tokenizer; every failure a typed error that says what to do."""
        ...


def with_token_stats(loaded: LoadedModel) -> LoadedModel:
    """``loaded`` with a scorer that also returns each token's rank and the entropy
    (``--token-stats``), in slices half as long (it holds two (n, V) tensors)."""
    return with_columns(loaded, True, (), "--token-stats")


def with_columns(loaded: LoadedModel, stats: bool, extra: tuple[str, ...], what: str) -> LoadedModel:
    """``loaded`` with a scorer that also returns rank and entropy (``stats``) and the further
    columns ``extra`` (of `lleval.engine.kernels.COLUMNS`), all from one pass over each slice,
    in slices half as long (it holds two (n, V) tensors); ``what`` names the flags that asked."""
    from lleval.engine.kernels import scorer_from_slices

    loaded.require(FULL_VOCABULARY, what)
    if loaded.vocab is None:
        raise ConfigError(f"{what} needs the vocabulary size of {loaded.name}, which its backend did not give.")
    per_slice = slice_positions(loaded.vocab, LOGITS_SLICE_BYTES // 2)
    return dataclasses.replace(loaded, scorer=scorer_from_slices(loaded.slices, per_slice, stats=stats, extra=extra))
