"""The HTML page of a suite (issue 19): the matrix, the trend chart of bits per byte by step,
and every cell's own sections, checked in the parsed markup and in headless Chromium."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import write_jsonl
from test_html import _open, browser  # noqa: F401  (the module's headless Chromium fixture)

TEXTS_A = ["The cat sat on the mat. It was warm and the sun was out.", "Dogs bark at night when the moon is full.",
           "A third document with a few more words in it, to make it long enough."]
TEXTS_B = ["Rain falls on the hills and the rivers run to the sea.", "Stars are far away and very bright tonight."]
STEPS = [3000, 1000, 2000]  # the order the models are given in: not the order of their steps


@pytest.fixture(scope="module")
def sweep(tiny_model_dir: Path, tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three 'checkpoints' (steps out of order; the tiny GPT-2 and Llama share a tokenizer),
    two datasets, and two models whose names hold no step."""
    root = tmp_path_factory.mktemp("sweep-html")
    models = []
    for step, source in zip(STEPS, (tiny_model_dir, tiny_llama_dir, tiny_model_dir)):
        shutil.copytree(source, root / f"checkpoint-{step}")
        models.append(str(root / f"checkpoint-{step}"))
    plain = []
    for name, source in (("model-a", tiny_model_dir), ("model-b", tiny_llama_dir)):
        shutil.copytree(source, root / name)
        plain.append(str(root / name))
    return {"models": models, "plain": plain, "root": root,
            "datasets": [write_jsonl(root / "a.jsonl", TEXTS_A), write_jsonl(root / "b.jsonl", TEXTS_B)]}


class Markup(HTMLParser):
    """Every element's tag and attributes, in document order, with the ids and classes of the
    elements it sits in."""

    VOID = {"meta", "br", "img", "input", "link", "hr"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.open: list[dict[str, Any]] = []
        self.elements: list[dict[str, Any]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        element = {"tag": tag, "attrs": values, "classes": set(values.get("class", "").split()),
                   "within": [(e["attrs"].get("id"), e["classes"], e["attrs"]) for e in self.open]}
        self.elements.append(element)
        if tag not in self.VOID:
            self.open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.open.pop()

    def handle_endtag(self, tag: str) -> None:
        if any(e["tag"] == tag for e in self.open):
            while self.open.pop()["tag"] != tag:  # an element left open inside it
                pass

    def find(self, tag: str, cls: str | None = None, inside: str | None = None) -> list[dict[str, Any]]:
        """Elements of ``tag`` (with class ``cls``), under the element of id ``inside``."""
        return [e for e in self.elements if e["tag"] == tag and (cls is None or cls in e["classes"])
                and (inside is None or any(i == inside for i, _c, _a in e["within"]))]


def _run(sweep: dict[str, Any], models: list[str], html: Path | None = None, **config: Any) -> Any:
    from lleval.commands.suite import run_suite, suite_from_flags
    from lleval.config import EvalConfig

    settings = {"bootstrap": 100, "max_length": 16, "stride": 8, **config}
    return run_suite(suite_from_flags(models, sweep["datasets"]),
                     EvalConfig(html=None if html is None else str(html), **settings))


def test_trend_points_are_the_matrix_cells_by_step(sweep: dict[str, Any], tmp_path: Path) -> None:
    """Each (model with a step, dataset) cell is one point of the chart at (step, bits per byte)
    of its own report; each dataset is one polyline through its points by step, each point has
    its interval line; the matrix rows and the cells' sections go by step."""
    page = tmp_path / "suite.html"
    report = _run(sweep, sweep["models"], page, html_docs=1)
    markup = Markup(page.read_text())
    expected = {(c.dataset, int(Path(next(m for m in sweep["models"] if Path(m).name == c.model)).name.split("-")[1]),
                 c.report.metrics["bits_per_byte"]) for c in report.cells}  # the step read off the folder name
    points = markup.find("circle", "point", inside="trend-chart")
    shown = [(p["attrs"]["data-dataset"], int(p["attrs"]["data-step"]), float(p["attrs"]["data-bpb"])) for p in points]
    assert len(shown) == 6 and set(shown) == expected
    for dataset in ("a", "b"):
        steps = [step for d, step, _ in shown if d == dataset]
        assert steps == sorted(STEPS)
    lines = markup.find("polyline", "trend", inside="trend-chart")
    assert sorted(line["attrs"]["data-dataset"] for line in lines) == ["a", "b"]
    for line in lines:
        xs = [float(pair.split(",")[0]) for pair in line["attrs"]["points"].split()]
        assert len(xs) == len(STEPS) and xs == sorted(xs)
    assert len(markup.find("line", "interval", inside="trend-chart")) == 6
    legend = [e["attrs"]["data-dataset"] for e in markup.find("li") if "trend-legend" in e["within"][-1][1]]
    assert legend == ["a", "b"]
    rows = markup.find("tr", inside="matrix-table")[1:]  # the header row first
    assert [int(r["attrs"]["data-step"]) for r in rows] == sorted(STEPS * 2)
    cells = markup.find("section", "cell")
    assert [(c["attrs"]["data-model"], c["attrs"]["data-dataset"]) for c in cells] == [
        (f"checkpoint-{s}", d) for s in sorted(STEPS) for d in ("a", "b")]


def test_each_cell_holds_its_single_run_sections_with_ids_of_its_own(sweep: dict[str, Any], tmp_path: Path,
                                                                      monkeypatch: Any) -> None:
    """Every cell section holds its summary, its loss-by-context chart, a documents table with
    one row per document of its report and its 2 token-by-token documents (--html-docs 1);
    no id repeats on the page, and no cell wrote a page of its own."""
    from lleval.report import html

    single_pages: list[str] = []
    monkeypatch.setattr(html, "write_score_html", lambda *args, **kwargs: single_pages.append(args[2]))
    page = tmp_path / "suite.html"
    report = _run(sweep, sweep["models"], page, html_docs=1)
    assert single_pages == []
    markup = Markup(page.read_text())
    ids = [e["attrs"]["id"] for e in markup.elements if "id" in e["attrs"]]
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.html"]
    for k, cell in enumerate(markup.find("section", "cell")):
        found = report.cell(cell["attrs"]["data-model"], cell["attrs"]["data-dataset"]).report
        scope = f"cell-{k}-"
        assert markup.find("table", "summary", inside=f"{scope}summary")
        assert len(markup.find("circle", "point", inside=f"{scope}curve-chart")) == len(
            [b for b in found.by_context_length if b.tokens])
        rows = markup.find("tr", inside=f"{scope}documents-table")[1:]
        assert len(rows) == len(found.documents)
        assert len(markup.find("article", "doc", inside=f"{scope}tokens")) == 2
        assert markup.find("svg", inside=cell["attrs"]["id"])


def test_no_steps_no_trend_chart_and_a_failed_cell(sweep: dict[str, Any], tmp_path: Path) -> None:
    """Models whose names hold no step: the page has the matrix and the cells but no trend
    chart; a failed cell (a fake error in place of a report) is a section with its error, no
    point, and the rest of the page stands."""
    from lleval.report.suite import SuiteCell
    from lleval.report.suite_html import suite_page

    report = _run(sweep, sweep["plain"])
    markup = Markup(suite_page(report))
    assert markup.find("svg") and not markup.find("svg", inside="trend") and not markup.find("section", "trend")
    assert not [e for e in markup.elements if e["attrs"].get("id") in ("trend", "trend-chart")]
    assert len(markup.find("section", "cell")) == 4
    stepped = _run(sweep, sweep["models"][:2])
    broken = dataclasses.replace(stepped, cells=[SuiteCell(stepped.cells[0].model, stepped.cells[0].dataset, None,
                                                           "model did not load: boom")] + stepped.cells[1:])
    markup = Markup(suite_page(broken))
    assert len(markup.find("circle", "point", inside="trend-chart")) == 3
    sections = markup.find("section", "cell")
    failed = [c for c in sections if (c["attrs"]["data-model"], c["attrs"]["data-dataset"]) == (
        broken.cells[0].model, broken.cells[0].dataset)]
    assert len(sections) == 4 and len(failed) == 1
    inside = failed[0]["attrs"]["id"]
    assert not markup.find("svg", inside=inside) and not markup.find("table", inside=inside)
    assert markup.find("p", "note", inside=inside)
    others = [c["attrs"]["id"] for c in sections if c is not failed[0]]
    assert all(markup.find("table", "documents", inside=i) for i in others)


def test_models_without_a_step_are_left_off_the_chart(sweep: dict[str, Any]) -> None:
    """One model with a step (given by hand), one without: the chart holds the stepped model's
    cells alone, one single-point line per dataset, and the page names the model left off."""
    from lleval.report.suite import SuiteModel
    from lleval.report.suite_html import suite_page

    report = _run(sweep, sweep["plain"])
    first, second = report.models
    mixed = dataclasses.replace(report, models=[SuiteModel(first.label, first.model, None, 500), second])
    markup = Markup(suite_page(mixed))
    points = markup.find("circle", "point", inside="trend-chart")
    expected = {(c.dataset, 500, c.report.metrics["bits_per_byte"]) for c in report.cells if c.model == first.label}
    assert {(p["attrs"]["data-dataset"], int(p["attrs"]["data-step"]), float(p["attrs"]["data-bpb"]))
            for p in points} == expected and len(points) == 2
    lines = markup.find("polyline", "trend", inside="trend-chart")
    assert [len(line["attrs"]["points"].split()) for line in lines] == [1, 1]
    assert markup.find("p", "note", inside="trend")


def test_page_from_saved_suite_json(sweep: dict[str, Any], tmp_path: Path) -> None:
    """``lleval inspect suite.json --html page.html``: the page of a saved suite report has the
    same trend points as the run's own (the token-by-token samples are not in the JSON)."""
    from lleval.cli import main

    page, saved = tmp_path / "run.html", tmp_path / "suite.json"
    report = _run(sweep, sweep["models"][:2], page)
    saved.write_text(report.to_json())
    result = CliRunner().invoke(main, ["inspect", str(saved), "--html", str(tmp_path / "again.html")])
    assert result.exit_code == 0, result.output

    def points(path: Path) -> list[tuple[str, str, str]]:
        return [(p["attrs"]["data-dataset"], p["attrs"]["data-step"], p["attrs"]["data-bpb"])
                for p in Markup(path.read_text()).find("circle", "point", inside="trend-chart")]

    assert points(tmp_path / "again.html") == points(page) and len(points(page)) == 4
    result = CliRunner().invoke(main, ["inspect", str(saved), "--doc", "0"])
    assert result.exit_code == 2 and "holds no tokens" in result.output
    single = tmp_path / "score.json"
    single.write_text(json.dumps(report.cells[0].report.to_dict()))
    result = CliRunner().invoke(main, ["inspect", str(single), "--html", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and "'score' report" in result.output and not (tmp_path / "x.html").exists()


@pytest.mark.browser
def test_suite_page_in_chromium(browser: Any, sweep: dict[str, Any], tmp_path: Path) -> None:
    """``lleval score -m ... -m ... -d ... -d ... --html``: the page loads without errors, holds
    one point per cell and one polyline per dataset, one section per cell; a cell's documents
    table sorts by a column once its section is opened."""
    from lleval.cli import main

    page_path, out = tmp_path / "suite.html", tmp_path / "suite.json"
    args = ["score", "-q", "--bootstrap", "100", "--max-length", "16", "--stride", "8", "--html", str(page_path),
            "--html-docs", "1", "-o", str(out), "--format", "json"]
    for model in sweep["models"]:
        args += ["-m", model]
    for dataset in sweep["datasets"]:
        args += ["-d", dataset]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    page, errors = _open(browser, page_path)
    assert errors == []
    assert page.locator("#trend-chart circle.point").count() == len(data["matrix"]) == 6
    assert page.locator("#trend-chart polyline.trend").count() == 2
    assert page.locator("#trend-chart line.interval").count() == 6
    assert page.locator("section.cell").count() == 6
    cell = page.locator("section.cell").nth(1)
    cell.locator("summary").click()
    header = cell.locator("table.documents th", has_text="perplexity")
    header.click()
    values = [float(v) for v in cell.locator("table.documents tbody td:nth-child(5)").evaluate_all(
        "cells => cells.map(c => c.dataset.value)")]
    model, dataset = cell.get_attribute("data-model"), cell.get_attribute("data-dataset")
    scored = next(c["report"] for c in data["cells"] if (c["model"], c["dataset"]) == (model, dataset))
    assert len(values) == len(scored["documents"]) > 1
    assert values == sorted(values, reverse=True)  # the column of its own table, not the page's fifth header
    header.click()
    values = [float(v) for v in cell.locator("table.documents tbody td:nth-child(5)").evaluate_all(
        "cells => cells.map(c => c.dataset.value)")]
    assert values == sorted(values) and errors == []
