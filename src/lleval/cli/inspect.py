"""``lleval inspect``: where a model is surprised, read from a token file of ``score --tokens``
(or the difference between two), or a suite report's matrix and page.

Reads files only: no model, and no torch, transformers or datasets imported.
"""

from __future__ import annotations

from typing import Any

import click

from lleval.cli.calls import call
from lleval.cli.checks import check_paths
from lleval.cli.deliver import deliver
from lleval.cli.options import CONTEXT_SETTINGS, SectionedCommand
from lleval.config import DEFAULT_HTML_DOCS, FORMATS


@click.command(cls=SectionedCommand, context_settings=CONTEXT_SETTINGS)
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
