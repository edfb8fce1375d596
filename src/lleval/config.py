"""`EvalConfig`: every choice a score run makes, validated in one place.

Each field declares itself once, in its `Setting`: its section (`SECTIONS`:
model, data, protocol, statistics, outputs, engine, run control...), flag, help
and allowed values. The CLI's options and their ``--help`` headings
(`lleval.cli.options`), the config-file reader and the generated reference
(``scripts/make_docs.py``) are derived from those.

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
from lleval.hub import display_url, is_url
from lleval.windows import window_problem

# Allowed values, defined here once; the CLI, the config-file reader and the library use these.
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")
FORMATS = ("table", "json", "markdown")
COMPARE_METRICS = ("perplexity", "bits_per_byte")  # what compare --metric may compare and gate on
PROGRESS = ("auto", "bar", "lines", "none")  # how stderr shows progress (--progress)
DEVICE_MAPS = ("auto", "balanced", "sequential")
PROTOCOLS = ("rolling", "lm-eval", "hf-guide", "llama-cpp")
SAMPLE_BY = ("document", "paragraph", "line")
DECODE_ERRORS = ("strict", "replace", "ignore")
DEFAULT_SEPARATOR = "\n\n"
DEFAULT_MAX_LENGTH_CAP = 2048
DEFAULT_CHECKPOINT_EVERY = 60.0
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
#: Seconds one request to a server may take, from sending it to the last byte of its answer,
#: retries included: a server batches what it is sent, and a 2,048-token window queued behind
#: others on a busy CPU server takes minutes (`lleval.backends.server_http`).
DEFAULT_REQUEST_TIMEOUT = 600.0
DEFAULT_HTML_DOCS = 20
DEFAULT_MIN_K = 0.2  # Min-K% Prob's k (Shi et al., 2023; Zhang et al., 2024)
DEFAULT_REFERENCE_TOP_K = 32  # see the README's table: KL error and file size by K
#: The parts of a run, as `EvalConfig.section` gives them, each with its ``--help`` heading, in the
#: order a user decides: what to score (the model, kld's base, the data, or a suite of several),
#: how (protocol), what to compute beyond the sums (statistics), what to write (outputs), how fast
#: (engine), and how the run itself behaves (run control: settings file, checkpoints, faults, stderr).
SECTION_TITLES = {"model": "Model", "base": "Base (kld)", "data": "Data", "suite": "Suite", "protocol": "Protocol",
                  "statistics": "Statistics", "outputs": "Outputs", "engine": "Engine", "run": "Run control"}
SECTIONS = tuple(SECTION_TITLES)
TOKEN_SUFFIXES = (".parquet", ".jsonl")  # what --tokens writes: Parquet, or JSON lines (lleval.report.tokens)
#: --log-to's trackers (lleval.trackers): each by name -> (the modules it imports, the extra that installs them;
#: MLflow's SQLite store needs SQLAlchemy and Alembic, which mlflow-skinny leaves out)
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow"),
    "tensorboard": (("tensorboard",), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
}
DEFAULT_LOG_DIR = "lleval-logs"


#: ``EvalConfig.origins`` values: ``FLAG`` for a value typed on the command line, ``CONFIG_FILE``
#: followed by the file's path for a value read from a config file; a field absent from
#: ``origins`` was left at its default, or set by a caller of the Python API.
FLAG = "flag"
CONFIG_FILE = "config file "


def config_file_of(origins: Mapping[str, str], name: str) -> str | None:
    """``"config file c.yaml"`` when a config file set ``name``, else None (typed, defaulted or
    set through the API: a message names those by their flag)."""
    origin = origins.get(name)
    return origin if origin is not None and origin.startswith(CONFIG_FILE) else None


def setting(origins: Mapping[str, str], name: str, value: object = None, typed: str | None = None) -> str:
    """How a refusal names a setting, so that nobody is told to drop a flag they never typed.

    Typed on the command line (or a built-in default), it is the flag: ``--split test``
    (``typed`` gives its form when that is not ``--name value``, as ``--no-float32-head``).
    Set by a config file (``origins[name]`` is ``"config file c.yaml"``), it is the file's
    key and the file: ``split: test (from config file c.yaml)``.
    """
    shown = "" if value is None else f" {value}"
    origin = config_file_of(origins, name)
    if origin is None:
        return typed or f"--{name.replace('_', '-')}{shown}"
    return f"{name}:{shown} (from {origin})" if shown else f"{name} (from {origin})"


#: How a resumed checkpoint treats a setting (`Setting.resume`; every setting has one, which
#: tests/test_resume.py checks, so a new flag cannot be forgotten by the checkpoint):
#: ``RESUME_SAME``: it changes a number, or what the checkpoint holds: a resumed run must have the
#: checkpoint's value (a refusal names the setting; `lleval.runner.fingerprint`).
RESUME_SAME = "same"
#: ``RESUME_DATA``: it picks the texts: those are checked by content as they are read (a hash chain
#: over the documents done), so the file may move, and documents may follow an interrupted run's.
RESUME_DATA = "data"
#: ``RESUME_OUTPUT``: a file output whose reducer state the checkpoint holds: asked for on resume
#: and not when the checkpoint was made, it is refused, naming the flag.
RESUME_OUTPUT = "output"
#: ``RESUME_FREE``: it changes no number the checkpoint holds (derived at the end from the
#: documents, where files go, how much is shown, who does the work).
RESUME_FREE = "free"
RESUMES = (RESUME_SAME, RESUME_DATA, RESUME_OUTPUT, RESUME_FREE)


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
class Setting:
    """How one `EvalConfig` field is set, declared once beside the field: the CLI's options
    (`lleval.cli.options`) and the config-file reader (`FIELD_TYPES`, `CHOICES`, `MINIMUMS`) are
    derived from it.

    Its flag is ``--`` and the field's name with dashes (``max_length``: ``--max-length``);
    a boolean gets ``--x/--no-x``, so a config file's ``true`` can be undone on the command
    line, and a flag whose value is optional (``flag_value``) gets ``--no-x``, which sets the
    field back to its default.
    """

    section: str  # one of SECTIONS: its part of the run, and its heading in --help
    help: str  # the flag's help text
    types: tuple[type, ...] = ()  # what a config file may give; () means the default's type, else str
    short: str | None = None  # a one-letter form, "-m"
    choices: tuple[str, ...] | None = None  # the only values allowed
    minimum: int | float | None = None  # the least value allowed
    path: bool = False  # a file the run writes (no folder): an output, off limits to every other file of the run
    reads: bool = False  # names a local file or folder the run reads (when it is one): an input no output may touch
    text: bool = False  # an output that shows each token's text: the units must keep their documents' text
    metavar: str | None = None  # the flag's value in --help, where the type's name does not say it
    flag_value: str | None = None  # the value of the flag given with no value (--concat)
    commands: tuple[str, ...] = ("score", "kld")  # the commands that take the flag
    spec: str | None = None  # its name in its section's spec, where that differs (ModelSpec.cache)
    multiple: bool = False  # the flag may be given several times; the field is a tuple (a config file: a list)
    resume: str | None = None  # how a resumed checkpoint treats it: one of RESUMES (every setting gives one)


def without_credentials(value: Any) -> Any:
    """``value`` with what a URL may hold of credentials taken out (`lleval.hub.display_url`:
    ``http://u:key@host/v1?api_key=k`` becomes ``http://host/v1``), in each item of a list or
    tuple too (``--replicas``): what a report or a message may show of a served model's URL."""
    if isinstance(value, (list, tuple)):
        return type(value)(without_credentials(item) for item in value)
    return display_url(value) if isinstance(value, str) else value


def origin_entry(value: Any, origin: str | None) -> dict[str, Any]:
    """A setting's entry in a report's ``settings``: its value (a URL without credentials)
    and where it came from (``origin``: ``flag``, ``config file PATH``, or None: the API)."""
    shown = without_credentials(value)
    if origin is not None and origin.startswith(CONFIG_FILE):
        return {"value": shown, "origin": CONFIG_FILE.strip(), "file": origin[len(CONFIG_FILE):]}
    return {"value": shown, "origin": origin or "api"}


def _setting(default: Any, section: str, help: str, **how: Any) -> Any:
    """An `EvalConfig` field with its `Setting` (keyword arguments: `Setting`'s)."""
    return dataclasses.field(default=default, metadata={"setting": Setting(section, help, **how)})


@dataclass(frozen=True)
class EvalConfig:
    """Inputs of one ``lleval score`` run. ``None`` means "derive a default".

    Each field declares its section, flag, help and allowed values once, in its `Setting`.
    """

    model: str | None = _setting(
        None, "model", "Hub id, local model folder, .gguf file, or the URL of an OpenAI-compatible server "
        "(http://127.0.0.1:8000/v1, e.g. vLLM). Default: built-in SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized "
        "to float32).", short="-m", spec="name", reads=True, resume=RESUME_SAME)
    revision: str | None = _setting(None, "model", "Hub revision (branch, tag or commit) of a hub model.",
                                    resume=RESUME_SAME)
    trust_remote_code: bool = _setting(False, "model", "Allow model code from the hub repository to run.",
                                       resume=RESUME_SAME)
    dtype: str = _setting(
        "auto", "model", "auto: bfloat16 on CUDA GPUs that support it, float32 elsewhere. bfloat16/float16 on a CPU "
        "time a small matmul against float32 and warn where it measured slower (e.g. --dtype bfloat16).",
        choices=DTYPES, resume=RESUME_SAME)
    device: str = _setting("auto", "model", "auto: CUDA, else MPS, else CPU.", choices=DEVICES, resume=RESUME_SAME)
    device_map: str | None = _setting(
        None, "model", "Spread a model too large for one device over all visible devices (accelerate).",
        choices=DEVICE_MAPS, resume=RESUME_SAME)
    # bf16/fp16 models: output projection and log-softmax in float32
    float32_head: bool = _setting(
        True, "model", "With --dtype bfloat16/float16: project to logits and log-softmax in float32 (most of "
        "bf16's error is in rounding the logits; costs little on large models).", resume=RESUME_SAME)
    # keep a converted .gguf for later runs (lleval.backends.model_cache)
    model_cache: bool = _setting(
        True, "model", "Keep a .gguf model converted after its first load, so later runs load in a second "
        "(in $LLEVAL_MODEL_CACHE, else under $HF_HOME; LLEVAL_MODEL_CACHE=off turns it off).", spec="cache",
        resume=RESUME_FREE)
    tokenizer: str | None = _setting(
        None, "model", "With a server --model: the served model's tokenizer (hub id, folder or .gguf file). "
        "Default: the served model's own folder, when the server names one on this machine.", reads=True,
        resume=RESUME_SAME)
    served_model: str | None = _setting(
        None, "model", "With a server --model: which of its models to score (default: the one it serves).",
        resume=RESUME_SAME)
    replicas: tuple[str, ...] = _setting(
        (), "model", "With a server --model: another server of the same model (repeatable); the run's windows "
        "are shared among them all.", multiple=True, types=(list,), metavar="URL", resume=RESUME_FREE)
    api_key_env: str = _setting(
        DEFAULT_API_KEY_ENV, "model", "With a server --model: the environment variable holding its API key, sent "
        "as a bearer token (never written anywhere).", metavar="NAME", resume=RESUME_FREE)
    request_timeout: float = _setting(
        DEFAULT_REQUEST_TIMEOUT, "model", "With a server --model: the most seconds one request may take, from "
        "sending it to the last byte of its answer, retries included; a server that does not answer in time (or "
        "trickles) fails the run, its finished documents kept. Default: 600.", types=(int, float), minimum=1,
        metavar="SECONDS", resume=RESUME_FREE)
    dataset: str | None = _setting(
        None, "data", "Hub dataset, .txt/.jsonl/.json/.csv/.parquet file, saved dataset folder, or - "
        "for stdin. Default: built-in sample prose.", short="-d", reads=True, resume=RESUME_DATA)
    dataset_config: str | None = _setting(None, "data", "Hub dataset configuration name.", resume=RESUME_DATA)
    split: str | None = _setting(None, "data", "Split to score. Default: test (hub), train (local files).",
                                 resume=RESUME_DATA)
    text_field: str = _setting("text", "data", "Column holding the text.", resume=RESUME_DATA)
    sample_by: str = _setting("document", "data", "How a .txt file or stdin is cut into documents.",
                              choices=SAMPLE_BY, resume=RESUME_DATA)
    limit: int | None = _setting(None, "data", "Score only the first N rows (1 or more).", types=(int,), minimum=1,
                                 resume=RESUME_DATA)
    # a reproducible random subset of rows (lleval.data.sources.sample_rows), in source order; which
    # rows are drawn depends on --seed too (the fingerprint's "sample" part holds both)
    sample: int | None = _setting(
        None, "data", "Score N rows drawn at random, the same N for the same --seed, in source order (with "
        "--limit L: N of the first L rows). Rows count as for --limit: an empty row drawn is skipped.",
        types=(int,), minimum=1, metavar="N", resume=RESUME_SAME)
    streaming: bool = _setting(False, "data", "Stream the dataset instead of loading it into memory.",
                               resume=RESUME_DATA)
    encoding: str = _setting(
        "utf-8", "data", "Encoding of .txt/.jsonl/.json/.csv files and stdin (a Python codec name).",
        resume=RESUME_DATA)
    errors: str = _setting("strict", "data", "Bytes that do not decode: stop (strict), or replace/ignore them.",
                           choices=DECODE_ERRORS, resume=RESUME_DATA)
    protocol: str = _setting(
        "rolling", "protocol", "Scoring protocol: rolling (lleval's), lm-eval, hf-guide or llama-cpp.",
        choices=PROTOCOLS, resume=RESUME_SAME)
    max_length: int | None = _setting(
        None, "protocol", "Input tokens per window. Default: min(model positions, 2048).", types=(int,),
        short="-L", minimum=1, resume=RESUME_SAME)
    stride: int | None = _setting(
        None, "protocol", "New tokens scored per window after the first. Default: max length.", types=(int,),
        short="-S", minimum=1, resume=RESUME_SAME)
    prefix_token: str = _setting(
        "auto", "protocol", "Token that predicts each document's first token: auto (BOS, else EOS), an id, or none.",
        types=(str, int), resume=RESUME_SAME)
    concat: str | None = _setting(
        None, "protocol", "Join all documents with SEP (default: two newlines) into one stream.", types=(str, bool),
        flag_value=DEFAULT_SEPARATOR, metavar="[SEP]", resume=RESUME_SAME)
    # a token budget per device (see lleval.plan.batching), or windows per pass
    batch_size: int | str = _setting(
        "auto", "engine", "auto: a token budget per forward pass sized for the device, batches cut to waste "
        "least; or N windows per pass, filled greedily.", types=(int, str), short="-b", minimum=1, metavar="N|auto",
        resume=RESUME_SAME)
    max_batch_tokens: int | None = _setting(
        None, "engine", "Also cap a batch at this many padded tokens (rows x width).", types=(int,), minimum=1,
        resume=RESUME_SAME)
    block_tokens: int = _setting(
        1 << 20, "engine", "Sequence tokens read, sorted and batched together (memory bound of the sort).", minimum=1,
        resume=RESUME_SAME)
    allow_nonfinite: bool = _setting(
        False, "run", "Count NaN/inf token log-probs and leave them out, instead of stopping.", resume=RESUME_SAME)
    checkpoint: str | None = _setting(
        None, "run", "Save progress here; rerunning the same command resumes from it.", path=True,
        resume=RESUME_FREE)
    checkpoint_every: float = _setting(
        DEFAULT_CHECKPOINT_EVERY, "run", "Seconds between checkpoint saves (needs --checkpoint).",
        types=(int, float), minimum=0, resume=RESUME_FREE)
    bootstrap: int = _setting(
        1000, "statistics", f"Bootstrap resamples over documents for 95% intervals: 0 (none), or {MIN_RESAMPLES} and "
        "more.", minimum=0, resume=RESUME_FREE)
    seed: int = _setting(0, "statistics", "Seed of the bootstrap, and of the rows --sample draws.", resume=RESUME_FREE)
    output: str | None = _setting(
        None, "outputs", "Write the JSON report here (atomically). An output that cannot be written (a full "
        "disk) is one line on stderr and exit 1; the others are still written.", short="-o", path=True,
        resume=RESUME_FREE)
    format: str = _setting("table", "outputs", "What stdout gets: a table, the JSON report, or markdown.",
                           choices=FORMATS, resume=RESUME_FREE)
    quiet: bool = _setting(False, "run", "Nothing on stderr but errors: no progress, no warnings.", short="-q",
                           resume=RESUME_FREE)
    # a bar on a terminal; lines in a CI log, a pipe or a file (lleval.runner.progress.LineProgress)
    progress: str = _setting(
        "auto", "run", "How stderr shows progress: auto (a bar on a terminal; else, as in a CI log, a line at "
        "each stage and every 20 s), bar, lines or none. --quiet shows none.", choices=PROGRESS, resume=RESUME_FREE)
    # what the run shows of its tokens: the per-token export, .parquet or .jsonl (lleval.report.tokens)
    tokens: str | None = _setting(
        None, "outputs", "Write every scored token (document, position, context, id, text, log-prob) here: "
        "t.parquet for Parquet, t.jsonl for JSON lines (other extensions are refused).", path=True, text=True,
        resume=RESUME_OUTPUT)
    # rank and entropy of every token (in the export and the HTML)
    token_stats: bool = _setting(
        False, "statistics", "Also the rank of each true token and the entropy of each prediction (for --tokens, "
        "--html).",
        commands=("score",), resume=RESUME_SAME)
    # contamination (membership) scores per document (lleval.reducers.membership)
    membership: bool = _setting(
        False, "statistics", "Also each document's membership (contamination) scores: Min-K% Prob, Min-K%++ and "
        "the zlib ratio (documents[] in the JSON report, --tokens, --html).", commands=("score",), resume=RESUME_SAME)
    min_k: float = _setting(
        DEFAULT_MIN_K, "statistics", "The k of Min-K% and Min-K%++ (--membership): the fraction of each document's "
        "least likely tokens they average, 0 < k <= 1; a document of n tokens takes max(1, floor(k n)).",
        types=(int, float), commands=("score",), resume=RESUME_SAME)
    # expected calibration error of the top-1 next-token probability (lleval.reducers.calibration)
    calibration: bool = _setting(
        False, "statistics", "Also the calibration of the top-1 next-token probability: ECE over 15 bins and top-1 "
        "accuracy (statistics.calibration).", commands=("score",), resume=RESUME_SAME)
    # the base's top-K distribution per token, for a later kld --reference (lleval.report.reference)
    save_reference: str | None = _setting(
        None, "outputs", "Write a compact KL reference here (.parquet): per scored token the top-K token ids and "
        "log-probs and the log of the remaining mass, for a later lleval kld --reference.", path=True,
        text=True, commands=("score",), resume=RESUME_OUTPUT)
    reference_top_k: int = _setting(
        DEFAULT_REFERENCE_TOP_K, "outputs", "How many of the most likely tokens --save-reference keeps per token "
        "(KL against it is a lower bound, exact when K >= vocabulary - 1).", minimum=1, commands=("score",),
        resume=RESUME_SAME)
    reference: str | None = _setting(
        None, "base", "Compare --model with a reference saved by lleval score --save-reference (instead of "
        "--base): one model in memory.", commands=("kld",), reads=True, resume=RESUME_SAME)
    html: str | None = _setting(  # the HTML report (lleval.report.html)
        None, "outputs", "Write a self-contained HTML report here (score: curve, documents, coloured tokens; a "
        "suite: one page, with bits per byte by step and every cell's sections; kld: the divergence's "
        "distribution).", path=True, text=True, commands=("score", "kld"), resume=RESUME_OUTPUT)
    html_docs: int = _setting(  # documents shown token by token, most and least surprising each
        DEFAULT_HTML_DOCS, "outputs", "How many of the most (and of the least) surprising documents --html shows "
        "token by token.", minimum=0, commands=("score",), resume=RESUME_SAME)
    # a suite: several models x datasets in one run (lleval.commands.suite); repeated -m/-d make one too
    suite: str | None = _setting(
        None, "suite", "YAML file of a suite: its models and datasets, each with a label and its own settings "
        "(see configs/suites/). -o then writes the suite report.", metavar="FILE", commands=("score",), reads=True,
        resume=RESUME_FREE)
    step: tuple[str, ...] = _setting(
        (), "suite", "The training step of each --model, in order (repeatable; default: found in the model's "
        "name, such as checkpoint-1000): the suite's report then draws a trend.", multiple=True, metavar="N",
        commands=("score",), resume=RESUME_FREE)
    # trackers the results also go to (lleval.trackers), and the folder of their local files
    log_to: tuple[str, ...] = _setting(
        (), "outputs", "Also log the results to a tracker (repeatable): mlflow (MLFLOW_TRACKING_URI, else a SQLite "
        "store in --log-dir), wandb (WANDB_MODE=offline works offline), tensorboard (event files in --log-dir). A "
        "tracker that fails is one line on stderr and exit 1; the other outputs are still written.",
        multiple=True, types=(list,), choices=tuple(TRACKERS), metavar="NAME", commands=("score", "kld", "compare"),
        resume=RESUME_FREE)
    log_dir: str | None = _setting(
        None, "outputs", f"Folder of the trackers' local files: TensorBoard's event files, MLflow's SQLite store "
        f"(when MLFLOW_TRACKING_URI is unset), W&B's run folder (when WANDB_DIR is unset). Default: {DEFAULT_LOG_DIR}.",
        metavar="DIR", commands=("score", "kld", "compare"), resume=RESUME_FREE)
    # where values came from: field -> FLAG, or "config file PATH" (the CLI fills it; a field
    # absent was left at its default or set through the API); for messages and `provenance`.
    # Not a setting, so it takes no part in equality, hashing or checkpoints
    origins: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def section(self, name: str) -> dict[str, Any]:
        """The values of one section (`SECTIONS`), keyed as the section's spec names them: the
        model section is ``ModelSpec(**config.section("model"))`` (``model`` is its ``name``,
        ``model_cache`` its ``cache``), the data section ``DataSpec``'s fields."""
        if name not in SECTIONS:
            raise ValueError(f"no section {name!r} of a config: pick one of {', '.join(SECTIONS)}")
        return {s.spec or f.name: getattr(self, f.name) for f, s in settings() if s.section == name}

    def provenance(self) -> dict[str, dict[str, Any]]:
        """Every setting not simply left at its built-in default, with where it came from:
        ``{"max_length": {"value": 512, "origin": "flag"}, "stride": {"value": 256, "origin":
        "config file", "file": "c.yaml"}, "seed": {"value": 3, "origin": "api"}}``.

        ``flag``: typed on the command line (even when it equals the default); ``config file``:
        read from ``file``; ``api``: a value other than the default that no flag or file set (a
        caller of the Python API passed it). A setting absent here has its default, which the
        report's own blocks (protocol, model, dataset) show where it is derived.
        """
        found: dict[str, dict[str, Any]] = {}
        for f, _how in settings():
            value, origin = getattr(self, f.name), self.origins.get(f.name)
            if origin is None and value == f.default:
                continue
            found[f.name] = origin_entry(value, origin)
        return found

    def outputs(self) -> list[tuple[str, str]]:
        """Every file this run writes, as ``(flag, path)``: the settings declared ``path`` that are
        set (a new output is off limits to the others, and to every input, by its declaration)."""
        return [(self.flag(f.name), value) for f, how in settings() if how.path and (value := getattr(self, f.name))]

    def inputs(self) -> list[tuple[str, str]]:
        """What this run reads, as ``(flag, value)``: the settings declared ``reads`` that are set
        (a hub id or a URL among them; `lleval.preflight` keeps those that are local files)."""
        return [(self.flag(f.name), value) for f, how in settings() if how.reads and (value := getattr(self, f.name))]

    @property
    def keeps_text(self) -> bool:
        """Whether an output shows the scored tokens' text (a setting declared ``text``): the units
        must then keep their documents' text."""
        return any(getattr(self, f.name) for f, how in settings() if how.text)

    def flag(self, name: str, value: object = None, typed: str | None = None) -> str:
        """This config's name for a setting in a message (see `setting`)."""
        return setting(self.origins, name, value, typed)

    def _field(self, name: str) -> str:
        """A field's name in a range or choice message, with its config file if it came from one."""
        origin = config_file_of(self.origins, name)
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
            if name not in ("bootstrap", "limit") and (problem := range_problem(name, getattr(self, name))):
                problems.append(f"{self._field(name)} {problem}")
        if problem := resamples_problem(self.bootstrap, self.flag("bootstrap", self.bootstrap)):
            problems.append(problem)
        if self.limit is not None and self.limit < 1:
            problems.append(f"{self.flag('limit', self.limit)} scores no row: give 1 or more, or drop it")
        if isinstance(self.min_k, (int, float)) and not 0 < self.min_k <= 1:
            problems.append(f"{self.flag('min_k', self.min_k)} is the fraction of tokens Min-K% averages: give a "
                            "number above 0 and at most 1 (0.2 is the papers' default)")
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
        if self.bootstrap == 0 and self.seed != 0 and self.sample is None:
            problems.append(f"{self.flag('seed')} seeds the bootstrap, which {self.flag('bootstrap', 0)} turns off: "
                            "drop one of them")
        if self.sample is not None and self.limit is not None and self.sample >= self.limit:
            problems.append(f"{self.flag('sample', self.sample)} draws from the first {self.limit} rows "
                            f"({self.flag('limit', self.limit)}) and would take every one: give --sample fewer rows "
                            "than --limit, or drop --sample")
        if self.device_map is not None and self.device != "auto":
            problems.append(f"{self.flag('device_map')} places the model itself: drop {self.flag('device')}")
        if not self.float32_head and self.dtype == "float32":
            problems.append(f"{self.flag('float32_head', 'false', typed='--no-float32-head')} keeps a bf16/fp16 "
                            f"model's head in its dtype; with {self.flag('dtype', 'float32')} everything is float32: "
                            "drop it")
        if self.save_reference is not None and Path(self.save_reference).suffix.lower() != ".parquet":
            problems.append(f"{self.flag('save_reference', self.save_reference)} writes Parquet: name it .parquet")
        for other in ("token_stats", "membership", "calibration"):
            if self.save_reference is not None and getattr(self, other):
                problems.append(f"{self.flag('save_reference')} and {self.flag(other)} cannot be combined yet: "
                                "run them separately")
        if self.save_reference is None and self.reference_top_k != DEFAULT_REFERENCE_TOP_K:
            problems.append(f"{self.flag('reference_top_k')} sets what --save-reference keeps: give --save-reference")
        if self.token_stats and not (self.tokens or self.html):
            problems.append(f"{self.flag('token_stats')} adds rank and entropy to --tokens and --html: give one of them")
        if not self.membership and self.min_k != DEFAULT_MIN_K:
            problems.append(f"{self.flag('min_k')} sets the k of the membership scores: give --membership")
        if self.log_dir is not None and not self.log_to:
            problems.append(f"{self.flag('log_dir')} is where --log-to's trackers write: give --log-to")
        if self.html is None and self.html_docs != DEFAULT_HTML_DOCS:
            problems.append(f"{self.flag('html_docs')} sets how many documents --html shows: give --html")
        served = self.model is not None and is_url(self.model)
        for name in ("tokenizer", "served_model", "api_key_env", "replicas", "request_timeout"):
            changed = getattr(self, name) != EvalConfig.__dataclass_fields__[name].default
            if changed and not served:
                problems.append(f"{self.flag(name)} applies to a --model that is a server URL (http://...)")
        if served:
            for name in ("revision", "device_map"):
                if getattr(self, name) is not None:
                    problems.append(f"{self.flag(name)} applies to a model lleval loads itself, not to a server")
        return problems


def _not_a_batch_size(value: object) -> bool:
    """A string other than ``auto`` (numbers are checked for range separately)."""
    return isinstance(value, str) and value != "auto"


def settings() -> list[tuple[dataclasses.Field[Any], Setting]]:
    """Every field of `EvalConfig` that is a setting (all but ``origins``), in order, with its `Setting`."""
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(EvalConfig) if "setting" in f.metadata]


def _types(f: dataclasses.Field[Any], how: Setting) -> tuple[type, ...]:
    """What a config file may give a field: its `Setting`'s types, else its default's type (str for None)."""
    return how.types or ((str,) if f.default is None else (type(f.default),))


# Derived from the `Setting` of each field: what the config-file reader and `validate` hold values to.
FIELD_TYPES: dict[str, tuple[type, ...]] = {f.name: _types(f, how) for f, how in settings()}
CHOICES: dict[str, tuple[str, ...]] = {f.name: how.choices for f, how in settings() if how.choices is not None}
MULTIPLE: frozenset[str] = frozenset(f.name for f, how in settings() if how.multiple)
MINIMUMS: dict[str, int | float] = {f.name: how.minimum for f, how in settings() if how.minimum is not None}


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
        problem, value = (None, None) if value is None else _file_value(key, name, value)
        if problem:
            problems.append(problem)
        else:
            values[name] = value
    if problems:
        raise ConfigError(f"config file {file}: " + "; ".join(problems) + ".")
    return values


def _file_value(key: Any, name: str, value: Any) -> tuple[str | None, Any]:
    """What is wrong with a config file's value for field ``name`` (None), and the value as
    the field holds it: of the field's types and in its range; a list for a repeatable
    setting; ``concat: true`` the default separator; an integer ``prefix_token`` as text."""
    types = FIELD_TYPES[name]
    if name == "batch_size" and _not_a_batch_size(value):
        return f"{key!r} must be int or 'auto', got str {value!r}", None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        wanted = " or ".join(t.__name__ for t in types)
        return f"{key!r} must be {wanted}, got {type(value).__name__} {value!r}", None
    if problem := _out_of_range(key, name, value):
        return problem, None
    if name in MULTIPLE and isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            return f"{key!r} must be a list of strings, got {value!r}", None
        value = tuple(value)
    if name == "concat" and isinstance(value, bool):
        value = DEFAULT_SEPARATOR if value else None
    if name == "prefix_token":
        value = str(value)
    return None, value


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
    values = value if isinstance(value, (tuple, list)) else (value,)  # a repeatable setting: each value
    wrong = [v for v in values if v is not None and v not in (allowed or (v,))]
    if wrong:
        return f"must be one of {', '.join(allowed or ())}, got {wrong[0]!r}"
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
