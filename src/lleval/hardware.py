"""What this machine's CPU can do fast: detected, and for half precision measured.

bfloat16 on a CPU is a trade whose sign depends on the chip: CPUs with bf16
dot-product units (AVX512-BF16 on AMD Zen 4/5 and Intel Cooper Lake, AMX on
Intel Sapphire Rapids and later) run bf16 matmuls several times faster than
float32 (4.3x measured on a 2-core AMD EPYC Zen 5: 920 vs 215 GFLOP/s; 6.6x
on a Sapphire Rapids with AMX: 2,156 vs 325). Without them the cost depends
on the CPU and on torch's kernels: a tester's 2-core AVX2-only EPYC Zen 3
scored SmolLM2 in bf16 1.6x slower than in float32 (17.8 vs 28.3 tokens/s),
and float16 ran a 512x512x512 matmul 6 to 9x slower than float32 (2 cores
shared with other work) on an AMD EPYC Zen 4 that has AVX512-BF16 but no
AVX512-FP16, where bf16 ran it about 2x faster. So the ``/proc/cpuinfo`` flags are only
the quick signal (`cpu_features`); what lleval warns about and reports is
`half_matmul_speed`, measured in the process that runs: interleaved rounds on one thread,
the best times divided and the rounds' spread kept, so that a busy machine does not
turn the figure into noise (six runs once read 2.44, 30.6, 0.52, 3.97, 1.18 and 2.01).
"""

from __future__ import annotations

import functools
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

# /proc/cpuinfo flags (x86) and Features (arm64) that mean native half-precision matmul units
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
FP16_FLAGS = ("amx_fp16", "avx512_fp16", "fphp")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags, from ``/proc/cpuinfo`` (empty where there is none)."""
    name, flags = platform.processor() or platform.machine(), frozenset[str]()
    try:
        text = cpuinfo.read_text()
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and value.strip():
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return name, flags


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """One line naming the CPU for a benchmark's figures: model name, family and model numbers
    (which tell AMD's Zen generations apart where the name is just "AMD EPYC"), the cores this
    process may use, and its widest vector and half-precision units."""
    name, flags = cpu_flags(cpuinfo)
    numbers: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("cpu family", "model") and key.strip() not in numbers:
                numbers[key.strip()] = value.strip()
    except OSError:
        pass
    units = [f for f in ("avx2", "avx512f", *BF16_FLAGS) if f in flags]
    family = f", family {numbers['cpu family']} model {numbers['model']}" if len(numbers) == 2 else ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}{family}, {cores} cores, {' '.join(units) or 'no AVX2'}"


@functools.cache
def cpu_features() -> dict[str, Any]:
    """The report's ``environment.cpu`` block: model, torch's vector unit, and which half
    precisions have native matmul units (the flag that says so, or None)."""
    import torch

    name, flags = cpu_flags()
    return {
        "model": name,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_matmul": next((f for f in BF16_FLAGS if f in flags), None),
        "fp16_matmul": next((f for f in FP16_FLAGS if f in flags), None),
    }


def has_fast_half(dtype_name: str) -> bool:
    """Whether this CPU has native matmul units for ``bfloat16`` or ``float16``."""
    key = "bf16_matmul" if dtype_name == "bfloat16" else "fp16_matmul"
    return cpu_features()[key] is not None


MATMUL_SIZE = 512  # a 512x512x512 matmul: 0.27 GFLOP, 1.6 ms on one Sapphire Rapids core in float32
MATMUL_ROUNDS = 15  # interleaved pairs (float32, half) timed at most
MIN_ROUNDS = 5  # pairs timed at least, unless the half dtype is plainly emulated (`EMULATED_FACTOR`)
MATMUL_BUDGET_SECONDS = 0.1  # of CPU time: no further pair past it (about 25 ms on a Sapphire Rapids core)
WALL_BUDGET_SECONDS = 0.5  # nor once this much wall time went (a machine so busy the process hardly runs)
EMULATED_FACTOR = 10.0  # a half matmul 10x float32's CPU time (emulated): no load makes that, one pair says it
SLOWER_MARGIN = 1.2  # warn when the half dtype's matmul takes this many times float32's, or more


@dataclass(frozen=True)
class HalfSpeed:
    """How fast a half precision's matmul runs against float32's on this CPU.

    ``speedup`` is float32's best time over the half dtype's best time (above 1: the half
    dtype is faster). ``low`` and ``high`` bound how far it moves when other fast rounds are
    taken: the least and greatest ratio of the i-th fastest float32 time to the i-th fastest
    half time, over the fastest half of the rounds (``speedup`` is the first of them);
    ``rounds`` how many rounds were timed.
    """

    speedup: float
    low: float
    high: float
    rounds: int

    @property
    def clearly_slower(self) -> bool:
        """Slower by `SLOWER_MARGIN` or more in every ratio of the spread: a warning then says
        something about the CPU, not about the load on it."""
        return self.high * SLOWER_MARGIN <= 1

    def sentence(self, dtype_name: str) -> str:
        """``bf16 matmul 5.8x faster than float32 (5.5x to 6.1x over 15 rounds, one thread)``,
        ``... 1.6x slower ...``, or ``about as fast as`` where the rounds disagree."""
        short = "bf16" if dtype_name == "bfloat16" else "fp16"
        over = f"over {self.rounds} round{'' if self.rounds == 1 else 's'}, one thread"
        if self.low >= 1:
            return (f"{short} matmul {self.speedup:.1f}x faster than float32 ({self.low:.1f}x to {self.high:.1f}x "
                    f"{over})")
        if self.high <= 1:
            return (f"{short} matmul {1 / self.speedup:.1f}x slower than float32 ({1 / self.high:.1f}x to "
                    f"{1 / self.low:.1f}x slower {over})")
        return (f"{short} matmul about as fast as float32 ({self.low:.2f}x to {self.high:.2f}x float32's speed "
                f"{over})")


def half_speed(float32_seconds: Sequence[float], half_seconds: Sequence[float]) -> HalfSpeed:
    """The `HalfSpeed` of timed rounds (``float32_seconds[k]`` and ``half_seconds[k]`` are round
    k's two matmuls): the best times divided, since load can only lengthen a time, and the
    spread of the same ratio over the fastest half of the rounds."""
    fastest = zip(sorted(float32_seconds), sorted(half_seconds))
    ratios = [f / max(h, 1e-9) for f, h in list(fastest)[: (len(half_seconds) + 1) // 2]]
    return HalfSpeed(ratios[0], min(ratios), max(ratios), len(half_seconds))


def matmul_clock() -> Any:
    """The clock the matmuls are timed on: this thread's CPU time where it is fine-grained
    (Linux, macOS), else the wall clock (Windows counts thread time in 15.6 ms steps).

    CPU time, because a matmul that another process preempts takes longer on the wall
    clock but not in CPU time: on a 2-core Sapphire Rapids shared with other work (load 10)
    and a busy loop, rounds timed on the wall clock read 3x to 360x, on the thread's CPU
    time 2.6x to 6.8x."""
    return time.thread_time if time.get_clock_info("thread_time").resolution <= 1e-6 else time.perf_counter


def _stop(rounds: int, cpu: float, wall: float, float32: list[float], half: list[float]) -> bool:
    """Whether the timing has what it needs: `MATMUL_ROUNDS`; or `MIN_ROUNDS` and the budget
    spent; or a budget spent on a half dtype `EMULATED_FACTOR` times slower (one pair says so)."""
    spent = cpu >= MATMUL_BUDGET_SECONDS or wall >= WALL_BUDGET_SECONDS
    emulated = min(half) >= EMULATED_FACTOR * min(float32)
    return rounds >= MATMUL_ROUNDS or (spent and (rounds >= MIN_ROUNDS or emulated))


def _timed_rounds(half: Any) -> tuple[list[float], list[float]]:
    """Seconds of each round's float32 and ``half`` matmul (`MATMUL_SIZE` square), on one thread
    and its CPU time (`matmul_clock`), after one warm-up of each (kernel selection, packing):
    the order alternates from round to round; rounds go on until `_stop`.

    One thread, because with two threads on a 2-core Sapphire Rapids shared with other work
    float32's best time followed the other work (5 to 7 ms against 1.6 ms on one thread) and
    the figure read 14x to 21x run to run (26x with a busy loop on the other core)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a32 = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator)
    b32 = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator)
    pairs = {"float32": (a32, b32), "half": (a32.to(half), b32.to(half))}
    times: dict[str, list[float]] = {"float32": [], "half": []}
    clock, threads = matmul_clock(), torch.get_num_threads()
    torch.set_num_threads(1)  # the matmul then runs in this thread, whose CPU time `clock` reads
    try:
        cpu, wall = clock(), time.perf_counter()
        for a, b in pairs.values():
            torch.mm(a, b)
        while not times["half"] or not _stop(len(times["half"]), clock() - cpu, time.perf_counter() - wall,
                                             times["float32"], times["half"]):
            for name in (("float32", "half") if len(times["half"]) % 2 == 0 else ("half", "float32")):
                tic = clock()
                torch.mm(*pairs[name])
                times[name].append(clock() - tic)
    finally:
        torch.set_num_threads(threads)
    return times["float32"], times["half"]


@functools.cache
def half_matmul_speed(dtype_name: str) -> HalfSpeed:
    """How fast ``dtype_name`` (``bfloat16`` or ``float16``) runs a `MATMUL_SIZE` matmul against
    float32 on this CPU, measured once per process (15 interleaved rounds, about 30 ms of CPU
    on a Sapphire Rapids; an emulated half dtype stops after one round, two of its matmuls).

    Measured rather than read off ``/proc/cpuinfo``, because the flags do not
    say how slow the fallback is (see the module docstring: 1.6x end to end
    on a Zen 3, 6 to 9x for a float16 matmul on a Zen 4).
    """
    import torch

    return half_speed(*_timed_rounds(torch.bfloat16 if dtype_name == "bfloat16" else torch.float16))


def half_matmul_speedup(dtype_name: str) -> float:
    """float32's time over ``dtype_name``'s for a matmul on this CPU (`half_matmul_speed`)."""
    return half_matmul_speed(dtype_name).speedup


def half_speed_sentence(dtype_name: str) -> str:
    """``measured here: bf16 matmul N.Nx slower than float32 (...)`` (or faster), for warnings and notes."""
    return f"measured here: {half_matmul_speed(dtype_name).sentence(dtype_name)}"


def half_is_slow(dtype_name: str) -> bool:
    """Whether ``dtype_name``'s matmul measured clearly slower than float32's (`HalfSpeed.clearly_slower`)."""
    return half_matmul_speed(dtype_name).clearly_slower
