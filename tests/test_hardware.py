"""CPU feature detection and the half-precision warning it decides."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from lleval import hardware
from lleval.backends.hf import resolve_dtype

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


@pytest.mark.parametrize("dtype,speedup,warns", [
    ("bfloat16", 1 / 1.6, True), ("bfloat16", 4.3, False), ("bfloat16", 1 / 1.1, False),  # within the margin
    ("float16", 1 / 9.0, True), ("float32", 1 / 100, False),
])
def test_half_precision_warns_only_where_it_measured_slower(monkeypatch: pytest.MonkeyPatch, dtype: str,
                                                            speedup: float, warns: bool) -> None:
    monkeypatch.setattr(hardware, "half_matmul_speedup", lambda name: speedup)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_dtype(dtype, "cpu") == getattr(torch, dtype)
    assert bool(caught) == warns, [str(w.message) for w in caught]
    if warns:  # the figure is the measured one
        assert f"matmul {1 / speedup:.1f}x slower than float32" in str(caught[0].message)


def test_the_matmul_is_timed_once_per_process() -> None:
    hardware.half_matmul_speedup.cache_clear()
    first = hardware.half_matmul_speedup("bfloat16")
    assert 0 < first < float("inf") and hardware.half_matmul_speedup("bfloat16") == first
    assert hardware.half_matmul_speedup.cache_info().misses == 1


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
    monkeypatch.setattr(hardware, "half_matmul_speedup", lambda name: 0.25)  # a figure the code cannot make up
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stand-in says 4x slower: the run warns
        half = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=data, dtype=dtype, device="cpu")).to_dict()
    full = evaluate(EvalConfig(model=str(tiny_llama_dir), dataset=data, dtype="float32", device="cpu")).to_dict()
    assert half["environment"]["cpu"][key] == 0.25  # the measurement, as measured (here: a stand-in)
    assert not {"bf16_matmul_speedup", "fp16_matmul_speedup"} & set(full["environment"]["cpu"])
    for report in (half, full):
        jsonschema.validate(report, schema)
