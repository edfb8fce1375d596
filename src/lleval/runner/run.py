"""`run_job`: the one function that runs every job, score and kld alike.

A command prepares a `Job` (`lleval.runner.prepare`), names its reducers and
how to build its report from them; `run_job` adds the reducers behind the
file outputs (``--tokens``, ``--html``), runs the scoring loop
(`lleval.runner.loop.run_loop`), builds the report and writes the files, and
on failure or Ctrl-C cleans up what a rerun cannot resume from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from lleval.config import EvalConfig
from lleval.errors import OutputError
from lleval.reducers.base import Reducer
from lleval.reducers.documents import DocumentSums
from lleval.reducers.samples import DocumentSamples
from lleval.runner.loop import ScoringRun, run_loop
from lleval.runner.progress import Progress
from lleval.runner.prepare import Job


def run_job(
    job: Job,
    sums: DocumentSums,
    others: Mapping[str, Reducer],
    build_report: Callable[[ScoringRun], Any],
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    samples: bool = True,
    write_page: bool = True,
) -> Any:
    """`run_loop` with the run's file outputs (``--tokens``, ``--html``) as further reducers, then
    the report ``build_report`` makes of the run, with every file written: a run that fails
    or is interrupted removes its token parts (unless its checkpoint will resume from them),
    and a file that cannot be written is in ``report.failed_outputs``, not raised. ``samples``:
    whether ``--html`` shows documents token by token (score's page; kld's has none). ``write_page``
    false: the caller writes the page (a suite's cells share one), not this run; the ``--html``
    samples are kept on ``report.page_samples`` for it."""
    files = file_reducers(job, samples)
    try:
        run = run_loop(job, sums, {**others, **files}, progress, should_stop)
    except BaseException:
        abandon_files(job, files)
        raise
    if progress is not None:
        progress.stage("writing report")
    report = build_report(run)
    report.failed_outputs = write_files(job, run, report, files, write_page)
    if not write_page:
        report.page_samples = files.get("samples")
    return report


def file_reducers(job: Job, samples: bool = True) -> dict[str, Any]:
    """The reducers behind ``--tokens``, ``--save-reference`` and ``--html`` (rank 0 alone writes
    files; ``samples``: whether the page shows documents token by token, as score's does). A
    rerun of a finished run (its checkpoint is complete) scores nothing: its token file and
    reference are kept as that run wrote them (`FinishedFile`), not written again."""
    from lleval.report.tokens import FinishedFile

    config, dist = job.config, job.inputs.dist
    if dist is not None and not dist.is_main:
        return {}
    finished = job.resumed is not None and job.resumed.complete
    files: dict[str, Any] = {}
    if config.tokens:
        from lleval.report.tokens import TokenWriter

        files["tokens"] = (FinishedFile(config.tokens, config.flag("tokens")) if finished
                           else TokenWriter(config.tokens, config.checkpoint))
    if config.save_reference:
        from lleval.report.reference import ReferenceWriter

        files["reference"] = (FinishedFile(config.save_reference, config.flag("save_reference")) if finished
                              else ReferenceWriter(config.save_reference, config.checkpoint))
    if config.html and samples:
        files["samples"] = DocumentSamples(config.html_docs)
    return files


def write_files(job: Job, run: ScoringRun, report: Any, files: Mapping[str, Any],
                write_page: bool = True) -> list[OutputError]:
    """Write the token file and the HTML report a run was asked for, once its report exists.

    Each output that cannot be written (a full disk) is returned, not raised: the
    run is finished and one failed file must not cost the others, nor the report.
    """
    failed: list[OutputError] = []
    dist = job.inputs.dist
    header = {k: v for k, v in report.header_dict("tokens").items() if k not in ("timing", "notes")}
    scorer = job.loaded.scorer
    extras = {"tokens": {}, "reference": {"reference": {"top_k": getattr(scorer, "k", None),
                                                        "vocab": job.loaded.vocab}}}
    for name, extra in extras.items():
        if name in files:
            try:
                files[name].finish({**header, **extra}, keep_parts=not run.complete and _resumable(job.config))
            except OutputError as exc:
                failed.append(exc)
    if job.config.html and write_page and (dist is None or dist.is_main):
        from lleval.report.html import write_run_html

        samples = files.get("samples")
        try:
            write_run_html(report, job.config.html, samples.samples() if samples else [],
                           samples.snippets if samples else None)
        except OutputError as exc:
            failed.append(exc)
    return failed


def abandon_files(job: Job, files: Mapping[str, Any]) -> None:
    """A run that failed or was killed by Ctrl-C: remove the token parts, unless the
    run's checkpoint will resume from them."""
    for name in ("tokens", "reference"):
        if name in files:
            files[name].abandon(keep_parts=_resumable(job.config))


def _resumable(config: EvalConfig) -> bool:
    """Whether a checkpoint file exists that a rerun will resume from."""
    return bool(config.checkpoint) and Path(config.checkpoint or "").is_file()
