"""`--sample N` (with `--seed`): a reproducible random subset of rows, in source order, recorded in
the report (settings and dataset block) and in the checkpoint's fingerprint; with `--limit L`, N of
the first L rows (issue 30)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

from helpers import write_jsonl
from lleval.cli import main
from lleval.config import EvalConfig
from lleval.data.sources import DocumentStream, sample_keys, sample_rows
from lleval.data.spec import data_spec
from lleval.errors import ConfigError

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "src" / "lleval" / "schemas" / "score.schema.json")
                    .read_text())
TEXTS = [f"Row {i} says {'many ' * (i % 5)}things about the number {i}." for i in range(60)]


def documents(config: EvalConfig) -> list[Any]:
    return list(DocumentStream(data_spec(config)))


def smallest_keys(rows: int, n: int, seed: int) -> list[int]:
    """The rows --sample draws, by a naive sort of every row's key."""
    keys = [(int(sample_keys(np.asarray([i]), seed)[0]), i) for i in range(rows)]
    return sorted(i for _key, i in sorted(keys)[:n])


@pytest.mark.parametrize("seed", [0, 7, -3, 2**70])
def test_a_sample_is_n_rows_in_source_order_and_the_same_for_the_same_seed(tmp_path: Path, seed: int) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    docs = documents(EvalConfig(dataset=data, sample=10, seed=seed))
    assert [d.index for d in docs] == smallest_keys(len(TEXTS), 10, seed)
    assert [d.text for d in docs] == [TEXTS[d.index] for d in docs]  # each row's own text
    assert [d.index for d in documents(EvalConfig(dataset=data, sample=10, seed=seed))] == [d.index for d in docs]


def test_other_seeds_draw_other_rows_and_samples_nest(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    draws = {seed: {d.index for d in documents(EvalConfig(dataset=data, sample=10, seed=seed))} for seed in range(5)}
    assert len({frozenset(v) for v in draws.values()}) == 5
    small = {d.index for d in documents(EvalConfig(dataset=data, sample=5, seed=3))}
    assert small < draws[3]  # --sample 5 holds no row --sample 10 does not


def test_streaming_and_stdin_draw_the_same_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    whole = [d.index for d in documents(EvalConfig(dataset=data, sample=12, seed=4))]
    streamed = [d.index for d in documents(EvalConfig(dataset=data, sample=12, seed=4, streaming=True))]
    assert streamed == whole
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(TEXTS).encode())))
    piped = documents(EvalConfig(dataset="-", sample_by="line", sample=12, seed=4))
    assert [d.index for d in piped] == whole and [d.text for d in piped] == [TEXTS[i] for i in whole]


def test_limit_then_sample(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    docs = documents(EvalConfig(dataset=data, limit=30, sample=8, seed=2))
    assert [d.index for d in docs] == smallest_keys(30, 8, 2) and max(d.index for d in docs) < 30
    streamed = documents(EvalConfig(dataset=data, limit=30, sample=8, seed=2, streaming=True))
    assert [d.index for d in streamed] == [d.index for d in docs]


@pytest.mark.parametrize("fields,fragment", [
    ({"sample": 30, "limit": 30}, "would take every one"),
    ({"sample": 40, "limit": 30}, "would take every one"),
    ({"sample": 0}, "sample must be at least 1"),
])
def test_sample_conflicting_with_limit_is_refused(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        EvalConfig(**fields).validate()


def test_seed_with_sample_is_not_refused_without_a_bootstrap() -> None:
    EvalConfig(sample=5, seed=3, bootstrap=0).validate()
    with pytest.raises(ConfigError, match="seeds the bootstrap"):
        EvalConfig(seed=3, bootstrap=0).validate()


def test_the_report_records_the_sample(tiny_loaded: Any, tmp_path: Path) -> None:
    from lleval.commands.score import evaluate

    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:30])
    report = evaluate(EvalConfig(dataset=data, sample=6, seed=9, max_length=16, bootstrap=0), loaded=tiny_loaded)
    out = report.to_dict()
    jsonschema.validate(out, SCHEMA)
    assert out["dataset"]["sample"] == {"rows": 6, "seed": 9, "from_rows": 30}
    assert out["settings"]["sample"]["value"] == 6
    assert [d["index"] for d in out["documents"]] == smallest_keys(30, 6, 9)
    assert out["dataset"]["rows"] == 6 and out["dataset"]["documents"] == 6
    assert not any("--sample" in note for note in out["notes"])
    plain = evaluate(EvalConfig(dataset=data, max_length=16, bootstrap=0), loaded=tiny_loaded).to_dict()
    assert "sample" not in plain["dataset"]  # reports without --sample keep their bytes


def test_a_sample_larger_than_the_data_scores_every_row_and_says_so(tiny_loaded: Any, tmp_path: Path) -> None:
    from lleval.commands.score import evaluate

    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:4])
    out = evaluate(EvalConfig(dataset=data, sample=10, max_length=16, bootstrap=0), loaded=tiny_loaded).to_dict()
    assert [d["index"] for d in out["documents"]] == [0, 1, 2, 3]
    assert out["dataset"]["sample"]["from_rows"] == 4
    assert any("--sample 10 asked for at least as many rows as there are (4)" in note for note in out["notes"])


def test_the_checkpoint_fingerprint_holds_the_sample(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS[:20])
    checkpoint = tmp_path / "c.ckpt"
    base = ["score", "-q", "-m", str(tiny_model_dir), "-d", data, "-L", "16", "--bootstrap", "0", "--checkpoint",
            str(checkpoint), "--format", "json"]
    first = CliRunner().invoke(main, [*base, "--sample", "5", "--seed", "1"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert json.loads(checkpoint.read_text())["fingerprint"]["sample"] == {"rows": 5, "seed": 1}
    again = CliRunner().invoke(main, [*base, "--sample", "5", "--seed", "1"], catch_exceptions=False)
    assert again.exit_code == 0 and json.loads(again.stdout)["documents"] == json.loads(first.stdout)["documents"]
    other = CliRunner().invoke(main, [*base, "--sample", "5", "--seed", "2"], catch_exceptions=False)
    assert other.exit_code == 2 and "random sample of rows" in other.stderr
    whole = CliRunner().invoke(main, base, catch_exceptions=False)
    assert whole.exit_code == 2 and "made with --sample 5 (this run: no --sample)" in whole.stderr


def test_sample_rows_takes_all_when_asked_for_more() -> None:
    assert sample_rows(5, 9, 0).tolist() == [0, 1, 2, 3, 4]
    assert len(sample_rows(1000, 10, 0)) == 10 and len(set(sample_rows(1000, 10, 0).tolist())) == 10


def test_a_suite_file_takes_sample_per_dataset(tmp_path: Path) -> None:
    from lleval.commands.suite import load_suite_file

    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    (tmp_path / "s.yaml").write_text(f"models:\n  - label: m\ndatasets:\n  - label: d\n    dataset: {data}\n"
                                     "    sample: 7\n")
    suite = load_suite_file(str(tmp_path / "s.yaml"))
    assert suite.datasets[0].fields["sample"] == 7
