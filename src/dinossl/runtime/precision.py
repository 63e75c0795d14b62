"""Numeric precision of a run: the autocast dtype for a precision name on a device."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import torch

from dinossl.errors import DinoError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# /proc/cpuinfo flags of x86 CPUs whose vector units multiply bf16 natively (oneDNN's bf16 matmul
# then runs at several times the fp32 rate: AVX512-BF16 on AMD Zen 4/5 and Intel Cooper Lake,
# AMX on Intel Sapphire Rapids and later).
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of the first processor listed in ``cpuinfo`` (empty where unreadable,
    e.g. off Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this machine's CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16) and torch
    has oneDNN to use it."""
    return torch.backends.mkldnn.is_available() and bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS)


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes matmuls in bf16 natively: a GPU of compute capability >= 8.0,
    or a CPU with AVX512-BF16 or AMX.

    ``torch.cuda.is_bf16_supported()`` also answers True for GPUs that only emulate bf16 (e.g. sm75)
    and asks about the current device rather than the run's; the capability of ``device`` is what counts.
    """
    if device.type == "cpu":
        return cpu_has_native_bf16()
    if device.type != "cuda":
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def mps_has_bf16(device: torch.device) -> bool:
    """Whether the Apple-silicon GPU computes in bf16 (macOS 14 or newer): a one-element probe."""
    try:
        torch.ones(1, device=device, dtype=torch.bfloat16).add_(1)
    except (RuntimeError, TypeError):
        return False
    return True


def resolve_precision(precision: str, device: torch.device, setting: str = "train.precision") -> Optional[torch.dtype]:
    """Autocast dtype, or None for fp32.

    "auto": bf16 on GPUs and CPUs with native bf16 (compute capability >= 8.0; AVX512-BF16 or
    AMX), fp16 (with a gradient scaler) on older GPUs, fp32 on other CPUs and on Apple-silicon
    GPUs (mps). fp16 needs a CUDA or an Apple-silicon GPU; bf16 on an Apple-silicon GPU needs
    macOS 14 or newer. Under autocast the DINO loss, its softmaxes and center, and the teacher's
    EMA stay fp32 (the parameters themselves are fp32). ``setting`` names the field in error
    messages.
    """
    if precision not in PRECISIONS:
        raise DinoError(f"{setting} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if has_native_bf16(device) else torch.float16
        return torch.bfloat16 if has_native_bf16(device) else None  # a CPU with bf16 units; mps: fp32
    if precision == "fp16" and device.type not in ("cuda", "mps"):
        raise DinoError(f"{setting}=fp16 needs a CUDA or Apple-silicon (mps) GPU; use bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "mps" and not mps_has_bf16(device):
        raise DinoError(f"{setting}=bf16: this Apple-silicon GPU has no bf16 (macOS 14 or newer); use fp16 or fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16
