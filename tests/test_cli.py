"""End-to-end CLI runs on the tiny model: every data format, the JSON read back, flags into the config
(bad input: test_bad_input.py)."""

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


# Every flag as users type it, with the value it gives its field: kept by hand, since the options
# are derived from EvalConfig's fields (comparing one with the other would restate the code).
TYPED: list[tuple[list[str], str, Any]] = [
    (["-m", "org/name"], "model", "org/name"),
    (["--model", "m.gguf"], "model", "m.gguf"),
    (["--revision", "v2"], "revision", "v2"),
    (["--trust-remote-code"], "trust_remote_code", True),
    (["--dtype", "bfloat16"], "dtype", "bfloat16"),
    (["--device", "cpu"], "device", "cpu"),
    (["--device-map", "balanced"], "device_map", "balanced"),
    (["--no-float32-head"], "float32_head", False),
    (["--no-model-cache"], "model_cache", False),
    (["--tokenizer", "org/tok"], "tokenizer", "org/tok"),
    (["--served-model", "big"], "served_model", "big"),
    (["--api-key-env", "MY_KEY"], "api_key_env", "MY_KEY"),
    (["--request-timeout", "90"], "request_timeout", 90.0),
    (["--replicas", "http://b/v1", "--replicas", "http://c/v1"], "replicas", ("http://b/v1", "http://c/v1")),
    (["-d", "d.jsonl"], "dataset", "d.jsonl"),
    (["--dataset", "-"], "dataset", "-"),
    (["--dataset-config", "wikitext-2-raw-v1"], "dataset_config", "wikitext-2-raw-v1"),
    (["--split", "validation"], "split", "validation"),
    (["--text-field", "body"], "text_field", "body"),
    (["--sample-by", "line"], "sample_by", "line"),
    (["--limit", "3"], "limit", 3),
    (["--sample", "4"], "sample", 4),
    (["--streaming"], "streaming", True),
    (["--encoding", "latin-1"], "encoding", "latin-1"),
    (["--errors", "replace"], "errors", "replace"),
    (["--protocol", "lm-eval"], "protocol", "lm-eval"),
    (["-L", "128"], "max_length", 128),
    (["--max-length", "64"], "max_length", 64),
    (["-S", "32"], "stride", 32),
    (["--stride", "16"], "stride", 16),
    (["--prefix-token", "none"], "prefix_token", "none"),
    (["--concat"], "concat", "\n\n"),
    (["--concat", " | "], "concat", " | "),
    (["-b", "4"], "batch_size", 4),
    (["--batch-size", "AUTO"], "batch_size", "auto"),
    (["--max-batch-tokens", "4096"], "max_batch_tokens", 4096),
    (["--block-tokens", "1000"], "block_tokens", 1000),
    (["--allow-nonfinite"], "allow_nonfinite", True),
    (["--checkpoint", "c.ckpt"], "checkpoint", "c.ckpt"),
    (["--checkpoint-every", "2.5"], "checkpoint_every", 2.5),
    (["--bootstrap", "0"], "bootstrap", 0),
    (["--seed", "7"], "seed", 7),
    (["-o", "r.json"], "output", "r.json"),
    (["--output", "s.json"], "output", "s.json"),
    (["--format", "json"], "format", "json"),
    (["-q"], "quiet", True),
    (["--quiet"], "quiet", True),
    (["--progress", "lines"], "progress", "lines"),
    (["--tokens", "t.parquet"], "tokens", "t.parquet"),
    (["--token-stats"], "token_stats", True),
    (["--html", "r.html"], "html", "r.html"),
    (["--html-docs", "5"], "html_docs", 5),
    (["--membership"], "membership", True),
    (["--min-k", "0.1"], "min_k", 0.1),
    (["--calibration"], "calibration", True),
    (["--save-reference", "ref.parquet"], "save_reference", "ref.parquet"),
    (["--reference-top-k", "8"], "reference_top_k", 8),
    (["--reference", "ref.parquet"], "reference", "ref.parquet"),
    (["--log-to", "tensorboard", "--log-to", "mlflow"], "log_to", ("tensorboard", "mlflow")),
    (["--log-dir", "runs"], "log_dir", "runs"),
]
# what score alone shows of its tokens, or saves for a later kld
SCORE_ONLY = {"token_stats", "html_docs", "membership", "min_k", "calibration", "save_reference",
              "reference_top_k"}
KLD_ONLY = {"reference"}  # kld against a saved reference instead of --base
COMMANDS = {"score": ["score"], "kld": ["kld", "--base-dtype", "float32"]}


@pytest.fixture
def parse(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``parse(argv)``: the `EvalConfig` a command builds from its flags (the command stops there),
    or the click result when it stops before (a usage error)."""
    from lleval.cli.options import config_from_flags

    seen: list[Any] = []

    def record(*args: Any, **kwargs: Any) -> Any:
        seen.append(config_from_flags(*args, **kwargs))
        raise SystemExit(0)

    for command in ("score", "kld"):  # the commands that build an EvalConfig from their flags
        monkeypatch.setattr(f"lleval.cli.{command}.config_from_flags", record)

    def parse(argv: list[str]) -> Any:
        result = run(argv)
        return seen.pop() if result.exit_code == 0 and seen else result

    return parse


def test_the_typed_table_has_every_setting() -> None:
    from dataclasses import fields

    from lleval.config import EvalConfig

    assert {field for _, field, _ in TYPED} == {f.name for f in fields(EvalConfig)} - {"origins", "suite", "step"}  # suite fields route score to run_suite (test_suite.py)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("args,field,value", TYPED, ids=[" ".join(t[0]) for t in TYPED])
def test_each_flag_sets_its_field_alone(parse: Any, command: str, args: list[str], field: str, value: Any) -> None:
    """score and kld take the same flags (kld all but what score alone shows), each setting its
    own field and nothing else, recorded as typed."""
    from lleval.config import EvalConfig

    argv = ["kld"] if command == "kld" and field in KLD_ONLY else COMMANDS[command]  # --reference stands for --base/--base-dtype
    config = parse([*argv, *args])
    if (command == "kld" and field in SCORE_ONLY) or (command == "score" and field in KLD_ONLY):
        assert config.exit_code == 2 and "No such option" in config.stderr
        return
    assert config == EvalConfig(**{field: value}) and getattr(config, field) == value
    assert dict(config.origins) == {field: "flag"}


def test_provenance_names_each_values_origin(parse: Any, tmp_path: Path) -> None:
    """Typed, from the config file, or (absent) the default: even a flag typed with its default value."""
    config_file = tmp_path / "c.yaml"
    config_file.write_text("stride: 4\nseed: 3\nmax-length: 16\n")
    config = parse(["score", "--config", str(config_file), "-L", "8", "--protocol", "rolling"])
    from_file = {"origin": "config file", "file": str(config_file)}
    assert config.provenance() == {
        "max_length": {"value": 8, "origin": "flag"}, "protocol": {"value": "rolling", "origin": "flag"},
        "stride": {"value": 4, **from_file}, "seed": {"value": 3, **from_file}}
    config = parse(["kld", "--base-dtype", "float32", "d.jsonl"])  # kld's DATASET is typed as --dataset is
    assert config.provenance()["dataset"] == {"value": "d.jsonl", "origin": "flag"}


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


def test_a_command_leaves_the_callers_process_as_it_was(tiny_model_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI shows warnings as one line (or none with --quiet), quiets the libraries' logs and
    progress bars and sets the environment they read, for its own run: after ``main([...])``
    returns, an in-process caller's warning hook and filters, the libraries' verbosity and bars
    and the environment are as they were. Torch's threads are capped by the CLI, once a command."""
    import os
    import warnings

    import datasets
    import transformers

    import sys

    import lleval.threads as threads

    capped_by: list[str] = []  # the module of each caller
    real_cap = threads.cap_torch_threads

    def cap() -> int:
        capped_by.append(sys._getframe(1).f_globals["__name__"])
        return real_cap()

    monkeypatch.setattr(threads, "cap_torch_threads", cap)
    for name in ("TQDM_DISABLE", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)

    def state() -> tuple[Any, ...]:
        hf_log, data_log = transformers.utils.logging, datasets.utils.logging
        return (warnings.showwarning, list(warnings.filters), hf_log.get_verbosity(), data_log.get_verbosity(),
                hf_log.is_progress_bar_enabled(), datasets.is_progress_bar_enabled(), dict(os.environ))

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    before = state()
    for extra in ([], ["--quiet"]):
        main(["score", "--model", str(tiny_model_dir), "-d", str(data), "--format", "json", "-o",
              str(tmp_path / "r.json"), *extra], standalone_mode=False)
        assert state() == before
    assert capped_by == ["lleval.cli.scope", "lleval.cli.scope"]  # by the CLI, once a command; never by the library


@pytest.mark.parametrize("quiet", [False, True])
def test_a_command_quiets_the_libraries_while_it_runs(monkeypatch: pytest.MonkeyPatch, quiet: bool) -> None:
    """Inside a command's scope transformers logs errors only, datasets nothing short of
    critical, neither draws a progress bar, and the environment they read on import says the
    same; whatever the caller had (here: both chatty, bars on) comes back afterwards."""
    import logging
    import os

    import datasets
    import transformers

    from lleval.cli.scope import QUIET_ENVIRONMENT, command_scope

    hf_log, data_log = transformers.utils.logging, datasets.utils.logging
    for name in QUIET_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)

    def state() -> tuple[Any, ...]:
        return (hf_log.get_verbosity(), data_log.get_verbosity(), hf_log.is_progress_bar_enabled(),
                datasets.is_progress_bar_enabled(), {name: os.environ.get(name) for name in QUIET_ENVIRONMENT})

    hf_before, data_before = hf_log.get_verbosity(), data_log.get_verbosity()
    bars_before = hf_log.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()
    hf_log.set_verbosity(logging.INFO)
    data_log.set_verbosity(logging.DEBUG)
    hf_log.enable_progress_bar()
    datasets.enable_progress_bars()
    try:
        before = state()
        with command_scope(quiet):
            inside = state()
        after = state()
    finally:
        hf_log.set_verbosity(hf_before)
        data_log.set_verbosity(data_before)
        (hf_log.enable_progress_bar if bars_before[0] else hf_log.disable_progress_bar)()
        (datasets.enable_progress_bars if bars_before[1] else datasets.disable_progress_bars)()
    assert before == (logging.INFO, logging.DEBUG, True, True, {name: None for name in QUIET_ENVIRONMENT})
    assert inside == (logging.ERROR, logging.CRITICAL, False, False, QUIET_ENVIRONMENT)
    assert after == before


def _undoable() -> list[tuple[str, str]]:
    """(command, field) for every field a config file can switch on and a flag off: each boolean,
    and each flag with an optional value (--concat), from the fields' own declarations."""
    from lleval.config import settings

    return [(command, f.name) for f, how in settings() if isinstance(f.default, bool) or how.flag_value is not None
            for command in how.commands]


@pytest.mark.parametrize("command,key", _undoable(), ids=[" ".join(u) for u in _undoable()])
def test_a_config_files_true_can_be_undone_on_the_command_line(parse: Any, tmp_path: Path, command: str,
                                                                key: str) -> None:
    """Every boolean has its --no- form, and so has --concat: a config file's `true` is not the
    last word (the --no- flag is spelled here from the field's name, not read from the options)."""
    from lleval.config import DEFAULT_SEPARATOR

    config_file = tmp_path / "c.yaml"
    config_file.write_text(f"{key}: true\n")
    on = parse([*COMMANDS[command], "--config", str(config_file)])
    off = parse([*COMMANDS[command], "--config", str(config_file), "--no-" + key.replace("_", "-")])
    assert getattr(on, key) == (DEFAULT_SEPARATOR if key == "concat" else True)
    assert getattr(off, key) == (None if key == "concat" else False)
    assert on.origins[key] == f"config file {config_file}" and off.origins[key] == "flag"


def test_the_progress_line_fits_an_80_column_terminal() -> None:
    """rich cuts the last columns of a line that does not fit (the time left became '0:0…')."""
    import io

    from rich.console import Console

    from lleval.runner.progress import ScoringProgress
    from lleval.cli.progress import StderrProgress

    progress = StderrProgress(Console(file=io.StringIO(), width=80))
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
