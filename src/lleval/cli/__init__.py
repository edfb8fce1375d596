"""The ``lleval`` command line: flags -> `EvalConfig` -> one library call -> rendering.

Nothing here computes a number, builds a JSON document or decides a verdict:
each command parses its flags, calls one library function, writes and
renders the typed result it gets back, and picks the exit code. Library
errors (`LlevalError`) become one line on stderr and an exit code: 2 for
input the user must fix, 1 for failures at run time. Torch, transformers and
datasets are imported only inside commands, after `lleval.preflight` has
checked every flag, so ``lleval --help`` and a refused flag are fast.

This module holds the ``lleval`` group and the console entry; each command is a
module of its own (`score`, `kld`, `compare`, `inspect`), and what they share has
one module per concern: `options` (the click options, from the config's
`Setting`s), `checks` (before any work), `calls` (library errors to exit codes),
`scope` (what a command changes in its process), `progress` (stderr) and
`deliver` (where a result goes).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from lleval import __version__
from lleval.cli import compare, inspect, kld, score
from lleval.cli.options import CONTEXT_SETTINGS, SectionedGroup


@click.group(cls=SectionedGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", "-V", prog_name="lleval")
def main() -> None:
    """Exact, fast log-likelihood and perplexity of causal LMs on text datasets."""


main.add_command(score.score)
main.add_command(kld.kld)
main.add_command(compare.compare)
main.add_command(inspect.inspect)


def entry() -> None:
    """The ``lleval`` console command: run the CLI, then leave without Python's teardown.

    Once the report is written (atomically, fsynced) and stdout flushed,
    nothing is left to do, yet tearing down torch and a loaded model takes
    about a second (1.1 s of a 7.6 s run of the built-in default on 3
    documents, measured here): the process exits at once instead.
    """
    code: Any = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):  # sys.exit("message") prints the message and exits 1
        click.echo(code, err=True)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
