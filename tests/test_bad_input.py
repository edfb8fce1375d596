"""The bad-input table: every case is input the user must fix, so it exits 2 with one line (or
click's usage message) naming what to fix, no traceback, no output file left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from lleval.cli import main
from lleval.errors import ConfigError, DataError, LlevalError, ModelLoadError, OutputError, ReportError

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


# Each case: (name, setup(tmp, model) -> argv, the typed error the library raises (None: click's
# own usage error), fragments the one-line message must hold); every case exits 2
Case = tuple[str, Callable[[Path, Path], list[str]], "type[LlevalError] | None", list[str]]


def _score(tmp: Path, model: Path, *args: str) -> list[str]:
    return ["score", "-q", "-m", str(model), *args, "-o", str(tmp / "out.json")]


def _score_with(tmp: Path, model: str | Path) -> list[str]:
    """Score with ``model`` in place of the tiny one (a second -m would make the run a suite)."""
    return ["score", "-q", "-m", str(model), "-o", str(tmp / "out.json")]


def _data(tmp: Path, model: Path, name: str, content: bytes, *extra: str) -> list[str]:
    path = tmp / name
    path.write_bytes(content)
    return _score(tmp, model, "-d", str(path), *extra)


def _bodies(tmp: Path, model: Path, *args: str) -> list[str]:
    """Score a JSON lines file whose text is in a column 'body' (read with --text-field body)."""
    data = _jsonl(tmp / "bodies.jsonl", [{"body": row["text"]} for row in GOOD])
    return _score(tmp, model, "-d", str(data), "--text-field", "body", *args)


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
    ("non-utf8 text", lambda t, m: _data(t, m, "latin.txt", "caf\xe9 au lait".encode("latin-1")), DataError,
     ["latin.txt", "byte offset 3", "--encoding", "--errors replace"]),
    ("non-utf8 jsonl", lambda t, m: _data(t, m, "bad.jsonl", b'{"text": "ok"}\n{"text": "\xff"}\n'), DataError,
     ["bad.jsonl", "byte offset 25"]),
    ("binary file", lambda t, m: _data(t, m, "blob.txt", b"\x7fELF\x00\x01\x02" * 10), DataError, ["blob.txt", "binary"]),
    ("empty file", lambda t, m: _data(t, m, "empty.txt", b""), DataError, ["empty.txt", "empty"]),
    ("empty jsonl", lambda t, m: _data(t, m, "empty.jsonl", b""), DataError, ["empty.jsonl", "empty"]),
    ("broken jsonl line", lambda t, m: _data(t, m, "broken.jsonl", b'{"text": "a"}\n{"text": "b"\n{"text": "c"}\n'), DataError,
     ["broken.jsonl", "line 2", "not valid JSON"]),
    ("jsonl line not an object", lambda t, m: _data(t, m, "list.jsonl", b'{"text": "a"}\n[1, 2]\n'), DataError,
     ["list.jsonl", "line 2", "not an object"]),
    ("missing text field", lambda t, m: _data(t, m, "f.jsonl", b'{"body": "a"}\n'), DataError,
     ["f.jsonl", "'text'", "its columns are body"]),
    ("null text", lambda t, m: _data(t, m, "null.jsonl", b'{"text": "a"}\n{"text": null}\n'), DataError,
     ["null.jsonl", "row 1", "null"]),
    ("number text", lambda t, m: _data(t, m, "num.jsonl", b'{"text": 5}\n'), DataError, ["num.jsonl", "row 0", "int"]),
    ("not a saved dataset", lambda t, m: (t / "folder").mkdir() or _score(t, m, "-d", str(t / "folder")), DataError,
     ["folder", "not a saved dataset"]),
    ("unknown file kind", lambda t, m: _data(t, m, "data.xlsx", b"PK\x03\x04"), DataError, ["data.xlsx", "unknown kind"]),
    ("missing data file", lambda t, m: _score(t, m, "-d", str(t / "nope.jsonl")), DataError, ["nope.jsonl", "does not exist"]),
    ("not parquet", lambda t, m: _data(t, m, "x.parquet", b"hello"), DataError, ["x.parquet", "not a Parquet file"]),
    ("corrupt parquet", lambda t, m: _data(t, m, "c.parquet", b"PAR1" + b"garbage" * 9 + b"PAR1"), DataError,
     ["c.parquet", "cannot read data file"]),
    ("split of a local file", lambda t, m: _data(t, m, "s.jsonl", b'{"text": "a"}\n', "--split", "validation"),
     ConfigError, ["s.jsonl", "has one split, 'train'"]),
    ("unknown encoding", lambda t, m: _data(t, m, "a.txt", b"abc", "--encoding", "klingon"), DataError, ["klingon"]),
    ("truncated gguf", lambda t, m: _score_with(t, _gguf(t, b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)), ModelLoadError,
     ["broken.gguf", "truncated or corrupted"]),
    ("not a gguf", lambda t, m: _score_with(t, _gguf(t, b"this is no gguf file at all" * 100)), ModelLoadError, ["broken.gguf"]),
    ("model without weights", lambda t, m: _score_with(t, _model_copy(t, m, ["*.safetensors"])), ModelLoadError,
     ["model-copy"]),
    ("model without tokenizer", lambda t, m: _score_with(t, _model_copy(t, m, ["tokenizer*"])), ModelLoadError,
     ["model-copy", "tokenizer"]),
    ("model folder without config", lambda t, m: _score_with(t, _model_copy(t, m, ["config.json"])), ModelLoadError,
     ["model-copy", "config.json"]),
    ("max length over positions", lambda t, m: _score(t, m, "-L", "4096"), ConfigError,
     ["4096", "larger than the model's 64 positions"]),
    ("negative limit", lambda t, m: _score(t, m, "--limit", "-3"), None, ["--limit"]),
    ("stride over max length", lambda t, m: _score(t, m, "-L", "8", "-S", "9"), ConfigError, ["stride (9) is larger"]),
    ("stride 0", lambda t, m: _score(t, m, "--stride", "0"), None, ["--stride"]),
    ("unwritable output", lambda t, m: ["score", "-q", "-m", str(m), "-o", str(t / "missing-dir" / "r.json")], OutputError,
     ["missing-dir", "does not exist"]),
    ("output is a folder", lambda t, m: ["score", "-q", "-m", str(m), "-o", str(t)], None, ["is a directory"]),
    ("report not json", lambda t, m: ["compare", str(_report(t, m)), str(_data(t, m, "r.json", b"{oops")[5])], ReportError,
     ["r.json", "not JSON"]),
    ("report of another schema", lambda t, m: ["compare", str(_report(t, m)), _other_schema(t)], ReportError,
     ["other.json", "schema version 99"]),
    ("config type error", lambda t, m: ["score", "--config", _config(t, "batch_size: lots\n"), "-m", str(m)], ConfigError,
     ["cfg.yaml", "'batch_size' must be int"]),
    ("config unknown keys", lambda t, m: ["score", "--config", _config(t, "protocoll: lm-eval\nstrid: 3\n"), "-m", str(m)],
     ConfigError, ["cfg.yaml", "did you mean 'protocol'", "did you mean 'stride'"]),
    ("unknown protocol", lambda t, m: _score(t, m, "--protocol", "perplexity-2000"), None, ["--protocol"]),
    ("unknown protocol in config", lambda t, m: ["score", "--config", _config(t, "protocol: nope\n"), "-m", str(m)],
     ConfigError, ["cfg.yaml", "'protocol' must be one of", "nope"]),
    ("config value out of range", lambda t, m: ["score", "--config", _config(t, "max-length: 0\n"), "-m", str(m)],
     ConfigError, ["cfg.yaml", "'max-length' must be at least 1, got 0"]),
    # found by the pre-check before any model loads (the model named here does not exist)
    ("null text late in jsonl", lambda t, m: _late_row(t, "late.jsonl", None), DataError,
     ["late.jsonl", "line 251 (row 250)", "'text' is null"]),
    ("number text in json array", lambda t, m: _nowhere(t, _data(t, m, "arr.json", b'[{"text": "a"}, {"text": 7.5}]')),
     DataError, ["arr.json", "row 1", "'text' is float"]),
    ("list text in json columns", lambda t, m: _nowhere(t, _data(t, m, "col.json", b'{"text": ["a", ["b"]]}')),
     DataError, ["col.json", "row 1", "'text' is list"]),
    ("row without the text field", lambda t, m: _nowhere(t, _data(t, m, "gap.jsonl", b'{"text": "a"}\n{"body": "b"}\n')),
     DataError, ["gap.jsonl", "line 2 (row 1)", "no field 'text'", "body"]),
    ("broken json file", lambda t, m: _nowhere(t, _data(t, m, "b.json", b'[{"text": "a"},\n {"text": "b"]')), DataError,
     ["b.json", "not valid JSON", "line 2"]),
    ("csv unterminated quote", lambda t, m: _nowhere(t, _data(t, m, "q.csv", b'text,id\n"a",1\n"b,2\nc,3\n')), DataError,
     ["q.csv", "line 3", "never closed"]),
    ("csv row with too many fields", lambda t, m: _nowhere(t, _data(t, m, "f.csv", b'text,id\na,1\nb,c,2\n')), DataError,
     ["f.csv", "line 3", "3 fields", "header has 2"]),
    ("empty stdin", lambda t, m: _score(t, t / "no-model", "-d", "-"), DataError,
     ["nothing to score in standard input", "1 row read, 1 empty"]),
    ("all rows empty", lambda t, m: _nowhere(t, _data(t, m, "e.jsonl", b'{"text": ""}\n{"text": ""}\n')), DataError,
     ["e.jsonl", "2 rows read, 2 empty"]),
    ("limit 0", lambda t, m: _score(t, m, "--limit", "0"), ConfigError, ["--limit 0 scores no row"]),
    ("tokens file of another kind", lambda t, m: _score(t, m, "--tokens", str(t / "t.json")), ConfigError,
     ["t.json", "use .parquet or .jsonl"]),
    ("config key in two spellings", lambda t, m: ["score", "--config", _config(t, "max_length: 5\nmax-length: 7\n")],
     ConfigError, ["cfg.yaml", "'max_length' (line 1) and 'max-length' (line 2) both set max_length"]),
    ("config key twice", lambda t, m: ["score", "--config", _config(t, "stride: 5\nquiet: true\nstride: 7\n")],
     ConfigError, ["cfg.yaml", "'stride' (line 1) and 'stride' (line 3) both set stride"]),
    ("split from config file", lambda t, m: _nowhere(t, ["score", "--config", _config(t, "split: test\n"), "-d",
                                                         str(_jsonl(t / "s.jsonl", GOOD))]),
     ConfigError, ["s.jsonl", "drop split: test (from config file", "cfg.yaml"]),
    ("bad checkpoint file", lambda t, m: _score(t, m, "--checkpoint", str(_data(t, m, "c.ckpt", b"garbage")[5])), ConfigError,
     ["c.ckpt", "cannot be read"]),
    ("checkpoint in a missing folder", lambda t, m: _score(t, m, "--checkpoint", str(t / "no" / "such" / "ck")),
     OutputError, ["pick another --checkpoint"]),
    ("missing model", lambda t, m: _score_with(t, t / "missing-model"), ModelLoadError,
     ["missing-model", "does not exist"]),
    ("empty model folder", lambda t, m: (t / "empty-model").mkdir() or _score_with(t, t / "empty-model"),
     ModelLoadError, ["empty-model", "no config.json"]),
    ("hub model not cached", lambda t, m: _score_with(t, "no-such-org/no-such-model"), ModelLoadError,
     ["no-such-org/no-such-model", "not in the local cache"]),
    ("hub dataset not cached", lambda t, m: _score(t, m, "-d", "no-such-org/no-such-dataset"), DataError,
     ["no-such-org/no-such-dataset", "not in the local cache"]),
    ("one empty row", lambda t, m: _data(t, m, "one-empty.jsonl", b'{"text": ""}\n'), DataError,
     ["one-empty.jsonl", "1 row read, 1 empty"]),
    ("prefix token not in the vocabulary", lambda t, m: _bodies(t, m, "--prefix-token", "99999"), ConfigError,
     ["--prefix-token 99999", "not in the tokenizer"]),
    ("unknown dtype", lambda t, m: _score(t, m, "--dtype", "fp8"), None, ["--dtype"]),
    # flags that would be accepted and then ignored
    ("dataset config of a local file", lambda t, m: _bodies(t, m, "--dataset-config", "foo"), ConfigError,
     ["bodies.jsonl", "--dataset-config names a configuration"]),
    ("sample-by of rows", lambda t, m: _bodies(t, m, "--sample-by", "paragraph"), ConfigError,
     ["bodies.jsonl", "each row is already a document"]),
    ("checkpoint-every alone", lambda t, m: _score(t, m, "--checkpoint-every", "5"), ConfigError,
     ["--checkpoint-every needs --checkpoint"]),
    ("seed without bootstrap", lambda t, m: _score(t, m, "--bootstrap", "0", "--seed", "3"), ConfigError,
     ["--seed seeds the bootstrap"]),
    ("device map and device", lambda t, m: _score(t, m, "--device-map", "auto", "--device", "cpu"), ConfigError,
     ["drop --device"]),
    ("revision of a local model", lambda t, m: _score(t, m, "--revision", "main"), ConfigError, ["drop --revision"]),
    ("no model cache of a model folder", lambda t, m: _score(t, m, "--no-model-cache"), ConfigError,
     ["--no-model-cache bypasses the cache of converted .gguf files"]),
    # flag conflicts found before the model loads
    ("concat with lm-eval", lambda t, m: _score(t, m, "--concat", "--protocol", "lm-eval"), ConfigError,
     ["drop --concat"]),
    ("prefix token not an id", lambda t, m: _score(t, m, "--prefix-token", "abc"), ConfigError,
     ["prefix_token must be auto, none or a token id"]),
    ("prefix token of hf-guide", lambda t, m: _score(t, m, "--protocol", "hf-guide", "--prefix-token", "none"),
     ConfigError, ["fixes the prefix token"]),
    ("concat and no-concat", lambda t, m: _score(t, m, "--concat", "--no-concat"), None,
     ["--concat and --no-concat both given"]),
]


def _nowhere(tmp: Path, argv: list[str]) -> list[str]:
    """The same command with a model that does not exist: a data error must come first."""
    return [*argv, "-m", str(tmp / "no-model")]


def _late_row(tmp: Path, name: str, text: Any) -> list[str]:
    """250 good rows, then a row whose text is ``text``; a default block: all in one block."""
    path = _jsonl(tmp / name, [{"text": f"row {i}"} for i in range(250)] + [{"text": text}])
    return _score(tmp, tmp / "no-model", "-d", str(path))


def _other_schema(tmp: Path) -> str:
    path = tmp / "other.json"
    path.write_text(json.dumps({"schema_version": 99}))
    return str(path)


def _config(tmp: Path, text: str) -> str:
    path = tmp / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_table_covers_every_input_error() -> None:
    """Every typed error that means "fix your input" (exit code 2) has a case in the table."""
    import lleval.errors as errors

    input_errors = {cls for cls in vars(errors).values()
                    if isinstance(cls, type) and issubclass(cls, LlevalError) and cls.exit_code == 2}
    assert input_errors == {case[2] for case in CASES} - {None}


@pytest.mark.parametrize("name,setup,error,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, setup: Any,
    error: type[LlevalError] | None, fragments: list[str],
) -> None:
    argv = setup(tmp_path, tiny_model_dir)
    before = {p.name for p in tmp_path.iterdir()}
    raised: list[type] = []
    original = LlevalError.__init__

    def recording_init(self: LlevalError, *args: Any) -> None:
        raised.append(type(self))
        original(self, *args)

    monkeypatch.setattr(LlevalError, "__init__", recording_init)
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 2, (name, result.output)
    assert raised[-1:] == ([error] if error else []), (name, raised)
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


@pytest.mark.subprocess
def test_corrupt_parquet_gives_exactly_one_line_in_a_real_process(tmp_path: Path) -> None:
    """pyarrow's own "Failed to read schema" log line must not come before lleval's (a real
    process: CliRunner would not see what library loggers write to the real stderr)."""
    import subprocess
    import sys

    path = tmp_path / "c.parquet"
    path.write_bytes(b"PAR1" + b"garbage" * 9 + b"PAR1")
    lleval = str(Path(sys.executable).parent / "lleval")
    result = subprocess.run([lleval, "score", "-q", "-d", str(path), "--model", "none.gguf"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: cannot read data file"), result.stderr


REFUSED_EARLY = [
    ["score", "--concat", "--protocol", "lm-eval"],
    ["score", "--limit", "0"],
    ["score", "--tokens", "t.json"],
    ["score", "-d", "missing.jsonl"],
    ["score", "-d", "s.jsonl", "--split", "test"],
    ["score", "--config", "cfg.yaml"],
    ["kld", "--base-dtype", "float32", "--bootstrap", "0", "--seed", "1"],
    ["kld", "--base-dtype", "float32", "--checkpoint", "c.ckpt"],
    ["kld", "--base-dtype", "float32", "--token-stats"],
]


@pytest.mark.subprocess
@pytest.mark.parametrize("argv", REFUSED_EARLY, ids=[" ".join(a) for a in REFUSED_EARLY])
def test_flag_problems_are_refused_before_torch_is_imported(tmp_path: Path, argv: list[str]) -> None:
    """What needs neither the model nor the data's contents is refused before torch,
    transformers or datasets is imported (a real process: their imports are what is slow)."""
    import subprocess
    import sys

    _jsonl(tmp_path / "s.jsonl", GOOD)
    (tmp_path / "cfg.yaml").write_text("max_length: 5\nmax-length: 7\n")
    probe = (
        "import json, sys\nfrom lleval.cli import main\n"
        "try:\n    main(sys.argv[1:], prog_name='lleval')\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print(json.dumps({'code': code, 'imported': [m for m in ('torch', 'transformers', 'datasets') "
        "if m in sys.modules]}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    outcome = json.loads(result.stdout)
    assert outcome == {"code": 2, "imported": []}, result.stderr
    one_line = result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert one_line or result.stderr.startswith("Usage:"), result.stderr  # click's usage errors (--config)
    assert "Traceback" not in result.stderr


def test_rows_past_the_limit_are_not_type_checked(tiny_model_dir: Path, tmp_path: Path) -> None:
    """--limit 2 reads two rows: a null text in the third is never scored, so it is no error."""
    data = _jsonl(tmp_path / "d.jsonl", [*GOOD, {"text": None}])
    result = CliRunner().invoke(main, ["score", "-q", "-m", str(tiny_model_dir), "-d", str(data), "--limit", "2",
                                       "--format", "json", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dataset"]["rows"] == 2


@pytest.mark.parametrize("content,documents", [
    (b'[{"text": "one"}, {"text": ""}, {"text": "two"}]', 2),  # an empty text is skipped and counted
    (b'["one", "two", "three"]', 3),
    (b'{"text": "one"}\n{"text": "two"}\n', 2),  # JSON lines under a .json name
    (b'\xef\xbb\xbf[{"text": "one"}]', 1),  # a UTF-8 byte order mark, which the loader strips
])
def test_json_files_the_loader_reads_pass_the_check(tiny_model_dir: Path, tmp_path: Path, content: bytes,
                                                    documents: int) -> None:
    path = tmp_path / "d.json"
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["score", "-q", "-m", str(tiny_model_dir), "-d", str(path), "--format", "json",
                                       "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["documents"] == documents


@pytest.mark.parametrize("args", [
    ["-o", "{d}"],  # the report over the dataset
    ["-o", "r.jsonl", "--tokens", "r.jsonl"],
    ["--tokens", "t.parquet", "--html", "t.parquet"],
    ["-o", "r.json", "--checkpoint", "r.json"],
])
def test_outputs_that_share_a_file_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    """One output written over another (or over the data) would silently destroy it: refused
    before anything loads, naming both."""
    monkeypatch.chdir(tmp_path)
    data = _jsonl(tmp_path / "d.jsonl", GOOD)
    before = data.read_bytes()
    argv = [a.replace("{d}", str(data)) for a in args]
    result = CliRunner().invoke(main, ["score", "-q", "-d", str(data), *argv])
    assert result.exit_code == 2 and "is the same file as" in result.output, result.output
    assert data.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_a_null_text_in_a_parquet_file_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lleval.data.checks import check_file

    from lleval.data.spec import DataSpec

    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["a"] * 2000 + [None]}), path, row_group_size=700)
    with pytest.raises(DataError, match=r"n.parquet, row 2000: field 'text' is null"):
        check_file(path, "parquet", DataSpec(dataset=str(path)))
    check_file(path, "parquet", DataSpec(dataset=str(path), limit=2000))  # the null row is past --limit
    numbers = tmp_path / "i.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    with pytest.raises(DataError, match="column 'text' holds int64, not text"):
        check_file(numbers, "parquet", DataSpec(dataset=str(numbers)))


@pytest.mark.subprocess
@pytest.mark.parametrize("args,what", [(["-m", "some-org/some-model"], "some-org/some-model"),
                                       (["-d", "some-org/some-dataset"], "some-org/some-dataset")])
def test_an_unreachable_hub_fails_at_once_with_one_line(tmp_path: Path, args: list[str], what: str) -> None:
    """Without HF_HUB_OFFLINE, a hub id on a machine that cannot reach the hub must not wait
    on huggingface_hub's retries (about a minute): the host is tried for a few seconds, and
    the run fails with one line that says the hub cannot be reached (a closed local port
    stands in for the hub here)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                            "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    lleval = str(Path(sys.executable).parent / "lleval")
    # a hang (huggingface_hub's minute of retries) would end in TimeoutExpired
    result = subprocess.run([lleval, "score", "-q", *args], capture_output=True, text=True, env=env, timeout=50)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and what in result.stderr and "cannot be reached" in result.stderr


@pytest.mark.parametrize("datasets, named", [(["docs.jsonl", "bad.txt"], "docs"), (["bad.txt", "docs.jsonl"], "docs")])
def test_a_suite_flag_that_does_not_fit_a_dataset_names_that_dataset(tiny_model_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     datasets: list[str], named: str) -> None:
    """``-d docs.jsonl -d bad.txt --sample-by line``: --sample-by does not fit docs.jsonl, and the
    refusal names it (it named the built-in sample, which the run does not read)."""
    monkeypatch.chdir(tmp_path)
    _jsonl(tmp_path / "docs.jsonl", GOOD)
    (tmp_path / "bad.txt").write_text("one line\nanother line\n")
    args = [arg for d in datasets for arg in ("-d", d)]
    result = CliRunner().invoke(main, ["score", "-q", "-m", str(tiny_model_dir), *args, "--sample-by", "line"])
    assert result.exit_code == 2
    assert f"dataset {named!r} of the suite" in result.output and "docs.jsonl" in result.output
    assert "built-in" not in result.output and "builtin" not in result.output


def test_a_tokenizer_only_folder_is_a_tokenizer(tmp_path: Path) -> None:
    """``--tokenizer`` of a served model may be a folder holding only a tokenizer (no config.json:
    it was refused as "has no config.json"); it gives the ids the folder's tokenizer gives."""
    from transformers import AutoTokenizer

    from lleval.backends.hf import load_tokenizer

    folder = Path(__file__).parent / "assets" / "tiny-tokenizer"
    assert not (folder / "config.json").exists()
    text = "The keeper wrote in the logbook."
    assert load_tokenizer(str(folder))(text)["input_ids"] == AutoTokenizer.from_pretrained(folder)(text)["input_ids"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="tokenizer folder .*empty has no tokenizer"):
        load_tokenizer(str(empty))
