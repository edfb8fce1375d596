"""Documents kept for the HTML report: a few texts with every token's log-prob, and a
short snippet of every document."""

from __future__ import annotations

import numpy as np
from typing import Any

from lleval.metrics import perplexities
from lleval.reducers.base import row_slices
from lleval.stream import ScoredBlock, token_columns


class DocumentSamples:
    """The ``n`` most and ``n`` least surprising documents (by their own perplexity), with
    every scored token's text and numbers, for the HTML report; memory bounded by ``n``.
    Also the opening words of every document (`document_snippet`, about 60 characters
    each), so the HTML's table of documents says which text a row is."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.worst: list[tuple[float, int, dict[str, Any]]] = []  # min-heap on perplexity: the n highest
        self.best: list[tuple[float, int, dict[str, Any]]] = []  # min-heap on -perplexity: the n lowest
        self.seen = 0
        self.snippets: dict[int, str] = {}  # document index -> its opening words

    def update(self, block: ScoredBlock) -> None:
        import heapq


        for scores in block.units:
            self.snippets.update((row.index, document_snippet(row.text)) for row in scores.unit.rows
                                 if row.text is not None)
            if not len(scores) or self.n == 0:
                self.seen += len(scores.unit.rows)
                continue
            columns = token_columns(scores)
            for k, (row, run) in enumerate(zip(scores.unit.rows, row_slices(scores))):
                mine = np.arange(run.start, run.stop)
                if len(mine):
                    stats: dict[str, np.ndarray] = {name: columns[name][mine] for name in ("rank", "entropy")
                                                    if name in columns}
                    sample = document_sample(row.index, row.bytes, [columns["token"][i] for i in mine.tolist()],
                                             columns["logprob"][mine], stats)
                    for heap, key in ((self.worst, sample["perplexity"]), (self.best, -sample["perplexity"])):
                        entry = (key, self.seen + k, sample)
                        if len(heap) < self.n:
                            heapq.heappush(heap, entry)
                        elif entry[:2] > heap[0][:2]:
                            heapq.heapreplace(heap, entry)
            self.seen += len(scores.unit.rows)

    def samples(self) -> list[dict[str, Any]]:
        """The documents kept, most surprising first, each once."""
        chosen = {entry[1]: entry[2] for entry in self.worst + self.best}
        return sorted(chosen.values(), key=lambda s: -s["perplexity"])

    def state(self) -> dict[str, Any]:
        return {"seen": self.seen, "worst": [list(e) for e in self.worst], "best": [list(e) for e in self.best],
                "snippets": [[index, text] for index, text in self.snippets.items()]}

    def restore(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.snippets = {int(index): str(text) for index, text in state.get("snippets", [])}
        self.worst = [(float(a), int(b), c) for a, b, c in state["worst"]]
        self.best = [(float(a), int(b), c) for a, b, c in state["best"]]


SNIPPET_CHARS = 60


def document_snippet(text: str, chars: int = SNIPPET_CHARS) -> str:
    """A document's first ``chars`` characters with runs of whitespace made one space (an
    ellipsis when cut): enough to tell which text a row of the documents table is, at
    about 60 bytes a document."""
    words = " ".join(text[: 4 * chars].split())
    return words if len(words) <= chars else words[: chars - 1].rstrip() + "…"


def document_sample(
    index: int, n_bytes: int, text: list[str], logprob: np.ndarray, stats: dict[str, np.ndarray]
) -> dict[str, Any]:
    """One document's tokens as the HTML report shows them: text, log-prob (nats) and, when
    scored, rank and entropy, with the document's own log-likelihood and perplexity."""
    values = logprob.astype(np.float64)
    sample = {
        "index": index, "bytes": n_bytes, "tokens": len(text), "log_likelihood": float(values.sum()),
        "perplexity": float(perplexities(-values.mean())), "text": text, "logprob": values.round(5).tolist(),
    }
    for name, column in stats.items():
        sample[name] = column.astype(np.float64).round(4).tolist()
    return sample
