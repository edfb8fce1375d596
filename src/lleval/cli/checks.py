"""What a command checks before any work: its settings (`lleval.preflight`), and that
each file it writes is a file of its own.

These run before torch, transformers and datasets are imported, so a refused flag
or path costs a fraction of a second and touches nothing.
"""

from __future__ import annotations

import click

from lleval.cli.calls import call
from lleval.cli.options import CONFIG_FILE_KEY
from lleval.config import EvalConfig


def check_early(config: EvalConfig) -> None:
    """Every check that needs neither the model nor the data's contents, before torch,
    transformers and datasets are imported (seconds)."""
    from lleval.preflight import check_config

    call(check_config, config, config_file())


def config_file() -> list[tuple[str, str]]:
    """The ``--config`` file the command read, as an input no output may be written over."""
    path = click.get_current_context().meta.get(CONFIG_FILE_KEY)
    return [("--config", path)] if path else []


def check_paths(outputs: list[tuple[str, str]], inputs: list[tuple[str, str]]) -> None:
    """A command's outputs must be files of their own: not a file it reads, not each other."""
    from lleval.preflight import check_distinct

    call(check_distinct, outputs, inputs)
