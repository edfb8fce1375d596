"""HTML reports opened in a real headless Chromium (Debian's ``chromium``, driven by Playwright)."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers import score_report_json, write_jsonl
from lleval.commands.score import evaluate
from lleval.config import EvalConfig
from lleval.data.spec import builtin_sample_path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TEXTS = [json.loads(line)["text"][: 120 + 40 * i] for i, line in enumerate(builtin_sample_path().read_text().splitlines())]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("LLEVAL_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
        pytest.skip("needs Debian's chromium (apt-get install -y chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            # Playwright gives the browser a fresh, empty profile of its own (--user-data-dir)
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
        )
        yield browser
        browser.close()


def _open(browser: Any, path: Path) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page, errors


def _not_blank(png: bytes) -> bool:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    low, high = image.getextrema()
    return image.size[0] > 100 and high - low > 100


@pytest.mark.browser
def test_score_report_in_chromium(browser: Any, tiny_loaded: Any, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    html = tmp_path / "r.html"
    report = evaluate(EvalConfig(dataset=data, html=str(html), html_docs=2, token_stats=True, max_length=32,
                                 stride=8, bootstrap=200, calibration=True, membership=True), loaded=tiny_loaded)
    page, errors = _open(browser, html)
    assert errors == []
    calibration = report.statistics["calibration"]
    assert page.locator("#calibration-chart rect.bin").count() == len([b for b in calibration["bins"] if b["tokens"]])
    assert page.locator("#calibration-diagonal").count() == 1
    box = page.locator("#calibration-chart").bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 100  # drawn, not collapsed
    heads = page.locator("#documents-table th").all_text_contents()
    for name, field in (("Min-K%++", "min_k_plus_plus"), ("Min-K%", "min_k_prob"), ("zlib ratio", "zlib_ratio")):
        column = heads.index(name) + 1
        page.locator(f"#documents-table th:nth-child({column})").click()  # sorts by it, highest first
        shown = [float(v) for v in page.locator(f"#documents-table tbody td:nth-child({column})").evaluate_all(
            "cells => cells.map(c => c.dataset.value)")]
        assert shown == sorted((d.membership[field] for d in report.documents), reverse=True)
    assert page.locator("#documents-table tbody tr").count() == len(report.documents)
    shown = page.locator("article.doc")
    assert shown.count() == 4  # the 2 most and the 2 least surprising documents
    by_index = {d.index: d for d in report.documents}
    for k in range(shown.count()):
        article = shown.nth(k)
        index = int(article.get_attribute("id").removeprefix("doc-"))
        assert article.locator(".t").count() == by_index[index].tokens  # one element per scored token
    tip = shown.first.locator(".t").first.get_attribute("title")
    assert "log-prob" in tip and "rank" in tip and "entropy" in tip
    full_bins = [b for b in report.by_context_length if b.tokens]
    assert page.locator("#curve-chart circle.point").count() == len(full_bins)
    page.locator("#documents-table th", has_text="perplexity").click()
    values = [float(v) for v in page.locator("#documents-table tbody td:nth-child(5)").evaluate_all(
        "cells => cells.map(c => c.dataset.value)")]
    assert values == sorted(values, reverse=True)
    page.locator("#documents-table th", has_text="text").click()  # the snippets sort as text
    snippets = page.locator("#documents-table tbody td.snippet").evaluate_all("cells => cells.map(c => c.textContent)")
    assert len(snippets) == len(report.documents) and all(snippets)
    assert snippets == sorted(snippets, key=lambda s: s.lower(), reverse=True) and errors == []
    last = max(k for k, b in enumerate(report.by_context_length) if b.tokens)
    assert page.locator("#curve-chart text.x-tick").count() == last + 1
    png = page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
    assert (tmp_path / "shot.png").stat().st_size > 10_000 and _not_blank(png)


@pytest.mark.browser
def test_inspect_and_compare_pages_in_chromium(browser: Any, tiny_loaded: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lleval.cli import main

    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:6])
    tokens = tmp_path / "t.parquet"
    report = evaluate(EvalConfig(dataset=data, tokens=str(tokens), output=None, bootstrap=100), loaded=tiny_loaded)
    (tmp_path / "base.json").write_text(report.to_json())
    result = CliRunner().invoke(main, ["inspect", str(tokens), "--html", str(tmp_path / "i.html"), "--html-docs", "1",
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    page, errors = _open(browser, tmp_path / "i.html")
    assert errors == [] and page.locator("#documents-table tbody tr").count() == len(report.documents)
    assert page.locator("#curve-chart circle.point").count() == len([b for b in report.by_context_length if b.tokens])
    assert page.locator("article.doc").count() == 2
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "base.json"), str(tmp_path / "base.json"),
                                       str(tmp_path / "base.json"), "--max-regression", "1", "--html",
                                       str(tmp_path / "c.html")])
    assert result.exit_code == 0, result.output
    page, errors = _open(browser, tmp_path / "c.html")
    assert errors == []
    assert page.locator("#compare-chart circle.point").count() == 2 and page.locator("#gate").count() == 1


# ------------------------------------------------ the pages' markup, parsed (no browser needed)

class _Markup(HTMLParser):
    """Every ``th``/``td``/``text`` element's class and text, under the nearest element with an id."""

    VOID = {"meta", "br", "img", "input", "link", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str | None, str | None]] = []  # (tag, id, class)
        self.cells: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        values = dict(attrs)
        self.stack.append((tag, values.get("id"), values.get("class")))
        if tag in ("th", "td", "text", "tr"):
            owner = next((i for _t, i, _c in reversed(self.stack) if i), None)
            self.cells.append({"tag": tag, "in": owner, "class": values.get("class"), "text": ""})

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self.cells and any(t in ("th", "td", "text") for t, _i, _c in self.stack[-2:]):
            self.cells[-1]["text"] += data


def _parse(path: Path) -> list[dict[str, Any]]:
    parser = _Markup()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.cells


def _table(cells: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The documents table: its header, then one list of cell texts per row."""
    mine = [c for c in cells if c["in"] == "documents-table"]
    head = [c["text"] for c in mine if c["tag"] == "th"]
    rows: list[list[str]] = []
    for c in mine:
        if c["tag"] == "tr":
            rows.append([])
        elif c["tag"] == "td":
            rows[-1].append(c["text"])
    return head, [r for r in rows if r]


def _is_snippet_of(snippet: str, text: str) -> bool:
    """A snippet is the text with runs of whitespace made one space, whole when that is at
    most 60 characters, else its opening (59 characters at most) and an ellipsis."""
    words = " ".join(text.split())
    if len(words) <= 60:
        return snippet == words
    return snippet.endswith("…") and len(snippet) <= 60 and words.startswith(snippet[:-1]) and len(snippet) > 50


@pytest.mark.parametrize("ids", [["doc-a", "doc-b", "doc-c", "doc-d"], [17, 4, 99, 0], None])
def test_documents_table_shows_ids_and_snippets(tiny_loaded: Any, tmp_path: Path, ids: list[Any] | None) -> None:
    texts = [TEXTS[0], "  Two\n\nlines\tand   spaces  ", TEXTS[2], TEXTS[3]]
    rows = [{"text": t} if ids is None else {"id": i, "text": t} for i, t in zip(ids or [None] * 4, texts)]
    html = tmp_path / "r.html"
    report = evaluate(EvalConfig(dataset=write_jsonl(tmp_path / "d.jsonl", rows), html=str(html), html_docs=1,
                                 max_length=32, bootstrap=0), loaded=tiny_loaded)
    head, table = _table(_parse(html))
    documents = report.to_dict()["documents"]
    assert [row[0] for row in table] == [str(d["index"]) for d in documents] == ["0", "1", "2", "3"]
    assert head[-1] == "text" and all(_is_snippet_of(row[-1], t) for row, t in zip(table, texts))
    assert table[1][-1] == "Two lines and spaces"
    if ids is None:
        assert "id" not in head and all("id" not in d for d in documents)
    else:
        assert head[1] == "id" and [row[1] for row in table] == [str(i) for i in ids]
        assert [d["id"] for d in documents] == ids  # the report carries them, as the data has them


def test_score_chart_axis_ends_at_the_last_bin_with_tokens(tiny_loaded: Any, tmp_path: Path) -> None:
    html = tmp_path / "r.html"
    texts = ["A short one.", "Another short text, a little longer than that."]
    report = evaluate(EvalConfig(dataset=write_jsonl(tmp_path / "d.jsonl", texts), html=str(html), max_length=64,
                                 bootstrap=0), loaded=tiny_loaded)
    bins = report.by_context_length
    last = max(k for k, b in enumerate(bins) if b.tokens)
    assert last < len(bins) - 1  # the JSON keeps the empty bins up to max_length
    ticks = [c["text"] for c in _parse(html) if c["in"] == "curve-chart" and c["class"] == "x-tick"]
    assert ticks == [str(b.context_min) for b in bins[: last + 1]]


def test_compare_chart_has_y_axis_values(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lleval.cli import main

    docs = [{"index": i, "log_likelihood": -100.0 - 3 * i, "tokens": 40 + i, "bytes": 160 + 4 * i, "words": 20}
            for i in range(12)]
    base = score_report_json(docs)
    worse = json.loads(json.dumps(base))
    for d in worse["documents"]:
        d["log_likelihood"] *= 1.0 + 0.01 * (d["index"] % 3)
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(worse))
    out = tmp_path / "c.html"
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                       "--html", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["comparisons"][0]
    ticks = [float(c["text"].rstrip("%")) for c in _parse(out) if c["in"] == "compare-chart" and c["class"] == "y-tick"]
    assert 3 <= len(ticks) <= 7 and ticks == sorted(ticks)
    low, high = (100 * v for v in row["relative_change_ci"])
    assert ticks[0] <= min(0.0, low) and ticks[-1] >= max(0.0, high, 100 * row["relative_change"])
    # round ticks: equal steps of 1, 2, 2.5 or 5 times a power of ten, on multiples of the step
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:])}
    assert len(steps) == 1
    step = steps.pop()
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5)), step
    assert all(math.isclose(t / step, round(t / step), abs_tol=1e-6) for t in ticks)


def test_inspect_page_shows_snippets_from_the_token_file(tiny_loaded: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lleval.cli import main

    texts = TEXTS[:5] + ["  Two\n\nlines\tand   spaces  "]
    tokens = tmp_path / "t.parquet"
    evaluate(EvalConfig(dataset=write_jsonl(tmp_path / "d.jsonl", texts), tokens=str(tokens), max_length=32,
                        bootstrap=0), loaded=tiny_loaded)
    result = CliRunner().invoke(main, ["inspect", str(tokens), "--html", str(tmp_path / "i.html"), "--format", "json"])
    assert result.exit_code == 0, result.output
    head, table = _table(_parse(tmp_path / "i.html"))
    assert "id" not in head and head[-1] == "text"
    assert len(table) == len(texts) and all(_is_snippet_of(row[-1], t) for row, t in zip(table, texts))


class _Bars(HTMLParser):
    """The reliability diagram's ``rect.bin`` attributes and the ids inside ``section#calibration``."""

    def __init__(self) -> None:
        super().__init__()
        self.bars: list[dict[str, str | None]] = []
        self.ids: set[str] = set()
        self.text: dict[str, str] = {}
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "rect" and values.get("class") == "bin":
            self.bars.append(values)
        if values.get("id"):
            self.ids.add(str(values["id"]))
            self._open = str(values["id"])

    def handle_data(self, data: str) -> None:
        if self._open in ("calibration-ece", "calibration-top1"):
            self.text[self._open] = self.text.get(self._open, "") + data

    def handle_endtag(self, tag: str) -> None:
        self._open = None


def test_reliability_diagram_draws_every_non_empty_bin(tiny_loaded: Any, tmp_path: Path) -> None:
    html = tmp_path / "r.html"
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    report = evaluate(EvalConfig(dataset=data, html=str(html), calibration=True, max_length=32, bootstrap=0),
                      loaded=tiny_loaded)
    block = report.statistics["calibration"]
    parser = _Bars()
    parser.feed(html.read_text(encoding="utf-8"))
    full = [b for b in block["bins"] if b["tokens"]]
    assert full and len(parser.bars) == len(full)
    for bar, b in zip(parser.bars, full):  # in bin order, each bar the bin's own numbers
        assert float(bar["data-low"]) == b["low"] and float(bar["data-high"]) == b["high"]
        assert float(bar["data-accuracy"]) == b["accuracy"] and float(bar["data-confidence"]) == b["confidence"]
        assert int(bar["data-tokens"]) == b["tokens"]
        assert 0.0 <= b["low"] <= b["confidence"] <= b["high"] <= 1.0  # a bin's mean confidence lies in it
        assert float(bar["height"]) >= 0.0
    heights = {float(b["accuracy"]): float(bar["height"]) for bar, b in zip(parser.bars, full)}
    ordered = [heights[a] for a in sorted(heights)]
    assert ordered == sorted(ordered)  # taller bars for higher accuracy: one scale for every bar
    assert sum(int(bar["data-tokens"]) for bar in parser.bars) == block["tokens"] == report.totals.tokens
    assert {"calibration", "calibration-chart", "calibration-diagonal"} <= parser.ids
    assert float(parser.text["calibration-ece"]) == pytest.approx(block["ece"], abs=5e-5)
    assert float(parser.text["calibration-top1"]) == pytest.approx(block["top1_accuracy"], abs=5e-5)
    plain = tmp_path / "p.html"
    evaluate(EvalConfig(dataset=data, html=str(plain), max_length=32, bootstrap=0), loaded=tiny_loaded)
    without = _Bars()
    without.feed(plain.read_text(encoding="utf-8"))
    assert without.bars == [] and "calibration" not in without.ids


@pytest.mark.browser
def test_kld_page_in_chromium(browser: Any, tiny_model_dir: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    from lleval.commands.kld import kl_divergence

    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:6])
    html = tmp_path / "k.html"
    report = kl_divergence(EvalConfig(dataset=data, model=str(tiny_llama_dir), html=str(html), max_length=32,
                                      bootstrap=100), str(tiny_model_dir))
    page, errors = _open(browser, html)
    assert errors == []
    kl = report.kl_divergence
    marks = page.locator("#kld-chart circle.point").evaluate_all(
        "cells => cells.map(c => [c.dataset.percentile, parseFloat(c.dataset.kl)])")
    assert dict(marks) == {"min": kl["min"], "median": kl["median"], "max": kl["max"], **kl["percentiles"]}
    heights = [page.locator(f'#kld-chart circle.point[data-percentile="{name}"]').get_attribute("cy")
               for name in ("p10", "median", "p90", "p99")]
    assert [float(h) for h in heights] == sorted((float(h) for h in heights), reverse=True)  # higher KL, higher up
    assert page.locator("#kld-mean").count() == 1 and page.locator("#documents-table").count() == 0
