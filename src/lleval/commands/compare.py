"""Paired comparison of score reports: same texts, per-document bootstrap, a CI gate.

Reports are aligned document by document. Perplexity (per token) is compared
only when the tokenizers match: a different tokenizer cuts the same text
into a different number of tokens, so per-token numbers stop being
comparable. Otherwise bits per byte is compared, which does not depend on the
vocabulary.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

import numpy as np

from lleval.errors import ReportError
from lleval.metrics import MEMBERSHIP_FIELDS, bits_per_byte, bootstrap_sums, percentile_interval, perplexities
from lleval.report.compare import Comparison, ComparisonReport, MembershipChange, MembershipDelta
from lleval.report.schema import read_json
from lleval.report.score import Report
from lleval.report.suite import SuiteCell, SuiteReport

TOP_DOCUMENTS = 10  # documents listed per candidate as changed most, each way
# The protocol choices that change what a number measures (a report's ``protocol`` block).
PROTOCOL_KEYS = ("name", "max_length", "stride", "prefix_token", "concat", "special_tokens")


def load_report(path: str) -> Report:
    """Read a finished score report (`Report.from_dict`: checked against the shipped
    schema); a file that is not one is a `ReportError` naming it and what is wrong."""
    report = load_any(path)
    if isinstance(report, SuiteReport):
        raise ReportError(f"report {path} is a 'suite' report: compare it with another suite or a score report.")
    return report


def load_any(path: str) -> Report | SuiteReport:
    """Read a finished score report or suite report (each checked against its schema)."""
    data = read_json(path)
    kind = data.get("kind", "score") if isinstance(data, dict) else "score"
    if kind == "suite":
        suite = SuiteReport.from_dict(data, source=path)
        if not suite.complete:
            raise ReportError(f"suite report {path} is incomplete (complete: false): finish the run first.")
        return suite
    if kind != "score":
        raise ReportError(f"report {path} is a {kind!r} report: lleval compare reads score and suite reports.")
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
    metric: str = "perplexity",
) -> Comparison:
    """Paired bootstrap of the relative change of ``metric`` (perplexity, or bits per byte;
    bits per byte whatever is asked when the tokenizers differ), and the documents that
    changed most. ``exceeded``: the change is beyond ``max_regression_pct``; ``regressed``:
    and, with ``require_significant``, its interval lies above zero too."""
    check_same_texts(base, candidate, base_name, candidate_name)
    metric, why = gated_metric(base, candidate, metric, base_name, candidate_name)
    b_nll, b_tok, n_bytes = _arrays(base)
    c_nll, c_tok, _ = _arrays(candidate)
    if b_tok.sum() <= 0 or c_tok.sum() <= 0 or n_bytes.sum() <= 0:
        raise ReportError(f"{base_name} or {candidate_name} scored no tokens: nothing to compare.")
    b_den = b_tok if metric == "perplexity" else n_bytes
    c_den = c_tok if metric == "perplexity" else n_bytes
    columns = np.column_stack([b_nll, b_den, c_nll, c_den])
    base_value, cand_value, interval, p_worse = paired_change(columns, metric, n_resamples, seed, level)
    change = cand_value / base_value - 1.0
    exceeded = max_regression_pct is not None and change * 100.0 > max_regression_pct
    regressed = exceeded and (not require_significant or (interval is not None and interval[0] > 0))
    worst, best = changed_documents(base, candidate, top_documents)
    membership, notes = compare_membership(base, candidate, base_name, candidate_name, n_resamples=n_resamples,
                                           seed=seed, level=level, top=top_documents)
    return Comparison(base_name, candidate_name, metric, why, base_value, cand_value, change, interval, p_worse,
                      regressed, worst, best, protocol_differences(base, candidate), membership=membership,
                      notes=notes, exceeded=exceeded, documents=len(base.documents),
                      limit_pct=max_regression_pct)


def gated_metric(base: Report, candidate: Report, asked: str, base_name: str, candidate_name: str) -> tuple[str, str]:
    """The metric to compare and why: ``asked`` (``--metric``) when the tokenizers match, else bits
    per byte, which does not depend on the vocabulary. Bits per byte of a protocol that leaves
    tokens unscored (llama-cpp) would divide part of the log-likelihood by every byte: refused."""
    from lleval.config import COMPARE_METRICS

    if asked not in COMPARE_METRICS:
        raise ReportError(f"--metric {asked!r}: compare gates on one of {', '.join(COMPARE_METRICS)}.")
    if base.tokenizer.fingerprint != candidate.tokenizer.fingerprint:
        metric = "bits_per_byte"
        why = "tokenizers differ, so per-token numbers are not comparable; bits per byte is"
        if asked == "perplexity":
            why += " (compared instead of the perplexity --metric asks for)"
    elif asked == "perplexity":
        metric, why = "perplexity", "tokenizers match, so per-token perplexity is comparable"
    else:
        metric, why = "bits_per_byte", "--metric bits_per_byte (the tokenizers match: perplexity would be comparable too)"
    unscored = [name for name, r in ((base_name, base), (candidate_name, candidate))
                if not r.protocol.has_per_byte_metrics]
    if metric == "bits_per_byte" and unscored:
        raise ReportError(f"bits per byte is not defined for {' and '.join(unscored)}: its {base.protocol.name} "
                          "protocol leaves tokens unscored" + (" (the tokenizers differ, so perplexity is not "
                          "comparable either)." if asked == "perplexity" else "; compare perplexity (--metric "
                          "perplexity)."))
    return metric, why


def membership_values(report: Report) -> np.ndarray:
    """``(documents, 3)`` float64: each document's `MEMBERSHIP_FIELDS`, NaN where it has none
    (a served model's Min-K%++, a document with no scored token)."""
    out = np.full((len(report.documents), len(MEMBERSHIP_FIELDS)), np.nan)
    for i, doc in enumerate(report.documents):
        for j, name in enumerate(MEMBERSHIP_FIELDS):
            value = None if doc.membership is None else doc.membership.get(name)
            if value is not None:
                out[i, j] = float(value)
    return out


def compare_membership(
    base: Report, candidate: Report, base_name: str, candidate_name: str, *,
    n_resamples: int, seed: int, level: float, top: int,
) -> tuple[MembershipChange | None, list[str]]:
    """How the membership scores moved on the paired documents (`MembershipChange`), when
    both reports have them; with only one side having them, None and a note saying to
    rerun the other with --membership. Each score counts only the documents that have it
    on both sides; the interval of its mean change is the paired bootstrap over documents
    (`bootstrap_sums`, the same resamples for all three scores). A note is the comparison's,
    shown after the candidate's name: it names the base, and calls the candidate "this
    candidate" (``candidate_name`` is not repeated)."""
    has = [any(d.membership is not None for d in r.documents) for r in (base, candidate)]
    if not any(has):
        return None, []
    if not all(has):
        which = (f"the base {base_name} has membership scores and this candidate has none" if has[0] else
                 f"this candidate has membership scores and the base {base_name} has none")
        return None, [f"{which}: rerun both with --membership to compare them."]
    ks = [min_k_of(r) for r in (base, candidate)]
    if ks[0] != ks[1]:
        return None, [f"the base {base_name} has membership scores with --min-k {ks[0]:g} and this candidate with "
                      f"{ks[1]:g}: Min-K% of different k are not comparable; rerun both with one --min-k."]
    b, c = membership_values(base), membership_values(candidate)
    paired = np.isfinite(b) & np.isfinite(c)  # (documents, 3)
    delta = np.where(paired, c - b, 0.0)
    intervals: list[tuple[float, float] | None] = [None] * len(MEMBERSHIP_FIELDS)
    if len(delta) >= 2 and n_resamples > 0:
        columns = np.column_stack([delta, paired.astype(np.float64)])  # 3 delta sums, then 3 counts
        sums = bootstrap_sums(columns, n_resamples, seed)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums[:, :3] / sums[:, 3:]
        intervals = [percentile_interval(means[:, j], level) if paired[:, j].sum() >= 2 else None
                     for j in range(len(MEMBERSHIP_FIELDS))]
    scores = {name: _membership_delta(b[:, j], c[:, j], paired[:, j], intervals[j])
              for j, name in enumerate(MEMBERSHIP_FIELDS)}
    ranked = next((name for name in ("min_k_plus_plus", "min_k_prob") if scores[name].documents), None)
    rows = [] if ranked is None else risen_documents(base, b, c, paired, MEMBERSHIP_FIELDS.index(ranked), top)
    return MembershipChange(scores, ranked, rows), []


def min_k_of(report: Report) -> float:
    """The ``--min-k`` a report's membership scores were computed with (its settings name it when
    it was given; else the default)."""
    from lleval.config import DEFAULT_MIN_K

    given = (report.settings or {}).get("min_k")
    return float(given["value"]) if isinstance(given, dict) and "value" in given else DEFAULT_MIN_K


def _membership_delta(b: np.ndarray, c: np.ndarray, paired: np.ndarray,
                      interval: tuple[float, float] | None) -> MembershipDelta:
    n = int(paired.sum())
    if n == 0:
        return MembershipDelta(0, None, None, None, None)
    b_sum, c_sum = float(b[paired].sum()), float(c[paired].sum())
    return MembershipDelta(n, b_sum / n, c_sum / n, float((c[paired] - b[paired]).sum()) / n, interval)


def risen_documents(base: Report, b: np.ndarray, c: np.ndarray, paired: np.ndarray, column: int,
                    top: int) -> list[dict[str, Any]]:
    """The ``top`` documents whose score in ``column`` rose most (candidate - base > 0),
    largest rise first, with the document's ``id`` when the data has one."""
    rises = [(float(c[i, column] - b[i, column]), int(i)) for i in np.flatnonzero(paired[:, column])]
    rows = []
    for rise, i in sorted((r for r in rises if r[0] > 0), key=lambda r: -r[0])[:top]:
        doc = base.documents[i]
        rows.append({"index": doc.index, **({} if doc.id is None else {"id": doc.id}),
                     "base": float(b[i, column]), "candidate": float(c[i, column]), "delta": rise})
    return rows


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
    most (best first), with the change in nats and in bits per byte, and the document's
    ``id`` when the data has one. Texts must be paired."""
    rows: list[dict[str, Any]] = []
    for b, c in zip(base.documents, candidate.documents):
        delta = float(b.log_likelihood) - float(c.log_likelihood)  # candidate NLL - base NLL
        per_byte = bits_per_byte(delta, b.bytes) if b.bytes else 0.0
        rows.append({"index": b.index, **({} if b.id is None else {"id": b.id}), "delta_nats": delta,
                     "delta_bits_per_byte": per_byte, "base_log_likelihood": b.log_likelihood,
                     "candidate_log_likelihood": c.log_likelihood})
    worse = sorted((r for r in rows if r["delta_nats"] > 0), key=lambda r: -r["delta_nats"])[:top]
    better = sorted((r for r in rows if r["delta_nats"] < 0), key=lambda r: r["delta_nats"])[:top]
    return worse, better


# A pair to compare: (dataset label or None, base report, its name, candidate report, its name,
# notes for its comparison).
Pair = tuple[str | None, Report, str, Report, str, list[str]]


def _cell_report(cell: SuiteCell, path: str) -> Report:
    if cell.report is None:
        raise ReportError(f"cell {cell.model}/{cell.dataset} of {path} failed ({cell.error}): rerun it first.")
    if not cell.report.complete:
        raise ReportError(f"cell {cell.model}/{cell.dataset} of {path} is incomplete: finish the run first.")
    return cell.report


def _cell_name(path: str, cell: SuiteCell) -> str:
    return f"{path} [{cell.model}/{cell.dataset}]"


def suite_pairs(base: SuiteReport, cand: SuiteReport, base_path: str, cand_path: str,
                only_common: bool = False) -> list[Pair]:
    """The cells of two suites to compare: by dataset label when each suite has one model,
    else by (model label, dataset label). Suites whose cells differ (a dataset or a model
    dropped from one) are a `ReportError` naming what each lacks, unless ``only_common``
    (``--only-common``): a gate must not pass on fewer cells than it was given to check
    without being told to; then the cells both have are compared, and the first comparison
    says which were left out. None in common is a `ReportError` naming the labels."""
    def key(cell: SuiteCell, single: bool) -> tuple[str, ...]:
        return (cell.dataset,) if single else (cell.model, cell.dataset)

    single = len(base.models) == 1 and len(cand.models) == 1
    mine, theirs = ({key(c, single): c for c in s.cells} for s in (base, cand))
    pairs = [(b, theirs[k]) for k, b in mine.items() if k in theirs]
    what = "dataset labels" if single else "model/dataset labels"
    if not pairs:
        raise ReportError(f"{cand_path} and {base_path} have no cell in common (matched by {what}: "
                          f"{_labels(mine)} vs {_labels(theirs)}).")
    missing = ((cand_path, [k for k in mine if k not in theirs]), (base_path, [k for k in theirs if k not in mine]))
    lacking = [f"{path} has no {_labels(keys)}" for path, keys in missing if keys]
    if lacking and not only_common:
        raise ReportError(f"{cand_path} and {base_path} hold different cells (matched by {what}): "
                          f"{'; '.join(lacking)}. Score the missing cells, or pass --only-common to compare only "
                          "the cells both have.")
    notes = [f"--only-common: only the cells both suites have were compared; {'; '.join(lacking)}."] if lacking else []
    return [(b.dataset, _cell_report(b, base_path), _cell_name(base_path, b), _cell_report(c, cand_path),
             _cell_name(cand_path, c), notes if k == 0 else []) for k, (b, c) in enumerate(pairs)]


def _labels(keys: Iterable[tuple[str, ...]]) -> str:
    return ", ".join(sorted("/".join(k) for k in keys)) or "none"


def pick_cell(suite: SuiteReport, path: str, single: Report, cell: str | None) -> SuiteCell:
    """The suite's cell to compare with a score report: the one named by ``cell``
    (``MODEL/DATASET``), else the one whose dataset fingerprint equals the report's."""
    names = ", ".join(f"{c.model}/{c.dataset}" for c in suite.cells)
    if cell is not None:
        found = [c for c in suite.cells if f"{c.model}/{c.dataset}" == cell]
        if not found:
            raise ReportError(f"{path} has no cell {cell} (--cell MODEL/DATASET; its cells: {names}).")
        return found[0]
    same = [c for c in suite.cells
            if c.report is not None and c.report.dataset.fingerprint == single.dataset.fingerprint]
    if len(same) != 1:
        choices = ", ".join(f"{c.model}/{c.dataset}" for c in same) if same else f"none of {names}"
        raise ReportError(f"{path} has {len(same)} cells of the score report's texts ({choices}): "
                          "pick one with --cell MODEL/DATASET.")
    return same[0]


def report_pairs(base: Report | SuiteReport, cand: Report | SuiteReport, base_path: str, cand_path: str,
                 cell: str | None = None, only_common: bool = False) -> list[Pair]:
    """What to compare for a base and a candidate file, each a score or a suite report
    (``only_common``: two suites whose cells differ compare the cells both have)."""
    if only_common and not (isinstance(base, SuiteReport) and isinstance(cand, SuiteReport)):
        raise ReportError("--only-common picks the cells two suite reports both have: drop it, or compare two "
                          "suites.")
    if isinstance(base, SuiteReport) and isinstance(cand, SuiteReport):
        if cell is not None:
            raise ReportError("--cell picks a suite's cell to compare with a score report; two suites are "
                              "compared cell by cell: drop --cell.")
        return suite_pairs(base, cand, base_path, cand_path, only_common)
    if isinstance(base, SuiteReport) and isinstance(cand, Report):
        b = pick_cell(base, base_path, cand, cell)
        return [(b.dataset, _cell_report(b, base_path), _cell_name(base_path, b), cand, cand_path, [])]
    if isinstance(base, Report) and isinstance(cand, SuiteReport):
        c = pick_cell(cand, cand_path, base, cell)
        return [(c.dataset, base, base_path, _cell_report(c, cand_path), _cell_name(cand_path, c), [])]
    assert isinstance(base, Report) and isinstance(cand, Report)
    if cell is not None:
        raise ReportError("--cell picks a cell of a suite report, and neither report is one.")
    return [(None, base, base_path, cand, cand_path, [])]


def compare_report_files(
    base: str,
    candidates: list[str],
    *,
    max_regression_pct: float | None = None,
    require_significant: bool = False,
    n_resamples: int = 1000,
    seed: int = 0,
    top_documents: int = TOP_DOCUMENTS,
    cell: str | None = None,
    only_common: bool = False,
    metric: str = "perplexity",
) -> ComparisonReport:
    """Load score (or suite) reports and compare each candidate with the base (``n_resamples``:
    0, or at least `lleval.config.MIN_RESAMPLES`). A suite is compared cell by cell
    (`report_pairs`; ``only_common``: two suites whose cells differ compare the cells both
    have, else they are refused), each result naming its dataset. ``metric``: what is gated
    when the tokenizers match (`gated_metric`)."""
    from lleval.config import resamples_problem
    from lleval.errors import ConfigError
    from lleval.report.blocks import now

    if problem := resamples_problem(n_resamples):
        raise ConfigError(problem + ".")
    if require_significant and n_resamples == 0:
        raise ConfigError("--require-significant fails a candidate only when the 95% interval lies above zero, "
                          "and --bootstrap 0 makes no interval (the gate could never fail): drop one of them.")
    base_report = load_any(base)
    pairs = [pair for path in candidates
             for pair in report_pairs(base_report, load_any(path), base, path, cell, only_common)]
    comparisons = []
    for dataset, b, b_name, c, c_name, notes in pairs:
        result = compare_reports(b, c, base_name=b_name, candidate_name=c_name, max_regression_pct=max_regression_pct,
                                 require_significant=require_significant, n_resamples=n_resamples, seed=seed,
                                 top_documents=top_documents, metric=metric)
        comparisons.append(replace(result, dataset=dataset, notes=notes + result.notes))
    return ComparisonReport(comparisons, max_regression_pct, require_significant, n_resamples, seed, created=now())
