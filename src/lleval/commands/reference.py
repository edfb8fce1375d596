"""KL divergence against a compact saved reference: ``lleval kld --reference ref.parquet``.

``lleval score --save-reference ref.parquet`` keeps the base's top-K log-probs
and tail mass per scored token (`lleval.engine.reference`,
`lleval.report.reference`); this scores another model alone over the same
windows and computes, per token, the KL of the two distributions coarsened to
the base's top K plus one tail bucket: a lower bound of the full-vocabulary KL,
exact when K >= V - 1 (the derivation is `lleval.engine.reference`'s
docstring). One model is in memory, and the reference can come from another
backend or dtype (a float32 model against its GGUF).

The scorer returns `PairScorer`'s columns, so `KLStats` and the report are
kld's. The engine batches a block's windows by length, so the scorer cannot
rely on call order: `ReferenceKLScorer.follow` wraps the units the engine
pulls, reads the reference in step (its rows are in window order), checks
each token's document, position and id, and files each window's rows under
the window's content (`window_key`); each batch row then takes its window's
rows. Memory is bounded by a block (the engine reads one unit ahead).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from lleval.backends.base import FULL_VOCABULARY, LOGITS_SLICE_BYTES, LoadedModel, slice_positions
from lleval.commands.divergence import kl_fields
from lleval.config import EvalConfig
from lleval.data.spec import data_spec
from lleval.engine.kernels import target_logprobs
from lleval.engine.reference import MAX_EXACT_ID, Entries, ReferenceScorer, batch_keys, coarse_kl, window_key
from lleval.errors import ConfigError, DataError, ScoringError
from lleval.plan.protocols import plan
from lleval.reducers.documents import DocumentSums, StreamCounts
from lleval.reducers.kl import KLStats
from lleval.report.blocks import ModelBlock, dataset_block, tokenizer_block
from lleval.report.kld import KLReport
from lleval.report.reference import ReferenceRows
from lleval.runner.progress import Progress
from lleval.runner.prepare import load_and_plan, make_job, open_inputs
from lleval.runner.run import run_job
from lleval.stream import Unit

DATASET_FIELDS = ("spec", "config", "split", "text_field", "sample_by", "limit")


def with_reference(loaded: LoadedModel, k: int) -> LoadedModel:
    """``loaded`` with the `ReferenceScorer` of ``--save-reference`` (top ``k``, at most the
    vocabulary), in slices half as long (it holds two (n, V) tensors); a served model's scorer
    asks the server for its top ``k`` instead (`ServedScorer.with_top_k`)."""
    top_k = getattr(loaded.scorer, "with_top_k", None)
    if loaded.slices is None and top_k is not None:
        return replace(loaded, scorer=top_k(k))
    loaded.require(FULL_VOCABULARY, "--save-reference")
    if loaded.vocab is None:
        raise ConfigError(f"--save-reference needs the vocabulary size of {loaded.name}, which its backend did "
                          "not give.")
    if loaded.vocab > MAX_EXACT_ID:
        raise ConfigError(f"--save-reference carries token ids below {MAX_EXACT_ID}; {loaded.name} has "
                          f"{loaded.vocab} tokens.")
    per_slice = slice_positions(loaded.vocab, LOGITS_SLICE_BYTES // 2)
    return replace(loaded, scorer=ReferenceScorer(loaded.slices, per_slice, min(k, loaded.vocab)))


class ReferenceKLScorer:
    """Scores the model and compares it with the reference's rows of the same windows:
    returns ``(N, 5)`` float32, the model's target log-prob then `columns` (as `PairScorer`)."""

    columns = ("base_logprob", "kl", "top_token_agrees", "delta_p")

    def __init__(self, model: LoadedModel, rows: ReferenceRows, per_slice: int, kl_positions: int) -> None:
        self.model, self.rows, self.per_slice, self.kl_positions = model, rows, per_slice, kl_positions
        self.entries = Entries()

    def follow(self, units: Iterable[Unit]) -> Iterator[Unit]:
        """The units, unchanged, each one's reference rows read and filed as it passes."""
        for unit in units:
            self._file(unit)
            yield unit

    def _file(self, unit: Unit) -> None:
        n = sum(span.n_scored for span in unit.spans)
        if n == 0:
            return
        rows = self.rows.take(n)
        if rows is None:
            raise DataError(f"reference {self.rows.path} ends after {self.rows.read} tokens, before this data "
                            "does: it was made from other data (fewer rows, or another --limit).")
        positions = np.concatenate([np.arange(s.end - s.n_scored, s.end) for s in unit.spans])  # in the sequence
        local = np.zeros(len(positions), dtype=np.int64) if unit.owners is None else unit.owners[positions]
        expected = {"document": np.asarray([row.index for row in unit.rows])[local],
                    "position": positions - unit.starts[local],
                    "token_id": np.asarray(unit.tokens, dtype=np.int64)[positions]}
        for name, values in expected.items():
            bad = np.flatnonzero(rows[name] != values)
            if len(bad):
                i = int(bad[0])
                raise DataError(
                    f"reference {self.rows.path}: token {self.rows.read - n + i} has {name} {rows[name][i]}, this "
                    f"data {values[i]} (document {expected['document'][i]}, position {expected['position'][i]}): "
                    "the reference was made from other data, with another protocol or another tokenizer.")
        packed = np.column_stack([rows["logprob"], rows["tail_logprob"], rows["top_ids"], rows["top_logprobs"]])
        offset = 0
        for span in unit.spans:
            window = np.asarray(unit.tokens[span.start : span.end - 1], dtype=np.int64)
            if unit.window_head is not None and len(window):
                window[0] = unit.window_head
            self.entries.put(window_key(window, span.n_scored), packed[offset : offset + span.n_scored])
            offset += span.n_scored

    def _batch_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    score_mask: torch.Tensor) -> torch.Tensor:
        found = [self.entries.take(key) for key in batch_keys(input_ids, attention_mask, score_mask)]
        if any(rows is None for rows in found):
            raise ScoringError(f"reference {self.rows.path} has no rows for a window of this run: was it made "
                               "from these texts with these --max-length and --stride?")
        return torch.from_numpy(np.concatenate(found))  # type: ignore[arg-type]

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, score_mask: torch.Tensor
    ) -> torch.Tensor:
        targets = labels[score_mask]  # (N,)
        reference = self._batch_rows(input_ids, attention_mask, score_mask)  # (N, 2 + 2K) float64
        k = (reference.shape[1] - 2) // 2
        out, offset = [], 0
        with torch.inference_mode():
            for logits in self.model.slices(input_ids, attention_mask, score_mask, self.per_slice):
                n = logits.shape[0]
                ref = reference[offset : offset + n].to(logits.device)
                kls, agrees = [], []
                for i in range(0, n, self.kl_positions):
                    piece = ref[i : i + self.kl_positions]
                    kl, agree = coarse_kl(logits[i : i + self.kl_positions], piece[:, 2 : 2 + k].long(),
                                          piece[:, 2 + k :], piece[:, 1])
                    kls.append(kl.float().cpu())
                    agrees.append(agree.cpu())
                tm = target_logprobs(logits, targets[offset : offset + n].to(logits.device)).cpu()  # last: in place
                tb = ref[:, 0].float().cpu()
                offset += n
                out.append(torch.stack([tm, tb, torch.cat(kls), torch.cat(agrees), tm.exp() - tb.exp()], dim=1))
        return torch.cat(out) if out else torch.zeros((0, 1 + len(self.columns)))


def kl_against_reference(
    config: EvalConfig, *, model: LoadedModel | None = None, progress: Progress | None = None
) -> KLReport:
    """``lleval kld --reference``: the config's model (or ``model``) scored alone against the
    reference file ``config.reference``, and the `KLReport`, whose ``reference`` names the
    file and K and says whether the KL is exact or a top-K lower bound.

    Refuses (`ConfigError`, `DataError`), before the weights load, a reference made from
    other data (dataset, split, field, limit), with another tokenizer or protocol; then, as
    scoring goes, any token whose document, position or id differs; at the end, a
    reference with tokens left over or another dataset fingerprint.
    """
    from lleval.preflight import check_kld

    check_kld(config, None)
    rows = ReferenceRows(str(config.reference))
    inputs = open_inputs(config)
    check_dataset(rows, dataset_block(data_spec(config), inputs.stats, 0).to_dict())
    (model,), protocol = load_and_plan([config], [model], progress, lambda opened: check_model(config, rows, opened))
    model.require(FULL_VOCABULARY, "kld --reference")
    if rows.vocab is not None and model.vocab is not None and rows.vocab != model.vocab:
        raise ConfigError(f"reference {rows.path} predicts over {rows.vocab} tokens and {model.name} over "
                          f"{model.vocab}: KL divergence needs the same vocabulary.")
    vocab = model.vocab or 1
    scorer = ReferenceKLScorer(model, rows, slice_positions(vocab, LOGITS_SLICE_BYTES // 2),
                               slice_positions(vocab, LOGITS_SLICE_BYTES // 4))
    job = make_job(inputs, replace(model, scorer=scorer), protocol)
    sums, counts, stats = DocumentSums(), StreamCounts(), KLStats()
    base = ModelBlock.from_dict(rows.header["model"])
    described = {"file": str(config.reference), "top_k": rows.top_k, "vocab": rows.vocab,
                 "exact": rows.vocab is not None and rows.top_k >= rows.vocab - 1}
    described["kl"] = "exact" if described["exact"] else "top-k lower bound"

    def build(run: Any) -> KLReport:
        notes = list(model.info.notes) + tokenizer_notes(rows, job.loaded)
        report = kl_fields(job, run, sums, counts, stats, base, notes)
        check_finished(rows, report.to_dict()["dataset"], run.complete)
        report.reference = described
        return report

    return run_job(job, sums, {"stream": counts, "kl": stats}, build, progress, samples=False)


def check_dataset(rows: ReferenceRows, dataset: dict[str, Any]) -> None:
    """Refuse a reference made from other data, naming the setting that differs."""
    saved = rows.header.get("dataset") or {}
    for name in DATASET_FIELDS:
        if saved.get(name) != dataset.get(name):
            raise DataError(f"reference {rows.path} was made with dataset {name} {saved.get(name)!r}, this run "
                            f"has {dataset.get(name)!r}: score the same data as the reference.")


def check_model(config: EvalConfig, rows: ReferenceRows, opened: Sequence[Any]) -> None:
    """Refuse, before the weights load, a protocol (name, lengths, prefix, --concat...) other than
    the reference's. A tokenizer whose definition differs (another backend's conversion of the same
    tokenizer: a model and its GGUF) is not refused here: every token id the model reads is checked
    against the reference's as scoring goes (`ReferenceKLScorer`), and the report says so."""
    (model,) = opened
    saved = rows.header
    described = plan(config, model.tokenizer, model.max_positions).describe(model.tokenizer)
    theirs = saved.get("protocol") or {}
    for name, value in described.items():
        if theirs.get(name) != value:
            raise ConfigError(f"reference {rows.path} was made with protocol {name} {theirs.get(name)!r}, this run "
                              f"has {value!r}: use the reference's protocol settings.")


def tokenizer_notes(rows: ReferenceRows, model: LoadedModel) -> list[str]:
    """The report's note when the model's tokenizer is defined otherwise than the reference's."""
    theirs = (rows.header.get("tokenizer") or {}).get("fingerprint")
    if tokenizer_block(model.tokenizer, model.name)["fingerprint"] == theirs:
        return []
    return [f"the tokenizer of {model.name} is defined otherwise than the reference's (fingerprint {theirs}; "
            "another backend's conversion of it, say): every token id the model read was checked against the "
            "reference's and all were the same."]


def check_finished(rows: ReferenceRows, dataset: dict[str, Any], complete: bool) -> None:
    """At the end of a complete run: the reference must hold no more tokens than were scored,
    and its data's fingerprint must be this run's."""
    if not complete:
        return
    if rows.read != rows.rows:
        raise DataError(f"reference {rows.path} holds {rows.rows} tokens, this run scored {rows.read}: it was "
                        "made from other data (more rows, or another --limit).")
    saved = (rows.header.get("dataset") or {}).get("fingerprint")
    if saved != dataset.get("fingerprint"):
        raise DataError(f"reference {rows.path} was made from texts with fingerprint {saved}, these have "
                        f"{dataset.get('fingerprint')}: score the same data as the reference.")
