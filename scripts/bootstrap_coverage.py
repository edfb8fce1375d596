"""How often a nominal 95% percentile bootstrap interval over documents covers the truth,
by number of documents: the measurement behind `lleval.metrics.MIN_INTERVAL_DOCUMENTS`.

A population of 200,000 documents with lognormal lengths (median 150 tokens) and
per-document mean NLL normal around 2.5 nats; its token-weighted perplexity is the
truth. Each trial draws a corpus of n documents, bootstraps the perplexity (500
resamples, as `lleval.metrics.ratio_intervals` does) and checks whether the interval
holds the truth. Run: ``python scripts/bootstrap_coverage.py`` (about 20 s).
"""

from __future__ import annotations

import numpy as np

from lleval.metrics import bootstrap_sums, percentile_interval, perplexities


def coverage(n: int, rng: np.random.Generator, tokens: np.ndarray, rate: np.ndarray, truth: float,
             trials: int = 1000, resamples: int = 500) -> float:
    """Share of ``trials`` corpora of ``n`` documents whose 95% interval holds ``truth``."""
    hits = 0
    for trial in range(trials):
        pick = rng.integers(0, len(tokens), n)
        sums = bootstrap_sums(np.column_stack([tokens[pick] * rate[pick], tokens[pick]]), resamples, trial)
        interval = percentile_interval(perplexities(sums[:, 0] / sums[:, 1]))
        hits += interval is not None and interval[0] <= truth <= interval[1]
    return hits / trials


def main() -> None:
    rng = np.random.default_rng(1)
    tokens = rng.lognormal(5.0, 1.0, 200_000)
    rate = rng.normal(2.5, 0.5, 200_000)
    truth = float(np.exp((tokens * rate).sum() / tokens.sum()))
    for n in (2, 3, 5, 10, 15, 20, 30, 50, 100):
        print(f"{n:4d} documents: {coverage(n, rng, tokens, rate, truth):.1%} of 95% intervals hold the truth")


if __name__ == "__main__":
    main()
