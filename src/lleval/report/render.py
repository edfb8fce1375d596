"""What the table and markdown renderings of every report kind share: numbers as text,
and two-column (label, value) tables with the report's notes under them."""

from __future__ import annotations

import math
from typing import Any, Sequence


def fmt(value: float | None, digits: int = 4) -> str:
    """A number for a rendered table: fixed digits, ``n/a`` for none, ``inf`` for overflow."""
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return "inf"
    return f"{value:.{digits}f}"


def render_pairs_table(title: str, rows: list[tuple[str, str]], notes: list[str], console: Any) -> None:
    """A two-column rich table of (label, value) rows, then the notes."""
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    for note in notes:
        console.print(f"note: {note}")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a markdown table: its header, the separator, one line per row (a ``|`` in
    a cell written ``/``, which would otherwise end the cell)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return lines + ["| " + " | ".join(v.replace("|", "/") for v in row) + " |" for row in rows]


def render_pairs_markdown(title: str, rows: list[tuple[str, str]], notes: list[str]) -> str:
    """A two-column markdown table of (label, value) rows (for CI job summaries), then the notes."""
    lines = [f"### {title}", "", "| what | value |", "| --- | --- |"]
    lines += [f"| {label} | {value.replace('|', '/')} |" for label, value in rows]
    lines += [f"\n> note: {note}" for note in notes]
    return "\n".join(lines) + "\n"
