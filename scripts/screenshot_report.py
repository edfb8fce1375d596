"""Regenerate docs/report.png: the HTML report of the built-in default, as Chromium shows it.

Runs ``lleval score --token-stats --tokens t.parquet --html r.html`` on the
built-in model and sample prose, opens the page in Debian's headless
chromium (Playwright) and saves a screenshot of its top.

    .venv/bin/python scripts/screenshot_report.py            # about a minute here
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "docs" / "report.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--height", type=int, default=2200, help="pixels of the page to keep")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lleval-shot-"))
    html = work / "report.html"
    lleval = str(Path(sys.executable).parent / "lleval")
    subprocess.run([lleval, "score", "-q", "--token-stats", "--tokens", str(work / "t.parquet"), "--html", str(html),
                    "--html-docs", "2"], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                   stdout=subprocess.DEVNULL)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1180, "height": args.height})
        page.goto(html.resolve().as_uri())
        page.wait_for_load_state("load")
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.output, full_page=False)
        browser.close()
    print(f"wrote {args.output} (page: {html})")


if __name__ == "__main__":
    main()
