"""The checks a run can make before anything heavy loads: flags, output paths, the data source.

None of them needs the model, the tokenizer or the data's contents, and this
module imports neither torch, transformers nor datasets, so the CLI runs
`check_config` first and a wrong flag costs a fraction of a second, not the
seconds those imports take. `lleval.runner.prepare.open_inputs` runs it again (it is
cheap) for callers of the Python API.
"""

from __future__ import annotations

import os
from pathlib import Path

from lleval.config import DTYPES, TRACKERS, EvalConfig
from lleval.data.spec import check_spec, data_spec
from lleval.errors import ConfigError, OutputError

OUTPUT_FLAGS = ("output", "checkpoint", "tokens", "html")  # the files a run writes


def check_config(config: EvalConfig) -> None:
    """Raise the first typed error a config earns before any loading: `EvalConfig.validate`
    (every flag problem at once), then an output file that cannot be written, then a data
    source that does not exist or would ignore a flag (`lleval.data.spec.check_spec`)."""
    config.validate()
    outputs = [(config.flag(name), path) for name in OUTPUT_FLAGS if (path := getattr(config, name))]
    for flag, path in outputs:
        check_writable(path, flag)
    inputs = [] if config.dataset in (None, "-") else [(config.flag("dataset"), config.dataset or "")]
    check_distinct(outputs, inputs)
    check_spec(data_spec(config))
    check_trackers(config.log_to)


def check_distinct(outputs: list[tuple[str, str]], inputs: list[tuple[str, str]]) -> None:
    """Refuse (`OutputError`) two outputs of one run that name the same file, or an output
    that names an input: the later write would silently destroy the other (``-o`` over
    the dataset, the report over the checkpoint). ``outputs`` and ``inputs`` are
    ``(flag, path)`` pairs; paths are compared as resolved files."""
    seen: dict[Path, str] = {}
    for flag, path in inputs:
        seen.setdefault(Path(path).expanduser().resolve(), f"{flag} {path}")
    for flag, path in outputs:
        key = Path(path).expanduser().resolve()
        if key in seen:
            raise OutputError(f"{flag} {path} is the same file as {seen[key]}: writing it would destroy the other. "
                              "Give each output a file of its own.")
        seen[key] = f"{flag} {path}"


def check_kld(config: EvalConfig, base_dtype: str | None) -> None:
    """What ``lleval kld`` refuses that ``score`` accepts (a `ConfigError`), checked with the
    rest before anything loads."""
    if config.checkpoint:
        raise ConfigError(
            f"lleval kld does not resume from {config.flag('checkpoint')}: its per-token statistics are not "
            "saved. Drop it."
        )
    if config.token_stats:
        raise ConfigError("lleval kld writes its tokens with --tokens; --token-stats is lleval score's.")
    if base_dtype is not None and base_dtype not in DTYPES:
        raise ConfigError(f"base dtype must be one of {', '.join(DTYPES)}, got {base_dtype!r}.")


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
