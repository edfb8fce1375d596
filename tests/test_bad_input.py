"""The bad-input table: each case gives its exit code and one line naming the file, no traceback,
no output file left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from lleval.cli import main

GOOD = [{"text": "The keeper wrote in the logbook every evening."}, {"text": "Bread needs flour and water."}]


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _report(tmp: Path, model: Path) -> Path:
    out = tmp / "base-report.json"
    data = _jsonl(tmp / "base-data.jsonl", GOOD)
    result = CliRunner().invoke(main, ["score", "-q", "-m", str(model), "-d", str(data), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


# Each case: (name, setup(tmp, model) -> argv, exit code, fragments the one-line message must hold)
Case = tuple[str, Callable[[Path, Path], list[str]], int, list[str]]


def _score(tmp: Path, model: Path, *args: str) -> list[str]:
    return ["score", "-q", "-m", str(model), *args, "-o", str(tmp / "out.json")]


def _data(tmp: Path, model: Path, name: str, content: bytes, *extra: str) -> list[str]:
    path = tmp / name
    path.write_bytes(content)
    return _score(tmp, model, "-d", str(path), *extra)


def _model_copy(tmp: Path, model: Path, drop: list[str]) -> Path:
    folder = tmp / "model-copy"
    shutil.copytree(model, folder)
    for pattern in drop:
        for file in folder.glob(pattern):
            file.unlink()
    return folder


def _gguf(tmp: Path, content: bytes) -> str:
    path = tmp / "broken.gguf"
    path.write_bytes(content)
    return str(path)


CASES: list[Case] = [
    ("non-utf8 text", lambda t, m: _data(t, m, "latin.txt", "caf\xe9 au lait".encode("latin-1")), 2,
     ["latin.txt", "byte offset 3", "--encoding", "--errors replace"]),
    ("non-utf8 jsonl", lambda t, m: _data(t, m, "bad.jsonl", b'{"text": "ok"}\n{"text": "\xff"}\n'), 2,
     ["bad.jsonl", "byte offset 25"]),
    ("binary file", lambda t, m: _data(t, m, "blob.txt", b"\x7fELF\x00\x01\x02" * 10), 2, ["blob.txt", "binary"]),
    ("empty file", lambda t, m: _data(t, m, "empty.txt", b""), 2, ["empty.txt", "empty"]),
    ("empty jsonl", lambda t, m: _data(t, m, "empty.jsonl", b""), 2, ["empty.jsonl", "empty"]),
    ("broken jsonl line", lambda t, m: _data(t, m, "broken.jsonl", b'{"text": "a"}\n{"text": "b"\n{"text": "c"}\n'), 2,
     ["broken.jsonl", "line 2", "not valid JSON"]),
    ("jsonl line not an object", lambda t, m: _data(t, m, "list.jsonl", b'{"text": "a"}\n[1, 2]\n'), 2,
     ["list.jsonl", "line 2", "not an object"]),
    ("missing text field", lambda t, m: _data(t, m, "f.jsonl", b'{"body": "a"}\n'), 2, ["f.jsonl", "'text'", "body"]),
    ("null text", lambda t, m: _data(t, m, "null.jsonl", b'{"text": "a"}\n{"text": null}\n'), 2,
     ["null.jsonl", "row 1", "null"]),
    ("number text", lambda t, m: _data(t, m, "num.jsonl", b'{"text": 5}\n'), 2, ["num.jsonl", "row 0", "int"]),
    ("not a saved dataset", lambda t, m: (t / "folder").mkdir() or _score(t, m, "-d", str(t / "folder")), 2,
     ["folder", "not a saved dataset"]),
    ("unknown file kind", lambda t, m: _data(t, m, "data.xlsx", b"PK\x03\x04"), 2, ["data.xlsx", "unknown kind"]),
    ("missing data file", lambda t, m: _score(t, m, "-d", str(t / "nope.jsonl")), 2, ["nope.jsonl", "does not exist"]),
    ("not parquet", lambda t, m: _data(t, m, "x.parquet", b"hello"), 2, ["x.parquet", "not a Parquet file"]),
    ("unknown encoding", lambda t, m: _data(t, m, "a.txt", b"abc", "--encoding", "klingon"), 2, ["klingon"]),
    ("truncated gguf", lambda t, m: _score(t, m, "-m", _gguf(t, b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)), 2,
     ["broken.gguf", "truncated or corrupted"]),
    ("not a gguf", lambda t, m: _score(t, m, "-m", _gguf(t, b"this is no gguf file at all" * 100)), 2, ["broken.gguf"]),
    ("model without weights", lambda t, m: _score(t, m, "-m", str(_model_copy(t, m, ["*.safetensors"]))), 2,
     ["model-copy"]),
    ("model without tokenizer", lambda t, m: _score(t, m, "-m", str(_model_copy(t, m, ["tokenizer*"]))), 2,
     ["model-copy", "tokenizer"]),
    ("model folder without config", lambda t, m: _score(t, m, "-m", str(_model_copy(t, m, ["config.json"]))), 2,
     ["model-copy", "config.json"]),
    ("max length over positions", lambda t, m: _score(t, m, "-L", "4096"), 2, ["4096", "64 positions"]),
    ("negative limit", lambda t, m: _score(t, m, "--limit", "-3"), 2, ["--limit"]),
    ("stride over max length", lambda t, m: _score(t, m, "-L", "8", "-S", "9"), 2, ["stride (9)"]),
    ("unwritable output", lambda t, m: ["score", "-q", "-m", str(m), "-o", str(t / "missing-dir" / "r.json")], 2,
     ["missing-dir", "does not exist"]),
    ("output is a folder", lambda t, m: ["score", "-q", "-m", str(m), "-o", str(t)], 2, ["is a directory"]),
    ("report not json", lambda t, m: ["compare", str(_report(t, m)), str(_data(t, m, "r.json", b"{oops")[5])], 2,
     ["r.json", "not JSON"]),
    ("report of another schema", lambda t, m: ["compare", str(_report(t, m)), _other_schema(t)], 2,
     ["other.json", "schema version 99"]),
    ("config type error", lambda t, m: ["score", "--config", _config(t, "batch_size: lots\n"), "-m", str(m)], 2,
     ["cfg.yaml", "'batch_size' must be int"]),
    ("config unknown key", lambda t, m: ["score", "--config", _config(t, "protocoll: lm-eval\n"), "-m", str(m)], 2,
     ["cfg.yaml", "did you mean 'protocol'"]),
    ("unknown protocol", lambda t, m: _score(t, m, "--protocol", "perplexity-2000"), 2, ["--protocol"]),
    ("unknown protocol in config", lambda t, m: ["score", "--config", _config(t, "protocol: nope\n"), "-m", str(m)], 2,
     ["--protocol", "nope"]),
    ("bad checkpoint file", lambda t, m: _score(t, m, "--checkpoint", str(_data(t, m, "c.ckpt", b"garbage")[5])), 2,
     ["c.ckpt", "cannot be read"]),
]


def _other_schema(tmp: Path) -> str:
    path = tmp / "other.json"
    path.write_text(json.dumps({"schema_version": 99}))
    return str(path)


def _config(tmp: Path, text: str) -> str:
    path = tmp / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("name,setup,code,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tiny_model_dir: Path, tmp_path: Path, name: str, setup: Any, code: int, fragments: list[str]) -> None:
    argv = setup(tmp_path, tiny_model_dir)
    before = {p.name for p in tmp_path.iterdir()}
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == code, (name, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 or result.stderr.startswith("Usage:"), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (name, fragment, result.stderr)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert not (tmp_path / "out.json").exists()
    leftovers = {p.name for p in tmp_path.iterdir()} - before
    assert not [n for n in leftovers if n.endswith(".tmp")], leftovers


def test_csv_with_quoted_newlines_works(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('text,id\n"first line\nsecond line, with a comma",1\n"plain",2\n')
    result = CliRunner().invoke(main, ["score", "-q", "-m", str(tiny_model_dir), "-d", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["totals"]["documents"] == 2
    assert data["totals"]["bytes"] == len("first line\nsecond line, with a comma".encode()) + len(b"plain")


def test_errors_replace_scores_a_latin1_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9 au lait".encode("latin-1"))
    for extra, text in ((["--errors", "replace"], "caf\ufffd au lait"), (["--encoding", "latin-1"], "café au lait")):
        result = CliRunner().invoke(main, ["score", "-q", "-m", str(tiny_model_dir), "-d", str(path), "--format", "json", *extra])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["totals"]["bytes"] == len(text.encode())
