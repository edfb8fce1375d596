"""`EvalConfig`: every choice a score run makes, validated in one place.

Config files are YAML mappings whose keys are the long flag names
(``max_length`` or ``max-length``). The CLI loads them into click's
``default_map``, so flags on the command line win over the file, which wins
over the built-in defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lleval.errors import ConfigError, read_text_file
from lleval.windows import window_problem

# Allowed values, defined here once; the CLI, the config-file reader and the library use these.
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")
FORMATS = ("table", "json", "markdown")
DEVICE_MAPS = ("auto", "balanced", "sequential")
PROTOCOLS = ("rolling", "lm-eval", "hf-guide", "llama-cpp")
SAMPLE_BY = ("document", "paragraph", "line")
DECODE_ERRORS = ("strict", "replace", "ignore")
DEFAULT_SEPARATOR = "\n\n"
DEFAULT_MAX_LENGTH_CAP = 2048
DEFAULT_CHECKPOINT_EVERY = 60.0
DEFAULT_HTML_DOCS = 20
CHOICES: dict[str, tuple[str, ...]] = {  # fields with a fixed set of values
    "dtype": DTYPES,
    "device": DEVICES,
    "format": FORMATS,
    "protocol": PROTOCOLS,
    "sample_by": SAMPLE_BY,
    "device_map": DEVICE_MAPS,
    "errors": DECODE_ERRORS,
}
MINIMUMS: dict[str, int] = {  # the least value of each numeric field (the CLI's IntRange/FloatRange)
    "max_length": 1, "stride": 1, "batch_size": 1, "max_batch_tokens": 1, "block_tokens": 1,
    "limit": 0, "bootstrap": 0, "html_docs": 0, "checkpoint_every": 0,
}
TOKEN_SUFFIXES = (".parquet", ".jsonl")  # what --tokens writes: Parquet, or JSON lines (lleval.report.tokens)


def setting(origins: Mapping[str, str], name: str, value: object = None, typed: str | None = None) -> str:
    """How a refusal names a setting, so that nobody is told to drop a flag they never typed.

    Typed on the command line (or a built-in default), it is the flag: ``--split test``
    (``typed`` gives its form when that is not ``--name value``, as ``--no-float32-head``).
    Set by a config file (``origins[name]`` is ``"config file c.yaml"``), it is the file's
    key and the file: ``split: test (from config file c.yaml)``.
    """
    shown = "" if value is None else f" {value}"
    origin = origins.get(name)
    if origin is None:
        return typed or f"--{name.replace('_', '-')}{shown}"
    return f"{name}:{shown} (from {origin})" if shown else f"{name} (from {origin})"
#: Fewest bootstrap resamples that give a 95% interval. Its ends are the 2.5th and 97.5th
#: percentiles of the resamples: with 100, 2.5 resamples lie beyond each end; with fewer
#: the "interval" is a resample or two (``--bootstrap 1`` gave one value twice).
MIN_RESAMPLES = 100


def resamples_problem(n: int, shown: str | None = None) -> str | None:
    """What is wrong with a number of bootstrap resamples (0 turns them off), or None;
    ``shown`` names the setting (default ``--bootstrap N``)."""
    shown = shown or f"--bootstrap {n}"
    if n < 0:
        return f"{shown}: bootstrap must be 0 (off) or more resamples"
    if 0 < n < MIN_RESAMPLES:
        return (f"{shown} is too few resamples for a 95% interval (its ends are the 2.5th and 97.5th "
                f"percentiles of the resamples): use at least {MIN_RESAMPLES} (the default is 1000), or 0 for none")
    return None


@dataclass(frozen=True)
class EvalConfig:
    """Inputs of one ``lleval score`` run. ``None`` means "derive a default"."""

    # model
    model: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: str = "auto"
    device: str = "auto"
    device_map: str | None = None
    model_cache: bool = True  # keep a converted .gguf for later runs (lleval.backends.model_cache)
    float32_head: bool = True  # bf16/fp16 models: output projection and log-softmax in float32
    # data
    dataset: str | None = None
    dataset_config: str | None = None
    split: str | None = None
    text_field: str = "text"
    sample_by: str = "document"
    limit: int | None = None
    streaming: bool = False
    encoding: str = "utf-8"
    errors: str = "strict"
    # protocol
    protocol: str = "rolling"
    max_length: int | None = None
    stride: int | None = None
    prefix_token: str = "auto"
    concat: str | None = None
    # engine and output
    batch_size: int | str = "auto"  # a token budget per device (see lleval.plan.batching), or windows per pass
    max_batch_tokens: int | None = None
    block_tokens: int = 1 << 20
    allow_nonfinite: bool = False
    checkpoint: str | None = None
    checkpoint_every: float = DEFAULT_CHECKPOINT_EVERY
    bootstrap: int = 1000
    seed: int = 0
    output: str | None = None
    format: str = "table"
    quiet: bool = False
    # what the run shows of its tokens
    tokens: str | None = None  # the per-token export: .parquet, or .jsonl (lleval.report.tokens)
    token_stats: bool = False  # rank and entropy of every token (in the export and the HTML)
    html: str | None = None  # the HTML report (lleval.report.html)
    html_docs: int = DEFAULT_HTML_DOCS  # documents shown token by token, most and least surprising each
    # where values came from, for messages only: field -> "config file PATH" (the CLI fills it);
    # not a setting, so it takes no part in equality, hashing or checkpoints
    origins: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def flag(self, name: str, value: object = None, typed: str | None = None) -> str:
        """This config's name for a setting in a message (see `setting`)."""
        return setting(self.origins, name, value, typed)

    def _field(self, name: str) -> str:
        """A field's name in a range or choice message, with its config file if it came from one."""
        origin = self.origins.get(name)
        return name if origin is None else f"{name} (from {origin})"

    def validate(self) -> None:
        """Raise one `ConfigError` that lists every problem found.

        Every check that needs neither the data nor the tokenizer lives here,
        so that a wrong flag fails in milliseconds rather than after the model
        has loaded: allowed values, ranges, flags that conflict with the
        protocol, and flags that would have no effect in this combination.
        """
        problems = self._value_problems() + self._protocol_problems() + self._ineffective_flags()
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems) + ".")

    def _value_problems(self) -> list[str]:
        problems: list[str] = []
        for name in CHOICES:
            if problem := range_problem(name, getattr(self, name)):
                problems.append(f"{self._field(name)} {problem}")
        if _not_a_batch_size(self.batch_size):
            problems.append(f"{self._field('batch_size')} must be a number of windows or 'auto', got {self.batch_size!r}")
        for name in MINIMUMS:  # the ranges click holds the flags to, for callers of the API
            if name != "bootstrap" and (problem := range_problem(name, getattr(self, name))):
                problems.append(f"{self._field(name)} {problem}")
        if problem := resamples_problem(self.bootstrap, self.flag("bootstrap", self.bootstrap)):
            problems.append(problem)
        if self.limit == 0:
            problems.append(f"{self.flag('limit', 0)} scores no row: give 1 or more, or drop it")
        if self.tokens is not None and Path(self.tokens).suffix.lower() not in TOKEN_SUFFIXES:
            problems.append(f"{self.flag('tokens', self.tokens)} writes Parquet (.parquet) or JSON lines (.jsonl), "
                            "chosen by its extension: use .parquet or .jsonl")
        if self.max_length and self.stride and (problem := window_problem(self.max_length, self.stride)):
            problems.append(problem)  # with a derived max length, `lleval.plan.protocols.plan` checks
        if self.concat == "":
            problems.append("concat separator is empty: documents would run into each other")
        if self.prefix_token not in ("auto", "none") and not re.fullmatch(r"[0-9]+", self.prefix_token):
            problems.append(f"prefix_token must be auto, none or a token id, got {self.prefix_token!r}")
        return problems

    def _protocol_problems(self) -> list[str]:
        """Flags a protocol fixes itself (see `lleval.plan.protocols`)."""
        problems: list[str] = []
        name, protocol = self.protocol, self.flag("protocol", self.protocol)
        if name == "lm-eval":
            if self.stride is not None and self.stride != self.max_length:
                problems.append(f"{protocol} has disjoint windows: leave {self.flag('stride')} unset "
                                "(it equals --max-length)")
            if self.prefix_token == "none":
                problems.append(f"{protocol} always predicts the first token from a prefix: "
                                f"drop {self.flag('prefix_token', 'none')}")
            if self.concat is not None:
                problems.append(f"{protocol} scores each document on its own: drop {self.flag('concat')}")
        if name in ("hf-guide", "llama-cpp") and self.prefix_token != "auto":
            problems.append(f"{protocol} fixes the prefix token: drop {self.flag('prefix_token')}")
        if name == "llama-cpp":
            if self.stride is not None:
                problems.append(f"{protocol} scores disjoint chunks: drop {self.flag('stride')}")
            if self.max_length is not None and self.max_length < 4:
                problems.append(f"{protocol} needs {self.flag('max_length')} of at least 4")
        return problems

    def _ineffective_flags(self) -> list[str]:
        """Flags that would be accepted and then do nothing: refused rather than ignored."""
        problems: list[str] = []
        if self.checkpoint is None and self.checkpoint_every != DEFAULT_CHECKPOINT_EVERY:
            problems.append(f"{self.flag('checkpoint_every')} needs --checkpoint (there is nothing to save)")
        if self.bootstrap == 0 and self.seed != 0:
            problems.append(f"{self.flag('seed')} seeds the bootstrap, which {self.flag('bootstrap', 0)} turns off: "
                            "drop one of them")
        if self.device_map is not None and self.device != "auto":
            problems.append(f"{self.flag('device_map')} places the model itself: drop {self.flag('device')}")
        if not self.float32_head and self.dtype == "float32":
            problems.append(f"{self.flag('float32_head', 'false', typed='--no-float32-head')} keeps a bf16/fp16 "
                            f"model's head in its dtype; with {self.flag('dtype', 'float32')} everything is float32: "
                            "drop it")
        if self.token_stats and not (self.tokens or self.html):
            problems.append(f"{self.flag('token_stats')} adds rank and entropy to --tokens and --html: give one of them")
        if self.html is None and self.html_docs != DEFAULT_HTML_DOCS:
            problems.append(f"{self.flag('html_docs')} sets how many documents --html shows: give --html")
        return problems

def _not_a_batch_size(value: object) -> bool:
    """A string other than ``auto`` (numbers are checked for range separately)."""
    return isinstance(value, str) and value != "auto"


FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "revision": (str,),
    "trust_remote_code": (bool,),
    "dtype": (str,),
    "device": (str,),
    "device_map": (str,),
    "model_cache": (bool,),
    "float32_head": (bool,),
    "dataset": (str,),
    "dataset_config": (str,),
    "split": (str,),
    "text_field": (str,),
    "sample_by": (str,),
    "limit": (int,),
    "streaming": (bool,),
    "encoding": (str,),
    "errors": (str,),
    "protocol": (str,),
    "max_length": (int,),
    "stride": (int,),
    "prefix_token": (str, int),
    "concat": (str, bool),
    "batch_size": (int, str),
    "max_batch_tokens": (int,),
    "block_tokens": (int,),
    "allow_nonfinite": (bool,),
    "checkpoint": (str,),
    "checkpoint_every": (int, float),
    "bootstrap": (int,),
    "seed": (int,),
    "output": (str,),
    "format": (str,),
    "quiet": (bool,),
    "tokens": (str,),
    "token_stats": (bool,),
    "html": (str,),
    "html_docs": (int,),
}
assert set(FIELD_TYPES) == {f.name for f in dataclasses.fields(EvalConfig)} - {"origins"}


def load_config_file(path: str | os.PathLike[str], extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read a YAML config into ``{field: value}``, checking every key and type at once.

    ``extra`` maps the keys of a command's own options (``kld``'s ``base``,
    ``base_dtype``) to their parameter names; their values are strings (or null).

    Keys may use dashes or underscores, but one setting may appear only once
    (``max_length`` and ``max-length`` together are refused, as is a key given
    twice, which YAML itself would resolve silently to the last value).
    ``concat: true`` means the default
    separator (two newlines) and ``concat: false`` means no concatenation;
    ``prefix_token`` may be an integer id.
    """
    file = Path(path)
    raw, problems = _read_yaml(file, read_text_file(file, "config file", ConfigError))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {file} must be a mapping of option names to values.")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if extra and name in extra:
            if value is not None and not isinstance(value, str):
                problems.append(f"{key!r} must be str, got {type(value).__name__} {value!r}")
            else:
                values[extra[name]] = value
            continue
        if name not in FIELD_TYPES:
            close = difflib.get_close_matches(name, [*FIELD_TYPES, *(extra or {})], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown key {key!r}{hint}")
            continue
        if value is None:
            values[name] = None
            continue
        types = FIELD_TYPES[name]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if name == "batch_size" and _not_a_batch_size(value):
            problems.append(f"{key!r} must be int or 'auto', got str {value!r}")
            continue
        if not ok:
            wanted = " or ".join(t.__name__ for t in types)
            problems.append(f"{key!r} must be {wanted}, got {type(value).__name__} {value!r}")
            continue
        if problem := _out_of_range(key, name, value):
            problems.append(problem)
            continue
        if name == "concat" and isinstance(value, bool):
            value = DEFAULT_SEPARATOR if value else None
        if name == "prefix_token":
            value = str(value)
        values[name] = value
    if problems:
        raise ConfigError(f"config file {file}: " + "; ".join(problems) + ".")
    return values


def _out_of_range(key: str, name: str, value: Any) -> str | None:
    """A value outside a field's choices or range: click would refuse it too, but naming the
    flag (``Invalid value for '--protocol'``) where the user wrote a key of the file."""
    problem = range_problem(name, value)
    return None if problem is None else f"{key!r} {problem}"


def range_problem(name: str, value: Any) -> str | None:
    """``must be one of ...`` or ``must be at least N`` for a value outside a field's
    `CHOICES` or `MINIMUMS` (None, "not set", is never out of range); the caller names the
    setting, as a field of `EvalConfig.validate` or a key of a config file."""
    allowed = CHOICES.get(name)
    if allowed is not None and value is not None and value not in allowed:
        return f"must be one of {', '.join(allowed)}, got {value!r}"
    least = MINIMUMS.get(name)
    if least is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < least:
        return f"must be at least {least}, got {value}"
    return None


def _read_yaml(file: Path, text: str) -> tuple[Any, list[str]]:
    """The YAML document, and a problem for every setting its top-level mapping gives twice.

    The duplicates are found on the composed nodes, before they become a dict that
    would keep only the last value of a key.
    """
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        duplicates = _duplicate_keys(node) if isinstance(node, yaml.MappingNode) else []
        return (None if node is None else loader.construct_document(node)), duplicates
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"config file {file} is not valid YAML{line}: fix its syntax.") from None
    finally:
        loader.dispose()


def _duplicate_keys(node: Any) -> list[str]:
    """``'max_length' (line 1) and 'max-length' (line 4) both set max_length: keep one``, for each
    setting named twice, by the same key or by its two spellings."""
    import yaml

    seen: dict[str, tuple[str, int]] = {}
    problems: list[str] = []
    for key_node, _value in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key, line = str(key_node.value), key_node.start_mark.line + 1
        name = key.replace("-", "_")
        if name in seen:
            first, first_line = seen[name]
            problems.append(f"{first!r} (line {first_line}) and {key!r} (line {line}) both set {name}: keep one")
        else:
            seen[name] = (key, line)
    return problems
