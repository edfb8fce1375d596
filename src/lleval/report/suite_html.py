"""The HTML page of a suite run (``lleval score -m A -m B -d X -d Y --html PAGE``): one
self-contained file, inline CSS, SVG and JavaScript, no network.

It holds, top to bottom:

- the suite's summary and notes (different tokenizers: compare bits per byte);
- the models x datasets matrix (tokens, perplexity and bits per byte with their 95%
  intervals), models ordered by step when every model has one, and each model's macro
  bits per byte over datasets with its interval;
- when models have steps (labels ``step-1000``, folders ``checkpoint-1000``, revisions
  ``step1000``, ``--step``): the trend chart, bits per byte against the step (linear
  axis), one line per dataset, each cell a point with its 95% interval;
- every cell's own sections, collapsed: what ``lleval score --html`` shows for that pair
  (summary, loss by context length, the sortable documents table and, with ``--html-docs``,
  the most and least surprising documents token by token), each element id prefixed by
  ``cell-K-`` so the page's ids stay unique.

Size: the cells' sections are each a single run's page (about 400 bytes a document,
170 bytes a shown token), so a suite of C cells weighs C single pages; ``--html-docs 0``
leaves the token-by-token documents out.
"""

from __future__ import annotations

from typing import Any

from lleval.report.html import Page, _grid, _summary as summary_section, body, document, esc, score_page
from lleval.report.output import write_text_atomic
from lleval.report.render import fmt
from lleval.report.suite import SuiteCell, SuiteReport, macro_columns, macro_rows, matrix_columns, matrix_rows

#: one colour per dataset, in the suite's order (repeating after eight)
PALETTE = ("#c0392b", "#2e86c1", "#27ae60", "#8e44ad", "#d68910", "#17a589", "#7f8c8d", "#a04000")

ERROR_CHARS = 90  # of a failed cell's error in the matrix (the whole of it is in the cell's section)

SUITE_STYLE = """
table.matrix td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.matrix td.failed { color: #c0392b; max-width: 40rem; }
ul.trend-legend { list-style: none; padding: 0; margin: .3rem 0 0 56px; }
ul.trend-legend li { display: inline-block; margin-right: 1.2rem; }
ul.trend-legend li span { display: inline-block; width: 1.4rem; height: 3px; vertical-align: middle; margin-right: .35rem; }
section.cell { margin: .4rem 0; } section.cell > details { border: 1px solid #e4e4e4; border-radius: 6px; padding: .3rem .8rem; }
section.cell > details > summary { cursor: pointer; font-weight: 600; }
"""


def suite_page(report: SuiteReport) -> str:
    """The suite's page as one HTML document."""
    title = report.title
    sections = [_summary(report), _matrix(report), _macro(report), trend_chart(report), _cells(report)]
    return document(title, sections, SUITE_STYLE)


def write_suite_html(report: SuiteReport, path: str) -> None:
    """Write the suite's page (atomically; an `OutputError` when it cannot be written)."""
    write_text_atomic(path, suite_page(report), "--html")


def ordered_cells(report: SuiteReport) -> list[SuiteCell]:
    """The cells in the matrix's order (models by step when every model has one, then datasets);
    a pair the run never reached (stopped early) has no cell and is left out."""
    cells = (report.cell(m.label, d) for m in report.ordered_models for d in report.datasets)
    return [c for c in cells if c is not None]


def trend_points(report: SuiteReport) -> list[dict[str, Any]]:
    """The trend chart's points: every matrix cell of a model with a step and a bits per byte
    (dataset, model, step, bits_per_byte, interval), by dataset in the suite's order, then step."""
    rows = [r for r in report.matrix() if r["step"] is not None and r["bits_per_byte"] is not None]
    order = {d: k for k, d in enumerate(report.datasets)}
    rows.sort(key=lambda r: (order[r["dataset"]], r["step"]))
    return [{"dataset": r["dataset"], "model": r["model"], "step": r["step"], "bits_per_byte": r["bits_per_byte"],
             "interval": r["bits_per_byte_ci"]} for r in rows]


def _summary(report: SuiteReport) -> str:
    counts = report.counts
    rows = [("models", ", ".join(m.label + ("" if m.step is None else f" (step {m.step})")
                                 for m in report.ordered_models)),
            ("datasets", ", ".join(report.datasets)),
            ("cells", f"{sum(c.report is not None for c in report.cells)} scored of "
                      f"{len(report.models) * len(report.datasets)}" + ("" if report.complete else " (incomplete)")),
            ("work done once", f"{counts.get('model_loads', 0)} model loads, {counts.get('tokenizations', 0)} "
                               f"tokenizations, {counts.get('replays', 0)} replays"),
            ("intervals", f"95% bootstrap, {report.bootstrap.get('resamples')} resamples (unit: "
                          f"{report.bootstrap.get('unit', 'document')})" if report.bootstrap.get("resamples")
             else "none (--bootstrap 0)"),
            ("lleval", f"{report.lleval_version}, {report.created}")]
    return summary_section(Page(title="", summary=rows, notes=list(report.notes) + report.interval_notes()))


def _matrix(report: SuiteReport) -> str:
    """The matrix with each row's model, step and dataset as data attributes, linked to its cell."""
    anchors = {(c.model, c.dataset): f"cell-{k}" for k, c in enumerate(ordered_cells(report))}
    body_rows = []
    for row, shown in zip(report.matrix(), matrix_rows(report)):
        model, dataset = row["model"], row["dataset"]
        anchor = anchors.get((model, dataset))
        name = f'<a href="#{anchor}">{esc(model)}</a>' if anchor else esc(model)
        step = "" if row["step"] is None else str(row["step"])
        cell = report.cell(model, dataset)
        if cell is None or cell.report is None:  # its error in full in its cell's section and on hover
            error = shown[3]
            values = (f'<td></td><td class="failed" colspan="2" title="{esc(error)}">'
                      f"{esc(error if len(error) <= ERROR_CHARS else error[: ERROR_CHARS - 1] + '…')}</td>")
        else:
            values = "".join(f'<td class="num">{esc(v)}</td>' for v in shown[2:])
        body_rows.append(f'<tr data-model="{esc(model)}" data-dataset="{esc(dataset)}" data-step="{step}" '
                         f'data-bpb="{"" if row["bits_per_byte"] is None else repr(row["bits_per_byte"])}">'
                         f"<td>{name}</td><td class=\"num\">{step}</td><td>{esc(dataset)}</td>{values}</tr>")
    columns = matrix_columns(report)
    head = "".join(f"<th>{esc(c)}</th>" for c in (columns[0], "step", *columns[1:]))
    order = " ordered by step" if report.has_trend else ""
    return (f'<section id="matrix"><h2>Models x datasets{order}</h2><table id="matrix-table" class="matrix">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body_rows)}</tbody></table></section>')


def _macro(report: SuiteReport) -> str:
    rows = "".join(f'<tr data-model="{esc(r[0])}"><td>{esc(r[0])}</td><td class="num">{esc(r[1])}</td>'
                   f'<td class="num">{esc(r[2])}</td></tr>' for r in macro_rows(report))
    head = "".join(f"<th>{esc(c)}</th>" for c in macro_columns(report))
    return (f'<section id="macro"><h2>Macro average over datasets</h2><p class="note">Each dataset weighs the same; '
            "the interval is a bootstrap over documents within each dataset.</p>"
            f'<table id="macro-table" class="matrix"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
            "</section>")


def trend_chart(report: SuiteReport) -> str:
    """Bits per byte against the step (linear x axis), one polyline per dataset, a point and
    its 95% interval per cell; empty when no model has a step."""
    if not any(m.step is not None for m in report.models):
        return ""
    points = trend_points(report)
    unplaced = [m.label for m in report.ordered_models if m.step is None]
    note = (f'<p class="note">Models without a step are not on the chart: {esc(", ".join(unplaced))}.</p>'
            if unplaced else "")
    if not points:
        return (f'<section id="trend"><h2>Bits per byte by step</h2><p class="note">No cell with a step has bits '
                f"per byte (failed cells, or a protocol that leaves tokens unscored).</p>{note}</section>")
    svg = _trend_svg(report.datasets, points)
    legend = "".join(f'<li data-dataset="{esc(d)}"><span style="background:{_colour(report.datasets, d)}"></span>'
                     f"{esc(d)}</li>" for d in report.datasets if any(p["dataset"] == d for p in points))
    return (f'<section id="trend"><h2>Bits per byte by step</h2>{svg}<ul class="trend-legend">{legend}</ul>'
            '<p class="note">Each point is a cell: its bits per byte and the 95% bootstrap interval over the '
            f"dataset's documents. Lower is better.</p>{note}</section>")


def _colour(datasets: list[str], dataset: str) -> str:
    return PALETTE[datasets.index(dataset) % len(PALETTE)]


def _trend_svg(datasets: list[str], points: list[dict[str, Any]]) -> str:
    width, height, left, right, up, down = 760, 320, 64, 24, 16, 56
    steps = [p["step"] for p in points]
    first, last = min(steps), max(steps)
    values = [p["bits_per_byte"] for p in points] + [end for p in points if p["interval"] for end in p["interval"]
                                                     if end is not None]
    top, bottom = max(values), min(values)
    pad = (top - bottom) * 0.1 or 0.05 * abs(top) or 0.5
    top, bottom = top + pad, max(0.0, bottom - pad)

    def at(step: float) -> float:
        inner = width - left - right
        return left + inner / 2 if last == first else left + inner * (0.04 + 0.92 * (step - first) / (last - first))

    def y(v: float) -> float:
        return up + (height - up - down) * (top - v) / (top - bottom)

    marks, lines = [], []
    shown = [d for d in datasets if any(p["dataset"] == d for p in points)]
    for k, dataset in enumerate(shown):
        mine = [p for p in points if p["dataset"] == dataset]
        colour, dodge = _colour(datasets, dataset), 4.0 * (k - (len(shown) - 1) / 2)  # intervals side by side

        def x(step: float, dodge: float = dodge) -> float:
            return at(step) + dodge

        line = " ".join(f"{x(p['step']):.1f},{y(p['bits_per_byte']):.1f}" for p in mine)
        lines.append(f'<polyline class="trend" data-dataset="{esc(dataset)}" points="{line}" fill="none" '
                     f'stroke="{colour}" stroke-width="1.5"/>')
        marks += [_trend_point(p, colour, x, y) for p in mine]
    ticks = "".join(f'<text class="x-tick" x="{at(s):.1f}" y="{height - down + 16}" text-anchor="middle">{s:,}</text>'
                    for s in _step_ticks(sorted(set(steps))))
    grid = _grid(bottom, top, y, left, width - right, "{:.3f}")
    return (f'<svg id="trend-chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="bits per byte by training step">{grid}{"".join(lines)}{"".join(marks)}{ticks}'
            f'<text x="{(width + left) / 2}" y="{height - 12}" text-anchor="middle">training step</text>'
            f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">bits per '
            "byte (95% interval)</text></svg>")


def _trend_point(point: dict[str, Any], colour: str, x: Any, y: Any) -> str:
    """One cell on the trend chart: its interval line (when it has one) and its point."""
    cx, cy = x(point["step"]), y(point["bits_per_byte"])
    interval = point["interval"]
    shown = f"{point['model']} × {point['dataset']}, step {point['step']:,}: {fmt(point['bits_per_byte'])} bits/byte"
    bar = ""
    if interval and None not in interval:
        low, high = float(interval[0]), float(interval[1])
        shown += f" [{fmt(low)}, {fmt(high)}]"
        bar = (f'<line class="interval" data-dataset="{esc(point["dataset"])}" data-step="{point["step"]}" '
               f'x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(low):.1f}" y2="{y(high):.1f}" stroke="{colour}" '
               'stroke-width="2" stroke-opacity="0.6"/>')
    return (f'{bar}<circle class="point" data-dataset="{esc(point["dataset"])}" data-model="{esc(point["model"])}" '
            f'data-step="{point["step"]}" data-bpb="{point["bits_per_byte"]!r}" cx="{cx:.1f}" cy="{cy:.1f}" r="4" '
            f'fill="{colour}"><title>{esc(shown)}</title></circle>')


def _step_ticks(steps: list[int]) -> list[int]:
    """The x axis' labels: every step when there are at most eight, else five evenly spaced."""
    if len(steps) <= 8:
        return steps
    first, last = steps[0], steps[-1]
    return [round(first + (last - first) * k / 4) for k in range(5)]


def _cells(report: SuiteReport) -> str:
    """Each cell's own sections (those of ``lleval score --html``), collapsed, ids scoped by cell."""
    sections = []
    for k, cell in enumerate(ordered_cells(report)):
        data = f'id="cell-{k}" data-model="{esc(cell.model)}" data-dataset="{esc(cell.dataset)}"'
        title = f"{esc(cell.model)} × {esc(cell.dataset)}"
        if cell.report is None:
            sections.append(f'<section class="cell" {data}><details><summary>{title}: failed</summary>'
                            f'<p class="note">{esc(cell.error or "not scored")}</p></details></section>')
            continue
        kept = cell.report.page_samples
        page = score_page(cell.report, kept.samples() if kept is not None else [],
                          kept.snippets if kept is not None else None)
        bpb = cell.report.metrics.get("bits_per_byte")
        shown = f"{title} — {fmt(bpb)} bits/byte" if bpb is not None else title
        sections.append(f'<section class="cell" {data}><details><summary>{shown}</summary>'
                        f'{body(page, f"cell-{k}-")}</details></section>')
    return f'<section id="cells"><h2>Cells</h2>{"".join(sections)}</section>' if sections else ""
