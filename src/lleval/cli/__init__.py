"""The ``lleval`` command line: flags -> `EvalConfig` -> one library call -> rendering.

Nothing here computes a number, builds a JSON document or decides a verdict:
each command parses its flags, calls one library function, writes and
renders the typed result it gets back, and picks the exit code. Library
errors (`LlevalError`) become one line on stderr and an exit code: 2 for
input the user must fix, 1 for failures at run time. Torch, transformers and
datasets are imported only inside commands, after `lleval.preflight` has
checked every flag, so ``lleval --help`` and a refused flag are fast.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import click

from lleval import __version__
from lleval.cli.calls import InputProblem, call
from lleval.cli.checks import check_early, check_paths, config_file
from lleval.cli.deliver import deliver, log_result, try_output
from lleval.cli.options import (Resamples, SectionedGroup, SectionOption, config_from_flags, config_options,
                                origin_of, setting_options)
from lleval.cli.progress import with_progress
from lleval.cli.scope import Interrupts, command_scope
from lleval.config import COMPARE_METRICS, DEFAULT_HTML_DOCS, DTYPES, FORMATS, EvalConfig

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=SectionedGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", "-V", prog_name="lleval")
def main() -> None:
    """Exact, fast log-likelihood and perplexity of causal LMs on text datasets."""


@main.command(context_settings=CONTEXT_SETTINGS)
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


@main.command(context_settings=CONTEXT_SETTINGS)
@click.option("--base", "base_model", default=None, cls=SectionOption, section="base",
              help="Reference model (hub id, folder or .gguf file). Default: the same model as --model.")
@click.option("--base-dtype", type=click.Choice(DTYPES), default=None, cls=SectionOption, section="base",
              help="dtype of the base model. Default: --dtype. With no --base: the same model in two dtypes.")
@click.argument("dataset_argument", metavar="[DATASET]", required=False, default=None)
@config_options("kld")
def kld(base_model: str | None, base_dtype: str | None, dataset_argument: str | None, **flags: Any) -> None:
    """KL divergence KL(P_base || P_model) per scored token, over the full vocabulary.

    --model is the model compared with the base (default: the built-in
    SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32). Both run over the same windows, with every option of
    score. Files written: the report (-o), and when asked the per-token file (--tokens, with each token's KL)
    and the page (--html); nothing else. The data is --dataset (or DATASET, the same). Refuses models whose
    tokenizers differ.

    \b
    Examples:
      lleval kld --base ./model-fp32 --model ./model-int8 -d eval.jsonl -o kld.json
      lleval kld --base-dtype float32 --dtype bfloat16      # what bf16 costs the built-in model
      lleval kld -m ./model-int8 -d eval.jsonl --reference ref.parquet --html kld.html
    """
    if dataset_argument is not None and flags["dataset"] not in (None, dataset_argument):
        raise click.UsageError(f"two datasets given ({dataset_argument} and --dataset {flags['dataset']}): pick one.")
    if flags["reference"] is not None and (base_model is not None or base_dtype is not None):
        raise click.UsageError("--reference is the base: drop --base and --base-dtype.")
    if base_model is None and base_dtype in (None, flags["dtype"]) and flags["reference"] is None:
        raise click.UsageError("give --base (another model), --base-dtype (the same model in another dtype), "
                               "or --reference (a file of lleval score --save-reference).")
    config = config_from_flags({**flags, "dataset": flags["dataset"] or dataset_argument},
                               typed=["dataset"] if dataset_argument is not None else [])
    config = dataclasses.replace(config, origins={**config.origins, **base_origins()})
    from lleval.preflight import check_kld

    call(check_kld, config, base_dtype, base_model)
    check_early(config)
    with command_scope(config.quiet):
        from lleval.commands.kld import kl_divergence

        base = None if config.reference else base_model or config.model  # --reference: the base is the file
        result = with_progress(config, kl_divergence, config, base, base_dtype=base_dtype)
        failed = deliver(result, config.output, config.format, log_result(result, config, "kld"))
    if failed:
        sys.exit(1)


@main.command(context_settings=CONTEXT_SETTINGS)
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


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("tokens", type=click.Path(dir_okay=False))
@click.argument("candidate", required=False, default=None, type=click.Path(dir_okay=False))
@click.option("--doc", "document", type=int, default=None,
              help="Print this document (its row in the source) with each token coloured.")
@click.option("--worst", type=click.IntRange(min=0), default=None,
              help="List this many of the most surprising spans (with CANDIDATE: those that got most worse). "
              "Default: 10, or none with --doc.")
@click.option("--span", type=click.IntRange(min=1), default=8, show_default=True, help="Tokens in a span.")
@click.option("--html", type=click.Path(dir_okay=False), default=None,
              help="Write the HTML report of the token file here (curve, documents, coloured tokens).")
@click.option("--html-docs", type=click.IntRange(min=0), default=DEFAULT_HTML_DOCS, show_default=True,
              help="How many of the most (and of the least) surprising documents --html shows.")
@click.option("--format", type=click.Choice(FORMATS), default="table", show_default=True,
              help="What stdout gets: coloured text and a table, JSON, or markdown.")
def inspect(tokens: str, candidate: str | None, document: int | None, worst: int | None, span: int, html: str | None,
            html_docs: int, format: str) -> None:
    """Show where the model is surprised, from a token file of `lleval score --tokens`.

    With CANDIDATE (a token file of the same texts and tokenizer), colour the
    per-token difference instead: red where the candidate is more surprised.
    TOKENS may also be a suite report (suite.json): its matrix, and with --html
    the suite's page (trend chart and cells, without the token-by-token documents).

    \b
    Examples:
      lleval inspect t.parquet --doc 3            # document 3, coloured by surprisal
      lleval inspect t.parquet --doc 3 --worst 5  # document 3, then the 5 most surprising spans
      lleval inspect t.parquet --worst 20         # the 20 most surprising 8-token spans
      lleval inspect base.parquet new.parquet --doc 3
      lleval inspect t.parquet --html t.html
      lleval inspect suite.json --html suite.html
    """
    from lleval.commands.inspect import inspect_tokens, read_suite, write_tokens_html

    if html is not None and candidate is not None:
        raise click.UsageError("--html draws one token file: drop CANDIDATE or --html.")
    if html is None and html_docs != DEFAULT_HTML_DOCS:
        raise click.UsageError("--html-docs sets how many documents --html shows: give --html.")
    if html is not None:
        check_paths([("--html", html)], [("TOKENS", tokens)])
    suite = call(read_suite, tokens)
    if suite is not None:
        return _inspect_suite(suite, candidate, document, worst, html, html_docs, format)
    result = call(inspect_tokens, tokens, candidate, document=document, worst=worst, span=span)
    if html:
        call(write_tokens_html, tokens, html, html_docs)
    deliver(result, None, format)


def _inspect_suite(suite: Any, candidate: str | None, document: int | None, worst: int | None, html: str | None,
                   html_docs: int, format: str) -> None:
    """``inspect suite.json``: the suite's matrix on stdout, its page with --html."""
    if candidate is not None or document is not None or worst is not None or html_docs != DEFAULT_HTML_DOCS:
        raise click.UsageError("a suite report holds no tokens: drop CANDIDATE, --doc, --worst and --html-docs "
                               "(inspect a cell's token file for those).")
    if html:
        from lleval.report.suite_html import write_suite_html

        call(write_suite_html, suite, html)
    deliver(suite, None, format)


def _compare_tracking(log_to: tuple[str, ...], log_dir: str | None, html: str | None) -> EvalConfig:
    """compare's --log-to and --log-dir (and the page they send), checked as score's are: a
    missing tracker package is refused before any report is read."""
    from lleval.preflight import check_trackers

    config = EvalConfig(log_to=log_to, log_dir=log_dir, html=html, origins={"log_to": "flag", "log_dir": "flag"})
    call(config.validate)
    call(check_trackers, log_to)
    return config


def base_origins() -> dict[str, str]:
    """Where kld's --base and --base-dtype came from (``base``, ``base_dtype``), for the
    report's ``settings``: typed, or from the config file; absent when left unset."""
    ctx = click.get_current_context()
    pairs = (("base_model", "base"), ("base_dtype", "base_dtype"))
    return {name: origin for param, name in pairs if (origin := origin_of(ctx, param)) is not None}


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


