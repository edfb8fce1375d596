"""Paired comparison of score reports: same texts, per-document bootstrap, a CI gate.

Reports are aligned document by document. Perplexity (per token) is compared
only when the tokenizers match: a different tokenizer cuts the same text
into a different number of tokens, so per-token numbers stop being
comparable. Otherwise bits per byte is compared, which does not depend on the
vocabulary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lleval.errors import ReportError
from lleval.metrics import bits_per_byte, bootstrap_sums, percentile_interval, perplexities
from lleval.report.compare import Comparison, ComparisonReport
from lleval.report.schema import read_json
from lleval.report.score import Report

TOP_DOCUMENTS = 10  # documents listed per candidate as changed most, each way
# The protocol choices that change what a number measures (a report's ``protocol`` block).
PROTOCOL_KEYS = ("name", "max_length", "stride", "prefix_token", "concat", "special_tokens")


def load_report(path: str) -> Report:
    """Read a finished score report (`Report.from_dict`: checked against the shipped
    schema); a file that is not one is a `ReportError` naming it and what is wrong."""
    data = read_json(path)
    if isinstance(data, dict) and data.get("kind", "score") != "score":
        raise ReportError(f"report {path} is a {data.get('kind')!r} report: lleval compare reads score reports.")
    report = Report.from_dict(data, source=path)
    if not report.complete:
        raise ReportError(f"report {path} is incomplete (complete: false): finish the run first.")
    return report


def _arrays(report: Report) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    docs = report.documents
    nll = np.array([-float(d.log_likelihood) for d in docs])
    tokens = np.array([float(d.tokens) for d in docs])
    n_bytes = np.array([float(d.bytes) for d in docs])
    return nll, tokens, n_bytes


def check_same_texts(base: Report, cand: Report, base_name: str, cand_name: str) -> None:
    """Refuse reports that did not score the same texts, saying what differs."""
    b, c = base.dataset, cand.dataset
    if b.fingerprint != c.fingerprint:
        raise ReportError(
            f"{cand_name} scored different texts than {base_name} (dataset fingerprints differ: "
            f"{b.spec} [{b.split}], {b.documents} documents vs "
            f"{c.spec} [{c.split}], {c.documents} documents)."
        )
    if [d.index for d in base.documents] != [d.index for d in cand.documents]:
        raise ReportError(f"{cand_name} and {base_name} have different document rows: they cannot be paired.")
    if [d.bytes for d in base.documents] != [d.bytes for d in cand.documents]:
        raise ReportError(
            f"{cand_name} and {base_name} count different bytes per document (different --concat or "
            "protocol?): they cannot be paired."
        )


def protocol_differences(base: Report, candidate: Report) -> list[str]:
    """``"key: base vs candidate"`` for each protocol choice (`PROTOCOL_KEYS`) that differs.
    The prefix token's id is left out when the tokenizers differ: there the same choice
    (BOS) has another id."""
    same_tokenizer = base.tokenizer.fingerprint == candidate.tokenizer.fingerprint
    keys = [k for k in PROTOCOL_KEYS if same_tokenizer or k != "prefix_token"]
    b, c = base.protocol, candidate.protocol
    return [f"{k}: {b[k]!r} vs {c[k]!r}" for k in keys if b[k] != c[k]]


def compare_reports(
    base: Report,
    candidate: Report,
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
    if base.tokenizer.fingerprint == candidate.tokenizer.fingerprint:
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
            return perplexities(b_nll_s / b_den), perplexities(c_nll_s / c_den)
        return bits_per_byte(b_nll_s, b_den), bits_per_byte(c_nll_s, c_den)

    base_value, cand_value = (float(v[0]) for v in values(columns.sum(axis=0, keepdims=True)))
    if len(columns) < 2 or n_resamples <= 0:
        return base_value, cand_value, None, None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        b_s, c_s = values(bootstrap_sums(columns, n_resamples, seed))
        changes = c_s / b_s - 1.0
    finite = changes[np.isfinite(changes)]
    return base_value, cand_value, percentile_interval(changes, level), float(np.mean(finite > 0)) if finite.size else None


def changed_documents(
    base: Report, candidate: Report, top: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``top`` documents whose negative log-likelihood rose most (worst first) and fell
    most (best first), with the change in nats and in bits per byte. Texts must be paired."""
    rows = []
    for b, c in zip(base.documents, candidate.documents):
        delta = float(b.log_likelihood) - float(c.log_likelihood)  # candidate NLL - base NLL
        per_byte = bits_per_byte(delta, b.bytes) if b.bytes else 0.0
        rows.append({"index": b.index, "delta_nats": delta, "delta_bits_per_byte": per_byte,
                     "base_log_likelihood": b.log_likelihood, "candidate_log_likelihood": c.log_likelihood})
    worse = sorted((r for r in rows if r["delta_nats"] > 0), key=lambda r: -r["delta_nats"])[:top]
    better = sorted((r for r in rows if r["delta_nats"] < 0), key=lambda r: r["delta_nats"])[:top]
    return worse, better


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
    from lleval.report.blocks import now

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
