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
`half_matmul_speedup`, measured in the process that runs.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from pathlib import Path
from typing import Any

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


MATMUL_SIZE = 512  # a 512x512x512 matmul: 0.27 GFLOP, 1.3 ms at 2 Zen 5 cores' 212 GFLOP/s in float32
MATMUL_REPEATS = 3  # best of this many timed runs, after one warm-up
MATMUL_BUDGET_SECONDS = 0.02  # no second or third timed run of a dtype once this much time went to it
SLOWER_MARGIN = 1.2  # warn when the half dtype's matmul takes this many times float32's, or more


def _matmul_seconds(dtype: Any) -> float:
    """Best time of a `MATMUL_SIZE` square matmul in ``dtype``: one warm-up (kernel selection,
    packing, thread start-up), then one timed run and up to `MATMUL_REPEATS` in all while
    the budget lasts (a slow dtype costs two matmuls: 0.3 to 0.8 s for float16 on a
    loaded Zen 4)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator).to(dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator).to(dtype)
    started = time.perf_counter()
    torch.mm(a, b)
    warmup = time.perf_counter() - started
    timed: list[float] = []
    while not timed or (len(timed) < MATMUL_REPEATS and warmup + sum(timed) < MATMUL_BUDGET_SECONDS):
        tic = time.perf_counter()
        torch.mm(a, b)
        timed.append(time.perf_counter() - tic)
    return min(timed)


@functools.cache
def half_matmul_speedup(dtype_name: str) -> float:
    """float32's time over ``dtype_name``'s (``bfloat16`` or ``float16``) for a 512x512x512
    matmul on this CPU, measured once per process (a few ms on an idle CPU; two slow matmuls
    where the half dtype is emulated): above 1 the half dtype is faster, below 1 slower.

    Measured rather than read off ``/proc/cpuinfo``, because the flags do not
    say how slow the fallback is (see the module docstring: 1.6x end to end
    on a Zen 3, 6 to 9x for a float16 matmul on a Zen 4). It runs on the threads torch has
    then: the CLI caps them (`lleval.threads`) before any command runs, as for the run the
    figure describes.
    """
    import torch

    half = torch.bfloat16 if dtype_name == "bfloat16" else torch.float16
    float32 = _matmul_seconds(torch.float32)
    return float32 / max(_matmul_seconds(half), 1e-9)


def half_speed_sentence(dtype_name: str) -> str:
    """``measured here: bf16 matmul N.Nx slower than float32`` (or faster), for warnings and notes."""
    short = "bf16" if dtype_name == "bfloat16" else "fp16"
    speedup = half_matmul_speedup(dtype_name)
    if speedup >= 1:
        return f"measured here: {short} matmul {speedup:.1f}x faster than float32"
    return f"measured here: {short} matmul {1 / speedup:.1f}x slower than float32"


def half_is_slow(dtype_name: str) -> bool:
    """Whether ``dtype_name``'s matmul measured `SLOWER_MARGIN` times float32's time, or more."""
    return half_matmul_speedup(dtype_name) * SLOWER_MARGIN <= 1
