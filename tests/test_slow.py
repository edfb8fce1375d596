"""Slow tests: the network. Deselected by default (``-m 'not slow and not gpu'`` in pyproject);
run them with ``pytest -m slow``: each skips itself where what it needs is missing. The GPU
tests are in ``test_gpu.py`` (marker ``gpu``)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_hub_model_and_dataset(tmp_path: Path) -> None:
    if not _hub_reachable():
        pytest.skip("needs the Hugging Face hub")
    out = tmp_path / "r.json"
    lleval = str(Path(sys.executable).parent / "lleval")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    result = subprocess.run([lleval, "score", "-q", "-m", "HuggingFaceTB/SmolLM2-135M", "-d", "Salesforce/wikitext",
                             "--dataset-config", "wikitext-2-raw-v1", "--split", "test", "--limit", "40", "-o",
                             str(out)], capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["model"]["source"] == "hub" and report["model"]["revision"]
    assert 1.0 < report["metrics"]["perplexity"] < 100.0
