"""Units planned once per (tokenizer, dataset, protocol), replayed to every model that shares them.

A checkpoint sweep scores the same datasets with models that share one
tokenizer: tokenizing and windowing each dataset again for every checkpoint
is work whose result is known. `PlannedUnits` keeps the units a run planned
(token ids as numpy int32, 4 bytes a token, not a Python list's 36) with the
`DataStats` the reading left, keyed by the tokenizer's fingerprint, the data
spec and the protocol's description; a later job of the same key gets them
back as its ``units``, so it neither reads nor tokenizes the data again and
its engine sees the same units, hence the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from lleval.data.sources import DataStats
from lleval.plan.tokenization import tokenizer_fingerprint
from lleval.runner.prepare import Job
from lleval.stream import Unit


@dataclass(frozen=True)
class _Entry:
    units: tuple[Unit, ...]  # tokens as numpy int32
    stats: DataStats  # of the finished reading


@dataclass
class PlannedUnits:
    """The units of each (tokenizer, dataset, protocol) a run of several jobs planned, and how
    many times it tokenized data (``tokenizations``) and replayed it (``replays``)."""

    tokenizations: int = 0
    replays: int = 0
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _fingerprints: dict[int, tuple[Any, str]] = field(default_factory=dict)  # id: (tokenizer held, sha)

    def attach(self, job: Job) -> Job:
        """``job`` with its ``units``: replayed when a job of the same key planned them all
        before, else planned now and kept once the loop has read them to the end (a job
        stopped early keeps nothing)."""
        key = self.key(job)
        entry = self._entries.get(key)
        if entry is not None:
            self.replays += 1
            inputs = dataclasses.replace(job.inputs, stats=entry.stats, documents=iter(()))
            return dataclasses.replace(job, inputs=inputs, units=(_expanded(u) for u in entry.units))
        self.tokenizations += 1
        units = job.protocol.units(job.inputs.documents, job.loaded.tokenizer, keep_text=job.config.keeps_text,
                                   zlib=job.config.membership)
        return dataclasses.replace(job, units=self._kept(key, units, job.inputs.stats))

    def key(self, job: Job) -> str:
        """What decides a job's units: the tokenizer, the data and the protocol."""
        tokenizer = job.loaded.tokenizer
        held = self._fingerprints.get(id(tokenizer))
        if held is None:  # a pass over the vocabulary: once per tokenizer (held, so its id is not reused)
            held = self._fingerprints[id(tokenizer)] = (tokenizer, tokenizer_fingerprint(tokenizer))
        fingerprint = held[1]
        spec = job.config.section("data")
        described = job.protocol.describe(tokenizer)
        return json.dumps([fingerprint, spec, described, job.config.keeps_text, job.config.membership], sort_keys=True, default=repr)

    def _kept(self, key: str, units: Iterator[Unit], stats: DataStats) -> Iterator[Unit]:
        kept = []
        for unit in units:
            ids: Any = np.asarray(unit.tokens, dtype=np.int32)  # 4 bytes a token while kept
            kept.append(dataclasses.replace(unit, tokens=ids))
            yield unit
        self._entries[key] = _Entry(tuple(kept), stats)


def _expanded(unit: Unit) -> Unit:
    """A kept unit as the protocol made it: token ids as a list of ints."""
    tokens: Any = unit.tokens
    return dataclasses.replace(unit, tokens=tokens.tolist())

