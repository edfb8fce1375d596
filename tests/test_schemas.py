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
