"""End-to-end CLI runs on the tiny model: every data format, the JSON read back, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lleval.cli import main

TEXTS = [
    "The keeper wrote in the logbook every evening.",
    "Bread needs flour, water, salt and yeast.\nKnead it well.",
    "Blue light scatters more than red light.",
]


def run(args: list[str], input: str | None = None) -> Any:
    return CliRunner().invoke(main, args, input=input, catch_exceptions=False)


def score_json(model: Path, *args: str, input: str | None = None) -> dict[str, Any]:
    result = run(["score", "--model", str(model), "--format", "json", "--quiet", *args], input=input)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def n_tokens(model: Path, texts: list[str]) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def write_format(tmp_path: Path, kind: str) -> Path:
    import datasets

    if kind == "txt":
        path = tmp_path / "docs.txt"
        path.write_text("\n\n".join(TEXTS))
    elif kind == "jsonl":
        path = tmp_path / "docs.jsonl"
        path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    elif kind == "json":
        path = tmp_path / "docs.json"
        path.write_text(json.dumps([{"text": t} for t in TEXTS]))
    elif kind == "csv":
        path = tmp_path / "docs.csv"
        datasets.Dataset.from_dict({"text": TEXTS}).to_csv(str(path), index=False)
    elif kind == "parquet":
        path = tmp_path / "docs.parquet"
        datasets.Dataset.from_dict({"text": TEXTS}).to_parquet(str(path))
    else:
        path = tmp_path / "saved"
        datasets.Dataset.from_dict({"text": TEXTS}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "saved"])
def test_every_format_scores_every_token(tiny_model_dir: Path, tmp_path: Path, kind: str) -> None:
    out = tmp_path / "report.json"
    data = score_json(tiny_model_dir, "--dataset", str(write_format(tmp_path, kind)), "--output", str(out))
    assert json.loads(out.read_text()) == data
    assert data["totals"]["documents"] == 3
    assert data["totals"]["tokens"] == n_tokens(tiny_model_dir, TEXTS)
    assert [d["index"] for d in data["documents"]] == [0, 1, 2]
    assert data["schema_version"] == 1 and data["complete"] is True


@pytest.mark.parametrize(
    "sample_by,expected",
    [
        ("document", ["\n\n".join(TEXTS)]),
        ("paragraph", TEXTS),
        ("line", [line for t in TEXTS for line in t.split("\n")] + []),
    ],
)
def test_txt_sample_by(tiny_model_dir: Path, tmp_path: Path, sample_by: str, expected: list[str]) -> None:
    path = write_format(tmp_path, "txt")
    data = score_json(tiny_model_dir, "--dataset", str(path), "--sample-by", sample_by)
    nonempty = [t for t in expected if t]
    assert data["totals"]["documents"] == len(nonempty)
    assert data["totals"]["tokens"] == n_tokens(tiny_model_dir, nonempty)
    assert data["totals"]["bytes"] == sum(len(t.encode()) for t in nonempty)


def test_stdin_streaming_and_limit(tiny_model_dir: Path, tmp_path: Path) -> None:
    from_stdin = score_json(tiny_model_dir, "--dataset", "-", "--sample-by", "paragraph", input="\n\n".join(TEXTS))
    from_file = score_json(tiny_model_dir, "--dataset", str(write_format(tmp_path, "jsonl")), "--streaming")
    assert from_stdin["totals"] == from_file["totals"]
    assert from_stdin["dataset"]["fingerprint"] == from_file["dataset"]["fingerprint"]
    limited = score_json(tiny_model_dir, "--dataset", str(write_format(tmp_path, "jsonl")), "--limit", "2")
    assert limited["totals"]["tokens"] == n_tokens(tiny_model_dir, TEXTS[:2])


def test_text_field_and_config_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS))
    config = tmp_path / "run.yaml"
    config.write_text(f"dataset: {path}\ntext_field: body\nmax_length: 8\nstride: 4\nbatch_size: 2\n")
    data = score_json(tiny_model_dir, "--config", str(config), "--stride", "8")
    assert data["protocol"]["max_length"] == 8 and data["protocol"]["stride"] == 8  # the flag wins
    assert data["dataset"]["text_field"] == "body"
    assert data["totals"]["tokens"] == n_tokens(tiny_model_dir, TEXTS)


def test_markdown_and_table_formats(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = str(write_format(tmp_path, "jsonl"))
    for fmt in ("markdown", "table"):
        result = run(["score", "-m", str(tiny_model_dir), "-d", data, "--format", fmt, "-q"])
        assert result.exit_code == 0
        assert result.stdout.strip() and not result.stdout.lstrip().startswith("{")


def test_version_and_help() -> None:
    from lleval import __version__

    assert run(["--version"]).stdout.strip().endswith(__version__)
    assert run(["score", "--help"]).exit_code == 0


def _bad_cases(tmp_path: Path, model: Path) -> list[tuple[list[str], int, str]]:
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS))
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": ""}) + "\n")
    odd = tmp_path / "docs.xyz"
    odd.write_text("hello")
    not_saved = tmp_path / "plain-folder"
    not_saved.mkdir()
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("strid: 3\n")
    no_config = tmp_path / "no-config-model"
    no_config.mkdir()
    m = ["--model", str(model)]
    return [
        (["--model", str(tmp_path / "missing-model")], 2, "does not exist"),
        (["--model", str(no_config), "-d", str(data), "--text-field", "body"], 2, "no config.json"),
        (m + ["-d", str(tmp_path / "missing.jsonl")], 2, "does not exist"),
        (m + ["-d", str(odd)], 2, "unknown kind"),
        (m + ["-d", str(not_saved)], 2, "not a saved dataset"),
        (m + ["-d", str(data)], 2, "its columns are body"),
        (m + ["-d", str(data), "--text-field", "body", "-L", "8", "-S", "9"], 2, "stride (9) is larger"),
        (m + ["-d", str(data), "--stride", "0"], 2, "--stride"),
        (m + ["-d", str(data), "--text-field", "body", "-L", "4096"], 2, "larger than the model's 64 positions"),
        (m + ["-d", str(empty)], 2, "nothing left to score"),
        (m + ["-d", str(data), "--text-field", "body", "--limit", "0"], 2, "nothing left to score"),
        (m + ["-d", str(data), "--text-field", "body", "-o", str(tmp_path / "no" / "r.json")], 2, "does not exist"),
        (m + ["-d", str(data), "--text-field", "body", "--prefix-token", "99999"], 2, "not in the tokenizer"),
        (["--config", str(bad_config)], 2, "did you mean 'stride'"),
        (m + ["--dtype", "fp8"], 2, "--dtype"),
        (["--model", "no-such-org/no-such-model"], 2, "not in the local cache"),
        (m + ["-d", "no-such-org/no-such-dataset"], 2, "not in the local cache"),
    ]


def test_bad_input_gives_one_line_and_exit_code(tiny_model_dir: Path, tmp_path: Path) -> None:
    for args, code, fragment in _bad_cases(tmp_path, tiny_model_dir):
        result = run(["score", "-q", *args])
        assert result.exit_code == code, (args, result.output)
        assert fragment in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output
        assert result.stdout == ""


def test_not_a_causal_lm(tmp_path: Path) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path / "t5"
    config = T5Config(vocab_size=320, d_model=8, d_ff=8, num_layers=1, num_heads=2, d_kv=4)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    (tmp_path / "d.txt").write_text("hello")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(Path(__file__).parent / "assets" / "tiny-tokenizer").save_pretrained(folder)
    result = run(["score", "-q", "--model", str(folder), "-d", str(tmp_path / "d.txt")])
    assert result.exit_code == 2
    assert "not a causal language model" in result.stderr


@pytest.mark.parametrize(
    "name,hub",
    [("gpt2", True), ("org/name-1.5", True), ("./x", False), ("/abs/x", False), ("a/b/c", False), (".hidden", False)],
)
def test_hub_ids_and_paths(name: str, hub: bool) -> None:
    from lleval.hub import is_hub_id

    assert is_hub_id(name) is hub


def test_device_map_records_placement(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = score_json(tiny_model_dir, "--dataset", str(write_format(tmp_path, "jsonl")), "--device-map", "auto")
    plain = score_json(tiny_model_dir, "--dataset", str(write_format(tmp_path, "jsonl")))
    assert data["model"]["device_map"] == {"": "cpu"} and plain["model"]["device_map"] is None
    assert data["documents"] == plain["documents"]
