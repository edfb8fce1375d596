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


def test_each_formula_against_a_hand_calculation() -> None:
    import numpy as np

    from lleval.metrics import LN2, OVERFLOW_NATS, bits_per_byte, perplexities, perplexity, to_bits

    assert LN2 == math.log(2) and to_bits(math.log(8)) == 3.0
    assert math.isclose(perplexity(math.log(8)), 8.0) and perplexity(OVERFLOW_NATS) == math.inf
    assert np.allclose(perplexities(np.log([2.0, 8.0])), [2.0, 8.0])
    # 40 bytes at 3/4 of a bit each: 30 bits, 30 ln 2 nats
    assert math.isclose(bits_per_byte(30 * math.log(2), 40), 0.75)
    assert np.allclose(bits_per_byte(np.array([30 * math.log(2), math.log(2)]), np.array([40.0, 1.0])), [0.75, 1.0])


def test_a_document_is_the_sums_of_one_document() -> None:
    from lleval.metrics import DocumentResult

    docs = [DocumentResult(0, -1.0, 1, 3, 1, 1.0), DocumentResult(4, -30.0, 10, 20, 5, 90.0, 2, id="b")]
    total = Totals()
    for doc in docs:
        total.add(doc)
    assert total == Totals(-31.0, 11, 23, 6, 2, 91.0, 2)
    assert derive_metrics(docs[1])["perplexity"] == math.exp(3.0)
    assert docs[1].to_dict() == {"index": 4, "id": "b", "log_likelihood": -30.0, "tokens": 10, "bytes": 20, "words": 5}
    assert DocumentResult.from_dict(docs[1].to_dict()) == DocumentResult(4, -30.0, 10, 20, 5, id="b")
    assert Totals.from_dict(total.to_dict()) == total
