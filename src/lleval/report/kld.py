"""``lleval kld``'s report (``kind: "kld"``): the shared header, the base model, and the
divergence statistics, with its JSON (read back by `KLReport.from_dict`), table and markdown."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lleval.report.blocks import ModelBlock, ReportHeader
from lleval.report.output import to_json
from lleval.report.render import fmt, render_pairs_markdown, render_pairs_table
from lleval.report.schema import check

PERCENTILES = (99.9, 99.0, 95.0, 90.0, 10.0, 5.0, 1.0, 0.1)


def summary(values: np.ndarray) -> dict[str, Any]:
    """Mean (with its standard error), median, percentiles, min and max of per-token values."""
    n = len(values)
    return {
        "mean": float(values.mean()),
        "stderr": float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "median": float(np.median(values)),
        "percentiles": {f"p{p:g}": float(np.percentile(values, p)) for p in PERCENTILES},
        "max": float(values.max()),
        "min": float(values.min()),
    }


@dataclass
class KLReport(ReportHeader):
    """``lleval kld``'s result (``kind: "kld"``): the shared header (``model`` is the
    compared model), the base model, and the divergence statistics."""

    base: ModelBlock
    tokens: int
    kl_divergence: dict[str, Any]
    top_token_agreement: float
    delta_p: dict[str, Any]
    perplexity: dict[str, Any]
    bootstrap: dict[str, Any]
    reference: dict[str, Any] | None = None  # kld --reference: the file, its top K, whether KL is exact

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.base, ModelBlock):
            self.base = ModelBlock.from_dict(self.base)

    def to_dict(self) -> dict[str, Any]:
        """The JSON export (see README, "KL divergence between two models")."""
        return {
            **self.header_dict("kld"),
            "base": self.base.to_dict(),
            "tokens": self.tokens,
            "kl_divergence": dict(self.kl_divergence),
            "top_token_agreement": self.top_token_agreement,
            "delta_p": dict(self.delta_p),
            "perplexity": dict(self.perplexity),
            "bootstrap": dict(self.bootstrap),
            **({} if self.reference is None else {"reference": dict(self.reference)}),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "(a dict)") -> "KLReport":
        """Read a kld report's JSON back, checked against the shipped schema: one that does
        not fit is a `ReportError` naming ``source`` (its file) and the first problem."""
        check(data, "kld", source)
        return cls(**ReportHeader.fields_from_dict(data), base=ModelBlock.from_dict(data["base"]),
                   tokens=int(data["tokens"]), kl_divergence=dict(data["kl_divergence"]),
                   top_token_agreement=data["top_token_agreement"], delta_p=dict(data["delta_p"]),
                   perplexity=dict(data["perplexity"]), bootstrap=dict(data["bootstrap"]),
                   reference=dict(data["reference"]) if data.get("reference") is not None else None)

    def to_json(self) -> str:
        """The JSON export as text."""
        return to_json(self.to_dict())

    def summary_rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the table and markdown renderings."""
        kl, dp, ppl = self.kl_divergence, self.delta_p, self.perplexity
        ci = ppl["ln_ratio_ci"]
        return [
            ("base / model", f"{self.base.name} ({self.base.dtype}) / {self.model.name} ({self.model.dtype})"),
            *self._reference_rows(),
            ("dataset", f"{self.dataset.spec} [{self.dataset.split}], {self.dataset.documents} documents"),
            ("protocol", self.protocol.summary()),
            ("tokens", str(self.tokens)),
            ("mean KL (nats)", f"{kl['mean']:.6f} ± {kl['stderr'] or 0:.6f}"),
            ("median KL", f"{kl['median']:.6f}"),
            *((f"KL {k}", f"{v:.6f}") for k, v in kl["percentiles"].items()),
            ("top-token agreement", f"{self.top_token_agreement * 100:.3f}%"),
            ("mean Δp", f"{dp['mean'] * 100:+.4f}%"),
            ("perplexity base / model", f"{fmt(ppl['base'])} / {fmt(ppl['model'])}"),
            ("ln(PPL_model / PPL_base)",
             f"{ppl['ln_ratio']:+.6f}" + (f"  [{ci[0]:+.6f}, {ci[1]:+.6f}] 95% CI" if ci else "")
             + (f", unreliable ({self.bootstrap.get('documents')} documents)"
                if ci and self.bootstrap.get("reliable") is False else "")),
        ]

    def _reference_rows(self) -> list[tuple[str, str]]:
        ref = self.reference
        if ref is None:
            return []
        kind = "exact (K covers the vocabulary)" if ref["exact"] else f"top-{ref['top_k']} lower bound"
        return [("reference", f"{ref['file']} (top {ref['top_k']}; KL {kind})")]

    def render_table(self, console: Any) -> None:
        """Print as a rich table on ``console``."""
        render_pairs_table(f"lleval kld — {self.protocol.name} protocol", self.summary_rows(), self.notes, console)

    def render_markdown(self) -> str:
        """A two-column markdown table."""
        title = f"lleval kld — {self.protocol.name} protocol"
        return render_pairs_markdown(title, self.summary_rows(), self.notes)
