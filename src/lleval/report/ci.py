"""What a CI system reads of ``lleval compare`` without parsing its tables.

- `junit_xml`: JUnit XML (``compare --junit FILE``), which GitLab, Jenkins and
  most GitHub test-report actions read: one ``testsuite``, one ``testcase`` per
  comparison (per candidate, and with suite reports per dataset), a ``failure``
  for each regression; the numbers of each comparison in its ``system-out``, a
  protocol difference or a gate forgiven by ``--require-significant`` in its
  ``system-err``.
- `github_annotations`: GitHub Actions workflow commands, ``::error`` for a
  regression and ``::warning`` for a protocol difference or a change over the
  limit that is not significant. The runner reads them on stdout and stderr
  alike; the CLI writes them on stderr, so that ``--format json`` keeps stdout
  pure JSON.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from lleval.report.output import write_text_atomic

SUITE_NAME = "lleval compare"
CLASS_NAME = "lleval.compare"


def _details(result: Any, r: Any) -> str:
    """One comparison's numbers in a line: the metric's values, the change, its interval, P(worse)
    and the verdict (the table's row)."""
    columns = dict(zip(result.columns, result.rows()[result.comparisons.index(r)]))
    return (f"{r.metric}: base {columns['base value']}, candidate {columns['candidate value']}, change "
            f"{columns['change']}, 95% CI {columns['95% CI']}, P(worse) {columns['P(worse)']}: {columns['verdict']}")


def failure_message(result: Any, r: Any) -> str:
    """Why a regressed comparison failed, in one line."""
    return (f"{r.name}: {r.metric} {r.change * 100:+.2f}% is over the limit (+{result.max_regression_pct:g}%)"
            + (" and significant" if result.require_significant else ""))


def junit_xml(result: Any) -> str:
    """The comparison as JUnit XML: a ``testsuites`` holding one ``testsuite`` of one ``testcase``
    per comparison, named by its dataset and candidate (`Comparison.name`); a regression is a
    ``failure``. No gate (no --max-regression): every case passes and says so."""
    failures = len(result.regressions)
    tests = str(len(result.comparisons))
    root = ET.Element("testsuites", name=SUITE_NAME, tests=tests, failures=str(failures), errors="0")
    suite = ET.SubElement(root, "testsuite", name=SUITE_NAME, tests=tests, failures=str(failures), errors="0",
                          skipped="0", timestamp=result.created or "")
    properties = ET.SubElement(suite, "properties")
    gate = result.max_regression_pct
    for name, value in (("max_regression_pct", "none" if gate is None else f"{gate:g}"),
                        ("require_significant", str(result.require_significant).lower()),
                        ("bootstrap_resamples", str(result.n_resamples)), ("seed", str(result.seed))):
        ET.SubElement(properties, "property", name=name, value=value)
    for r in result.comparisons:
        case = ET.SubElement(suite, "testcase", classname=CLASS_NAME, name=r.name, time="0")
        if r.regressed:
            failure = ET.SubElement(case, "failure", message=failure_message(result, r), type="regression")
            failure.text = _details(result, r)
        ET.SubElement(case, "system-out").text = _details(result, r)
        warnings = ([r.warning] if r.warning else []) + [s for c, s in zip(result.forgiven, result.forgiven_sentences())
                                                          if c is r]
        if warnings:
            ET.SubElement(case, "system-err").text = "\n".join(warnings)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(result: Any, path: str) -> None:
    """Write `junit_xml` to ``path`` (atomically; a failure is an `OutputError` naming --junit)."""
    write_text_atomic(path, junit_xml(result), "--junit")


def _escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub's toolkit does (``%``, CR, LF)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """A workflow command's property value, escaped as GitHub's toolkit does (also ``:`` and ``,``)."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(level: str, title: str, message: str) -> str:
    """One workflow command: ``::error title=...::message`` (``level``: error, warning or notice)."""
    return f"::{level} title={_escape_property(title)}::{_escape_data(message)}"


def github_annotations(result: Any) -> list[str]:
    """The workflow commands of a comparison: ``::error`` per regression, ``::warning`` per
    protocol difference and per change over the limit that --require-significant forgave."""
    lines = [annotation("error", "lleval compare: regression",
                        f"{failure_message(result, r)}. {_details(result, r)}") for r in result.regressions]
    lines += [annotation("warning", "lleval compare: protocol differs", r.warning)
              for r in result.comparisons if r.warning]
    lines += [annotation("warning", "lleval compare: over the limit, not significant", sentence)
              for sentence in result.forgiven_sentences()]
    return lines
