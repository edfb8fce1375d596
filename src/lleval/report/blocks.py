"""The header every report of a scoring run opens with (``score`` and ``kld`` alike): who
scored what, how, when and on what machine, as typed blocks built here once.

Each block (model, tokenizer, dataset, protocol, timing) is a frozen dataclass:
``to_dict()`` is its JSON (schema version 1, key for key and in the order lleval
has always written it), ``from_dict()`` reads that back. Keys a block does not
name (the schema allows more: llama-cpp's ``chunk_bos`` and ``chunks``, the
fields of later versions) are kept in ``extra``, and a block read from a dict
writes its keys in the order it read them, so a report read and written again is
the same text. A block is also a read-only mapping of its JSON
(``report.model["dtype"]``), as the plain dicts it replaces were.

Facts a reader of a report would otherwise re-derive from a key's string value
(does it have per-byte metrics? llama.cpp's error estimate?) are properties of
`ProtocolBlock`, decided in one place.
"""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Iterable, Iterator, Mapping, TypeVar

from lleval.errors import OutputError, ReportError
from lleval.report.schema import SCHEMA_VERSION

AnyBlock = TypeVar("AnyBlock", bound="Block")


@dataclass(frozen=True, eq=False)
class Block(Mapping[str, Any]):
    """A typed header block; equal to another block, or a dict, with the same JSON."""

    #: the block's name in the report (``model``): its error messages say it
    NAME: ClassVar[str] = "block"
    #: the keys this block does not name, in the order read
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    #: the order of the keys of the dict the block was read from (empty: its fields' order,
    #: then ``extra``); a named field left out of it was absent from that dict
    order: tuple[str, ...] = field(default=(), kw_only=True, repr=False)

    @classmethod
    def named(cls) -> tuple[str, ...]:
        """The JSON keys this block has fields for, in their JSON order."""
        return tuple(f.name for f in fields(cls) if f.name not in ("extra", "order"))

    def to_dict(self) -> dict[str, Any]:
        """The block's JSON."""
        values = {name: getattr(self, name) for name in self.named()}
        values.update(self.extra)
        return {key: values[key] for key in self.order} if self.order else values

    @classmethod
    def from_dict(cls: type[AnyBlock], data: Mapping[str, Any]) -> AnyBlock:
        """Read a block's JSON back (a report's reader checks it against the schema first);
        a required key it lacks is a `ReportError`."""
        names = set(cls.named())
        required = [f.name for f in fields(cls) if f.name in names and f.default is MISSING
                    and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ReportError(f"the {cls.NAME} block lacks {', '.join(map(repr, missing))}.")
        return cls(**{k: v for k, v in data.items() if k in names},
                   extra={k: v for k, v in data.items() if k not in names}, order=tuple(data))

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(frozen=True, eq=False, kw_only=True)
class ModelBlock(Block):
    """The model scored (or kld's base): where it came from, exactly which, and how it ran."""

    NAME: ClassVar[str] = "model"
    name: str
    source: str  # builtin | gguf | local | hub
    revision: str | None
    sha256: str | None
    dtype: str
    device: str
    parameters: int
    max_positions: int | None
    device_map: dict[str, Any] | None
    cache: str | None = None  # the model cache: hit | stored | miss | off
    head_dtype: str | None = None  # the LM head's dtype (float32 over a bf16 model)


@dataclass(frozen=True, eq=False, kw_only=True)
class TokenizerBlock(Block):
    """The tokenizer: a different ``fingerprint`` makes per-token numbers incomparable."""

    NAME: ClassVar[str] = "tokenizer"
    name: str
    vocab_size: int
    fingerprint: str
    bos_token_id: int | None
    eos_token_id: int | None


@dataclass(frozen=True, eq=False, kw_only=True)
class DatasetBlock(Block):
    """The texts scored: a different ``fingerprint`` means other texts."""

    NAME: ClassVar[str] = "dataset"
    spec: str
    config: str | None
    split: str
    text_field: str
    sample_by: str
    limit: int | None
    streaming: bool
    rows: int
    documents: int
    skipped_empty: int
    fingerprint: str


@dataclass(frozen=True, eq=False, kw_only=True)
class ProtocolBlock(Block):
    """How texts became scored tokens (`lleval.plan.protocols.Plan.describe`, with a run's
    token counts)."""

    NAME: ClassVar[str] = "protocol"
    name: str  # rolling | lm-eval | hf-guide | llama-cpp
    max_length: int
    stride: int | None
    prefix_token: int | None
    prefix_token_text: str | None = None
    concat: str | None
    special_tokens: bool
    first_token_scored: bool
    word_count: str
    scores_every_token: bool
    windows: str
    stream_tokens: int
    unscored_tokens: int

    @property
    def has_per_byte_metrics(self) -> bool:
        """Whether bits per byte, byte and word perplexity mean anything: not where the
        protocol leaves tokens unscored (llama-cpp, hf-guide with S = L), whose
        log-likelihood covers only part of the bytes and words."""
        return self.scores_every_token

    @property
    def has_llamacpp_error(self) -> bool:
        """Whether the report adds llama.cpp's perplexity error estimate (llama-cpp only)."""
        return self.name == "llama-cpp"

    def summary(self) -> str:
        """One line naming the protocol's choices, for rendered tables: the prefix token by its
        text (``prefix=<|im_start|> (id 1)``), which says more than its id alone."""
        window = f"L={self.max_length}" + (f", S={self.stride}" if self.stride else "")
        return f"{self.name}: {window}, prefix={self.prefix_shown}, concat={self.concat is not None}"

    @property
    def prefix_shown(self) -> str:
        """The prefix token as a reader knows it: its text and id, the id alone when its text
        is unknown, or ``none``."""
        if self.prefix_token is None:
            return "none"
        text = self.prefix_token_text
        if text:
            shown = text if text.isprintable() and text.strip() == text else repr(text)  # "\n" as '\n'
            return f"{shown} (id {self.prefix_token})"
        return f"id {self.prefix_token}"


@dataclass(frozen=True, eq=False, kw_only=True)
class TimingBlock(Block):
    """How long the run took, and how the engine batched it."""

    NAME: ClassVar[str] = "timing"
    seconds: float
    load_seconds: float
    scoring_seconds: float
    tokens_per_second: float
    windows: int
    batches: int
    padding_share: float
    batching: dict[str, Any] | None
    out_of_memory_splits: int


#: the typed blocks of `ReportHeader`, by field
HEADER_BLOCKS: dict[str, type[Block]] = {"model": ModelBlock, "tokenizer": TokenizerBlock, "dataset": DatasetBlock,
                                         "protocol": ProtocolBlock, "timing": TimingBlock}


@dataclass
class ReportHeader:
    """What every report of a scoring run says besides its numbers: who scored what, how,
    when and on what machine. `Report` (``score``) and `KLReport` (``kld``) extend it.
    A block given as a plain dict (``Plan.counted`` builds the protocol's) is read with
    its ``from_dict``."""

    lleval_version: str
    created: str
    complete: bool
    model: ModelBlock
    tokenizer: TokenizerBlock
    dataset: DatasetBlock
    protocol: ProtocolBlock
    timing: TimingBlock
    environment: dict[str, Any]
    distributed: dict[str, Any] | None  # world size and backend of a data-parallel run
    notes: list[str]
    #: every setting not left at its default, with its origin (`EvalConfig.provenance`)
    settings: dict[str, Any] = field(default_factory=dict, kw_only=True)
    #: outputs the library owns (``--tokens``, ``--html``) that could not be written; the
    #: caller still writes its own (``-o``) and reports these. Not part of the JSON.
    failed_outputs: list[OutputError] = field(default_factory=list, kw_only=True, repr=False, compare=False)
    #: the ``--html`` reducer (`lleval.reducers.samples.DocumentSamples`: samples and snippets) of
    #: a run that kept them, for a page another writes (a suite's). Not part of the JSON.
    page_samples: Any = field(default=None, kw_only=True, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, kind in HEADER_BLOCKS.items():
            if not isinstance(getattr(self, name), kind):
                setattr(self, name, kind.from_dict(getattr(self, name)))

    def header_dict(self, kind: str) -> dict[str, Any]:
        """The shared part of ``to_dict()``, opening with ``schema_version`` and ``kind``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "lleval_version": self.lleval_version,
            "created": self.created,
            "complete": self.complete,
            "model": self.model.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "dataset": self.dataset.to_dict(),
            "protocol": self.protocol.to_dict(),
            "timing": self.timing.to_dict(),
            "environment": dict(self.environment),
            "distributed": None if self.distributed is None else dict(self.distributed),
            "notes": list(self.notes),
            "settings": {name: dict(value) for name, value in self.settings.items()},
        }

    @staticmethod
    def fields_from_dict(data: dict[str, Any]) -> dict[str, Any]:
        """The header's fields, read back from a report's JSON (checked by its reader)."""
        blocks = {name: kind.from_dict(data[name]) for name, kind in HEADER_BLOCKS.items()}
        return {"lleval_version": data["lleval_version"], "created": data["created"], "complete": data["complete"],
                **blocks, "environment": dict(data["environment"]),
                "distributed": None if data["distributed"] is None else dict(data["distributed"]),
                "notes": list(data["notes"]), "settings": dict(data.get("settings", {}))}


def now() -> str:
    """The ``created`` time stamp: UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def model_block(info: Any) -> ModelBlock:
    """The report's ``model`` block, from a `lleval.backends.base.ModelInfo`."""
    return ModelBlock(name=info.name, source=info.source, revision=info.revision, sha256=info.sha256,
                      dtype=info.dtype, device=info.device, parameters=info.parameters,
                      max_positions=info.max_positions, device_map=info.device_map, cache=info.cache,
                      head_dtype=info.head_dtype or info.dtype,
                      extra={"server": dict(info.server)} if getattr(info, "server", None) else {})


def tokenizer_block(tokenizer: Any, name: str) -> TokenizerBlock:
    """The report's ``tokenizer`` block."""
    from lleval.plan.tokenization import tokenizer_fingerprint

    return TokenizerBlock(name=name, vocab_size=len(tokenizer), fingerprint=tokenizer_fingerprint(tokenizer),
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def dataset_block(spec: Any, stats: Any, documents: int) -> DatasetBlock:
    """The report's ``dataset`` block, from a `lleval.data.spec.DataSpec` and its `DataStats`;
    with ``--sample``, its ``sample``: the rows asked for, the seed that drew them and the
    rows they were drawn from (absent otherwise, so other reports keep their bytes)."""
    from lleval.data.spec import BUILTIN_DATASET, describe_split

    sample = getattr(spec, "sample", None)
    extra = {} if sample is None else {"sample": {"rows": sample, "seed": spec.seed,
                                                  "from_rows": getattr(stats, "sampled_from", None)}}
    return DatasetBlock(spec=spec.dataset or BUILTIN_DATASET, config=spec.dataset_config, split=describe_split(spec),
                        text_field=spec.text_field, sample_by=spec.sample_by, limit=spec.limit,
                        streaming=spec.streaming, rows=stats.rows, documents=documents,
                        skipped_empty=stats.skipped_empty, fingerprint=stats.fingerprint(), extra=extra)


def timing_block(total_seconds: float, load_seconds: float, scoring_seconds: float, tokens: int,
                 engine: Any, batching: Any) -> TimingBlock:
    """The report's ``timing`` block, from the engine's `EngineStats` and the `Batching` used."""
    return TimingBlock(
        seconds=total_seconds,
        load_seconds=load_seconds,
        scoring_seconds=scoring_seconds,
        tokens_per_second=tokens / scoring_seconds if scoring_seconds > 0 else 0.0,
        windows=engine.windows,
        batches=engine.batches,
        padding_share=engine.padding_tokens / engine.computed_tokens if engine.computed_tokens else 0.0,
        batching=None if batching is None else batching.describe(),
        out_of_memory_splits=engine.oom_splits,
    )


def environment(cpu_half_dtypes: Iterable[str] = ()) -> dict[str, Any]:
    """The report's ``environment`` block: versions, the CPU and what it can do fast.

    ``cpu_half_dtypes``: the half precisions (``bfloat16``, ``float16``) the run's
    models ran in on the CPU; for each, ``cpu`` adds ``bf16_matmul_speedup`` /
    ``fp16_matmul_speedup``, the matmul speed against float32 measured in this
    process (`lleval.hardware.half_matmul_speed`), its ``..._spread`` (the quartiles of
    the rounds' speedups) and ``..._rounds``. Runs in float32 have none of them.
    """
    import datasets
    import torch
    import transformers

    from lleval import __version__
    from lleval.hardware import cpu_features, half_matmul_speed

    cpu = dict(cpu_features())
    for dtype in sorted(set(cpu_half_dtypes)):
        short, speed = "bf16" if dtype == "bfloat16" else "fp16", half_matmul_speed(dtype)
        cpu[f"{short}_matmul_speedup"] = speed.speedup
        cpu[f"{short}_matmul_speedup_spread"] = [speed.low, speed.high]
        cpu[f"{short}_matmul_rounds"] = speed.rounds

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "lleval": __version__,
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
    }
