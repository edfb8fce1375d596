"""The documentation cannot drift from the code: ``--help`` shows each option under its
section's heading, and the generated reference in ``docs/reference/`` is what
``scripts/make_docs.py`` writes from the code today (the examples run in test_examples.py)."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from lleval.cli import main
from lleval.config import SECTION_TITLES, SECTIONS, EvalConfig, settings
from lleval.cli.options import OTHER_OPTIONS, SectionedCommand, SectionOption, option_groups

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
#: the headings of --help, in the order a user decides (issue 33): what to score, how, what to
#: compute, what to write, how fast, how the run behaves; then --help itself
SCORE_HEADINGS = ["Model", "Data", "Suite", "Protocol", "Statistics", "Outputs", "Engine", "Run control", "Options"]
KLD_HEADINGS = ["Model", "Base (kld)", "Data", "Protocol", "Statistics", "Outputs", "Engine", "Run control", "Options"]


def _groups(command: str) -> dict[str, list[str]]:
    """``{heading: [the options' long flags]}`` of a command's --help, in order."""
    cmd = main.commands[command]
    ctx = click.Context(cmd, info_name=command, **cmd.context_settings)
    return {title: [max(p.opts, key=len) for p in params] for title, params in option_groups(cmd, ctx)}


class _Recorder(click.HelpFormatter):
    """A help formatter that records the headings and the rows written under each."""

    def __init__(self) -> None:
        super().__init__(width=100)
        self.sections: list[tuple[str, list[str]]] = []

    def write_heading(self, heading: str) -> None:
        self.sections.append((heading, []))

    def write_dl(self, rows: Any, col_max: int = 30, col_spacing: int = 2) -> None:
        self.sections[-1][1].extend(first for first, _ in rows)


@pytest.mark.parametrize("command,headings", [("score", SCORE_HEADINGS), ("kld", KLD_HEADINGS)])
def test_help_shows_the_options_under_their_sections_in_order(command: str, headings: list[str]) -> None:
    cmd = main.commands[command]
    assert isinstance(cmd, SectionedCommand)
    ctx = click.Context(cmd, info_name=command, **cmd.context_settings)
    recorder = _Recorder()
    cmd.format_options(ctx, recorder)
    assert [title for title, _ in recorder.sections] == headings
    groups = option_groups(cmd, ctx)
    assert [title for title, _ in groups] == headings
    # what --help writes under each heading is that group's options, each once
    for (title, rows), (_, params) in zip(recorder.sections, groups):
        assert len(rows) == len(params) and all(any(o in row for o in p.opts) for row, p in zip(rows, params)), title
    options = [p for p in cmd.get_params(ctx) if isinstance(p, click.Option)]
    assert sorted(id(p) for _, params in groups for p in params) == sorted(id(p) for p in options)


def test_every_setting_is_under_its_sections_heading() -> None:
    for command in ("score", "kld"):
        groups = _groups(command)
        for f, how in settings():
            if command in how.commands:
                flag = "--" + f.name.replace("_", "-")
                assert flag in groups[SECTION_TITLES[how.section]], (command, flag, how.section)


@pytest.mark.parametrize("flag,heading", [
    ("--checkpoint", "Run control"), ("--checkpoint-every", "Run control"), ("--quiet", "Run control"),
    ("--allow-nonfinite", "Run control"), ("--config", "Run control"), ("--membership", "Statistics"),
    ("--min-k", "Statistics"), ("--calibration", "Statistics"), ("--token-stats", "Statistics"),
    ("--bootstrap", "Statistics"), ("--seed", "Statistics"), ("--tokens", "Outputs"), ("--html", "Outputs"),
    ("--batch-size", "Engine"), ("--no-concat", "Protocol"), ("--suite", "Suite"), ("--help", OTHER_OPTIONS),
])
def test_flags_a_user_looks_for_are_where_they_look(flag: str, heading: str) -> None:
    assert flag in _groups("score")[heading]


def test_kld_shows_its_base_beside_the_model() -> None:
    assert _groups("kld")["Base (kld)"] == ["--base", "--base-dtype", "--reference"]


def test_compare_and_inspect_keep_one_list_of_options() -> None:
    """Their options declare no section (none is a setting of a run): one "Options" list, as before."""
    for command in ("compare", "inspect"):
        assert list(_groups(command)) == [OTHER_OPTIONS]


def test_the_sections_of_the_specs_are_unchanged_by_the_headings() -> None:
    """Moving flags between headings must not move them between the model's and the data's
    specs: those sections are what ModelSpec and DataSpec are built from."""
    from lleval.backends.base import ModelSpec
    from lleval.data.spec import DataSpec

    config = EvalConfig()
    assert set(config.section("model")) == {f.name for f in dataclasses.fields(ModelSpec)}
    # --seed is listed under Statistics (it seeds the bootstrap) and also draws --sample's rows
    assert set(config.section("data")) == {f.name for f in dataclasses.fields(DataSpec)} - {"origins", "seed"}
    assert SECTIONS == tuple(SECTION_TITLES) and {how.section for _, how in settings()} <= set(SECTIONS)


def test_an_option_of_an_unknown_section_is_refused() -> None:
    with pytest.raises(ValueError, match="no section 'statistic'"):
        SectionOption(["--x"], section="statistic")


# ---- the generated reference ---------------------------------------------------------------------

def _make_docs() -> Any:
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_docs

    return make_docs


def test_the_generated_reference_is_up_to_date(tmp_path: Path) -> None:
    """Regenerated into a folder of its own, every file equals the committed one, byte for
    byte, and the committed folder holds nothing the script no longer writes."""
    make_docs = _make_docs()
    assert make_docs.main_(["--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["cli.md", "config.md", "report.md"]
    committed = sorted(p.name for p in REFERENCE.iterdir())
    assert committed == written, "docs/reference/ holds other files: run python scripts/make_docs.py"
    for name in written:
        assert (REFERENCE / name).read_bytes() == (tmp_path / name).read_bytes(), \
            f"docs/reference/{name} is out of date: run python scripts/make_docs.py"


@pytest.mark.subprocess
def test_the_script_in_a_fresh_process_agrees_with_the_committed_files() -> None:
    """What a developer runs: nothing imported before it (click builds a command's help option
    once, from the first context that asks; a test run asks in another order)."""
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "40"})
    assert done.returncode == 0, done.stderr


def test_check_names_a_stale_file_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_docs = _make_docs()
    make_docs.main_(["--out", str(tmp_path)])
    assert make_docs.main_(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "config.md").write_text("# hand-edited\n")
    (tmp_path / "report.md").unlink()
    assert make_docs.main_(["--check", "--out", str(tmp_path)]) == 1
    assert "config.md is out of date" in capsys.readouterr().err
    assert (tmp_path / "config.md").read_text() == "# hand-edited\n" and not (tmp_path / "report.md").exists()


def test_the_reference_depends_on_the_code_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not on the terminal's width or the environment click reads."""
    make_docs = _make_docs()
    monkeypatch.setenv("COLUMNS", "300")
    wide = make_docs.documents()
    monkeypatch.setenv("COLUMNS", "20")
    monkeypatch.setenv("LLEVAL_MODEL_CACHE", "/elsewhere")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-in-the-docs")
    assert make_docs.documents() == wide
    assert "sk-not-in-the-docs" not in "".join(wide.values())


def test_every_flag_and_argument_of_every_command_is_in_the_cli_reference() -> None:
    make_docs = _make_docs()
    text = make_docs.documents()["cli.md"]
    for name, command in main.commands.items():
        section = text.split(f"## `lleval {name}`", 1)[1].split("\n## ", 1)[0]
        ctx = _make_docs().context(command, name)
        for param in command.get_params(ctx):
            shown = make_docs.param_flags(param) if isinstance(param, click.Option) else f"`{param.make_metavar(ctx)}`"
            assert f"| {shown} |" in section, (name, param.name)


def test_every_key_and_every_report_field_is_in_the_reference() -> None:
    """Every setting is a config-file key; every property of every shipped schema is a row."""
    import json

    make_docs = _make_docs()
    docs = make_docs.documents()
    for f, _how in settings():
        assert f"| `{f.name}` |" in docs["config.md"], f.name
    assert "| `base` |" in docs["config.md"] and "| `base_dtype` |" in docs["config.md"]  # kld's own keys
    for path in sorted((ROOT / "src" / "lleval" / "schemas").glob("*.schema.json")):
        schema = json.loads(path.read_text())
        section = docs["report.md"].split(f"## {path.name}", 1)[1].split("\n## ", 1)[0]
        for name in schema["properties"]:
            assert f"| `{name}` |" in section, (path.name, name)


# ---- the README and the pages ---------------------------------------------------------------------

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _set_up_lines(text: str) -> set[int]:
    """The line numbers of the README's set-up commands (between their markers): .ci/run reads the
    test command from there, so they stay as they are, whatever their length."""
    lines, inside, found = text.split("\n"), False, set()
    for k, line in enumerate(lines):
        if line.strip() in ("<!-- run-command -->", "<!-- test-command -->"):
            inside = True
        elif line.strip() in ("<!-- /run-command -->", "<!-- /test-command -->"):
            inside = False
        elif inside:
            found.add(k)
    return found


def test_the_readme_is_read_in_five_minutes() -> None:
    """At most 150 lines, none over 200 characters but the set-up commands (issue 33), both
    set-up blocks with their markers, a screenshot, and a map of docs/ that names every page."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.split("\n")
    assert len(lines) <= 150, len(lines)
    kept = _set_up_lines(text)
    assert len(kept) == 6  # two blocks of a fence, a command and a fence
    long = [k + 1 for k, line in enumerate(lines) if len(line) > 200 and k not in kept]
    assert not long, long
    commands = [lines[k] for k in sorted(kept) if not lines[k].startswith("```")]
    assert commands[0].endswith("lleval score") and "python -m pytest" in commands[1], commands
    assert "](docs/report.png)" in text
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert pages and all(f"]({page})" in text for page in pages), pages - {p for p in pages if f"]({p})" in text}


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces as -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    fence = False
    for line in page.read_text(encoding="utf-8").split("\n"):
        fence ^= line.strip().startswith("```")
        if not fence and (m := re.match(r"^#+ (.*)$", line)):
            slug = _slug(m.group(1))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            broken.append(target)
    assert not broken, broken


def test_how_it_works_names_every_module_in_its_folders_row() -> None:
    """The architecture table once left out five modules; now a module it does not name fails."""
    rows = {}
    for line in (ROOT / "docs" / "how-it-works.md").read_text(encoding="utf-8").split("\n"):
        if (m := re.match(r"^\| [\d-]+ \| (`\w+/`|top level) \|(.*)$", line)):
            rows[m.group(1).strip("`")] = m.group(2)
    src = ROOT / "src" / "lleval"
    missing = [f"{folder.name}/{p.name}" for folder in src.iterdir() if folder.is_dir() and (folder / "__init__.py").exists()
               for p in sorted(folder.glob("*.py")) if p.name != "__init__.py" and f"`{p.name}`" not in rows.get(f"{folder.name}/", "")]
    top = rows.get("top level", "")
    missing += [p.name for p in sorted(src.glob("*.py")) if f"`{p.name}`" not in top]
    assert rows and not missing, missing


def test_how_it_works_names_every_module_of_a_package_inside_a_folder() -> None:
    """The check above reads a folder's own modules only: a package inside a stage folder
    (``backends/hf/``) is named in its folder's row as ``hf/``, and each of its modules after it."""
    rows = {}
    for line in (ROOT / "docs" / "how-it-works.md").read_text(encoding="utf-8").split("\n"):
        if (m := re.match(r"^\| [\d-]+ \| `(\w+)/` \|(.*)$", line)):
            rows[m.group(1)] = m.group(2)
    packages = [init.parent for init in sorted((ROOT / "src" / "lleval").glob("*/*/__init__.py"))]
    assert packages  # backends/hf/ at least
    missing = []
    for package in packages:
        _, found, after = rows.get(package.parent.name, "").partition(f"`{package.name}/`")
        missing += [f"{package.parent.name}/{package.name}/{p.name}" for p in sorted(package.glob("*.py"))
                    if p.name != "__init__.py" and (not found or f"`{p.name}`" not in after)]
    assert not missing, missing
