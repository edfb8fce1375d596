"""What to read and how to cut it into documents (`DataSpec`), which kind of source a name
is (hub dataset, local file, saved dataset, standard input, the built-in sample), and
the checks of flags that a source would accept and then ignore, all before any data is read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from lleval.config import EvalConfig, setting
from lleval.errors import ConfigError, DataError
from lleval.hub import is_hub_id


BUILTIN_DATASET = "builtin:sample-prose"


LOCAL_SPLIT = "train"  # the one split of a local file (what the datasets builders call it)


FILE_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


@dataclass(frozen=True)
class DataSpec:
    """What to read and how to cut it into documents."""

    dataset: str | None = None  # None: the built-in sample corpus; "-": stdin
    dataset_config: str | None = None
    split: str | None = None  # None: "train" for local files (their only split), "test" on the hub
    text_field: str = "text"
    sample_by: str = "document"  # for .txt and stdin
    limit: int | None = None
    sample: int | None = None  # --sample N: N rows drawn at random (of the first --limit rows)
    streaming: bool = False
    encoding: str = "utf-8"  # of .txt, .jsonl, .json and .csv files
    errors: str = "strict"  # what to do with bytes that do not decode: strict | replace | ignore
    seed: int = 0  # which rows --sample draws (the run's --seed)
    # field -> "config file PATH" for values from a config file: messages name them so (`lleval.config.setting`)
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def flag(self, name: str, value: object = None) -> str:
        """This spec's name for a setting in a message: the flag, or the config file's key."""
        return setting(self.origins, name, value)


def data_spec(config: EvalConfig) -> DataSpec:
    """The data part of a config (with the origins of its values, for messages)."""
    return DataSpec(**config.section("data"), seed=config.seed if config.sample is not None else 0,
                    origins=config.origins)


def builtin_sample_path() -> Path:
    """The sample corpus shipped inside the package (JSON lines, one essay per line)."""
    return Path(__file__).parent.parent / "samples" / "prose.jsonl"


def describe_split(spec: DataSpec) -> str:
    """The split name that will be read, for the report."""
    if spec.split is not None:
        return spec.split
    return "test" if source_kind(spec.dataset)[0] == "hub" else LOCAL_SPLIT


def check_spec(spec: DataSpec) -> None:
    """Refuse flags this source would accept and then ignore (a `ConfigError` naming each):
    a split or configuration of a local file, ``--sample-by`` on a file whose rows are
    already documents, ``--encoding``/``--errors`` on a source that holds no raw text, and
    ``--streaming`` on standard input."""
    kind, path = source_kind(spec.dataset)
    where = spec.dataset or BUILTIN_DATASET
    builder = FILE_BUILDERS.get(path.suffix.lower()) if path is not None and kind in ("file", "builtin") else None
    what = {"stdin": "standard input", "saved": "a saved dataset", "builtin": "the built-in sample"}.get(
        kind, f"a local {path.suffix if path else ''} file")
    problems: list[str] = []
    if kind != "hub" and spec.dataset_config is not None:
        problems.append(f"{spec.flag('dataset_config')} names a configuration of a hub dataset, and {where} is {what}")
    if kind in ("file", "builtin", "stdin") and spec.split not in (None, LOCAL_SPLIT):
        problems.append(f"{where} has one split, {LOCAL_SPLIT!r}: drop {spec.flag('split', spec.split)}")
    if spec.sample_by != "document" and kind != "stdin" and builder != "text":
        problems.append(
            f"--sample-by cuts .txt files and standard input into documents, and in {where} ({what}) each "
            f"row is already a document: drop {spec.flag('sample_by')}"
        )
    decodes = kind == "stdin" or builder in ("text", "json", "csv")
    if not decodes and (codec_name(spec.encoding) != "utf-8" or spec.errors != "strict"):
        given = [spec.flag(name, getattr(spec, name)) for name in ("encoding", "errors") if name in spec.origins]
        problems.append(
            f"--encoding and --errors apply to .txt, .jsonl, .json and .csv files and standard input, and "
            f"{where} is {what}: drop {' and '.join(given) if given else 'them'}"
        )
    if kind == "stdin" and spec.streaming:
        problems.append(f"{spec.flag('streaming')} applies to files and hub datasets; standard input is read as it "
                        "arrives")
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def codec_name(encoding: str) -> str:
    import codecs

    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"unknown --encoding {encoding!r}: use a Python codec name such as utf-8 or latin-1.") from None


def source_kind(name: str | None) -> tuple[str, Path | None]:
    if name is None:
        return "builtin", builtin_sample_path()
    if name == "-":
        return "stdin", None
    path = Path(name).expanduser()
    if path.is_dir():
        return "saved", path
    if path.exists():
        return "file", path
    if not is_hub_id(name) or Path(name).suffix.lower() in FILE_BUILDERS:
        raise DataError(f"data file {name} does not exist. Check the path.")
    return "hub", None
