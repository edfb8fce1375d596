"""Ctrl-C on a real ``lleval score`` suite process (lleval issue 19): the suite report is
written with the finished cells and ``complete: false``, the exit code is 128 + SIGINT, and
rerunning the same command with its ``--checkpoint`` finishes with the cells of an
uninterrupted run. `should_stop` itself is tested in test_suite.py; this sends the signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import write_jsonl

# Enough documents that a cell of the tiny models takes about a second on a shared 2-core
# machine, so the signal sent once the first cell has finished lands while another runs.
DOCUMENTS = 600
WORDS = "the quick brown fox jumps over the lazy dog while seven wizards quietly box a jovial sphinx".split()


def _texts(seed: int) -> list[str]:
    return [" ".join(WORDS[(seed + i * 7 + k) % len(WORDS)] for k in range(20 + (i * 5 + seed) % 40))
            for i in range(DOCUMENTS)]


def _lleval(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "lleval", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _finished_cells(prefix: Path) -> list[Path]:
    """The cell checkpoints (``PREFIX.MODEL__DATASET``) saved as complete (written atomically)."""
    done = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        if path.name.endswith(".tmp") or path.name.startswith("."):
            continue
        try:
            if json.loads(path.read_text()).get("complete") is True:
                done.append(path)
        except (OSError, json.JSONDecodeError):  # replaced between glob and read: look again next time
            continue
    return done


def _interrupt_after_first_cell(command: list[str], prefix: Path, timeout: float) -> tuple[int, str]:
    """Start ``command``, send SIGINT once a cell checkpoint says complete, and wait for it:
    its exit code and stderr."""
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not _finished_cells(prefix) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the suite ended before a SIGINT could be sent: {proc.communicate()}"
    assert _finished_cells(prefix), "no cell finished in time"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stderr


def _cells(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["model"], c["dataset"]): c for c in report["cells"]}


@pytest.mark.subprocess
def test_ctrl_c_writes_the_finished_cells_and_the_checkpoint_rerun_equals_an_uninterrupted_run(
    tiny_model_dir: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    data = [write_jsonl(tmp_path / "a.jsonl", _texts(0)), write_jsonl(tmp_path / "b.jsonl", _texts(3))]
    args = ["score", "-q", "-m", str(tiny_model_dir), "-m", str(tiny_llama_dir), "-d", data[0], "-d", data[1],
            "-L", "64", "--bootstrap", "0", "--block-tokens", "4096", "--format", "json"]
    full = subprocess.run(_lleval(args + ["-o", str(tmp_path / "full.json")]), env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    expected = _cells(json.loads((tmp_path / "full.json").read_text()))
    assert len(expected) == 4 and all(c["report"]["complete"] for c in expected.values())

    prefix, out = tmp_path / "suite.ckpt", tmp_path / "suite.json"
    command = _lleval(args + ["--checkpoint", str(prefix), "--checkpoint-every", "0", "-o", str(out)])
    code, stderr = _interrupt_after_first_cell(command, prefix, timeout=300)
    # the CLI's documented exit for a signal: 128 + its number (130 for SIGINT)
    assert code == 128 + signal.SIGINT, stderr
    interrupted = json.loads(out.read_text())
    assert interrupted["kind"] == "suite" and interrupted["complete"] is False
    assert any(f"{prefix}.MODEL__DATASET" in note for note in interrupted["notes"])  # how to resume
    cells = _cells(interrupted)
    assert 1 <= len(cells) < 4
    finished = {k: c for k, c in cells.items() if c["report"] is not None and c["report"]["complete"]}
    first = next(iter(expected))  # model-major: the first model's first dataset
    assert first in finished
    for key, cell in finished.items():
        assert cell["report"]["documents"] == expected[key]["report"]["documents"]
    # the cell that was running when Ctrl-C came (if the stop did not fall between cells) is
    # partial: the documents of its finished blocks, the first ones of the uninterrupted cell
    partial = [(k, c) for k, c in cells.items() if k not in finished]
    assert len(partial) <= 1 and len(finished) < 4
    for key, cell in partial:
        assert cell["report"]["complete"] is False
        docs = cell["report"]["documents"]
        assert docs == expected[key]["report"]["documents"][: len(docs)]

    resumed = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads(out.read_text())
    assert again["complete"] is True
    got = _cells(again)
    assert got.keys() == expected.keys()
    for key, cell in expected.items():
        assert got[key]["report"]["complete"] is True
        assert got[key]["report"]["documents"] == cell["report"]["documents"], key
        a, b = got[key]["report"]["totals"], cell["report"]["totals"]
        assert (a["tokens"], a["bytes"], a["documents"]) == (b["tokens"], b["bytes"], b["documents"])
        assert a["log_likelihood"] == pytest.approx(b["log_likelihood"], rel=1e-12, abs=0.0)
