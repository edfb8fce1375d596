"""`lleval.imports.import_frozen`: heavy imports with the garbage collector paused, then frozen.

Each case runs in a fresh interpreter: a freeze in the test process would keep
its objects from every later collection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

PROBE = r"""
import gc, json, sys
sys.path.insert(0, sys.argv[1])
from lleval.imports import import_frozen
if sys.argv[2] == "off":
    gc.disable()
before = gc.get_freeze_count()
try:
    imported = import_frozen(*sys.argv[3:])
    error = None
except ImportError as exc:
    imported, error = [], exc.name
import heavy_one
again = import_frozen("heavy_one")
print(json.dumps({"imported": imported, "again": again, "error": error, "enabled": gc.isenabled(),
                  "frozen": gc.get_freeze_count() - before,
                  "enabled_inside": heavy_one.ENABLED}))
"""


def _run(tmp_path: Path, gc_state: str, *modules: str) -> dict:
    (tmp_path / "heavy_one.py").write_text(
        "import gc\nimport heavy_two\nENABLED = gc.isenabled()\nOBJECTS = [{'n': i} for i in range(5000)]\n")
    (tmp_path / "heavy_two.py").write_text("VALUE = 2\n")
    (tmp_path / "needs_absent.py").write_text("import lleval_absent_dependency\n")
    result = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path), gc_state, *modules],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_imports_with_the_collector_paused_then_frozen_and_on_again(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "on", "heavy_one")
    assert outcome["imported"] == ["heavy_one"]
    assert outcome["again"] == []  # imported already: nothing imported, nothing frozen again
    assert outcome["enabled_inside"] is False  # paused while the module's code ran
    assert outcome["enabled"] is True
    assert outcome["frozen"] >= 5000  # the module's 5,000 dicts are in the permanent generation


def test_a_collector_that_was_off_stays_off(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "off", "heavy_one")
    assert outcome["imported"] == ["heavy_one"]
    assert outcome["enabled"] is False


def test_a_module_this_environment_lacks_is_left_out(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "on", "lleval_absent_module", "heavy_one", "heavy_one.absent_sub")
    assert outcome["imported"] == ["heavy_one"]
    assert outcome["error"] is None
    assert outcome["enabled"] is True


def test_a_module_whose_dependency_is_missing_raises(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "on", "needs_absent")
    assert outcome["error"] == "lleval_absent_dependency"
    assert outcome["imported"] == []
    assert outcome["enabled"] is True  # on again after the failure
