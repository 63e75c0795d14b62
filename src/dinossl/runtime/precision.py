"""Numeric precision of a run: the autocast dtype for a precision name on a device."""

from __future__ import annotations

from typing import Optional

import torch

from dinossl.errors import DinoError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` is a GPU whose tensor cores compute in bf16 (compute capability >= 8.0).

    ``torch.cuda.is_bf16_supported()`` also answers True for GPUs that only emulate bf16 (e.g. sm75)
    and asks about the current device rather than the run's; the capability of ``device`` is what counts.
    """
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

    "auto": bf16 on GPUs with native bf16, fp16 (with a gradient scaler) on older GPUs, fp32 on
    CPUs and on Apple-silicon GPUs (mps). fp16 needs a CUDA or an Apple-silicon GPU; bf16 on an
    Apple-silicon GPU needs macOS 14 or newer. ``setting`` names the field in error messages.
    """
    if precision not in PRECISIONS:
        raise DinoError(f"{setting} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if has_native_bf16(device) else torch.float16
    if precision == "fp16" and device.type not in ("cuda", "mps"):
        raise DinoError(f"{setting}=fp16 needs a CUDA or Apple-silicon (mps) GPU; use bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "mps" and not mps_has_bf16(device):
        raise DinoError(f"{setting}=bf16: this Apple-silicon GPU has no bf16 (macOS 14 or newer); use fp16 or fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16
