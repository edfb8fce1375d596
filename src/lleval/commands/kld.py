"""KL divergence between two models over the same windows, without a logits file.

llama.cpp's ``--kl-divergence`` first writes the base model's full logits to
disk (gigabytes for a few hundred thousand tokens). Here both models run on
the same batch and the divergence is computed slice by slice in memory:
``KL(P_base || P_model) = sum_v p_base(v) (log p_base(v) - log p_model(v))``
over the full vocabulary at every scored position.

It is a run of the shared orchestrator (`lleval.runner`) with a paired scorer, whose further
columns (the base's log-prob, the KL, top-token agreement, delta p) go
through the engine like any other, and one more reducer, `KLStats`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch

from lleval.backends.base import FULL_VOCABULARY, LOGITS_SLICE_BYTES, LoadedModel, slice_positions
from lleval.commands.divergence import kl_fields
from lleval.config import EvalConfig, origin_entry
from lleval.engine.kernels import target_logprobs
from lleval.errors import ConfigError
from lleval.plan.tokenization import tokenizer_fingerprint
from lleval.reducers.documents import DocumentSums, StreamCounts
from lleval.reducers.kl import KLStats
from lleval.report.kld import KLReport
from lleval.report.blocks import model_block
from lleval.runner.header import dtype_notes, model_notes
from lleval.runner.loop import ScoringRun
from lleval.runner.progress import Progress
from lleval.runner.prepare import Job, load_and_plan, make_job, open_inputs
from lleval.runner.run import run_job


class PairScorer:
    """Scores the model and, on the same batch, the base: returns ``(N, 5)`` float32,
    the model's target log-prob then the columns named by `columns`.

    Both models' logits come in the slices a score run uses (``per_slice``
    positions), and each model's target log-probs are `target_logprobs` of
    those slices, as in `lleval.engine.kernels.SliceScorer`: the model's and the
    base's perplexities equal what ``lleval score`` gives each of them, bit
    for bit. The KL and the top-token agreement need every log-prob of both
    distributions: each slice is log-softmaxed in pieces of ``kl_positions``
    rows (two (n, V) log-prob tensors and the KL's terms are held per piece).

    Why not gather the targets from the log-softmax: torch's float32
    ``log_softmax`` on CPU underestimates log Z (measured on SmolLM2 over
    1,024 tokens of the built-in sample, AMD EPYC Zen 4: by 8.6e-6 nats a
    token against a float64 loop, where ``target_logprobs`` is off by 3.5e-8),
    which made kld's perplexities 1.8e-5 relative lower than score's. In the
    KL the two models' errors in log Z largely cancel (exactly, for a model
    against itself).
    """

    columns = ("base_logprob", "kl", "top_token_agrees", "delta_p")

    def __init__(self, base: LoadedModel, model: LoadedModel, per_slice: int, kl_positions: int) -> None:
        self.base, self.model, self.per_slice, self.kl_positions = base, model, per_slice, kl_positions

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, score_mask: torch.Tensor
    ) -> torch.Tensor:
        targets = labels[score_mask]  # (N,)
        out, offset = [], 0
        pairs = zip(
            self.base.slices(input_ids, attention_mask, score_mask, self.per_slice),
            self.model.slices(input_ids, attention_mask, score_mask, self.per_slice),
        )
        with torch.inference_mode():
            for base_logits, model_logits in pairs:
                n = base_logits.shape[0]
                kl, agree = self._divergence(base_logits, model_logits)
                t = targets[offset : offset + n]
                offset += n
                # last: target_logprobs overwrites float32 logits in place
                tb = target_logprobs(base_logits, t.to(base_logits.device)).cpu()
                tm = target_logprobs(model_logits, t.to(model_logits.device)).cpu()
                out.append(torch.stack([tm, tb, kl, agree, tm.exp() - tb.exp()], dim=1))
        return torch.cat(out) if out else torch.zeros((0, 1 + len(self.columns)))

    def _divergence(self, base_logits: torch.Tensor, model_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: KL(P_base || P_model) and whether the two top tokens agree, ``kl_positions`` rows at a time."""
        kls, agrees = [], []
        for i in range(0, base_logits.shape[0], self.kl_positions):
            lp_base = torch.log_softmax(base_logits[i : i + self.kl_positions].float(), dim=-1).cpu()  # (n, V)
            lp_model = torch.log_softmax(model_logits[i : i + self.kl_positions].float(), dim=-1).cpu()  # (n, V)
            kls.append(torch.nn.functional.kl_div(lp_model, lp_base, log_target=True, reduction="none").sum(dim=-1))
            agrees.append((lp_base.argmax(dim=-1) == lp_model.argmax(dim=-1)).float())
        return torch.cat(kls), torch.cat(agrees)


def kl_divergence(
    config: EvalConfig,
    base_model: str | None,
    *,
    base_dtype: str | None = None,
    base: LoadedModel | None = None,
    model: LoadedModel | None = None,
    progress: Progress | None = None,
) -> KLReport:
    """Score the config's data with the base (``base_model``, or ``base``) and the config's
    model (or ``model``) on the same windows, and return the `KLReport`. The base loads
    in ``base_dtype`` (default: the config's dtype), so one model can be compared with
    itself in another precision.

    Refuses (`ConfigError`) models whose tokenizers differ, before their
    weights load: the same token ids would mean different text, so the
    distributions cannot be compared.
    """
    from lleval.preflight import check_kld

    if config.reference:  # the base is a saved reference (lleval.commands.reference)
        if base is not None or base_model is not None or base_dtype is not None:
            raise ConfigError("--reference is the base: drop --base and --base-dtype.")
        from lleval.commands.reference import kl_against_reference

        return kl_against_reference(config, model=model, progress=progress)
    check_kld(config, base_dtype, base_model)
    inputs = open_inputs(config)
    base_config = replace(config, model=base_model, dtype=base_dtype or config.dtype)
    (model, base), protocol = load_and_plan([config, base_config], [model, base], progress, same_tokenizer)
    job = make_job(inputs, pair(base, model), protocol, others=(base,))
    sums, counts, stats = DocumentSums(), StreamCounts(), KLStats()
    settings = base_settings(config, base_model, base_dtype)
    # --tokens writes both models' log-probs and the KL of every token
    return run_job(job, sums, {"stream": counts, "kl": stats},
                   lambda run: kl_report(job, run, sums, counts, stats, base, settings), progress, samples=False)


def base_settings(config: EvalConfig, base_model: str | None, base_dtype: str | None) -> dict[str, Any]:
    """The report's ``settings`` of the base: ``base`` and ``base_dtype`` where they were set
    (their origins, ``base`` and ``base_dtype`` in ``config.origins``, come from the CLI)."""
    found = {}
    for name, value, default in (("base", base_model, config.model), ("base_dtype", base_dtype, None)):
        origin = config.origins.get(name)
        if origin is not None or (value is not None and value != default):
            found[name] = origin_entry(value, origin)
    return found


def same_tokenizer(opened: Sequence[Any]) -> None:
    """Refuse two models whose tokenizers differ, before their weights load."""
    model, base = opened
    if tokenizer_fingerprint(base.tokenizer) != tokenizer_fingerprint(model.tokenizer):
        raise ConfigError(
            f"the tokenizers of {base.name} and {model.name} differ: the same token ids mean "
            "different text, so their distributions cannot be compared. Use lleval compare on "
            "bits per byte instead."
        )


def pair(base: LoadedModel, model: LoadedModel) -> LoadedModel:
    """``model`` with a `PairScorer` that also runs ``base`` on every batch."""
    for loaded in (base, model):
        loaded.require(FULL_VOCABULARY, "KL divergence")
    if base.vocab != model.vocab:
        raise ConfigError(
            f"{base.info.name} predicts over {base.vocab} tokens and {model.info.name} over {model.vocab}: "
            "KL divergence needs the same vocabulary."
        )
    vocab = max(base.vocab or 1, model.vocab or 1)
    # Two models' logits are held at once, each in half of score's slice budget, so a pair
    # holds what one score run holds (slice sizes change no bit of the logits or of
    # `target_logprobs`: the test against evaluate() holds 1e-9); the log-softmaxes for
    # the KL (two models' log-probs and the KL's terms at once) in a quarter of it.
    per_slice = slice_positions(vocab, LOGITS_SLICE_BYTES // 2)
    kl_positions = slice_positions(vocab, LOGITS_SLICE_BYTES // 4)
    return replace(model, scorer=PairScorer(base, model, per_slice, kl_positions))


def kl_report(
    job: Job, run: ScoringRun, sums: DocumentSums, counts: StreamCounts, stats: KLStats, base: LoadedModel,
    settings: dict[str, Any] | None = None,
) -> KLReport:
    """The `KLReport`: the shared header (``settings``: the base's, added to the config's),
    then the divergence statistics."""
    return kl_fields(job, run, sums, counts, stats, model_block(base.info), kld_notes(job.loaded.info, base.info),
                     settings)


def kld_notes(model: Any, base: Any) -> list[str]:
    """The notes of both models' loading (each once: a model compared with itself in
    another dtype shares its cache), the compared model's dtype note, and the base's
    dtype note, said to be the base's."""
    notes = list(dict.fromkeys([*base.notes, *model_notes(model)]))
    if base.dtype != model.dtype or base.device != model.device:
        notes += [f"base: {note}" for note in dtype_notes(base)]
    return notes
