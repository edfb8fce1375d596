"""The header every report kind shares (model, tokenizer, dataset, protocol, timing,
environment, notes), built from a finished `Job` and its `ScoringRun`."""

from __future__ import annotations

import time
from typing import Any

from lleval import __version__
from lleval.data.spec import data_spec
from lleval.metrics import Totals
from lleval.reducers.documents import StreamCounts
from lleval.report.blocks import dataset_block, environment, model_block, now, timing_block, tokenizer_block
from lleval.runner.loop import ScoringRun
from lleval.runner.prepare import Job


def header_fields(
    job: Job, run: ScoringRun, counts: StreamCounts, totals: Totals, notes: list[str]
) -> dict[str, Any]:
    """The `ReportHeader` fields of a run's report (score and kld alike); the environment
    counts every model the run used (kld's base too, ``job.others``)."""
    loaded, protocol = job.loaded, job.protocol
    infos = (loaded.info, *(other.info for other in job.others))
    half_on_cpu = [i.dtype for i in infos if i.device == "cpu" and i.dtype in ("bfloat16", "float16")]
    return {
        "lleval_version": __version__,
        "created": now(),
        "complete": run.complete,
        "model": model_block(loaded.info),
        "tokenizer": tokenizer_block(loaded.tokenizer, loaded.info.name),
        "dataset": dataset_block(data_spec(job.config), job.inputs.stats, totals.documents),
        "protocol": protocol.counted(protocol.describe(loaded.tokenizer), counts.stream_tokens, counts.unscored_tokens),
        "timing": timing_block(time.perf_counter() - job.inputs.started, loaded.load_seconds, run.seconds,
                               totals.tokens, run.engine, job.batching),
        "environment": environment(half_on_cpu),
        "distributed": None if job.inputs.dist is None else job.inputs.dist.describe(),
        "notes": notes + data_notes(job),
        "settings": job.config.provenance(),
    }


def data_notes(job: Job) -> list[str]:
    """What a reader must know of the rows read: a ``--sample`` that asked for as many rows as
    there are, or more, took every row."""
    config, stats = job.config, job.inputs.stats
    if config.sample is None or stats.sampled_from is None or stats.sampled_from > config.sample:
        return []
    return [f"{config.flag('sample', config.sample)} asked for at least as many rows as there are "
            f"({stats.sampled_from}{' within --limit' if config.limit is not None else ''}): every row was scored, "
            "not a random part of them."]


def model_notes(info: Any) -> list[str]:
    """What loading the model met that a reader must know (a model cache that cannot
    be written, a damaged entry rebuilt), then the dtype's note."""
    return list(info.notes) + dtype_notes(info)


def dtype_notes(info: Any) -> list[str]:
    """The note a run in a half precision needs (numbers differ from float32)."""
    if info.dtype == "float32":
        return []
    if info.device == "cpu":
        from lleval.hardware import half_speed_sentence

        return [f"scored in {info.dtype} on CPU: numbers differ from float32; {half_speed_sentence(info.dtype)}."]
    return [f"scored in {info.dtype}: compare only with runs in the same dtype (--dtype float32 for float32 numbers)."]
