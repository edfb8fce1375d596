"""The `KLReport` of a kld run from its sums and per-token statistics, whatever the base is (a
model run alongside, `lleval.commands.kld`, or a saved reference, `lleval.commands.reference`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lleval.config import EvalConfig
from lleval.metrics import bootstrap_sums, percentile_interval, perplexity, reliability, unreliable_sentence
from lleval.reducers.documents import DocumentSums, StreamCounts
from lleval.reducers.kl import KLStats
from lleval.report.blocks import ModelBlock
from lleval.report.kld import KLReport, summary
from lleval.runner.header import header_fields
from lleval.runner.loop import ScoringRun
from lleval.runner.prepare import Job


def kl_fields(
    job: Job, run: ScoringRun, sums: DocumentSums, counts: StreamCounts, stats: KLStats, base: ModelBlock,
    notes: list[str], settings: dict[str, Any] | None = None,
) -> KLReport:
    """The `KLReport` of a kld run whose base is described by ``base`` (a model run alongside,
    or a saved reference's model), with ``notes``."""
    config = job.config
    per_token = stats.values()
    totals = sums.totals()
    n = totals.tokens
    nll_model = -totals.log_likelihood
    base_lls = np.array(stats.base_log_likelihood)
    base_ll = 0.0
    for ll in stats.base_log_likelihood:  # document by document, as `DocumentSums.totals` adds a score run's
        base_ll += ll
    nll_base = -base_ll
    ln_ratio_ci = _ln_ratio_interval(config, sums, base_lls)
    shaky = reliability(len(sums.documents), ln_ratio_ci is not None)
    if shaky["reliable"] is False:
        notes = [*notes, unreliable_sentence(len(sums.documents))]
    header = header_fields(job, run, counts, totals, notes)
    header["settings"] = {**header["settings"], **(settings or {})}
    return KLReport(
        **header,
        base=base,
        tokens=n,
        kl_divergence={**summary(per_token[:, 0]), "unit": "nats", "direction": "KL(P_base || P_model)"},
        top_token_agreement=float(per_token[:, 1].mean()),
        delta_p={**summary(per_token[:, 2]), "definition": "p_model(correct) - p_base(correct)"},
        perplexity={
            "base": perplexity(nll_base / n),
            "model": perplexity(nll_model / n),
            "ln_ratio": (nll_model - nll_base) / n,
            "ln_ratio_ci": ln_ratio_ci,
        },
        bootstrap={"resamples": config.bootstrap, "seed": config.seed, "level": 0.95, "unit": "document", **shaky},
    )


def _ln_ratio_interval(config: EvalConfig, sums: DocumentSums, base_lls: np.ndarray) -> list[float] | None:
    """Paired bootstrap over documents of ln(PPL_model / PPL_base)."""
    if len(sums.documents) < 2 or config.bootstrap == 0:
        return None
    doc_tokens = np.array([d.tokens for d in sums.documents], dtype=np.float64)
    doc_model = np.array([-d.log_likelihood for d in sums.documents])
    resampled = bootstrap_sums(np.column_stack([doc_model, -base_lls, doc_tokens]), config.bootstrap, config.seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        found = percentile_interval((resampled[:, 0] - resampled[:, 1]) / resampled[:, 2])
    return None if found is None else list(found)
