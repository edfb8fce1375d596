"""Paired comparison of score reports: same texts, per-document bootstrap, a CI gate.

Reports are aligned document by document. Perplexity (per token) is compared
only when the tokenizers match: a different tokenizer cuts the same text
into a different number of tokens, so per-token numbers stop being
comparable. Otherwise bits per byte is compared, which does not depend on the
vocabulary.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lleval.errors import ReportError, read_text_file
from lleval.metrics import LN2, bootstrap_sums, percentile_interval
from lleval import __version__
from lleval.report.score import SCHEMA_VERSION, to_json

REQUIRED = {
    "schema_version": int,
    "model": dict,
    "tokenizer": dict,
    "dataset": dict,
    "protocol": dict,
    "totals": dict,
    "documents": list,
}
DOCUMENT_KEYS = ("index", "log_likelihood", "tokens", "bytes", "words")
TOP_DOCUMENTS = 10  # documents listed per candidate as changed most, each way
# The protocol choices that change what a number measures (a report's ``protocol`` block).
PROTOCOL_KEYS = ("name", "max_length", "stride", "prefix_token", "concat", "special_tokens")


def load_report(path: str) -> dict[str, Any]:
    """Read and check a score report; a bad file is a `ReportError` naming what is wrong."""
    text = read_text_file(path, "report", ReportError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"report {path} is not JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}.") from None
    if not isinstance(data, dict):
        raise ReportError(f"report {path} is not a JSON object: is it an lleval score report?")
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
        raise ReportError(
            f"report {path} has schema version {version}; this lleval reads version "
            f"{SCHEMA_VERSION}. Re-run lleval score with this version."
        )
    if data.get("kind", "score") != "score":
        raise ReportError(f"report {path} is a {data.get('kind')!r} report: lleval compare reads score reports.")
    for key, kind in REQUIRED.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise ReportError(f"report {path} has no valid {key!r}: is it an lleval score report?")
    for i, doc in enumerate(data["documents"]):
        if not isinstance(doc, dict) or any(
            not isinstance(doc.get(k), (int, float)) or isinstance(doc.get(k), bool) for k in DOCUMENT_KEYS
        ):
            raise ReportError(f"report {path}: documents[{i}] lacks one of {', '.join(DOCUMENT_KEYS)}.")
        if not math.isfinite(doc["log_likelihood"]):
            raise ReportError(f"report {path}: documents[{i}] has a non-finite log-likelihood.")
    if data.get("complete") is False:
        raise ReportError(f"report {path} is incomplete (complete: false): finish the run first.")
    return data


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
            "relative_change_ci": None if self.interval is None else list(self.interval),
            "probability_worse": self.p_worse,
            "regressed": self.regressed,
            "worst_documents": [dict(d) for d in self.worst_documents],
            "best_documents": [dict(d) for d in self.best_documents],
            "protocol_differences": list(self.protocol_differences),
        }

    @property
    def warning(self) -> str | None:
        """The sentence a reader must see when the two runs used different protocols."""
        if not self.protocol_differences:
            return None
        return (f"{self.candidate} was scored with another protocol than {self.base} "
                f"({'; '.join(self.protocol_differences)}): its numbers measure something else, which is "
                "usually a mistake.")


def _arrays(report: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    docs = report["documents"]
    nll = np.array([-float(d["log_likelihood"]) for d in docs])
    tokens = np.array([float(d["tokens"]) for d in docs])
    n_bytes = np.array([float(d["bytes"]) for d in docs])
    return nll, tokens, n_bytes


def check_same_texts(base: dict[str, Any], cand: dict[str, Any], base_name: str, cand_name: str) -> None:
    """Refuse reports that did not score the same texts, saying what differs."""
    b, c = base["dataset"], cand["dataset"]
    if b.get("fingerprint") != c.get("fingerprint"):
        raise ReportError(
            f"{cand_name} scored different texts than {base_name} (dataset fingerprints differ: "
            f"{b.get('spec')} [{b.get('split')}], {b.get('documents')} documents vs "
            f"{c.get('spec')} [{c.get('split')}], {c.get('documents')} documents)."
        )
    bi = [d["index"] for d in base["documents"]]
    ci = [d["index"] for d in cand["documents"]]
    if bi != ci:
        raise ReportError(f"{cand_name} and {base_name} have different document rows: they cannot be paired.")
    if [d["bytes"] for d in base["documents"]] != [d["bytes"] for d in cand["documents"]]:
        raise ReportError(
            f"{cand_name} and {base_name} count different bytes per document (different --concat or "
            "protocol?): they cannot be paired."
        )


def protocol_differences(base: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    """``"key: base vs candidate"`` for each protocol choice (`PROTOCOL_KEYS`) that differs.
    The prefix token's id is left out when the tokenizers differ: there the same choice
    (BOS) has another id."""
    same_tokenizer = base["tokenizer"].get("fingerprint") == candidate["tokenizer"].get("fingerprint")
    keys = [k for k in PROTOCOL_KEYS if same_tokenizer or k != "prefix_token"]
    b, c = base["protocol"], candidate["protocol"]
    return [f"{k}: {b.get(k)!r} vs {c.get(k)!r}" for k in keys if b.get(k) != c.get(k)]


def compare_reports(
    base: dict[str, Any],
    candidate: dict[str, Any],
    *,
    base_name: str = "base",
    candidate_name: str = "candidate",
    max_regression_pct: float | None = None,
    require_significant: bool = False,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    top_documents: int = TOP_DOCUMENTS,
) -> Comparison:
    """Paired bootstrap of the relative change of perplexity (or bits per byte), and the
    documents that changed most."""
    check_same_texts(base, candidate, base_name, candidate_name)
    same_tokenizer = base["tokenizer"].get("fingerprint") == candidate["tokenizer"].get("fingerprint")
    if same_tokenizer:
        metric, why = "perplexity", "tokenizers match, so per-token perplexity is comparable"
    else:
        metric, why = "bits_per_byte", "tokenizers differ, so per-token numbers are not comparable; bits per byte is"
    b_nll, b_tok, n_bytes = _arrays(base)
    c_nll, c_tok, _ = _arrays(candidate)
    if b_tok.sum() <= 0 or c_tok.sum() <= 0 or n_bytes.sum() <= 0:
        raise ReportError(f"{base_name} or {candidate_name} scored no tokens: nothing to compare.")
    b_den = b_tok if metric == "perplexity" else n_bytes
    c_den = c_tok if metric == "perplexity" else n_bytes
    columns = np.column_stack([b_nll, b_den, c_nll, c_den])
    base_value, cand_value, interval, p_worse = paired_change(columns, metric, n_resamples, seed, level)
    change = cand_value / base_value - 1.0
    regressed = False
    if max_regression_pct is not None:
        regressed = change * 100.0 > max_regression_pct
        if require_significant:
            regressed = regressed and interval is not None and interval[0] > 0
    worst, best = changed_documents(base, candidate, top_documents)
    return Comparison(base_name, candidate_name, metric, why, base_value, cand_value, change, interval, p_worse,
                      regressed, worst, best, protocol_differences(base, candidate))


def paired_change(
    columns: np.ndarray, metric: str, n_resamples: int, seed: int, level: float
) -> tuple[float, float, tuple[float, float] | None, float | None]:
    """Base and candidate values of ``metric`` from per-document ``[base NLL, base
    denominator, candidate NLL, candidate denominator]`` columns, the interval of the
    relative change (paired bootstrap: the same documents for both) and P(worse)."""

    def values(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b_nll_s, b_den, c_nll_s, c_den = sums.T
        if metric == "perplexity":
            return np.exp(b_nll_s / b_den), np.exp(c_nll_s / c_den)
        return b_nll_s / (LN2 * b_den), c_nll_s / (LN2 * c_den)

    base_value, cand_value = (float(v[0]) for v in values(columns.sum(axis=0, keepdims=True)))
    if len(columns) < 2 or n_resamples <= 0:
        return base_value, cand_value, None, None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        b_s, c_s = values(bootstrap_sums(columns, n_resamples, seed))
        changes = c_s / b_s - 1.0
    finite = changes[np.isfinite(changes)]
    return base_value, cand_value, percentile_interval(changes, level), float(np.mean(finite > 0)) if finite.size else None


def changed_documents(
    base: dict[str, Any], candidate: dict[str, Any], top: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``top`` documents whose negative log-likelihood rose most (worst first) and fell
    most (best first), with the change in nats and in bits per byte. Texts must be paired."""
    rows = []
    for b, c in zip(base["documents"], candidate["documents"]):
        delta = float(b["log_likelihood"]) - float(c["log_likelihood"])  # candidate NLL - base NLL
        per_byte = delta / (LN2 * b["bytes"]) if b["bytes"] else 0.0
        rows.append({"index": b["index"], "delta_nats": delta, "delta_bits_per_byte": per_byte,
                     "base_log_likelihood": b["log_likelihood"], "candidate_log_likelihood": c["log_likelihood"]})
    worse = sorted((r for r in rows if r["delta_nats"] > 0), key=lambda r: -r["delta_nats"])[:top]
    better = sorted((r for r in rows if r["delta_nats"] < 0), key=lambda r: r["delta_nats"])[:top]
    return worse, better


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

    def to_json(self) -> str:
        """The JSON export as text."""
        return to_json(self.to_dict())

    def render_markdown(self) -> str:
        """A markdown table for a CI job summary."""
        gate = self.max_regression_pct
        lines = [f"### lleval compare ({'no gate' if gate is None else f'gate: at most +{gate:g}%'})", "",
                 "| candidate | metric | base | candidate | change | 95% CI | P(worse) | verdict |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in self.comparisons:
            lines.append(
                f"| {r.candidate} | {r.metric} | {r.base_value:.4f} | {r.candidate_value:.4f} | "
                f"{r.change * 100:+.2f}% | {_interval_text(r.interval)} | {_p_text(r.p_worse)} | {self.verdict(r)} |"
            )
        for r, title, docs in _changed(self.comparisons):
            lines += ["", f"#### {r.candidate}: documents that {title}", "", "| document | Δ nats | Δ bits/byte |",
                      "| --- | --- | --- |"]
            lines += [f"| {d['index']} | {d['delta_nats']:+.3f} | {d['delta_bits_per_byte']:+.5f} |" for d in docs]
        lines += [f"\n> warning: {r.warning}" for r in self.comparisons if r.warning]
        return "\n".join(lines) + "\n"

    def verdict(self, row: Comparison) -> str:
        """``REGRESSED by X%``, ``ok`` or ``no gate``."""
        if self.max_regression_pct is None:
            return "no gate"
        return f"REGRESSED by {row.change * 100:+.2f}%" if row.regressed else "ok"

    def render_table(self, console: Any) -> None:
        """A rich table, one row per candidate."""
        from rich.table import Table

        rows = self.comparisons
        table = Table(title=f"lleval compare — base {rows[0].base}" if rows else "lleval compare")
        for column in ("candidate", "metric", "base", "candidate value", "change", "95% CI", "P(worse)", "verdict"):
            table.add_column(column)
        for r in rows:
            table.add_row(
                r.candidate, r.metric, f"{r.base_value:.4f}", f"{r.candidate_value:.4f}", f"{r.change * 100:+.2f}%",
                _interval_text(r.interval), _p_text(r.p_worse), self.verdict(r),
            )
        console.print(table)
        for r, title, docs in _changed(rows):
            # the title on a line of its own: a table title wraps at the table's width, which
            # cut a long candidate path over three lines above a three-column table
            console.print(f"{r.candidate}: documents that {title}", style="italic", highlight=False)
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


def compare_report_files(
    base: str,
    candidates: list[str],
    *,
    max_regression_pct: float | None = None,
    require_significant: bool = False,
    n_resamples: int = 1000,
    seed: int = 0,
    top_documents: int = TOP_DOCUMENTS,
) -> ComparisonReport:
    """Load score reports and compare each candidate with the base (``n_resamples``: 0, or
    at least `lleval.config.MIN_RESAMPLES`)."""
    from lleval.config import resamples_problem
    from lleval.errors import ConfigError
    from lleval.report.score import now

    if problem := resamples_problem(n_resamples):
        raise ConfigError(problem + ".")
    base_report = load_report(base)
    loaded = [(path, load_report(path)) for path in candidates]
    comparisons = [
        compare_reports(
            base_report, report, base_name=base, candidate_name=path,
            max_regression_pct=max_regression_pct, require_significant=require_significant,
            n_resamples=n_resamples, seed=seed, top_documents=top_documents,
        )
        for path, report in loaded
    ]
    return ComparisonReport(comparisons, max_regression_pct, require_significant, n_resamples, seed, created=now())
