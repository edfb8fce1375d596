"""The checks a run can make before anything heavy loads: flags, output paths, the data source.

None of them needs the model, the tokenizer or the data's contents, and this
module imports neither torch, transformers nor datasets, so the CLI runs
`check_config` first and a wrong flag costs a fraction of a second, not the
seconds those imports take. `lleval.runner.prepare.open_inputs` runs it again (it is
cheap) for callers of the Python API.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from lleval.config import DTYPES, TRACKERS, EvalConfig
from lleval.data.spec import builtin_sample_path, check_spec, data_spec
from lleval.errors import ConfigError, OutputError


def check_config(config: EvalConfig, extra_inputs: Sequence[tuple[str, str]] = ()) -> None:
    """Raise the first typed error a config earns before any loading: `EvalConfig.validate`
    (every flag problem at once), then an output file that cannot be written or that names
    another output or a file the run reads (`check_distinct`: ``extra_inputs`` are what the
    config does not name, such as the ``--config`` file), then a data source that does not
    exist or would ignore a flag (`lleval.data.spec.check_spec`)."""
    config.validate()
    outputs = config.outputs()
    for flag, path in outputs:
        check_writable(path, flag)
    check_distinct(outputs, run_inputs(config) + list(extra_inputs))
    check_finished_files(config)
    check_spec(data_spec(config))
    check_trackers(config.log_to)


#: the outputs written while scoring, a part at a time: a rerun of a finished run cannot write them
STREAMED = ("tokens", "save_reference")


def check_finished_files(config: EvalConfig) -> None:
    """Refuse (`ConfigError`), before anything loads, a rerun of a finished run that asks for a
    token file or reference that is not there. A checkpoint of a finished run rebuilds the
    report and scores nothing, so it keeps the files that run wrote (untouched) and cannot
    write one anew. Only the checkpoint's ``complete`` is read here; anything else wrong with
    it is `lleval.runner.checkpoint.load`'s to say."""
    if not config.checkpoint:
        return
    try:
        saved = json.loads(Path(config.checkpoint).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(saved, dict) or saved.get("complete") is not True:
        return
    missing = [f"{config.flag(name)} {path}" for name in STREAMED
               if (path := getattr(config, name)) and not Path(path).expanduser().is_file()]
    if missing:
        flags = " and ".join(config.flag(name) for name in STREAMED if getattr(config, name))
        raise ConfigError(
            f"checkpoint {config.checkpoint} is of a finished run: nothing is scored again now, so "
            f"{' and '.join(missing)} cannot be written (that run wrote its files then, and this one is not there). "
            f"Drop {flags} to rebuild the report from the checkpoint, give the files that run wrote, or delete the "
            "checkpoint to score again.")


def run_inputs(config: EvalConfig) -> list[tuple[str, str]]:
    """What a run reads, as ``(flag, path)``: every setting declared ``reads`` (the model, its
    tokenizer, the dataset, the reference, the suite file), and the built-in sample when no
    dataset is named. Hub ids and URLs are among them: `check_distinct` keeps what is on disk."""
    found = [(flag, value) for flag, value in config.inputs() if value != "-"]  # "-": standard input
    if config.dataset is None and config.suite is None:
        found.append(("the built-in sample", str(builtin_sample_path())))
    return found


@dataclass(frozen=True)
class _Place:
    """Where a path lands. ``spots``: the folder entry it names (its folder resolved, its own
    name kept: an atomic write replaces that entry, even a symlink) and the file it leads to
    (symlinks followed); ``inode``: that file's (device, inode) when it exists, so a hard link
    is the same file; ``folder``: it is a folder (a model folder, a saved dataset)."""

    path: Path
    spots: frozenset[Path]
    inode: tuple[int, int] | None
    folder: bool


def _place(path: str) -> _Place:
    given = Path(os.path.abspath(os.path.expanduser(path)))
    spots = {given}
    try:
        spots |= {given.parent.resolve() / given.name, given.resolve()}
    except (OSError, RuntimeError):  # a symlink loop: the path as given is all there is
        pass
    try:
        stat = given.stat()
    except OSError:
        return _Place(given, frozenset(spots), None, False)
    return _Place(given, frozenset(spots), (stat.st_dev, stat.st_ino), given.is_dir())


def _folder_inodes(folder: _Place) -> Iterator[tuple[int, int]]:
    """The (device, inode) of every file under a folder (symlinks followed to their files)."""
    for where, _dirs, names in os.walk(folder.path):
        for name in names:
            try:
                stat = os.stat(os.path.join(where, name))
            except OSError:
                continue
            yield stat.st_dev, stat.st_ino


# The files a model or tokenizer loader may read from a model folder (transformers, GGUF,
# SentencePiece, tiktoken, remote code): an output by one of these names inside a model folder
# would change what the next load reads, even as a new file. Other new files there (an
# eval.json beside a checkpoint, as the Trainer writes) are allowed.
LOADER_NAMES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                "chat_template.json", "chat_template.jinja", "preprocessor_config.json")
LOADER_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".model", ".index.json", ".py", ".tiktoken",
                   ".msgpack", ".h5")


def _is_model_folder(folder: Path) -> bool:
    """A folder a model loader reads (its config or tokenizer or a .gguf at the top), as against
    a saved dataset or any other folder, all of which is off limits."""
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    return any(name in LOADER_NAMES or name.endswith(".gguf") for name in names)


def _loader_reads(path: Path) -> bool:
    return path.name in LOADER_NAMES or path.name.endswith(LOADER_SUFFIXES)


def _clash(output: _Place, other: _Place) -> str | None:
    """How writing ``output`` would touch ``other`` (a file or a folder the run reads, or
    another output), in words; None when it would not. Inside a model folder only a file a
    loader reads (or one the folder holds under another name: a hard link) is refused; inside
    any other folder the run reads (a saved dataset), every file is."""
    if output.spots & other.spots or (output.inode is not None and output.inode == other.inode):
        return "is the same file as"
    if not other.folder:
        return None
    inside = [spot for spot in output.spots for folder in other.spots if spot.is_relative_to(folder)]
    if inside and (not _is_model_folder(other.path) or any(_loader_reads(spot) for spot in inside)):
        return "is inside"
    if output.inode is not None and output.inode in set(_folder_inodes(other)):
        return "is the same file (a hard link) as a file of"
    return None


def check_distinct(outputs: Sequence[tuple[str, str]], inputs: Sequence[tuple[str, str]]) -> None:
    """Refuse (`OutputError`) two outputs of one run that name the same file, or an output that
    names what the run reads (the dataset, a model's .gguf, a file of a model folder, the
    reference, the config or suite file): the later write would silently destroy the other.
    ``outputs`` and ``inputs`` are ``(flag, path)`` pairs; inputs that are not on this machine
    (a hub id, a URL) are left out. One file is one file however it is named: relative or
    absolute, through a symlink, or a hard link. A folder the run reads (a model folder, a
    saved dataset) is off limits as a whole. An output named twice by the same flag (a suite
    page every cell names) is written once, and counts once."""
    taken = [(_place(path), f"{flag} {path}") for flag, path in inputs
             if os.path.lexists(os.path.expanduser(path))]
    for flag, path in dict.fromkeys(outputs):
        place = _place(path)
        for other, name in taken:
            clash = _clash(place, other)
            if clash is None:
                continue
            if clash == "is inside":
                raise OutputError(f"{flag} {path} is inside {name}, a folder this run reads: writing there could "
                                  f"change or destroy it. Give {flag} a path outside that folder.")
            raise OutputError(f"{flag} {path} {clash} {name}: writing it would destroy the other. "
                              f"Give {flag} a file of its own.")
        taken.append((place, f"{flag} {path}"))


def check_kld(config: EvalConfig, base_dtype: str | None, base_model: str | None = None) -> None:
    """What ``lleval kld`` refuses that ``score`` accepts (a `ConfigError`), checked with the
    rest before anything loads; and an output over the base model (``base_model``, ``--base``),
    a file the run reads that its config does not name (an `OutputError`)."""
    if config.checkpoint:
        raise ConfigError(
            f"lleval kld does not resume from {config.flag('checkpoint')}: its per-token statistics are not "
            "saved. Drop it."
        )
    if config.token_stats:
        raise ConfigError("lleval kld writes its tokens with --tokens; --token-stats is lleval score's.")
    if base_dtype is not None and base_dtype not in DTYPES:
        raise ConfigError(f"base dtype must be one of {', '.join(DTYPES)}, got {base_dtype!r}.")
    if base_model is not None:
        check_distinct(config.outputs(), [("--base", base_model)])


def check_writable(path: str, flag: str = "--output") -> None:
    """Fail now, before any scoring, if ``path`` (given as ``flag``) cannot be written later."""
    target = Path(path).expanduser()
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise OutputError(f"{flag} {path} is a folder: give a file name such as {path}/report.json.")
    if not folder.is_dir():
        raise OutputError(f"{flag} {path}: folder {folder} does not exist. Create it or pick another {flag}.")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise OutputError(f"{flag} {path} is not writable: pick another {flag}.")


def check_trackers(names: tuple[str, ...] | list[str]) -> None:
    """Refuse (`ConfigError`) a ``--log-to`` tracker whose packages are not installed, naming
    the extra that installs them, before any model loads (finding a module imports nothing)."""
    import importlib.util

    for name in dict.fromkeys(names):
        modules, extra = TRACKERS.get(name, ((), ""))
        missing = [module for module in modules if importlib.util.find_spec(module) is None]
        if missing:
            raise ConfigError(f"--log-to {name} needs the {' and '.join(missing)} package"
                              f"{'s' if len(missing) > 1 else ''}, which {'are' if len(missing) > 1 else 'is'} not "
                              f"installed: pip install 'lleval[{extra}]'.")
