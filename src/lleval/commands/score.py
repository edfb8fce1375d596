"""``lleval score``: `evaluate()`, from an `EvalConfig` to a `Report`.

A score run is the shared orchestrator (`lleval.runner`) with the model's own
scorer and three reducers: per-document sums (`DocumentSums`), the stream's
token counts and the loss by context length. Read top to bottom:

1. **prepare** (`lleval.runner.prepare`): validate the flags, check the
   output paths, open the data and read its first document, open the model
   through its backend and plan the protocol, then load the weights and
   resume a checkpoint; so a mistake costs milliseconds, not a model load;
2. **score** (`lleval.runner.run.run_job`): one loop over what the engine
   yields, feeding the reducers, the progress display and the checkpointer;
3. **finish** (`score_report`): the report, derived from the reducers' sums.

The heavy objects can be injected as a `LoadedModel`, so tests drive the
whole path with fakes and tiny models.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from lleval.backends.base import FULL_VOCABULARY, LoadedModel
from lleval.config import EvalConfig
from lleval.metrics import ratio_intervals, reliability, unreliable_sentence
from lleval.reducers.base import Statistic
from lleval.reducers.calibration import Calibration
from lleval.reducers.membership import MembershipScores
from lleval.reducers.context import ContextCurve
from lleval.reducers.documents import DocumentSums, StreamCounts
from lleval.report.score import ContextBin, Report, bins_of_table
from lleval.runner.header import header_fields, model_notes
from lleval.runner.loop import ScoringRun
from lleval.runner.progress import Progress, ScoringProgress
from lleval.runner.prepare import Job, load_and_plan, make_job, model_spec, open_inputs
from lleval.runner.replay import PlannedUnits
from lleval.runner.run import run_job
from lleval.stopping import heeds_should_stop

__all__ = ["evaluate", "score_job", "load", "LoadedModel", "Progress", "ScoringProgress", "STATISTICS"]

#: Further statistics a score run folds and reports (``statistics.<key>`` in its JSON):
#: each entry makes the `Statistic` for a config, or None where the run does not ask for it.
#: A new statistic is its reducer's module plus one entry here.
STATISTICS: tuple[Callable[[EvalConfig], Statistic | None], ...] = (
    lambda config: Calibration() if config.calibration else None,
)


def load(config: EvalConfig) -> LoadedModel:
    """Load the model a config names, through its backend (`lleval.backends.registry`)."""
    from lleval.backends.registry import load_model

    return load_model(model_spec(config))


@heeds_should_stop
def evaluate(
    config: EvalConfig,
    *,
    loaded: LoadedModel | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    plans: PlannedUnits | None = None,
    write_page: bool = True,
) -> Report:
    """Score the dataset a config names with the model it names, and return the `Report`.

    A run stopped by ``should_stop`` returns a report with ``complete`` false
    holding the documents finished so far; it is heard within a second while a served
    model's batch waits on its server too (`lleval.stopping`), and a stop while the model
    loads raises `lleval.stopping.Interrupted` (nothing is scored yet). ``plans`` (a suite's) replays units another
    model of the same tokenizer planned on the same data, and keeps the ones planned now.
    ``write_page`` false (a suite's cell): the ``--html`` samples stay on
    ``report.page_samples`` for the suite's page, and no page is written for this run.
    """
    inputs = open_inputs(config)
    (model,), protocol = load_and_plan([config], [loaded], progress)
    if config.save_reference:  # the base's top-K per token, for kld --reference
        from lleval.commands.reference import with_reference

        model = with_reference(model, config.reference_top_k)
    job = make_job(inputs, model, protocol)
    if plans is not None:
        job = plans.attach(job)
    return score_job(job, progress, should_stop, write_page)


def score_job(job: Job, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
              write_page: bool = True) -> Report:
    """Score a prepared `Job` with score's reducers and build its `Report`: what `evaluate` does
    once the job is made, and what `lleval.commands.evaluator.Evaluator` does at each call with
    a job of its own (a model in memory, units planned once)."""
    config = job.config
    sums, counts, curve = DocumentSums(), StreamCounts(), ContextCurve()
    statistics = [s for s in (make(config) for make in STATISTICS) if s is not None]
    membership = MembershipScores(config.min_k) if config.membership else None
    others: dict[str, Any] = {"stream": counts, "curve": curve, **{s.key: s for s in statistics},
                              **({"membership": membership} if membership is not None else {})}
    return run_job(job, sums, others,
                   lambda run: score_report(job, run, sums, counts, curve, statistics, membership),
                   progress, should_stop, write_page=write_page)


def score_report(
    job: Job, run: ScoringRun, sums: DocumentSums, counts: StreamCounts, curve: ContextCurve | None = None,
    statistics: Sequence[Statistic] = (), membership: MembershipScores | None = None,
) -> Report:
    """The `Report` of a score run: every block of it derived from the reducers' state
    (``membership``: each document's membership scores, --membership)."""
    if membership is not None:
        for doc, scores in zip(sums.documents, membership.documents):
            doc.membership = scores
    totals = sums.totals()
    intervals, bootstrap = document_intervals(job.config, sums, job.protocol.scores_every_token)
    notes = score_notes(job, run, sums, counts) + ([str(bootstrap["skipped"])] if "skipped" in bootstrap else [])
    if bootstrap["reliable"] is False:
        notes.append(unreliable_sentence(bootstrap["documents"]))
    bins = [] if curve is None else context_bins(job.config, curve, job.protocol.max_length)
    return Report(**header_fields(job, run, counts, totals, notes), totals=totals, documents=sums.documents,
                  intervals=intervals, bootstrap=bootstrap, by_context_length=bins,
                  statistics={s.key: s.result() for s in statistics})


def context_bins(config: EvalConfig, curve: ContextCurve, max_length: int) -> list[ContextBin]:
    """``by_context_length``: every power-of-two bin from 1 up to ``max_length``, with the
    bootstrap interval of its perplexity over documents."""
    return bins_of_table(curve.table(max_length), config.bootstrap, config.seed)


def score_notes(job: Job, run: ScoringRun, sums: DocumentSums, counts: StreamCounts) -> list[str]:
    """What a reader of the report must know about how its numbers were made."""
    config, protocol, info = job.config, job.protocol, job.loaded.info
    notes = []
    if not run.complete:
        notes.append(f"stopped early: {len(sums.documents)} documents finished; " + (
            f"rerun the same command to resume from {config.checkpoint}." if config.checkpoint else
            "nothing was saved to resume from (--checkpoint FILE makes a run resumable)."))
    if job.resumed is not None and job.resumed.complete:
        notes.append(f"checkpoint {config.checkpoint} is of a finished run on the same {job.resumed.rows} documents: "
                     "this report is rebuilt from it, nothing was scored again.")
    elif job.resumed is not None and job.resumed.rows:
        notes.append(f"resumed from {config.checkpoint}: {job.resumed.rows} documents were scored before.")
    nonfinite = sum(d.nonfinite for d in sums.documents)
    if nonfinite:
        notes.append(f"{nonfinite} tokens had a NaN or infinite log-prob and are left out (--allow-nonfinite).")
    if protocol.name == "rolling" and protocol.prefix_token is None:
        notes.append("--prefix-token none: the first token of each document is not scored.")
    if not protocol.scores_every_token:
        notes.append(
            f"the {protocol.name} protocol leaves {counts.unscored_tokens} of {counts.stream_tokens} "
            "tokens unscored, so bits per byte and word/byte perplexity are not reported."
        )
    if run.checkpoint_problem:
        notes.append(f"a checkpoint save failed ({run.checkpoint_problem}); {config.checkpoint} holds the last "
                     "save that succeeded, if any.")
    if config.membership and FULL_VOCABULARY not in job.loaded.capabilities:
        notes.append(f"min_k_plus_plus is null: Min-K%++ needs every log-prob of the vocabulary, and {info.name} "
                     "gives only the log-prob of each true token (Min-K% and the zlib ratio are reported).")
    notes += model_notes(info)
    return notes


def document_intervals(
    config: EvalConfig, sums: DocumentSums, per_byte: bool
) -> tuple[dict[str, tuple[float, float] | None], dict[str, Any]]:
    """95% bootstrap intervals over documents for perplexity and bits per byte, and the
    report's ``bootstrap`` block (with a ``skipped`` sentence when there are none; ``documents``
    and ``reliable``: false when the intervals come from too few documents to mean much,
    `lleval.metrics.MIN_INTERVAL_DOCUMENTS`)."""
    import numpy as np

    info: dict[str, Any] = {"resamples": config.bootstrap, "seed": config.seed, "level": 0.95, "unit": "document"}
    if config.bootstrap == 0:
        info["skipped"] = "--bootstrap 0: no confidence intervals."
    elif len(sums.documents) < 2:
        info["skipped"] = "a single document gives no confidence interval: score two or more."
    docs = sums.documents
    nll = np.array([-d.log_likelihood for d in docs])
    tokens = np.array([d.tokens for d in docs], dtype=np.float64)
    n_bytes = np.array([d.bytes for d in docs], dtype=np.float64)
    intervals = ratio_intervals(nll, tokens, n_bytes, config.bootstrap, config.seed)
    if not per_byte:
        intervals["bits_per_byte"] = None
    info.update(reliability(len(docs), any(v is not None for v in intervals.values())))
    return intervals, info
