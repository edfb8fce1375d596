"""The score `Report` (``kind: "score"``): the shared header, the sums, the metrics derived
from them, loss by context length; its JSON contract, read back by `Report.from_dict`,
and its table and markdown renderings.

``to_dict()`` is a versioned contract (``schema_version`` and ``kind``) that later
tools and users' scripts read. Every field is written explicitly; metrics are
derived from the float64 sums at serialisation time, never stored twice, and
``from_dict`` reads the sums back and derives them again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lleval.metrics import (MEMBERSHIP_FIELDS, DocumentResult, Totals, derive_metrics, llamacpp_perplexity_stderr,
                            perplexity)
from lleval.report.blocks import ReportHeader
from lleval.report.output import json_float, json_interval, read_interval, to_json
from lleval.report.render import fmt, render_pairs_markdown, render_pairs_table
from lleval.report.schema import check

METRIC_LABELS = {
    "nll": "NLL (nats/token)",
    "cross_entropy_bits": "cross-entropy (bits/token)",
    "perplexity": "perplexity (exp NLL)",
    "bits_per_byte": "bits per byte",
    "byte_perplexity": "byte perplexity",
    "word_perplexity": "word perplexity",
    "perplexity_stderr_llamacpp": "perplexity std. error (llama.cpp)",
}
#: the metrics a score report gives a bootstrap interval (``metrics.<name>_ci``)
INTERVAL_METRICS = ("perplexity", "bits_per_byte")


@dataclass(frozen=True)
class ContextBin:
    """Tokens whose context length (tokens the model read before them in their window)
    lies in ``context_min .. context_max``, with their log-likelihood sum."""

    context_min: int
    context_max: int
    tokens: int
    log_likelihood: float  # nats
    perplexity_ci: tuple[float, float] | None = None  # 95% bootstrap over documents

    @property
    def nll(self) -> float | None:
        """Nats per token in this bin (None when it holds no token)."""
        return -self.log_likelihood / self.tokens if self.tokens else None

    def to_dict(self) -> dict[str, Any]:
        """The bin's entry in ``by_context_length``."""
        nll = self.nll
        return {
            "context_min": self.context_min,
            "context_max": self.context_max,
            "tokens": self.tokens,
            "log_likelihood": self.log_likelihood,
            "nll": nll,
            "perplexity": None if nll is None else json_float(perplexity(nll)),
            "perplexity_ci": json_interval(self.perplexity_ci),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ContextBin":
        """Read an entry of ``by_context_length`` back (its NLL and perplexity are derived)."""
        return cls(int(data["context_min"]), int(data["context_max"]), int(data["tokens"]), data["log_likelihood"],
                   read_interval(data["perplexity_ci"]))


def bins_of_table(table: Any, n_resamples: int, seed: int) -> list[ContextBin]:
    """`ContextBin`s from a ``(documents, bins, 2)`` table of per-document log-likelihood and
    tokens per power-of-two bin, with the bootstrap interval over documents of each."""
    from lleval.metrics import binned_intervals

    intervals = binned_intervals(table, n_resamples, seed)
    return [
        ContextBin(2**b, 2 ** (b + 1) - 1, int(table[:, b, 1].sum()), float(table[:, b, 0].sum()), intervals[b])
        for b in range(table.shape[1])
    ]


@dataclass
class Report(ReportHeader):
    """Everything one score run measured and how (``kind: "score"``)."""

    totals: Totals = field(default_factory=Totals)
    documents: list[DocumentResult] = field(default_factory=list)
    #: 95% bootstrap intervals over documents, keyed by metric; None where there is none.
    intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    bootstrap: dict[str, Any] = field(default_factory=dict)
    #: loss by context length: power-of-two bins of tokens read before the scored one
    by_context_length: list[ContextBin] = field(default_factory=list)
    #: the blocks of further statistics (`lleval.reducers.base.Statistic`), by key
    statistics: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float | None]:
        """Metrics derived from the totals (see `lleval.metrics`); which exist is the
        protocol's to say (`ProtocolBlock.has_per_byte_metrics`, `has_llamacpp_error`)."""
        metrics = derive_metrics(self.totals)
        if not self.protocol.has_per_byte_metrics:
            for key in ("bits_per_byte", "byte_perplexity", "word_perplexity"):
                metrics[key] = None
        if self.protocol.has_llamacpp_error:
            metrics["perplexity_stderr_llamacpp"] = llamacpp_perplexity_stderr(self.totals)
        return metrics

    def to_dict(self) -> dict[str, Any]:
        """The JSON export, schema version 1 (see README, "The JSON report")."""
        return {
            **self.header_dict("score"),
            "totals": self.totals.to_dict(),
            "metrics": {
                **{key: json_float(value) for key, value in self.metrics.items()},
                **{f"{key}_ci": json_interval(value) for key, value in self.intervals.items()},
            },
            "bootstrap": dict(self.bootstrap),
            "by_context_length": [b.to_dict() for b in self.by_context_length],
            **({"statistics": dict(self.statistics)} if self.statistics else {}),
            "documents": [doc.to_dict() for doc in self.documents],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "(a dict)") -> "Report":
        """Read a score report's JSON back, checked against the shipped schema: one that
        does not fit is a `ReportError` naming ``source`` (its file) and the first problem.
        ``metrics`` are derived from the sums again; the documents' squared log-prob sums
        and non-finite counts, which the JSON does not hold, are 0."""
        check(data, "score", source)
        return cls(**ReportHeader.fields_from_dict(data), totals=Totals.from_dict(data["totals"]),
                   documents=[DocumentResult.from_dict(d) for d in data["documents"]],
                   intervals={key: read_interval(data["metrics"][f"{key}_ci"]) for key in INTERVAL_METRICS},
                   bootstrap=dict(data["bootstrap"]),
                   by_context_length=[ContextBin.from_dict(b) for b in data["by_context_length"]],
                   statistics=dict(data.get("statistics", {})))

    def to_json(self) -> str:
        """The JSON export as text (UTF-8, two-space indent, trailing newline)."""
        return to_json(self.to_dict())

    def render_table(self, console: Any) -> None:
        """Print as a rich table on ``console`` (stdout in the CLI)."""
        render_table(self, console)

    def render_markdown(self) -> str:
        """A two-column markdown table (for CI job summaries)."""
        return render_markdown(self)


def summary_rows(report: Report) -> list[tuple[str, str]]:
    """(label, value) pairs shown by the table and markdown renderings of a score report."""
    t = report.totals
    rows = [
        ("model", f"{report.model.name} ({report.model.dtype}, {report.model.device})"),
        ("dataset", f"{report.dataset.spec} [{report.dataset.split}]"),
        ("protocol", report.protocol.summary()),
        ("documents", f"{t.documents} scored, {report.dataset.skipped_empty} empty skipped"),
        ("tokens / bytes / words", f"{t.tokens} / {t.bytes} / {t.words}"),
        ("log-likelihood (nats)", fmt(t.log_likelihood, 2)),
    ]
    shaky = report.bootstrap.get("reliable") is False
    for key, value in report.metrics.items():
        interval = report.intervals.get(key)
        shown = fmt(value)
        if interval is not None:
            shown += f"  [{fmt(interval[0])}, {fmt(interval[1])}] 95% CI"
            if shaky:
                shown += f", unreliable ({report.bootstrap.get('documents')} documents)"
        rows.append((METRIC_LABELS[key], shown))
    rows += statistic_rows(report)
    rows.append(("throughput", f"{report.timing.tokens_per_second:.0f} tokens/s"))
    return rows


def membership_means(documents: list[DocumentResult]) -> dict[str, float | None] | None:
    """The mean of each membership score over the documents that have one (None: no
    document has membership scores, the run had no --membership)."""
    scored = [d.membership for d in documents if d.membership is not None]
    if not scored:
        return None
    means: dict[str, float | None] = {}
    for name in MEMBERSHIP_FIELDS:
        values = [float(m[name]) for m in scored if m.get(name) is not None]  # type: ignore[arg-type]
        means[name] = math.fsum(values) / len(values) if values else None
    return means


def statistic_rows(report: Report) -> list[tuple[str, str]]:
    """Summary rows of the membership scores (their means over documents) and calibration."""
    rows: list[tuple[str, str]] = []
    means = membership_means(report.documents)
    if means is not None:
        rows.append(("membership, mean (Min-K% / Min-K%++ / zlib)",
                     " / ".join(fmt(means[name]) for name in MEMBERSHIP_FIELDS)))
    calibration = report.statistics.get("calibration")
    if calibration:
        rows.append(("calibration (ECE / top-1 accuracy)",
                     f"{fmt(calibration['ece'])} / {fmt(calibration['top1_accuracy'])}"))
    return rows


CONTEXT_COLUMNS = ("context", "tokens", "NLL (nats/token)", "perplexity [95% CI]", "")


def context_columns(report: Report) -> tuple[str, ...]:
    """The headers of the loss-by-context table: "[95% CI]" only when some bin has an
    interval (not with --bootstrap 0, nor for a single document)."""
    if any(b.perplexity_ci is not None for b in report.by_context_length):
        return CONTEXT_COLUMNS
    return tuple("perplexity" if c == "perplexity [95% CI]" else c for c in CONTEXT_COLUMNS)


def context_rows(report: Report) -> list[tuple[str, ...]]:
    """One row per non-empty bin of ``by_context_length``: context range, tokens, NLL,
    perplexity with its interval, and a bar of the NLL (the curve, sideways)."""
    full = [b for b in report.by_context_length if b.tokens]
    top = max((b.nll or 0.0 for b in full), default=1.0) or 1.0
    rows: list[tuple[str, ...]] = []
    for b in full:
        nll = b.nll or 0.0
        span = str(b.context_min) if b.context_min == b.context_max else f"{b.context_min}-{b.context_max}"
        ci = "" if b.perplexity_ci is None else f"  [{fmt(b.perplexity_ci[0], 3)}, {fmt(b.perplexity_ci[1], 3)}]"
        rows.append((span, str(b.tokens), fmt(nll), fmt(perplexity(nll), 3) + ci, "█" * round(20 * nll / top)))
    return rows


def render_table(report: Report, console: Any) -> None:
    """Print a score report as rich tables on ``console`` (stdout in the CLI): the summary,
    then loss by context length."""
    from rich.table import Table

    render_pairs_table(f"lleval score — {report.protocol.name} protocol", summary_rows(report), report.notes, console)
    rows = context_rows(report)
    if rows:
        table = Table(title="loss by context length (tokens read before the scored one)")
        for column in context_columns(report):
            table.add_column(column, justify="right" if column not in ("", "context") else "left")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def render_markdown(report: Report) -> str:
    """A score report as markdown (for CI job summaries): the summary, then loss by context length."""
    text = render_pairs_markdown(f"lleval score — {report.protocol.name} protocol", summary_rows(report),
                                 report.notes)
    rows = context_rows(report)
    if rows:
        lines = ["", "#### Loss by context length", "", "| " + " | ".join(context_columns(report)[:-1]) + " |",
                 "| --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(row[:-1]) + " |" for row in rows]
        text += "\n".join(lines) + "\n"
    return text
