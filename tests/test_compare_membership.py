"""Membership scores in `lleval compare` (lleval issue 20): a contamination check pairs a
candidate's Min-K% / Min-K%++ / zlib ratio with the base's on the same documents; means and
paired changes checked against naive loops, nulls skipped, one-sided reports noted."""

from __future__ import annotations

import copy
import json
import math
from html.parser import HTMLParser
from io import StringIO
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

from helpers import write_jsonl
from lleval.cli import main
from lleval.commands.compare import compare_reports
from lleval.report.compare import ComparisonReport
from lleval.report.schema import load_schema
from lleval.report.score import Report
from test_compare import make_report

FIELDS = ("min_k_prob", "min_k_plus_plus", "zlib_ratio")


def with_membership(data: dict[str, Any], seed: int, shift: dict[int, float] | None = None,
                    null_pp: set[int] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    """``data`` with random membership scores on every document (Min-K%++ null on ``null_pp``),
    each score of document ``i`` raised by ``shift[i]`` (Min-K% and zlib stay below 0, as the
    score schema demands of log-probs)."""
    out = copy.deepcopy(data)
    rng = np.random.default_rng(seed)
    for doc in out["documents"]:
        up = (shift or {}).get(doc["index"], 0.0)
        doc["min_k_prob"] = min(float(rng.uniform(-9.0, -4.0)) + up, -0.01)
        doc["min_k_plus_plus"] = None if doc["index"] in null_pp else float(rng.uniform(-3.0, -1.0)) + up
        doc["zlib_ratio"] = min(float(rng.uniform(-2.0, -0.5)) + up, -0.01)
    return out


def naive(base: dict[str, Any], cand: dict[str, Any], name: str) -> tuple[int, float, float, float]:
    """(documents, base mean, candidate mean, mean change) over documents with the score on both sides."""
    pairs = [(b[name], c[name]) for b, c in zip(base["documents"], cand["documents"])
             if b.get(name) is not None and c.get(name) is not None]
    n = len(pairs)
    return (n, sum(b for b, _ in pairs) / n, sum(c for _, c in pairs) / n, sum(c - b for b, c in pairs) / n)


def write(tmp_path: Path, name: str, data: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def compare(base: dict[str, Any], cand: dict[str, Any], **kw: Any) -> Any:
    return compare_reports(Report.from_dict(base), Report.from_dict(cand), n_resamples=kw.pop("n_resamples", 500),
                           **kw)


def test_means_and_paired_changes_match_a_naive_loop() -> None:
    plain = make_report(seed=3, n_docs=40)
    base = with_membership(plain, seed=1)
    leaked = {4: 2.5, 17: 1.0, 30: 4.0}  # these documents became much more member-like
    cand = with_membership(plain, seed=2, shift=leaked)
    result = compare(base, cand)
    m = result.membership
    assert m is not None and result.notes == []
    for name in FIELDS:
        n, b_mean, c_mean, delta = naive(base, cand, name)
        got = m.scores[name]
        assert got.documents == n == 40
        assert math.isclose(got.base_mean, b_mean, rel_tol=1e-12)
        assert math.isclose(got.candidate_mean, c_mean, rel_tol=1e-12)
        assert math.isclose(got.mean_delta, delta, rel_tol=1e-9, abs_tol=1e-12)
        assert got.interval is not None and got.interval[0] <= delta <= got.interval[1]
        assert got.interval[0] < got.interval[1]
    # the top documents: Min-K%++ rises, largest first, naive sort of candidate - base
    rises = sorted(((c["min_k_plus_plus"] - b["min_k_plus_plus"], b["index"])
                    for b, c in zip(base["documents"], cand["documents"])), reverse=True)
    expected = [(i, d) for d, i in rises if d > 0][:10]
    assert m.ranked_by == "min_k_plus_plus"
    assert [d["index"] for d in m.top_documents] == [i for i, _ in expected]
    assert [d["delta"] for d in m.top_documents] == pytest.approx([d for _, d in expected], rel=1e-12)
    assert {4, 30} <= {d["index"] for d in m.top_documents[:3]}


def test_the_gate_and_the_perplexity_change_do_not_depend_on_membership() -> None:
    plain = make_report(seed=5, n_docs=30)
    worse = copy.deepcopy(plain)
    for d in worse["documents"]:
        d["log_likelihood"] *= 1.05
    kw = {"max_regression_pct": 1.0, "seed": 7}
    without = compare(plain, worse, **kw)
    scored = compare(with_membership(plain, 1), with_membership(worse, 2), **kw)
    assert without.membership is None and scored.membership is not None
    assert (scored.change, scored.interval, scored.p_worse, scored.regressed) == (
        without.change, without.interval, without.p_worse, without.regressed)
    assert scored.regressed


def test_null_scores_are_skipped_per_score_with_the_count_used() -> None:
    plain = make_report(seed=4, n_docs=20)
    base = with_membership(plain, seed=1, null_pp={0, 1, 2})
    cand = with_membership(plain, seed=2, null_pp={2, 3})
    m = compare(base, cand).membership
    assert m is not None
    n, b_mean, c_mean, delta = naive(base, cand, "min_k_plus_plus")
    assert m.scores["min_k_plus_plus"].documents == n == 16
    assert math.isclose(m.scores["min_k_plus_plus"].base_mean, b_mean, rel_tol=1e-12)
    assert math.isclose(m.scores["min_k_plus_plus"].candidate_mean, c_mean, rel_tol=1e-12)
    assert math.isclose(m.scores["min_k_plus_plus"].mean_delta, delta, rel_tol=1e-9)
    assert m.scores["min_k_prob"].documents == 20
    assert not {0, 1, 2, 3} & {d["index"] for d in m.top_documents}


def test_served_models_without_min_k_plus_plus_rank_by_min_k() -> None:
    plain = make_report(seed=6, n_docs=12)
    everyone = set(range(12))
    base = with_membership(plain, seed=1, null_pp=everyone)
    cand = with_membership(plain, seed=1, null_pp=everyone, shift={5: 3.9})  # only document 5 moves
    m = compare(base, cand, top_documents=3).membership
    assert m is not None
    pp = m.scores["min_k_plus_plus"]
    assert (pp.documents, pp.base_mean, pp.candidate_mean, pp.mean_delta, pp.interval) == (0, None, None, None, None)
    assert m.ranked_by == "min_k_prob" and [d["index"] for d in m.top_documents] == [5]
    b, c = base["documents"][5]["min_k_prob"], cand["documents"][5]["min_k_prob"]
    assert m.top_documents[0]["delta"] == pytest.approx(c - b)


def test_document_ids_travel_with_the_suspects() -> None:
    plain = make_report(seed=8, n_docs=10)
    for d in plain["documents"]:
        d["id"] = f"q-{d['index']}"
    m = compare(with_membership(plain, 1), with_membership(plain, 2, shift={7: 5.0})).membership
    assert m is not None and m.top_documents[0]["index"] == 7 and m.top_documents[0]["id"] == "q-7"


@pytest.mark.parametrize("side", ["base", "candidate"])
def test_only_one_side_with_membership_is_a_note_and_no_block(side: str) -> None:
    plain = make_report(seed=9, n_docs=10)
    scored = with_membership(plain, 1)
    base, cand = (scored, plain) if side == "base" else (plain, scored)
    result = compare(base, cand, base_name="b.json", candidate_name="c.json")
    assert result.membership is None
    assert len(result.notes) == 1 and "--membership" in result.notes[0]
    missing = "this candidate" if side == "base" else "the base b.json"
    assert f"{missing} has none" in result.notes[0]
    assert "c.json" not in result.notes[0]  # shown after the candidate's name: "note: c.json: ..."


def test_membership_scores_of_different_k_are_a_note_and_no_block() -> None:
    base = with_membership(make_report(seed=9, n_docs=10), 1)
    cand = with_membership(make_report(seed=9, n_docs=10), 2)
    cand["settings"] = {**cand.get("settings", {}), "min_k": {"value": 0.1, "origin": "flag"}}
    result = compare(base, cand, base_name="b.json", candidate_name="c.json")
    assert result.membership is None
    assert len(result.notes) == 1 and "--min-k 0.2" in result.notes[0] and "0.1" in result.notes[0]
    assert "c.json" not in result.notes[0] and "b.json" in result.notes[0]
    same = copy.deepcopy(base)
    same["settings"] = {**same.get("settings", {}), "min_k": {"value": 0.2, "origin": "config file"}}
    assert compare(same, cand | {"settings": same["settings"]}, base_name="b", candidate_name="c").membership is not None


def test_neither_side_with_membership_keeps_the_json_as_it_was(tmp_path: Path) -> None:
    path = write(tmp_path, "a.json", make_report(seed=1, n_docs=10))
    result = CliRunner().invoke(main, ["compare", path, path, "--format", "json"], catch_exceptions=False)
    row = json.loads(result.stdout)["comparisons"][0]
    assert "membership" not in row and "notes" not in row


def test_json_fits_the_schema_and_reads_back(tmp_path: Path) -> None:
    plain = make_report(seed=2, n_docs=25)
    base = write(tmp_path, "base.json", with_membership(plain, 1, null_pp={3}))
    cand = write(tmp_path, "cand.json", with_membership(plain, 2, shift={1: 3.0}))
    one_sided = write(tmp_path, "plain.json", plain)
    page = tmp_path / "compare.html"
    result = CliRunner().invoke(main, ["compare", base, cand, one_sided, "--format", "json", "--html", str(page)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    jsonschema.validate(data, load_schema("compare"))
    first, second = data["comparisons"]
    assert first["membership"]["scores"]["min_k_plus_plus"]["documents"] == 24
    assert "membership" not in second and len(second["notes"]) == 1
    back = ComparisonReport.from_dict(data)
    assert back.to_dict() == data
    assert back.comparisons[0].membership == compare(
        json.loads(Path(base).read_text()), json.loads(Path(cand).read_text()), n_resamples=1000,
        base_name=base, candidate_name=cand).membership
    rows, notes = _membership_section(page.read_text())
    assert notes == [f"note: {one_sided}: {second['notes'][0]}"]
    assert rows == [
        [cand, label, str(first["membership"]["scores"][name]["documents"])]
        for name, label in zip(FIELDS, ("Min-K%", "Min-K%++", "zlib ratio"))]
    # the table and the markdown render the block (the data is checked above)
    from rich.console import Console

    back.render_table(Console(file=StringIO(), width=160))
    assert back.render_markdown().count("| Min-K%++ |") == 1


def _membership_section(page: str) -> tuple[list[list[str]], list[str]]:
    """The page's membership section: the first three cells (candidate, score, documents) of
    each row of its table, and the text of its notes."""

    class Section(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.inside, self.into = False, None  # type: ignore[var-annotated]
            self.rows: list[list[str]] = []
            self.notes: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "section":
                self.inside = ("id", "membership") in attrs
            elif self.inside and tag == "tr":
                self.rows.append([])
            elif self.inside and tag == "td":
                self.rows[-1].append("")
                self.into = self.rows[-1]
            elif self.inside and tag == "p" and ("class", "note") in attrs:
                self.notes.append("")
                self.into = self.notes

        def handle_endtag(self, tag: str) -> None:
            self.inside = self.inside and tag != "section"
            self.into = None if tag in ("td", "p") else self.into

        def handle_data(self, data: str) -> None:
            if self.into is not None:
                self.into[-1] += data

    parser = Section()
    parser.feed(page)
    return [row[:3] for row in parser.rows if row], parser.notes


def test_suite_cells_compared_with_membership_each_get_their_block(tmp_path: Path) -> None:
    from test_compare_suites import dataset_report, suite_json

    base = {d: with_membership(dataset_report(d, k), seed=k) for k, d in enumerate("ab")}
    new = {"a": with_membership(dataset_report("a", 0), seed=0),  # the same scores: no change
           "b": with_membership(dataset_report("b", 1), seed=1, shift={2: 1.5})}
    paths = [write(tmp_path, f"{name}.json", suite_json({("m", d): r for d, r in reports.items()}))
             for name, reports in (("base", base), ("new", new))]
    result = CliRunner().invoke(main, ["compare", *paths, "--format", "json"], catch_exceptions=False)
    rows = {r["dataset"]: r for r in json.loads(result.stdout)["comparisons"]}
    for name in FIELDS:
        assert rows["a"]["membership"]["scores"][name]["mean_delta"] == 0.0
        n, _, _, delta = naive(base["b"], new["b"], name)
        assert rows["b"]["membership"]["scores"][name]["mean_delta"] == pytest.approx(delta, rel=1e-9)
    assert rows["a"]["membership"]["top_documents"] == []
    assert [d["index"] for d in rows["b"]["membership"]["top_documents"]] == [2]


def test_tiny_model_scored_twice_with_membership_changes_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    """End to end: `score --membership` of the same model twice pairs every document with a zero change."""
    data = write_jsonl(tmp_path / "d.jsonl", [f"document {i} says {'ab ' * (i + 2)}" for i in range(6)])
    paths = []
    for name in ("a.json", "b.json"):
        paths.append(str(tmp_path / name))
        result = CliRunner().invoke(main, ["score", "-q", "-m", str(tiny_model_dir), "-d", data, "--membership",
                                           "--max-length", "32", "-o", paths[-1]], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["compare", *paths, "--format", "json"], catch_exceptions=False)
    m = json.loads(result.stdout)["comparisons"][0]["membership"]
    base_docs = json.loads(Path(paths[0]).read_text())["documents"]
    for name in FIELDS:
        got = m["scores"][name]
        assert got["documents"] == 6 and got["mean_delta"] == 0.0 and got["mean_delta_ci"] == [0.0, 0.0]
        assert got["base_mean"] == pytest.approx(sum(d[name] for d in base_docs) / 6, rel=1e-12)
    assert m["top_documents"] == []
