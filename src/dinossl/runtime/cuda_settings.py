"""The process-wide CUDA switches a run sets on its device: the current device, cuDNN's
algorithm search and the arithmetic of float32 matmuls and convolutions (TF32 or IEEE).

TF32 tensor cores (compute capability >= 8.0) round the inputs of float32 matmuls and
convolutions to a 10-bit mantissa and accumulate in float32; IEEE keeps full float32. torch
2.x computes float32 matmuls in IEEE by default (convolutions in TF32); the reference's torch
versions (<= 1.11) used TF32 for both. Nothing here touches a CPU run.
"""

from __future__ import annotations

import torch

from dinossl.runtime.device import make_current


def fp32_arithmetic(tf32: bool) -> str:
    """torch's name for the float32 matmul/convolution mode: "tf32" or "ieee"."""
    return "tf32" if tf32 else "ieee"


def configure_cuda(device: torch.device, tf32: bool) -> None:
    """On a CUDA ``device``: make it current, turn on cuDNN autotuning (``cudnn.benchmark``: the
    fastest convolution algorithm per input shape, picked on first use, as the reference does)
    and compute float32 matmuls and convolutions in TF32 (``tf32``) or IEEE float32.
    A no-op on other devices."""
    if device.type != "cuda":
        return
    make_current(device)
    torch.backends.cudnn.benchmark = True
    mode = fp32_arithmetic(tf32)
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode
