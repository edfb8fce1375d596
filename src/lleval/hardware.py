"""What this machine's CPU can do fast, detected rather than assumed.

bfloat16 on a CPU is a trade whose sign depends on the chip: CPUs with bf16
dot-product units (AVX512-BF16 on AMD Zen 4/5 and Intel Cooper Lake, AMX on
Intel Sapphire Rapids and later) run bf16 matmuls several times faster than
float32 (4.3x measured on a 2-core AMD EPYC Zen 5: 920 vs 215 GFLOP/s; 6.6x
on a Sapphire Rapids with AMX: 2,156 vs 325), while CPUs without them
emulate bf16 about 100x slower than float32 (an AVX2-only EPYC Zen 1). The
same holds for float16 with AVX512-FP16 / AMX-FP16.
"""

from __future__ import annotations

import functools
import platform
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
