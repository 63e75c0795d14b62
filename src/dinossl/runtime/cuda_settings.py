"""The process-wide CUDA switches a run sets on its device: the current device, cuDNN's
algorithm search and the arithmetic of float32 matmuls and convolutions (TF32 or IEEE).

TF32 tensor cores (compute capability >= 8.0) round the inputs of float32 matmuls and
convolutions to a 10-bit mantissa and accumulate in float32; IEEE keeps full float32. torch
2.x computes float32 matmuls in IEEE by default (convolutions in TF32); the reference's torch
versions (<= 1.11) used TF32 for both. Nothing here touches a CPU run.

The switches are set through the long-standing API only (``torch.set_float32_matmul_precision``
and ``torch.backends.cudnn.allow_tf32``), never through the ``fp32_precision`` attributes that
torch 2.9 added: once a program sets one of those, torch (up to at least 2.14) raises on every
read through the older API ("mix of the legacy and new APIs"), and inductor, cuDNN helpers and
other libraries still read it (``torch.get_float32_matmul_precision()``,
``torch.backends.cuda.matmul.allow_tf32``). Setting the older API keeps both readable.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from dinossl.runtime.device import make_current


def matmul_precision(tf32: bool) -> str:
    """``torch.set_float32_matmul_precision``'s name for the float32 matmul mode: "high" (TF32)
    or "highest" (IEEE float32)."""
    return "high" if tf32 else "highest"


def fp32_arithmetic(tf32: bool) -> str:
    """The float32 matmul/convolution mode in words: "tf32" or "ieee"."""
    return "tf32" if tf32 else "ieee"


def set_fp32_arithmetic(tf32: bool) -> None:
    """Float32 matmuls and cuDNN convolutions in TF32 (``tf32``) or IEEE float32, process-wide."""
    torch.set_float32_matmul_precision(matmul_precision(tf32))
    torch.backends.cudnn.allow_tf32 = tf32


def configure_cuda(device: torch.device, tf32: bool) -> None:
    """On a CUDA ``device``: make it current, turn on cuDNN autotuning (``cudnn.benchmark``: the
    fastest convolution algorithm per input shape, picked on first use, as the reference does)
    and compute float32 matmuls and convolutions in TF32 (``tf32``) or IEEE float32.
    A no-op on other devices."""
    if device.type != "cuda":
        return
    make_current(device)
    torch.backends.cudnn.benchmark = True
    set_fp32_arithmetic(tf32)


@contextlib.contextmanager
def ieee_float32_matmuls() -> Iterator[None]:
    """Float32 matmuls in IEEE float32 inside the block, whatever a run chose (TF32 would round
    the operands to 10 mantissa bits: pixel arithmetic would be off by a fraction of a grey
    level); the previous setting is restored. Where a library has mixed torch's two precision
    APIs (so the setting cannot be read) it is left as it is."""
    try:
        previous = torch.get_float32_matmul_precision()
    except RuntimeError:
        previous = "highest"
    if previous == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
