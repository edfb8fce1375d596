"""The `Report`: what a run measured, its JSON contract, and its rendering.

``Report.to_dict()`` is a versioned contract (``schema_version``) that later
tools and users' scripts read. Every field is written explicitly; metrics are
derived from the float64 sums at serialisation time, never stored twice.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lleval.errors import OutputError
from lleval.metrics import Totals, derive_metrics, llamacpp_perplexity_stderr

SCHEMA_VERSION = 1

METRIC_LABELS = {
    "nll": "NLL (nats/token)",
    "cross_entropy_bits": "cross-entropy (bits/token)",
    "perplexity": "perplexity (exp NLL)",
    "bits_per_byte": "bits per byte",
    "byte_perplexity": "byte perplexity",
    "word_perplexity": "word perplexity",
    "perplexity_stderr_llamacpp": "perplexity std. error (llama.cpp)",
}


@dataclass(frozen=True)
class DocumentResult:
    """Sums for one document; ``index`` is its row in the source."""

    index: int
    log_likelihood: float
    tokens: int
    bytes: int
    words: int

    def to_dict(self) -> dict[str, Any]:
        """The document's row in the JSON export."""
        return {
            "index": self.index,
            "log_likelihood": self.log_likelihood,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "words": self.words,
        }


@dataclass
class Report:
    """Everything one score run measured and how."""

    lleval_version: str
    created: str
    complete: bool
    model: dict[str, Any]
    tokenizer: dict[str, Any]
    dataset: dict[str, Any]
    protocol: dict[str, Any]
    totals: Totals
    documents: list[DocumentResult]
    timing: dict[str, Any]
    environment: dict[str, str]
    notes: list[str] = field(default_factory=list)
    #: 95% bootstrap intervals over documents, keyed by metric; None where there is none.
    intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    bootstrap: dict[str, Any] = field(default_factory=dict)
    distributed: dict[str, Any] | None = None  # world size and backend of a data-parallel run

    @property
    def metrics(self) -> dict[str, float | None]:
        """Metrics derived from the totals (see `lleval.metrics`).

        A protocol that leaves tokens unscored (llama-cpp, hf-guide with
        S = L) has no per-byte or per-word metrics: its log-likelihood covers
        only part of the text. llama-cpp adds llama.cpp's error estimate.
        """
        metrics = derive_metrics(self.totals)
        if not self.protocol.get("scores_every_token", True):
            for key in ("bits_per_byte", "byte_perplexity", "word_perplexity"):
                metrics[key] = None
        if self.protocol.get("name") == "llama-cpp":
            metrics["perplexity_stderr_llamacpp"] = llamacpp_perplexity_stderr(self.totals)
        return metrics

    def to_dict(self) -> dict[str, Any]:
        """The JSON export, schema version 1 (see README, "Report format")."""
        return {
            "schema_version": SCHEMA_VERSION,
            "lleval_version": self.lleval_version,
            "created": self.created,
            "complete": self.complete,
            "model": dict(self.model),
            "tokenizer": dict(self.tokenizer),
            "dataset": dict(self.dataset),
            "protocol": dict(self.protocol),
            "totals": {
                "log_likelihood": self.totals.log_likelihood,
                "log_likelihood_unit": "nats",
                "tokens": self.totals.tokens,
                "bytes": self.totals.bytes,
                "words": self.totals.words,
                "documents": self.totals.documents,
                "logprob_sq_sum": self.totals.logprob_sq_sum,
                "nonfinite_tokens": self.totals.nonfinite,
            },
            "metrics": {
                **{key: _json_float(value) for key, value in self.metrics.items()},
                **{f"{key}_ci": _json_interval(value) for key, value in self.intervals.items()},
            },
            "bootstrap": dict(self.bootstrap),
            "documents": [doc.to_dict() for doc in self.documents],
            "timing": dict(self.timing),
            "environment": dict(self.environment),
            "distributed": None if self.distributed is None else dict(self.distributed),
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        """The JSON export as text (UTF-8, two-space indent, trailing newline)."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _json_float(value: float | None) -> float | None:
    # JSON has no infinity: an overflowing perplexity is written as null.
    if value is None or not math.isfinite(value):
        return None
    return value


def _json_interval(value: tuple[float, float] | None) -> list[float | None] | None:
    return None if value is None else [_json_float(value[0]), _json_float(value[1])]


def check_writable(path: str, flag: str = "--output") -> None:
    """Fail now, before any scoring, if ``path`` (given as ``flag``) cannot be written later."""
    target = Path(path).expanduser()
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise OutputError(f"{flag} {path} is a folder: give a file name such as {path}/report.json.")
    if not folder.is_dir():
        raise OutputError(f"{flag} {path}: folder {folder} does not exist. Create it or pick another {flag}.")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise OutputError(f"{flag} {path} is not writable: pick another {flag}.")


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder, fsync, rename.

    A crash leaves either the old file or the new one, never half of one.
    """
    target = Path(path).expanduser()
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}.") from exc


def write_report(report: Report, path: str) -> None:
    """Write the JSON export of ``report`` to ``path`` atomically."""
    write_text_atomic(path, report.to_json())


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return "inf"
    return f"{value:.{digits}f}"


def summary_rows(report: Report) -> list[tuple[str, str]]:
    """(label, value) pairs shown by the table and markdown renderings."""
    t = report.totals
    p = report.protocol
    window = f"L={p['max_length']}" + (f", S={p['stride']}" if p.get("stride") else "")
    rows = [
        ("model", f"{report.model['name']} ({report.model['dtype']}, {report.model['device']})"),
        ("dataset", f"{report.dataset['spec']} [{report.dataset['split']}]"),
        ("protocol", f"{p['name']}: {window}, prefix={p['prefix_token']}, concat={p['concat'] is not None}"),
        ("documents", f"{t.documents} scored, {report.dataset['skipped_empty']} empty skipped"),
        ("tokens / bytes / words", f"{t.tokens} / {t.bytes} / {t.words}"),
        ("log-likelihood (nats)", _fmt(t.log_likelihood, 2)),
    ]
    for key, value in report.metrics.items():
        interval = report.intervals.get(key)
        shown = _fmt(value)
        if interval is not None:
            shown += f"  [{_fmt(interval[0])}, {_fmt(interval[1])}] 95% CI"
        rows.append((METRIC_LABELS[key], shown))
    rows.append(("throughput", f"{report.timing.get('tokens_per_second', 0.0):.0f} tokens/s"))
    return rows


def render_table(report: Report, console: Any) -> None:
    """Print the report as a rich table on ``console`` (stdout in the CLI)."""
    from rich.table import Table

    table = Table(title=f"lleval score — {report.protocol['name']} protocol", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for label, value in summary_rows(report):
        table.add_row(label, value)
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")


def render_markdown(report: Report) -> str:
    """The report as a two-column markdown table (for CI job summaries)."""
    lines = [f"### lleval score — {report.protocol['name']} protocol", "", "| what | value |", "| --- | --- |"]
    lines += [f"| {label} | {value.replace('|', '/')} |" for label, value in summary_rows(report)]
    lines += [f"\n> note: {note}" for note in report.notes]
    return "\n".join(lines) + "\n"
