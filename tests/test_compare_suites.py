"""`lleval compare` of suite reports (lleval issue 19): each dataset paired over documents, the
gate naming the dataset that regressed, a suite cell against a single score report, refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from lleval.cli import main
from lleval.commands.compare import compare_reports
from lleval.report.compare import ComparisonReport
from lleval.report.schema import load_schema
from lleval.report.score import Report
from lleval.report.suite import MacroAverage, SuiteCell, SuiteModel, SuiteReport
from test_compare import make_report


def dataset_report(name: str, seed: int, worse: float = 1.0) -> dict[str, Any]:
    """A score report of dataset ``name`` (its fingerprint ``fp-name``), NLL scaled by ``worse``."""
    data = make_report(seed=seed, n_docs=30)
    data["dataset"]["fingerprint"] = data["dataset"]["spec"] = f"fp-{name}"
    for d in data["documents"]:
        d["log_likelihood"] *= worse
    return data


def suite_json(cells: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """The JSON of a complete suite report of ``(model, dataset) -> score report JSON``."""
    models = list(dict.fromkeys(m for m, _ in cells))
    datasets = list(dict.fromkeys(d for _, d in cells))
    suite = SuiteReport([SuiteModel(m, m) for m in models], datasets,
                        [SuiteCell(m, d, Report.from_dict(r)) for (m, d), r in cells.items()],
                        [MacroAverage(m, None, None, 0) for m in models], True,
                        {"model_loads": len(models), "tokenizations": len(datasets), "replays": 0},
                        {"resamples": 100, "seed": 0, "level": 0.95}, created="2026-12-02T00:00:00+00:00")
    data = suite.to_dict()
    SuiteReport.from_dict(json.loads(json.dumps(data)))  # it fits the shipped schema
    return data


def write(tmp_path: Path, name: str, data: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def run(*args: str) -> Any:
    return CliRunner().invoke(main, ["compare", *args], catch_exceptions=False)


def test_each_dataset_equals_compare_of_its_two_cells_and_the_gate_names_it(tmp_path: Path) -> None:
    base = {"a": dataset_report("a", 1), "b": dataset_report("b", 2)}
    new = {"a": copy.deepcopy(base["a"]), "b": dataset_report("b", 2, worse=1.05)}
    base_path = write(tmp_path, "base.json", suite_json({("m", d): r for d, r in base.items()}))
    new_path = write(tmp_path, "new.json", suite_json({("m2", d): r for d, r in new.items()}))
    out = tmp_path / "out.json"
    result = run(base_path, new_path, "--max-regression", "1", "--bootstrap", "200", "-o", str(out))
    assert result.exit_code == 1
    assert "regression: b (" in result.stderr and "regression: a" not in result.stderr
    data = json.loads(out.read_text())
    jsonschema.validate(data, load_schema("compare"))
    assert ComparisonReport.from_dict(data).to_dict() == data
    rows = {row["dataset"]: row for row in data["comparisons"]}
    assert set(rows) == {"a", "b"} and not data["passed"]
    for d in ("a", "b"):  # independently: the existing compare of the two cell reports alone
        alone = compare_reports(Report.from_dict(base[d]), Report.from_dict(new[d]), max_regression_pct=1.0,
                                n_resamples=200).to_dict()
        assert {k: v for k, v in rows[d].items() if k not in ("base", "candidate", "dataset")} == {
            k: v for k, v in alone.items() if k not in ("base", "candidate")}
    assert rows["b"]["regressed"] and not rows["a"]["regressed"]
    assert rows["a"]["relative_change"] == 0.0


def test_several_models_match_by_model_and_dataset(tmp_path: Path) -> None:
    cells = {(m, d): dataset_report(d, seed) for seed, (m, d) in
             enumerate([("x", "a"), ("x", "b"), ("y", "a"), ("y", "b")])}
    worse = dict(cells) | {("y", "a"): dataset_report("a", 2, worse=1.1)}
    base, new = write(tmp_path, "b.json", suite_json(cells)), write(tmp_path, "n.json", suite_json(worse))
    result = run(base, new, "--max-regression", "1", "--format", "json")
    assert result.exit_code == 1
    rows = json.loads(result.stdout)["comparisons"]
    assert [(r["candidate"], r["regressed"]) for r in rows] == [
        (f"{new} [x/a]", False), (f"{new} [x/b]", False), (f"{new} [y/a]", True), (f"{new} [y/b]", False)]
    other = write(tmp_path, "o.json", suite_json({("z", "a"): cells[("x", "a")], ("w", "a"): cells[("y", "a")]}))
    refused = run(base, other)
    assert refused.exit_code == 2 and "no cell in common" in refused.output and "x/a" in refused.output


def test_a_suite_cell_against_a_single_score_report(tmp_path: Path) -> None:
    cells = {("m", "a"): dataset_report("a", 1), ("m", "b"): dataset_report("b", 2)}
    suite = write(tmp_path, "suite.json", suite_json(cells))
    single = dataset_report("b", 2, worse=1.05)
    single_path = write(tmp_path, "single.json", single)
    for args in ([suite, single_path], [single_path, suite]):
        result = run(*args, "--max-regression", "1", "--format", "json")
        assert result.exit_code == (1 if args[0] == suite else 0)  # the single report is the worse one
        (row,) = json.loads(result.stdout)["comparisons"]
        first, second = (cells[("m", "b")], single) if args[0] == suite else (single, cells[("m", "b")])
        alone = compare_reports(Report.from_dict(first), Report.from_dict(second), max_regression_pct=1.0)
        assert row["dataset"] == "b" and row["relative_change"] == alone.change
        assert row["relative_change_ci"] == list(alone.interval or ())
    unknown = write(tmp_path, "u.json", dataset_report("c", 3))
    refused = run(suite, unknown)
    assert refused.exit_code == 2 and "none of m/a, m/b" in refused.output
    twice = write(tmp_path, "t.json", suite_json({("m", "a"): cells[("m", "a")], ("m", "a2"): cells[("m", "a")]}))
    refused = run(twice, write(tmp_path, "a.json", cells[("m", "a")]))
    assert refused.exit_code == 2 and "m/a, m/a2" in refused.output and "--cell" in refused.output
    picked = run(twice, str(tmp_path / "a.json"), "--cell", "m/a2", "--format", "json")
    assert picked.exit_code == 0 and json.loads(picked.stdout)["comparisons"][0]["dataset"] == "a2"


@pytest.mark.parametrize("cell", ["m/zz", "nope"])
def test_an_unknown_cell_is_refused_naming_the_choices(tmp_path: Path, cell: str) -> None:
    suite = write(tmp_path, "s.json", suite_json({("m", "a"): dataset_report("a", 1)}))
    result = run(suite, write(tmp_path, "a.json", dataset_report("a", 1)), "--cell", cell)
    assert result.exit_code == 2 and "m/a" in result.output


def test_markdown_and_table_name_each_dataset(tmp_path: Path) -> None:
    cells = {("m", "a"): dataset_report("a", 1), ("m", "b"): dataset_report("b", 2)}
    path = write(tmp_path, "s.json", suite_json(cells))
    result = run(path, path, "--format", "markdown")
    assert result.exit_code == 0
    lines = [line for line in result.stdout.splitlines() if line.startswith("| a |") or line.startswith("| b |")]
    assert len(lines) == 2 and all("+0.00%" in line for line in lines)
    assert run(path, path).exit_code == 0


def test_cell_without_effect_is_refused(tmp_path: Path) -> None:
    """--cell only picks a suite cell against a score report: with two suites or two score reports it is refused."""
    suite = write(tmp_path, "s.json", suite_json({("m", "a"): dataset_report("a", 1)}))
    single = write(tmp_path, "a.json", dataset_report("a", 1))
    for args in ([suite, suite], [single, single]):
        result = run(*args, "--cell", "m/a")
        assert result.exit_code == 2 and "--cell" in result.output


def test_suites_with_different_datasets_are_refused_unless_told_which_cells(tmp_path: Path) -> None:
    """A dataset dropped from the candidate suite (or one the base lacks): a CI gate must not
    pass on fewer cells than it was given, so compare refuses (exit 2, naming what each lacks);
    --only-common compares the cells both have, each equal to compare of its two cells, and
    says in a note which were left out."""
    base = {d: dataset_report(d, seed) for seed, d in enumerate("abc")}
    base_path = write(tmp_path, "base.json", suite_json({("m", d): r for d, r in base.items()}))
    dropped = write(tmp_path, "new.json", suite_json({("m", d): base[d] for d in "ab"}))
    result = run(base_path, dropped, "--max-regression", "1")
    assert result.exit_code == 2 and f"{dropped} has no c" in result.output
    extra = write(tmp_path, "more.json", suite_json({("m", d): base[d] for d in "abc"} | {("m", "e"): base["a"]}))
    result = run(base_path, extra, "--max-regression", "1")
    assert result.exit_code == 2 and f"{base_path} has no e" in result.output
    common = run(base_path, dropped, "--max-regression", "1", "--only-common", "--format", "json")
    assert common.exit_code == 0, common.output
    rows = json.loads(common.stdout)["comparisons"]
    assert [r["dataset"] for r in rows] == ["a", "b"]
    assert any("--only-common" in n and f"{dropped} has no c" in n for n in rows[0]["notes"])
    for row in rows:
        alone = compare_reports(Report.from_dict(base[row["dataset"]]), Report.from_dict(base[row["dataset"]]))
        assert row["relative_change"] == alone.change == 0.0
    worse = write(tmp_path, "worse.json", suite_json({("m", "a"): dataset_report("a", 0, worse=1.1),
                                                      ("m", "b"): base["b"]}))
    assert run(base_path, worse, "--max-regression", "1", "--only-common").exit_code == 1  # the gate still gates


def test_a_suite_missing_a_model_is_refused_unless_told_which_cells(tmp_path: Path) -> None:
    cells = {(m, d): dataset_report(d, seed) for seed, (m, d) in
             enumerate([("x", "a"), ("x", "b"), ("y", "a"), ("y", "b")])}
    base = write(tmp_path, "b.json", suite_json(cells))
    one = write(tmp_path, "n.json", suite_json({k: v for k, v in cells.items() if k[0] == "x"}))
    result = run(base, one, "--max-regression", "1")
    assert result.exit_code == 2 and f"{one} has no y/a, y/b" in result.output
    common = run(base, one, "--max-regression", "1", "--only-common", "--format", "json")
    assert common.exit_code == 0
    assert [r["candidate"] for r in json.loads(common.stdout)["comparisons"]] == [f"{one} [x/a]", f"{one} [x/b]"]


def test_only_common_without_two_suites_is_refused(tmp_path: Path) -> None:
    suite = write(tmp_path, "s.json", suite_json({("m", "a"): dataset_report("a", 1)}))
    single = write(tmp_path, "a.json", dataset_report("a", 1))
    for args in ([suite, single], [single, single]):
        result = run(*args, "--only-common")
        assert result.exit_code == 2 and "--only-common" in result.output
