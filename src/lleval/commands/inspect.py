"""``lleval inspect``: read a token file (``--tokens``) back and show where the model is surprised.

- one document printed with each token coloured by its surprisal (``--doc N``);
- the most surprising spans of the corpus (``--worst K``): runs of ``--span``
  tokens with the highest total surprisal, no two overlapping;
- with a second token file of the same texts and tokenizer, the per-token
  difference (candidate minus base log-prob) instead;
- ``--html FILE``: the same self-contained page as ``lleval score --html``,
  built from the token file alone;
- a suite report (``lleval score -m A -m B ... -o suite.json``) in place of the
  token file: its matrix, and with ``--html`` its page (`read_suite`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lleval.errors import ReportError
from lleval.metrics import LN2, perplexity, to_bits
from lleval.reducers.samples import SNIPPET_CHARS, document_sample, document_snippet
from lleval.report.tokens import open_parquet, read_token_file, token_header

NUMERIC = ("document", "position", "context", "token_id", "start", "end", "logprob")


@dataclass
class TokenTable:
    """A token file in memory, as columns (a million tokens take about 60 MB)."""

    path: str
    header: dict[str, Any]
    columns: dict[str, np.ndarray]
    text: list[str]

    def __len__(self) -> int:
        return len(self.text)

    def document(self, index: int) -> np.ndarray:
        """Row numbers of one document's tokens, in file order."""
        rows = np.flatnonzero(self.columns["document"] == index)
        if not len(rows):
            raise ReportError(f"token file {self.path} has no tokens of document {index}.")
        return rows


def load_tokens(path: str) -> TokenTable:
    """Read a token file into columns (Parquet column by column, JSON lines row by row)."""
    values: dict[str, Any] = {}
    if Path(path).suffix.lower() == ".jsonl" or not Path(path).is_file():
        header, rows = read_token_file(path)
        for row in rows:
            for name, value in row.items():
                values.setdefault(name, []).append(value)
    else:
        parquet, header = open_parquet(Path(path))
        values = parquet.read().to_pydict()
    text: list[str] = values.pop("token", [])
    if not text:
        raise ReportError(f"token file {path} holds no tokens.")
    columns = {name: np.asarray(v, dtype=np.float64 if name in ("logprob", "entropy", "kl", "base_logprob") else None)
               for name, v in values.items()}
    return TokenTable(path, header, columns, text)


def document_table(table: TokenTable) -> list[dict[str, Any]]:
    """Per document, in order of first appearance: index, tokens, UTF-8 bytes of its scored
    tokens' text, and the log-likelihood (float64, added in file order)."""
    indices, first, number = _documents(table)
    n_bytes = np.asarray([len(text.encode("utf-8")) for text in table.text], dtype=np.float64)
    tokens = np.bincount(number, minlength=len(indices))
    sizes = np.bincount(number, weights=n_bytes, minlength=len(indices))
    lls = np.bincount(number, weights=table.columns["logprob"], minlength=len(indices))
    return [{"index": int(indices[k]), "tokens": int(tokens[k]), "bytes": int(sizes[k]),
             "log_likelihood": float(lls[k])} for k in np.argsort(first)]


def _documents(table: TokenTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct document indices (sorted), the row where each first appears, and each
    row's number into the sorted indices."""
    indices, first, number = np.unique(table.columns["document"], return_index=True, return_inverse=True)
    return indices, first, number.reshape(-1)


def document_snippets(table: TokenTable) -> dict[int, str]:
    """Each document's opening words (`document_snippet`), from the text of its first
    ``SNIPPET_CHARS`` tokens (nearly always more characters than the snippet keeps), so
    a million-token file is not joined back whole."""
    indices, first, _number = _documents(table)
    documents = table.columns["document"]
    out = {}
    for index, start in zip(indices.tolist(), first.tolist()):
        end = start + int(np.argmax(np.r_[documents[start : start + SNIPPET_CHARS] != index, True]))
        out[int(index)] = document_snippet("".join(table.text[start:end]))
    return out


def context_table(table: TokenTable, documents: list[dict[str, Any]]) -> np.ndarray:
    """``(documents, bins, 2)``: log-likelihood and tokens per power-of-two context bin, the
    documents in the order of ``documents`` (`document_table`'s)."""
    from lleval.reducers.context import context_bin

    bins = context_bin(table.columns["context"].astype(np.int64))
    indices, _first, number = _documents(table)
    position = {d["index"]: k for k, d in enumerate(documents)}
    rows = np.asarray([position[int(i)] for i in indices])[number]
    out = np.zeros((len(documents), int(bins.max()) + 1, 2))
    np.add.at(out[:, :, 0], (rows, bins), table.columns["logprob"])
    np.add.at(out[:, :, 1], (rows, bins), 1.0)
    return out


def samples(table: TokenTable, documents: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The ``n`` most and least surprising documents, token by token (as the HTML shows them)."""
    ranked = sorted((d for d in documents if d["tokens"]), key=lambda d: d["log_likelihood"] / d["tokens"])
    chosen = {d["index"]: d for d in ranked[:n] + ranked[-n:]} if n else {}
    out = []
    for index, doc in chosen.items():
        rows = table.document(index)
        stats: dict[str, np.ndarray] = {name: table.columns[name][rows] for name in ("rank", "entropy")
                                        if name in table.columns}
        out.append(document_sample(index, doc["bytes"], [table.text[r] for r in rows], table.columns["logprob"][rows],
                                   stats))
    return sorted(out, key=lambda s: -s["perplexity"])


def worst_spans(values: np.ndarray, documents: np.ndarray, k: int, span: int) -> list[tuple[int, int]]:
    """``(first row, rows)`` of the ``k`` runs of up to ``span`` rows of one document with the
    highest total ``values``, no two overlapping, highest first."""
    candidates = []
    starts = np.flatnonzero(np.r_[True, documents[1:] != documents[:-1]])
    for begin, end in zip(starts, np.r_[starts[1:], len(values)]):
        width = min(span, end - begin)
        totals = np.convolve(values[begin:end], np.ones(width), mode="valid")
        candidates += [(float(t), int(begin + i), width) for i, t in enumerate(totals)]
    taken: list[tuple[int, int]] = []
    used = np.zeros(len(values), dtype=bool)
    for _total, first, width in sorted(candidates, key=lambda c: -c[0]):
        if len(taken) == k:
            break
        if not used[first : first + width].any():
            used[first : first + width] = True
            taken.append((first, width))
    return taken


@dataclass
class TokenView:
    """What ``lleval inspect`` shows (``kind: "inspect"``)."""

    path: str
    candidate: str | None
    header: dict[str, Any]
    tokens: int
    documents: int
    log_likelihood: float
    spans: list[dict[str, Any]] = field(default_factory=list)
    document: dict[str, Any] | None = None  # the one printed: its tokens and their values

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``--format json``); ``legend``: what the colours of the printed
        document mean (`legend`), when a document is printed."""
        return {"schema_version": 1, "kind": "inspect", "tokens_file": self.path, "candidate_file": self.candidate,
                "tokens": self.tokens, "documents": self.documents, "log_likelihood": self.log_likelihood,
                "nll": -self.log_likelihood / self.tokens, "spans": self.spans, "document": self.document,
                **({"legend": self.legend()} if self.document is not None else {})}

    def legend(self) -> list[dict[str, Any]]:
        """The colour scale of the printed document, as swatches: ``value`` (surprisal in bits,
        or a difference in nats), its ``colour`` (`_rgb`) and its ``label``."""
        if self.candidate is not None:
            steps = [(-4.0, "−4 nats: candidate less surprised"), (-1.0, "−1"), (0.0, "0"), (1.0, "+1"),
                     (4.0, "+4 nats or more: candidate more surprised")]
            return [{"value": v, "unit": "nats", "colour": _rgb(v, True), "label": label} for v, label in steps]
        return [{"value": bits, "unit": "bits", "colour": _rgb(bits * LN2, False),
                 "label": f"{bits:g} bit{'' if bits == 1 else 's'}" + (" or more" if bits == 16 else "")}
                for bits in (0, 1, 2, 4, 8, 16)]

    def to_json(self) -> str:
        """The JSON form as text."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def render_markdown(self) -> str:
        """The spans as a markdown table."""
        value = "Δ nats" if self.candidate else "surprisal (nats)"
        lines = [f"### lleval inspect — {self.path}", "", f"| document | position | {value} | text |",
                 "| --- | --- | --- | --- |"]
        lines += [f"| {s['document']} | {s['position']} | {s['value']:.3f} | {s['text']!r} |" for s in self.spans]
        return "\n".join(lines) + "\n"

    def render_table(self, console: Any) -> None:
        """The document (coloured) and the spans, on a rich console."""
        from rich.table import Table
        from rich.text import Text

        if self.document is not None:
            doc = self.document
            what = "difference (red: the candidate is more surprised)" if self.candidate else "surprisal"
            console.print(f"document {doc['index']}: {len(doc['text'])} tokens, coloured by {what}")
            text = Text()
            for piece, value in zip(doc["text"], doc["values"]):
                text.append(piece, style=f"on {_rgb(value, self.candidate is not None)}")
            console.print(text)
            key = Text("legend: " + ("difference, candidate − base log-prob: " if self.candidate else
                                     "surprisal (−log₂ p): "))
            for swatch in self.legend():
                key.append(f" {swatch['label']} ", style=f"black on {swatch['colour']}")
                key.append(" ")
            console.print(key)
        if self.spans:
            table = Table(title="most surprising spans" if not self.candidate else "spans that got most worse")
            for column in ("document", "position", "Δ nats" if self.candidate else "nats", "text"):
                table.add_column(column)
            for s in self.spans:
                table.add_row(str(s["document"]), str(s["position"]), f"{s['value']:.3f}", repr(s["text"]))
            console.print(table)


def _rgb(value: float, difference: bool) -> str:
    """A background for a token: surprisal in bits (white to red), or a difference in nats
    (red when the candidate is more surprised, green when less)."""
    if difference:
        level = min(abs(value) / 4.0, 1.0)
        fade = int(255 - 150 * level)
        return f"rgb(255,{fade},{fade})" if value > 0 else f"rgb({fade},255,{fade})"
    level = min(max(to_bits(value), 0.0) / 16.0, 1.0)
    fade = int(255 - 190 * level)
    return f"rgb(255,{fade},{fade})"


DEFAULT_WORST = 10  # spans listed when neither --doc nor --worst is given


def inspect_tokens(
    path: str, candidate: str | None = None, *, document: int | None = None, worst: int | None = None, span: int = 8
) -> TokenView:
    """Read a token file (and a candidate's, to compare) and pick what to show.

    ``worst=None`` means "what the user asked for": with a ``document`` only that
    document (someone reading document 3 did not ask for the corpus' worst
    spans), without one the `DEFAULT_WORST` most surprising spans; an explicit
    ``worst`` lists that many spans, with a ``document`` that document's own.
    """
    if worst is None:
        worst = 0 if document is not None else DEFAULT_WORST
    base = load_tokens(path)
    surprise = -base.columns["logprob"]
    if candidate is not None:
        other = load_tokens(candidate)
        _check_same_tokens(base, other)
        surprise = base.columns["logprob"] - other.columns["logprob"]  # > 0: the candidate is more surprised
    chosen = None
    rows = np.arange(len(base))
    if document is not None:  # the document shown, and its spans only: the reader asked about it
        rows = base.document(document)
        chosen = {"index": document, "text": [base.text[r] for r in rows], "values": surprise[rows].tolist()}
    spans = [{"document": int(base.columns["document"][rows[first]]),
              "position": int(base.columns["position"][rows[first]]),
              "value": float(surprise[rows[first : first + width]].sum()),
              "text": "".join(base.text[r] for r in rows[first : first + width])}
             for first, width in worst_spans(surprise[rows], base.columns["document"][rows], worst, span)]
    return TokenView(path, candidate, base.header, len(base), len(np.unique(base.columns["document"])),
                     float(base.columns["logprob"].sum()), spans, chosen)


def _check_same_tokens(base: TokenTable, other: TokenTable) -> None:
    same = len(base) == len(other) and all(
        np.array_equal(base.columns[name], other.columns[name]) for name in ("document", "position", "token_id"))
    if not same:
        raise ReportError(
            f"{base.path} and {other.path} did not score the same tokens (other texts, tokenizer or protocol): "
            "a token-by-token difference needs both; compare their reports with lleval compare instead."
        )


def read_suite(path: str) -> Any:
    """The `SuiteReport` in ``path`` when it holds one (a ``.json`` file of kind ``suite``,
    checked against its schema), else None: the file is read as a token file (a Parquet
    token file may be named ``.json``: it does not open with ``{``)."""
    from lleval.report.suite import SuiteReport

    if Path(path).suffix.lower() != ".json" or not Path(path).is_file():
        return None
    with open(path, "rb") as file:
        if not file.read(256).lstrip().startswith(b"{"):
            return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} is not a readable JSON report ({exc}): give a suite report or a token file.") from None
    if not isinstance(data, dict) or data.get("kind") != "suite":
        kind = data.get("kind") if isinstance(data, dict) else None
        raise ReportError(f"{path} is {'a ' + repr(kind) + ' report' if kind else 'not a suite report'}: lleval "
                          "inspect reads a token file (--tokens) or a suite report.")
    return SuiteReport.from_dict(data, source=path)


def write_tokens_html(path: str, html_path: str, html_docs: int = 20, bootstrap: int = 1000, seed: int = 0) -> None:
    """The HTML page of a token file: summary, loss by context length, documents, samples."""
    from lleval.report.html import Page, render
    from lleval.report.output import write_text_atomic
    from lleval.report.score import bins_of_table

    table = load_tokens(path)
    documents = document_table(table)
    tokens = len(table)
    ll = float(table.columns["logprob"].sum())
    summary = [("token file", path), ("documents / tokens", f"{len(documents)} / {tokens}"),
               ("NLL (nats/token)", f"{-ll / tokens:.4f}"), ("perplexity", f"{perplexity(-ll / tokens):.4f}")]
    header = token_header(table.header, path)
    if header is not None:
        summary = [("model", f"{header.model.name} ({header.model.dtype})"), ("dataset", header.dataset.spec),
                   ("protocol", header.protocol.summary())] + summary
    bins = bins_of_table(context_table(table, documents), bootstrap, seed)
    page = Page(title=f"lleval inspect — {path}", summary=summary, bins=[b.to_dict() for b in bins],
                documents=documents, snippets=document_snippets(table), samples=samples(table, documents, html_docs))
    write_text_atomic(html_path, render(page), "--html")
