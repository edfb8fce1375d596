"""`lleval compare` as a CI job reads it: documents named by their id, a verdict of its own for a
change over the limit that --require-significant lets pass, intervals from too few documents
marked, JUnit XML, GitHub annotations, and the metric gated chosen with --metric."""

from __future__ import annotations

import copy
import json
import math
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

from helpers import score_report_json
from lleval.cli import main
from lleval.commands.compare import compare_reports
from lleval.metrics import MIN_INTERVAL_DOCUMENTS
from lleval.report.compare import ComparisonReport
from lleval.report.score import Report

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "src" / "lleval" / "schemas" / "compare.schema.json")
                    .read_text())


def make_report(n_docs: int = 40, seed: int = 0, ids: list[Any] | None = None, tokenizer: str = "tok-a",
                scale: float = 1.0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n_docs):
        tokens = int(rng.integers(50, 300))
        doc: dict[str, Any] = {"index": i, "log_likelihood": -tokens * float(rng.uniform(2.0, 3.5)) * scale,
                               "tokens": tokens, "bytes": tokens * 4, "words": tokens // 2}
        if ids is not None:
            doc["id"] = ids[i]
        docs.append(doc)
    return score_report_json(docs, tokenizer)


def write(tmp_path: Path, name: str, data: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def run(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["compare", *args], env=env, catch_exceptions=False)


def worsen(report: dict[str, Any], factors: dict[int, float]) -> dict[str, Any]:
    """A copy of ``report`` whose document ``i`` has its log-likelihood times ``factors[i]``."""
    out = copy.deepcopy(report)
    for d in out["documents"]:
        d["log_likelihood"] *= factors.get(d["index"], 1.0)
    return out


class Markup(HTMLParser):
    """Each element's tag, id, class and text, and the id of the section it is in."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []
        self.stack: list[dict[str, Any]] = []
        self.section = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section":
            self.section = found.get("id") or ""
        element = {"tag": tag, "id": found.get("id"), "class": found.get("class"), "text": "", "section": self.section}
        self.elements.append(element)
        if tag not in ("br", "meta", "line", "circle", "polyline", "polygon", "rect"):
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self.stack:
            element["text"] += data


def parse(path: Path) -> list[dict[str, Any]]:
    parser = Markup()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.elements


# --- item 3: documents named by their id ---------------------------------------------------------

@pytest.mark.parametrize("ids", [[f"doc-{i:02d}" for i in range(40)], [1000 + 7 * i for i in range(40)]])
def test_changed_documents_carry_their_id_in_every_format(tmp_path: Path, ids: list[Any]) -> None:
    base = make_report(ids=ids)
    cand = worsen(base, {3: 1.2, 17: 1.1, 25: 0.8})
    out, page = tmp_path / "c.json", tmp_path / "c.html"
    result = run([write(tmp_path, "a.json", base), write(tmp_path, "b.json", cand), "-o", str(out), "--html",
                  str(page), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    jsonschema.validate(data, SCHEMA)
    row = data["comparisons"][0]
    # worse: NLL rose (3 and 17), larger rise in nats first; better: 25
    rise = {i: -base["documents"][i]["log_likelihood"] * (f - 1) for i, f in ((3, 1.2), (17, 1.1))}
    worst = sorted(rise, key=lambda i: -rise[i])
    assert [(d["index"], d["id"]) for d in row["worst_documents"]] == [(i, ids[i]) for i in worst]
    assert [(d["index"], d["id"]) for d in row["best_documents"]] == [(25, ids[25])]
    # the page's tables of changed documents: an id column holding each document's id
    cells = [e for e in parse(page) if e["section"] == "changed-documents"]
    heads = [e["text"] for e in cells if e["tag"] == "th"]
    assert heads.count("id") == 2 and heads.count("document") == 2
    rows = [[c["text"] for c in cells[k + 1:] if c["tag"] == "td"][:4] for k, e in enumerate(cells) if e["tag"] == "tr"
            and any(c["tag"] == "td" for c in cells[k + 1:k + 2])]
    assert [r[:2] for r in rows] == [[str(i), str(ids[i])] for i in worst + [25]]
    # the result read back renders the same rows with ids in the table and markdown too
    report = ComparisonReport.from_dict(data)
    from lleval.report.compare import document_columns, document_rows

    assert document_columns(report.comparisons[0].worst_documents)[:2] == ("document", "id")
    assert [r[:2] for r in document_rows(report.comparisons[0].worst_documents)] == [(str(i), str(ids[i]))
                                                                                     for i in worst]
    assert f"| 3 | {ids[3]} |" in result.stdout  # the markdown row of the rendering itself


def test_documents_without_ids_get_no_id_column(tmp_path: Path) -> None:
    base = make_report()
    row = compare_reports(*[Report.from_dict(r) for r in (base, worsen(base, {2: 1.3}))]).to_dict()
    assert row["worst_documents"][0]["index"] == 2 and "id" not in row["worst_documents"][0]
    from lleval.report.compare import document_columns

    assert document_columns(row["worst_documents"]) == ("document", "Δ nats", "Δ bits/byte")


# --- item 4: a gate exceeded but forgiven by --require-significant ----------------------------------

def _forgiven_pair(tmp_path: Path) -> tuple[str, str, float]:
    """Two reports whose change is small and noisy (its interval straddles 0), and the change."""
    base = make_report(n_docs=30)
    noisy = worsen(base, {i: 1.06 if i % 2 else 0.95 for i in range(30)})  # worse on half, better on half
    change = compare_reports(*[Report.from_dict(r) for r in (base, noisy)]).change
    assert change > 0
    return write(tmp_path, "a.json", base), write(tmp_path, "b.json", noisy), change


def test_over_the_limit_but_not_significant_has_a_verdict_of_its_own(tmp_path: Path) -> None:
    base, cand, change = _forgiven_pair(tmp_path)
    limit = change * 100 / 2
    out, page, junit = tmp_path / "c.json", tmp_path / "c.html", tmp_path / "j.xml"
    result = run([base, cand, "--max-regression", f"{limit}", "--require-significant", "-o", str(out),
                  "--html", str(page), "--junit", str(junit), "--format", "markdown"])
    assert result.exit_code == 0, result.output  # it passes: that is what --require-significant asks
    data = json.loads(out.read_text())
    jsonschema.validate(data, SCHEMA)
    row = data["comparisons"][0]
    assert row["relative_change_ci"][0] < 0 < row["relative_change_ci"][1]  # not significant
    assert (row["exceeds_limit"], row["regressed"], row["verdict"]) == (True, False, "over_limit_not_significant")
    assert data["passed"]
    report = ComparisonReport.from_dict(data)
    assert report.rows()[0][-1].startswith("over the limit, not significant")  # table and markdown verdict
    assert "over the limit, not significant" in result.stdout  # the markdown's verdict cell
    assert "over the limit, not significant:" in result.stderr and "--require-significant" in result.stderr
    summary = [e["text"] for e in parse(page) if e["section"] == "summary" and e["tag"] == "td"]
    assert any("over the limit, not significant" in text for text in summary)
    cases = ET.parse(junit).getroot().findall("./testsuite/testcase")
    assert len(cases) == 1 and cases[0].find("failure") is None
    assert "--require-significant" in (cases[0].findtext("system-err") or "")


def test_without_require_significant_the_same_change_regresses(tmp_path: Path) -> None:
    base, cand, change = _forgiven_pair(tmp_path)
    result = run([base, cand, "--max-regression", f"{abs(change) * 50}", "--format", "json"])
    assert result.exit_code == 1
    row = json.loads(result.stdout)["comparisons"][0]
    assert (row["exceeds_limit"], row["regressed"], row["verdict"]) == (True, True, "regressed")
    within = json.loads(run([base, cand, "--max-regression", f"{abs(change) * 200}", "--format", "json"]).stdout)
    assert within["comparisons"][0]["verdict"] == "ok" and not within["comparisons"][0]["exceeds_limit"]
    free = json.loads(run([base, cand, "--format", "json"]).stdout)["comparisons"][0]
    assert (free["verdict"], free["exceeds_limit"]) == ("no_gate", False)


# --- item 5: intervals from too few documents ------------------------------------------------------

@pytest.mark.parametrize("n_docs", [2, MIN_INTERVAL_DOCUMENTS - 1, MIN_INTERVAL_DOCUMENTS, 40])
def test_an_interval_from_few_documents_is_marked_unreliable(tmp_path: Path, n_docs: int) -> None:
    base = make_report(n_docs=n_docs)
    cand = worsen(base, {0: 1.1})
    out, page = tmp_path / "c.json", tmp_path / "c.html"
    result = run([write(tmp_path, "a.json", base), write(tmp_path, "b.json", cand), "-o", str(out), "--html",
                  str(page), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    jsonschema.validate(data, SCHEMA)
    row = data["comparisons"][0]
    reliable = n_docs >= 20
    assert row["documents"] == n_docs and row["relative_change_ci"] is not None
    assert row["relative_change_ci_reliable"] is reliable
    report = ComparisonReport.from_dict(data)
    ci_cell = report.rows()[0][report.columns.index("95% CI")]
    assert ci_cell.endswith("unreliable") != reliable
    notes = [n for n in report.notes() if "fewer than 20" in n]
    assert bool(notes) != reliable
    page_notes = [e["text"] for e in parse(page) if e["class"] == "note compare-note"]
    assert any("fewer than 20" in n for n in page_notes) != reliable
    assert ("unreliable" in result.stdout) != reliable


def test_a_single_document_has_no_interval_to_mark(tmp_path: Path) -> None:
    base = make_report(n_docs=1)
    row = compare_reports(*[Report.from_dict(r) for r in (base, worsen(base, {0: 1.1}))]).to_dict()
    assert row["relative_change_ci"] is None and row["relative_change_ci_reliable"] is None


# --- item 6: JUnit XML, GitHub annotations, --metric -------------------------------------------------

def test_junit_has_a_case_per_candidate_and_a_failure_per_regression(tmp_path: Path) -> None:
    base = make_report()
    good, bad = worsen(base, {}), worsen(base, {i: 1.05 for i in range(40)})
    junit = tmp_path / "lleval.xml"
    paths = [write(tmp_path, "a.json", base), write(tmp_path, "good.json", good), write(tmp_path, "bad.json", bad)]
    result = run([*paths, "--max-regression", "1", "--junit", str(junit), "--format", "json"])
    assert result.exit_code == 1
    rows = json.loads(result.stdout)["comparisons"]
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and (root.get("tests"), root.get("failures")) == ("2", "1")
    suites = root.findall("testsuite")
    assert len(suites) == 1 and (suites[0].get("tests"), suites[0].get("failures")) == ("2", "1")
    cases = suites[0].findall("testcase")
    assert [c.get("name") for c in cases] == [r["candidate"] for r in rows] == [paths[1], paths[2]]
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("type") == "regression"
    assert f"{rows[1]['relative_change'] * 100:+.2f}%" in (failure.get("message") or "")
    properties = {p.get("name"): p.get("value") for p in suites[0].findall("./properties/property")}
    assert properties["max_regression_pct"] == "1" and properties["require_significant"] == "false"


def test_junit_of_suites_has_a_case_per_dataset(tmp_path: Path) -> None:
    from test_compare_suites import dataset_report, suite_json

    base = {"a": dataset_report("a", 1), "b": dataset_report("b", 2)}
    new = {"a": copy.deepcopy(base["a"]), "b": dataset_report("b", 2, worse=1.05)}
    base_path = write(tmp_path, "base.json", suite_json({("m", d): r for d, r in base.items()}))
    new_path = write(tmp_path, "new.json", suite_json({("m2", d): r for d, r in new.items()}))
    junit = tmp_path / "j.xml"
    result = run([base_path, new_path, "--max-regression", "1", "--bootstrap", "200", "--junit", str(junit)])
    assert result.exit_code == 1
    cases = ET.parse(junit).getroot().findall("./testsuite/testcase")
    assert len(cases) == 2 and [c.get("name", "").split(" ")[0] for c in cases] == ["a", "b"]
    assert [c.find("failure") is not None for c in cases] == [False, True]


def test_a_junit_file_is_an_output_refused_over_an_input(tmp_path: Path) -> None:
    base = write(tmp_path, "a.json", make_report())
    before = Path(base).read_bytes()
    result = run([base, base, "--junit", base])
    assert result.exit_code == 2 and "--junit" in result.stderr and "same file as BASE" in result.stderr
    assert Path(base).read_bytes() == before
    assert run([base, base, "--junit", str(tmp_path / "j.xml"), "-o", str(tmp_path / "j.xml")]).exit_code == 2


def _annotations(stderr: str) -> list[tuple[str, dict[str, str], str]]:
    """The workflow commands on stderr: (level, properties, message unescaped)."""
    found = []
    for line in stderr.splitlines():
        if not line.startswith("::"):
            continue
        head, _, message = line[2:].partition("::")
        level, _, props = head.partition(" ")
        properties = dict(p.split("=", 1) for p in props.split(",") if p)
        found.append((level, properties, message.replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")))
    return found


def test_github_annotations_when_github_actions_is_set(tmp_path: Path) -> None:
    base = make_report()
    bad = worsen(base, {i: 1.05 for i in range(40)})
    other = copy.deepcopy(base)
    other["protocol"]["max_length"] = 32  # another protocol: a warning
    paths = [write(tmp_path, "a.json", base), write(tmp_path, "bad.json", bad), write(tmp_path, "other.json", other)]
    args = [*paths, "--max-regression", "1", "--format", "json"]
    result = run(args, env={"GITHUB_ACTIONS": "true"})
    assert result.exit_code == 1
    json.loads(result.stdout)  # stdout stays the JSON alone
    found = _annotations(result.stderr)
    assert [level for level, _, _ in found] == ["error", "warning"]
    assert paths[1] in found[0][2] and "%" in found[0][2] and found[0][1]["title"].startswith("lleval compare")
    assert "max_length: 16 vs 32" in found[1][2]
    assert _annotations(run(args, env={"GITHUB_ACTIONS": ""}).stderr) == []


def test_annotation_text_is_escaped_as_github_reads_it() -> None:
    from lleval.report.ci import annotation

    line = annotation("error", "a: b, c", "50% worse\nsecond line")
    assert line == "::error title=a%3A b%2C c::50%25 worse%0Asecond line"


def test_metric_bits_per_byte_is_gated_when_asked(tmp_path: Path) -> None:
    # the candidate needs 10% more tokens for the same nats: perplexity falls, bits per byte stays
    base = make_report()
    cand = copy.deepcopy(base)
    for d in cand["documents"]:
        d["tokens"] = int(d["tokens"] * 1.1)
    cand["totals"]["tokens"] = sum(d["tokens"] for d in cand["documents"])
    paths = [write(tmp_path, "a.json", base), write(tmp_path, "b.json", cand)]
    by_ppl = json.loads(run([*paths, "--format", "json"]).stdout)["comparisons"][0]
    by_bpb = json.loads(run([*paths, "--metric", "bits_per_byte", "--format", "json"]).stdout)["comparisons"][0]
    assert by_ppl["metric"] == "perplexity" and by_ppl["relative_change"] < -0.05
    nats = -sum(d["log_likelihood"] for d in base["documents"])
    n_bytes = sum(d["bytes"] for d in base["documents"])
    assert by_bpb["metric"] == "bits_per_byte" and by_bpb["relative_change"] == 0.0
    assert math.isclose(by_bpb["base_value"], nats / (math.log(2) * n_bytes), rel_tol=1e-12)


def test_metric_perplexity_falls_back_to_bits_per_byte_across_tokenizers(tmp_path: Path) -> None:
    a, b = make_report(tokenizer="x"), make_report(tokenizer="y", scale=0.97)
    row = json.loads(run([write(tmp_path, "a.json", a), write(tmp_path, "b.json", b), "--metric", "perplexity",
                          "--format", "json"]).stdout)["comparisons"][0]
    assert row["metric"] == "bits_per_byte" and "tokenizers differ" in row["why"]


def test_bits_per_byte_of_a_protocol_that_leaves_tokens_unscored_is_refused(tmp_path: Path) -> None:
    base = make_report()
    for report in (base,):
        report["protocol"].update(name="llama-cpp", scores_every_token=False)
    paths = [write(tmp_path, "a.json", base), write(tmp_path, "b.json", base)]
    result = run([*paths, "--metric", "bits_per_byte"])
    assert result.exit_code == 2 and "llama-cpp" in result.stderr
    assert run(paths).exit_code == 0  # perplexity is defined


# --- item 8: --top-documents 0 and the table's headers ------------------------------------------------

def test_top_documents_0_shows_no_changed_documents_anywhere(tmp_path: Path) -> None:
    base = make_report(ids=[f"d{i}" for i in range(40)])
    paths = [write(tmp_path, "a.json", base), write(tmp_path, "b.json", worsen(base, {1: 1.2}))]
    page = tmp_path / "c.html"
    result = run([*paths, "--top-documents", "0", "--html", str(page), "--format", "json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["comparisons"][0]
    assert row["worst_documents"] == [] and row["best_documents"] == []
    elements = parse(page)
    assert not [e for e in elements if e["section"] == "changed-documents"]
    assert not [e for e in elements if e["tag"] in ("h2", "h3") and "changed" in e["text"]]
    report = ComparisonReport.from_dict(json.loads(result.stdout))
    assert "documents that" not in report.render_markdown()  # no heading of an empty table


def test_the_table_names_both_values_alike(tmp_path: Path) -> None:
    base = make_report()
    report = ComparisonReport.from_dict(json.loads(run([write(tmp_path, "a.json", base), write(
        tmp_path, "b.json", base), "--format", "json"]).stdout))
    assert report.columns == ("candidate", "metric", "base value", "candidate value", "change", "95% CI",
                              "P(worse)", "verdict")


# --- attacks ---------------------------------------------------------------------------------------

def test_require_significant_without_a_bootstrap_is_refused(tmp_path: Path) -> None:
    """With --bootstrap 0 there is no interval, so --require-significant would let every change pass."""
    base = make_report()
    paths = [write(tmp_path, "a.json", base), write(tmp_path, "b.json", worsen(base, {i: 1.5 for i in range(40)}))]
    result = run([*paths, "--max-regression", "1", "--require-significant", "--bootstrap", "0"])
    assert result.exit_code == 2 and "--bootstrap 0" in result.stderr
    assert run([*paths, "--max-regression", "1", "--bootstrap", "0"]).exit_code == 1  # the gate alone still fails


def test_ids_that_look_like_markup_stay_text(tmp_path: Path) -> None:
    ids = [f"a|b <i>{i}</i>" for i in range(40)]
    base = make_report(ids=ids)
    page = tmp_path / "c.html"
    result = run([write(tmp_path, "a.json", base), write(tmp_path, "b.json", worsen(base, {4: 1.3})), "--html",
                  str(page), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("| 4 |"))
    assert row.count("|") == 5  # four cells: the id's "|" cannot open a fifth
    cells = [e for e in parse(page) if e["section"] == "changed-documents" and e["tag"] == "td"]
    assert cells[1]["text"] == "a|b <i>4</i>"  # the page shows the id as it is
    assert "<i>4</i>" not in page.read_text()  # escaped, not markup


def test_a_junit_file_that_cannot_be_written_costs_that_file_alone(tmp_path: Path) -> None:
    base = make_report()
    out = tmp_path / "c.json"
    result = run([write(tmp_path, "a.json", base), write(tmp_path, "b.json", base), "--junit",
                  str(tmp_path / "missing" / "j.xml"), "-o", str(out), "--format", "json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["passed"] and json.loads(out.read_text())["passed"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--junit" in errors[0]


def test_junit_and_annotations_hold_odd_names(tmp_path: Path) -> None:
    base = make_report()
    folder = tmp_path / 'we"ird, <name>: 100%'
    folder.mkdir()
    bad = worsen(base, {i: 1.05 for i in range(40)})
    paths = [write(folder, "a.json", base), write(folder, "b&c.json", bad)]
    junit = tmp_path / "j.xml"
    result = run([*paths, "--max-regression", "1", "--junit", str(junit)], env={"GITHUB_ACTIONS": "true"})
    assert result.exit_code == 1
    case = ET.parse(junit).getroot().find("./testsuite/testcase")
    assert case is not None and case.get("name") == paths[1]
    (error,) = [a for a in _annotations(result.stderr) if a[0] == "error"]
    assert paths[1] in error[2] and "\n" not in error[2]
