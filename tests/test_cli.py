"""End-to-end CLI runs on the tiny model: every data format, the JSON read back, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
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


def _rendered_pairs(text: str) -> dict[str, str]:
    """(label, value) rows of a rendered table, markdown ``| a | b |`` or rich ``│ a │ b │``."""
    pairs = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.replace("│", "|").strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] and not set(cells[0]) <= {"-"}:
            pairs[cells[0]] = cells[1]
    return pairs


@pytest.mark.parametrize("fmt", ["markdown", "table"])
def test_markdown_and_table_show_the_reports_numbers(tiny_model_dir: Path, tmp_path: Path, fmt: str) -> None:
    data = str(write_format(tmp_path, "jsonl"))
    out = tmp_path / "r.json"
    result = run(["score", "-m", str(tiny_model_dir), "-d", data, "--format", fmt, "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    shown = _rendered_pairs(result.stdout)
    metrics = report["metrics"]
    assert shown["perplexity (exp NLL)"].startswith(f"{metrics['perplexity']:.4f}")
    assert shown["bits per byte"].startswith(f"{metrics['bits_per_byte']:.4f}")
    low, high = metrics["perplexity_ci"]
    assert f"[{low:.4f}, {high:.4f}]" in shown["perplexity (exp NLL)"]
    t = report["totals"]
    assert shown["tokens / bytes / words"] == f"{t['tokens']} / {t['bytes']} / {t['words']}"


@pytest.mark.parametrize("command", ["score", "kld", "compare"])
def test_version_and_help(command: str) -> None:
    from lleval import __version__

    assert run(["--version"]).stdout.strip() == f"lleval, version {__version__}"
    result = run([command, "--help"])
    assert result.exit_code == 0
    options = {opt for param in main.commands[command].params for opt in param.opts if opt.startswith("--")}
    missing = [opt for opt in options if opt not in result.stdout]
    assert options and not missing, missing


def _bad_data(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS))
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": ""}) + "\n")
    odd = tmp_path / "docs.xyz"
    odd.write_text("hello")
    (tmp_path / "plain-folder").mkdir()
    (tmp_path / "bad.yaml").write_text("strid: 3\n")
    (tmp_path / "no-config-model").mkdir()
    return {"data": data, "empty": empty, "odd": odd, "folder": tmp_path / "plain-folder",
            "config": tmp_path / "bad.yaml", "no-config": tmp_path / "no-config-model"}


# (argv after "score -q", {placeholders} filled in; exit code; a fragment of the one-line message)
BAD_CASES = [
    (["--model", "{tmp}/missing-model"], 2, "does not exist"),
    (["--model", "{no-config}", "-d", "{data}", "--text-field", "body"], 2, "no config.json"),
    (["-d", "{tmp}/missing.jsonl"], 2, "does not exist"),
    (["-d", "{odd}"], 2, "unknown kind"),
    (["-d", "{folder}"], 2, "not a saved dataset"),
    (["-d", "{data}"], 2, "its columns are body"),
    (["-d", "{data}", "--text-field", "body", "-L", "8", "-S", "9"], 2, "stride (9) is larger"),
    (["-d", "{data}", "--stride", "0"], 2, "--stride"),
    (["-d", "{data}", "--text-field", "body", "-L", "4096"], 2, "larger than the model's 64 positions"),
    (["-d", "{empty}"], 2, "1 row read, 1 empty"),
    (["-d", "{data}", "--text-field", "body", "--limit", "0"], 2, "--limit 0 scores no row"),
    (["-d", "{data}", "--text-field", "body", "-o", "{tmp}/no/r.json"], 2, "does not exist"),
    (["-d", "{data}", "--text-field", "body", "--prefix-token", "99999"], 2, "not in the tokenizer"),
    (["--config", "{config}"], 2, "did you mean 'stride'"),
    (["--dtype", "fp8"], 2, "--dtype"),
    (["--model", "no-such-org/no-such-model"], 2, "not in the local cache"),
    (["-d", "no-such-org/no-such-dataset"], 2, "not in the local cache"),
    # flags that would be accepted and then ignored
    (["-d", "{data}", "--text-field", "body", "--split", "validation"], 2, "has one split, 'train'"),
    (["-d", "{data}", "--text-field", "body", "--dataset-config", "foo"], 2, "--dataset-config names a configuration"),
    (["-d", "{data}", "--text-field", "body", "--sample-by", "paragraph"], 2, "each row is already a document"),
    (["--checkpoint-every", "5"], 2, "--checkpoint-every needs --checkpoint"),
    (["--bootstrap", "0", "--seed", "3"], 2, "--seed seeds the bootstrap"),
    (["--device-map", "auto", "--device", "cpu"], 2, "drop --device"),
    (["--revision", "main"], 2, "--revision"),
    (["--no-model-cache"], 2, "--no-model-cache bypasses the cache of converted .gguf files"),
    # flag conflicts found before the model loads
    (["--concat", "--protocol", "lm-eval"], 2, "drop --concat"),
    (["--prefix-token", "abc"], 2, "prefix_token must be auto, none or a token id"),
    (["--protocol", "hf-guide", "--prefix-token", "none"], 2, "fixes the prefix token"),
    (["--checkpoint", "{tmp}/no/such/ck"], 2, "pick another --checkpoint"),
]


@pytest.mark.parametrize("args,code,fragment", BAD_CASES, ids=[" ".join(c[0]) for c in BAD_CASES])
def test_bad_input_gives_one_line_and_exit_code(
    tiny_model_dir: Path, tmp_path: Path, args: list[str], code: int, fragment: str
) -> None:
    paths = {"tmp": str(tmp_path), "model": str(tiny_model_dir), **{k: str(v) for k, v in _bad_data(tmp_path).items()}}
    argv = [a.format(**paths) for a in args]
    if "--model" not in argv:
        argv = ["--model", str(tiny_model_dir), *argv]
    result = run(["score", "-q", *argv])
    assert result.exit_code == code, (argv, result.output)
    assert fragment in result.stderr, (argv, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 or result.stderr.startswith("Usage:"), result.stderr
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


def test_score_and_kld_share_every_flag() -> None:
    """Every flag of score is a flag of kld with the same names, default and help text."""
    def params(command: str) -> dict[str, Any]:
        return {p.name: p for p in main.commands[command].params if isinstance(p, click.Option)}

    score, kld = params("score"), params("kld")
    assert set(kld) - set(score) == {"base_model", "base_dtype"}
    assert set(score) - set(kld) == {"token_stats", "html", "html_docs"}  # what score alone shows of tokens
    for name in set(score) & set(kld):
        option = score[name]
        other = kld[name]
        assert (option.opts, option.secondary_opts, option.default, option.help) == (
            other.opts, other.secondary_opts, other.default, other.help), name


@pytest.mark.parametrize("how", [["-d", "{data}"], ["--dataset", "{data}"], ["{data}"]])
def test_kld_takes_the_data_as_score_does(tiny_model_dir: Path, tmp_path: Path, how: list[str]) -> None:
    data = str(write_format(tmp_path, "jsonl"))
    args = [a.format(data=data) for a in how]
    result = run(["kld", "--base", str(tiny_model_dir), "-m", str(tiny_model_dir), *args, "-q", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "kld" and report["dataset"]["spec"] == data and report["dataset"]["documents"] == 3


def test_kld_refuses_two_different_datasets(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = str(write_format(tmp_path, "jsonl"))
    result = run(["kld", "--base", str(tiny_model_dir), data, "-d", data + ".other", "-q"])
    assert result.exit_code == 2 and "two datasets given" in result.stderr


def test_a_command_leaves_the_callers_warning_settings_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The CLI shows warnings as one line (or none with --quiet) for its own run only: an
    in-process caller's warning hook and filters are as they were afterwards."""
    import warnings

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    before_hook, before_filters = warnings.showwarning, list(warnings.filters)
    for extra in ([], ["--quiet"]):
        result = run(["score", "--model", str(tiny_model_dir), "-d", str(data), "--format", "json", *extra])
        assert result.exit_code == 0, result.output
        assert warnings.showwarning is before_hook and warnings.filters == before_filters


@pytest.mark.parametrize("key,flag", [("quiet", "--no-quiet"), ("allow_nonfinite", "--no-allow-nonfinite"),
                                      ("token_stats", "--no-token-stats")])
def test_a_config_files_true_can_be_undone_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                key: str, flag: str) -> None:
    """Every boolean has its --no- form: a config file's `true` is not the last word."""
    import lleval.cli as cli

    seen: list[Any] = []

    def record(config: Any) -> None:  # stop right after the flags are parsed into the config
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_check_early", record)
    config_file = tmp_path / "c.yaml"
    config_file.write_text(f"{key}: true\n")
    run(["score", "--config", str(config_file)])
    run(["score", "--config", str(config_file), flag])
    assert [getattr(c, key) for c in seen] == [True, False]


def test_the_progress_line_fits_an_80_column_terminal() -> None:
    """rich cuts the last columns of a line that does not fit (the time left became '0:0…')."""
    import io

    from rich.console import Console

    from lleval.runner.progress import ScoringProgress
    from lleval.cli import _StderrProgress

    progress = _StderrProgress(Console(file=io.StringIO(), width=80))
    progress.stage("scoring")
    progress.update(ScoringProgress(312, 1500, 61_440, 131_072, False, 51.0, 312, 61_440))
    screen = Console(file=io.StringIO(), width=80, color_system=None)
    screen.print(progress._progress.make_tasks_table(progress._progress.tasks))
    line = screen.file.getvalue().rstrip("\n")
    assert "…" not in line.replace("scoring…", "") and line.endswith("3:14 left"), line


@pytest.mark.parametrize("bootstrap", ["0", "100"])
def test_the_context_table_claims_intervals_only_when_it_has_them(tiny_model_dir: Path, tmp_path: Path,
                                                                  bootstrap: str) -> None:
    data = str(write_format(tmp_path, "jsonl"))
    out = tmp_path / "r.json"
    result = run(["score", "-m", str(tiny_model_dir), "-d", data, "--format", "markdown", "-q", "-o", str(out),
                  "--bootstrap", bootstrap])
    assert result.exit_code == 0, result.output
    has_intervals = any(b["perplexity_ci"] for b in json.loads(out.read_text())["by_context_length"])
    assert has_intervals == (bootstrap != "0")
    header = next(line for line in result.stdout.splitlines() if line.startswith("| context |"))
    assert ("[95% CI]" in header) == has_intervals
