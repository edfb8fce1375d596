"""``lleval compare``: score (or suite) reports of candidates against a base, and the CI gate.

One call to `lleval.commands.compare.compare_report_files`; then its files (the page, the
GitHub step summary, JUnit XML), the trackers, the report and its lines on stderr (warnings,
regressions, GitHub annotations). Exit 1 when a candidate regressed beyond
``--max-regression`` or an output failed, 2 on unusable input.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from lleval.cli.calls import InputProblem, call
from lleval.cli.checks import check_paths
from lleval.cli.deliver import deliver, log_result, try_output
from lleval.cli.options import CONTEXT_SETTINGS, Resamples, SectionedCommand, setting_options
from lleval.config import COMPARE_METRICS, FORMATS, EvalConfig


@click.command(cls=SectionedCommand, context_settings=CONTEXT_SETTINGS)
@click.argument("base", type=click.Path(dir_okay=False))
@click.argument("candidates", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--max-regression", type=click.FloatRange(min=0), default=None, metavar="PCT",
              help="Exit 1 if a candidate is worse than the base by more than PCT percent.")
@click.option("--require-significant", is_flag=True, default=False,
              help="With --max-regression: fail only when the 95% interval also excludes zero.")
@click.option("--metric", type=click.Choice(COMPARE_METRICS), default="perplexity", show_default=True,
              help="What is compared and gated when the tokenizers match (bits per byte when they differ).")
@click.option("--bootstrap", type=Resamples(), default=1000, show_default=True,
              help="Paired bootstrap resamples over documents: 0 (none), or 100 and more.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--format", type=click.Choice(FORMATS), default="table", show_default=True,
              help="What stdout gets: a table, the JSON comparison, or markdown.")
@click.option("--summary", is_flag=True, default=False,
              help="Append the markdown table to the file named by $GITHUB_STEP_SUMMARY.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write compare.json here.")
@click.option("--junit", type=click.Path(dir_okay=False), default=None,
              help="Write JUnit XML here: a test case per candidate (and per dataset of suites), a failure per "
                   "regression.")
@click.option("--top-documents", type=click.IntRange(min=0), default=10, show_default=True,
              help="Documents listed per candidate as the most changed, each way (and, with membership "
                   "scores, by Min-K%++ rise).")
@click.option("--html", type=click.Path(dir_okay=False), default=None,
              help="Write an HTML page here: each candidate's change with its interval, and the gate.")
@click.option("--cell", default=None, metavar="MODEL/DATASET",
              help="A suite report compared with a score report: the suite's cell to compare.")
@click.option("--only-common", is_flag=True, default=False,
              help="Two suite reports whose cells differ (a dataset or a model missing from one): compare only "
                   "the cells both have (default: refused, exit 2, naming what each lacks).")
@setting_options("compare")
def compare(base: str, candidates: tuple[str, ...], max_regression: float | None, require_significant: bool,
            metric: str, bootstrap: int, seed: int, format: str, summary: bool, output: str | None,
            junit: str | None, top_documents: int, html: str | None, cell: str | None,
            only_common: bool, log_to: tuple[str, ...], log_dir: str | None) -> None:
    """Compare score reports of candidates against a base on the same texts.

    Suite reports are compared dataset by dataset (cells matched by dataset
    label, or by model and dataset labels when a suite has several models); two
    suites must hold the same cells (or give --only-common); a suite and a score
    report by the cell of the same texts (or --cell).

    Exit codes: 0 every candidate passes, 1 a candidate (or a suite's dataset)
    regressed beyond --max-regression, 2 unusable input (unreadable report,
    different texts). Under GitHub Actions ($GITHUB_ACTIONS) each regression is
    also an ::error annotation and each protocol difference a ::warning.

    \b
    Example (CI gate: fail if perplexity rises by more than 1%):
      lleval compare base.json new.json --max-regression 1 --summary --junit lleval.xml
      lleval compare base-suite.json new-suite.json --max-regression 1 --metric bits_per_byte
    """
    from lleval.commands.compare import compare_report_files

    if require_significant and max_regression is None:
        raise click.UsageError("--require-significant qualifies the gate of --max-regression: give both.")
    if bootstrap == 0 and seed != 0:
        raise click.UsageError("--seed seeds the bootstrap, which --bootstrap 0 turns off: drop one of them.")
    summary_file = _summary_file() if summary else None
    _check_compare_paths(base, candidates, {"--output": output, "--html": html, "--summary": summary_file,
                                            "--junit": junit})
    tracking = _compare_tracking(log_to, log_dir, html)
    result = call(compare_report_files, base, list(candidates), max_regression_pct=max_regression,
                   require_significant=require_significant, n_resamples=bootstrap, seed=seed,
                   top_documents=top_documents, cell=cell, metric=metric, only_common=only_common)
    earlier = _compare_files(result, html, summary_file, junit)
    earlier += log_result(result, tracking, "compare", {"base": base, "candidates": list(candidates), "cell": cell,
                                                  "max_regression": max_regression, "bootstrap": bootstrap,
                                                  "require_significant": require_significant, "seed": seed,
                                                  "metric": metric, "only_common": only_common})
    failed = deliver(result, output, format, earlier)
    _compare_messages(result)
    if failed or not result.passed:
        sys.exit(1)


def _compare_files(result: Any, html: str | None, summary_file: str | None, junit: str | None) -> list[str]:
    """Write compare's files besides --output (the page, the step summary, the JUnit XML); each
    failure is returned, one line, and costs that file alone."""
    from lleval.report.ci import write_junit
    from lleval.report.html import write_compare_html

    return ((try_output(write_compare_html, result, html) if html else [])
            + (try_output(_append_summary, summary_file, result.render_markdown()) if summary_file else [])
            + (try_output(write_junit, result, junit) if junit else []))


def _compare_messages(result: Any) -> None:
    """compare's lines on stderr: each protocol warning, each change over the limit that
    --require-significant let pass, each regression; and under GitHub Actions
    ($GITHUB_ACTIONS=true) the same as workflow annotations."""
    for warning in (r.warning for r in result.comparisons if r.warning):
        click.echo(f"warning: {warning}", err=True)
    for sentence in result.forgiven_sentences():
        click.echo(f"over the limit, not significant: {sentence}", err=True)
    for r in result.regressions:
        click.echo(f"regression: {r.name} {r.metric} {r.change * 100:+.2f}% (limit +{result.max_regression_pct:g}%)",
                   err=True)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        from lleval.report.ci import github_annotations

        for line in github_annotations(result):
            click.echo(line, err=True)


def _compare_tracking(log_to: tuple[str, ...], log_dir: str | None, html: str | None) -> EvalConfig:
    """compare's --log-to and --log-dir (and the page they send), checked as score's are: a
    missing tracker package is refused before any report is read."""
    from lleval.preflight import check_trackers

    config = EvalConfig(log_to=log_to, log_dir=log_dir, html=html, origins={"log_to": "flag", "log_dir": "flag"})
    call(config.validate)
    call(check_trackers, log_to)
    return config


def _summary_file() -> str:
    """The file ``--summary`` appends to; refused before any work when GitHub Actions did not name one."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        raise InputProblem("--summary needs $GITHUB_STEP_SUMMARY to name a file (GitHub Actions sets it).")
    return path


def _append_summary(path: str, markdown: str) -> None:
    """Append the markdown to the step summary; a failure is an `OutputError` (one line), and
    an empty file this left behind is removed."""
    from lleval.errors import write_failure
    from lleval.files import remove_quietly

    existed = os.path.exists(path)
    try:
        with open(path, "a", encoding="utf-8") as out:
            out.write(markdown)
    except OSError as exc:
        if not existed:
            remove_quietly(Path(path))
        raise write_failure("--summary", path, exc) from None


def _check_compare_paths(base: str, candidates: tuple[str, ...], outputs: dict[str, str | None]) -> None:
    """compare's outputs (``{flag: path}``) must be files of their own: not a report it reads,
    not each other."""
    given = [(flag, path) for flag, path in outputs.items() if path]
    check_paths(given, [("BASE", base)] + [("CANDIDATE", c) for c in candidates])
