"""Suites (lleval issue 19): many models x many datasets in one run, each cell as a separate run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import write_jsonl

TEXTS_A = ["The cat sat on the mat. It was warm and the sun was out.", "Dogs bark at night when the moon is full.",
           "A third document with a few more words in it, to make it long enough."]
TEXTS_B = ["Rain falls on the hills and the rivers run to the sea.", "Stars are far away and very bright tonight."]


@pytest.fixture(scope="module")
def sweep(tiny_model_dir: Path, tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two 'checkpoints' of one tokenizer (the tiny GPT-2 and Llama) and two datasets."""
    root = tmp_path_factory.mktemp("sweep")
    first, second = root / "checkpoint-2000", root / "checkpoint-1000"
    shutil.copytree(tiny_model_dir, first)
    shutil.copytree(tiny_llama_dir, second)
    return {"models": [str(first), str(second)], "datasets": [write_jsonl(root / "a.jsonl", TEXTS_A),
                                                             write_jsonl(root / "b.jsonl", TEXTS_B)], "root": root}


def _suite(sweep: dict[str, Any]) -> Any:
    from lleval.commands.suite import suite_from_flags

    return suite_from_flags(sweep["models"], sweep["datasets"])


def _run(sweep: dict[str, Any], **kwargs: Any) -> Any:
    from lleval.commands.suite import run_suite
    from lleval.config import EvalConfig

    config = kwargs.pop("config", EvalConfig(bootstrap=100))
    return run_suite(kwargs.pop("suite", None) or _suite(sweep), config, **kwargs)


class LoadSpy:
    """Counts model loads, loading through lleval's own loader."""

    def __init__(self) -> None:
        self.loaded: list[str | None] = []

    def __call__(self, config: Any) -> Any:
        from lleval.commands.score import load

        self.loaded.append(config.model)
        return load(config)


def test_cells_equal_separate_runs_and_work_is_done_once(sweep: dict[str, Any], monkeypatch: Any) -> None:
    """A 2x2 suite: every cell's documents rows equal a separate evaluate() of that pair; two
    model loads (not four) and two tokenizations (one per dataset: the models share a tokenizer)."""
    from lleval.commands.score import evaluate
    from lleval.config import EvalConfig
    from lleval.plan import protocols

    calls = []
    real_units = protocols.Plan.units
    monkeypatch.setattr(protocols.Plan, "units", lambda self, *a, **k: calls.append(1) or real_units(self, *a, **k))
    spy = LoadSpy()
    report = _run(sweep, load=spy)
    assert spy.loaded == sweep["models"]
    assert len(calls) == 2
    assert report.counts == {"model_loads": 2, "tokenizations": 2, "replays": 2}
    assert report.complete and len(report.cells) == 4
    for cell in report.cells:
        model = next(m for m in sweep["models"] if Path(m).name == cell.model)
        data = next(d for d in sweep["datasets"] if Path(d).stem == cell.dataset)
        alone = evaluate(EvalConfig(model=model, dataset=data, bootstrap=100))
        assert [d.to_dict() for d in cell.report.documents] == [d.to_dict() for d in alone.documents]
        assert cell.report.dataset.to_dict() == alone.dataset.to_dict()
        assert cell.report.to_dict()["metrics"] == alone.to_dict()["metrics"]


def test_macro_average_against_a_naive_loop(sweep: dict[str, Any]) -> None:
    """Mean over datasets of bits per byte; the interval from resampling documents within each
    dataset (seed + j), recomputing each bpb as a ratio of sums, then averaging."""
    report = _run(sweep)
    for macro in report.macro:
        cells = [c.report for c in report.cells if c.model == macro.model]
        per_dataset = [-sum(d.log_likelihood for d in r.documents) / sum(d.bytes for d in r.documents) / math.log(2)
                       for r in cells]
        assert macro.bits_per_byte == pytest.approx(sum(per_dataset) / len(per_dataset), rel=1e-12)
        samples = np.zeros(100)
        for j, r in enumerate(cells):
            nll = [-d.log_likelihood for d in r.documents]
            n_bytes = [d.bytes for d in r.documents]
            rng = np.random.default_rng(j)  # seed 0 + j, drawn as bootstrap_sums draws: one (R, n) block
            index = rng.integers(0, len(nll), size=(100, len(nll)))
            for k in range(100):
                samples[k] += sum(nll[i] for i in index[k]) / sum(n_bytes[i] for i in index[k]) / math.log(2)
        low, high = np.percentile(samples / len(cells), [2.5, 97.5])
        assert macro.interval == pytest.approx((low, high), rel=1e-9)
        assert macro.datasets == 2


def test_suite_report_round_trips_and_fits_its_schema(sweep: dict[str, Any]) -> None:
    """The JSON fits suite.schema.json (jsonschema's verdict too) and from_dict reads it back."""
    import jsonschema

    from lleval.report.schema import load_schema
    from lleval.report.suite import SuiteReport

    data = _run(sweep).to_dict()
    jsonschema.validate(data, load_schema("suite"))
    for cell in data["cells"]:
        jsonschema.validate(cell["report"], load_schema("score"))
    again = SuiteReport.from_dict(json.loads(json.dumps(data)))
    assert again.to_dict() == data
    assert len(data["matrix"]) == 4 and {r["tokens"] for r in data["matrix"]} == {
        c["report"]["totals"]["tokens"] for c in data["cells"]}


def test_steps_order_the_matrix(sweep: dict[str, Any]) -> None:
    """Folder names checkpoint-2000, checkpoint-1000: steps found, the matrix ordered by step."""
    from lleval.commands.suite import find_step

    report = _run(sweep)
    assert [m.step for m in report.models] == [2000, 1000] and report.has_trend
    assert [r["step"] for r in report.to_dict()["matrix"]] == [1000, 1000, 2000, 2000]
    assert [find_step(n) for n in ("step-1000", "step1000", "checkpoint-30", "global_step7", "final")] == [
        1000, 1000, 30, 7, None]
    assert find_step("org/pythia", "step143000") == 143000


def test_stop_after_the_first_cell_marks_the_report_incomplete(sweep: dict[str, Any]) -> None:
    """should_stop (Ctrl-C) turning true during the first cell: that cell is stopped at a batch,
    no further cell is scored, and the report says complete false."""
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 1

    report = _run(sweep, should_stop=stop)
    assert not report.complete
    assert len(report.cells) == 1
    assert report.to_dict()["complete"] is False
    assert any("nothing was saved to resume from" in n for n in report.notes)  # no --checkpoint was given


def test_a_finished_cell_is_not_scored_again(sweep: dict[str, Any], tmp_path: Path) -> None:
    """--checkpoint PREFIX: one checkpoint per cell; a rerun rebuilds every cell from its
    checkpoint (nothing scored) with the same documents."""
    import dataclasses

    from lleval.config import EvalConfig

    config = EvalConfig(bootstrap=100, checkpoint=str(tmp_path / "sweep.ckpt"))
    first = _run(sweep, config=config)
    assert len(list(tmp_path.glob("sweep.ckpt.*"))) == 4
    again = _run(sweep, config=dataclasses.replace(config))
    for a, b in zip(first.cells, again.cells):
        assert [d.to_dict() for d in a.report.documents] == [d.to_dict() for d in b.report.documents]
        assert b.report.timing.tokens_per_second == 0 or any("rebuilt" in n for n in b.report.notes)


def test_a_model_that_fails_to_load_fails_its_cells_only(sweep: dict[str, Any], tmp_path: Path) -> None:
    from lleval.commands.suite import suite_from_flags

    suite = suite_from_flags([str(tmp_path / "missing-model"), sweep["models"][0]], sweep["datasets"][:1])
    report = _run(sweep, suite=suite)
    assert [c.error is not None for c in report.cells] == [True, False]
    assert not report.complete and report.counts["model_loads"] == 1


def test_bad_dataset_is_named_before_any_model_loads(sweep: dict[str, Any], tmp_path: Path) -> None:
    from lleval.commands.suite import suite_from_flags
    from lleval.errors import LlevalError

    spy = LoadSpy()
    suite = suite_from_flags(sweep["models"], [sweep["datasets"][0], str(tmp_path / "nope.jsonl")])
    with pytest.raises(LlevalError, match="'nope'"):
        _run(sweep, suite=suite, load=spy)
    assert spy.loaded == []


@pytest.mark.parametrize("text, problem", [
    ("models: [a]\ndatasets: [b]\nmodles: []\n", "unknown key 'modles' in top level (did you mean 'models'?)"),
    ("models:\n  - {model: a, dtyp: float32}\ndatasets: [b]\n", "did you mean 'dtype'?"),
    ("models:\n  - {model: a, label: x}\n  - {model: b, label: x}\ndatasets: [d]\n", "two models are labelled 'x'"),
    ("models: [a]\ndatasets:\n  - {dataset: d, limit: many}\n", "'limit' must be int"),
    ("models: [a]\n", "'datasets' must be a non-empty list"),
])
def test_bad_suite_files(tmp_path: Path, text: str, problem: str) -> None:
    from lleval.commands.suite import load_suite_file
    from lleval.errors import ConfigError

    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_suite_file(str(path))
    assert problem in str(caught.value)


def test_suite_file_sets_each_entry(tmp_path: Path) -> None:
    from lleval.commands.suite import load_suite_file

    path = tmp_path / "suite.yaml"
    path.write_text("models:\n  - {label: s1, path: ./run/checkpoint-1000}\n  - {model: org/m, revision: step2000}\n"
                    "datasets:\n  - {label: wiki, dataset: w.jsonl, limit: 5, text_field: body}\n")
    suite = load_suite_file(str(path))
    assert [(m.label, m.step, dict(m.fields)) for m in suite.models] == [
        ("s1", 1000, {"model": "./run/checkpoint-1000"}), ("m", 2000, {"model": "org/m", "revision": "step2000"})]
    assert dict(suite.datasets[0].fields) == {"dataset": "w.jsonl", "limit": 5, "text_field": "body"}


@pytest.mark.parametrize("config", sorted((Path(__file__).parent.parent / "configs" / "suites").glob("*.yaml")))
def test_shipped_suite_files_load(config: Path) -> None:
    from lleval.commands.suite import load_suite_file

    suite = load_suite_file(str(config))
    assert suite.models and suite.datasets


def test_cli_suite_and_single_run(sweep: dict[str, Any], tmp_path: Path) -> None:
    """Two -m make a suite report; one -m and one -d stay a score report."""
    from lleval.cli import main

    out = tmp_path / "suite.json"
    args = ["score", "-q", "--bootstrap", "0"]
    result = CliRunner().invoke(main, [*args, "-m", sweep["models"][0], "-m", sweep["models"][1],
                                       "-d", sweep["datasets"][0], "-o", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["kind"] == "suite" and data["counts"]["model_loads"] == 2
    single = tmp_path / "one.json"
    result = CliRunner().invoke(main, [*args, "-m", sweep["models"][0], "-d", sweep["datasets"][0], "-o", str(single)])
    assert result.exit_code == 0, result.output
    assert json.loads(single.read_text())["kind"] == "score"
    result = CliRunner().invoke(main, [*args, "-m", sweep["models"][0], "-m", sweep["models"][0], "-d", "x.jsonl"])
    assert result.exit_code == 2 and "labelled" in result.output


def test_token_files_and_references_are_written_per_cell(sweep: dict[str, Any], tmp_path: Path) -> None:
    """--tokens and --save-reference in a suite: one file per cell, NAME.MODEL__DATASET.parquet, each
    the file a separate run of the cell writes (same rows and values)."""
    import pyarrow.parquet as pq

    from lleval.commands.score import evaluate
    from lleval.config import EvalConfig

    tokens, ref = tmp_path / "t.parquet", tmp_path / "r.parquet"
    report = _run(sweep, config=EvalConfig(bootstrap=0, tokens=str(tokens), save_reference=str(ref),
                                           reference_top_k=4))
    labels = [(c.model, c.dataset) for c in report.cells]
    assert len(labels) == 4 and all(c.report is not None for c in report.cells)
    expected = sorted([f"t.{m}__{d}.parquet" for m, d in labels] + [f"r.{m}__{d}.parquet" for m, d in labels])
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
    for model, data in zip(sweep["models"], (0, 1)):  # two cells checked against separate runs
        label = Path(model).name
        dataset = sweep["datasets"][data]
        alone = tmp_path / "alone"
        alone.mkdir(exist_ok=True)
        evaluate(EvalConfig(model=model, dataset=dataset, bootstrap=0, tokens=str(alone / "t.parquet"),
                            save_reference=str(alone / "r.parquet"), reference_top_k=4))
        cell = f"{label}__{Path(dataset).stem}"
        for name in ("t", "r"):
            mine, theirs = pq.read_table(tmp_path / f"{name}.{cell}.parquet"), pq.read_table(alone / f"{name}.parquet")
            assert mine.num_rows == theirs.num_rows > 0
            for column in theirs.column_names:
                assert mine.column(column).to_pylist() == theirs.column(column).to_pylist(), (name, column)


@pytest.mark.parametrize("flag, name", [("--tokens", "t.parquet"), ("--save-reference", "r.parquet"),
                                        ("--html", "p.html")])
def test_a_suite_with_any_single_per_token_output_works(sweep: dict[str, Any], tmp_path: Path, flag: str,
                                                        name: str) -> None:
    """Each per-token output alone in a suite (issue 29: --save-reference alone crashed with an
    internal error and wrote no suite report): every cell scored, every file written, the
    token and reference files holding a row per scored token of their cell."""
    import pyarrow.parquet as pq

    from lleval.cli import main

    out = tmp_path / "s.json"
    result = CliRunner().invoke(main, ["score", "-q", "--bootstrap", "0", "-m", sweep["models"][0], "-m",
                                       sweep["models"][1], "-d", sweep["datasets"][0], "-d", sweep["datasets"][1],
                                       flag, str(tmp_path / name), "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["complete"] and report["counts"]["replays"] == 2
    assert all(cell["error"] is None for cell in report["cells"]) and len(report["cells"]) == 4
    if flag == "--html":
        assert (tmp_path / name).read_text().rstrip().endswith("</html>")
        return
    for cell in report["cells"]:
        stem, suffix = name.split(".")
        rows = pq.read_table(tmp_path / f"{stem}.{cell['model']}__{cell['dataset']}.{suffix}").num_rows
        assert rows == cell["report"]["totals"]["tokens"] > 0


def _files(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each per-cell file of ``folder`` with its inode, modification time and bytes."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())
            if p.suffix == ".parquet"}


def test_rerunning_a_finished_suite_with_tokens_and_checkpoints_keeps_it(sweep: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    """--tokens --save-reference --checkpoint: rerunning the same command after it finished
    rebuilds every cell from its checkpoint (not an error cell each, over the finished suite
    report), leaves every per-cell file as it was, and exits 0."""
    from lleval.cli import main

    out = tmp_path / "s.json"
    argv = ["score", "-q", "--bootstrap", "0", "-m", sweep["models"][0], "-d", sweep["datasets"][0], "-d",
            sweep["datasets"][1], "--tokens", str(tmp_path / "t.parquet"), "--save-reference",
            str(tmp_path / "r.parquet"), "--checkpoint", str(tmp_path / "ck"), "-o", str(out)]
    assert CliRunner().invoke(main, argv).exit_code == 0
    first, files = json.loads(out.read_text()), _files(tmp_path)
    assert len(files) == 4
    again = CliRunner().invoke(main, argv)
    assert again.exit_code == 0, again.output
    second = json.loads(out.read_text())
    assert second["complete"] and all(cell["error"] is None for cell in second["cells"])
    for a, b in zip(first["cells"], second["cells"]):
        assert b["report"]["documents"] == a["report"]["documents"]
        assert any("rebuilt" in note for note in b["report"]["notes"])
    assert _files(tmp_path) == files
    (tmp_path / "t.checkpoint-2000__b.parquet").unlink()  # a finished cell's file gone: refused, nothing lost
    gone = CliRunner().invoke(main, argv)
    assert gone.exit_code == 2 and "t.checkpoint-2000__b.parquet" in gone.output
    assert json.loads(out.read_text()) == second


def test_a_stopped_suite_with_tokens_resumes_and_keeps_its_finished_cells(sweep: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    """Stopped (Ctrl-C) in its third cell, a suite with --tokens --checkpoint resumes on the same
    call: the two finished cells are reused with their token files untouched, the stopped one
    goes on from its checkpoint, the last is scored; every token file equals an uninterrupted
    suite's."""
    import pyarrow.parquet as pq

    from lleval.config import EvalConfig

    def config(folder: Path) -> EvalConfig:
        folder.mkdir()
        return EvalConfig(bootstrap=0, max_length=16, batch_size=1, block_tokens=8, checkpoint_every=0,
                          tokens=str(folder / "t.parquet"), checkpoint=str(folder / "ck"))

    asked: list[int] = []

    def stop() -> bool:  # three questions into the third cell (two token files are finished)
        if len(list((tmp_path / "run").glob("t.*.parquet"))) >= 2:
            asked.append(1)
        return len(asked) > 3

    again = config(tmp_path / "run")
    stopped = _run(sweep, config=again, should_stop=stop)
    assert not stopped.complete and len(stopped.cells) == 3 and stopped.cells[2].report.documents
    names = [f"t.{c.model}__{c.dataset}.parquet" for c in stopped.cells[:2]]
    finished = {k: v for k, v in _files(tmp_path / "run").items() if k in names}
    assert len(finished) == 2
    resumed = _run(sweep, config=again)  # the same call again
    assert resumed.complete and all(c.error is None for c in resumed.cells)
    assert {k: v for k, v in _files(tmp_path / "run").items() if k in finished} == finished
    whole = _run(sweep, config=config(tmp_path / "alone"))
    for a, b in zip(resumed.cells, whole.cells):
        assert [d.to_dict() for d in a.report.documents] == [d.to_dict() for d in b.report.documents]
        name = f"t.{a.model}__{a.dataset}.parquet"
        mine, theirs = pq.read_table(tmp_path / "run" / name), pq.read_table(tmp_path / "alone" / name)
        assert mine.to_pylist() == theirs.to_pylist() and mine.num_rows > 0



@pytest.mark.parametrize("labels", [("m 1", "m_1"), ("m/1", "m 1"), ("M1", "m1")])
@pytest.mark.parametrize("files", [["--tokens", "t.parquet"], ["--save-reference", "r.parquet"],
                                   ["--checkpoint", "ck"]])
def test_labels_that_give_one_file_name_are_refused_up_front(sweep: dict[str, Any], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            labels: tuple[str, str], files: list[str]) -> None:
    """Two models labelled ``m 1`` and ``m_1`` (or ``M1`` and ``m1``: one file on a case-insensitive
    disk) would write one per-cell file over the other: refused before anything loads (exit 2),
    naming both labels; nothing is written."""
    from lleval.cli import main

    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "s.yaml"
    suite.write_text(json.dumps({"models": [{"label": labels[0], "model": sweep["models"][0]},
                                            {"label": labels[1], "model": sweep["models"][1]}],
                                 "datasets": [{"label": "a", "dataset": sweep["datasets"][0]}]}))
    spy = LoadSpy()
    monkeypatch.setattr("lleval.commands.score.load", spy)
    result = CliRunner().invoke(main, ["score", "-q", "--suite", str(suite), *files, "-o", "s.json"])
    assert result.exit_code == 2, result.output
    assert f"{labels[0]!r}" in result.output and f"{labels[1]!r}" in result.output
    assert spy.loaded == [] and sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_a_model_and_a_dataset_label_that_give_one_cell_name_are_refused(sweep: dict[str, Any]) -> None:
    """Model 'a__b' with dataset 'c' and model 'a' with dataset 'b__c' are both cell a__b__c."""
    from lleval.commands.suite import Suite, SuiteEntry, check_suite
    from lleval.config import EvalConfig
    from lleval.errors import ConfigError

    suite = Suite((SuiteEntry("a__b", {"model": sweep["models"][0]}), SuiteEntry("a", {"model": sweep["models"][1]})),
                  (SuiteEntry("c", {"dataset": sweep["datasets"][0]}), SuiteEntry("b__c", {"dataset": sweep["datasets"][1]})))
    with pytest.raises(ConfigError, match="'a__b' x 'c' and 'a' x 'b__c'"):
        check_suite(suite, EvalConfig(tokens="t.parquet"))


def test_labels_that_differ_only_in_file_names_are_fine_without_per_cell_files(sweep: dict[str, Any]) -> None:
    from lleval.commands.suite import Suite, SuiteEntry, check_suite
    from lleval.config import EvalConfig

    suite = Suite((SuiteEntry("m 1", {"model": sweep["models"][0]}), SuiteEntry("m_1", {"model": sweep["models"][1]})),
                  (SuiteEntry("a", {"dataset": sweep["datasets"][0]}),))
    check_suite(suite, EvalConfig(output="s.json", html="p.html"))
