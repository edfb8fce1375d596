"""The click options of ``score`` and ``kld``, derived from `EvalConfig`'s fields.

Each field declares its flag once, in its `lleval.config.Setting`; `config_options`
turns those into click options (the same names, defaults and help on both commands),
and `config_from_flags` turns what click parsed back into an `EvalConfig` that knows
where each value came from: typed (``flag``), the ``--config`` file, or the default.
Each option knows its section (`SectionOption`), and ``--help`` shows the options under
their section's heading (`SectionedCommand`, `option_groups`).
Imports click and `lleval.config` only, so ``lleval --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import click
from click.core import ParameterSource

from lleval.config import CONFIG_FILE, FIELD_TYPES, FLAG, SECTION_TITLES, EvalConfig, Setting, settings

CONFIG_FILE_KEY = "lleval.config_file"  # ctx.meta: the --config file's path
UNDONE_KEY = "lleval.undone"  # ctx.meta: the fields a --no-x set back to their default (--no-concat)
OTHER_OPTIONS = "Options"  # the heading of the options of no section (--help, and every option of compare, inspect)
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}  # every command's


class SectionOption(click.Option):
    """A click option that knows its section (a key of `SECTION_TITLES`), under whose heading
    ``--help`` shows it: ``click.option(..., cls=SectionOption, section="base")``."""

    def __init__(self, *args: Any, section: str | None = None, **kwargs: Any) -> None:
        if section is not None and section not in SECTION_TITLES:
            raise ValueError(f"no section {section!r}: pick one of {', '.join(SECTION_TITLES)}")
        super().__init__(*args, **kwargs)
        self.section = section


def option_groups(command: click.Command, ctx: click.Context) -> list[tuple[str, list[click.Parameter]]]:
    """The command's options under their ``--help`` headings: one group per section that has
    options, in `SECTION_TITLES` order, then the options of no section (``--help`` last) under
    `OTHER_OPTIONS`; each group in the order the options are declared. Arguments are left out."""
    options: list[click.Parameter] = [p for p in command.get_params(ctx) if isinstance(p, click.Option)]
    groups = [(title, [p for p in options if getattr(p, "section", None) == key])
              for key, title in SECTION_TITLES.items()]
    groups.append((OTHER_OPTIONS, [p for p in options if getattr(p, "section", None) is None]))
    return [(title, params) for title, params in groups if params]


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options under their section's heading (`option_groups`)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for title, params in option_groups(self, ctx):
            rows = [record for p in params if (record := p.get_help_record(ctx)) is not None]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class SectionedGroup(click.Group):
    """The ``lleval`` group: each of its commands is a `SectionedCommand`."""

    command_class = SectionedCommand


class BatchSize(click.ParamType):
    """A positive number of windows, or ``auto``."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return "auto"
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number of windows nor 'auto'.", param, ctx)
        if number < 1:
            self.fail(f"{number} is not at least 1.", param, ctx)
        return number


class WholeNumber(click.ParamType):
    """A whole number whose allowed values the flag's help states, as its refusal does
    (``--limit``: 1 or more; ``--bootstrap``: 0, or 100 and more). click's ranges would show
    ``[x>=0]`` where the library refuses 0 (or 1-99) with a message that says why; the
    library's checks (`EvalConfig.validate`, `lleval.config.resamples_problem`) decide."""

    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a whole number.", param, ctx)
        if number < 0:
            self.fail(f"{number} is below 0.", param, ctx)
        return number


class Resamples(WholeNumber):
    """Bootstrap resamples: 0 (none), or `lleval.config.MIN_RESAMPLES` and more."""


# Flags whose values no click type of `Setting` describes.
CUSTOM_TYPES: dict[str, click.ParamType] = {"batch_size": BatchSize(), "limit": WholeNumber(),
                                            "bootstrap": Resamples()}


def load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager ``--config`` callback: the YAML file becomes click's ``default_map``."""
    if value is None:
        return None
    from lleval.config import load_config_file
    from lleval.errors import ConfigError

    try:
        values = load_config_file(value, own_keys(ctx.command))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    repeated = {p.name for p in ctx.command.params if getattr(p, "multiple", False)}
    values = {k: [v] if k in repeated and isinstance(v, str) else v for k, v in values.items()}
    ctx.default_map = {**(ctx.default_map or {}), **values}
    ctx.meta[CONFIG_FILE_KEY] = value
    return value


def own_keys(command: click.Command) -> dict[str, str]:
    """The config-file keys of a command's own options, those no `EvalConfig` field declares
    (kld's ``base``, ``base_dtype``), each with its parameter's name (``base_model``)."""
    return {opt[2:].replace("-", "_"): p.name for p in command.params
            if p.name and p.name not in FIELD_TYPES and p.expose_value
            for opt in p.opts if opt.startswith("--")}


def _undo(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--no-x`` of a flag with an optional value: remembered, applied by `config_from_flags`."""
    if value and param.name:
        ctx.meta.setdefault(UNDONE_KEY, set()).add(param.name.removeprefix("no_"))


def _click_type(name: str, how: Setting, types: tuple[type, ...]) -> Any:
    """The click type of a flag: its choices, its range, a path, an int, or text."""
    if name in CUSTOM_TYPES:
        return CUSTOM_TYPES[name]
    if how.choices is not None:
        return click.Choice(how.choices)
    if how.minimum is not None:
        return click.FloatRange(min=how.minimum) if float in types else click.IntRange(min=int(how.minimum))
    if how.path:
        return click.Path(dir_okay=False)
    return int if types == (int,) else None


#: fields a command takes several times although the config holds one: score's -m and -d
#: (more than one of either makes the run a suite, `lleval.commands.suite`)
REPEATABLE = {"score": ("model", "dataset")}


def field_options(field: dataclasses.Field[Any], how: Setting, repeatable: bool = False,
                  sectioned: bool = True) -> list[Callable[[Any], Any]]:
    """The click option(s) of one field: ``--x/--no-x`` for a boolean, ``--x VALUE`` else, and
    ``--no-x`` beside a flag with an optional value; ``repeatable``: ``--x`` may be given
    several times (the command gets a tuple); ``sectioned`` false: under no section heading."""
    section = how.section if sectioned else None
    flag = "--" + field.name.replace("_", "-")
    short = [how.short] if how.short else []
    shown: dict[str, Any] = {"show_default": True} if field.default not in (None, ()) else {}
    if isinstance(field.default, bool):
        return [click.option(f"{flag}/--no-{flag[2:]}", *short, default=field.default, help=how.help, **shown,
                             cls=SectionOption, section=section)]
    types = (str,) if how.multiple else FIELD_TYPES[field.name]
    kwargs: dict[str, Any] = {"type": _click_type(field.name, how, types), "metavar": how.metavar,
                              "multiple": how.multiple or repeatable, "cls": SectionOption, "section": section}
    if repeatable:
        kwargs["default"] = ()
    if how.flag_value is not None:
        kwargs.update(is_flag=False, flag_value=how.flag_value)
    kwargs.setdefault("default", field.default)
    options = [click.option(flag, *short, help=how.help, **shown, **kwargs)]
    if how.flag_value is not None:
        options.append(click.option(f"--no-{flag[2:]}", is_flag=True, default=False, expose_value=False,
                                    callback=_undo, help=f"Turn {flag} off (a config file's {field.name} too).",
                                    cls=SectionOption, section=section))
    return options


def config_options(command: str) -> Callable[[Any], Any]:
    """Decorate a command with ``--config`` and the flag of every `EvalConfig` field it takes,
    in the order the fields are declared."""
    options: list[Callable[[Any], Any]] = [click.option(
        "--config", type=click.Path(dir_okay=False), callback=load_config, is_eager=True, expose_value=False,
        help="YAML file of defaults for any flag of this command (keys: flag names, each once); flags win.",
        cls=SectionOption, section="run")]
    return _decorator(options + _setting_options(command))


def setting_options(command: str) -> Callable[[Any], Any]:
    """Decorate a command that builds no `EvalConfig` (compare) with the flags of the fields
    that name it in their `Setting`'s ``commands`` (--log-to, --log-dir), without ``--config``; its
    ``--help`` keeps one list of options (no section headings)."""
    return _decorator(_setting_options(command, sectioned=False))


def _setting_options(command: str, sectioned: bool = True) -> list[Callable[[Any], Any]]:
    options: list[Callable[[Any], Any]] = []
    for field, how in settings():
        if command in how.commands:
            options += field_options(field, how, field.name in REPEATABLE.get(command, ()), sectioned)
    return options


def _decorator(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decorate(func: Any) -> Any:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def origin_of(ctx: click.Context, param: str) -> str | None:
    """Where a parameter's value came from: ``flag`` (typed), ``config file PATH`` (the
    ``--config`` file), or None (its default)."""
    source = ctx.get_parameter_source(param)
    if source is ParameterSource.COMMANDLINE:
        return FLAG
    path = ctx.meta.get(CONFIG_FILE_KEY)
    if source is ParameterSource.DEFAULT_MAP and path is not None:
        return f"{CONFIG_FILE}{path}"
    return None


def config_from_flags(fields: dict[str, Any], typed: Iterable[str] = ()) -> EvalConfig:
    """The command's `EvalConfig`, with the origin of each value: ``flag`` for one typed on the
    command line (and for ``typed``, set from a command's argument), ``config file PATH`` for
    one click took from the ``--config`` file (``DEFAULT_MAP``); a default has none."""
    ctx = click.get_current_context()
    origins = {name: origin for name in fields if (origin := origin_of(ctx, name)) is not None}
    origins.update((name, FLAG) for name in typed)
    defaults = {f.name: f.default for f, _how in settings()}
    for name in sorted(ctx.meta.get(UNDONE_KEY, ())):
        if origins.get(name) == FLAG:
            flag = name.replace("_", "-")
            raise click.UsageError(f"--{flag} and --no-{flag} both given: pick one.")
        fields = {**fields, name: defaults[name]}
        origins[name] = FLAG
    return EvalConfig(**fields, origins=origins)
