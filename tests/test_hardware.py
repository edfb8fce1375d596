"""CPU feature detection and the half-precision warning it decides."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from lleval import hardware
from lleval.model import resolve_dtype

ZEN1 = "model name\t: AMD EPYC 7551\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
ZEN5 = "model name\t: AMD EPYC 9B45\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


@pytest.mark.parametrize("text,name,bf16,fp16", [
    (ZEN1, "AMD EPYC 7551", None, None),
    (ZEN5, "AMD EPYC 9B45", "avx512_bf16", None),
    (SAPPHIRE, "Intel(R) Xeon(R) Platinum 8481C", "amx_bf16", "avx512_fp16"),
    (GRAVITON, None, "bf16", None),
])
def test_cpu_flags_name_the_half_precision_units(tmp_path: Path, text: str, name: str | None, bf16: str | None,
                                                 fp16: str | None) -> None:
    (tmp_path / "cpuinfo").write_text(text)
    model, flags = hardware.cpu_flags(tmp_path / "cpuinfo")
    if name is not None:
        assert model == name
    assert next((f for f in hardware.BF16_FLAGS if f in flags), None) == bf16
    assert next((f for f in hardware.FP16_FLAGS if f in flags), None) == fp16


def test_no_cpuinfo_means_no_flags(tmp_path: Path) -> None:
    assert hardware.cpu_flags(tmp_path / "missing")[1] == frozenset()


@pytest.mark.parametrize("flag,dtype,warns", [
    (None, "bfloat16", True), ("avx512_bf16", "bfloat16", False), ("amx_bf16", "bfloat16", False),
    (None, "float16", True), (None, "float32", False),
])
def test_half_precision_warns_exactly_where_the_cpu_lacks_units(monkeypatch: pytest.MonkeyPatch, flag: str | None,
                                                                 dtype: str, warns: bool) -> None:
    features = {"model": "x", "capability": "AVX2", "bf16_matmul": flag, "fp16_matmul": None}
    monkeypatch.setattr(hardware, "cpu_features", lambda: features)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_dtype(dtype, "cpu") == getattr(torch, dtype)
    assert bool(caught) == warns, [str(w.message) for w in caught]
    if warns:
        assert "no " + dtype in str(caught[0].message)
