"""Where and in which arithmetic to run: device, autocast dtype, memory format."""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from pathlib import Path

import torch

from src.utils.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; an unavailable explicit device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"[Training] device = {name}: no CUDA device is available; use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("[Training] device = mps: MPS is not available here; use auto or cpu")
    return torch.device(name)


# oneDNN's ISA names (its "CPU Dispatcher Control" guide) at which it dispatches bf16 natively:
# AVX-512-BF16 and every level above it, under both the old names and their AVX10 aliases.
_BF16_ISAS = frozenset({"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
                        "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16"})
_UNCAPPED = frozenset({"", "ALL", "DEFAULT"})


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 convolutions natively: the CPU has AMX or AVX-512-BF16, and
    ONEDNN_MAX_CPU_ISA (or its older name DNNL_MAX_CPU_ISA) does not cap oneDNN below AVX512_CORE_BF16
    (a user who caps it at AVX2 gets emulated bf16, whatever the CPU's flags say)."""
    cap = onednn_isa_cap()
    return _cpu_flags_have_bf16() and (cap in _UNCAPPED or cap in _BF16_ISAS)


def onednn_isa_cap() -> str:
    """The ISA oneDNN is capped at by ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA), upper case; '' if none."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).strip().upper()


@lru_cache(maxsize=1)
def _cpu_flags_have_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Autocast dtype of an explicit `precision` (fp32, bf16, fp16) on `device`; float32 means no
    autocast. `auto` is measured per model: src/engine/precision.py."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"[Training] precision = fp16 needs a CUDA device (got {device.type}); use bf16 or fp32")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def use_channels_last(setting: str, dtype: torch.dtype) -> bool:
    return setting == "true" or (setting == "auto" and dtype != torch.float32)


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast context for `dtype`, or a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
