"""The suite report (``kind: "suite"``): every (model, dataset) cell of a suite run with its
full score report, the models x datasets matrix, and each model's macro average.

The matrix is derived from the cells' reports when written, never stored twice;
the macro averages (a bootstrap) are computed once by the run and read back as
written. ``SuiteReport.from_dict`` checks the JSON against the shipped schema and
reads every cell's report back with `Report.from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lleval import __version__
from lleval.report.output import json_float, json_interval, read_interval, to_json
from lleval.report.render import fmt, markdown_table
from lleval.report.schema import SCHEMA_VERSION, check
from lleval.report.score import Report


@dataclass(frozen=True)
class SuiteModel:
    """A model of the suite as its report names it: label, what it loads, its step."""

    label: str
    model: str | None
    revision: str | None = None
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The model's entry in ``models``."""
        return {"label": self.label, "model": self.model, "revision": self.revision, "step": self.step}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SuiteModel":
        """Read an entry of ``models`` back."""
        return cls(data["label"], data["model"], data.get("revision"), data.get("step"))


@dataclass(frozen=True)
class SuiteCell:
    """One (model, dataset) pair: its score report, or the error that kept it from one."""

    model: str  # label
    dataset: str  # label
    report: Report | None
    error: str | None = None
    exit_code: int = 0  # the failure's (`LlevalError.exit_code`: 2 input to fix, 1 run time); not in the JSON

    def to_dict(self) -> dict[str, Any]:
        """The cell's entry in ``cells``."""
        return {"model": self.model, "dataset": self.dataset, "error": self.error,
                "report": None if self.report is None else self.report.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> "SuiteCell":
        """Read an entry of ``cells`` back, its report checked as a score report."""
        where = f"{source} (cell {data['model']} x {data['dataset']})"
        report = None if data["report"] is None else Report.from_dict(data["report"], where)
        return cls(data["model"], data["dataset"], report, data.get("error"))


@dataclass(frozen=True)
class MacroAverage:
    """A model's mean over datasets of bits per byte, each dataset weighing the same."""

    model: str
    bits_per_byte: float | None
    interval: tuple[float, float] | None
    datasets: int  # how many datasets the mean is over (those with a finished cell)

    def to_dict(self) -> dict[str, Any]:
        """The model's entry in ``macro``."""
        return {"model": self.model, "bits_per_byte": json_float(self.bits_per_byte),
                "bits_per_byte_ci": json_interval(self.interval), "datasets": self.datasets}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MacroAverage":
        """Read an entry of ``macro`` back."""
        return cls(data["model"], data["bits_per_byte"], read_interval(data["bits_per_byte_ci"]), data["datasets"])


@dataclass
class SuiteReport:
    """Everything a suite run measured (``kind: "suite"``)."""

    models: list[SuiteModel]
    datasets: list[str]  # labels, in the suite's order
    cells: list[SuiteCell]
    macro: list[MacroAverage]
    complete: bool
    counts: dict[str, int]  # model_loads, tokenizations, replays
    bootstrap: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    created: str = ""
    lleval_version: str = __version__
    failed_outputs: list[Any] = field(default_factory=list, repr=False, compare=False)

    @property
    def ordered_models(self) -> list[SuiteModel]:
        """The models by step when every model has one (a checkpoint sweep), else as given."""
        if self.models and all(m.step is not None for m in self.models):
            return sorted(self.models, key=lambda m: m.step or 0)
        return list(self.models)

    @property
    def has_trend(self) -> bool:
        """Whether the models are steps of one run (every one has a step)."""
        return bool(self.models) and all(m.step is not None for m in self.models)

    def cell(self, model: str, dataset: str) -> SuiteCell | None:
        """The cell of a model and a dataset label."""
        return next((c for c in self.cells if c.model == model and c.dataset == dataset), None)

    def matrix(self) -> list[dict[str, Any]]:
        """One row per cell, models ordered by step when they have steps: perplexity and bits
        per byte with their intervals, and tokens (None where the cell has no report)."""
        rows = []
        for m in self.ordered_models:
            for d in self.datasets:
                cell = self.cell(m.label, d)
                report = None if cell is None else cell.report
                metrics = {} if report is None else report.metrics
                intervals = {} if report is None else report.intervals
                rows.append({
                    "model": m.label, "dataset": d, "step": m.step,
                    "perplexity": json_float(metrics.get("perplexity")),
                    "perplexity_ci": json_interval(intervals.get("perplexity")),
                    "bits_per_byte": json_float(metrics.get("bits_per_byte")),
                    "bits_per_byte_ci": json_interval(intervals.get("bits_per_byte")),
                    "tokens": None if report is None else report.totals.tokens,
                    "complete": None if report is None else report.complete,
                    # false: the cell's intervals come from too few documents (its bootstrap block)
                    "ci_reliable": None if report is None else report.bootstrap.get("reliable"),
                })
        return rows

    def macro_reliable(self, model: str) -> bool | None:
        """Whether a model's macro interval comes from enough documents in every dataset (None:
        no macro interval, or no cell that says)."""
        macro = next((m for m in self.macro if m.model == model), None)
        if macro is None or macro.interval is None:
            return None
        said = [c.report.bootstrap.get("reliable") for c in self.cells if c.model == model and c.report is not None]
        return None if all(r is None for r in said) else not any(r is False for r in said)

    @property
    def title(self) -> str:
        """``lleval suite — 1 model x 2 datasets``."""
        return f"lleval suite — {count_of(len(self.models), 'model')} x {count_of(len(self.datasets), 'dataset')}"

    def interval_notes(self) -> list[str]:
        """A note when some interval shown comes from too few documents (marked ``unreliable``)."""
        from lleval.metrics import MIN_INTERVAL_DOCUMENTS

        if not any(row["ci_reliable"] is False for row in self.matrix()):
            return []
        return [f"intervals marked unreliable come from fewer than {MIN_INTERVAL_DOCUMENTS} documents: a bootstrap "
                "over so few covers the true value far less often than 95%."]

    def to_dict(self) -> dict[str, Any]:
        """The JSON export, schema version 1."""
        return {
            "schema_version": SCHEMA_VERSION, "kind": "suite", "lleval_version": self.lleval_version,
            "created": self.created, "complete": self.complete,
            "models": [m.to_dict() for m in self.models], "datasets": list(self.datasets),
            "counts": dict(self.counts), "bootstrap": dict(self.bootstrap),
            "matrix": self.matrix(),
            "macro": [{**m.to_dict(), "bits_per_byte_ci_reliable": self.macro_reliable(m.model)} for m in self.macro],
            "notes": list(self.notes),
            "cells": [c.to_dict() for c in self.cells],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "(a dict)") -> "SuiteReport":
        """Read a suite report's JSON back, checked against the shipped schema (a `ReportError`
        naming ``source`` and the first problem), each cell's report as a score report."""
        check(data, "suite", source)
        return cls([SuiteModel.from_dict(m) for m in data["models"]], list(data["datasets"]),
                   [SuiteCell.from_dict(c, source) for c in data["cells"]],
                   [MacroAverage.from_dict(m) for m in data["macro"]], data["complete"], dict(data["counts"]),
                   dict(data["bootstrap"]), list(data["notes"]), data["created"], data["lleval_version"])

    def to_json(self) -> str:
        """The JSON export as text."""
        return to_json(self.to_dict())

    def render_table(self, console: Any) -> None:
        """The matrix and the macro averages as rich tables on ``console``, then the notes."""
        from rich.table import Table

        table = Table(title=self.title)
        for column in matrix_columns(self):
            table.add_column(column, justify="left" if column in ("model", "dataset") else "right")
        for row in matrix_rows(self):
            table.add_row(*row)
        console.print(table)
        macro = Table(title="macro average over datasets (each dataset weighs the same)")
        for column in macro_columns(self):
            macro.add_column(column, justify="left" if column == "model" else "right")
        for row in macro_rows(self):
            macro.add_row(*row)
        console.print(macro)
        for note in self.notes + self.interval_notes():
            console.print(f"note: {note}")

    def render_markdown(self) -> str:
        """The matrix and the macro averages as markdown (for a GitHub step summary)."""
        lines = [f"### {self.title}", "", *markdown_table(matrix_columns(self), matrix_rows(self))]
        lines += ["", "#### Macro average over datasets", "",
                  *markdown_table(macro_columns(self), macro_rows(self))]
        lines += [f"\n> note: {note}" for note in self.notes + self.interval_notes()]
        return "\n".join(lines) + "\n"


MATRIX_COLUMNS = ("model", "dataset", "tokens", "perplexity [95% CI]", "bits per byte [95% CI]")
MACRO_COLUMNS = ("model", "datasets", "bits per byte [95% CI]")


def count_of(n: int, word: str) -> str:
    """``1 model``, ``2 models``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _without_ci(columns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(c.removesuffix(" [95% CI]") for c in columns)


def matrix_columns(report: SuiteReport) -> tuple[str, ...]:
    """The matrix's headers: "[95% CI]" only when some cell shows an interval."""
    shown = any(row["perplexity_ci"] is not None or row["bits_per_byte_ci"] is not None for row in report.matrix())
    return MATRIX_COLUMNS if shown else _without_ci(MATRIX_COLUMNS)


def macro_columns(report: SuiteReport) -> tuple[str, ...]:
    """The macro table's headers: "[95% CI]" only when some model's macro average has an interval."""
    return MACRO_COLUMNS if any(m.interval is not None for m in report.macro) else _without_ci(MACRO_COLUMNS)


def _with_interval(value: float | None, interval: Any, reliable: bool | None = None) -> str:
    shown = fmt(value)
    if interval is not None:
        low, high = (None if end is None else float(end) for end in interval)
        shown += f" [{fmt(low)}, {fmt(high)}]" + (" unreliable" if reliable is False else "")
    return shown


def matrix_rows(report: SuiteReport) -> list[tuple[str, ...]]:
    """The matrix as text rows; a failed cell shows its error."""
    rows: list[tuple[str, ...]] = []
    for row in report.matrix():
        cell = report.cell(row["model"], row["dataset"])
        if cell is None or cell.report is None:
            error = "not scored" if cell is None or cell.error is None else f"failed: {cell.error}"
            rows.append((row["model"], row["dataset"], "", error, ""))
            continue
        rows.append((row["model"], row["dataset"], str(row["tokens"]),
                     _with_interval(row["perplexity"], row["perplexity_ci"], row["ci_reliable"]),
                     _with_interval(row["bits_per_byte"], row["bits_per_byte_ci"], row["ci_reliable"])))
    return rows


def macro_rows(report: SuiteReport) -> list[tuple[str, ...]]:
    """The macro averages as text rows, models in the matrix's order."""
    by_model = {m.model: m for m in report.macro}
    return [(m.label, str(by_model[m.label].datasets), _with_interval(by_model[m.label].bits_per_byte,
                                                                       by_model[m.label].interval,
                                                                       report.macro_reliable(m.label)))
            for m in report.ordered_models if m.label in by_model]
