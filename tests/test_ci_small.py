"""What a new user tripped on besides compare (issue 30): intervals from very few documents in
score, kld and suite reports; inspect's spans of one document and its colour legend; the --help
ranges; the model cache's file modes; a silent Python API; and the wording of suites, the
protocol line and kld."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

from helpers import write_jsonl
from lleval.cli import main
from lleval.config import EvalConfig
from lleval.metrics import MIN_INTERVAL_DOCUMENTS

SCHEMAS = Path(__file__).resolve().parent.parent / "src" / "lleval" / "schemas"
ROOT = Path(__file__).resolve().parent.parent
WORDS = "the keeper wrote in a logbook every evening while rain fell on the lighthouse and gulls cried".split()


def texts(n: int) -> list[str]:
    """``n`` short, different documents."""
    return [" ".join(WORDS[(3 * i + k) % len(WORDS)] for k in range(5 + i % 4)) + "." for i in range(n)]


def schema(kind: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{kind}.schema.json").read_text())


# --- item 5: intervals from too few documents in score, kld and suite reports -----------------------

@pytest.mark.parametrize("n_docs", [2, MIN_INTERVAL_DOCUMENTS - 1, MIN_INTERVAL_DOCUMENTS])
def test_score_marks_intervals_from_few_documents(tiny_loaded: Any, tmp_path: Path, n_docs: int) -> None:
    from lleval.commands.score import evaluate
    from lleval.report.score import summary_rows

    report = evaluate(EvalConfig(dataset=write_jsonl(tmp_path / "d.jsonl", texts(n_docs)), max_length=16,
                                 bootstrap=100), loaded=tiny_loaded)
    data = report.to_dict()
    jsonschema.validate(data, schema("score"))
    reliable = n_docs >= 20
    assert data["metrics"]["perplexity_ci"] is not None
    assert data["bootstrap"]["documents"] == n_docs and data["bootstrap"]["reliable"] is reliable
    assert any("fewer than 20" in note for note in data["notes"]) != reliable
    shown = dict(summary_rows(report))["perplexity (exp NLL)"]  # table, markdown and HTML show these rows
    assert ("unreliable" in shown) != reliable


def test_no_interval_is_neither_reliable_nor_not(tiny_loaded: Any, tmp_path: Path) -> None:
    from lleval.commands.score import evaluate

    data = evaluate(EvalConfig(dataset=write_jsonl(tmp_path / "d.jsonl", texts(3)), max_length=16, bootstrap=0),
                    loaded=tiny_loaded).to_dict()
    assert data["bootstrap"]["reliable"] is None and not any("fewer than 20" in n for n in data["notes"])


def test_kld_marks_its_interval_from_few_documents(tiny_loaded: Any, tmp_path: Path) -> None:
    from lleval.commands.kld import kl_divergence

    config = EvalConfig(dataset=write_jsonl(tmp_path / "d.jsonl", texts(4)), max_length=16, bootstrap=100)
    result = kl_divergence(config, None, base=tiny_loaded, model=tiny_loaded)
    data = result.to_dict()
    jsonschema.validate(data, schema("kld"))
    assert data["bootstrap"]["documents"] == 4 and data["bootstrap"]["reliable"] is False
    assert any("fewer than 20" in note for note in data["notes"])
    rows = dict(result.summary_rows())
    assert "unreliable" in rows["ln(PPL_model / PPL_base)"]
    # item 8: the kld summary names the dataset
    assert rows["dataset"].startswith(f"{config.dataset} [train], 4 documents")


def test_suite_marks_cells_and_macro_averages_from_few_documents(tiny_model_dir: Path, tmp_path: Path) -> None:
    from lleval.commands.suite import run_suite, suite_from_flags
    from lleval.report.suite import SuiteReport, macro_rows, matrix_rows

    few, many = write_jsonl(tmp_path / "few.jsonl", texts(3)), write_jsonl(tmp_path / "many.jsonl", texts(24))
    report = run_suite(suite_from_flags([str(tiny_model_dir)], [few, many]),
                       EvalConfig(bootstrap=100, max_length=16))
    data = report.to_dict()
    jsonschema.validate(data, schema("suite"))
    assert {row["dataset"]: row["ci_reliable"] for row in data["matrix"]} == {"few": False, "many": True}
    assert [m["bits_per_byte_ci_reliable"] for m in data["macro"]] == [False]  # one dataset of 3 documents
    back = SuiteReport.from_dict(json.loads(report.to_json()))
    shown = {row[1]: row for row in matrix_rows(back)}
    assert shown["few"][3].endswith("unreliable") and not shown["many"][3].endswith("unreliable")
    assert macro_rows(back)[0][2].endswith("unreliable")
    assert back.interval_notes() and "fewer than 20" in back.interval_notes()[0]
    # item 8: "1 model x 2 datasets", not "1 models"
    assert back.title == "lleval suite — 1 model x 2 datasets"
    assert back.render_markdown().splitlines()[0] == "### lleval suite — 1 model x 2 datasets"


def test_suite_tables_say_95_ci_only_when_they_show_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    from lleval.commands.suite import run_suite, suite_from_flags
    from lleval.report.suite import macro_columns, matrix_columns

    data = [write_jsonl(tmp_path / f"{k}.jsonl", texts(3)) for k in ("a", "b")]
    suite = suite_from_flags([str(tiny_model_dir)], data)
    bare = run_suite(suite, EvalConfig(bootstrap=0, max_length=16))
    assert all(m.interval is None for m in bare.macro) and all(r["perplexity_ci"] is None for r in bare.matrix())
    assert not any("95% CI" in c for c in matrix_columns(bare) + macro_columns(bare))
    full = run_suite(suite, EvalConfig(bootstrap=100, max_length=16))
    assert matrix_columns(full)[-1] == "bits per byte [95% CI]" and macro_columns(full)[-1] == "bits per byte [95% CI]"


@pytest.mark.parametrize("models,steps,fragments", [
    ([], [1], ["none was given", "built-in model"]),
    (["a", "b"], [1], ["given once for 2 models"]),
    (["a"], [1, 2], ["given 2 times for 1 model:"]),
])
def test_step_counts_are_worded_for_people(models: list[str], steps: list[int], fragments: list[str]) -> None:
    from lleval.commands.suite import suite_from_flags
    from lleval.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        suite_from_flags(models, ["d.jsonl"], steps)
    assert all(f in str(raised.value) for f in fragments), str(raised.value)


# --- item 8: inspect ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_file(tiny_loaded: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lleval.commands.score import evaluate

    root = tmp_path_factory.mktemp("inspect")
    tokens = root / "t.jsonl"
    evaluate(EvalConfig(dataset=write_jsonl(root / "d.jsonl", texts(6)), tokens=str(tokens), max_length=16,
                        bootstrap=0), loaded=tiny_loaded)
    return tokens


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]  # the first line is the header


@pytest.mark.parametrize("document", [0, 3])
def test_inspect_doc_with_worst_lists_that_documents_spans(token_file: Path, document: int) -> None:
    from lleval.commands.inspect import inspect_tokens

    view = inspect_tokens(str(token_file), document=document, worst=3, span=2)
    assert view.spans and all(s["document"] == document for s in view.spans)
    # the worst span of the document, by a naive loop over its own tokens
    mine = [r for r in _rows(token_file) if r["document"] == document]
    best = max(range(len(mine) - 1), key=lambda k: -(mine[k]["logprob"] + mine[k + 1]["logprob"]))
    assert view.spans[0]["position"] == mine[best]["position"]
    assert view.spans[0]["value"] == pytest.approx(-(mine[best]["logprob"] + mine[best + 1]["logprob"]), rel=1e-6)


def test_inspect_without_doc_still_searches_the_corpus(token_file: Path) -> None:
    from lleval.commands.inspect import inspect_tokens

    view = inspect_tokens(str(token_file), worst=20, span=2)
    assert len({s["document"] for s in view.spans}) > 1


def test_inspect_colours_have_a_legend(token_file: Path) -> None:
    import io

    from rich.console import Console

    from lleval.commands.inspect import _rgb, inspect_tokens

    view = inspect_tokens(str(token_file), document=1)
    legend = view.to_dict()["legend"]
    assert [s["value"] for s in legend] == [0, 1, 2, 4, 8, 16] and {s["unit"] for s in legend} == {"bits"}
    assert legend[0]["colour"] == "rgb(255,255,255)" and legend[-1]["colour"] == _rgb(16 * np.log(2), False)
    out = io.StringIO()
    view.render_table(Console(file=out, width=200, color_system=None))
    assert "legend: surprisal" in out.getvalue() and "16 bits or more" in out.getvalue()
    diff = inspect_tokens(str(token_file), str(token_file), document=1).to_dict()["legend"]
    assert {s["unit"] for s in diff} == {"nats"} and diff[0]["colour"] != diff[-1]["colour"]
    assert "legend" not in inspect_tokens(str(token_file), worst=2).to_dict()  # nothing coloured: no legend


# --- item 8: --help ranges agree with the refusals ---------------------------------------------

def _help_of(command: str, flag: str) -> str:
    import click

    cmd = main.commands[command]
    ctx = click.Context(cmd)
    option = next(p for p in cmd.params if flag in getattr(p, "opts", []))
    record = option.get_help_record(ctx)
    assert record is not None
    return record[1]


@pytest.mark.parametrize("command,flag,refused,accepted,said", [
    ("score", "--limit", ["0"], ["1"], "1 or more"),
    ("score", "--bootstrap", ["1", "99"], ["0", "100"], "0 (none), or 100 and more"),
    ("kld", "--bootstrap", ["50"], ["0", "100"], "0 (none), or 100 and more"),
    ("compare", "--bootstrap", ["1", "99"], ["0", "100"], "0 (none), or 100 and more"),
])
def test_help_ranges_agree_with_the_refusals(tmp_path: Path, command: str, flag: str, refused: list[str],
                                             accepted: list[str], said: str) -> None:
    shown = _help_of(command, flag)
    assert said in shown and "x>=0" not in shown
    for value in refused + accepted:
        if command == "compare":
            from test_compare_ci import make_report

            report = tmp_path / "r.json"
            report.write_text(json.dumps(make_report(n_docs=3)))
            code = CliRunner().invoke(main, ["compare", str(report), str(report), flag, value]).exit_code
        else:
            config = EvalConfig(**{flag[2:]: int(value)})
            try:
                config.validate()
                code = 0
            except Exception:
                code = 2
        assert code == (2 if value in refused else 0), (flag, value)


# --- item 8: the model cache's files are as readable as any file the user creates ---------------

@pytest.fixture
def umask() -> Iterator[Any]:
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_model_cache_files_get_0666_less_the_umask(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    umask: Any, mask: int) -> None:
    from lleval.commands.score import evaluate

    monkeypatch.setenv("LLEVAL_MODEL_CACHE", str(tmp_path / "cache"))
    umask(mask)
    report = evaluate(EvalConfig(model=str(tiny_gguf), dataset=write_jsonl(tmp_path / "d.jsonl", texts(2)),
                                 bootstrap=0))
    assert report.model["cache"] == "stored"
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and not p.name.startswith(".")
                and p.name != "hashes"]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in entry.iterdir() if p.is_file()}
    assert "model.safetensors" in modes
    assert set(modes.values()) == {0o666 & ~mask}, {n: oct(m) for n, m in modes.items()}
    again = evaluate(EvalConfig(model=str(tiny_gguf), dataset=write_jsonl(tmp_path / "e.jsonl", texts(2)),
                                bootstrap=0))
    assert again.model["cache"] == "hit"


# --- item 8: the Python API prints nothing without a progress display ----------------------------

def test_the_python_api_prints_nothing(tiny_llama_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import datasets
    import transformers

    from lleval.commands.score import evaluate

    transformers.utils.logging.enable_progress_bar()  # as in a fresh notebook
    datasets.enable_progress_bars()
    capfd.readouterr()
    data = write_jsonl(tmp_path / "fresh.jsonl", texts(3))  # a file datasets never read: it would say so
    report = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=data, max_length=16, bootstrap=0))
    captured = capfd.readouterr()
    assert report.totals.documents == 3
    assert captured.err == "" and captured.out == ""
    # the caller's settings are put back
    assert transformers.utils.logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()


# --- item 8: wording --------------------------------------------------------------------------

@pytest.mark.parametrize("text,token,shown", [("<|im_start|>", 1, "prefix=<|im_start|> (id 1)"),
                                              (None, 7, "prefix=id 7"), ("\n", 198, "prefix='\\n' (id 198)"),
                                              (None, None, "prefix=none")])
def test_protocol_line_names_the_prefix_token_by_its_text(text: str | None, token: int | None, shown: str) -> None:
    from lleval.report.blocks import ProtocolBlock

    block = ProtocolBlock(name="rolling", max_length=16, stride=None, prefix_token=token, prefix_token_text=text,
                          concat=None, special_tokens=False, first_token_scored=True, word_count="split",
                          scores_every_token=True, windows="rolling", stream_tokens=10, unscored_tokens=0)
    assert f", {shown}," in block.summary()


def test_kld_help_names_every_file_it_writes() -> None:
    import click

    described = " ".join((main.commands["kld"].help or "").split())  # the command's own text, not its options
    assert "nothing is written to disk but the report" not in described
    assert all(flag in described for flag in ("--tokens", "--html", "-o"))
    kld = main.commands["kld"]
    # with the command's own context settings, as `lleval kld` runs: click keeps the help option
    # of the first context that asks, and a bare one would leave the reference's `-h` out
    assert "--tokens" in kld.get_help(click.Context(kld, info_name="kld", **kld.context_settings))


def test_the_docs_give_the_cpu_batch_budget_runs_report() -> None:
    """The --batch-size text moved from the README's flag table to docs/performance.md."""
    from lleval.plan.batching import CPU_BATCH_TOKENS, auto_batching

    # a run of the built-in model (2,048 positions) reports the budget of one full window
    assert auto_batching(None, False, 8 << 30, max_length=2048).max_batch_tokens == 2048
    page = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    paragraph = " ".join(next(p for p in page.split("\n\n") if p.startswith("`--batch-size`")).split())
    assert f"CPU: {CPU_BATCH_TOKENS:,} tokens" in paragraph and "2,048" in paragraph
