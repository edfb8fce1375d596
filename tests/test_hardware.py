"""CPU feature detection and the half-precision warning it decides."""

from __future__ import annotations

import json
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
    """`cpu_features` and `half_matmul_speedup` are cached per process: a test that feeds
    them stand-ins starts and ends with empty caches, so no other test sees its figures."""
    hardware.cpu_features.cache_clear()
    hardware.half_matmul_speedup.cache_clear()
    yield
    hardware.cpu_features.cache_clear()
    hardware.half_matmul_speedup.cache_clear()


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
    monkeypatch.setattr(hardware, "half_matmul_speedup", lambda name: speedup)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_dtype(dtype, "cpu") == getattr(torch, dtype)
    messages = [str(w.message) for w in caught]
    if message is None:
        assert messages == []
    else:  # one warning, with the measured figure
        assert len(messages) == 1 and message in messages[0], messages


def test_a_faster_half_precision_is_said_to_be_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "half_matmul_speedup", lambda name: 4.3)
    assert hardware.half_speed_sentence("bfloat16") == "measured here: bf16 matmul 4.3x faster than float32"
    assert not hardware.half_is_slow("bfloat16")


def test_the_speedup_is_float32_time_over_half_time_measured_once(monkeypatch: pytest.MonkeyPatch,
                                                                  fresh_caches: None) -> None:
    timed: list[Any] = []
    seconds = {torch.float32: 0.5, torch.bfloat16: 0.125, torch.float16: 2.0}  # stand-in times

    def fake_seconds(dtype: Any) -> float:
        timed.append(dtype)
        return seconds[dtype]

    monkeypatch.setattr(hardware, "_matmul_seconds", fake_seconds)
    assert hardware.half_matmul_speedup("bfloat16") == 4.0  # 0.5 s / 0.125 s: bf16 4x faster
    assert hardware.half_matmul_speedup("bfloat16") == 4.0
    assert timed == [torch.float32, torch.bfloat16]  # the second call was not timed again
    assert hardware.half_matmul_speedup("float16") == 0.25  # 0.5 s / 2 s: fp16 4x slower
    assert timed == [torch.float32, torch.bfloat16, torch.float32, torch.float16]
    assert hardware.half_is_slow("float16") and not hardware.half_is_slow("bfloat16")


@pytest.mark.parametrize("tick,runs", [
    (2**-10, 1 + 3),  # ~1 ms a matmul: the warm-up, then all 3 timed runs (warm-up + 2 runs ~2.9 ms < 20 ms)
    (2**-6, 1 + 1),  # ~16 ms: the warm-up and one timed run reach ~31 ms > the 20 ms budget: no second run
])
def test_the_matmul_timing_stops_at_its_budget(monkeypatch: pytest.MonkeyPatch, tick: float, runs: int) -> None:
    """A clock that advances ``tick`` seconds (a power of two: exact sums) per matmul and
    not otherwise: every timed run takes ``tick``, the best of them too."""
    clock = [0.0]
    calls: list[torch.Tensor] = []

    def fake_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(a)
        clock[0] += tick
        return a

    monkeypatch.setattr(torch, "mm", fake_mm)
    monkeypatch.setattr(hardware, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    assert hardware._matmul_seconds(torch.float32) == tick
    assert len(calls) == runs
    assert calls[0].shape == (hardware.MATMUL_SIZE, hardware.MATMUL_SIZE) and calls[0].dtype == torch.float32


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
