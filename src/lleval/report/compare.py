"""``lleval compare``'s result (``kind: "compare"``): each candidate against the base, with
its JSON (read back by `ComparisonReport.from_dict`), table and markdown. The comparing
itself is `lleval.commands.compare`'s."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from lleval import __version__
from lleval.metrics import MEMBERSHIP_FIELDS, MIN_INTERVAL_DOCUMENTS, interval_reliable
from lleval.report.output import json_interval, read_interval, to_json
from lleval.report.render import fmt, markdown_table
from lleval.report.schema import SCHEMA_VERSION, check

MEMBERSHIP_LABELS = {"min_k_prob": "Min-K%", "min_k_plus_plus": "Min-K%++", "zlib_ratio": "zlib ratio"}


@dataclass(frozen=True)
class MembershipDelta:
    """One membership score of the documents both reports scored it for: the base's and
    the candidate's mean, and the mean paired change (candidate - base) with its bootstrap
    interval over documents. Higher scores are more "member-like", so a rise is what a
    leak of these texts into the candidate's training data would look like."""

    documents: int  # documents with the score on both sides (served models have no Min-K%++)
    base_mean: float | None
    candidate_mean: float | None
    mean_delta: float | None
    interval: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        """The score's entry in ``membership.scores``."""
        return {"documents": self.documents, "base_mean": self.base_mean, "candidate_mean": self.candidate_mean,
                "mean_delta": self.mean_delta, "mean_delta_ci": json_interval(self.interval),
                "mean_delta_ci_reliable": self.interval_reliable}

    @property
    def interval_reliable(self) -> bool | None:
        """Whether the interval comes from enough documents (None where there is none)."""
        return None if self.interval is None else interval_reliable(self.documents)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MembershipDelta":
        """Read an entry of ``membership.scores`` back."""
        return cls(int(data["documents"]), data["base_mean"], data["candidate_mean"], data["mean_delta"],
                   read_interval(data["mean_delta_ci"]))


@dataclass(frozen=True)
class MembershipChange:
    """How the membership scores (``--membership``) moved from base to candidate on the
    same documents: each score's `MembershipDelta`, and the documents whose score
    ``ranked_by`` (Min-K%++, or Min-K% where no document has Min-K%++) rose most: the
    leak suspects of a contamination check."""

    scores: dict[str, MembershipDelta]  # by MEMBERSHIP_FIELDS
    ranked_by: str | None  # None: no document has a score on both sides
    top_documents: list[dict[str, Any]] = field(default_factory=list)  # index, (id,) base, candidate, delta

    def to_dict(self) -> dict[str, Any]:
        """The comparison's ``membership`` block."""
        return {"scores": {name: self.scores[name].to_dict() for name in MEMBERSHIP_FIELDS},
                "ranked_by": self.ranked_by, "top_documents": [dict(d) for d in self.top_documents]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MembershipChange":
        """Read a ``membership`` block back."""
        return cls({name: MembershipDelta.from_dict(data["scores"][name]) for name in MEMBERSHIP_FIELDS},
                   data["ranked_by"], [dict(d) for d in data["top_documents"]])

    def rows(self) -> list[tuple[str, str, str, str, str, str]]:
        """(score, documents, base mean, candidate mean, mean change, 95% CI), one per score."""
        return [(MEMBERSHIP_LABELS[name], str(d.documents), fmt(d.base_mean), fmt(d.candidate_mean),
                 "n/a" if d.mean_delta is None else f"{d.mean_delta:+.4f}",
                 _delta_interval_text(d.interval) + (" unreliable" if d.interval_reliable is False else ""))
                for name, d in self.scores.items()]

    @property
    def document_columns(self) -> tuple[str, ...]:
        """The columns of `document_rows`: an id column only when a top document has an id."""
        has_ids = any(d.get("id") is not None for d in self.top_documents)
        return ("document",) + ("id",) * has_ids + ("base", "candidate", "Δ")

    def document_rows(self) -> list[tuple[str, ...]]:
        """(document, (id,) base, candidate, change) of each top document."""
        has_ids = "id" in self.document_columns
        return [(str(d["index"]),) + (("" if d.get("id") is None else str(d["id"]),) if has_ids else ())
                + (fmt(d["base"]), fmt(d["candidate"]), f"{d['delta']:+.4f}") for d in self.top_documents]


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
    membership: MembershipChange | None = None  # both reports have membership scores (--membership)
    notes: list[str] = field(default_factory=list)  # e.g. only one side has membership scores
    exceeded: bool = False  # the change is beyond the gate's limit (significant or not)
    documents: int | None = None  # paired documents the interval is resampled from (None: an older file)
    limit_pct: float | None = None  # the gate (--max-regression); None: no gate

    @property
    def verdict_key(self) -> str:
        """The verdict as the JSON gives it (`VERDICTS`)."""
        if self.limit_pct is None:
            return "no_gate"
        return "regressed" if self.regressed else "over_limit_not_significant" if self.exceeded else "ok"

    @property
    def interval_reliable(self) -> bool | None:
        """Whether the interval comes from enough documents to mean something
        (`lleval.metrics.MIN_INTERVAL_DOCUMENTS`); None where there is no interval."""
        if self.interval is None or self.documents is None:
            return None
        return interval_reliable(self.documents)

    @property
    def interval_note(self) -> str | None:
        """The sentence a reader must see when the interval comes from too few documents."""
        if self.interval_reliable is not False:
            return None
        return (f"the 95% interval comes from {self.documents} document{'' if self.documents == 1 else 's'}, fewer "
                f"than {MIN_INTERVAL_DOCUMENTS}: treat it as unreliable (a bootstrap over so few documents covers "
                "the true change far less often than 95%).")

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
            "relative_change_ci_reliable": self.interval_reliable,
            "documents": self.documents,
            "probability_worse": self.p_worse,
            "exceeds_limit": self.exceeded,
            "regressed": self.regressed,
            "verdict": self.verdict_key,
            "worst_documents": [dict(d) for d in self.worst_documents],
            "best_documents": [dict(d) for d in self.best_documents],
            "protocol_differences": list(self.protocol_differences),
        } | ({} if self.dataset is None else {"dataset": self.dataset}) | (
            {} if self.membership is None else {"membership": self.membership.to_dict()}) | (
            {"notes": list(self.notes)} if self.notes else {})

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Comparison":
        """Read a row of ``comparisons`` back (checked by `ComparisonReport.from_dict`)."""
        return cls(row["base"], row["candidate"], row["metric"], row["why"], row["base_value"],
                   row["candidate_value"], row["relative_change"], read_interval(row["relative_change_ci"]),
                   row["probability_worse"], row["regressed"], [dict(d) for d in row["worst_documents"]],
                   [dict(d) for d in row["best_documents"]], list(row.get("protocol_differences", [])),
                   row.get("dataset"),
                   None if row.get("membership") is None else MembershipChange.from_dict(row["membership"]),
                   list(row.get("notes", [])), bool(row.get("exceeds_limit", row["regressed"])),
                   row.get("documents"))

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

    @property
    def forgiven(self) -> list[Comparison]:
        """The candidates beyond the limit that pass only because ``--require-significant``
        found the change not significant (its interval reaches zero)."""
        return [r for r in self.comparisons if r.exceeded and not r.regressed]

    def verdict(self, row: Comparison) -> str:
        """``REGRESSED by X%``, ``over the limit, not significant (X%)``, ``ok`` or ``no gate``."""
        key = row.verdict_key
        if key == "regressed":
            return f"REGRESSED by {row.change * 100:+.2f}%"
        if key == "over_limit_not_significant":
            return f"{VERDICTS[key]} ({row.change * 100:+.2f}%)"
        return VERDICTS[key]

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
        problem. ``passed`` and each ``verdict`` are derived from the comparisons again."""
        check(data, "compare", source)
        bootstrap = data["bootstrap"]
        gate = data["max_regression_pct"]
        return cls([replace(Comparison.from_dict(row), limit_pct=gate) for row in data["comparisons"]], gate,
                   data["require_significant"], int(bootstrap["resamples"]), int(bootstrap["seed"]),
                   data["lleval_version"], data["created"])

    def to_json(self) -> str:
        """The JSON export as text."""
        return to_json(self.to_dict())

    def render_markdown(self) -> str:
        """A markdown table for a CI job summary."""
        gate = self.max_regression_pct
        lines = [f"### lleval compare ({'no gate' if gate is None else f'gate: at most +{gate:g}%'})", "",
                 *markdown_table(self.columns, self.rows())]
        for r, title, docs in _changed(self.comparisons):
            lines += ["", f"#### {r.name}: documents that {title}", "",
                      *markdown_table(document_columns(docs), document_rows(docs))]
        for r in self.comparisons:
            lines += _membership_markdown(r)
        lines += [f"\n> {line}" for line in self.notes()]
        return "\n".join(lines) + "\n"

    @property
    def by_dataset(self) -> bool:
        """Whether the comparisons are of suite cells, one per dataset (a dataset column)."""
        return any(r.dataset is not None for r in self.comparisons)

    @property
    def columns(self) -> tuple[str, ...]:
        """The headers of the main table (a dataset column when suite cells were compared)."""
        return ("dataset",) * self.by_dataset + ("candidate", "metric", "base value", "candidate value", "change",
                                                  "95% CI", "P(worse)", "verdict")

    def rows(self) -> list[tuple[str, ...]]:
        """The main table's rows, one per comparison, as text (an interval from too few
        documents is marked ``unreliable``)."""
        return [(*((r.dataset or "",) * self.by_dataset), r.candidate, r.metric, f"{r.base_value:.4f}",
                 f"{r.candidate_value:.4f}", f"{r.change * 100:+.2f}%", _interval_text(r.interval, r.interval_reliable),
                 _p_text(r.p_worse), self.verdict(r)) for r in self.comparisons]

    def notes(self) -> list[str]:
        """What a reader must see under the tables: protocol warnings, the verdicts a
        --require-significant gate forgave, intervals from too few documents, and each
        comparison's notes (``warning: ...`` or ``note: ...``)."""
        lines = [f"warning: {r.warning}" for r in self.comparisons if r.warning]
        lines += [f"warning: {sentence}" for sentence in self.forgiven_sentences()]
        lines += [f"note: {r.name}: {r.interval_note}" for r in self.comparisons if r.interval_note]
        lines += [f"note: {r.candidate}: {r.why}." for r in self.comparisons if r.metric != "perplexity"]
        lines += [f"note: {r.name}: {note}" for r in self.comparisons for note in r.notes]
        return lines

    def forgiven_sentences(self) -> list[str]:
        """One sentence per candidate over the limit that passes as not significant."""
        return [f"{r.name}: {r.metric} {r.change * 100:+.2f}% is over the limit (+{self.max_regression_pct:g}%) "
                f"but not significant (its 95% interval, {_interval_text(r.interval, r.interval_reliable)}, does "
                "not lie above 0): it passes because of --require-significant." for r in self.forgiven]

    def render_table(self, console: Any) -> None:
        """A rich table, one row per candidate."""
        from rich.table import Table

        rows = self.comparisons
        # a suite's rows each have their own base cell ("path [model/dataset]"): the title names the file
        base = rows[0].base.rsplit(" [", 1)[0] if self.by_dataset and rows else rows[0].base if rows else ""
        table = Table(title=f"lleval compare — base {base}" if rows else "lleval compare")
        for column in self.columns:
            table.add_column(column)
        for row in self.rows():
            table.add_row(*row)
        console.print(table)
        for r, title, docs in _changed(rows):
            # the title on a line of its own: a table title wraps at the table's width, which
            # cut a long candidate path over three lines above a three-column table
            console.print(f"{r.name}: documents that {title}", style="italic", highlight=False)
            changed = Table()
            for column in document_columns(docs):
                changed.add_column(column, justify="left" if column == "id" else "right")
            for row in document_rows(docs):
                changed.add_row(*row)
            console.print(changed)
        for r in rows:
            _membership_tables(r, console)
        for line in self.notes():
            console.print(line, highlight=False)


#: the verdicts of ``comparisons[].verdict`` and their words in the tables
VERDICTS = {"regressed": "REGRESSED", "over_limit_not_significant": "over the limit, not significant", "ok": "ok",
            "no_gate": "no gate"}


def document_columns(docs: list[dict[str, Any]]) -> tuple[str, ...]:
    """The headers of a table of changed documents: an id column when one of them has an id."""
    return ("document",) + ("id",) * any(d.get("id") is not None for d in docs) + ("Δ nats", "Δ bits/byte")


def document_rows(docs: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """(row, (id,) Δ nats, Δ bits per byte) of each changed document, as text."""
    has_ids = "id" in document_columns(docs)
    return [(str(d["index"]),) + ((("" if d.get("id") is None else str(d["id"])),) if has_ids else ())
            + (f"{d['delta_nats']:+.3f}", f"{d['delta_bits_per_byte']:+.5f}") for d in docs]


MEMBERSHIP_COLUMNS = ("score", "documents", "base mean", "candidate mean", "Δ mean", "95% CI")


def _membership_titles(r: Comparison) -> tuple[str, str]:
    """The titles of the membership deltas and of the documents whose score rose most."""
    m = r.membership
    ranked = MEMBERSHIP_LABELS.get(m.ranked_by or "", "") if m is not None else ""
    return (f"{r.name}: membership scores, candidate - base (a rise: more member-like)",
            f"{r.name}: documents whose {ranked} rose most (leak suspects)")


def _membership_markdown(r: Comparison) -> list[str]:
    """The markdown tables of a comparison's membership block (none without one)."""
    if r.membership is None:
        return []
    title, top_title = _membership_titles(r)
    lines = ["", f"#### {title}", "", *markdown_table(MEMBERSHIP_COLUMNS, r.membership.rows())]
    if r.membership.top_documents:
        lines += ["", f"#### {top_title}", "",
                  *markdown_table(r.membership.document_columns, r.membership.document_rows())]
    return lines


def _membership_tables(r: Comparison, console: Any) -> None:
    """Rich tables of a comparison's membership block (nothing without one)."""
    from rich.table import Table

    if r.membership is None:
        return
    title, top_title = _membership_titles(r)
    for heading, columns, rows in ((title, MEMBERSHIP_COLUMNS, r.membership.rows()),
                                   (top_title, r.membership.document_columns, r.membership.document_rows())):
        if not rows:
            continue
        console.print(heading, style="italic", highlight=False)
        table = Table()
        for column in columns:
            table.add_column(column, justify="left" if column in ("score", "id") else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _changed(rows: list[Comparison]) -> list[tuple[Comparison, str, list[dict[str, Any]]]]:
    """(candidate, "got worse" | "got better", documents) for each non-empty list."""
    return [(r, title, docs) for r in rows
            for title, docs in (("got worse", r.worst_documents), ("got better", r.best_documents)) if docs]


def _delta_interval_text(interval: tuple[float, float] | None) -> str:
    return "n/a" if interval is None else f"[{interval[0]:+.4f}, {interval[1]:+.4f}]"


def _interval_text(interval: tuple[float, float] | None, reliable: bool | None = True) -> str:
    if interval is None:
        return "n/a"
    return f"[{interval[0] * 100:+.2f}%, {interval[1] * 100:+.2f}%]" + (" unreliable" if reliable is False else "")


def _p_text(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}"
