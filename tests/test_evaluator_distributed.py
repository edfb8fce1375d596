"""The evaluator under torchrun, in the training's own process group (2 CPU ranks, gloo): DDP
(each rank scores its share) and FSDP2 (every rank scores every batch) equal one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_jsonl

BIN = Path(sys.executable).parent
HELPER = Path(__file__).parent / "helpers" / "evaluator_ranks.py"
TEXTS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 4) for i in range(9)]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.distributed
@pytest.mark.parametrize("wrap", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process(wrap: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    single = _run([sys.executable, str(HELPER), str(tiny_model_dir), data, str(tmp_path / "single")])
    assert single.returncode == 0, single.stderr
    ranks = _run([str(BIN / "torchrun"), "--nproc-per-node", "2", str(HELPER), str(tiny_model_dir), data,
                  str(tmp_path / "ranks"), wrap])
    assert ranks.returncode == 0, ranks.stderr
    alone = json.loads((tmp_path / "single.0").read_text())
    for rank in (0, 1):  # every rank gets the totals
        report = json.loads((tmp_path / f"ranks.{rank}").read_text())
        assert report["documents"] == alone["documents"] and report["totals"] == alone["totals"]
        assert report["model"]["step"] == 5 and report["model"]["parameters"] == alone["model"]["parameters"]
        if wrap == "ddp":
            assert report["distributed"] == {"world_size": 2, "backend": "gloo", "work_split": "batches by token count"}
        else:  # FSDP's forward gathers the shards: every rank ran every batch, as one process does
            assert report["distributed"]["world_size"] == 2 and report["distributed"]["work_split"].startswith("none")
            assert report["timing"]["batches"] == alone["timing"]["batches"]
    assert alone["distributed"] is None
