"""Where a transformers model runs and in which dtype: the device and dtype policy of
the transformers backend.

``auto`` is resolved here (CUDA, else MPS, else CPU; bfloat16 only on a CUDA GPU that
supports it), a half dtype asked for on a CPU is timed and warned about, a device map's
placement is named, and a float32 conversion is cast to the dtype asked for. torch is
imported inside each function: only a model being loaded needs it.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from lleval.errors import ConfigError


def resolve_device(device: str) -> str:
    """``auto`` means CUDA, else MPS, else CPU; an unavailable device is a `ConfigError`."""
    import torch

    local_rank = os.environ.get("LOCAL_RANK")
    if device in ("auto", "cuda") and torch.cuda.is_available() and local_rank is not None:
        return f"cuda:{int(local_rank)}"  # one device per rank under torchrun / accelerate
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device. Use --device cpu.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for, but MPS is not available here. Use --device cpu.")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto``: bfloat16 on CUDA GPUs that support it, float32 everywhere else (float32
    is exact and the same on every CPU). bf16/fp16 asked for on a CPU times a small
    matmul in that dtype against float32 (`lleval.hardware.half_matmul_speed`, tens of
    ms) and warns, with the figure, only where the half dtype measured clearly slower, by
    `lleval.hardware.SLOWER_MARGIN` or more in most rounds: how much slower depends on the
    CPU (1.6x end to end on an AVX2 Zen 3), and CPUs with bf16 units run it faster."""
    import torch

    from lleval.hardware import half_is_slow, half_speed_sentence

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if device == "cpu" and dtype != "float32" and half_is_slow(dtype):
        warnings.warn(
            f"{dtype} on this CPU: {half_speed_sentence(dtype)}: a 512x512x512 matmul, timed just now, "
            "so scoring in it is likely slower too. Use --dtype float32.",
            stacklevel=2,
        )
    return table[dtype]


def device_name(placed: Any) -> str:
    """A device of accelerate's placement by name: it gives a GPU as its index (``0``)."""
    return f"cuda:{placed}" if isinstance(placed, int) or str(placed).isdigit() else str(placed)


def free_memory(device: str) -> Any:
    """Bytes free on a CUDA device, asked when batches are sized (the first device of a map)."""
    import torch

    first = torch.device(device.split(",")[0])
    return lambda: int(torch.cuda.mem_get_info(first)[0])


def cast_parameters(model: Any, dtype: Any) -> Any:
    """``model``'s floating-point parameters cast to ``dtype`` in place, as ``from_pretrained``
    with that dtype loads them: buffers (rotary frequencies) stay as they are, and so do the
    modules transformers keeps in float32 (``_keep_in_fp32_modules_strict``, and for
    float16 ``_keep_in_fp32_modules``); ``model.to(dtype)`` would cast the buffers too."""
    import torch

    keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float16:
        keep |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, param in model.named_parameters():
        if param.is_floating_point() and not keep & set(name.split(".")):
            param.data = param.data.to(dtype)
    return model
