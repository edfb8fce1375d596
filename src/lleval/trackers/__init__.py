"""Results in the tracker the team already reads: MLflow, Weights & Biases, TensorBoard.

``--log-to NAME`` (score, suites, kld, compare) and `lleval.Evaluator`'s ``log_to=`` send a
report to each named tracker: its metrics (`lleval.trackers.points`: named as the report
names them, prefixed by dataset or cell where there are several, each at its step), the
run's settings as parameters, and the JSON report (with the HTML page, when one was
written) as artifacts. Each tracker is one module here with an ``open_run`` function (the
`OPENERS` table); which packages a tracker needs, and the extra that installs them, is
declared once in `lleval.config.TRACKERS`, and `lleval.preflight.check_trackers` refuses
a missing one before any model loads.

A tracker that fails (its server down, a full disk) costs the logging alone: `Trackers.log`
returns the failure as an `OutputError` (one line) instead of raising, so the run's own
outputs are still written and the command exits 1, as for any output that failed.
"""

from __future__ import annotations

import importlib
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from lleval.config import DEFAULT_LOG_DIR
from lleval.errors import OutputError
from lleval.trackers.points import Point, points

#: the module of each tracker (by its name in `lleval.config.TRACKERS`); each has ``open_run``
OPENERS = {"mlflow": "lleval.trackers.to_mlflow", "tensorboard": "lleval.trackers.to_tensorboard",
           "wandb": "lleval.trackers.to_wandb"}


class TrackerRun(Protocol):
    """One run in a tracker: parameters once, then points and files."""

    def params(self, values: Mapping[str, Any]) -> None:
        """Log the run's settings."""
        ...

    def metrics(self, point: Point) -> None:
        """Log a point's metrics at its step."""
        ...

    def artifact(self, path: Path) -> None:
        """Keep a file (the JSON report, the HTML page) with the run."""
        ...

    def close(self) -> None:
        """Finish the run (a run lleval did not open is left open)."""
        ...


def open_run(name: str, run_name: str, log_dir: Path) -> TrackerRun:
    """Open a run of the tracker ``name`` (one of `OPENERS`)."""
    module = importlib.import_module(OPENERS[name])
    run: TrackerRun = module.open_run(run_name, log_dir)
    return run


def param_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as a tracker takes them: numbers, booleans and text as they are, a list as
    its items joined by commas, anything else (None) as its text."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        out[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def failure(name: str, exc: BaseException) -> OutputError:
    """A tracker's failure as one line: which tracker, what went wrong, that nothing else was lost."""
    from lleval.hub import first_line

    cause = first_line(exc) if isinstance(exc, OutputError) else f"{type(exc).__name__}: {first_line(exc)}"
    return OutputError(f"--log-to {name}: logging failed ({cause}); the report and the other outputs are written. "
                       "Check the tracker (its server, its folder, its disk).")


class Trackers:
    """The tracker runs of one command, or of one evaluator across its calls: each opened at
    its first `log`, its parameters logged then, and finished by `close`."""

    def __init__(self, names: Sequence[str] | str, run_name: str, log_dir: str | None = None) -> None:
        self.names = tuple(dict.fromkeys([names] if isinstance(names, str) else names))
        self.run_name = run_name
        self.log_dir = Path(log_dir or DEFAULT_LOG_DIR)
        self._runs: dict[str, TrackerRun] = {}

    def log(self, data: Mapping[str, Any], params: Mapping[str, Any], files: Sequence[Path] = (),
            report_name: str = "report.json") -> list[OutputError]:
        """Send a report's JSON (``data``: its points, and the JSON itself as the file
        ``report_name``) and ``files`` to every tracker; each one that fails is returned."""
        failed: list[OutputError] = []
        with tempfile.TemporaryDirectory(prefix="lleval-log-") as folder:
            report = Path(folder) / report_name
            from lleval.report.output import to_json

            report.write_text(to_json(dict(data)), encoding="utf-8")
            found = sorted(points(data), key=lambda p: -1 if p.step is None else p.step)
            for name in self.names:
                try:
                    run = self._run(name, params)
                    for point in found:
                        run.metrics(point)
                    for path in (report, *files):
                        run.artifact(path)
                except Exception as exc:  # any failure of a tracker's library costs its logging alone
                    failed.append(failure(name, exc))
        return failed

    def _run(self, name: str, params: Mapping[str, Any]) -> TrackerRun:
        run = self._runs.get(name)
        if run is None:
            run = open_run(name, self.run_name, self.log_dir)
            self._runs[name] = run
            run.params(param_values(params))
        return run

    def close(self) -> list[OutputError]:
        """Finish every run opened; each that fails to finish is returned."""
        failed: list[OutputError] = []
        for name, run in list(self._runs.items()):
            try:
                run.close()
            except Exception as exc:  # as in `log`: the tracker's failure, not the run's
                failed.append(failure(name, exc))
            del self._runs[name]
        return failed


def run_label(text: str) -> str:
    """A run's name as a folder name: letters, digits and ``._-``, with the time it started."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "lleval"
    return f"{cleaned}-{time.strftime('%Y%m%d-%H%M%S')}"


def log_results(result: Any, names: Sequence[str], log_dir: str | None, run_name: str,
                params: Mapping[str, Any], html: str | None = None) -> list[OutputError]:
    """A command's report to its ``--log-to`` trackers, each in a run of its own, with the HTML
    page written at ``html`` (when it was written); the failures, one line each. Rank 0 alone
    logs (`lleval.engine.distributed.launched_as_main`)."""
    from lleval.engine.distributed import launched_as_main

    if not names or not launched_as_main():
        return []
    trackers = Trackers(names, run_name, log_dir)
    unwritten = any(html and html in str(e) for e in getattr(result, "failed_outputs", []))  # not this run's page
    files = [Path(html)] if html and Path(html).is_file() and not unwritten else []
    failed = trackers.log(result.to_dict(), params, files)
    return failed + trackers.close()


def config_params(config: Any) -> dict[str, Any]:
    """Every setting of a run's `lleval.config.EvalConfig` (the trackers' own left out), as
    the parameters a tracker logs."""
    from lleval.config import settings

    return {f.name: getattr(config, f.name) for f, _how in settings() if f.name not in ("log_to", "log_dir")}
