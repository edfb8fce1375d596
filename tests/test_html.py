"""HTML reports opened in a real headless Chromium (Debian's ``chromium``, driven by Playwright)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers import write_jsonl
from lleval.api import evaluate
from lleval.config import EvalConfig
from lleval.data import builtin_sample_path

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
                                 stride=8, bootstrap=200), loaded=tiny_loaded)
    page, errors = _open(browser, html)
    assert errors == []
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
