"""The documentation cannot drift from the code: ``--help`` shows each option under its
section's heading, and the generated reference in ``docs/reference/`` is what
``scripts/make_docs.py`` writes from the code today (the examples run in test_examples.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import click
import pytest

from lleval.cli import main
from lleval.config import SECTION_TITLES, SECTIONS, EvalConfig, settings
from lleval.options import OTHER_OPTIONS, SectionedCommand, SectionOption, option_groups

#: the headings of --help, in the order a user decides (issue 33): what to score, how, what to
#: compute, what to write, how fast, how the run behaves; then --help itself
SCORE_HEADINGS = ["Model", "Data", "Suite", "Protocol", "Statistics", "Outputs", "Engine", "Run control", "Options"]
KLD_HEADINGS = ["Model", "Base (kld)", "Data", "Protocol", "Statistics", "Outputs", "Engine", "Run control", "Options"]


def _groups(command: str) -> dict[str, list[str]]:
    """``{heading: [the options' long flags]}`` of a command's --help, in order."""
    cmd = main.commands[command]
    ctx = click.Context(cmd, info_name=command)
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
    ctx = click.Context(cmd, info_name=command)
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
    from lleval.backends.hf import ModelSpec
    from lleval.data.spec import DataSpec

    config = EvalConfig()
    assert set(config.section("model")) == {f.name for f in dataclasses.fields(ModelSpec)}
    assert set(config.section("data")) == {f.name for f in dataclasses.fields(DataSpec)} - {"origins"}
    assert SECTIONS == tuple(SECTION_TITLES) and {how.section for _, how in settings()} <= set(SECTIONS)


def test_an_option_of_an_unknown_section_is_refused() -> None:
    with pytest.raises(ValueError, match="no section 'statistic'"):
        SectionOption(["--x"], section="statistic")
