"""CPU accounting: cgroup quotas and affinity cap torch's thread count."""

from __future__ import annotations

from pathlib import Path

import pytest

from lleval import threads


@pytest.mark.parametrize(
    "content,expected", [("max 100000", None), ("200000 100000", 2.0), ("150000 100000", 1.5), ("garbage", None)]
)
def test_cgroup_v2_quota(tmp_path: Path, content: str, expected: float | None) -> None:
    (tmp_path / "cpu.max").write_text(content + "\n")
    assert threads.cgroup_cpu_limit(tmp_path) == expected


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == 3.0


def test_available_cpus_takes_the_smaller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 1.5)
    assert threads.available_cpus() == 2
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert threads.available_cpus() == 8


def test_cap_never_raises_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "available_cpus", lambda: before + 4)
    assert threads.cap_torch_threads() == before
    monkeypatch.setattr(threads, "available_cpus", lambda: 1)
    try:
        assert threads.cap_torch_threads() == 1
    finally:
        torch.set_num_threads(before)
