"""Metrics derived from sums, checked against hand calculations."""

from __future__ import annotations

import math

from lleval.metrics import Totals, derive_metrics


def test_metrics_from_sums() -> None:
    # 10 tokens, each with probability 1/8: LL = -10 ln 8; 40 bytes; 5 words.
    totals = Totals(log_likelihood=-10 * math.log(8), tokens=10, bytes=40, words=5, documents=2)
    m = derive_metrics(totals)
    assert math.isclose(m["nll"], math.log(8))
    assert math.isclose(m["cross_entropy_bits"], 3.0)
    assert math.isclose(m["perplexity"], 8.0)
    assert math.isclose(m["bits_per_byte"], 30 / 40)
    assert math.isclose(m["byte_perplexity"], 2 ** (30 / 40))
    assert math.isclose(m["word_perplexity"], 8.0 ** 2)


def test_sums_not_average_of_averages() -> None:
    a = Totals(-1.0, 1, 1, 1, 1)
    b = Totals(-30.0, 10, 10, 10, 1)
    total = Totals()
    total.add(a)
    total.add(b)
    assert math.isclose(derive_metrics(total)["perplexity"], math.exp(31 / 11))


def test_zero_denominators_are_none() -> None:
    m = derive_metrics(Totals())
    assert all(value is None for value in m.values())


def test_overflow_is_inf() -> None:
    assert derive_metrics(Totals(-1e6, 1, 1, 1, 1))["perplexity"] == math.inf
