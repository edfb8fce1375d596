"""`lleval.Evaluator`: held-out evaluation inside a training loop, with the CLI's numbers.

Built once from the model a loop trains (`lleval.backends.live`), its tokenizer and the
held-out data, an evaluator reads and tokenizes the data then (``tokenizations`` counts
it), and each call, ``evaluator(step=N)``, scores the model as it is now through the
path ``lleval score`` runs (`lleval.commands.score.score_job`: the same units, batches,
reducers and report), so a call's numbers are those of ``lleval score`` on the same
weights saved to a folder. Several datasets give a suite report, one model at ``step``.

What a call leaves as it found it: every module's training flag, ``requires_grad`` and
``.grad`` of every parameter (it runs under ``torch.no_grad``, never in inference mode, and
reads no gradient), and the random state of Python, numpy and torch (CPU and every CUDA
device). It allocates no optimizer state. Under torchrun it uses the training's process
group: each rank scores its share of the batches and every rank gets the totals (FSDP:
every rank scores every batch, its forward gathering the sharded weights); rank 0 alone
writes files and logs to trackers.

Gradients, precisely: the ``.grad`` of an accumulation in progress is kept (nothing here
touches it, and the next backward adds to it as it would have), and so is the graph of a
loss whose backward is still to come (scoring changes no weight in place). What a call
refuses is to run inside a backward pass (from an autograd hook), where the gradients of
the step are half written and a forward pass of the model would run among them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from lleval.backends.live import LiveModel, open_live
from lleval.commands.suite import (MODEL_FIELDS, Suite, SuiteEntry, SuiteRun, cell_file, check_labels, default_label,
                                   suite_report, write_page)
from lleval.config import EvalConfig, settings
from lleval.data.sources import DataStats
from lleval.engine.distributed import DistContext
from lleval.errors import ConfigError, OutputError
from lleval.plan.protocols import Plan
from lleval.preflight import check_config
from lleval.report.score import Report
from lleval.report.suite import SuiteCell, SuiteReport
from lleval.runner.replay import PlannedUnits
from lleval.stream import Unit
from lleval.trackers import Trackers, config_params

#: settings that mean nothing for a model in memory called at steps, and why
NOT_FOR_A_LIVE_MODEL = {
    **{name: "sets how lleval loads a model, and the evaluator's is in memory as it is" for name in MODEL_FIELDS
       if name != "float32_head"},
    "checkpoint": "resumes a run, and each call is a run of its own",
    "checkpoint_every": "resumes a run, and each call is a run of its own",
    "suite": "names models, and the evaluator has one: give the datasets as its third argument",
    "step": "is given at each call: evaluator(step=N)",
    "format": "renders the CLI's output, and the evaluator returns the report",
    "quiet": "silences the CLI, and the evaluator prints nothing",
}
#: outputs a call writes; ``{step}`` in their path becomes the call's step
STEP_PATHS = ("output", "html", "tokens", "save_reference")


@dataclass(frozen=True)
class _Data:
    """A dataset read and tokenized once: its config, protocol, reading's stats and units."""

    config: EvalConfig
    protocol: Plan
    stats: DataStats
    units: tuple[Unit, ...]  # token ids as numpy int32 (4 bytes a token)


class Evaluator:
    """Scores a model a training loop holds, at each call, on held-out data read once.

    ``model``: a ``torch.nn.Module`` causal LM on any device and dtype, wrapped in DDP,
    FSDP or ``torch.compile`` or not; ``tokenizer``: its tokenizer; ``dataset``: what
    ``-d`` takes (a file, a saved dataset, a hub id; None: the built-in sample), a list of
    them (labelled by file name) or a mapping of labels to them; ``settings``: `EvalConfig`
    fields (``max_length=1024``, ``protocol="lm-eval"``, ``limit=200``, ``calibration=True``,
    ``output="eval-{step}.json"``...; ``log_to=["mlflow"]`` logs every call). Refuses
    bad input with one `LlevalError` line, the model untouched. Use it as a context manager,
    or call `close`, to finish the trackers' runs.
    """

    def __init__(self, model: Any, tokenizer: Any, dataset: str | Sequence[str] | Mapping[str, str] | None = None,
                 *, name: str | None = None, **settings: Any) -> None:
        base = live_config(settings)
        self._label = name or "model"
        self._datasets = dataset_entries(dataset)
        check_labels(Suite((SuiteEntry(self._label, {}),), self._datasets, "evaluator"))
        configs = [self._dataset_config(base, entry) for entry in self._datasets]
        for config in configs:  # settings, output paths, data sources, tracker packages: before the model runs
            check_config(config)
        self.live: LiveModel = open_live(model, tokenizer, name, base.float32_head)
        self.tokenizations = 0  # datasets read and tokenized: once each, when the evaluator is built
        self._data = [self._read(config) for config in configs]
        self._base = base
        self._trackers = Trackers(base.log_to, name or self.live.name, base.log_dir) if base.log_to else None
        if self._trackers is not None:  # a script that never closes the evaluator still finishes its runs
            weakref.finalize(self, self._trackers.close)

    def _dataset_config(self, base: EvalConfig, entry: SuiteEntry) -> EvalConfig:
        """The settings with one dataset; of several, each its own token and reference files, as
        a suite's cells have (`lleval.commands.suite.cell_file`)."""
        config = dataclasses.replace(base, dataset=entry.fields["dataset"])
        if len(self._datasets) == 1:
            return config
        model = SuiteEntry(self._label, {})
        files: dict[str, Any] = {name: cell_file(getattr(base, name), model, entry)
                                 for name in ("tokens", "save_reference") if getattr(base, name)}
        return dataclasses.replace(config, **files)

    def _read(self, config: EvalConfig) -> _Data:
        """Read and tokenize one dataset (the only time it is): its units kept as numpy int32."""
        from lleval.plan.protocols import plan
        from lleval.runner.prepare import open_inputs

        inputs = open_inputs(config)  # checks the settings and outputs, opens the data, reads a document
        protocol = plan(config, self.live.tokenizer, self.live.max_positions)
        units = protocol.units(inputs.documents, self.live.tokenizer,
                               keep_text=bool(config.tokens or config.html or config.save_reference),
                               zlib=config.membership)
        kept = tuple(_packed(u) for u in units)
        self.tokenizations += 1
        return _Data(config, protocol, inputs.stats, kept)

    def __call__(self, step: int | None = None) -> Report | SuiteReport:
        """Score the model as it is now: a `Report` (several datasets: a `SuiteReport`, the
        model at ``step``), with ``step`` in its model block. Outputs that could not be
        written and trackers that failed are in ``failed_outputs`` (each also a warning)."""
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise ConfigError(f"step={step!r}: give the training step as a whole number >= 0 (or None).")
        _refuse_inside_backward()
        with kept_state(self.live.module):
            loaded = self.live.loaded()
            reports = [self._score(data, loaded, step) for data in self._data]
            result: Report | SuiteReport = reports[0] if len(reports) == 1 else self._suite(reports, step)
            failed = self._write(result, step) + self._log(result, step)
        result.failed_outputs = list(result.failed_outputs) + failed
        for problem in failed:
            warnings.warn(str(problem), stacklevel=2)
        return result

    def _score(self, data: _Data, loaded: Any, step: int | None) -> Report:
        """One dataset through score's path, with its units replayed (nothing read again)."""
        from lleval.commands.score import score_job
        from lleval.runner.prepare import Inputs, make_job

        config, dist = _at_step(data.config, step), _group()
        group = dist if self.live.sharded else None
        if group is not None:  # FSDP: every rank scores every batch (no split), rank 0 writes
            config = config if group.is_main else dataclasses.replace(config, html=None, tokens=None,
                                                                      save_reference=None)
            dist = None
        if config.save_reference:
            from lleval.commands.reference import with_reference

            loaded = with_reference(loaded, config.reference_top_k)
        inputs = Inputs(config, data.stats, iter(()), dist, time.perf_counter())
        job = dataclasses.replace(make_job(inputs, loaded, data.protocol),
                                  units=(_expanded(u) for u in data.units))
        report = score_job(job, write_page=len(self._data) == 1)  # several: one page of them all (`_suite`)
        report.model = dataclasses.replace(report.model, extra={**report.model.extra, "step": step})
        if group is not None:
            report.distributed = {**group.describe(), "work_split": "none: FSDP shards the weights, so every rank "
                                  "scores every batch (its forward gathers them)"}
        return report

    def _suite(self, reports: list[Report], step: int | None) -> SuiteReport:
        """Several datasets: the suite report of one model at ``step``."""
        model = SuiteEntry(self._label, {"model": None}, step)
        suite = Suite((model,), self._datasets, "evaluator")
        cells = [SuiteCell(self._label, entry.label, report) for entry, report in zip(self._datasets, reports)]
        run = SuiteRun(cells, loads=0, complete=all(r.complete for r in reports))
        report = suite_report(suite, self._base, run, PlannedUnits(tokenizations=0, replays=len(reports)))
        html = _at_step(self._base, step).html
        if html and _rank() == 0:
            report.failed_outputs = write_page(report, html)
        return report

    def _write(self, result: Report | SuiteReport, step: int | None) -> list[OutputError]:
        """``output``: the call's JSON report (rank 0); a failure is returned, not raised."""
        from lleval.report.output import write_report

        path = _at_step(self._base, step).output
        if path is None or _rank() != 0:
            return []
        try:
            write_report(result, path)
        except OutputError as exc:
            return [exc]
        return []

    def _log(self, result: Report | SuiteReport, step: int | None) -> list[OutputError]:
        """The call's report to the trackers (rank 0), the page with it when one was written."""
        if self._trackers is None or _rank() != 0:
            return []
        html = _at_step(self._base, step).html
        files = [Path(html)] if html and Path(html).is_file() else []
        name = "report.json" if step is None else f"report-step-{step}.json"
        return self._trackers.log(result.to_dict(), config_params(self._base), files, name)

    def close(self) -> list[OutputError]:
        """Finish the trackers' runs lleval opened (a run the process had open is left open)."""
        return [] if self._trackers is None else self._trackers.close()

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dataset_entries(dataset: Any) -> tuple[SuiteEntry, ...]:
    """The evaluator's datasets, each with its label: one source (a path or hub id; None: the
    built-in sample), a list of them (labelled by file name), or a mapping of label to source."""
    if isinstance(dataset, Mapping):
        pairs = [(str(label), None if d is None else str(d)) for label, d in dataset.items()]
    else:
        found = [dataset] if dataset is None or isinstance(dataset, (str, os.PathLike)) else list(dataset)
        pairs = [(default_label(None if d is None else str(d)), None if d is None else str(d)) for d in found]
    if not pairs:
        raise ConfigError("the evaluator was given no dataset: pass a path or hub id, a list of them, or a mapping "
                          "of labels to them.")
    return tuple(SuiteEntry(label, {"dataset": d}) for label, d in pairs)


def live_config(values: dict[str, Any]) -> EvalConfig:
    """The evaluator's settings as an `EvalConfig`; an unknown name (with a close match) or one
    that means nothing for a model in memory is refused, all of them in one `ConfigError`."""
    known = [f.name for f, _how in settings()]
    problems = []
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            problems.append(f"unknown setting {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        elif key in NOT_FOR_A_LIVE_MODEL:
            problems.append(f"{key} {NOT_FOR_A_LIVE_MODEL[key]}")
    if problems:
        raise ConfigError("Evaluator: " + "; ".join(problems) + ".")
    log_to = values.get("log_to", ())
    fixed = {**values, **({"log_to": (log_to,) if isinstance(log_to, str) else tuple(log_to)} if log_to else {})}
    return EvalConfig(**fixed)


def _at_step(config: EvalConfig, step: int | None) -> EvalConfig:
    """The config with ``{step}`` in its output paths replaced by the call's step."""
    shown = "none" if step is None else str(step)
    paths = {name: getattr(config, name).replace("{step}", shown) for name in STEP_PATHS
             if getattr(config, name) and "{step}" in getattr(config, name)}
    return dataclasses.replace(config, **paths) if paths else config


def _packed(unit: Unit) -> Unit:
    """A unit kept between calls: token ids as numpy int32."""
    import numpy as np

    ids: Any = np.asarray(unit.tokens, dtype=np.int32)
    return dataclasses.replace(unit, tokens=ids)


def _expanded(unit: Unit) -> Unit:
    """A kept unit as the protocol made it: token ids as a list of ints."""
    tokens: Any = unit.tokens
    return dataclasses.replace(unit, tokens=tokens.tolist())


def _group() -> DistContext | None:
    """The process group the training runs in (two ranks or more), else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                       str(dist.get_backend()))


def _rank() -> int:
    group = _group()
    return 0 if group is None else group.rank


def _refuse_inside_backward() -> None:
    """Refuse a call made while autograd runs a backward pass (from a hook)."""
    import torch

    running = getattr(torch._C, "_current_graph_task_id", lambda: -1)
    if running() != -1:
        raise ConfigError("the evaluator was called during a backward pass (from an autograd hook), while the "
                          "step's gradients are being written: call it between optimizer steps, outside backward().")


@contextlib.contextmanager
def kept_state(module: Any) -> Iterator[None]:
    """Eval mode and ``torch.no_grad`` for the block, then every module's training flag and the
    random state of Python, numpy and torch (CPU, every initialised CUDA device) as they were."""
    import random

    import numpy as np
    import torch

    modes = [(m, m.training) for m in module.modules()]
    python, numpy_state, cpu = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
