"""``lleval compare``'s result (``kind: "compare"``): each candidate against the base, with
its JSON (read back by `ComparisonReport.from_dict`), table and markdown. The comparing
itself is `lleval.commands.compare`'s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lleval import __version__
from lleval.report.output import json_interval, read_interval, to_json
from lleval.report.schema import SCHEMA_VERSION, check


@dataclass(frozen=True)
class Comparison:
    """One candidate against the base."""

    base: str
    candidate: str
    metric: str  # perplexity | bits_per_byte
    why: str
    base_value: float
    candidate_value: float
    change: float  # candidate / base - 1 (positive: worse)
    interval: tuple[float, float] | None
    p_worse: float | None
    regressed: bool
    worst_documents: list[dict[str, Any]] = field(default_factory=list)  # NLL rose most first
    best_documents: list[dict[str, Any]] = field(default_factory=list)  # NLL fell most first
    protocol_differences: list[str] = field(default_factory=list)  # "max_length: 16 vs 2048"
    dataset: str | None = None  # the suite's dataset label, when suite cells were compared

    @property
    def name(self) -> str:
        """What a message names: the dataset of a suite comparison, else the candidate."""
        return self.candidate if self.dataset is None else f"{self.dataset} ({self.candidate})"

    def to_dict(self) -> dict[str, Any]:
        """The candidate's row in ``compare --output``."""
        return {
            "base": self.base,
            "candidate": self.candidate,
            "metric": self.metric,
            "why": self.why,
            "base_value": self.base_value,
            "candidate_value": self.candidate_value,
            "relative_change": self.change,
            "relative_change_ci": json_interval(self.interval),
            "probability_worse": self.p_worse,
            "regressed": self.regressed,
            "worst_documents": [dict(d) for d in self.worst_documents],
            "best_documents": [dict(d) for d in self.best_documents],
            "protocol_differences": list(self.protocol_differences),
        } | ({} if self.dataset is None else {"dataset": self.dataset})

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Comparison":
        """Read a row of ``comparisons`` back (checked by `ComparisonReport.from_dict`)."""
        return cls(row["base"], row["candidate"], row["metric"], row["why"], row["base_value"],
                   row["candidate_value"], row["relative_change"], read_interval(row["relative_change_ci"]),
                   row["probability_worse"], row["regressed"], [dict(d) for d in row["worst_documents"]],
                   [dict(d) for d in row["best_documents"]], list(row.get("protocol_differences", [])),
                   row.get("dataset"))

    @property
    def warning(self) -> str | None:
        """The sentence a reader must see when the two runs used different protocols."""
        if not self.protocol_differences:
            return None
        return (f"{self.candidate} was scored with another protocol than {self.base} "
                f"({'; '.join(self.protocol_differences)}): its numbers measure something else, which is "
                "usually a mistake.")


@dataclass(frozen=True)
class ComparisonReport:
    """``lleval compare``'s result (``kind: "compare"``): each candidate against the base,
    and whether every candidate passes the gate."""

    comparisons: list[Comparison]
    max_regression_pct: float | None
    require_significant: bool
    n_resamples: int
    seed: int
    lleval_version: str = __version__
    created: str = ""

    @property
    def passed(self) -> bool:
        """True unless a candidate regressed beyond ``max_regression_pct``."""
        return not any(r.regressed for r in self.comparisons)

    @property
    def regressions(self) -> list[Comparison]:
        """The candidates that failed the gate."""
        return [r for r in self.comparisons if r.regressed]

    def to_dict(self) -> dict[str, Any]:
        """The JSON export of ``compare --output``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "compare",
            "lleval_version": self.lleval_version,
            "created": self.created,
            "max_regression_pct": self.max_regression_pct,
            "require_significant": self.require_significant,
            "bootstrap": {"resamples": self.n_resamples, "seed": self.seed, "level": 0.95},
            "comparisons": [r.to_dict() for r in self.comparisons],
            "passed": self.passed,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "(a dict)") -> "ComparisonReport":
        """Read ``compare --output``'s JSON back, checked against the shipped schema: one
        that does not fit is a `ReportError` naming ``source`` (its file) and the first
        problem. ``passed`` is derived from the comparisons again."""
        check(data, "compare", source)
        bootstrap = data["bootstrap"]
        return cls([Comparison.from_dict(row) for row in data["comparisons"]], data["max_regression_pct"],
                   data["require_significant"], int(bootstrap["resamples"]), int(bootstrap["seed"]),
                   data["lleval_version"], data["created"])

    def to_json(self) -> str:
        """The JSON export as text."""
        return to_json(self.to_dict())

    def render_markdown(self) -> str:
        """A markdown table for a CI job summary."""
        gate = self.max_regression_pct
        by_dataset = self.by_dataset
        lines = [f"### lleval compare ({'no gate' if gate is None else f'gate: at most +{gate:g}%'})", "",
                 "| " + "dataset | " * by_dataset + "candidate | metric | base | candidate | change | 95% CI | "
                 "P(worse) | verdict |", "|" + " --- |" * (8 + by_dataset)]
        for r in self.comparisons:
            lines.append(
                f"| {f'{r.dataset} | ' if by_dataset else ''}{r.candidate} | {r.metric} | {r.base_value:.4f} | "
                f"{r.candidate_value:.4f} | {r.change * 100:+.2f}% | {_interval_text(r.interval)} | "
                f"{_p_text(r.p_worse)} | {self.verdict(r)} |"
            )
        for r, title, docs in _changed(self.comparisons):
            lines += ["", f"#### {r.name}: documents that {title}", "", "| document | Δ nats | Δ bits/byte |",
                      "| --- | --- | --- |"]
            lines += [f"| {d['index']} | {d['delta_nats']:+.3f} | {d['delta_bits_per_byte']:+.5f} |" for d in docs]
        lines += [f"\n> warning: {r.warning}" for r in self.comparisons if r.warning]
        return "\n".join(lines) + "\n"

    @property
    def by_dataset(self) -> bool:
        """Whether the comparisons are of suite cells, one per dataset (a dataset column)."""
        return any(r.dataset is not None for r in self.comparisons)

    def verdict(self, row: Comparison) -> str:
        """``REGRESSED by X%``, ``ok`` or ``no gate``."""
        if self.max_regression_pct is None:
            return "no gate"
        return f"REGRESSED by {row.change * 100:+.2f}%" if row.regressed else "ok"

    def render_table(self, console: Any) -> None:
        """A rich table, one row per candidate."""
        from rich.table import Table

        rows = self.comparisons
        by_dataset = self.by_dataset
        # a suite's rows each have their own base cell ("path [model/dataset]"): the title names the file
        base = rows[0].base.rsplit(" [", 1)[0] if by_dataset and rows else rows[0].base if rows else ""
        table = Table(title=f"lleval compare — base {base}" if rows else "lleval compare")
        for column in ("dataset",) * by_dataset + ("candidate", "metric", "base", "candidate value", "change",
                                                    "95% CI", "P(worse)", "verdict"):
            table.add_column(column)
        for r in rows:
            table.add_row(
                *((r.dataset or "",) * by_dataset), r.candidate, r.metric, f"{r.base_value:.4f}", f"{r.candidate_value:.4f}", f"{r.change * 100:+.2f}%",
                _interval_text(r.interval), _p_text(r.p_worse), self.verdict(r),
            )
        console.print(table)
        for r, title, docs in _changed(rows):
            # the title on a line of its own: a table title wraps at the table's width, which
            # cut a long candidate path over three lines above a three-column table
            console.print(f"{r.name}: documents that {title}", style="italic", highlight=False)
            changed = Table()
            for column in ("document", "Δ nats", "Δ bits/byte"):
                changed.add_column(column, justify="right")
            for d in docs:
                changed.add_row(str(d["index"]), f"{d['delta_nats']:+.3f}", f"{d['delta_bits_per_byte']:+.5f}")
            console.print(changed)
        for r in rows:
            if r.metric != "perplexity":
                console.print(f"note: {r.candidate}: {r.why}.")


def _changed(rows: list[Comparison]) -> list[tuple[Comparison, str, list[dict[str, Any]]]]:
    """(candidate, "got worse" | "got better", documents) for each non-empty list."""
    return [(r, title, docs) for r in rows
            for title, docs in (("got worse", r.worst_documents), ("got better", r.best_documents)) if docs]


def _interval_text(interval: tuple[float, float] | None) -> str:
    return "n/a" if interval is None else f"[{interval[0] * 100:+.2f}%, {interval[1] * 100:+.2f}%]"


def _p_text(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}"
