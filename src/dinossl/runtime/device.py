"""Which device a process computes on."""

from __future__ import annotations

import torch

from dinossl.errors import DinoError

DEVICE_HELP = "auto (GPU when present), cpu, cuda, cuda:N"


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """"auto" -> this process's GPU when there is one, else the CPU; an explicit name is checked.

    Raises DinoError for a name torch does not know or a CUDA device that is not there.
    """
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError) as exc:
        raise DinoError(f"device {preference!r} is not a device name ({DEVICE_HELP})") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DinoError(f"device {preference}: no CUDA device is available")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def make_current(device: torch.device) -> torch.device:
    """Make a CUDA ``device`` this process's current device, so that work without an explicit
    index (kernels, the caching allocator, NCCL, ``torch.cuda`` queries) lands on it rather than
    on GPU 0; other devices are returned as they are."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
