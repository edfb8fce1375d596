"""Suites: several models x several datasets in one run, each cell scored as ``lleval score``.

`run_suite` takes a `Suite` (built from a suite file, `load_suite_file`, or
from repeated ``-m``/``-d``, `suite_from_flags`) and the run's base
`EvalConfig`; each (model, dataset) cell is that config with the model's and
the dataset's fields replaced, scored by `lleval.commands.score.evaluate`,
the single run's own path, so a cell's numbers are those of a separate run.
What the cells share is done once:

- every dataset is opened (its first document read) before any model loads,
  so a bad path fails in seconds, named by its label;
- models are taken one at a time, model-major: loaded once, every dataset
  scored, then freed;
- each dataset is read and tokenized once per tokenizer and protocol and
  replayed to every other model of that tokenizer (`PlannedUnits`).

A model that fails to load fails its cells (the error is in each cell) and
the run goes on; so does a cell that fails. ``should_stop`` (Ctrl-C) ends the
run after the current batch, with the finished cells and ``complete`` false.
``--html PAGE`` writes one page of the whole suite (`lleval.report.suite_html`):
each cell keeps its ``--html`` samples for it, and no cell writes a page of its own.
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lleval.backends.base import LoadedModel
from lleval.config import FIELD_TYPES, EvalConfig, settings, without_credentials
from lleval.errors import ConfigError, LlevalError, OutputError
from lleval.hub import display_url, is_url
from lleval.report.blocks import now
from lleval.report.score import Report
from lleval.report.suite import MacroAverage, SuiteCell, SuiteModel, SuiteReport, count_of
from lleval.runner.progress import Progress, ScoringProgress
from lleval.runner.replay import PlannedUnits
from lleval.stopping import Interrupted, heeds_should_stop

#: a model's step, from its label, folder name or hub revision: step-1000, step1000,
#: checkpoint-1000, global_step1000 (the last match of the last name that has one)
STEP_PATTERN = re.compile(r"(?:global_step|checkpoint|step)[-_]?(\d+)", re.IGNORECASE)
SUITE_ORIGIN = "suite file"

MODEL_FIELDS = tuple(f.name for f, how in settings() if how.section == "model")
DATA_FIELDS = tuple(f.name for f, how in settings() if how.section == "data")


@dataclass(frozen=True)
class SuiteEntry:
    """A model or a dataset of a suite: its label and the `EvalConfig` fields it sets."""

    label: str
    fields: Mapping[str, Any]
    step: int | None = None  # models only: explicit, or found in the label, folder or revision


@dataclass(frozen=True)
class Suite:
    """Models and datasets, each with a unique label; every pair is a cell."""

    models: tuple[SuiteEntry, ...]
    datasets: tuple[SuiteEntry, ...]
    source: str = "flags"  # the suite file, or "flags"

    def cell_config(self, base: EvalConfig, model: SuiteEntry, dataset: SuiteEntry) -> EvalConfig:
        """The base config with the model's and the dataset's fields, and the cell's own files: its
        checkpoint (`cell_checkpoint`), token file and reference (`cell_file`)."""
        fields: dict[str, Any] = {**model.fields, **dataset.fields}
        origins = {k: v for k, v in base.origins.items() if k not in ("suite", "step", "output")}
        origins.update({name: SUITE_ORIGIN for name in fields})
        if base.checkpoint is not None:
            fields["checkpoint"] = cell_checkpoint(base.checkpoint, model, dataset)
        for name in ("tokens", "save_reference"):
            if getattr(base, name) is not None:
                fields[name] = cell_file(getattr(base, name), model, dataset)
        return dataclasses.replace(base, **fields, output=None, suite=None, step=(), origins=origins)


def cell_checkpoint(prefix: str, model: SuiteEntry, dataset: SuiteEntry) -> str:
    """``--checkpoint PATH`` of a suite is a prefix: each cell's checkpoint is the file
    ``PATH.MODEL__DATASET`` (labels, with characters other than letters, digits, ``._-`` as ``_``)."""
    return f"{prefix}.{cell_name(model, dataset)}"


def cell_name(model: SuiteEntry, dataset: SuiteEntry) -> str:
    """``MODEL__DATASET``, the labels with characters other than letters, digits, ``._-`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model.label}__{dataset.label}")


def cell_file(path: str, model: SuiteEntry, dataset: SuiteEntry) -> str:
    """A suite's ``--tokens`` or ``--save-reference`` file names each cell's: ``dir/NAME.parquet`` gives
    ``dir/NAME.MODEL__DATASET.parquet`` (the extension, which picks the format, kept last)."""
    where = Path(path)
    return str(where.with_name(f"{where.stem}.{cell_name(model, dataset)}{where.suffix}"))


def find_step(*names: str | None) -> int | None:
    """The training step a label, folder or revision names (``checkpoint-1000``: 1000), else None."""
    for name in reversed([n for n in names if n]):
        matches = STEP_PATTERN.findall(Path(name.rstrip("/")).name if "/" in name else name)
        if matches:
            return int(matches[-1])
    return None


def default_label(value: str | None) -> str:
    """A short label for a model or dataset: its last path part without the suffix; a server's
    URL without its scheme, credentials, query and ``/v1`` (``127.0.0.1:8000``)."""
    if value and is_url(value):
        return re.sub(r"/v1/?$", "", display_url(value).split("://", 1)[1].split("?", 1)[0]).rstrip("/")
    name = Path(value.rstrip("/")).name if value else "default"
    return Path(name).stem if Path(name).suffix in (".gguf", ".jsonl", ".json", ".txt", ".csv", ".parquet") else name


def suite_for(config: EvalConfig, models: Sequence[str], datasets: Sequence[str]) -> Suite:
    """The suite a score command names: its ``--suite`` file, else its repeated -m/-d."""
    if config.suite:
        if config.step:
            raise ConfigError(f"{config.flag('step')} numbers the --model flags: a suite file gives each model's "
                              "'step:' itself.")
        return load_suite_file(config.suite)
    bad = [s for s in config.step if not s.isdigit()]
    if bad:
        raise ConfigError(f"{config.flag('step')} {bad[0]!r} is not a whole number of training steps.")
    return suite_from_flags(models, datasets, [int(s) for s in config.step])


def suite_from_flags(models: Sequence[str], datasets: Sequence[str], steps: Sequence[int] = ()) -> Suite:
    """The suite of repeated ``-m``/``-d``: every model with every dataset, labelled by name
    (``--step``, one per model, overrides the steps found in the names)."""
    if steps and not models:
        raise ConfigError("--step numbers the --model flags, and none was given (the built-in model is scored): "
                          "give a --model for each --step, or drop --step.")
    if steps and len(steps) != len(models):
        given = "once" if len(steps) == 1 else f"{len(steps)} times"
        raise ConfigError(f"--step was given {given} for {count_of(len(models), 'model')}: give one per --model.")
    entries = []
    for k, value in enumerate(list(models) or [None]):
        label = default_label(value)
        step = steps[k] if steps else find_step(label, value)
        entries.append(SuiteEntry(label, {"model": value}, step))
    data = [SuiteEntry(default_label(d), {"dataset": d}) for d in (list(datasets) or [None])]  # type: ignore[list-item]
    suite = Suite(tuple(entries), tuple(data))
    check_labels(suite)
    return suite


def check_labels(suite: Suite) -> None:
    """Refuse two models (or two datasets) of one label: cells are named by labels."""
    problems = []
    for kind, entries in (("model", suite.models), ("dataset", suite.datasets)):
        labels = [e.label for e in entries]
        problems += [f"two {kind}s are labelled {label!r}" for label in sorted({x for x in labels
                                                                                if labels.count(x) > 1})]
    if problems:
        how = ("-m and -d cannot label what they name: write a --suite file giving each model and dataset its own "
               "'label:'" if suite.source == "flags" else "give each a 'label:' of its own")
        raise ConfigError(f"suite {suite.source}: " + "; ".join(problems) + f": {how}.")


def load_suite_file(path: str) -> Suite:
    """Read a suite file (YAML): ``models`` and ``datasets``, lists of mappings, each with a
    ``label`` and the settings of that model (``model``, ``revision``, ``dtype``, ``step``...)
    or dataset (``dataset``, ``dataset_config``, ``split``, ``text_field``, ``sample_by``,
    ``limit``...). Every problem is reported at once; an unknown key by name, with a hint."""
    import yaml

    from lleval.errors import read_text_file

    try:
        raw = yaml.safe_load(read_text_file(Path(path), "suite file", ConfigError))
    except yaml.YAMLError:
        raise ConfigError(f"suite file {path} is not valid YAML: fix its syntax.") from None
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(f"suite file {path} must be a mapping with 'models' and 'datasets' lists.")
    problems += [_unknown(k, ("models", "datasets"), "top level") for k in raw if k not in ("models", "datasets")]
    models = _entries(raw.get("models"), "models", MODEL_FIELDS, "model", problems)
    datasets = _entries(raw.get("datasets"), "datasets", DATA_FIELDS, "dataset", problems)
    if problems:
        raise ConfigError(f"suite file {path}: " + "; ".join(problems) + ".")
    suite = Suite(tuple(models), tuple(datasets), path)
    check_labels(suite)
    return suite


def _unknown(key: Any, allowed: Sequence[str], where: str) -> str:
    close = difflib.get_close_matches(str(key).replace("-", "_"), allowed, n=1)
    return f"unknown key {key!r} in {where}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _entries(raw: Any, kind: str, allowed: Sequence[str], main: str, problems: list[str]) -> list[SuiteEntry]:
    """The entries of ``models`` or ``datasets``, each key checked against ``allowed``."""
    if not isinstance(raw, list) or not raw:
        problems.append(f"'{kind}' must be a non-empty list")
        return []
    entries = []
    for k, item in enumerate(raw):
        where = f"{kind}[{k}]"
        if isinstance(item, str):
            item = {main: item}
        if not isinstance(item, dict):
            problems.append(f"{where} must be a mapping or a string")
            continue
        fields: dict[str, Any] = {}
        for key, value in item.items():
            name = str(key).replace("-", "_")
            if name in ("label", "step", "path"):
                continue
            if name not in allowed:
                problems.append(_unknown(key, [*allowed, "label", "path"] + (["step"] if kind == "models" else []),
                                         where))
            elif value is not None and not isinstance(value, FIELD_TYPES[name]):
                problems.append(f"{where}: {key!r} must be {' or '.join(t.__name__ for t in FIELD_TYPES[name])}")
            else:
                fields[name] = value
        if "path" in item:
            fields[main] = item["path"]
        step = item.get("step")
        if step is not None and (kind != "models" or not isinstance(step, int) or step < 0):
            problems.append(f"{where}: 'step' must be a whole number >= 0, on a model")
        label = str(item.get("label") or default_label(fields.get(main)))
        found = step if isinstance(step, int) else find_step(label, fields.get(main), fields.get("revision"))
        entries.append(SuiteEntry(label, fields, found if kind == "models" else None))
    return entries


@dataclass
class _CellProgress:
    """The run's progress display with the cell named in each stage ("cell 2/9: a × wiki")."""

    display: Progress | None
    name: str = ""

    def stage(self, text: str) -> None:
        if self.display is not None:
            self.display.stage(f"{self.name}: {text}")

    def update(self, state: ScoringProgress) -> None:
        if self.display is not None:
            self.display.update(state)


@dataclass
class SuiteRun:
    """What a suite run did so far: its cells, and how often it loaded models."""

    cells: list[SuiteCell] = field(default_factory=list)
    loads: int = 0
    complete: bool = True


@heeds_should_stop
def run_suite(
    suite: Suite,
    base: EvalConfig,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    load: Callable[[EvalConfig], LoadedModel] | None = None,
) -> SuiteReport:
    """Score every (model, dataset) cell of ``suite`` on the ``base`` config, model-major, and
    return the `SuiteReport`. ``load`` loads a cell's model (`lleval.commands.score.load`;
    tests pass a spy)."""
    from lleval.commands.score import load as load_model

    check_suite(suite, base)
    open_datasets(suite, base)
    plans, run, shown = PlannedUnits(), SuiteRun(), _CellProgress(progress)
    stop = should_stop or (lambda: False)
    total = len(suite.models) * len(suite.datasets)
    for model in suite.models:
        if not run.complete:
            break
        shown.name = f"cell {len(run.cells) + 1}/{total}: {model.label}"
        shown.stage("loading model")
        try:
            loaded = (load or load_model)(suite.cell_config(base, model, suite.datasets[0]))
        except Interrupted:  # stopped while a served model was probed: the finished cells stand
            run.complete = False
            break
        except LlevalError as exc:
            run.cells += [SuiteCell(model.label, d.label, None, f"model did not load: {exc}", exc.exit_code)
                          for d in suite.datasets]
            continue
        run.loads += 1
        _score_model(suite, base, model, loaded, run, plans, shown, stop, total)
        del loaded
        gc.collect()
    report = suite_report(suite, base, run, plans)
    if base.html:
        report.failed_outputs = write_page(report, base.html)
    return report


def write_page(report: SuiteReport, path: str) -> list[OutputError]:
    """Write the suite's HTML page; a page that cannot be written is returned, not raised
    (the run is finished, and ``-o`` must still be written). Under torchrun rank 0 alone
    writes it, as it alone writes a single run's files (and alone keeps the samples)."""
    from lleval.engine.distributed import launched_as_main
    from lleval.report.suite_html import write_suite_html

    if not launched_as_main():
        return []
    try:
        write_suite_html(report, path)
    except OutputError as exc:
        return [exc]
    return []


def _score_model(suite: Suite, base: EvalConfig, model: SuiteEntry, loaded: LoadedModel, run: SuiteRun,
                 plans: PlannedUnits, shown: _CellProgress, stop: Callable[[], bool], total: int) -> None:
    """Every dataset of the suite with one loaded model; a stop ends the run after its cell."""
    from lleval.commands.score import evaluate

    for dataset in suite.datasets:
        shown.name = f"cell {len(run.cells) + 1}/{total}: {model.label} × {dataset.label}"
        try:
            report = evaluate(suite.cell_config(base, model, dataset), loaded=loaded, progress=shown,
                              should_stop=stop, plans=plans, write_page=False)
        except Interrupted:
            run.complete = False
            return
        except LlevalError as exc:
            run.cells.append(SuiteCell(model.label, dataset.label, None, str(exc), exc.exit_code))
            continue
        run.cells.append(SuiteCell(model.label, dataset.label, report))
        if not report.complete or stop():
            run.complete = False
            return


def check_suite(suite: Suite, base: EvalConfig, extra_inputs: Sequence[tuple[str, str]] = ()) -> None:
    """Everything a suite is refused for before any dataset opens or model loads: the base
    config's flags, two cells whose labels give their files one name (`check_cell_names`),
    an output that cannot be written or that names another output or anything a cell reads
    (every model and dataset, the suite file, ``extra_inputs`` such as the ``--config`` file:
    `lleval.preflight.check_distinct`), and each dataset's flags, named by its label.
    ``--tokens`` and ``--save-reference`` write one file per cell (`cell_file`), ``--checkpoint``
    one checkpoint per cell (`cell_checkpoint`); ``--html`` is one page of the suite."""
    from lleval.data.spec import check_spec, data_spec
    from lleval.preflight import check_distinct, check_finished_files, check_writable, run_inputs

    base.validate()
    check_cell_names(suite, base)
    cells = [suite.cell_config(base, m, d) for m in suite.models for d in suite.datasets]
    report = [(base.flag("output"), base.output)] if base.output else []
    outputs = list(dict.fromkeys(report + [out for cell in cells for out in cell.outputs()]))
    for flag, path in outputs:
        check_writable(path, flag)
    inputs = [(base.flag("suite"), base.suite)] if base.suite else []
    inputs += [found for cell in cells for found in run_inputs(cell)]
    check_distinct(outputs, list(dict.fromkeys(inputs)) + list(extra_inputs))
    for cell in cells:
        check_finished_files(cell)
    for dataset, cell in zip(suite.datasets, cells):
        try:
            check_spec(data_spec(cell))
        except LlevalError as exc:
            raise type(exc)(f"dataset {dataset.label!r} of the suite: {exc}") from None


def check_cell_names(suite: Suite, base: EvalConfig) -> None:
    """Refuse (`ConfigError`) two cells whose files would have one name: a cell's files are named
    by its labels with characters other than letters, digits and ``._-`` as ``_`` (`cell_name`),
    so models ``m 1`` and ``m_1`` would write one token file over the other. Names that differ
    only in case count as one (a case-insensitive disk, as on macOS, holds one of them).
    Checked only where the suite writes a file per cell (``--checkpoint``, ``--tokens``,
    ``--save-reference``)."""
    if not (base.checkpoint or base.tokens or base.save_reference):
        return
    seen: dict[str, tuple[SuiteEntry, SuiteEntry]] = {}
    for model in suite.models:
        for dataset in suite.datasets:
            name = cell_name(model, dataset)
            first = seen.setdefault(name.casefold(), (model, dataset))
            if first[0] is not model or first[1] is not dataset:
                raise ConfigError(
                    f"suite {suite.source}: cells {first[0].label!r} x {first[1].label!r} and {model.label!r} x "
                    f"{dataset.label!r} would write their files under one name ({name}: file names keep letters, "
                    "digits and ._- of the labels, and one case): give them labels that differ there.")


def open_datasets(suite: Suite, base: EvalConfig) -> None:
    """Open every dataset (its first document read) before any model loads: a dataset that
    fails is named by its label, and no model was loaded for nothing."""
    from lleval.runner.prepare import open_inputs

    for dataset in suite.datasets:
        try:
            open_inputs(suite.cell_config(base, suite.models[0], dataset))
        except LlevalError as exc:
            raise type(exc)(f"dataset {dataset.label!r} of the suite: {exc}") from None


def suite_report(suite: Suite, base: EvalConfig, run: SuiteRun, plans: PlannedUnits) -> SuiteReport:
    """The `SuiteReport` of a run: its cells, each model's macro average, what it did once."""
    models = [SuiteModel(m.label, without_credentials(m.fields.get("model")), m.fields.get("revision"), m.step)
              for m in suite.models]
    finished = [c for c in run.cells if c.report is not None]
    complete = run.complete and len(finished) == len(suite.models) * len(suite.datasets)
    return SuiteReport(
        models, [d.label for d in suite.datasets], run.cells, [macro_average(m.label, run.cells, base)
                                                                 for m in suite.models],
        complete, {"model_loads": run.loads, "tokenizations": plans.tokenizations, "replays": plans.replays},
        {"resamples": base.bootstrap, "seed": base.seed, "level": 0.95, "unit": "document within each dataset"},
        suite_notes(suite, run, base.checkpoint), now())


def macro_average(model: str, cells: Sequence[SuiteCell], base: EvalConfig) -> MacroAverage:
    """A model's mean bits per byte over the datasets of its finished cells, with the
    bootstrap interval (`lleval.metrics.macro_bits_per_byte`)."""
    import numpy as np

    from lleval.metrics import macro_bits_per_byte

    reports = [c.report for c in cells if c.model == model and c.report is not None]
    if not reports or not all(r.protocol.has_per_byte_metrics for r in reports):
        return MacroAverage(model, None, None, len(reports))
    arrays = [(np.array([-d.log_likelihood for d in r.documents]), np.array([d.bytes for d in r.documents],
                                                                           dtype=np.float64)) for r in reports]
    value, interval = macro_bits_per_byte(arrays, base.bootstrap, base.seed)
    return MacroAverage(model, value, interval, len(reports))


def suite_notes(suite: Suite, run: SuiteRun, checkpoint: str | None = None) -> list[str]:
    """What a reader of the matrix must know: failed cells, a stop (and how to resume it:
    ``checkpoint`` is the run's --checkpoint prefix), tokenizers that differ."""
    notes = []
    failed = [c for c in run.cells if c.error is not None]
    if failed:
        notes.append(f"{len(failed)} cells failed: " + "; ".join(f"{c.model} x {c.dataset}: {c.error}"
                                                                  for c in failed[:3]))
    if not run.complete:
        scored = sum(c.report is not None for c in run.cells)
        notes.append(f"stopped early: {scored} cells scored; " + (
            f"rerun the same command to resume from the cells' checkpoints ({checkpoint}.MODEL__DATASET)."
            if checkpoint else "nothing was saved to resume from: rerun with --checkpoint PREFIX (one checkpoint "
            "per cell, PREFIX.MODEL__DATASET) to be able to resume a stopped run."))
    fingerprints = {c.report.tokenizer.fingerprint for c in run.cells if c.report is not None}
    if len(fingerprints) > 1:
        notes.append("the models have different tokenizers: token perplexity is not comparable across them; "
                     "compare bits per byte (and the macro average).")
    return notes


def cell_reports(report: SuiteReport) -> dict[tuple[str, str], Report]:
    """Each finished cell's score report by (model label, dataset label)."""
    return {(c.model, c.dataset): c.report for c in report.cells if c.report is not None}
