"""Data parallel under torchrun: a 2-process gloo run equals the single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_jsonl
from lleval.engine.scoring import assign_batches

BIN = Path(sys.executable).parent
TEXTS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 4) for i in range(9)]


def _data(tmp_path: Path) -> str:
    return write_jsonl(tmp_path / "d.jsonl", TEXTS)


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.distributed
def test_two_process_run_equals_single_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    args = ["score", "-m", str(tiny_model_dir), "-d", _data(tmp_path), "-L", "24", "-S", "8", "-b", "3", "-q"]
    # The README's command: torchrun --nproc-per-node 2 -m lleval score ...
    dist = _run([str(BIN / "torchrun"), "--nproc-per-node", "2", "-m", "lleval", *args, "-o", str(tmp_path / "dist.json")])
    assert dist.returncode == 0, dist.stderr
    single = _run([str(BIN / "lleval"), *args, "-o", str(tmp_path / "single.json")])
    assert single.returncode == 0, single.stderr
    a = json.loads((tmp_path / "dist.json").read_text())
    b = json.loads((tmp_path / "single.json").read_text())
    assert a["documents"] == b["documents"]  # identical per-document numbers
    assert a["totals"]["tokens"] == b["totals"]["tokens"]
    assert a["totals"]["log_likelihood"] == pytest.approx(b["totals"]["log_likelihood"], rel=1e-9)
    assert a["distributed"] == {"world_size": 2, "backend": "gloo", "work_split": "batches by token count"}
    assert b["distributed"] is None
    assert dist.stdout.count("lleval score") == 1  # only rank 0 rendered the table


@pytest.mark.distributed
def test_failing_rank_fails_the_job(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    helper = Path(__file__).parent / "helpers" / "fail_rank1.py"
    result = _run([
        str(BIN / "torchrun"), "--nproc-per-node", "2", str(helper),
        "score", "-m", str(tiny_model_dir), "-d", _data(tmp_path), "-L", "24", "-b", "1", "-q", "-o", str(out),
    ])
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stderr
    assert not out.exists()  # no report claims to be complete


@pytest.mark.parametrize("costs,world", [([5, 5, 5, 5], 2), ([9, 1, 1, 1, 1, 1], 2), ([3, 2, 2, 2], 3), ([], 2)])
def test_assign_batches_balances_load(costs: list[int], world: int) -> None:
    owner = assign_batches(costs, world)
    loads = [sum(c for c, o in zip(costs, owner) if o == r) for r in range(world)]
    assert sum(loads) == sum(costs)
    assert max(loads) - min(loads) <= (max(costs) if costs else 0)
    assert owner == assign_batches(costs, world)  # deterministic


@pytest.mark.distributed
def test_distributed_run_resumes_a_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    args = ["score", "-m", str(tiny_model_dir), "-d", _data(tmp_path), "-L", "24", "-S", "8", "-b", "3", "-q",
            "--block-tokens", "100", "--checkpoint", str(ckpt), "--checkpoint-every", "0"]
    single = _run([str(BIN / "lleval"), *args, "-o", str(tmp_path / "single.json")])
    assert single.returncode == 0, single.stderr
    # a finished checkpoint, resumed by two ranks: every row comes from it, nothing is rescored
    dist = _run([str(BIN / "torchrun"), "--nproc-per-node", "2", "-m", "lleval", *args, "-o", str(tmp_path / "d.json")])
    assert dist.returncode == 0, dist.stderr
    a = json.loads((tmp_path / "d.json").read_text())
    b = json.loads((tmp_path / "single.json").read_text())
    assert a["documents"] == b["documents"] and a["timing"]["batches"] == 0
