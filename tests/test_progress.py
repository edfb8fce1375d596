"""Progress when stderr is not a terminal (issue 30): a plain line at each stage and at a steady
interval, `--progress auto|bar|lines|none`, and --quiet still silences it. The clock is a fake the
test moves: no test sleeps."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import write_jsonl
from lleval.cli import main
from lleval.cli.progress import progress_mode
from lleval.config import EvalConfig
from lleval.runner.progress import LINE_INTERVAL_SECONDS, LineProgress, ScoringProgress

TEXTS = ["The keeper wrote in the logbook every evening.", "Bread needs flour, water, salt and yeast.",
         "Blue light scatters more than red light, which is why the sky looks blue."]
LINE = re.compile(r"^lleval (?:(\d+):)?(\d+):(\d\d) ([a-z ]+?)(?:: (.*))?$")


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def parse(line: str) -> dict[str, Any]:
    """A progress line as data: seconds since the start, stage, and the scoring fields."""
    found = LINE.match(line)
    assert found, line
    hours, minutes, seconds, stage, rest = found.groups()
    out: dict[str, Any] = {"elapsed": int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds), "stage": stage}
    if rest:
        tokens = re.match(r"([\d,]+)/([\d,]+)(\+?) tok", rest)
        assert tokens, rest
        out["tokens"], out["planned"] = int(tokens[1].replace(",", "")), int(tokens[2].replace(",", ""))
        out["more_blocks"] = tokens[3] == "+"
        docs = re.search(r"(\d+)(?:/(\d+))? docs", rest)
        out["documents"] = int(docs[1]) if docs else None
        out["left"] = "left" in rest
    return out


def state(tokens: int, planned: int = 1000, seconds: float = 10.0, documents: int = 1) -> ScoringProgress:
    return ScoringProgress(documents, 4, tokens, planned, True, seconds, documents, tokens)


def test_a_line_at_each_stage_and_at_a_steady_interval_while_scoring() -> None:
    clock, lines = Clock(), []
    display = LineProgress(lines.append, clock=clock)
    display.stage("loading model")
    clock.now += 12
    display.stage("tokenizing")
    clock.now += 3
    display.stage("scoring")
    written_at = []
    for k in range(1, 61):  # a batch every 3 s for 3 minutes
        clock.now += 3
        before = len(lines)
        display.update(state(10 * k, seconds=3 * k))
        if len(lines) > before:
            written_at.append(clock.now)
    display.stage("writing report")
    parsed = [parse(line) for line in lines]
    assert [p["stage"] for p in parsed[:3]] == ["loading model", "tokenizing", "scoring"]
    assert [p["elapsed"] for p in parsed[:3]] == [0, 12, 15]
    # steady: one line each time the interval has passed, never more often, never much later
    gaps = [b - a for a, b in zip([1015.0] + written_at, written_at)]
    assert gaps and all(LINE_INTERVAL_SECONDS <= g < LINE_INTERVAL_SECONDS + 3 for g in gaps), gaps
    assert LINE_INTERVAL_SECONDS <= 30
    scoring = [p for p in parsed if p["stage"] == "scoring" and "tokens" in p]
    assert [p["tokens"] for p in scoring][:2] == [10 * round((w - 1015) / 3) for w in written_at[:2]]
    assert all(p["planned"] == 1000 and p["left"] for p in scoring)
    # the last scoring state is written before the next stage, then the stage itself
    assert parsed[-2]["tokens"] == 600 and parsed[-1]["stage"] == "writing report"


def test_a_line_every_interval_while_nothing_reports() -> None:
    """A model that loads for minutes (or one long batch) still writes a line every interval:
    the heartbeat (the background thread's tick) writes the stage again."""
    clock, lines = Clock(), []
    display = LineProgress(lines.append, clock=clock)
    display.stage("loading model")
    for _ in range(130):  # one heartbeat a second, as the thread ticks
        clock.now += 1
        display.heartbeat()
    parsed = [parse(line) for line in lines]
    assert [p["elapsed"] for p in parsed] == [0, 20, 40, 60, 80, 100, 120]
    assert {p["stage"] for p in parsed} == {"loading model"}


def test_stop_writes_the_last_state_once() -> None:
    clock, lines = Clock(), []
    display = LineProgress(lines.append, clock=clock)
    display.stage("scoring")
    clock.now += 5
    display.update(state(500))
    display.stop()
    display.stop()
    assert [parse(line).get("tokens") for line in lines] == [None, 500]


def test_lines_of_a_whole_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    from lleval.commands.score import evaluate

    clock, lines = Clock(), []

    class Ticking(Clock):
        def __call__(self) -> float:  # every reading 7 s later: a slow machine
            clock.now += 7
            return clock.now

    display = LineProgress(lines.append, clock=Ticking())
    report = evaluate(EvalConfig(model=str(tiny_model_dir), dataset=write_jsonl(tmp_path / "d.jsonl", TEXTS),
                                 max_length=8, batch_size=1, bootstrap=0), progress=display)
    display.stop()
    parsed = [parse(line) for line in lines]
    stages = list(dict.fromkeys(p["stage"] for p in parsed))
    assert stages == ["loading model", "tokenizing", "scoring", "writing report"]
    last = [p for p in parsed if "tokens" in p][-1]
    assert last["tokens"] == last["planned"] == report.totals.tokens and last["documents"] == 3


@pytest.mark.parametrize("args,config_text,lines_expected", [
    ([], None, True),  # auto: stderr is not a terminal here, as in a CI log
    (["--progress", "lines"], None, True),
    (["--progress", "none"], None, False),
    (["--progress", "lines", "-q"], None, False),  # --quiet still silences
    (["-q"], "progress: lines\n", False),
    ([], "progress: none\n", False),  # a config file takes it too
    (["--progress", "lines"], "progress: none\n", True),  # the flag wins
])
def test_the_cli_writes_lines_where_asked(tiny_model_dir: Path, tmp_path: Path, args: list[str],
                                         config_text: str | None, lines_expected: bool) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    extra = []
    if config_text is not None:
        (tmp_path / "c.yaml").write_text(config_text)
        extra = ["--config", str(tmp_path / "c.yaml")]
    result = CliRunner().invoke(main, ["score", "-m", str(tiny_model_dir), "-d", data, "--max-length", "8",
                                       "--format", "json", *extra, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    progress = [parse(line) for line in result.stderr.splitlines() if line.startswith("lleval ")]
    assert bool(progress) == lines_expected
    if lines_expected:
        assert [p["stage"] for p in progress][:3] == ["loading model", "tokenizing", "scoring"]
        assert progress[-1]["stage"] == "writing report"


@pytest.mark.parametrize("quiet,progress,terminal,mode", [
    (False, "auto", True, "bar"), (False, "auto", False, "lines"), (False, "bar", False, "bar"),
    (False, "lines", True, "lines"), (False, "none", True, "none"), (True, "lines", True, "none"),
    (True, "auto", False, "none"),
])
def test_progress_mode(quiet: bool, progress: str, terminal: bool, mode: str) -> None:
    assert progress_mode(EvalConfig(quiet=quiet, progress=progress), terminal) == mode


def test_a_progress_mode_out_of_its_choices_is_refused() -> None:
    from lleval.errors import ConfigError

    with pytest.raises(ConfigError, match="progress"):
        EvalConfig(progress="sometimes").validate()


def test_kld_and_suites_write_lines_too(tiny_model_dir: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    other = write_jsonl(tmp_path / "e.jsonl", TEXTS[:2])
    kld = CliRunner().invoke(main, ["kld", "--base-dtype", "float32", "--dtype", "bfloat16", "-m",
                                    str(tiny_llama_dir), "-d", data, "-L", "8", "--format", "json"],
                             catch_exceptions=False)
    assert kld.exit_code == 0, kld.output
    stages = [line.split(" ", 2)[2] for line in kld.stderr.splitlines() if line.startswith("lleval ")]
    assert stages[0] == "loading models" and stages[-1] == "writing report"
    suite = CliRunner().invoke(main, ["score", "-m", str(tiny_model_dir), "-d", data, "-d", other, "-L", "8",
                                      "--format", "json"], catch_exceptions=False)
    assert suite.exit_code == 0, suite.output
    cells = [line for line in suite.stderr.splitlines() if line.startswith("lleval ")]
    assert any("cell 1/2" in line and "scoring" in line for line in cells)
    assert any("cell 2/2" in line and "writing report" in line for line in cells)


def test_a_run_that_fails_ends_its_lines_and_says_why(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["score", "-m", str(broken), "-d", data, "--progress", "lines"],
                                catch_exceptions=False)
    assert result.exit_code in (1, 2)
    lines = result.stderr.splitlines()
    assert lines[0].startswith("lleval 0:00 loading model") and lines[-1].startswith("Error: ")
