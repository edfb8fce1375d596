"""Each reducer against a naive loop written here, on tokens from the real engine driven by a
synthetic scorer whose log-prob is a known function of the token and its context length."""

from __future__ import annotations

import hashlib
import json
import math
import random

import numpy as np
import pytest
import torch

from lleval.reducers.base import NonFiniteLogProb, finite_only
from lleval.reducers.documents import DocumentSums, StreamCounts
from lleval.plan.batching import Batching
from lleval.engine.scoring import EngineOptions, score_units
from lleval.stream import Row, Unit
from lleval.windows import rolling_spans


def value(token: int, context: int) -> float:
    """The synthetic log-prob of ``token`` read after ``context`` tokens (float32-exact)."""
    return float(np.float32(-0.1 * (token % 7 + 1) - 0.01 * context))


def synthetic_scorer(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                     score_mask: torch.Tensor) -> torch.Tensor:
    """log P(label) = value(label, its column + 1): the column of a position is its context - 1."""
    columns = torch.arange(labels.shape[1]).expand_as(labels)
    values = -0.1 * (labels % 7 + 1).double() - 0.01 * (columns + 1).double()
    return values[score_mask].float()


def _units(seed: int) -> tuple[list[Unit], list[list[int]]]:
    """Document units and, last, one concatenated stream of three documents."""
    rng = random.Random(seed)
    docs = [[rng.randrange(50) for _ in range(rng.randrange(2, 40))] for _ in range(6)]
    units = [Unit(doc, rolling_spans(len(doc), 9, 4), (Row(i, 3 * i + 1, i + 2, hashlib.sha256(bytes([i])).hexdigest()),),
                  i, np.zeros(1, dtype=np.int64)) for i, doc in enumerate(docs)]
    stream = [t for d in docs[:3] for t in d]
    owners = np.repeat(np.arange(3), [len(d) for d in docs[:3]])
    rows = tuple(Row(10 + k, 5, 1, hashlib.sha256(bytes([10 + k])).hexdigest()) for k in range(3))
    starts = np.array([0, len(docs[0]), len(docs[0]) + len(docs[1])])
    units.append(Unit(stream, rolling_spans(len(stream), 9, 4), rows, 6, starts, owners, unscored=1))
    return units, docs


def _naive(units: list[Unit]) -> dict[int, list[float]]:
    """Every scored token's value, per row number, straight from the windows."""
    out: dict[int, list[float]] = {}
    for unit in units:
        for r in range(len(unit.rows)):
            out.setdefault(unit.first_row + r, [])
        for span in unit.spans:
            for p in range(span.end - span.n_scored, span.end):
                owner = 0 if unit.owners is None else int(unit.owners[p])
                out[unit.first_row + owner].append(value(unit.tokens[p], p - span.start))
    return out


def _blocks(units: list[Unit], batch_size: int = 3) -> list:
    return list(score_units(synthetic_scorer, units, EngineOptions(Batching(batch_size), block_tokens=40)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_document_sums_equal_a_naive_loop(seed: int) -> None:
    units, _ = _units(seed)
    sums = DocumentSums()
    for block in _blocks(units):
        sums.update(block)
    naive = _naive(units)
    rows = [row for unit in units for row in unit.rows]
    assert [d.index for d in sums.documents] == [row.index for row in rows]
    for number, (doc, row) in enumerate(zip(sums.documents, rows)):
        assert doc.tokens == len(naive[number])
        assert math.isclose(doc.log_likelihood, sum(naive[number]), rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(doc.logprob_sq_sum, sum(v * v for v in naive[number]), rel_tol=1e-12, abs_tol=1e-12)
        assert (doc.bytes, doc.words) == (row.bytes, row.words)
    chain = hashlib.sha256(b"").hexdigest()
    for row in rows:
        chain = hashlib.sha256(bytes.fromhex(chain) + bytes.fromhex(row.text_sha)).hexdigest()
    assert sums.data_hash == chain
    totals = sums.totals()
    assert totals.tokens == sum(len(v) for v in naive.values()) and totals.documents == len(rows)


def test_document_sums_do_not_depend_on_batching() -> None:
    units, _ = _units(3)
    results = []
    for batch_size in (1, 2, 7, 64):
        sums = DocumentSums()
        for block in _blocks(units, batch_size):
            sums.update(block)
        results.append([(d.log_likelihood, d.logprob_sq_sum, d.tokens) for d in sums.documents])
    assert all(r == results[0] for r in results)  # bit for bit: sums are added in window order


def test_stream_counts_equal_a_naive_count() -> None:
    units, _ = _units(4)
    counts = StreamCounts()
    for block in _blocks(units):
        counts.update(block)
    assert counts.stream_tokens == sum(len(u.tokens) for u in units)
    assert counts.unscored_tokens == sum(u.unscored for u in units) == 1


def test_states_survive_json_and_restore_exactly() -> None:
    units, _ = _units(5)
    sums, counts = DocumentSums(), StreamCounts()
    for block in _blocks(units):
        sums.update(block)
        counts.update(block)
    again_sums, again_counts = DocumentSums(), StreamCounts()
    again_sums.restore(json.loads(json.dumps(sums.state())))
    again_counts.restore(json.loads(json.dumps(counts.state())))
    assert again_sums.documents == sums.documents and again_sums.data_hash == sums.data_hash
    assert again_counts.state() == counts.state()


def _with_nan(block, unit_index: int, token_index: int):  # type: ignore[no-untyped-def]
    import dataclasses

    scores = block.units[unit_index]
    logprob = scores.logprob.copy()
    logprob[token_index] = np.nan
    units = list(block.units)
    units[unit_index] = dataclasses.replace(scores, logprob=logprob)
    return dataclasses.replace(block, units=units)


def test_nonfinite_tokens_raise_or_are_counted_and_left_out() -> None:
    units, _ = _units(6)
    block = _blocks(units)[0]
    scores = block.units[1]
    bad = _with_nan(block, 1, 2)
    with pytest.raises(NonFiniteLogProb) as info:
        finite_only(bad, allow_nonfinite=False)
    assert (info.value.index, info.value.position) == (scores.unit.rows[0].index, int(scores.position[2]))
    kept = finite_only(bad, allow_nonfinite=True)
    assert len(kept.units[1]) == len(scores) - 1 and kept.units[1].nonfinite.tolist() == [1]
    assert kept.units[1].windows[-1] == len(scores) - 1
    sums, clean = DocumentSums(), DocumentSums()
    sums.update(kept)
    clean.update(block)
    left_out = float(scores.logprob[2])
    assert sums.documents[1].nonfinite == 1 and sums.documents[1].tokens == clean.documents[1].tokens - 1
    assert math.isclose(sums.documents[1].log_likelihood, clean.documents[1].log_likelihood - left_out, rel_tol=1e-9)
    assert finite_only(block, allow_nonfinite=False) is block  # nothing to do: the same block


class _PairLike:
    """A scorer with kld's further columns, each a known function of the token and context."""

    columns = ("base_logprob", "kl", "top_token_agrees", "delta_p")

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                 score_mask: torch.Tensor) -> torch.Tensor:
        lp = synthetic_scorer(input_ids, attention_mask, labels, score_mask)
        base = lp - 0.5
        kl = (labels[score_mask] % 3).float() * 0.25
        agree = (labels[score_mask] % 2).float()
        return torch.stack([lp, base, kl, agree, lp.exp() - base.exp()], dim=1)


def test_kl_stats_equal_a_naive_loop() -> None:
    from lleval.reducers.kl import KLStats

    units, _ = _units(7)
    stats = KLStats()
    for block in score_units(_PairLike(), units, EngineOptions(Batching(4), block_tokens=30)):
        stats.update(block)
    expected_tokens, expected_base = [], []
    for unit in units:
        per_row = [0.0] * len(unit.rows)
        for span in unit.spans:
            for p in range(span.end - span.n_scored, span.end):
                t, lp = unit.tokens[p], value(unit.tokens[p], p - span.start)
                base = float(np.float32(lp - 0.5))
                expected_tokens.append((t % 3 * 0.25, t % 2, float(np.float32(np.exp(np.float32(lp))) - np.float32(np.exp(np.float32(base))))))
                per_row[0 if unit.owners is None else int(unit.owners[p])] += base
        expected_base += per_row
    got = stats.values()
    assert got.shape == (len(expected_tokens), 3)
    assert np.allclose(got, np.array(expected_tokens), rtol=1e-5, atol=1e-6)
    assert np.allclose(stats.base_log_likelihood, expected_base, rtol=1e-9)


def test_ids_and_snippets_survive_a_checkpoint() -> None:
    from lleval.reducers.samples import DocumentSamples

    rng = random.Random(3)
    texts = [f"document  {i}\n\nof the run " + "word " * (5 * i) for i in range(6)]
    units = [Unit([rng.randrange(50) for _ in range(12)], rolling_spans(12, 9, 4),
                  (Row(i, 12, 3, hashlib.sha256(bytes([i])).hexdigest(), texts[i], f"id-{i}" if i % 2 else None),),
                  i, np.zeros(1, dtype=np.int64)) for i in range(6)]
    blocks = list(score_units(synthetic_scorer, units, EngineOptions(Batching(2), block_tokens=30)))
    assert len(blocks) > 1
    sums, samples = DocumentSums(), DocumentSamples(0)  # snippets even with no document shown
    for reducer in (sums, samples):
        reducer.update(blocks[0])
    resumed_sums, resumed_samples = DocumentSums(), DocumentSamples(0)
    resumed_sums.restore(json.loads(json.dumps(sums.state())))  # a checkpoint is JSON
    resumed_samples.restore(json.loads(json.dumps(samples.state())))
    for block in blocks[1:]:
        for reducer in (resumed_sums, resumed_samples):
            reducer.update(block)
    assert [d.id for d in resumed_sums.documents] == [None, "id-1", None, "id-3", None, "id-5"]
    assert ["id" in d.to_dict() for d in resumed_sums.documents] == [False, True] * 3
    uninterrupted = DocumentSamples(0)
    for block in blocks:
        uninterrupted.update(block)
    assert resumed_samples.snippets == uninterrupted.snippets and len(resumed_samples.snippets) == len(texts)


def test_a_snippet_is_the_opening_of_the_text_with_its_whitespace_collapsed() -> None:
    from lleval.reducers.samples import document_snippet

    assert document_snippet("  Two\n\nlines\tand   spaces  ") == "Two lines and spaces"
    assert document_snippet("a " * 40) == "a " * 29 + "a…"  # 79 characters collapsed, cut at 59 and marked
    assert document_snippet("x" * 60) == "x" * 60 and document_snippet("x" * 61) == "x" * 59 + "…"
    assert document_snippet("") == ""


# ---------------------------------------------------------------- a statistic plugged into the score report


class _SurprisingTokens:
    """A statistic as the README's walk-through adds one: tokens whose log-prob is below a
    threshold, and the sum of their log-probs."""

    key = "surprising_tokens"

    def __init__(self, threshold: float) -> None:
        self.threshold, self.count, self.logprob_sum = threshold, 0, 0.0

    def update(self, block: Any) -> None:
        for scores in block.units:
            low = scores.logprob[scores.logprob < self.threshold].astype(np.float64)
            self.count += int(low.size)
            self.logprob_sum += float(low.sum())

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "logprob_sum": self.logprob_sum}

    def restore(self, state: dict[str, Any]) -> None:
        self.count, self.logprob_sum = int(state["count"]), float(state["logprob_sum"])

    def result(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "tokens": self.count, "logprob_sum": self.logprob_sum}


def test_a_registered_statistic_is_folded_resumed_and_reported(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uniform log-probs over a 320-token vocabulary: every token costs ln 320 = 5.77 nats, so
    a threshold of -5 catches every scored token, and their sum is -tokens * ln 320; a run
    stopped early and resumed from its checkpoint reports the same block."""
    import lleval.commands.score as score_command
    from lleval.backends.base import LoadedModel, ModelInfo
    from lleval.commands.score import evaluate
    from lleval.config import EvalConfig
    from lleval.engine.kernels import scorer_from_logits
    from lleval.report.score import Report
    from transformers import AutoTokenizer

    from conftest import TINY_TOKENIZER
    from helpers import write_jsonl

    monkeypatch.setattr(score_command, "STATISTICS", (lambda config: _SurprisingTokens(-5.0),))
    info = ModelInfo("uniform", "local", None, None, "float32", "cpu", 0, 512)
    loaded = LoadedModel(scorer_from_logits(lambda ids, mask: torch.zeros(*ids.shape, 320)),
                         AutoTokenizer.from_pretrained(TINY_TOKENIZER), info)
    data = write_jsonl(tmp_path / "d.jsonl", [f"document {i} has some words in it, {i * 'more '}" for i in range(12)])
    config = EvalConfig(dataset=data, max_length=16, batch_size=2, block_tokens=40, bootstrap=0,
                        checkpoint=str(tmp_path / "c.json"), checkpoint_every=0)
    calls = iter(range(10_000))
    partial = evaluate(config, loaded=loaded, should_stop=lambda: next(calls) > 3)
    assert not partial.complete
    assert partial.statistics["surprising_tokens"]["tokens"] == partial.totals.tokens
    report = evaluate(config, loaded=loaded)
    assert any(note.startswith("resumed from") for note in report.notes)
    assert report.totals.tokens > partial.totals.tokens
    block = report.to_dict()["statistics"]["surprising_tokens"]
    assert block["tokens"] == report.totals.tokens > 0
    assert math.isclose(block["logprob_sum"], -report.totals.tokens * math.log(320), rel_tol=1e-6)
    assert Report.from_dict(report.to_dict()).statistics == {"surprising_tokens": block}
