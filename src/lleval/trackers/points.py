"""What a report gives a tracker: its metrics, named as the report names them, each at its step.

Read from the report's JSON (``to_dict()``, the versioned contract), so a tracker holds
exactly the numbers of the report file. Names follow the report's keys
(``perplexity``, ``bits_per_byte``, ``nll``...); an interval ``perplexity_ci`` becomes
``perplexity_ci_low`` and ``perplexity_ci_high``; where a report holds several results
they are prefixed with what tells them apart, joined by ``/`` (which MLflow, W&B and
TensorBoard all draw as a group):

- ``score``: the headline metrics, the totals (``documents``, ``tokens``, ``bytes``),
  throughput and calibration, at the model's ``step`` when it has one (an
  `lleval.Evaluator` call);
- ``suite``: every cell's score metrics, prefixed ``DATASET/``; the models' macro average
  as ``macro/bits_per_byte``. When every model has a step of its own (a checkpoint sweep,
  an evaluator's call), each model's cells are logged at its step, so the sweep draws as a
  curve per dataset; otherwise the prefix starts with the model's label (``MODEL/DATASET/``);
- ``kld``: the divergence's statistics (``kl_divergence_mean``, ``kl_divergence_p99``...),
  ``top_token_agreement``, ``delta_p_mean`` and both perplexities;
- ``compare``: each candidate's relative change with its interval, the probability it is
  worse and whether it regressed, prefixed ``CANDIDATE/`` (its file's stem; then
  ``DATASET/`` for suites).

Labels are cleaned to the characters every tracker accepts in a name (letters, digits,
``_ - . /`` and spaces; anything else becomes ``_``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- ]+")


@dataclass(frozen=True)
class Point:
    """Metrics logged together, at a step (None: the run has no step)."""

    step: int | None
    metrics: dict[str, float]


def label(text: str) -> str:
    """A report's label as part of a metric name: ``/`` and other characters a tracker
    refuses become ``_`` (a label of ``a/b`` must not open a group of its own)."""
    return _UNSAFE.sub("_", text) or "_"


def _number(value: Any) -> float | None:
    """A JSON value a tracker can plot: numbers and booleans (0/1); None for anything else."""
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{name: number}`` of a block of a report: an interval ``[low, high]`` under ``NAME_ci``
    becomes ``NAME_ci_low`` and ``NAME_ci_high``; nulls (a metric the protocol does not give)
    are left out, as are texts and lists of other kinds."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, (list, tuple)) and len(value) == 2 and key.endswith("_ci"):
            for end, bound in zip(("low", "high"), value):
                if (number := _number(bound)) is not None:
                    out[f"{prefix}{key}_{end}"] = number
        elif (number := _number(value)) is not None:
            out[f"{prefix}{key}"] = number
    return out


def score_metrics(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """A score report's metrics, intervals, totals, throughput and calibration."""
    totals = data["totals"]
    out = flat(data["metrics"], prefix)
    out.update(flat({key: totals[key] for key in ("documents", "tokens", "bytes")}, prefix))
    out.update(flat({"tokens_per_second": data["timing"]["tokens_per_second"]}, prefix))
    calibration = data.get("statistics", {}).get("calibration") or {}
    out.update(flat({f"calibration_{key}": calibration.get(key) for key in ("ece", "top1_accuracy")}, prefix))
    return out


def score_points(data: Mapping[str, Any]) -> list[Point]:
    """One point: the report's metrics, at its model's step when it has one."""
    step = data["model"].get("step")
    return [Point(step if isinstance(step, int) else None, score_metrics(data))]


def suite_points(data: Mapping[str, Any]) -> list[Point]:
    """A point per model: its cells' metrics (``DATASET/...``) and its macro average, at its
    step when every model has a step of its own, else each name led by the model's label."""
    models = data["models"]
    steps = [m.get("step") for m in models]
    stepped = all(isinstance(s, int) for s in steps) and len(set(steps)) == len(steps)
    macro = {m["model"]: m for m in data["macro"]}
    found: list[Point] = []
    for model in models:
        lead = "" if stepped else f"{label(model['label'])}/"
        metrics: dict[str, float] = {}
        for cell in data["cells"]:
            if cell["model"] == model["label"] and cell["report"] is not None:
                metrics.update(score_metrics(cell["report"], f"{lead}{label(cell['dataset'])}/"))
        if model["label"] in macro:
            metrics.update(flat({key: macro[model["label"]][key] for key in ("bits_per_byte", "bits_per_byte_ci")},
                                f"{lead}macro/"))
        found.append(Point(model.get("step") if stepped else None, metrics))
    return found


def kld_points(data: Mapping[str, Any]) -> list[Point]:
    """One point: the divergence's statistics, agreement, the change of probability and both
    perplexities."""
    kl = dict(data["kl_divergence"])
    metrics = flat({**{k: v for k, v in kl.items() if k != "percentiles"}, **kl.get("percentiles", {})},
                   "kl_divergence_")
    metrics.update(flat({"top_token_agreement": data["top_token_agreement"], "tokens": data["tokens"]}))
    metrics.update(flat(data["delta_p"], "delta_p_"))
    metrics.update(flat(data["perplexity"], "perplexity_"))
    return [Point(None, metrics)]


def compare_points(data: Mapping[str, Any]) -> list[Point]:
    """One point: each comparison's numbers under its candidate (or its suite dataset), and
    whether every candidate passed."""
    metrics: dict[str, float] = {}
    names = short_names([row["candidate"] for row in data["comparisons"]])
    for row in data["comparisons"]:
        lead = names[row["candidate"]] + (f"/{label(row['dataset'])}" if row.get("dataset") else "")
        metrics.update(flat({key: row[key] for key in ("base_value", "candidate_value", "relative_change",
                                                       "relative_change_ci", "probability_worse", "regressed")},
                            f"{lead}/"))
    metrics.update(flat({"passed": data["passed"]}))
    return [Point(None, metrics)]


def short_names(paths: list[str]) -> dict[str, str]:
    """Report files as names: each file's stem (``runs/new.json``: ``new``) when the stems tell
    them apart, else the whole path, cleaned (`label`)."""
    from pathlib import PurePath

    stems = {path: PurePath(path).stem for path in paths}
    unique = len(set(stems.values())) == len(set(paths))
    return {path: label(stems[path] if unique else path) for path in paths}


#: each report kind's points, by its JSON ``kind``
POINTS: dict[str, Callable[[Mapping[str, Any]], list[Point]]] = {
    "score": score_points, "suite": suite_points, "kld": kld_points, "compare": compare_points,
}


def points(data: Mapping[str, Any]) -> list[Point]:
    """The points a report's JSON gives a tracker, by its ``kind``."""
    return POINTS[data["kind"]](data)
