"""Every report kind (score, kld, compare) is a typed result built in the library whose
``to_dict()`` survives JSON unchanged and validates against its shipped JSON Schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from helpers import write_jsonl
from lleval.config import EvalConfig

SCHEMAS = Path(__file__).resolve().parent.parent / "src" / "lleval" / "schemas"
TEXTS = ["The keeper wrote in the logbook every evening.", "Bread needs flour, water, salt and yeast.",
         "Blue light scatters more than red light, which is why the sky looks blue."]


def _schema(kind: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{kind}.schema.json").read_text())


def _check(result: Any, kind: str) -> dict[str, Any]:
    data = result.to_dict()
    assert data["kind"] == kind and data["schema_version"] == 1
    assert json.loads(result.to_json()) == data  # exact through JSON: no NaN, no objects
    jsonschema.validate(data, _schema(kind))
    return data


@pytest.fixture(scope="module")
def score_report(tiny_loaded: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from lleval.commands.score import evaluate

    data = write_jsonl(tmp_path_factory.mktemp("schema") / "d.jsonl", TEXTS)
    return evaluate(EvalConfig(dataset=data, max_length=16, bootstrap=100), loaded=tiny_loaded)


def test_score_report(score_report: Any) -> None:
    data = _check(score_report, "score")
    assert [d["index"] for d in data["documents"]] == [0, 1, 2]


def test_kld_report(tiny_loaded: Any, tmp_path: Path) -> None:
    from lleval.commands.kld import kl_divergence

    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    result = kl_divergence(EvalConfig(dataset=data, max_length=16, bootstrap=100), None, base=tiny_loaded,
                           model=tiny_loaded)
    assert _check(result, "kld")["kl_divergence"]["max"] == 0.0


def test_compare_report(score_report: Any, tmp_path: Path) -> None:
    from lleval.commands.compare import compare_report_files

    path = tmp_path / "r.json"
    path.write_text(score_report.to_json())
    result = compare_report_files(str(path), [str(path)], max_regression_pct=1.0, n_resamples=100)
    assert _check(result, "compare")["passed"] is True


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("totals"),
    lambda d: d["documents"][0].update(tokens=-1),
    lambda d: d["metrics"].update(perplexity="high"),
    lambda d: d.update(kind="kld"),
])
def test_schema_rejects_a_broken_score_report(score_report: Any, mutate: Any) -> None:
    data = copy.deepcopy(score_report.to_dict())
    mutate(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, _schema("score"))


def test_score_report_with_document_ids(tiny_loaded: Any, tmp_path: Path) -> None:
    from lleval.commands.score import evaluate

    rows = [{"id": "a-1", "text": TEXTS[0]}, {"id": 7, "text": TEXTS[1]}, {"text": TEXTS[2]}]
    report = evaluate(EvalConfig(dataset=write_jsonl(tmp_path / "d.jsonl", rows), max_length=16, bootstrap=0),
                      loaded=tiny_loaded)
    data = _check(report, "score")
    assert [d.get("id") for d in data["documents"]] == ["a-1", 7, None]
    bad = copy.deepcopy(data)
    bad["documents"][0]["id"] = [1, 2]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _schema("score"))


# --- reading reports back: from_dict of every kind, checked against the shipped schemas ---

def _report_kinds() -> dict[str, Any]:
    from lleval.report.compare import ComparisonReport
    from lleval.report.kld import KLReport
    from lleval.report.score import Report

    return {"score": Report, "kld": KLReport, "compare": ComparisonReport}


@pytest.fixture(scope="module")
def reports(score_report: Any, tiny_loaded: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One report of every kind, and a llama-cpp score report (its protocol block has keys
    the typed block does not name: ``first_scored_position``, ``chunk_bos``, ``chunks``)."""
    from lleval.commands.compare import compare_report_files
    from lleval.commands.kld import kl_divergence
    from lleval.commands.score import evaluate

    folder = tmp_path_factory.mktemp("kinds")
    data = write_jsonl(folder / "d.jsonl", TEXTS)
    path = folder / "r.json"
    path.write_text(score_report.to_json())
    long = write_jsonl(folder / "long.jsonl", [" ".join(TEXTS * 3)])
    return {
        "score": score_report,
        "kld": kl_divergence(EvalConfig(dataset=data, max_length=16, bootstrap=100), None, base=tiny_loaded,
                             model=tiny_loaded),
        "compare": compare_report_files(str(path), [str(path)], max_regression_pct=1.0, n_resamples=100),
        "llama-cpp": evaluate(EvalConfig(dataset=long, protocol="llama-cpp", max_length=16, bootstrap=0),
                              loaded=tiny_loaded),
    }


@pytest.mark.parametrize("name", ["score", "kld", "compare", "llama-cpp"])
def test_a_report_reads_back_to_the_same_json(reports: dict[str, Any], name: str) -> None:
    report = reports[name]
    kind = report.to_dict()["kind"]
    text = report.to_json()
    back = _report_kinds()[kind].from_dict(json.loads(text), source="r.json")
    assert back.to_dict() == report.to_dict()
    assert back.to_json() == text  # key for key, in the same order


@pytest.mark.parametrize("name", ["kld", "compare"])
def test_a_report_reads_back_equal(reports: dict[str, Any], name: str) -> None:
    report = reports[name]
    assert type(report).from_dict(report.to_dict()) == report


def test_a_score_report_reads_back_equal_but_for_what_its_json_leaves_out(score_report: Any) -> None:
    """The documents' squared log-prob sums and non-finite counts are in no JSON row: they
    read back as 0; the report's totals keep theirs."""
    from dataclasses import replace

    from lleval.metrics import DocumentResult
    from lleval.report.score import Report

    back = Report.from_dict(score_report.to_dict())
    rows = [DocumentResult(d.index, d.log_likelihood, d.tokens, d.bytes, d.words, id=d.id)
            for d in score_report.documents]
    assert back == replace(score_report, documents=rows)
    assert back.totals.logprob_sq_sum == score_report.totals.logprob_sq_sum > 0
    assert back.metrics == score_report.metrics


def test_the_protocol_block_says_which_metrics_exist(score_report: Any) -> None:
    from lleval.report.score import Report

    data = copy.deepcopy(score_report.to_dict())
    assert Report.from_dict(data).protocol.has_per_byte_metrics
    data["protocol"]["scores_every_token"] = False  # as llama-cpp and hf-guide with S = L
    report = Report.from_dict(data)
    assert not report.protocol.has_per_byte_metrics and not report.protocol.has_llamacpp_error
    assert report.to_dict()["metrics"]["bits_per_byte"] is None and report.metrics["perplexity"] is not None
    data["protocol"]["name"] = "llama-cpp"
    assert Report.from_dict(data).to_dict()["metrics"]["perplexity_stderr_llamacpp"] is not None


def test_a_header_block_reads_like_the_dict_it_replaces(score_report: Any) -> None:
    data = score_report.to_dict()
    for name in ("model", "tokenizer", "dataset", "protocol", "timing"):
        block = getattr(score_report, name)
        assert dict(block) == block.to_dict() == data[name] and block == data[name]
    assert score_report.model["dtype"] == score_report.model.dtype == data["model"]["dtype"]
    assert score_report.protocol.get("no such key") is None


@pytest.mark.parametrize("kind,mutate,where", [
    ("score", lambda d: d.pop("totals"), "has no valid 'totals'"),
    ("score", lambda d: d["documents"][1].update(tokens=-1), ": documents[1].tokens is -1, below its minimum 0."),
    ("score", lambda d: d["documents"][0].update(log_likelihood=float("nan")), ": documents[0].log_likelihood is not a finite number."),
    ("score", lambda d: d["metrics"].update(perplexity="high"), ": metrics.perplexity is 'high', not number or null."),
    ("score", lambda d: d["model"].pop("dtype"), ": model lacks 'dtype'."),
    ("score", lambda d: d["protocol"].update(name="rollin"), ": protocol.name is 'rollin', not 'rolling' or"),
    ("score", lambda d: d.update(complete="yes"), "has no valid 'complete' (is 'yes', not boolean)"),
    ("score", lambda d: d.update(kind="kld"), "is a 'kld' report, not a 'score' report."),
    ("score", lambda d: d.update(schema_version=3), "has schema version 3"),
    ("kld", lambda d: d["kl_divergence"]["percentiles"].pop("p99"), ": kl_divergence.percentiles lacks 'p99'."),
    ("kld", lambda d: d["perplexity"].update(ln_ratio_ci=[1.0]), ": perplexity.ln_ratio_ci is [1.0], which fits 0"),
    ("kld", lambda d: d.update(top_token_agreement=1.5), "has no valid 'top_token_agreement' (is 1.5, above its maximum 1)"),
    ("compare", lambda d: d["comparisons"][0].update(metric="nll"), ": comparisons[0].metric is 'nll', not"),
    ("compare", lambda d: d.pop("passed"), "has no valid 'passed'"),
])
def test_a_broken_report_is_refused_in_one_line(reports: dict[str, Any], kind: str, mutate: Any, where: str) -> None:
    from lleval.errors import ReportError

    data = copy.deepcopy(reports[kind].to_dict())
    mutate(data)
    with pytest.raises(ReportError) as caught:
        _report_kinds()[kind].from_dict(data, source="runs/r.json")
    message = str(caught.value)
    assert message.startswith("report runs/r.json") and where in message and "\n" not in message
    if "finite" not in where:  # jsonschema refuses it too (a NaN is a number to jsonschema, not to JSON)
        assert not jsonschema.Draft202012Validator(_schema(kind)).is_valid(data)


@pytest.mark.parametrize("kind", ["score", "kld", "compare"])
def test_the_check_agrees_with_jsonschema(reports: dict[str, Any], kind: str) -> None:
    """Three hundred random edits of a valid report (a leaf replaced, a key dropped or
    added): our check and jsonschema give the same verdict on each."""
    import random

    from lleval.report.schema import checker

    validator = jsonschema.Draft202012Validator(_schema(kind))
    rng = random.Random(kind)
    values = [None, True, False, 0, 1, -1, 2.5, -0.5, 1.0, "x", "rolling", [], {}, [1.0, 2.0], [None, 3], {"a": 1}]
    verdicts = []
    for _ in range(300):
        data = copy.deepcopy(reports[kind].to_dict())
        parent, key = _random_place(data, rng)
        action = rng.random()
        if action < 0.15 and isinstance(parent, dict):
            del parent[key]
        elif action < 0.25 and isinstance(parent, dict):
            parent[f"extra_{rng.randrange(9)}"] = rng.choice(values)
        else:
            parent[key] = copy.deepcopy(rng.choice(values))
        ours = checker(kind)(data) is None
        assert ours == validator.is_valid(data), (parent, key, checker(kind)(data))
        verdicts.append(ours)
    assert 20 < sum(verdicts) < 280  # both verdicts were tried


def _random_place(data: Any, rng: Any) -> tuple[Any, Any]:
    """A random (container, key or index) inside ``data``, going down a random path."""
    parent, key = data, rng.choice(list(data))
    while isinstance(parent[key], (dict, list)) and parent[key] and rng.random() < 0.7:
        parent = parent[key]
        key = rng.choice(list(parent)) if isinstance(parent, dict) else rng.randrange(len(parent))
    return parent, key


def test_every_shipped_schema_uses_only_keywords_the_check_reads() -> None:
    from lleval.report.schema import KINDS, load_schema

    assert sorted(p.name for p in SCHEMAS.glob("*.schema.json")) == sorted(f"{k}.schema.json" for k in KINDS)
    for kind in KINDS:
        assert load_schema(kind) == _schema(kind)
