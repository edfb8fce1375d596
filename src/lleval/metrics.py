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

The log-likelihood is in nats, so ``2 ** (-LL / N)`` would be wrong (it
treats nats as bits: for SmolLM2 on English prose that understates a
perplexity of about 20 as about 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LN2 = math.log(2.0)


@dataclass
class Totals:
    """Running float64 sums for one document or a whole corpus."""

    log_likelihood: float = 0.0  # nats, <= 0
    tokens: int = 0
    bytes: int = 0
    words: int = 0
    documents: int = 0
    logprob_sq_sum: float = 0.0  # sum over tokens of (log-prob)^2, nats^2

    def add(self, other: "Totals") -> None:
        """Add another set of sums into this one."""
        self.log_likelihood += other.log_likelihood
        self.logprob_sq_sum += other.logprob_sq_sum
        self.tokens += other.tokens
        self.bytes += other.bytes
        self.words += other.words
        self.documents += other.documents


def _ratio(numerator: float, denominator: int) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _exp(x: float | None) -> float | None:
    if x is None:
        return None
    return math.exp(x) if x < 709.0 else math.inf


def llamacpp_perplexity_stderr(totals: Totals) -> float | None:
    """llama.cpp's perplexity error estimate, PPL * sqrt((mean(nll^2) - mean(nll)^2) / (N - 1))."""
    n = totals.tokens
    if n < 2:
        return None
    mean = -totals.log_likelihood / n
    variance = totals.logprob_sq_sum / n - mean * mean
    ppl = _exp(mean)
    if ppl is None or variance <= 0:
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
        "cross_entropy_bits": None if nll is None else nll / LN2,
        "perplexity": _exp(nll),
        "bits_per_byte": None if nats_per_byte is None else nats_per_byte / LN2,
        "byte_perplexity": _exp(nats_per_byte),
        "word_perplexity": _exp(nats_per_word),
    }
