"""A finished run is never lost to an output that fails: a full disk (an injected
``OSError(ENOSPC)``) on -o, --html, --tokens or the checkpoint costs that file alone, says
so in one line, and leaves no temporary file; concurrent runs never share temporary names;
files get the mode the umask gives."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from helpers import rel_close, write_jsonl
from lleval.commands.score import evaluate
from lleval.runner.loop import run_loop
from lleval.runner.prepare import make_job, open_inputs
from lleval.cli import main
from lleval.config import EvalConfig
from lleval.errors import OutputError
from lleval.plan.protocols import plan
from lleval.reducers.documents import DocumentSums
from lleval.report.tokens import TokenWriter, read_token_file

TEXTS = ["The keeper wrote in the logbook every evening, even when nothing happened.",
         "Bread needs flour, water, salt and yeast, and time.", "Blue light scatters more than red light.",
         "A quiet harbour at dawn: gulls, ropes, and the smell of tar."]


def _disk_full_on(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make the fsync of any file written for ``name`` (the file, or a hidden temporary
    ``.NAME.*`` next to it) fail as a full disk does."""
    real = os.fsync

    def fsync(fd: int) -> None:
        written = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if written == name or written.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _rows(path: Path) -> list[dict[str, Any]]:
    return list(read_token_file(str(path))[1])


def _check_tokens(path: Path, report: Any) -> None:
    """The token file is complete: its rows add up to the report's documents."""
    rows = _rows(path)
    assert len(rows) == report.totals.tokens
    for doc in report.documents:
        mine = [r["logprob"] for r in rows if r["document"] == doc.index]
        assert len(mine) == doc.tokens and rel_close(math.fsum(mine), doc.log_likelihood, 1e-9)


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def data(tmp_path: Path) -> str:
    return write_jsonl(tmp_path / "d.jsonl", TEXTS)


@pytest.mark.parametrize("failing", ["t.parquet", "t.jsonl", "r.html"])
def test_a_file_that_cannot_be_written_costs_only_itself(tiny_loaded: Any, tmp_path: Path, data: str,
                                                         monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    tokens = tmp_path / ("t.jsonl" if failing == "t.jsonl" else "t.parquet")
    html = tmp_path / "r.html"
    _disk_full_on(monkeypatch, failing)
    report = evaluate(EvalConfig(dataset=data, tokens=str(tokens), html=str(html), bootstrap=0, max_length=16),
                      loaded=tiny_loaded)
    assert report.complete and report.totals.documents == len(TEXTS)
    (failure,) = report.failed_outputs
    assert isinstance(failure, OutputError) and str(tmp_path / failing) in str(failure)
    assert "the disk is full" in str(failure) and len(str(failure).splitlines()) == 1
    if failing == "r.html":
        _check_tokens(tokens, report)
        assert _listing(tmp_path) == {"d.jsonl", tokens.name}
    else:
        assert html.read_text(encoding="utf-8").rstrip().endswith("</html>")
        assert _listing(tmp_path) == {"d.jsonl", "r.html"}  # no token file, no parts, no .tmp


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_tokens_failing_mid_run_let_the_run_finish(tiny_loaded: Any, tmp_path: Path, data: str,
                                                   monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    real, calls = TokenWriter._write, {"n": 0}

    def write(self: TokenWriter, columns: dict[str, Any]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, columns)

    monkeypatch.setattr(TokenWriter, "_write", write)
    html = tmp_path / "r.html"
    config = EvalConfig(dataset=data, tokens=str(tmp_path / f"t{suffix}"), html=str(html), bootstrap=0,
                        max_length=16, batch_size=1, block_tokens=8)
    report = evaluate(config, loaded=tiny_loaded)
    assert calls["n"] == 2  # the writer stopped at its failure; scoring went on
    assert report.complete and report.totals.documents == len(TEXTS)
    (failure,) = report.failed_outputs
    assert f"t{suffix}" in str(failure) and "the disk is full" in str(failure)
    assert _listing(tmp_path) == {"d.jsonl", "r.html"}


def test_a_checkpoint_that_cannot_be_saved_warns_once_and_the_run_goes_on(
    tiny_loaded: Any, tmp_path: Path, data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = evaluate(EvalConfig(dataset=data, bootstrap=0, max_length=16), loaded=tiny_loaded)
    _disk_full_on(monkeypatch, "run.ckpt")
    config = EvalConfig(dataset=data, bootstrap=0, max_length=16, batch_size=1, block_tokens=8,
                        checkpoint=str(tmp_path / "run.ckpt"), checkpoint_every=0, tokens=str(tmp_path / "t.jsonl"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate(config, loaded=tiny_loaded)
    (warning,) = [w for w in caught if "run.ckpt" in str(w.message)]  # once, though every block saves
    assert "the disk is full" in str(warning.message)
    assert report.complete and not report.failed_outputs
    assert [d.to_dict() for d in report.documents] == [d.to_dict() for d in plain.documents]
    assert [n for n in report.notes if "run.ckpt" in n] and not [n for n in plain.notes if "run.ckpt" in n]
    _check_tokens(tmp_path / "t.jsonl", report)
    assert _listing(tmp_path) == {"d.jsonl", "t.jsonl"}


@pytest.mark.parametrize("failing", ["report.json", "t.parquet"])
def test_the_cli_writes_every_other_output_says_one_line_and_exits_1(
    tiny_model_dir: Path, tmp_path: Path, data: str, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    _disk_full_on(monkeypatch, failing)
    out, tokens = tmp_path / "report.json", tmp_path / "t.parquet"
    result = CliRunner().invoke(main, ["score", "-q", "-m", str(tiny_model_dir), "-d", data, "-L", "16",
                                       "--bootstrap", "0", "-o", str(out), "--tokens", str(tokens), "--format",
                                       "json"], catch_exceptions=False)
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert str(tmp_path / failing) in line and "internal error" not in line
    shown = json.loads(result.stdout)  # the result is on stdout whatever failed
    assert shown["totals"]["documents"] == len(TEXTS)
    if failing == "t.parquet":
        assert json.loads(out.read_text())["totals"] == shown["totals"]
        assert _listing(tmp_path) == {"d.jsonl", "report.json"}
    else:
        assert len(_rows(tokens)) == shown["totals"]["tokens"]
        assert _listing(tmp_path) == {"d.jsonl", "t.parquet"}


def test_kld_hands_back_its_token_file_failure(tiny_loaded: Any, tmp_path: Path, data: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from lleval.commands.kld import kl_divergence

    _disk_full_on(monkeypatch, "k.jsonl")
    result = kl_divergence(EvalConfig(dataset=data, tokens=str(tmp_path / "k.jsonl"), bootstrap=0, max_length=16),
                           None, base=tiny_loaded, model=tiny_loaded)
    assert result.to_dict()["kl_divergence"]["mean"] == 0.0  # the same model twice: the run's numbers are there
    (failure,) = result.failed_outputs
    assert str(tmp_path / "k.jsonl") in str(failure) and "the disk is full" in str(failure)
    assert _listing(tmp_path) == {"d.jsonl"}


# ---------------------------------------------------------------- concurrent and dead runs


def _blocks(loaded: Any, data: str) -> tuple[list[Any], list[Any]]:
    """The scored blocks of a run over ``data`` (with token texts), and its documents."""

    class Keep:
        def __init__(self) -> None:
            self.blocks: list[Any] = []

        def update(self, block: Any) -> None:
            self.blocks.append(block)

    config = EvalConfig(dataset=data, tokens="unused.parquet", max_length=16, batch_size=1, block_tokens=8)
    job = make_job(open_inputs(config), loaded, plan(config, loaded.tokenizer, loaded.info.max_positions))
    keep, sums = Keep(), DocumentSums()
    run_loop(job, sums, {"keep": keep})
    return keep.blocks, sums.documents


def _interleave(a: list[Any], b: list[Any]) -> Iterator[tuple[int, Any]]:
    for i in range(max(len(a), len(b))):
        for k, blocks in enumerate((a, b)):
            if i < len(blocks):
                yield k, blocks[i]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_two_runs_with_the_same_tokens_file_both_finish(tiny_loaded: Any, tmp_path: Path, suffix: str) -> None:
    runs = [_blocks(tiny_loaded, write_jsonl(tmp_path / f"d{k}.jsonl", texts))
            for k, texts in enumerate((TEXTS[:2], TEXTS[2:]))]
    target = tmp_path / f"t{suffix}"
    writers = [TokenWriter(str(target)), TokenWriter(str(target))]
    for k, block in _interleave(runs[0][0], runs[1][0]):
        writers[k].update(block)
    assert writers[0].parts_dir != writers[1].parts_dir and all(w.parts_dir.is_dir() for w in writers)
    for writer, (blocks, documents) in zip(writers, runs):
        writer.finish({})
        rows = _rows(target)  # complete, and this run's: the last rename wins
        assert len(rows) == sum(d.tokens for d in documents) == sum(b.tokens for b in blocks)
        for doc in documents:
            mine = [r["logprob"] for r in rows if r["document"] == doc.index]
            assert rel_close(math.fsum(mine), doc.log_likelihood, 1e-9)
    assert _listing(tmp_path) == {"d0.jsonl", "d1.jsonl", target.name}


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_parts_left_by_dead_runs_are_swept(tiny_loaded: Any, tmp_path: Path, data: str) -> None:
    dead = _dead_pid()
    made = {
        f".t.jsonl.parts-{dead}-0a1b": "swept",  # a SIGKILLed run's parts
        f".t.jsonl.{dead}-0a1b.tmp": "swept",  # its merge, cut short
        f".t.jsonl.parts-{os.getpid()}-2c3d": "kept",  # a run still alive
        f".t.jsonl.parts-{dead}-4e5f": "kept",  # a stopped run whose checkpoint will resume it
        f".other.jsonl.parts-{dead}-6a7b": "kept",  # another file's
    }
    (tmp_path / "run.ckpt").write_text("{}")
    for name in made:
        if name.endswith(".tmp"):
            (tmp_path / name).write_text("half")
        else:
            (tmp_path / name).mkdir()
            (tmp_path / name / "part-00000.jsonl").write_text("{}\n")
    (tmp_path / f".t.jsonl.parts-{dead}-4e5f" / "checkpoint").write_text(str(tmp_path / "run.ckpt"))
    report = evaluate(EvalConfig(dataset=data, tokens=str(tmp_path / "t.jsonl"), bootstrap=0, max_length=16),
                      loaded=tiny_loaded)
    _check_tokens(tmp_path / "t.jsonl", report)
    assert _listing(tmp_path) == {"d.jsonl", "t.jsonl", "run.ckpt", *(n for n, fate in made.items() if fate == "kept")}


def test_a_run_that_fails_removes_its_parts(tiny_loaded: Any, tmp_path: Path) -> None:
    from lleval.errors import ScoringError

    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    config = EvalConfig(dataset=data, tokens=str(tmp_path / "t.parquet"), bootstrap=0, max_length=16,
                        batch_size=1, block_tokens=8)
    real = tiny_loaded.scorer
    calls = {"n": 0}

    def scorer(*args: Any) -> Any:
        calls["n"] += 1
        out = real(*args)
        return out * float("nan") if calls["n"] == 3 else out

    import dataclasses

    with pytest.raises(ScoringError):
        evaluate(config, loaded=dataclasses.replace(tiny_loaded, scorer=scorer))
    assert _listing(tmp_path) == {"d.jsonl"}


# ---------------------------------------------------------------- file modes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)], ids=["022", "027"])
def test_every_file_gets_the_mode_of_the_umask(tiny_loaded: Any, tmp_path: Path, data: str, umask: int,
                                               mode: int) -> None:
    from lleval.report.output import write_report

    before = os.umask(umask)
    try:
        config = EvalConfig(dataset=data, bootstrap=0, max_length=16, tokens=str(tmp_path / "t.parquet"),
                            html=str(tmp_path / "r.html"), checkpoint=str(tmp_path / "run.ckpt"))
        report = evaluate(config, loaded=tiny_loaded)
        write_report(report, str(tmp_path / "report.json"))
    finally:
        os.umask(before)
    written = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.name != "d.jsonl"}
    assert written == dict.fromkeys(["t.parquet", "r.html", "run.ckpt", "report.json"], mode)


def test_the_report_says_where_each_setting_came_from(tiny_model_dir: Path, tmp_path: Path, data: str) -> None:
    """``settings``: a typed flag, a config file's value (with the file) and a value the
    command line left at its default (absent), in the JSON a CLI run writes."""
    config = tmp_path / "c.yaml"
    config.write_text("stride: 8\nbootstrap: 100\n")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["score", "-q", "-m", str(tiny_model_dir), "-d", data, "--max-length", "16",
                                       "--config", str(config), "-o", str(out)])
    assert result.exit_code == 0, result.output
    settings = json.loads(out.read_text())["settings"]
    assert settings["max_length"] == {"value": 16, "origin": "flag"}
    assert settings["stride"] == {"value": 8, "origin": "config file", "file": str(config)}
    assert settings["bootstrap"] == {"value": 100, "origin": "config file", "file": str(config)}
    assert settings["model"] == {"value": str(tiny_model_dir), "origin": "flag"}
    assert "seed" not in settings and "protocol" not in settings  # left at their defaults


# ---------------------------------------------------------------- outputs over inputs


@pytest.fixture
def world(tiny_model_dir: Path, tiny_gguf: Path, tmp_path: Path) -> Path:
    """Every kind of file a run reads, in one folder: a model folder ``m``, a ``.gguf``, a
    tokenizer folder ``tok``, datasets (``d.jsonl``, ``d.parquet``, a saved-dataset folder ``ds``),
    a config file, a suite file naming ``m`` and ``d.jsonl``, a reference, a token file and two
    reports. Nothing reads their contents: every case is refused first."""
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    shutil.copy(tiny_gguf, tmp_path / "g.gguf")
    (tmp_path / "tok").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, tmp_path / "tok" / name)
    write_jsonl(tmp_path / "d.jsonl", TEXTS)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "state.json").write_text("{}")
    for name, text in {"d.parquet": "PAR1", "c.yaml": "bootstrap: 0\n", "r.parquet": "PAR1", "t.parquet": "PAR1",
                       "a.json": "{}", "b.json": "{}",
                       "s.yaml": "models: [{label: m, model: m}]\ndatasets: [{label: d, dataset: d.jsonl}]\n"}.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (symlinks as their targets' names) with its bytes."""
    found: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = b"-> " + os.readlink(path).encode()
        elif path.is_file():
            found[key] = path.read_bytes()
    return found


def _links(world: Path) -> None:
    """Other names of the world's files: symlinks and hard links."""
    os.symlink(world / "d.jsonl", world / "link.json")
    os.symlink(world / "m", world / "mlink")
    os.link(world / "d.jsonl", world / "hard.jsonl")
    os.link(world / "m" / "model.safetensors", world / "hard.bin")
    os.link(world / "a.json", world / "hard-a.json")
    (world / "sub").mkdir()
    # a hub-cache-style snapshot: its files are symlinks to blobs outside the folder
    (world / "blobs").mkdir()
    (world / "snap").mkdir()
    for name in os.listdir(world / "m"):
        (world / "blobs" / f"blob-{name}").write_bytes((world / "m" / name).read_bytes())
        os.symlink(world / "blobs" / f"blob-{name}", world / "snap" / name)


OVER_INPUTS = {
    "-o onto the model folder's config.json": "score -m m -d d.jsonl -o m/config.json",
    "-o as a new weights file in the model folder": "score -m m -d d.jsonl -o m/extra.safetensors",
    "-o as a new tokenizer file in the model folder": "score -m m -d d.jsonl -o m/tokenizer_config.json",
    "-o onto the model's .gguf": "score -m g.gguf -d d.jsonl -o g.gguf",
    "-o onto the --config file": "score -m m -d d.jsonl --config c.yaml -o c.yaml",
    "--html onto the --config file of kld": "kld -m m --base-dtype bfloat16 -d d.jsonl --config c.yaml --html c.yaml",
    "-o onto the --suite file": "score --suite s.yaml -o s.yaml",
    "-o of a suite onto its --config file": "score -m m -m g.gguf -d d.jsonl --config c.yaml -o c.yaml",
    "-o onto a dataset the suite file names": "score --suite s.yaml -o d.jsonl",
    "--html into a model folder the suite file names": "score --suite s.yaml --html m/generation_config.json",
    "--tokens of a suite's cell into a saved dataset folder": "score -m m -m g.gguf -d ds --tokens ds/t.parquet",
    "-o of a suite of -m/-d onto its dataset": "score -m m -m g.gguf -d d.jsonl -o d.jsonl",
    "--save-reference onto the dataset": "score -m m -d d.parquet --save-reference d.parquet",
    "--save-reference and --tokens onto one file": "score -m m -d d.jsonl --save-reference x.parquet --tokens x.parquet",
    "--checkpoint onto the dataset": "score -m m -d d.jsonl --checkpoint d.jsonl",
    "-o into a saved dataset folder": "score -m m -d ds -o ds/state.json",
    "-o into the served model's --tokenizer folder": "score -m http://127.0.0.1:9/v1 --tokenizer tok -d d.jsonl "
                                                     "-o tok/tokenizer.json",
    "kld -o onto the --reference": "kld -m m --reference r.parquet -d d.jsonl -o r.parquet",
    "kld --tokens onto the --reference": "kld -m m --reference r.parquet -d d.jsonl --tokens r.parquet",
    "kld --html onto the --reference": "kld -m m --reference r.parquet -d d.jsonl --html r.parquet",
    "kld -o into the --base folder": "kld -m g.gguf --base m -d d.jsonl -o m/config.json",
    "-o through a symlink to the dataset": "score -m m -d d.jsonl -o link.json",
    "-o into the model folder through a symlinked folder": "score -m m -d d.jsonl -o mlink/config.json",
    "-o onto the dataset by another relative path": "score -m m -d {world}/d.jsonl -o sub/../d.jsonl",
    "-o onto a hard link of the dataset": "score -m m -d d.jsonl -o hard.jsonl",
    "-o onto a hard link of a model file": "score -m m -d d.jsonl -o hard.bin",
    "-o onto a hub-style snapshot's symlinked file": "score -m snap -d d.jsonl -o snap/config.json",
    "-o onto the blob a snapshot's file links to": "score -m snap -d d.jsonl -o blobs/blob-config.json",
    "compare --html onto a candidate": "compare a.json b.json --html b.json",
    "compare -o onto a hard link of the base": "compare a.json b.json -o hard-a.json",
    "inspect --html onto its token file": "inspect t.parquet --html t.parquet",
    "inspect --html onto the suite report it reads": "inspect a.json --html a.json",
}


@pytest.mark.parametrize("argv", OVER_INPUTS.values(), ids=OVER_INPUTS.keys())
def test_no_output_is_written_over_anything_the_run_reads(world: Path, monkeypatch: pytest.MonkeyPatch,
                                                          argv: str) -> None:
    """Every file a run reads (a model folder as a whole, a .gguf, a tokenizer folder, the config
    and suite files and all they name, the reference, the data, the reports compare and inspect
    read) is off limits to every file it writes, however the file is named (relative, absolute,
    symlink, hard link): refused with exit 2 before any model opens, every file as it was."""
    import lleval.backends.registry as registry

    def no_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was opened")

    monkeypatch.setattr(registry, "open_model", no_model)
    monkeypatch.chdir(world)
    _links(world)
    before = _snapshot(world)
    args = argv.replace("{world}", str(world)).split()
    quiet = ["-q"] if args[0] in ("score", "kld") else []
    result = CliRunner().invoke(main, [args[0], *quiet, *args[1:]])
    assert result.exit_code == 2, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert "is the same file" in line or "is inside" in line, line
    assert _snapshot(world) == before


@pytest.mark.parametrize("output", ["m.json", "m-report.json", "../outside.json", "m/eval.json", "snap/eval.json"])
def test_outputs_beside_an_input_are_not_refused(world: Path, monkeypatch: pytest.MonkeyPatch, output: str) -> None:
    """A name that starts like the model folder's, beside it, is not inside it; a report inside a
    model folder under a name no loader reads (an eval.json beside a checkpoint) is allowed."""
    from lleval.config import EvalConfig
    from lleval.preflight import check_config

    monkeypatch.chdir(world)
    _links(world)
    check_config(EvalConfig(model="m", dataset="d.jsonl", output=output, tokens="sub/t.parquet",
                            save_reference="sub/r.parquet"), [("--config", "c.yaml")])


def test_every_path_setting_is_an_output(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outputs are the settings declared ``path``: each one over the dataset is refused, a
    new output among them included (issue 29: --save-reference was left off a hand-kept list)."""
    from lleval.config import EvalConfig, settings
    from lleval.preflight import check_config

    monkeypatch.chdir(world)
    declared = [f.name for f, how in settings() if how.path]
    assert {"output", "tokens", "html", "checkpoint", "save_reference"} <= set(declared)
    for name in declared:
        with pytest.raises(OutputError, match="is the same file as --dataset d.parquet"):
            check_config(EvalConfig(model="m", dataset="d.parquet", **{name: "d.parquet"}))


def test_rerunning_a_finished_run_keeps_its_token_file_and_reference(tiny_loaded: Any, tmp_path: Path,
                                                                     data: str) -> None:
    """The same command again after a run with --tokens --save-reference --checkpoint finished:
    the report is rebuilt from the checkpoint, the two files stay as the run wrote them (same
    inode, time and bytes), and a third run still finds the checkpoint whole."""
    config = EvalConfig(dataset=data, bootstrap=0, max_length=16, tokens=str(tmp_path / "t.parquet"),
                        save_reference=str(tmp_path / "r.parquet"), reference_top_k=4,
                        checkpoint=str(tmp_path / "run.ckpt"))
    first = evaluate(config, loaded=tiny_loaded)

    def files() -> dict[str, tuple[int, int, bytes]]:
        return {n: ((tmp_path / n).stat().st_ino, (tmp_path / n).stat().st_mtime_ns, (tmp_path / n).read_bytes())
                for n in ("t.parquet", "r.parquet")}

    written = files()
    for _ in range(2):
        again = evaluate(config, loaded=tiny_loaded)
        assert again.complete and not again.failed_outputs
        assert [d.to_dict() for d in again.documents] == [d.to_dict() for d in first.documents]
        assert any("rebuilt" in note for note in again.notes)
        assert files() == written
    assert _listing(tmp_path) == {"d.jsonl", "t.parquet", "r.parquet", "run.ckpt"}
