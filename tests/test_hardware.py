"""CPU feature detection and the half-precision warning it decides."""

from __future__ import annotations

import json
import math
import platform
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import torch

from lleval import hardware
from lleval.backends.hf import resolve_dtype

ZEN1 = "model name\t: AMD EPYC 7551\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
ZEN5 = "model name\t: AMD EPYC 9B45\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    """`cpu_features` and `half_matmul_speed` are cached per process: a test that feeds
    them stand-ins starts and ends with empty caches, so no other test sees its figures."""
    hardware.cpu_features.cache_clear()
    hardware.half_matmul_speed.cache_clear()
    yield
    hardware.cpu_features.cache_clear()
    hardware.half_matmul_speed.cache_clear()


def steady(speedup: float) -> hardware.HalfSpeed:
    """A stand-in measurement whose every round agrees."""
    return hardware.HalfSpeed(speedup, speedup, speedup, 15)


# expected flags written out from each text; a half-precision unit is named by its fastest
# flag (AMX before AVX512), None where the CPU has none
@pytest.mark.parametrize("text,name,flags,bf16,fp16", [
    (ZEN1, "AMD EPYC 7551", {"fpu", "sse", "sse2", "avx", "avx2", "fma"}, None, None),
    (ZEN5, "AMD EPYC 9B45", {"fpu", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, "avx512_bf16", None),
    (SAPPHIRE, "Intel(R) Xeon(R) Platinum 8481C", {"avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"},
     "amx_bf16", "avx512_fp16"),
    (GRAVITON, "aarch64", {"fp", "asimd", "bf16", "i8mm"}, "bf16", None),  # no model name line: the machine
])
def test_cpu_flags_name_the_half_precision_units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_caches: None,
                                                 text: str, name: str, flags: set[str], bf16: str | None,
                                                 fp16: str | None) -> None:
    (tmp_path / "cpuinfo").write_text(text)
    monkeypatch.setattr(platform, "processor", lambda: "")  # as on Linux, where it is usually empty
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert hardware.cpu_flags(tmp_path / "cpuinfo") == (name, frozenset(flags))
    read = hardware.cpu_flags
    monkeypatch.setattr(hardware, "cpu_flags", lambda: read(tmp_path / "cpuinfo"))
    features = hardware.cpu_features()
    assert (features["model"], features["bf16_matmul"], features["fp16_matmul"]) == (name, bf16, fp16)
    assert hardware.has_fast_half("bfloat16") == (bf16 is not None)
    assert hardware.has_fast_half("float16") == (fp16 is not None)


def test_the_first_flags_line_is_read(tmp_path: Path) -> None:
    """/proc/cpuinfo repeats a block per core: the first block's flags are the CPU's."""
    (tmp_path / "cpuinfo").write_text(ZEN5 + "\n" + ZEN1)
    assert hardware.cpu_flags(tmp_path / "cpuinfo")[1] == {"fpu", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"}


def test_no_cpuinfo_means_no_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "processor", lambda: "x86_64")
    assert hardware.cpu_flags(tmp_path / "missing") == ("x86_64", frozenset())


@pytest.mark.parametrize("dtype,speedup,message", [
    ("bfloat16", 1 / 1.6, "bf16 matmul 1.6x slower than float32"),
    ("bfloat16", 1 / 1.3, "bf16 matmul 1.3x slower than float32"),  # past the 1.2x margin
    ("bfloat16", 4.3, None), ("bfloat16", 1 / 1.1, None),  # faster; slower, but within the margin
    ("float16", 1 / 9.0, "fp16 matmul 9.0x slower than float32"), ("float32", 1 / 100, None),  # float32 is never timed
])
def test_half_precision_warns_only_where_it_measured_slower(monkeypatch: pytest.MonkeyPatch, dtype: str,
                                                            speedup: float, message: str | None) -> None:
    monkeypatch.setattr(hardware, "half_matmul_speed", lambda name: steady(speedup))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_dtype(dtype, "cpu") == getattr(torch, dtype)
    messages = [str(w.message) for w in caught]
    if message is None:
        assert messages == []
    else:  # one warning, with the measured figure
        assert len(messages) == 1 and message in messages[0], messages


def test_a_faster_half_precision_is_said_to_be_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "half_matmul_speed", lambda name: hardware.HalfSpeed(4.3, 4.1, 4.3, 15))
    assert hardware.half_speed_sentence("bfloat16") == ("measured here: bf16 matmul 4.3x faster than float32 "
                                                        "(4.1x to 4.3x over 15 rounds, one thread)")
    assert not hardware.half_is_slow("bfloat16")


# Fake timings (seconds) of interleaved rounds: float32 1.6 ms and bf16 0.3 ms when nothing
# else runs; a busy machine only lengthens some of them (a time is never shorter than the work).
QUIET = ([0.0016] * 9, [0.0003] * 9)
BUSY = ([0.0016, 0.0051, 0.0017, 0.0098, 0.0016, 0.0024, 0.0070, 0.0016, 0.0019],
        [0.0003, 0.0003, 0.0012, 0.0003, 0.0009, 0.0004, 0.0003, 0.0030, 0.0003])


@pytest.mark.parametrize("float32,half,speedup,low,high", [
    (*QUIET, 1.6 / 0.3, 1.6 / 0.3, 1.6 / 0.3),
    # the fastest half of the rounds (5 of 9), each dtype sorted: float32 16, 16, 16, 17, 19; bf16 3, 3, 3, 3, 3
    (*BUSY, 16 / 3, 16 / 3, 19 / 3),
    ([0.0016], [0.0030], 16 / 30, 16 / 30, 16 / 30),  # one round
])
def test_the_figure_divides_the_best_times_and_the_spread_the_fastest_half(
        float32: list[float], half: list[float], speedup: float, low: float, high: float) -> None:
    found = hardware.half_speed(float32, half)
    assert math.isclose(found.speedup, speedup) and math.isclose(found.low, low) and math.isclose(found.high, high)
    assert found.rounds == len(half)


def test_load_does_not_move_the_figure_nor_make_a_warning() -> None:
    """Per-round ratios of the busy timings run from 0.53 to 32: the figure stays that of the
    quiet machine, and a single slow half matmul (a round where bf16 looked 1.9x slower) warns
    of nothing."""
    quiet, busy = hardware.half_speed(*QUIET), hardware.half_speed(*BUSY)
    assert min(f / h for f, h in zip(*BUSY)) < 1 < 20 < max(f / h for f, h in zip(*BUSY))
    assert busy.speedup == quiet.speedup and not busy.clearly_slower
    assert busy.sentence("bfloat16").startswith("bf16 matmul 5.3x faster than float32 (5.3x to 6.3x")


@pytest.mark.parametrize("float32,half,slower", [
    ([0.001] * 5, [0.0016] * 5, True),  # 1.6x slower in every round
    ([0.001] * 5, [0.00125] * 5, True),  # 1.25x: past the margin
    ([0.001] * 5, [0.00115] * 5, False),  # 1.15x: within it
    # the best times say 1.6x slower, but the next fastest rounds say as fast: not clear, no warning
    ([0.0010, 0.0016, 0.0016, 0.0016, 0.0016], [0.0016] * 5, False),
])
def test_a_warning_needs_a_clear_measurement(float32: list[float], half: list[float], slower: bool) -> None:
    found = hardware.half_speed(float32, half)
    assert found.clearly_slower == slower
    if not slower and found.low < 1 < found.high:
        assert "about as fast as float32" in found.sentence("float16")


def test_the_measurement_is_made_once_per_process(monkeypatch: pytest.MonkeyPatch, fresh_caches: None) -> None:
    timed: list[Any] = []

    def fake_rounds(half: Any) -> tuple[list[float], list[float]]:
        timed.append(half)
        return [0.5] * 3, ([0.125] * 3 if half == torch.bfloat16 else [2.0] * 3)

    monkeypatch.setattr(hardware, "_timed_rounds", fake_rounds)
    assert hardware.half_matmul_speedup("bfloat16") == 4.0  # 0.5 s / 0.125 s: bf16 4x faster
    assert hardware.half_matmul_speed("bfloat16").rounds == 3
    assert timed == [torch.bfloat16]  # the second call was not timed again
    assert hardware.half_matmul_speedup("float16") == 0.25  # 0.5 s / 2 s: fp16 4x slower
    assert timed == [torch.bfloat16, torch.float16]
    assert hardware.half_is_slow("float16") and not hardware.half_is_slow("bfloat16")


class FakeClock:
    """A CPU clock that moves only when a matmul runs: ``cost[dtype]`` seconds each."""

    def __init__(self, cost: dict[Any, float]) -> None:
        self.now, self.cost, self.calls = 0.0, cost, []

    def __call__(self) -> float:
        return self.now

    def mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.calls.append(a.dtype)
        self.now += self.cost[a.dtype]
        return a


@pytest.mark.parametrize("cost,rounds", [
    ({torch.float32: 2**-10, torch.bfloat16: 2**-12}, hardware.MATMUL_ROUNDS),  # ~1 ms a round: every round
    ({torch.float32: 2**-6, torch.bfloat16: 2**-6}, hardware.MIN_ROUNDS),  # 31 ms a round: the budget after 5
    ({torch.float32: 2**-10, torch.bfloat16: 0.5}, 1),  # emulated: 500x float32's, one round says it
])
def test_the_rounds_stop_at_their_budget(monkeypatch: pytest.MonkeyPatch, cost: dict[Any, float], rounds: int) -> None:
    clock = FakeClock(cost)
    monkeypatch.setattr(torch, "mm", clock.mm)
    monkeypatch.setattr(hardware, "matmul_clock", lambda: clock)
    threads = torch.get_num_threads()
    float32, half = hardware._timed_rounds(torch.bfloat16)
    assert torch.get_num_threads() == threads  # one thread while timing, then as before
    assert len(float32) == len(half) == rounds
    assert float32 == [cost[torch.float32]] * rounds and half == [cost[torch.bfloat16]] * rounds
    # a warm-up of each, then the rounds, their order alternating
    assert clock.calls[:2] == [torch.float32, torch.bfloat16]
    expected = [d for k in range(rounds) for d in ((torch.float32, torch.bfloat16) if k % 2 == 0
                                                   else (torch.bfloat16, torch.float32))]
    assert clock.calls[2:] == expected


def test_the_clock_is_the_threads_cpu_time_where_it_is_fine() -> None:
    import time

    if time.get_clock_info("thread_time").resolution <= 1e-6:
        assert hardware.matmul_clock() is time.thread_time


@pytest.mark.parametrize("dtype,key", [("bfloat16", "bf16_matmul_speedup"), ("float16", "fp16_matmul_speedup")])
def test_a_half_precision_run_on_cpu_reports_the_measured_speed(tiny_llama_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, dtype: str,
                                                                 key: str) -> None:
    import jsonschema

    from helpers import write_jsonl
    from lleval.commands.score import evaluate
    from lleval.config import EvalConfig

    data = write_jsonl(tmp_path / "d.jsonl", ["The keeper wrote in the logbook every evening."])
    schema = json.loads((Path(hardware.__file__).parent / "schemas" / "score.schema.json").read_text())
    stand_in = hardware.HalfSpeed(0.25, 0.2, 0.3, 7)  # a figure the code cannot make up
    monkeypatch.setattr(hardware, "half_matmul_speed", lambda name: stand_in)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stand-in says 4x slower: the run warns
        half = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=data, dtype=dtype, device="cpu")).to_dict()
    full = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=data, dtype="float32", device="cpu")).to_dict()
    cpu = half["environment"]["cpu"]
    assert cpu[key] == 0.25  # the measurement, as measured (here: a stand-in)
    assert cpu[f"{key}_spread"] == [0.2, 0.3] and cpu[key.replace("speedup", "rounds")] == 7
    assert not {k for k in full["environment"]["cpu"] if "matmul_" in k and k not in ("bf16_matmul", "fp16_matmul")}
    for report in (half, full):
        jsonschema.validate(report, schema)


def test_cpu_description_names_the_generation_and_the_units(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nflags\t\t: fpu\n")
    described = hardware.cpu_description(info)
    assert described.startswith("AMD EPYC, family 25 model 17, ")
    assert described.endswith(" avx2 avx512f avx512_bf16")
    info.write_text("model name\t: Some CPU\nflags\t\t: fpu sse2\n")
    assert hardware.cpu_description(info).startswith("Some CPU, ") and hardware.cpu_description(info).endswith("no AVX2")
