"""Reading reports back: the JSON Schemas shipped in ``lleval/schemas``, and a check of a
report against them whose error names the file and the first problem in one line.

The check is our own, not ``jsonschema``'s: ``jsonschema`` takes 4.3 s over the
documents of a 100,000-document score report (43 µs a document, measured on
this project's 2-core machine), which ``lleval compare`` would pay for every
report it reads. The shipped schemas use only the keywords in `KEYWORDS`, which
`compile_check` implements in a few lines and checks the same documents with in
0.4 s (compare's former hand check of five keys a document: 0.15 s).
`load_schema` refuses a schema that uses any other keyword, so a schema edit
cannot slip past the check unread, and tests/test_schemas.py holds the check
to ``jsonschema``'s verdict on broken reports of every kind.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Callable

from lleval.errors import ReportError, read_text_file

SCHEMA_VERSION = 1
KINDS = ("score", "kld", "compare", "suite")
#: the JSON Schema keywords the shipped schemas use, and so the ones `first_problem` checks
#: (the annotations among them check nothing; ``additionalProperties`` is always ``true``)
KEYWORDS = frozenset({"type", "required", "properties", "additionalProperties", "items", "const", "enum", "oneOf",
                      "minimum", "maximum", "exclusiveMinimum", "minItems", "maxItems",
                      "$schema", "$id", "title", "description"})


@lru_cache(maxsize=None)
def load_schema(kind: str) -> dict[str, Any]:
    """The shipped JSON Schema of a report ``kind`` (``score``, ``kld``, ``compare``)."""
    schema = json.loads((resources.files("lleval") / "schemas" / f"{kind}.schema.json").read_text("utf-8"))
    _refuse_unknown_keywords(schema, kind)
    return schema


def _refuse_unknown_keywords(schema: dict[str, Any], where: str) -> None:
    unknown = set(schema) - KEYWORDS
    if unknown:
        raise ValueError(f"schema {where} uses {sorted(unknown)}, which lleval.report.schema does not check")
    if schema.get("additionalProperties", True) is not True:
        raise ValueError(f"schema {where}: additionalProperties other than true is not checked")
    for key, sub in schema.get("properties", {}).items():
        _refuse_unknown_keywords(sub, f"{where}.{key}")
    for sub in [schema["items"]] if "items" in schema else []:
        _refuse_unknown_keywords(sub, f"{where}[]")
    for k, sub in enumerate(schema.get("oneOf", [])):
        _refuse_unknown_keywords(sub, f"{where} (oneOf {k})")


@dataclass(frozen=True)
class Problem:
    """The first way a value breaks its schema: where (``documents[3].tokens``, ``""`` for
    the value itself), and what is wrong there; ``missing`` is the required key it lacks."""

    where: str
    what: str
    missing: str | None = None

    def inside(self, step: str | int) -> "Problem":
        """The same problem, seen from the object (key ``step``) or array (index) around it."""
        head = f"[{step}]" if isinstance(step, int) else step
        where = head if not self.where else head + ("" if self.where.startswith("[") else ".") + self.where
        return Problem(where, self.what, self.missing)


Check = Callable[[Any], "Problem | None"]


@lru_cache(maxsize=None)
def checker(kind: str) -> Check:
    """`first_problem`'s check of the shipped schema of ``kind``, compiled once."""
    return compile_check(load_schema(kind))


def first_problem(value: Any, schema: dict[str, Any]) -> Problem | None:
    """The first problem of ``value`` against ``schema`` (keys in the schema's order, a
    missing key before what the present ones hold), or None when it fits."""
    return compile_check(schema)(value)


def compile_check(schema: dict[str, Any]) -> Check:
    """A function from a value to its first `Problem` against ``schema`` (None: it fits).
    Compiled once per schema; a path is spelled only for a value that breaks it."""
    own = _value_test(schema)
    required = tuple(schema.get("required", ()))
    properties = [(key, compile_check(sub)) for key, sub in schema.get("properties", {}).items()]
    items = compile_check(schema["items"]) if "items" in schema else None
    low, high = schema.get("minItems", 0), schema.get("maxItems", math.inf)
    shapes = [compile_check(sub) for sub in schema.get("oneOf", ())]

    def check(value: Any) -> Problem | None:
        if (what := own(value)) is not None:
            return Problem("", what)
        if isinstance(value, dict):
            for key in required:
                if key not in value:
                    return Problem("", f"lacks {key!r}", key)
            for key, sub in properties:
                if key in value and (problem := sub(value[key])) is not None:
                    return problem.inside(key)
        elif isinstance(value, list):
            if not low <= len(value) <= high:
                return Problem("", f"holds {len(value)} items, not {low} to {high}")
            for k, item in enumerate(value if items is not None else ()):
                if items is not None and (problem := items(item)) is not None:
                    return problem.inside(k)
        if shapes and (fits := sum(shape(value) is None for shape in shapes)) != 1:
            return Problem("", f"is {_short(value)}, which fits {fits} of the {len(shapes)} shapes allowed")
        return None

    return check


def _value_test(schema: dict[str, Any]) -> Callable[[Any], str | None]:
    """The test of a value itself, giving what is wrong or None: its type, a NaN or
    infinity (which JSON cannot hold but Python's reader accepts), its constant or
    choices, its bounds."""
    names = [schema["type"]] if isinstance(schema.get("type"), str) else schema.get("type")
    fits = None if names is None else _type_test(names)
    choices = [schema["const"]] if "const" in schema else schema.get("enum")
    low, above, high = (schema.get(k) for k in ("minimum", "exclusiveMinimum", "maximum"))

    def test(v: Any) -> str | None:
        if fits is not None and not fits(v):
            return f"is {_short(v)}, not {' or '.join(names or ())}"
        if isinstance(v, float) and not math.isfinite(v):
            return "is not a finite number"
        if choices is not None and not any(_same(v, c) for c in choices):
            return f"is {_short(v)}, not {' or '.join(map(repr, choices))}"
        if low is None and above is None and high is None or not _is_number(v):
            return None
        if low is not None and v < low:
            return f"is {v!r}, below its minimum {low}"
        if above is not None and v <= above:
            return f"is {v!r}, not above {above}"
        return f"is {v!r}, above its maximum {high}" if high is not None and v > high else None

    return test


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    """JSON Schema's integer: a bool is none, and 3.0 is one."""
    return _is_number(value) and (isinstance(value, int) or value.is_integer())


TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "number": _is_number, "integer": _is_integer, "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list), "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool), "null": lambda v: v is None,
}


def _type_test(names: list[str]) -> Callable[[Any], bool]:
    tests = [TYPE_TESTS[name] for name in names]
    return tests[0] if len(tests) == 1 else lambda v: any(t(v) for t in tests)


def _same(value: Any, expected: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1.0`` is ``1``."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return type(value) is type(expected) and value == expected
    return bool(value == expected)


def _short(value: Any) -> str:
    """A value as a problem shows it, on one line and short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check(data: Any, kind: str, source: str) -> None:
    """Raise a `ReportError` unless ``data`` is a report of ``kind`` in the shipped schema;
    its one line names ``source`` (the file) and the first problem."""
    if not isinstance(data, dict):
        raise ReportError(f"report {source} is not a JSON object: is it an lleval {kind} report?")
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
        raise ReportError(
            f"report {source} has schema version {version}; this lleval reads version "
            f"{SCHEMA_VERSION}. Re-run lleval {kind} with this version."
        )
    if "kind" in data and data["kind"] != kind:
        raise ReportError(f"report {source} is a {data['kind']!r} report, not a {kind!r} report.")
    problem = checker(kind)(data)
    if problem is None:
        return
    if not problem.where:  # the report lacks one of its own fields
        raise ReportError(f"report {source} has no valid {problem.missing!r}: is it an lleval {kind} report?")
    if problem.missing is None and "." not in problem.where and "[" not in problem.where:
        raise ReportError(f"report {source} has no valid {problem.where!r} ({problem.what}): is it an lleval "
                          f"{kind} report?")
    raise ReportError(f"report {source}: {problem.where} {problem.what}.")


def read_json(path: str) -> Any:
    """The JSON value in a report file; one that cannot be read, or is not JSON, is a
    `ReportError` that names it."""
    text = read_text_file(path, "report", ReportError)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"report {path} is not JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}.") from None
