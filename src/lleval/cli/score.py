"""``lleval score``: one run, or a suite (several models or datasets, or a --suite file).

One run is `lleval.commands.score.evaluate`, a suite `lleval.commands.suite.run_suite`;
either runs under the command's scope and interrupts, with progress on stderr, and its
report is delivered (``-o``, stdout, trackers). Exit 1 when an output or a suite cell
failed (2 when a cell failed on input to fix), 128 + the signal when interrupted.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from lleval.cli.calls import call
from lleval.cli.checks import check_early, config_file
from lleval.cli.deliver import deliver, log_result
from lleval.cli.options import CONTEXT_SETTINGS, SectionedCommand, config_from_flags, config_options
from lleval.cli.progress import with_progress
from lleval.cli.scope import Interrupts, command_scope


@click.command(cls=SectionedCommand, context_settings=CONTEXT_SETTINGS)
@config_options("score")
def score(**flags: Any) -> None:
    """Score a dataset with a causal LM: log-likelihood, perplexity, bits per byte.

    \b
    Examples:
      lleval score                                   # built-in model and sample text
      lleval score -m ./my-model -d notes.txt --sample-by paragraph -o report.json
      lleval score --config configs/wikitext2.yaml -m gpt2
      lleval score -m ./checkpoint-1000 -m ./checkpoint-2000 -d a.jsonl -d b.txt -o suite.json
      lleval score --suite configs/suites/checkpoint-sweep.yaml -o suite.json --html suite.html
      lleval score -d eval.jsonl --membership --calibration --html report.html
      lleval score -m http://127.0.0.1:8000/v1 -d eval.jsonl --save-reference ref.parquet --reference-top-k 20
    """
    models, datasets = flags.pop("model"), flags.pop("dataset")
    if flags["suite"] or flags["step"] or len(models) > 1 or len(datasets) > 1:
        return _score_suite(flags, models, datasets)
    config = config_from_flags({**flags, "model": models[0] if models else None,
                                "dataset": datasets[0] if datasets else None})
    check_early(config)
    with command_scope(config.quiet), Interrupts() as interrupts:
        from lleval.commands.score import evaluate

        report = with_progress(config, evaluate, config, should_stop=interrupts.should_stop)
        failed = deliver(report, config.output, config.format, log_result(report, config, "score"))
    if interrupts.signum is not None:
        what = "after the run had finished: the report is complete" if report.complete else "report marked incomplete"
        click.echo(f"stopped by signal {interrupts.signum}: {what}", err=True)
        sys.exit(128 + interrupts.signum)
    if failed:
        sys.exit(1)


def _score_suite(flags: dict[str, Any], models: tuple[str, ...], datasets: tuple[str, ...]) -> None:
    """``score`` with several models or datasets, or a --suite file: one suite report; exit 1
    when a cell failed, 128 + the signal when interrupted (the finished cells are written)."""
    if flags["suite"] and (models or datasets):
        raise click.UsageError("--suite names the models and datasets: drop --model and --dataset, or --suite.")
    config = config_from_flags({**flags, "model": None, "dataset": None})
    from lleval.commands.suite import check_suite, run_suite, suite_for

    call(config.validate)
    suite = call(suite_for, config, models, datasets)
    call(check_suite, suite, config, config_file())
    with command_scope(config.quiet), Interrupts() as interrupts:
        report = with_progress(config, run_suite, suite, config, should_stop=interrupts.should_stop)
        failed = deliver(report, config.output, config.format, log_result(report, config, "suite"))
    if interrupts.signum is not None:
        click.echo(f"stopped by signal {interrupts.signum}: suite report marked incomplete", err=True)
        sys.exit(128 + interrupts.signum)
    for cell in (c for c in report.cells if c.error is not None):
        click.echo(f"Error: cell {cell.model} x {cell.dataset}: {cell.error}", err=True)
    codes = [c.exit_code for c in report.cells if c.error is not None] + ([1] if failed else [])
    if codes:
        sys.exit(max(codes))  # 2 when a cell failed on input to fix (a missing model), else 1
