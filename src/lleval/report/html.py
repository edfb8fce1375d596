"""Self-contained HTML reports: one file, inline CSS, SVG and JavaScript, no network.

`write_score_html` renders a score run (``lleval score --html``), `inspect`
renders a token file (``lleval inspect TOKENS --html``), `write_compare_html`
a comparison (``lleval compare --html``). A page holds:

- the summary: metrics with their intervals, model, data, protocol;
- loss by context length as an SVG chart (log x axis: power-of-two bins of
  the tokens read before the scored one; NLL with its 95% band);
- a table of documents, sortable by any column (click its header): each
  document's row in the source, its ``id`` when the data has one, its numbers
  and its opening words;
- the most and least surprising documents (``--html-docs N`` of each), their
  text coloured token by token by surprisal, with a legend, and on hover the
  token, its log-prob and, when known, its rank and the entropy.

Size: about 400 bytes a document for the table (62 of them its snippet;
measured on 2,000 rendered rows) and 170 bytes a shown token, so
``--html-docs`` bounds the page on any corpus (measured, before the snippets: 1.6 million
tokens in 2,000 documents, 20 + 20 shown with rank and entropy: 5.7 MB,
loaded by headless Chromium in 0.6 s).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

from lleval.metrics import LN2, bits_per_byte, perplexity, to_bits
from lleval.report.output import write_text_atomic

SURPRISAL_SCALE_BITS = 16.0  # a token this surprising (or more) gets the darkest colour


@dataclass
class Page:
    """What one report page shows."""

    title: str
    summary: list[tuple[str, str]]
    notes: list[str] = field(default_factory=list)
    bins: list[dict[str, Any]] = field(default_factory=list)  # ContextBin.to_dict() entries
    documents: list[dict[str, Any]] = field(default_factory=list)  # index, tokens, bytes, log_likelihood (, id)
    snippets: dict[int, str] = field(default_factory=dict)  # document index -> its opening words
    samples: list[dict[str, Any]] = field(default_factory=list)  # lleval.reducers.samples.DocumentSamples
    extra: str = ""  # further HTML (the comparison chart)
    calibration: dict[str, Any] | None = None  # statistics.calibration (--calibration): the reliability diagram


def esc(text: Any) -> str:
    """HTML-escaped text."""
    return html.escape(str(text), quote=True)


def token_colour(logprob: float) -> str:
    """Background of a token: white when certain, deep red at 16 bits of surprisal or more."""
    bits = min(max(to_bits(-logprob), 0.0), SURPRISAL_SCALE_BITS) if math.isfinite(logprob) else SURPRISAL_SCALE_BITS
    return f"hsl(4, 85%, {100 - 58 * bits / SURPRISAL_SCALE_BITS:.1f}%)"


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: .2rem .6rem; border-bottom: 1px solid #eee; text-align: left; }
table.summary td:first-child { font-weight: 600; }
table.documents th { cursor: pointer; user-select: none; } table.documents th:hover { background: #f3f3f3; }
table.documents td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.documents td.snippet { color: #555; font-size: 12px; }
.doc { border: 1px solid #e4e4e4; border-radius: 6px; padding: .6rem .9rem; margin: 1rem 0; }
.doc h3 { font-size: .95rem; margin: 0 0 .4rem; }
.text { white-space: pre-wrap; font: 13px/1.6 ui-monospace, monospace; margin: 0; }
.t { border-radius: 2px; } .t:hover { outline: 1px solid #333; }
.legend span { display: inline-block; padding: 0 .5rem; margin-right: 2px; font: 12px ui-monospace, monospace; }
.note { color: #555; } svg text { font: 11px system-ui, sans-serif; fill: #444; }
"""

SORT_SCRIPT = """
function value(cell) { return cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent; }
document.querySelectorAll('table.documents th').forEach(function (th) {
  var column = th.cellIndex;  // within its own table: a suite's page holds one table per cell
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var down = th.dataset.order !== 'desc';
    rows.sort(function (a, b) {
      var p = value(a.cells[column]), q = value(b.cells[column]);
      var x = parseFloat(p), y = parseFloat(q);
      var order = isNaN(x) || isNaN(y) ? p.localeCompare(q) : x - y;  // ids and text sort as text
      return down ? -order : order;
    });
    th.dataset.order = down ? 'desc' : 'asc';
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def render(page: Page) -> str:
    """The page as one HTML document."""
    return document(page.title, [body(page)])


def document(title: str, sections: list[str], style: str = "") -> str:
    """One self-contained HTML document: ``title`` as its title and heading, then ``sections``
    (empty ones left out), the shared style (and ``style``) and the table-sorting script."""
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{STYLE}{style}</style></head><body>",
        f"<h1>{esc(title)}</h1>", *sections, f"<script>{SORT_SCRIPT}</script></body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def body(page: Page, scope: str = "") -> str:
    """The page's sections, without the document around them. ``scope`` prefixes every element
    id, so that several pages' sections can share one document (a suite's cells)."""
    parts = [_summary(page, scope), page.extra, _curve(page.bins, scope),
             _reliability(page.calibration, scope), _documents(page, scope),
             _samples(page.samples, scope)]
    return "\n".join(part for part in parts if part)


def _summary(page: Page, scope: str = "") -> str:
    rows = "".join(f"<tr><td>{esc(label)}</td><td>{esc(value)}</td></tr>" for label, value in page.summary)
    notes = "".join(f'<p class="note">note: {esc(note)}</p>' for note in page.notes)
    return f'<section id="{scope}summary"><h2>Summary</h2><table class="summary">{rows}</table>{notes}</section>'


def _curve(bins: list[dict[str, Any]], scope: str = "") -> str:
    """Loss by context length: one point per non-empty bin, its 95% band, a log x axis."""
    if not bins:
        return ""
    full = [(b, entry) for b, entry in enumerate(bins) if entry["tokens"]]
    if not full:
        return ""
    bins = bins[: full[-1][0] + 1]  # the axis ends at the last bin holding tokens; the JSON keeps every bin
    lows = [math.log(e["perplexity_ci"][0]) for _, e in full if e.get("perplexity_ci")]
    highs = [math.log(e["perplexity_ci"][1]) for _, e in full if e.get("perplexity_ci")]
    values = [e["nll"] for _, e in full]
    top, bottom = max(values + highs), min(values + lows)
    pad = (top - bottom) * 0.1 or 0.5
    top, bottom = top + pad, max(0.0, bottom - pad)
    width, height, left, right, up, down = 760, 300, 56, 16, 16, 56

    def x(b: float) -> float:
        return left + (width - left - right) * (b + 0.5) / len(bins)

    def y(v: float) -> float:
        return up + (height - up - down) * (top - v) / (top - bottom)

    band = [(b, e) for b, e in full if e.get("perplexity_ci")]
    polygon = " ".join(f"{x(b):.1f},{y(math.log(e['perplexity_ci'][1])):.1f}" for b, e in band) + " " + " ".join(
        f"{x(b):.1f},{y(math.log(e['perplexity_ci'][0])):.1f}" for b, e in reversed(band))
    line = " ".join(f"{x(b):.1f},{y(e['nll']):.1f}" for b, e in full)
    points = "".join(
        f'<circle class="point" data-bin="{b}" cx="{x(b):.1f}" cy="{y(e["nll"]):.1f}" r="4" fill="#c0392b">'
        f'<title>context {e["context_min"]}-{e["context_max"]}: {e["tokens"]} tokens, NLL {e["nll"]:.4f} nats, '
        f'perplexity {e["perplexity"]:.3f}</title></circle>' for b, e in full)
    ticks = "".join(  # a bin is labelled with its least context: 1, 2, 4, 8, ...
        f'<text class="x-tick" x="{x(b):.1f}" y="{height - down + 16}" text-anchor="middle">{e["context_min"]}</text>'
        for b, e in enumerate(bins))
    grid = _grid(bottom, top, y, left, width - right, "{:.2f}")
    svg = (f'<svg id="{scope}curve-chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="NLL by context length">{grid}'
           + (f'<polygon points="{polygon}" fill="#e74c3c" fill-opacity="0.15" stroke="none"/>' if band else "")
           + f'<polyline points="{line}" fill="none" stroke="#c0392b" stroke-width="1.5"/>{points}{ticks}'
           f'<text x="{(width + left) / 2}" y="{height - 12}" text-anchor="middle">tokens of context before the '
           f'scored token, at least (bins of powers of two, log scale)</text><text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" '
           f'text-anchor="middle">NLL (nats/token)</text></svg>')
    return (f'<section id="{scope}curve"><h2>Loss by context length</h2>{svg}<p class="note">Each point is the NLL of the '
            "tokens that had that much context in their window; the band is the 95% bootstrap interval over "
            "documents. A falling curve means the model uses its longer context.</p></section>")


def _reliability(calibration: dict[str, Any] | None, scope: str = "") -> str:
    """The reliability diagram of --calibration: per non-empty bin of top-1 confidence, a bar up to
    the bin's top-1 accuracy, its mean confidence marked, against the diagonal of perfect calibration."""
    if not calibration or not calibration.get("tokens"):
        return ""
    size, left, up = 360, 56, 16
    span = size - left - 16

    def x(v: float) -> float:
        return left + span * v

    def y(v: float) -> float:
        return up + span * (1.0 - v)

    bars = []
    for b in calibration["bins"]:
        if not b["tokens"]:
            continue
        low, high, accuracy, confidence = b["low"], b["high"], b["accuracy"], b["confidence"]
        bars.append(
            f'<rect class="bin" x="{x(low):.1f}" y="{y(accuracy):.1f}" width="{x(high) - x(low):.1f}" '
            f'height="{y(0.0) - y(accuracy):.1f}" fill="#2c7a7b" fill-opacity="0.75" stroke="#fff" '
            f'data-low="{low!r}" data-high="{high!r}" data-confidence="{confidence!r}" data-accuracy="{accuracy!r}" '
            f'data-tokens="{b["tokens"]}"><title>confidence {low:.3f}-{high:.3f}: {b["tokens"]} tokens, mean '
            f'confidence {confidence:.3f}, top-1 accuracy {accuracy:.3f}</title></rect>'
            f'<line class="confidence" x1="{x(low):.1f}" x2="{x(high):.1f}" y1="{y(confidence):.1f}" '
            f'y2="{y(confidence):.1f}" stroke="#c0392b" stroke-width="2"/>')
    ticks = "".join(f'<text class="x-tick" x="{x(v):.1f}" y="{y(0.0) + 16:.1f}" text-anchor="middle">{v:g}</text>'
                    for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
    grid = _grid(0.0, 1.0, y, left, x(1.0), "{:.2f}")
    svg = (f'<svg id="{scope}calibration-chart" viewBox="0 0 {size} {size}" width="{size}" height="{size}" role="img" '
           f'aria-label="reliability diagram">{grid}{"".join(bars)}<line id="{scope}calibration-diagonal" x1="{x(0):.1f}" '
           f'y1="{y(0):.1f}" x2="{x(1):.1f}" y2="{y(1):.1f}" stroke="#555" stroke-dasharray="5 4"/>{ticks}'
           f'<text x="{(size + left) / 2}" y="{size - 12}" text-anchor="middle">top-1 confidence (max p)</text>'
           f'<text x="14" y="{up + span / 2}" transform="rotate(-90 14 {up + span / 2})" text-anchor="middle">'
           "top-1 accuracy</text></svg>")
    return (f'<section id="{scope}calibration"><h2>Calibration of next-token predictions</h2>{svg}<p>ECE '
            f'<span id="{scope}calibration-ece">{calibration["ece"]:.4f}</span> · top-1 accuracy <span '
            f'id="{scope}calibration-top1">{calibration["top1_accuracy"]:.4f}</span> · {calibration["tokens"]} tokens</p>'
            '<p class="note">Each bar is the top-1 accuracy of the tokens whose highest next-token probability fell '
            "in that bin (15 equal-width bins), the red mark their mean confidence. Bars under the dashed diagonal "
            "mean an over-confident model; ECE is the token-weighted mean gap.</p></section>")


def _grid(bottom: float, top: float, y: Any, x_from: float, x_to: float, label: str) -> str:
    """Five horizontal grid lines from ``bottom`` to ``top``, each with its value at the left."""
    steps = [bottom + (top - bottom) * k / 4 for k in range(5)]
    return "".join(f'<line x1="{x_from}" x2="{x_to}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                   f'<text class="y-tick" x="{x_from - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{label.format(v)}</text>'
                   for v in steps)


def nice_ticks(bottom: float, top: float, count: int = 5) -> list[float]:
    """About ``count`` round values that cover ``bottom`` to ``top`` (the first at or below it,
    the last at or above): multiples of a step of 1, 2, 2.5 or 5 times a power of ten
    (``-0.5, 0, 0.5, 1``), as chart axes are read. An axis drawn from the first to the last
    ends on labelled values."""
    span = top - bottom
    if not math.isfinite(span) or span <= 0:
        return [bottom - 1.0, bottom + 1.0] if math.isfinite(bottom) else [0.0, 1.0]
    raw = span / max(1, count - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw * (1 - 1e-9))
    first, last = math.floor(bottom / step + 1e-9), math.ceil(top / step - 1e-9)
    return [round(k * step, 12) + 0.0 for k in range(first, last + 1)]


def _nice_grid(ticks: list[float], y: Any, x_from: float, x_to: float, unit: str = "") -> str:
    """Horizontal grid lines at ``ticks`` (`nice_ticks`), each labelled signed, with the decimals
    its step needs (``+0.5%``, ``+1%``, ``+0.25%``)."""
    step = abs(ticks[1] - ticks[0])
    decimals = next((d for d in range(0, 13) if abs(round(step, d) - step) <= 1e-9 * step), 12)
    return "".join(f'<line x1="{x_from}" x2="{x_to}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                   f'<text class="y-tick" data-value="{v!r}" x="{x_from - 6}" y="{y(v) + 4:.1f}" text-anchor="end">'
                   f"{v:+.{decimals}f}{unit}</text>" for v in ticks)


def _documents(page: Page, scope: str = "") -> str:
    if not page.documents:  # a kld or compare page
        return ""
    shown = {s["index"] for s in page.samples}
    with_id = any("id" in d for d in page.documents)
    membership = any("min_k_prob" in d for d in page.documents)  # --membership: three more sortable columns
    rows = []
    for d in page.documents:
        nll = -d["log_likelihood"] / d["tokens"] if d["tokens"] else None
        ppl = perplexity(nll) if nll is not None else None
        bpb = bits_per_byte(-d["log_likelihood"], d["bytes"]) if d["bytes"] else None
        name = f'<a href="#{scope}doc-{d["index"]}">{d["index"]}</a>' if d["index"] in shown else str(d["index"])
        cells = [(d["index"], name)] + ([(d.get("id", ""), esc(d.get("id", "")))] if with_id else [])
        cells += [(d["tokens"], d["tokens"]), (d["bytes"], d["bytes"])]
        values = [nll, ppl, bpb] + ([d.get("min_k_prob"), d.get("min_k_plus_plus"), d.get("zlib_ratio")]
                                    if membership else [])
        cells += [(v if v is not None else "NaN", "n/a" if v is None else f"{v:.4f}") for v in values]
        snippet = page.snippets.get(d["index"], "")
        rows.append("<tr>" + "".join(f'<td class="num" data-value="{esc(v)}">{shown_value}</td>'
                                     for v, shown_value in cells)
                    + f'<td class="snippet">{esc(snippet)}</td></tr>')
    names = (("document",) + (("id",) if with_id else ()) + ("tokens", "bytes", "NLL", "perplexity", "bits/byte")
             + (("Min-K%", "Min-K%++", "zlib ratio") if membership else ()) + ("text",))
    head = "".join(f"<th>{name}</th>" for name in names)
    return (f'<section id="{scope}documents"><h2>Documents ({len(page.documents)})</h2><p class="note">Click a column to '
            f'sort by it.</p><table id="{scope}documents-table" class="documents"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
            "</tbody></table></section>")


def _samples(samples: list[dict[str, Any]], scope: str = "") -> str:
    if not samples:
        return ""
    legend = "".join(f'<span style="background:{token_colour(-bits * LN2)}">{bits:g} bits</span>'
                     for bits in (0, 1, 2, 4, 8, 16))
    docs = "".join(_sample(s, scope) for s in samples)
    return (f'<section id="{scope}tokens"><h2>Most and least surprising documents</h2><p class="legend">surprisal of each '
            f"token (−log₂ p): {legend} — hover a token for its numbers</p>{docs}</section>")


def _sample(sample: dict[str, Any], scope: str = "") -> str:
    spans = []
    for k, (text, logprob) in enumerate(zip(sample["text"], sample["logprob"])):
        tip = f"{text!r} · log-prob {logprob:.4f} nats ({to_bits(-logprob):.2f} bits)"
        if "rank" in sample:
            tip += f" · rank {int(sample['rank'][k])}"
        if "entropy" in sample:
            tip += f" · entropy {sample['entropy'][k]:.3f} nats"
        spans.append(f'<span class="t" style="background:{token_colour(logprob)}" title="{esc(tip)}">{esc(text)}</span>')
    return (f'<article class="doc" id="{scope}doc-{sample["index"]}"><h3>document {sample["index"]} · perplexity '
            f'{sample["perplexity"]:.3f} · {sample["tokens"]} tokens</h3><p class="text">{"".join(spans)}</p></article>')


def score_page(report: Any, samples: list[dict[str, Any]], snippets: dict[int, str] | None = None) -> Page:
    """The page of a score `Report` and its `DocumentSamples` (``snippets``: each document's
    opening words, `DocumentSamples.snippets`)."""
    from lleval.report.score import summary_rows

    return Page(
        title=f"lleval score — {report.protocol.name} protocol",
        summary=summary_rows(report),
        notes=list(report.notes),
        bins=[b.to_dict() for b in report.by_context_length],
        documents=[d.to_dict() for d in report.documents],
        samples=samples,
        snippets=snippets or {},
        calibration=report.statistics.get("calibration"),
    )


def write_score_html(report: Any, samples: list[dict[str, Any]], path: str,
                     snippets: dict[int, str] | None = None) -> None:
    """Write the HTML report of a score run (atomically)."""
    write_text_atomic(path, render(score_page(report, samples, snippets)), "--html")


def write_run_html(report: Any, path: str, samples: list[dict[str, Any]],
                   snippets: dict[int, str] | None = None) -> None:
    """Write the ``--html`` page of a run (atomically): a score report's page, or a kld report's."""
    if hasattr(report, "kl_divergence"):
        write_text_atomic(path, render(kld_page(report)), "--html")
    else:
        write_score_html(report, samples, path, snippets)


def kld_page(report: Any) -> Page:
    """The page of a `KLReport`: its summary, and the per-token KL's distribution by percentile."""
    return Page(title=f"lleval kld — {report.protocol.name} protocol", summary=report.summary_rows(),
                notes=list(report.notes), extra=_kl_percentiles(report.kl_divergence))


def _kl_percentiles(kl: dict[str, Any]) -> str:
    """The per-token KL at each percentile (and its minimum, median and maximum) on a log axis,
    the mean as a dashed line: where the mean comes from (a few tokens, or all of them)."""
    marks = [("min", 0.0, kl["min"])] + sorted(
        [(name, float(name[1:]), v) for name, v in kl["percentiles"].items()] + [("median", 50.0, kl["median"])],
        key=lambda m: m[1]) + [("max", 100.0, kl["max"])]
    values = [v for _, _, v in marks] + [kl["mean"]]
    positive = [v for v in values if v > 0]
    floor = min(positive) / 2 if positive else 1e-12  # KL at or below 0 (rounding) sits on the axis's floor
    top, bottom = math.log10(max(values + [floor * 10])) + 0.2, math.log10(floor)
    width, height, left, right, up, down = 760, 300, 72, 16, 16, 56

    def x(k: float) -> float:
        return left + (width - left - right) * (k + 0.5) / len(marks)

    def y(v: float) -> float:
        return up + (height - up - down) * (top - math.log10(max(v, floor))) / (top - bottom)

    points = "".join(
        f'<circle class="point" data-percentile="{name}" data-kl="{v!r}" cx="{x(k):.1f}" cy="{y(v):.1f}" r="4" '
        f'fill="#6c3483"><title>{esc(name)}: {v:.3g} nats</title></circle><text class="x-tick" x="{x(k):.1f}" '
        f'y="{height - down + 16}" text-anchor="middle">{esc(name)}</text>' for k, (name, _, v) in enumerate(marks))
    line = " ".join(f"{x(k):.1f},{y(v):.1f}" for k, (_, _, v) in enumerate(marks))
    grid = "".join(f'<line x1="{left}" x2="{width - right}" y1="{y(10.0 ** e):.1f}" y2="{y(10.0 ** e):.1f}" '
                   f'stroke="#eee"/><text class="y-tick" x="{left - 6}" y="{y(10.0 ** e) + 4:.1f}" text-anchor="end">'
                   f"1e{e}</text>" for e in range(math.ceil(bottom), math.floor(top) + 1))
    mean = (f'<line id="kld-mean" x1="{left}" x2="{width - right}" y1="{y(kl["mean"]):.1f}" y2="{y(kl["mean"]):.1f}" '
            f'stroke="#6c3483" stroke-dasharray="6 4"/><text x="{width - right}" y="{y(kl["mean"]) - 4:.1f}" '
            f'text-anchor="end">mean {kl["mean"]:.3g}</text>')
    svg = (f'<svg id="kld-chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="per-token KL by percentile">{grid}{mean}<polyline points="{line}" fill="none" '
           f'stroke="#6c3483" stroke-width="1.5"/>{points}<text x="{(width + left) / 2}" y="{height - 12}" '
           f'text-anchor="middle">percentile of the scored tokens</text><text x="14" y="{height / 2}" '
           f'transform="rotate(-90 14 {height / 2})" text-anchor="middle">KL (nats, log scale)</text></svg>')
    return (f'<section id="kld"><h2>Per-token KL divergence by percentile</h2>{svg}<p class="note">Each point is '
            "the KL of the token at that percentile of all scored tokens. A mean far above the median means a few "
            "tokens carry the divergence.</p></section>")


def compare_chart(comparisons: list[Any], max_regression_pct: float | None) -> str:
    """Each candidate's relative change with its 95% interval, and the gate, as one SVG."""
    if not comparisons:
        return ""
    changes = [100 * c.change for c in comparisons]
    lows = [100 * c.interval[0] if c.interval else v for c, v in zip(comparisons, changes)]
    highs = [100 * c.interval[1] if c.interval else v for c, v in zip(comparisons, changes)]
    bound = [] if max_regression_pct is None else [max_regression_pct]
    top, bottom = max(highs + bound + [0.0]), min(lows + [0.0])
    pad = (top - bottom) * 0.05 or 1.0
    ticks = nice_ticks(bottom - pad, top + pad)  # the axis ends on round values
    top, bottom = ticks[-1], ticks[0]
    width, height, left, right, up, down = 760, 320, 72, 16, 16, 80

    def x(k: float) -> float:
        return left + (width - left - right) * (k + 0.5) / len(comparisons)

    def y(v: float) -> float:
        return up + (height - up - down) * (top - v) / (top - bottom)

    marks = []
    for k, (c, v, lo, hi) in enumerate(zip(comparisons, changes, lows, highs)):
        # red: regressed; amber: over the limit but not significant (--require-significant)
        colour = "#c0392b" if c.regressed else "#d68910" if c.exceeded else "#2c7a7b"
        shaky = " (unreliable: few documents)" if c.interval_reliable is False else ""
        dashes = ' stroke-dasharray="3 3"' if shaky else ""
        marks.append(
            f'<line class="interval" x1="{x(k):.1f}" x2="{x(k):.1f}" y1="{y(lo):.1f}" y2="{y(hi):.1f}" '
            f'stroke="{colour}" stroke-width="2"{dashes}/><circle class="point" '
            f'cx="{x(k):.1f}" cy="{y(v):.1f}" r="5" fill="{colour}"><title>{esc(c.candidate)}: {v:+.3f}% '
            f'[{lo:+.3f}%, {hi:+.3f}%]{shaky}</title></circle>'
            f'<text x="{x(k):.1f}" y="{height - down + 16}" text-anchor="end" transform="rotate(-30 {x(k):.1f} '
            f'{height - down + 16})">{esc(c.dataset or c.candidate.rsplit("/", 1)[-1])}</text>')
    zero = _nice_grid(ticks, y, left, width - right, "%") + (
        f'<line x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#999"/>')
    gate = "" if max_regression_pct is None else (
        f'<line id="gate" x1="{left}" x2="{width - right}" y1="{y(max_regression_pct):.1f}" '
        f'y2="{y(max_regression_pct):.1f}" stroke="#c0392b" stroke-dasharray="6 4"/><text x="{width - right}" '
        f'y="{y(max_regression_pct) - 4:.1f}" text-anchor="end">gate +{max_regression_pct:g}%</text>')
    line = " ".join(f"{x(k):.1f},{y(v):.1f}" for k, v in enumerate(changes))
    metric = comparisons[0].metric.replace("_", " ")
    return (f'<section id="changes"><h2>Relative change of {esc(metric)} against the base</h2>'
            f'<svg id="compare-chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
            f'{zero}{gate}<polyline points="{line}" fill="none" stroke="#bbb"/>{"".join(marks)}'
            f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">change '
            f"(%), 95% interval</text></svg></section>")


def write_compare_html(result: Any, path: str) -> None:
    """Write the HTML page of a comparison (atomically)."""
    page = Page(title=f"lleval compare — base {result.comparisons[0].base if result.comparisons else ''}",
                summary=compare_summary(result),
                extra="".join(f'<p class="note compare-note">{esc(line)}</p>' for line in result.notes())
                + compare_chart(result.comparisons, result.max_regression_pct)
                + _changed_documents(result.comparisons) + membership_section(result.comparisons))
    write_text_atomic(path, render(page), "--html")


def compare_summary(result: Any) -> list[tuple[str, str]]:
    """One summary row per comparison: the metric's values, the change with its interval
    (marked when it comes from too few documents) and the verdict."""
    rows = []
    for r, row in zip(result.comparisons, result.rows()):
        interval = row[result.columns.index("95% CI")]
        rows.append((r.name, f"{r.metric} {r.base_value:.4f} → {r.candidate_value:.4f} ({r.change * 100:+.2f}%, "
                             f"95% CI {interval}), {result.verdict(r)}"))
    return rows


def _changed_documents(comparisons: list[Any]) -> str:
    """The documents that changed most, per comparison and direction, with their id when the
    data has one; nothing at all when no comparison lists any (``--top-documents 0``)."""
    from lleval.report.compare import document_columns, document_rows

    blocks = []
    for c in comparisons:
        for title, docs in (("got worse", c.worst_documents), ("got better", c.best_documents)):
            if not docs:
                continue
            head = "".join(f"<th>{esc(column)}</th>" for column in document_columns(docs))
            rows = "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>"
                           for row in document_rows(docs))
            blocks.append(f"<h3>{esc(c.name)}: documents that {title}</h3><table class=\"changed\"><thead><tr>{head}"
                          f"</tr></thead><tbody>{rows}</tbody></table>")
    if not blocks:
        return ""
    return f'<section id="changed-documents"><h2>Documents that changed most</h2>{"".join(blocks)}</section>'



def membership_section(comparisons: list[Any]) -> str:
    """Each comparison's membership deltas (``compare`` of reports scored with --membership)
    as one table: the score, its documents, the means, the mean change and its interval;
    then the comparisons' notes (one side without --membership); nothing when there is neither."""
    rows = []
    for c in comparisons:
        for label, n, base, cand, delta, interval in (c.membership.rows() if c.membership is not None else []):
            rows.append(f'<tr><td>{esc(c.name)}</td><td>{esc(label)}</td><td>{n}</td><td>{esc(base)}</td>'
                        f'<td>{esc(cand)}</td><td>{esc(delta)}</td><td>{esc(interval)}</td></tr>')
    notes = "".join(f'<p class="note">note: {esc(c.name)}: {esc(note)}</p>' for c in comparisons for note in c.notes)
    if not rows and not notes:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("candidate", "score", "documents", "base mean", "candidate mean",
                                              "Δ mean", "95% CI"))
    table = (f'<table id="membership-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
             if rows else "")
    return (f'<section id="membership"><h2>Membership scores, candidate − base (a rise: more member-like)</h2>'
            f"{table}{notes}</section>")
