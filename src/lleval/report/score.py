"""Report results: the header every report kind shares, the score `Report`, its JSON
contract, and its rendering.

``to_dict()`` of every report is a versioned contract (``schema_version`` and
``kind``) that later tools and users' scripts read. Every field is written
explicitly; metrics are derived from the float64 sums at serialisation time,
never stored twice. The blocks that say who scored what, how, when and on
what machine (model, tokenizer, dataset, protocol, timing, environment) are
built here once, for ``score`` and ``kld`` alike.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lleval.errors import OutputError, write_failure
from lleval.files import file_mode, remove_quietly
from lleval.metrics import DocumentResult, Totals, derive_metrics, llamacpp_perplexity_stderr

SCHEMA_VERSION = 1

METRIC_LABELS = {
    "nll": "NLL (nats/token)",
    "cross_entropy_bits": "cross-entropy (bits/token)",
    "perplexity": "perplexity (exp NLL)",
    "bits_per_byte": "bits per byte",
    "byte_perplexity": "byte perplexity",
    "word_perplexity": "word perplexity",
    "perplexity_stderr_llamacpp": "perplexity std. error (llama.cpp)",
}


@dataclass(frozen=True)
class ContextBin:
    """Tokens whose context length (tokens the model read before them in their window)
    lies in ``context_min .. context_max``, with their log-likelihood sum."""

    context_min: int
    context_max: int
    tokens: int
    log_likelihood: float  # nats
    perplexity_ci: tuple[float, float] | None = None  # 95% bootstrap over documents

    @property
    def nll(self) -> float | None:
        """Nats per token in this bin (None when it holds no token)."""
        return -self.log_likelihood / self.tokens if self.tokens else None

    def to_dict(self) -> dict[str, Any]:
        """The bin's entry in ``by_context_length``."""
        nll = self.nll
        return {
            "context_min": self.context_min,
            "context_max": self.context_max,
            "tokens": self.tokens,
            "log_likelihood": self.log_likelihood,
            "nll": nll,
            "perplexity": None if nll is None else json_float(math.exp(min(nll, 709.0))),
            "perplexity_ci": json_interval(self.perplexity_ci),
        }


def bins_of_table(table: Any, n_resamples: int, seed: int) -> list[ContextBin]:
    """`ContextBin`s from a ``(documents, bins, 2)`` table of per-document log-likelihood and
    tokens per power-of-two bin, with the bootstrap interval over documents of each."""
    from lleval.metrics import binned_intervals

    intervals = binned_intervals(table, n_resamples, seed)
    return [
        ContextBin(2**b, 2 ** (b + 1) - 1, int(table[:, b, 1].sum()), float(table[:, b, 0].sum()), intervals[b])
        for b in range(table.shape[1])
    ]


@dataclass
class ReportHeader:
    """What every report of a scoring run says besides its numbers: who scored what, how,
    when and on what machine. `Report` (``score``) and ``kld``'s report extend it."""

    lleval_version: str
    created: str
    complete: bool
    model: dict[str, Any]
    tokenizer: dict[str, Any]
    dataset: dict[str, Any]
    protocol: dict[str, Any]
    timing: dict[str, Any]
    environment: dict[str, Any]
    distributed: dict[str, Any] | None  # world size and backend of a data-parallel run
    notes: list[str]
    #: outputs the library owns (``--tokens``, ``--html``) that could not be written; the
    #: caller still writes its own (``-o``) and reports these. Not part of the JSON.
    failed_outputs: list[OutputError] = field(default_factory=list, kw_only=True, repr=False, compare=False)

    def header_dict(self, kind: str) -> dict[str, Any]:
        """The shared part of ``to_dict()``, opening with ``schema_version`` and ``kind``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "lleval_version": self.lleval_version,
            "created": self.created,
            "complete": self.complete,
            "model": dict(self.model),
            "tokenizer": dict(self.tokenizer),
            "dataset": dict(self.dataset),
            "protocol": dict(self.protocol),
            "timing": dict(self.timing),
            "environment": dict(self.environment),
            "distributed": None if self.distributed is None else dict(self.distributed),
            "notes": list(self.notes),
        }


def now() -> str:
    """The ``created`` time stamp: UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def model_block(info: Any) -> dict[str, Any]:
    """The report's ``model`` block, from a `lleval.backends.hf.ModelInfo`."""
    return {
        "name": info.name,
        "source": info.source,
        "revision": info.revision,
        "sha256": info.sha256,
        "dtype": info.dtype,
        "device": info.device,
        "parameters": info.parameters,
        "max_positions": info.max_positions,
        "device_map": info.device_map,
        "cache": info.cache,
        "head_dtype": info.head_dtype or info.dtype,
    }


def tokenizer_block(tokenizer: Any, name: str) -> dict[str, Any]:
    """The report's ``tokenizer`` block."""
    from lleval.plan.tokenization import tokenizer_fingerprint

    return {
        "name": name,
        "vocab_size": len(tokenizer),
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def dataset_block(spec: Any, stats: Any, documents: int) -> dict[str, Any]:
    """The report's ``dataset`` block, from a `lleval.data.sources.DataSpec` and its `DataStats`."""
    from lleval.data.sources import BUILTIN_DATASET, describe_split

    return {
        "spec": spec.dataset or BUILTIN_DATASET,
        "config": spec.dataset_config,
        "split": describe_split(spec),
        "text_field": spec.text_field,
        "sample_by": spec.sample_by,
        "limit": spec.limit,
        "streaming": spec.streaming,
        "rows": stats.rows,
        "documents": documents,
        "skipped_empty": stats.skipped_empty,
        "fingerprint": stats.fingerprint(),
    }


def timing_block(total_seconds: float, load_seconds: float, scoring_seconds: float, tokens: int,
                 engine: Any, batching: Any) -> dict[str, Any]:
    """The report's ``timing`` block, from the engine's `EngineStats` and the `Batching` used."""
    return {
        "seconds": total_seconds,
        "load_seconds": load_seconds,
        "scoring_seconds": scoring_seconds,
        "tokens_per_second": tokens / scoring_seconds if scoring_seconds > 0 else 0.0,
        "windows": engine.windows,
        "batches": engine.batches,
        "padding_share": engine.padding_tokens / engine.computed_tokens if engine.computed_tokens else 0.0,
        "batching": None if batching is None else batching.describe(),
        "out_of_memory_splits": engine.oom_splits,
    }


def environment(cpu_half_dtypes: Iterable[str] = ()) -> dict[str, Any]:
    """The report's ``environment`` block: versions, the CPU and what it can do fast.

    ``cpu_half_dtypes``: the half precisions (``bfloat16``, ``float16``) the run's
    models ran in on the CPU; for each, ``cpu`` adds ``bf16_matmul_speedup`` /
    ``fp16_matmul_speedup``, the matmul speed against float32 measured in this
    process (`lleval.hardware.half_matmul_speedup`). Runs in float32 have neither.
    """
    import datasets
    import torch
    import transformers

    from lleval import __version__
    from lleval.hardware import cpu_features, half_matmul_speedup

    cpu = dict(cpu_features())
    for dtype in sorted(set(cpu_half_dtypes)):
        cpu[f"{'bf16' if dtype == 'bfloat16' else 'fp16'}_matmul_speedup"] = half_matmul_speedup(dtype)

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "lleval": __version__,
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
    }


@dataclass
class Report(ReportHeader):
    """Everything one score run measured and how (``kind: "score"``)."""

    totals: Totals = field(default_factory=Totals)
    documents: list[DocumentResult] = field(default_factory=list)
    #: 95% bootstrap intervals over documents, keyed by metric; None where there is none.
    intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    bootstrap: dict[str, Any] = field(default_factory=dict)
    #: loss by context length: power-of-two bins of tokens read before the scored one
    by_context_length: list[ContextBin] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float | None]:
        """Metrics derived from the totals (see `lleval.metrics`).

        A protocol that leaves tokens unscored (llama-cpp, hf-guide with
        S = L) has no per-byte or per-word metrics: its log-likelihood covers
        only part of the text. llama-cpp adds llama.cpp's error estimate.
        """
        metrics = derive_metrics(self.totals)
        if not self.protocol.get("scores_every_token", True):
            for key in ("bits_per_byte", "byte_perplexity", "word_perplexity"):
                metrics[key] = None
        if self.protocol.get("name") == "llama-cpp":
            metrics["perplexity_stderr_llamacpp"] = llamacpp_perplexity_stderr(self.totals)
        return metrics

    def to_dict(self) -> dict[str, Any]:
        """The JSON export, schema version 1 (see README, "The JSON report")."""
        return {
            **self.header_dict("score"),
            "totals": {
                "log_likelihood": self.totals.log_likelihood,
                "log_likelihood_unit": "nats",
                "tokens": self.totals.tokens,
                "bytes": self.totals.bytes,
                "words": self.totals.words,
                "documents": self.totals.documents,
                "logprob_sq_sum": self.totals.logprob_sq_sum,
                "nonfinite_tokens": self.totals.nonfinite,
            },
            "metrics": {
                **{key: json_float(value) for key, value in self.metrics.items()},
                **{f"{key}_ci": json_interval(value) for key, value in self.intervals.items()},
            },
            "bootstrap": dict(self.bootstrap),
            "by_context_length": [b.to_dict() for b in self.by_context_length],
            "documents": [doc.to_dict() for doc in self.documents],
        }

    def to_json(self) -> str:
        """The JSON export as text (UTF-8, two-space indent, trailing newline)."""
        return to_json(self.to_dict())

    def render_table(self, console: Any) -> None:
        """Print as a rich table on ``console`` (stdout in the CLI)."""
        render_table(self, console)

    def render_markdown(self) -> str:
        """A two-column markdown table (for CI job summaries)."""
        return render_markdown(self)


def to_json(data: dict[str, Any]) -> str:
    """A report's JSON text: UTF-8, two-space indent, no NaN, trailing newline."""
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def json_float(value: float | None) -> float | None:
    """JSON has no infinity: an overflowing perplexity is written as null."""
    if value is None or not math.isfinite(value):
        return None
    return value


def json_interval(value: tuple[float, float] | None) -> list[float | None] | None:
    """An interval for JSON: a pair, with infinities as null; None stays None."""
    return None if value is None else [json_float(value[0]), json_float(value[1])]


def write_text_atomic(path: str, text: str, flag: str = "--output") -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder, fsync, rename.

    A crash leaves either the old file or the new one, never half of one; a failed
    write (a full disk) is an `OutputError` naming ``flag`` and the file, and leaves
    no temp file behind. The file gets the mode of any file the user creates.
    """
    target = Path(path).expanduser()
    tmp: str | None = None
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), file_mode())
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise write_failure(flag, path, exc) from None
    finally:
        if tmp is not None:
            remove_quietly(Path(tmp))


def write_report(report: Any, path: str, flag: str = "--output") -> None:
    """Write the JSON export of any report (anything with ``to_json()``) to ``path`` atomically."""
    write_text_atomic(path, report.to_json(), flag)


def fmt(value: float | None, digits: int = 4) -> str:
    """A number for a rendered table: fixed digits, ``n/a`` for none, ``inf`` for overflow."""
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return "inf"
    return f"{value:.{digits}f}"


def protocol_summary(protocol: dict[str, Any]) -> str:
    """One line naming a protocol block's choices, for rendered tables."""
    window = f"L={protocol['max_length']}" + (f", S={protocol['stride']}" if protocol.get("stride") else "")
    return f"{protocol['name']}: {window}, prefix={protocol['prefix_token']}, concat={protocol['concat'] is not None}"


def summary_rows(report: Report) -> list[tuple[str, str]]:
    """(label, value) pairs shown by the table and markdown renderings of a score report."""
    t = report.totals
    rows = [
        ("model", f"{report.model['name']} ({report.model['dtype']}, {report.model['device']})"),
        ("dataset", f"{report.dataset['spec']} [{report.dataset['split']}]"),
        ("protocol", protocol_summary(report.protocol)),
        ("documents", f"{t.documents} scored, {report.dataset['skipped_empty']} empty skipped"),
        ("tokens / bytes / words", f"{t.tokens} / {t.bytes} / {t.words}"),
        ("log-likelihood (nats)", fmt(t.log_likelihood, 2)),
    ]
    for key, value in report.metrics.items():
        interval = report.intervals.get(key)
        shown = fmt(value)
        if interval is not None:
            shown += f"  [{fmt(interval[0])}, {fmt(interval[1])}] 95% CI"
        rows.append((METRIC_LABELS[key], shown))
    rows.append(("throughput", f"{report.timing.get('tokens_per_second', 0.0):.0f} tokens/s"))
    return rows


def render_pairs_table(title: str, rows: list[tuple[str, str]], notes: list[str], console: Any) -> None:
    """A two-column rich table of (label, value) rows, then the notes."""
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    for note in notes:
        console.print(f"note: {note}")


def render_pairs_markdown(title: str, rows: list[tuple[str, str]], notes: list[str]) -> str:
    """A two-column markdown table of (label, value) rows (for CI job summaries), then the notes."""
    lines = [f"### {title}", "", "| what | value |", "| --- | --- |"]
    lines += [f"| {label} | {value.replace('|', '/')} |" for label, value in rows]
    lines += [f"\n> note: {note}" for note in notes]
    return "\n".join(lines) + "\n"


CONTEXT_COLUMNS = ("context", "tokens", "NLL (nats/token)", "perplexity [95% CI]", "")


def context_columns(report: Report) -> tuple[str, ...]:
    """The headers of the loss-by-context table: "[95% CI]" only when some bin has an
    interval (not with --bootstrap 0, nor for a single document)."""
    if any(b.perplexity_ci is not None for b in report.by_context_length):
        return CONTEXT_COLUMNS
    return tuple("perplexity" if c == "perplexity [95% CI]" else c for c in CONTEXT_COLUMNS)


def context_rows(report: Report) -> list[tuple[str, ...]]:
    """One row per non-empty bin of ``by_context_length``: context range, tokens, NLL,
    perplexity with its interval, and a bar of the NLL (the curve, sideways)."""
    full = [b for b in report.by_context_length if b.tokens]
    top = max((b.nll or 0.0 for b in full), default=1.0) or 1.0
    rows: list[tuple[str, ...]] = []
    for b in full:
        nll = b.nll or 0.0
        span = str(b.context_min) if b.context_min == b.context_max else f"{b.context_min}-{b.context_max}"
        ci = "" if b.perplexity_ci is None else f"  [{fmt(b.perplexity_ci[0], 3)}, {fmt(b.perplexity_ci[1], 3)}]"
        rows.append((span, str(b.tokens), fmt(nll), fmt(math.exp(min(nll, 709.0)), 3) + ci, "█" * round(20 * nll / top)))
    return rows


def render_table(report: Report, console: Any) -> None:
    """Print a score report as rich tables on ``console`` (stdout in the CLI): the summary,
    then loss by context length."""
    from rich.table import Table

    render_pairs_table(f"lleval score — {report.protocol['name']} protocol", summary_rows(report), report.notes,
                       console)
    rows = context_rows(report)
    if rows:
        table = Table(title="loss by context length (tokens read before the scored one)")
        for column in context_columns(report):
            table.add_column(column, justify="right" if column not in ("", "context") else "left")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def render_markdown(report: Report) -> str:
    """A score report as markdown (for CI job summaries): the summary, then loss by context length."""
    text = render_pairs_markdown(f"lleval score — {report.protocol['name']} protocol", summary_rows(report),
                                 report.notes)
    rows = context_rows(report)
    if rows:
        lines = ["", "#### Loss by context length", "", "| " + " | ".join(context_columns(report)[:-1]) + " |",
                 "| --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(row[:-1]) + " |" for row in rows]
        text += "\n".join(lines) + "\n"
    return text
