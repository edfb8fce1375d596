"""KL divergence between two models over the same windows, without a logits file.

llama.cpp's ``--kl-divergence`` first writes the base model's full logits to
disk (gigabytes for a few hundred thousand tokens). Here both models run on
the same batch and the divergence is computed slice by slice in memory:
``KL(P_base || P_model) = sum_v p_base(v) (log p_base(v) - log p_model(v))``
over the full vocabulary at every scored position.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from lleval import __version__
from lleval.api import (
    LoadedModel,
    ProgressFn,
    _environment,
    dataset_block,
    load,
    model_block,
    run_engine,
    tokenizer_block,
)
from lleval.config import EvalConfig
from lleval.errors import ConfigError, ModelLoadError
from lleval.metrics import bootstrap_sums, percentile_interval
from lleval.model import LOGITS_SLICE_BYTES, slice_positions
from lleval.scoring import TokenScorer

PERCENTILES = (99.9, 99.0, 95.0, 90.0, 10.0, 5.0, 1.0, 0.1)
KLD_SCHEMA_VERSION = 1


class _Collector:
    """Per-token KL, top-token agreement and delta-p, in the order they are scored."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def values(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros((0, 3), dtype=np.float64)


def kld_scorer(base: LoadedModel, model: LoadedModel, collector: _Collector, per_slice: int) -> TokenScorer:
    """A scorer returning ``(N, 2)``: the model's and the base's target log-probs.

    As a side effect it appends, per position, ``[KL, top-1 agreement, delta p]``
    to ``collector``, where delta p = p_model(target) - p_base(target).
    """

    def scorer(
        input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, score_mask: torch.Tensor
    ) -> torch.Tensor:
        targets = labels[score_mask]  # (N,)
        out, stats, offset = [], [], 0
        pairs = zip(
            base.slices(input_ids, attention_mask, score_mask, per_slice),
            model.slices(input_ids, attention_mask, score_mask, per_slice),
        )
        for base_logits, model_logits in pairs:
            lp_base = torch.log_softmax(base_logits.float(), dim=-1).cpu()  # (n, V)
            lp_model = torch.log_softmax(model_logits.float(), dim=-1).cpu()  # (n, V)
            n = lp_base.shape[0]
            t = targets[offset : offset + n].unsqueeze(1)
            offset += n
            kl = torch.nn.functional.kl_div(lp_model, lp_base, log_target=True, reduction="none").sum(dim=-1)
            agree = (lp_base.argmax(dim=-1) == lp_model.argmax(dim=-1)).float()
            tb, tm = lp_base.gather(1, t).squeeze(1), lp_model.gather(1, t).squeeze(1)
            out.append(torch.stack([tm, tb], dim=1))
            stats.append(torch.stack([kl, agree, tm.exp() - tb.exp()], dim=1).double().numpy())
        collector.parts.extend(stats)
        return torch.cat(out) if out else torch.zeros((0, 2))

    return scorer


def _summary(values: np.ndarray) -> dict[str, Any]:
    n = len(values)
    return {
        "mean": float(values.mean()),
        "stderr": float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "median": float(np.median(values)),
        "percentiles": {f"p{p:g}": float(np.percentile(values, p)) for p in PERCENTILES},
        "max": float(values.max()),
        "min": float(values.min()),
    }


def kl_divergence(
    config: EvalConfig,
    base_model: str | None,
    *,
    base: LoadedModel | None = None,
    model: LoadedModel | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Score the config's data with the base and the config's model; return the KLD report.

    Refuses (`ConfigError`) models whose tokenizers differ: the same token
    ids would mean different text, so the distributions cannot be compared.
    """
    if config.checkpoint:
        raise ConfigError(
            "lleval kld does not resume from --checkpoint: its per-token statistics are not saved. "
            "Drop --checkpoint."
        )
    collector = _Collector()

    def loader() -> LoadedModel:
        nonlocal base, model
        if model is None:
            model = load(config)
        if base is None:
            base = load(replace(config, model=base_model))
        return _pair(base, model, collector)

    run = run_engine(config, loader=loader, progress=progress)
    assert base is not None and model is not None
    per_token = collector.values()
    if run.distributed is not None:  # each rank holds the per-token values of its own batches
        from lleval.distributed import from_env

        context = from_env()
        assert context is not None
        per_token = np.concatenate(context.all_gather(per_token))
    n = run.totals.tokens
    nll_model = -run.totals.log_likelihood
    base_lls = np.array([0.0 if e is None else float(e[0]) for e in run.extra])  # None: no token scored
    nll_base = -float(base_lls.sum())
    doc_tokens = np.array([d.tokens for d in run.documents], dtype=np.float64)
    doc_model = np.array([-d.log_likelihood for d in run.documents])
    ln_ratio = (nll_model - nll_base) / n
    interval = None
    if len(run.documents) >= 2 and config.bootstrap > 0:
        sums = bootstrap_sums(np.column_stack([doc_model, -base_lls, doc_tokens]), config.bootstrap, config.seed)
        with np.errstate(divide="ignore", invalid="ignore"):
            found = percentile_interval((sums[:, 0] - sums[:, 1]) / sums[:, 2])
        interval = None if found is None else list(found)
    return {
        "schema_version": KLD_SCHEMA_VERSION,
        "kind": "kld",
        "lleval_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": True,
        "base": model_block(base.info),
        "model": model_block(model.info),
        "tokenizer": tokenizer_block(model),
        "dataset": dataset_block(config, run.data, run.totals.documents),
        "protocol": run.protocol.describe(model.tokenizer),
        "tokens": n,
        "kl_divergence": {**_summary(per_token[:, 0]), "unit": "nats", "direction": "KL(P_base || P_model)"},
        "top_token_agreement": float(per_token[:, 1].mean()),
        "delta_p": {**_summary(per_token[:, 2]), "definition": "p_model(correct) - p_base(correct)"},
        "perplexity": {
            "base": math.exp(nll_base / n),
            "model": math.exp(nll_model / n),
            "ln_ratio": ln_ratio,
            "ln_ratio_ci": interval,
        },
        "bootstrap": {"resamples": config.bootstrap, "seed": config.seed, "level": 0.95, "unit": "document"},
        "timing": {
            "seconds": time.perf_counter() - run.started,
            "scoring_seconds": run.scoring_seconds,
            "tokens_per_second": n / run.scoring_seconds if run.scoring_seconds > 0 else 0.0,
        },
        "environment": _environment(),
    }


def _pair(base: LoadedModel, model: LoadedModel, collector: _Collector) -> LoadedModel:
    base_fp = tokenizer_block(base)["fingerprint"]
    model_fp = tokenizer_block(model)["fingerprint"]
    if base_fp != model_fp:
        raise ConfigError(
            f"the tokenizers of {base.info.name} and {model.info.name} differ: the same token ids mean "
            "different text, so their distributions cannot be compared. Use lleval compare on "
            "bits per byte instead."
        )
    if base.slices is None or model.slices is None:
        raise ModelLoadError("KL divergence needs models that expose logits slices.")
    if base.vocab != model.vocab:
        raise ConfigError(
            f"{base.info.name} predicts over {base.vocab} tokens and {model.info.name} over {model.vocab}: "
            "KL divergence needs the same vocabulary."
        )
    per_slice = slice_positions(max(base.vocab or 1, model.vocab or 1), LOGITS_SLICE_BYTES // 4)
    return replace(model, scorer=kld_scorer(base, model, collector, per_slice))
