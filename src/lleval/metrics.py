"""Every metric, derived once from float64 sums.

The engine only adds: ``log_likelihood`` (natural log, nats, <= 0), scored
``tokens``, UTF-8 ``bytes`` and whitespace ``words``. Metrics are ratios of
those sums over the whole corpus, never averages of per-document ratios:

- ``nll = -log_likelihood / tokens``           nats per token
- ``cross_entropy_bits = nll / ln 2``          bits per token
- ``perplexity = exp(nll) = 2 ** cross_entropy_bits``
- ``bits_per_byte = -log_likelihood / (ln 2 * bytes)``
- ``byte_perplexity = exp(-log_likelihood / bytes) = 2 ** bits_per_byte``
- ``word_perplexity = exp(-log_likelihood / words)``

Each formula is written here once (`perplexity`, with `perplexities` for NumPy
arrays; `to_bits`; `bits_per_byte`; `LN2`) and called wherever a number is
derived.

The log-likelihood is in nats, so ``2 ** (-LL / N)`` would be wrong (it
treats nats as bits: for SmolLM2 on English prose that understates a
perplexity of about 20 as about 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar, overload

import numpy as np

LN2 = math.log(2.0)
#: nats per unit above which a perplexity is taken as infinite (exp(709.78) overflows float64)
OVERFLOW_NATS = 709.0

NumPyValues = TypeVar("NumPyValues", np.ndarray, np.floating[Any])


def perplexity(nats_per_unit: float) -> float:
    """``exp(nats per token)`` (per byte, per word: byte and word perplexity); infinite from
    `OVERFLOW_NATS` on, where float64 cannot hold it."""
    return math.exp(nats_per_unit) if nats_per_unit < OVERFLOW_NATS else math.inf


def perplexities(nats_per_unit: NumPyValues) -> NumPyValues:
    """`perplexity` of NumPy values (bootstrap resamples), with NumPy's ``exp``: it rounds the
    last bit otherwise than ``math.exp`` for about 1 value in 20, so a number computed with
    one of them keeps that one. Overflow gives infinity."""
    return np.exp(nats_per_unit)


def to_bits(nats: float) -> float:
    """Nats in bits (a surprisal, a cross-entropy per token or per byte)."""
    return nats / LN2


@overload
def bits_per_byte(nll_sum_nats: float, n_bytes: float) -> float: ...
@overload
def bits_per_byte(nll_sum_nats: np.ndarray, n_bytes: np.ndarray) -> np.ndarray: ...
def bits_per_byte(nll_sum_nats: Any, n_bytes: Any) -> Any:
    """``nll_sum_nats / (ln 2 * n_bytes)``, for numbers and arrays alike.

    The report's own ``bits_per_byte`` is ``to_bits(nll_sum_nats / n_bytes)``
    (`derive_metrics`): the same quantity, with the operations in another order, so the two
    may differ in the last bit; each keeps its order, so no number already written changes.
    """
    return nll_sum_nats / (LN2 * n_bytes)


@dataclass
class Totals:
    """Float64 sums of a whole corpus or of one document (a `DocumentResult` is a `Totals`):
    every metric is derived from these."""

    log_likelihood: float = 0.0  # nats, <= 0
    tokens: int = 0
    bytes: int = 0
    words: int = 0
    documents: int = 0
    logprob_sq_sum: float = 0.0  # sum over tokens of (log-prob)^2, nats^2
    nonfinite: int = 0  # tokens left out: NaN or infinite log-prob (--allow-nonfinite)

    def add(self, other: "Totals") -> None:
        """Add another set of sums into this one."""
        self.log_likelihood += other.log_likelihood
        self.nonfinite += other.nonfinite
        self.logprob_sq_sum += other.logprob_sq_sum
        self.tokens += other.tokens
        self.bytes += other.bytes
        self.words += other.words
        self.documents += other.documents

    def to_dict(self) -> dict[str, Any]:
        """The report's ``totals`` block."""
        return {
            "log_likelihood": self.log_likelihood,
            "log_likelihood_unit": "nats",
            "tokens": self.tokens,
            "bytes": self.bytes,
            "words": self.words,
            "documents": self.documents,
            "logprob_sq_sum": self.logprob_sq_sum,
            "nonfinite_tokens": self.nonfinite,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Totals":
        """Read a ``totals`` block back (checked against the schema by the report's reader)."""
        return cls(data["log_likelihood"], int(data["tokens"]), int(data["bytes"]), int(data["words"]),
                   int(data["documents"]), data["logprob_sq_sum"], int(data["nonfinite_tokens"]))


#: A document's membership scores (--membership; `lleval.reducers.membership`).
MEMBERSHIP_FIELDS = ("min_k_prob", "min_k_plus_plus", "zlib_ratio")


@dataclass(init=False)
class DocumentResult(Totals):
    """One document's sums (a `Totals` with ``documents`` 1), its row in the source
    (``index``) and the row's ``id`` field, when it has one.

    Built as ``DocumentResult(index, log_likelihood, tokens, bytes, words, logprob_sq_sum,
    nonfinite, id)``: the order `lleval.reducers.documents.DocumentSums` makes and
    checkpoints documents in.
    """

    index: int = 0
    id: str | int | None = None  # the source row's ``id`` field, when it has one

    def __init__(self, index: int, log_likelihood: float, tokens: int, bytes: int, words: int,
                 logprob_sq_sum: float = 0.0, nonfinite: int = 0, id: str | int | None = None) -> None:
        super().__init__(log_likelihood, tokens, bytes, words, 1, logprob_sq_sum, nonfinite)
        self.index = index
        self.id = id
        self.membership: dict[str, float | None] | None = None  # min_k_prob, min_k_plus_plus, zlib_ratio

    def to_dict(self) -> dict[str, Any]:
        """The document's row in the JSON export (``id`` only when the data has one, so
        reports of data without ids keep their exact bytes). Its squared log-prob sum and
        non-finite count are not written: only the report's totals carry them."""
        row: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            row["id"] = self.id
        row.update(log_likelihood=self.log_likelihood, tokens=self.tokens, bytes=self.bytes, words=self.words)
        if self.membership is not None:
            row.update(self.membership)
        return row

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DocumentResult":
        """Read a row of ``documents`` back (its squared log-prob sum and non-finite count,
        which the row does not hold, as 0)."""
        doc = cls(int(data["index"]), data["log_likelihood"], int(data["tokens"]), int(data["bytes"]),
                  int(data["words"]), id=data.get("id"))
        if "min_k_prob" in data:
            doc.membership = {f: data.get(f) for f in MEMBERSHIP_FIELDS}
        return doc


def _ratio(numerator: float, denominator: int) -> float | None:
    return numerator / denominator if denominator > 0 else None


def llamacpp_perplexity_stderr(totals: Totals) -> float | None:
    """llama.cpp's perplexity error estimate, PPL * sqrt((mean(nll^2) - mean(nll)^2) / (N - 1))."""
    n = totals.tokens
    if n < 2:
        return None
    mean = -totals.log_likelihood / n
    variance = totals.logprob_sq_sum / n - mean * mean
    ppl = perplexity(mean)
    if variance <= 0:
        return 0.0
    return ppl * math.sqrt(variance / (n - 1))


def derive_metrics(totals: Totals) -> dict[str, float | None]:
    """Metrics from sums; a metric whose denominator is zero is ``None``."""
    nll_sum_nats = -totals.log_likelihood
    nll = _ratio(nll_sum_nats, totals.tokens)
    nats_per_byte = _ratio(nll_sum_nats, totals.bytes)
    nats_per_word = _ratio(nll_sum_nats, totals.words)
    return {
        "nll": nll,
        "cross_entropy_bits": None if nll is None else to_bits(nll),
        "perplexity": None if nll is None else perplexity(nll),
        "bits_per_byte": None if nats_per_byte is None else to_bits(nats_per_byte),
        "byte_perplexity": None if nats_per_byte is None else perplexity(nats_per_byte),
        "word_perplexity": None if nats_per_word is None else perplexity(nats_per_word),
    }


#: Fewest documents whose bootstrap interval is shown as meaningful. A percentile bootstrap
#: over documents needs enough of them for the resamples to look like new corpora: below
#: that its ends are near single documents' own values (two documents give the two
#: documents' perplexities) and the "95%" interval covers the truth far less often.
#: ``scripts/bootstrap_coverage.py`` measures the coverage of a nominal 95% interval of a
#: token-weighted perplexity (lognormal document lengths, 1,000 corpora per size): 50% with
#: 2 documents, 81% with 5, 86% with 10, 89% with 15 to 20, 92-93% from 30 on (the level a
#: percentile bootstrap of a ratio keeps). From 20 documents a "95%" interval misses a few
#: points of coverage; below 10 it misses a fifth or more. Below 20 every format marks the
#: interval unreliable.
MIN_INTERVAL_DOCUMENTS = 20


def interval_reliable(documents: int) -> bool:
    """Whether a bootstrap interval over ``documents`` documents is shown as meaningful
    (`MIN_INTERVAL_DOCUMENTS` or more)."""
    return documents >= MIN_INTERVAL_DOCUMENTS


def reliability(documents: int, has_interval: bool) -> dict[str, Any]:
    """What a report's ``bootstrap`` block says of its intervals: the ``documents`` resampled and
    whether the intervals are ``reliable`` (`interval_reliable`; None when there is none)."""
    return {"documents": documents, "reliable": interval_reliable(documents) if has_interval else None}


def unreliable_sentence(documents: int) -> str:
    """The note of a report whose intervals come from fewer than `MIN_INTERVAL_DOCUMENTS`."""
    return (f"the 95% intervals come from {documents} document{'' if documents == 1 else 's'}, fewer than "
            f"{MIN_INTERVAL_DOCUMENTS}: treat them as unreliable (a bootstrap over so few documents covers the "
            "true value far less often than 95%; score more documents for a meaningful interval).")


# Indices drawn per chunk of resamples: 10 M (80 MB) plus the same number of
# float64 counts; 10,000 resamples of 100,000 documents is 100 chunks.
BOOTSTRAP_CHUNK_ELEMENTS = 10_000_000


def bootstrap_sums(columns: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Column sums of ``n_resamples`` resamples (with replacement) of the rows.

    ``columns`` is ``(n_documents, k)`` float64; the result is
    ``(n_resamples, k)``. Each chunk of resamples draws its indices, counts
    how often each document was drawn (one ``bincount``), and multiplies the
    counts by the columns (one matmul): 2 to 3 times faster than gathering
    the rows. Paired statistics resample the same documents for every
    column, which is what makes a paired comparison paired.
    """
    data = np.ascontiguousarray(columns, dtype=np.float64)
    n = data.shape[0]
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, data.shape[1]), dtype=np.float64)
    step = max(1, BOOTSTRAP_CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, n_resamples, step):
        m = min(step, n_resamples - start)
        index = rng.integers(0, n, size=(m, n), dtype=np.int64)
        index += (np.arange(m, dtype=np.int64) * n)[:, None]  # row r counts into [r*n, (r+1)*n)
        counts = np.bincount(index.ravel(), minlength=m * n).reshape(m, n).astype(np.float64)
        out[start : start + m] = counts @ data  # (m, n) @ (n, k)
    return out


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """The central ``level`` percentile interval of bootstrap samples.

    Non-finite samples are left out: a resample that drew only documents with
    no scored token has no ratio (0/0), and carries no information. None when
    no sample is finite.
    """
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def binned_intervals(
    table: np.ndarray, n_resamples: int, seed: int, level: float = 0.95
) -> list[tuple[float, float] | None]:
    """Per bin, the bootstrap interval over documents of perplexity, exp(-LL / tokens).

    ``table`` is ``(documents, bins, 2)``: each document's log-likelihood and
    tokens in each bin. The same resampled documents serve every bin. None for
    a bin without tokens, or with fewer than two documents or no resamples.
    """
    n_docs, n_bins, _ = table.shape
    if n_docs < 2 or n_resamples < 1:
        return [None] * n_bins
    sums = bootstrap_sums(table.reshape(n_docs, 2 * n_bins), n_resamples, seed)  # (R, 2 * bins)
    out: list[tuple[float, float] | None] = []
    for b in range(n_bins):
        if table[:, b, 1].sum() == 0:
            out.append(None)
            continue
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out.append(percentile_interval(perplexities(-sums[:, 2 * b] / sums[:, 2 * b + 1]), level))
    return out


def ratio_intervals(
    nll_sum_nats: np.ndarray,
    tokens: np.ndarray,
    n_bytes: np.ndarray,
    n_resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, tuple[float, float] | None]:
    """Bootstrap intervals of perplexity and bits per byte over documents.

    Each resample recomputes sum(nll) / sum(tokens) (and / sum(bytes)) over
    resampled documents; the interval is the percentile interval. Fewer than
    two documents (or no resamples) give ``None``: one document says nothing
    about how another would score.
    """
    if len(nll_sum_nats) < 2 or n_resamples < 1:
        return {"perplexity": None, "bits_per_byte": None}
    sums = bootstrap_sums(np.column_stack([nll_sum_nats, tokens, n_bytes]), n_resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ppl = perplexities(sums[:, 0] / sums[:, 1])
        bpb = bits_per_byte(sums[:, 0], sums[:, 2])
    return {
        "perplexity": percentile_interval(ppl, level),
        "bits_per_byte": percentile_interval(bpb, level) if np.all(sums[:, 2] > 0) else None,
    }


def macro_bits_per_byte(
    datasets: Sequence[tuple[np.ndarray, np.ndarray]], n_resamples: int, seed: int, level: float = 0.95
) -> tuple[float | None, tuple[float, float] | None]:
    """The mean over datasets of each dataset's bits per byte, and its bootstrap interval.

    ``datasets`` holds per dataset its documents' ``(nll_sum_nats, n_bytes)``
    arrays. Each dataset weighs the same whatever its size or tokenizer (Paloma's
    per-domain average). A resample draws documents within each dataset
    (dataset ``j`` seeded ``seed + j``), recomputes each dataset's bits per byte
    as a ratio of sums and averages them; the interval is the percentile
    interval. None for the interval when a dataset has fewer than two documents
    or there are no resamples; None for both when a dataset has no byte.
    """
    if not datasets or any(float(np.sum(b)) <= 0 for _, b in datasets):
        return None, None
    value = float(np.mean([to_bits(float(np.sum(n)) / float(np.sum(b))) for n, b in datasets]))  # as derive_metrics
    if n_resamples < 1 or any(len(n) < 2 for n, _ in datasets):
        return value, None
    samples = np.zeros(n_resamples, dtype=np.float64)
    for j, (nll, n_bytes) in enumerate(datasets):
        sums = bootstrap_sums(np.column_stack([nll, n_bytes]), n_resamples, seed + j)
        with np.errstate(divide="ignore", invalid="ignore"):
            samples += bits_per_byte(sums[:, 0], sums[:, 1])
    return value, percentile_interval(samples / len(datasets), level)
