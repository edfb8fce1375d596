"""Bootstrap intervals and `lleval compare`: coverage, paired changes, the gate's exit codes."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import score_report_json, write_jsonl
from lleval.cli import main
from lleval.commands.compare import compare_reports
from lleval.metrics import ratio_intervals
from lleval.report.score import Report


def test_bootstrap_interval_covers_true_ratio() -> None:
    # Per-document tokens vary; nll_i = tokens_i * (r + noise_i) with zero-mean noise,
    # so the population ratio sum(nll) / sum(tokens) is exactly r.
    true_rate = 2.5
    covered = 0
    for trial in range(200):
        rng = np.random.default_rng(1000 + trial)
        tokens = rng.integers(20, 400, size=60).astype(float)
        nll = tokens * (true_rate + rng.normal(0.0, 0.8, size=60))
        n_bytes = tokens * 4
        ci = ratio_intervals(nll, tokens, n_bytes, 500, seed=trial)["perplexity"]
        assert ci is not None
        covered += ci[0] <= math.exp(true_rate) <= ci[1]
    assert covered >= 180, covered


def test_single_document_has_no_interval() -> None:
    out = ratio_intervals(np.array([3.0]), np.array([2.0]), np.array([8.0]), 100, seed=0)
    assert out == {"perplexity": None, "bits_per_byte": None}


def make_report(seed: int = 0, n_docs: int = 40, scale: float = 1.0, tokenizer: str = "tok-a") -> dict[str, Any]:
    """The JSON of a complete score report of ``n_docs`` random documents."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n_docs):
        tokens = int(rng.integers(50, 300))
        ll = -tokens * float(rng.uniform(2.0, 3.5))
        docs.append({"index": i, "log_likelihood": ll * scale, "tokens": tokens, "bytes": tokens * 4, "words": tokens // 2})
    return score_report_json(docs, tokenizer)


def paired(*reports: dict[str, Any]) -> list[Report]:
    """Reports' JSON read back as `lleval compare` reads a file's."""
    return [Report.from_dict(r) for r in reports]


def write(tmp_path: Path, name: str, data: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def run(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["compare", *args], env=env, catch_exceptions=False)


def test_identical_reports_change_nothing(tmp_path: Path) -> None:
    base = write(tmp_path, "a.json", make_report())
    result = run([base, base, "--max-regression", "0", "--format", "json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["comparisons"][0]
    assert row["relative_change"] == 0.0 and row["relative_change_ci"] == [0.0, 0.0]
    assert row["probability_worse"] == 0.0 and row["metric"] == "perplexity"


def test_five_percent_worse_fails_one_percent_gate(tmp_path: Path) -> None:
    base_data = make_report()
    worse = copy.deepcopy(base_data)
    for d in worse["documents"]:
        d["log_likelihood"] *= 1.05
    base, cand = write(tmp_path, "a.json", base_data), write(tmp_path, "b.json", worse)
    result = run([base, cand, "--max-regression", "1", "--format", "json", "-o", str(tmp_path / "c.json")])
    assert result.exit_code == 1
    row = json.loads((tmp_path / "c.json").read_text())["comparisons"][0]
    nll = -sum(d["log_likelihood"] for d in base_data["documents"]) / sum(d["tokens"] for d in base_data["documents"])
    assert math.isclose(row["relative_change"], math.exp(0.05 * nll) - 1, rel_tol=1e-9)
    assert row["regressed"] and row["relative_change_ci"][0] > 0 and row["probability_worse"] == 1.0
    assert "b.json" in result.stderr
    assert run([base, cand, "--max-regression", "50"]).exit_code == 0


def test_require_significant_forgives_noise(tmp_path: Path) -> None:
    base_data = make_report(n_docs=30)
    noisy = copy.deepcopy(base_data)
    rng = np.random.default_rng(5)
    for d in noisy["documents"]:
        d["log_likelihood"] *= 1 + rng.normal(0.0, 0.05)
    comparison = compare_reports(*paired(base_data, noisy), max_regression_pct=0.0, require_significant=True)
    assert comparison.interval is not None
    assert comparison.regressed == (comparison.change > 0 and comparison.interval[0] > 0)
    assert comparison.interval[0] < 0 < comparison.interval[1]  # noise: the interval straddles zero


def test_different_tokenizers_compare_bits_per_byte() -> None:
    # Every document of a costs 1.5 bits a byte. b scored the same texts (bytes) with another
    # tokenizer: 30% more tokens, and 3% fewer nats on every document, so 1.455 bits a byte:
    # a change of -3% in bits per byte, whatever the token counts.
    a = make_report(tokenizer="x")
    for d in a["documents"]:
        d["log_likelihood"] = -1.5 * math.log(2) * d["bytes"]
    b = copy.deepcopy(a)
    b["tokenizer"]["fingerprint"] = "y"
    for d in b["documents"]:
        d["tokens"] = int(d["tokens"] * 1.3)
        d["log_likelihood"] *= 0.97
    comparison = compare_reports(*paired(a, b))
    assert comparison.metric == "bits_per_byte" and "tokenizers differ" in comparison.why
    assert math.isclose(comparison.base_value, 1.5, rel_tol=1e-12)
    assert math.isclose(comparison.candidate_value, 1.455, rel_tol=1e-12)
    assert math.isclose(comparison.change, -0.03, rel_tol=1e-9)


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda r: r["dataset"].update(fingerprint="other"), "different texts"),
        (lambda r: r["documents"].pop(), "different document rows"),
        (lambda r: r.update(schema_version=2), "schema version 2"),
        (lambda r: r.pop("documents"), "no valid 'documents'"),
        (lambda r: r["documents"][0].pop("tokens"), "documents[0] lacks"),
        (lambda r: r.update(complete=False), "incomplete"),
    ],
)
def test_unusable_input_exits_2(tmp_path: Path, mutate: Any, fragment: str) -> None:
    base = make_report()
    bad = copy.deepcopy(base)
    mutate(bad)
    result = run([write(tmp_path, "a.json", base), write(tmp_path, "b.json", bad), "--max-regression", "1"])
    assert result.exit_code == 2 and fragment in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("text,fragment", [("{not json", "is not JSON (line 1"), ("[1, 2]", "not a JSON object")])
def test_malformed_file_exits_2(tmp_path: Path, text: str, fragment: str) -> None:
    result = run([write(tmp_path, "a.json", make_report()), write(tmp_path, "b.json", text)])
    assert result.exit_code == 2 and fragment in result.stderr


def test_markdown_summary_is_appended(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("before\n")
    base = write(tmp_path, "a.json", make_report())
    result = run([base, base, "--summary", "--format", "json"], env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 0
    lines = summary.read_text().splitlines()
    assert lines[0] == "before" and any(line.startswith("| ") and "a.json" in line for line in lines)


def test_score_report_carries_intervals(tiny_loaded: Any, tmp_path: Path) -> None:
    from lleval.commands.score import evaluate
    from lleval.config import EvalConfig

    path = write_jsonl(tmp_path / "d.jsonl", [f"document number {i} " * (i + 1) for i in range(6)])
    data = evaluate(EvalConfig(dataset=path, bootstrap=200), loaded=tiny_loaded).to_dict()
    docs = data["documents"]
    nll = np.array([-d["log_likelihood"] for d in docs])
    tokens = np.array([d["tokens"] for d in docs], dtype=np.float64)
    n_bytes = np.array([d["bytes"] for d in docs], dtype=np.float64)
    # The bootstrap done naively: 200 resamples of the documents with the run's seed (0),
    # drawn as one (200, documents) array of row numbers, each resample summed and divided.
    picks = np.random.default_rng(0).integers(0, len(docs), size=(200, len(docs)))
    ppl = [math.exp(nll[p].sum() / tokens[p].sum()) for p in picks]
    bpb = [nll[p].sum() / (math.log(2) * n_bytes[p].sum()) for p in picks]
    assert data["metrics"]["perplexity_ci"] == pytest.approx(list(np.percentile(ppl, [2.5, 97.5])), rel=1e-9)
    assert data["metrics"]["bits_per_byte_ci"] == pytest.approx(list(np.percentile(bpb, [2.5, 97.5])), rel=1e-9)
    assert data["metrics"]["perplexity"] == pytest.approx(math.exp(nll.sum() / tokens.sum()), rel=1e-12)
    one = evaluate(EvalConfig(dataset=path, limit=1), loaded=tiny_loaded).to_dict()
    assert one["metrics"]["perplexity_ci"] is None and any("single document" in n for n in one["notes"])


def test_percentile_interval_leaves_out_empty_resamples() -> None:
    from lleval.metrics import percentile_interval

    samples = np.array([1.0, np.nan, 2.0, np.inf, 3.0])
    assert percentile_interval(samples, level=1.0) == (1.0, 3.0)
    assert percentile_interval(np.array([np.nan])) is None


@pytest.mark.parametrize("args,fragment", [
    (["--require-significant"], "--require-significant qualifies the gate of --max-regression"),
    (["--bootstrap", "0", "--seed", "4"], "--seed seeds the bootstrap"),
])
def test_flags_without_effect_are_refused(tmp_path: Path, args: list[str], fragment: str) -> None:
    base = write(tmp_path, "a.json", make_report())
    result = run([base, base, *args])
    assert result.exit_code == 2 and fragment in result.output


def test_a_kld_report_is_not_compared(tmp_path: Path) -> None:
    base = write(tmp_path, "a.json", make_report())
    other = write(tmp_path, "k.json", {**make_report(), "kind": "kld"})
    result = run([base, other])
    assert result.exit_code == 2 and "'kld' report" in result.stderr


def test_the_documents_that_changed_most(tmp_path: Path) -> None:
    """A hand-built pair: document 3 got 12 nats worse, 7 got 5 worse, 1 got 9 better."""
    base = make_report(n_docs=10)
    cand = copy.deepcopy(base)
    for index, delta in ((3, 12.0), (7, 5.0), (1, -9.0)):
        cand["documents"][index]["log_likelihood"] -= delta  # lower log-likelihood: more nats
    comparison = compare_reports(*paired(base, cand), top_documents=5)
    assert [(d["index"], round(d["delta_nats"], 9)) for d in comparison.worst_documents] == [(3, 12.0), (7, 5.0)]
    assert [(d["index"], round(d["delta_nats"], 9)) for d in comparison.best_documents] == [(1, -9.0)]
    worst = comparison.worst_documents[0]
    assert math.isclose(worst["delta_bits_per_byte"], 12.0 / (math.log(2) * base["documents"][3]["bytes"]))
    out = run([write(tmp_path, "a.json", base), write(tmp_path, "b.json", cand), "--format", "json", "--top-documents", "1"])
    row = json.loads(out.stdout)["comparisons"][0]
    assert [d["index"] for d in row["worst_documents"]] == [3] and [d["index"] for d in row["best_documents"]] == [1]
    markdown = run([write(tmp_path, "a.json", base), write(tmp_path, "b.json", cand), "--format", "markdown"]).stdout
    assert "documents that got worse" in markdown and "| 3 | +12.000 |" in markdown


def test_reports_of_other_windows_are_compared_with_a_warning(tmp_path: Path) -> None:
    base_data = make_report()
    base_data["protocol"].update(max_length=16, stride=16, prefix_token=0)
    other = copy.deepcopy(base_data)
    other["protocol"].update(max_length=2048, stride=2048)
    base, cand = write(tmp_path, "a.json", base_data), write(tmp_path, "b.json", other)
    result = run([base, cand, "--format", "json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["comparisons"][0]
    assert row["protocol_differences"] == ["max_length: 16 vs 2048", "stride: 16 vs 2048"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "max_length: 16 vs 2048" in warnings[0]
    same = json.loads(run([base, base, "--format", "json"]).stdout)["comparisons"][0]
    assert same["protocol_differences"] == []


def test_another_tokenizer_does_not_count_its_prefix_id_as_a_protocol_change(tmp_path: Path) -> None:
    a = make_report(tokenizer="x")
    a["protocol"].update(max_length=16, prefix_token=0)
    b = copy.deepcopy(a)
    b["tokenizer"]["fingerprint"], b["protocol"]["prefix_token"] = "y", 7
    assert compare_reports(*paired(a, b)).protocol_differences == []


@pytest.mark.parametrize("resamples", ["1", "99"])
def test_too_few_resamples_for_an_interval_are_refused(tmp_path: Path, resamples: str) -> None:
    base = write(tmp_path, "a.json", make_report())
    result = run([base, base, "--bootstrap", resamples])
    assert result.exit_code == 2 and "too few resamples" in result.stderr
    assert run([base, base, "--bootstrap", "100"]).exit_code == 0


def test_a_ci_log_shows_the_whole_table(tmp_path: Path) -> None:
    # CliRunner's stdout is not a terminal, as in a CI log; rich would lay it out on 80 columns
    from lleval.commands.compare import compare_report_files

    base_data = make_report()
    worse = copy.deepcopy(base_data)
    for d in worse["documents"]:
        d["log_likelihood"] *= 1.0 + 0.001 * (d["index"] % 7)
    folder = tmp_path / "artifacts" / "nightly-run-20261202" / "candidates"
    folder.mkdir(parents=True)
    base = write(tmp_path, "base-model-report.json", base_data)
    cand = str(folder / "quantized-q4_1-candidate-report.json")
    Path(cand).write_text(json.dumps(worse))
    result = run([base, cand, "--max-regression", "0.05"], env={"COLUMNS": "80"})
    assert result.exit_code == 1
    expected = compare_report_files(base, [cand], max_regression_pct=0.05)
    row = expected.comparisons[0]
    assert row.regressed and row.interval is not None
    lines = result.stdout.splitlines()
    cells = [row.candidate, row.metric, f"{row.base_value:.4f}", f"{row.candidate_value:.4f}",
             f"{row.change * 100:+.2f}%", f"[{row.interval[0] * 100:+.2f}%, {row.interval[1] * 100:+.2f}%]",
             expected.verdict(row)]
    for cell in cells:  # each cell whole, on one line
        assert any(cell in line for line in lines), cell
    assert "…" not in result.stdout


def test_a_ci_log_shows_changed_documents_titles_whole(tmp_path: Path) -> None:
    base_data = make_report()
    worse = copy.deepcopy(base_data)
    for d in worse["documents"]:
        d["log_likelihood"] *= 1.0 + 0.002 * (d["index"] % 5 - 2)  # some documents worse, some better
    cand = tmp_path / "artifacts" / "nightly-run-20261202" / "[v2] candidate-report.json"
    cand.parent.mkdir(parents=True)
    cand.write_text(json.dumps(worse))
    result = run([write(tmp_path, "a.json", base_data), str(cand), "--top-documents", "2"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(f"│ {cand} " in line for line in lines)  # "[v2]" is not taken for markup
    for title in ("got worse", "got better"):
        assert f"{cand}: documents that {title}" in lines


def test_an_html_page_that_cannot_be_written_costs_that_page_alone(tmp_path: Path) -> None:
    base = write(tmp_path, "a.json", make_report())
    out = tmp_path / "c.json"
    result = run([base, base, "--html", str(tmp_path / "missing" / "c.html"), "-o", str(out), "--format", "json"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--html" in errors[0] and "c.html" in errors[0]
    assert json.loads(out.read_text())["passed"] is True  # -o was still written, and stdout got the JSON
    assert json.loads(result.stdout)["kind"] == "compare"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "c.json"]


def test_compare_outputs_never_overwrite_a_report_it_reads(tmp_path: Path) -> None:
    base = write(tmp_path, "a.json", make_report())
    before = Path(base).read_text()
    result = run([base, base, "-o", base])
    assert result.exit_code == 2 and "is the same file as BASE" in result.stderr
    assert Path(base).read_text() == before


def test_a_summary_that_cannot_be_appended_costs_the_summary_alone(tmp_path: Path) -> None:
    base = write(tmp_path, "a.json", make_report())
    out = tmp_path / "c.json"
    unset = run([base, base, "--summary", "-o", str(out)], env={"GITHUB_STEP_SUMMARY": ""})
    assert unset.exit_code == 2 and "$GITHUB_STEP_SUMMARY" in unset.stderr and not out.exists()
    missing = tmp_path / "no-such-folder" / "summary.md"
    result = run([base, base, "--summary", "-o", str(out), "--format", "json"], env={"GITHUB_STEP_SUMMARY": str(missing)})
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--summary" in errors[0]
    assert json.loads(out.read_text())["kind"] == "compare" and json.loads(result.stdout)["kind"] == "compare"
