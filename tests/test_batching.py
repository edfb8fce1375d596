"""--batch-size auto and the out-of-memory back-off: the batch shape follows the
memory budget, and no batching choice changes a number."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import document_sums, document_sums_and_stats, rel_close, stepwise_cheapest_runs, units_of, write_jsonl
from lleval.plan.batching import (
    AUTO_MAX_ROWS,
    CPU_BATCH_TOKENS,
    CPU_FORWARD_OVERHEAD_TOKENS,
    GPU_FORWARD_OVERHEAD_TOKENS,
    Batching,
    auto_batching,
    available_memory_bytes,
    bytes_per_token,
    _cheapest_runs,
    make_batches,
)
from lleval.cli import main
from lleval.config import EvalConfig
from lleval.errors import ConfigError
from lleval.engine.kernels import scorer_from_logits
from lleval.engine.scoring import EngineOptions, WindowTooLarge, score_units
from lleval.stream import Unit

VOCAB = 40


def _logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Causal fake: logits at t depend on tokens 0..t of the row only."""
    table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(3))
    return table[torch.cumsum(input_ids, dim=1) % VOCAB]


def _units() -> list[Unit]:
    return units_of([[(7 * i + 3 * j) % VOCAB for j in range(5 + 3 * i)] for i in range(12)], 8, 8)


def _failing_above(rows: int, calls: list[int]) -> Any:
    """A scorer that runs out of memory on any batch of more than ``rows`` windows."""
    inner = scorer_from_logits(_logits)

    def scorer(input_ids: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        calls.append(input_ids.shape[0])
        if input_ids.shape[0] > rows:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return inner(input_ids, *rest)

    return scorer


MEASURE_ACTIVATIONS = r"""
import json, torch
from transformers import LlamaConfig, LlamaForCausalLM
def hwm():
    with open("/proc/self/status") as h:
        return next(int(l.split()[1]) * 1024 for l in h if l.startswith("VmHWM:"))
config = LlamaConfig(vocab_size=320, hidden_size=512, intermediate_size=1536, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=8192)
model = LlamaForCausalLM(config).eval()
with torch.inference_mode():
    model.model(input_ids=torch.randint(0, 320, (1, 64)), use_cache=False)  # lazy initialisation
    with open("/proc/self/clear_refs", "w") as h:
        h.write("5")
    before = hwm()
    model.model(input_ids=torch.randint(0, 320, (1, 4096)), use_cache=False)
print(json.dumps({"bytes_per_token": (hwm() - before) / 4096}))
"""


@pytest.mark.subprocess
def test_bytes_per_token_bounds_the_measured_activations() -> None:
    """The estimate against the peak resident memory a real decoder's forward pass adds per
    token (measured in a fresh process, large blocks mmapped so that freed memory is not
    reused unseen): it must cover it, without overstating it more than 3x."""
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE_ACTIVATIONS], capture_output=True, text=True, env=env,
                         check=True, timeout=300)
    measured = json.loads(out.stdout.strip().splitlines()[-1])["bytes_per_token"]
    estimate = bytes_per_token(SimpleNamespace(hidden_size=512, intermediate_size=1536), 4)
    assert measured <= estimate <= 3 * measured, (measured, estimate)


def test_bytes_per_token_adds_held_logits_and_halves_for_bf16() -> None:
    config = SimpleNamespace(hidden_size=512, intermediate_size=1536)
    # the docstring's count: 2 x (4 x 512 + 3 x 1536) = 2 x 6,656 = 13,312 values, 4 bytes each
    assert bytes_per_token(config, 4) == 53_248
    # no width in the config: hidden 1,024, MLP 4 x 1,024: 2 x (4,096 + 12,288) x 4 = 131,072
    assert bytes_per_token(SimpleNamespace(), 4) == 131_072
    assert bytes_per_token(config, 2) * 2 == bytes_per_token(config, 4)
    assert bytes_per_token(config, 4, logits_held=1000) - bytes_per_token(config, 4) == 4 * 1000  # float32 logits
    gpt2 = SimpleNamespace(n_embd=512, n_inner=None)  # GPT-2 configs leave the MLP width to 4 x hidden
    assert bytes_per_token(gpt2, 4) == bytes_per_token(SimpleNamespace(hidden_size=512, intermediate_size=2048), 4)


def test_auto_batching_on_cpu_caps_tokens() -> None:
    per_token = 10_000  # bytes of activations per token: 40 MB of memory, a quarter of it, is 1,000 tokens
    small = auto_batching(per_token, False, available=40_000_000)
    assert small.max_batch_tokens == 1000
    assert small.batch_size == AUTO_MAX_ROWS and small.auto and small.overhead_tokens == CPU_FORWARD_OVERHEAD_TOKENS
    assert auto_batching(per_token, False, available=1 << 40).max_batch_tokens == CPU_BATCH_TOKENS
    assert auto_batching(None, False).max_batch_tokens == CPU_BATCH_TOKENS  # a fake model: no memory estimate
    assert small.budget_bytes == 10_000_000
    tight = auto_batching(per_token, False, available=1_000_000, max_length=512)
    assert tight.max_batch_tokens == 512  # 250,000 bytes hold 25 tokens, but one full window always fits


def test_auto_batching_on_gpu_uses_free_memory() -> None:
    plan = auto_batching(50_000, True, available=8 << 30)
    # 70% of 8 GiB free: 0.7 x 8,589,934,592 = 6,012,954,214.4 bytes, floored;
    # at 50,000 bytes a token, 6,012,954,214 / 50,000 = 120,259.08: 120,259 tokens
    assert plan.budget_bytes == 6_012_954_214
    assert plan.max_batch_tokens == 120_259
    assert plan.batch_size == AUTO_MAX_ROWS and plan.auto
    assert plan.overhead_tokens == GPU_FORWARD_OVERHEAD_TOKENS  # the GPU's cost of a pass, not the CPU's
    # a model that needs 1 GB a token: 6 tokens fit, but one full window always does
    assert auto_batching(10**9, True, available=8 << 30, max_length=2048).max_batch_tokens == 2048


def _greedy_sizes(widths: list[int], max_rows: int, budget: int) -> list[int]:
    """Batch sizes of greedy filling, longest first: a window joins the open batch while the
    batch stays within max_rows rows and budget padded tokens (its first window's width)."""
    sizes: list[int] = []
    first_width = 0
    for width in widths:
        if sizes and sizes[-1] < max_rows and (sizes[-1] + 1) * first_width <= budget:
            sizes[-1] += 1
        else:
            sizes.append(1)
            first_width = width
    return sizes


def _all_cuts(n: int) -> list[list[tuple[int, int]]]:
    """Every way to cut n sorted windows into runs of consecutive ones."""
    if n == 0:
        return [[]]
    return [cut + [(start, n)] for start in range(n) for cut in _all_cuts(start)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=9), st.integers(1, 5), st.integers(1, 200),
       st.integers(0, 40))
def test_batches_minimise_padding_plus_passes(lengths: list[int], max_rows: int, budget: int, overhead: int) -> None:
    """Against brute force over every cut of the sorted windows: the cheapest allowed cut
    (padded tokens + overhead per pass; at most max_rows rows and budget padded tokens,
    a lone window always allowed) costs what make_batches' cut costs."""
    batching = Batching(max_rows, budget, overhead_tokens=overhead)
    widths = sorted(lengths, reverse=True)

    def allowed(run: tuple[int, int]) -> bool:
        rows = run[1] - run[0]
        return rows == 1 or (rows <= max_rows and rows * widths[run[0]] <= budget)

    def cost(cut: list[tuple[int, int]]) -> int:
        return sum((end - start) * widths[start] + overhead for start, end in cut)

    best = min(cost(cut) for cut in _all_cuts(len(widths)) if all(allowed(run) for run in cut))
    batches = make_batches(lengths, batching)
    assert sorted(j for b in batches for j in b) == list(range(len(lengths)))  # every window once
    got = sum(len(b) * max(lengths[j] for j in b) + overhead for b in batches)
    if overhead:
        assert got == best
    else:  # no cost of a pass: filled greedily, longest first
        assert [len(b) for b in batches] == _greedy_sizes(widths, max_rows, budget)
        assert [lengths[j] for b in batches for j in b] == widths
    for b in batches:
        assert len(b) == 1 or (len(b) <= max_rows and len(b) * max(lengths[j] for j in b) <= budget)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=150), st.integers(1, 80), st.one_of(st.none(), st.integers(1, 3000)),
       st.integers(1, 300))
def test_blocked_planner_equals_the_stepwise_one(widths: list[int], max_rows: int, budget: int | None,
                                                 overhead: int) -> None:
    """The planner's blocked rewrite (PLAN_BLOCK ends per step) picks exactly the cut of the
    step-by-step loop it replaced, ties included, across block boundaries (up to 150
    windows, so several blocks) and with zero-width windows."""
    widths = sorted(widths, reverse=True)
    assert _cheapest_runs(widths, max_rows, budget, overhead) == stepwise_cheapest_runs(widths, max_rows, budget,
                                                                                        overhead)


def test_blocked_planner_on_a_gpu_sized_plan() -> None:
    """2,000 windows of mixed widths under a GPU budget (256 rows, a 4,096-token pass):
    the same cut as the stepwise loop, and every window in exactly one batch."""
    import random

    rng = random.Random(5)
    widths = sorted((rng.choice([20, 20, 20, 7, 13, 2048, 1]) for _ in range(2000)), reverse=True)
    runs = _cheapest_runs(widths, AUTO_MAX_ROWS, 780_000, GPU_FORWARD_OVERHEAD_TOKENS)
    assert runs == stepwise_cheapest_runs(widths, AUTO_MAX_ROWS, 780_000, GPU_FORWARD_OVERHEAD_TOKENS)
    assert [start for start, _ in runs[1:]] == [end for _, end in runs[:-1]] and runs[-1][1] == len(widths)


def test_greedy_batches_fill_longest_first() -> None:
    lengths = [5, 9, 3, 9, 7, 1]
    assert make_batches(lengths, Batching(2, None)) == [[1, 3], [4, 0], [2, 5]]
    assert make_batches(lengths, Batching(4, 20)) == [[1, 3], [4, 0], [2, 5]]  # 3 x 9 > 20; 2 x 7 <= 20


def test_a_long_window_runs_alone_and_short_ones_share() -> None:
    lengths = [2000, 480, 470] + [30] * 40
    batching = auto_batching(None, False)
    assert (batching.max_batch_tokens, batching.overhead_tokens) == (1024, 32)  # what the figures below assume
    batches = make_batches(lengths, batching)
    assert batches[0] == [0]  # longer than the budget: alone, as at batch size 1
    assert [1, 2] in batches  # 2 x 480 <= 1,024, and 10 tokens of padding cost less than a pass
    small = [b for b in batches if lengths[b[0]] == 30]
    assert len(small) == 2  # as few passes as the budget allows: 1,024 // 30 = 34 a pass, 40 need 2
    assert sum(len(b) for b in small) == 40


def test_available_memory_reads_meminfo_and_cgroup(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  100 kB\nMemAvailable:  2000 kB\n")
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    assert available_memory_bytes(meminfo, cgroup) == 2000 * 1024
    (cgroup / "memory.max").write_text("1500000\n")
    (cgroup / "memory.current").write_text("1000000\n")
    assert available_memory_bytes(meminfo, cgroup) == 500_000
    (cgroup / "memory.max").write_text("max\n")
    assert available_memory_bytes(meminfo, cgroup) == 2000 * 1024
    assert available_memory_bytes(tmp_path / "missing", tmp_path / "none") is None


def test_out_of_memory_splits_once_and_changes_no_number() -> None:
    expected = document_sums(scorer_from_logits(_logits), _units(), EngineOptions(Batching(1)))
    calls: list[int] = []
    got, stats = document_sums_and_stats(_failing_above(3, calls), _units(), EngineOptions(Batching(12)))
    assert [(r.index, r.tokens) for r in got] == [(r.index, r.tokens) for r in expected]
    for a, b in zip(got, expected):
        assert rel_close(a.log_likelihood, b.log_likelihood, 1e-6)
    # 12 -> 6 -> 3: two splits, then every later piece is run at 3 rows without failing again
    assert stats.oom_splits == 2
    assert calls[:3] == [12, 6, 3] and all(n <= 3 for n in calls[3:])


def test_a_single_window_out_of_memory_is_a_typed_error() -> None:
    with pytest.raises(WindowTooLarge) as info:
        list(score_units(_failing_above(0, []), _units(), EngineOptions(Batching(4))))
    assert info.value.tokens == 8


def test_config_accepts_auto_only() -> None:
    EvalConfig(batch_size="auto").validate()
    with pytest.raises(ConfigError, match="batch_size"):
        EvalConfig(batch_size="big").validate()
    with pytest.raises(ConfigError, match="batch_size"):
        EvalConfig(batch_size=0).validate()


def test_cli_batch_size_auto_matches_fixed(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "docs.jsonl", [f"Document {i}: " + "words and more words. " * i for i in range(1, 9)])
    reports = {}
    for size in ("AUTO", "1"):  # the word is taken in any case
        result = CliRunner().invoke(
            main, ["score", "--model", str(tiny_model_dir), "--dataset", data, "--batch-size", size,
                   "--format", "json", "--quiet", "--bootstrap", "0"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        reports[size] = json.loads(result.stdout)
    auto, one = reports["AUTO"], reports["1"]
    assert auto["timing"]["batching"]["auto"] is True
    # the tiny GPT-2 needs 2 x (4 x 16 + 3 x 64) x 4 = 2,048 bytes a token: the CPU cap's 1,024
    # tokens are 2 MiB, within a quarter of any machine's free memory, so the cap holds
    assert auto["timing"]["batching"]["max_batch_tokens"] == CPU_BATCH_TOKENS
    assert auto["timing"]["batches"] < one["timing"]["batches"]
    assert auto["totals"]["tokens"] == one["totals"]["tokens"]
    assert rel_close(auto["totals"]["log_likelihood"], one["totals"]["log_likelihood"], 1e-6)


def test_cli_rejects_a_bad_batch_size(tiny_model_dir: Path) -> None:
    result = CliRunner().invoke(main, ["score", "--model", str(tiny_model_dir), "--batch-size", "lots"])
    assert result.exit_code == 2
    assert "neither a number of windows nor 'auto'" in result.output


def test_window_too_large_is_a_scoring_error_with_advice(tiny_loaded: Any, tmp_path: Path) -> None:
    import dataclasses

    from lleval.commands.score import evaluate
    from lleval.errors import ScoringError

    data = write_jsonl(tmp_path / "docs.jsonl", ["A short document about rivers."])
    loaded = dataclasses.replace(tiny_loaded, scorer=_failing_above(0, []))
    with pytest.raises(ScoringError, match="single window of .* tokens: lower --max-length"):
        evaluate(EvalConfig(dataset=data, bootstrap=0), loaded=loaded)


def test_config_file_takes_auto(tmp_path: Path) -> None:
    from lleval.config import load_config_file

    path = tmp_path / "c.yaml"
    path.write_text("batch-size: auto\nmax-batch-tokens: 4096\n")
    assert load_config_file(path) == {"batch_size": "auto", "max_batch_tokens": 4096}


def test_dtype_auto_is_bf16_only_on_gpus_that_support_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from lleval.backends.hf import resolve_dtype

    assert resolve_dtype("auto", "cpu") is torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda:0") is torch.bfloat16
    assert resolve_dtype("auto", "mps") is torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda") is torch.float32


def test_an_accelerator_whose_free_memory_is_unknown_gets_the_cpu_rule() -> None:
    """A backend that says it runs on a GPU but cannot say how much memory is free: the CPU
    rule (a 1,024-token budget for a fake without an estimate), not a zero budget."""
    assert auto_batching(None, True, None) == auto_batching(None, False, None)
    assert auto_batching(None, True, None).max_batch_tokens == CPU_BATCH_TOKENS
