"""Limits on the shape of the code (issue: "one scoring path"): no function in src/lleval
longer than 60 lines, and click command bodies under 40, counted with `ast`; and what only
reads scored tokens imports no torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "lleval"


def _functions() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((f"{path.name}:{node.lineno} {node.name}", node))
    return found


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of the body, the docstring left out."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    if not body:
        return 0
    return (body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1


def _is_click_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
        for d in node.decorator_list
    )


def test_no_function_is_longer_than_60_lines() -> None:
    functions = _functions()
    assert len(functions) > 50  # the walk found the package
    too_long = {name: (node.end_lineno or 0) - node.lineno + 1 for name, node in functions
                if (node.end_lineno or 0) - node.lineno + 1 > 60}
    assert not too_long, too_long


def test_click_command_bodies_are_under_40_lines() -> None:
    commands = {name: _body_lines(node) for name, node in _functions() if _is_click_command(node)}
    assert set(n.split()[-1] for n in commands) >= {"score", "kld", "compare"}
    assert all(lines < 40 for lines in commands.values()), commands


# The modules that run a model (the engine and its log-prob kernels) may import torch at
# import time; the commands may too. Every other module imports it, if at all, inside the
# function that needs it.
RUNS_A_MODEL = ("lleval.engine.scoring", "lleval.engine.kernels", "lleval.engine.reference")


def _modules() -> list[str]:
    names = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


# The integrations subclass a training framework's classes (transformers' TrainerCallback), so import it.
TORCH_FREE = tuple(name for name in _modules() if name not in RUNS_A_MODEL and not name.startswith("lleval.commands.")
                   and not name.startswith("lleval.integrations.") and name != "lleval.__main__")


def test_the_torch_free_list_covers_the_layers() -> None:
    """Every stage folder is in the list (the walk found them), and what reads scored tokens too."""
    folders = {name.split(".")[1] for name in TORCH_FREE if name.count(".") >= 2}
    assert folders >= {"backends", "data", "engine", "plan", "reducers", "report", "runner"}
    assert {"lleval.stream", "lleval.runner.loop", "lleval.backends.registry", "lleval.cli"} <= set(TORCH_FREE)


@pytest.mark.subprocess
def test_what_only_reads_scored_tokens_imports_no_torch(tmp_path: Path) -> None:
    """No module below the commands imports torch, transformers or datasets unless it runs a
    model (`RUNS_A_MODEL`): the stream types, the reducers, checkpoints, the token file, the
    orchestrator and the backends' seam load none of them, and `lleval inspect` runs without
    them (a fresh interpreter, so nothing is imported already)."""
    import json
    import subprocess
    import sys

    tokens = tmp_path / "t.jsonl"
    row = {"document": 0, "position": 0, "context": 1, "token_id": 5, "token": "a", "start": 0, "end": 1,
           "logprob": -1.5}
    tokens.write_text(json.dumps(row) + "\n" + json.dumps({**row, "position": 1, "token": "b", "start": 1, "end": 2})
                      + "\n")
    probe = (
        "import importlib, json, sys\n"
        f"for name in {TORCH_FREE!r}:\n    importlib.import_module(name)\n"
        "from lleval.cli import main\n"
        "try:\n    main(['inspect', sys.argv[1], '--doc', '0', '--format', 'json'], prog_name='lleval')\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print(json.dumps({'code': code, 'imported': [m for m in ('torch', 'transformers', 'datasets') "
        "if m in sys.modules]}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(tokens)], capture_output=True, text=True, timeout=120)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 0, "imported": []}, result.stderr
