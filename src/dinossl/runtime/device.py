"""Which device a process computes on: a CUDA GPU, an Apple-silicon GPU (MPS) or the CPU."""

from __future__ import annotations

import torch

from dinossl.errors import DinoError

DEVICE_HELP = "auto (a CUDA GPU, else an Apple-silicon GPU (mps), else the CPU), cpu, cuda, cuda:N or mps"


def mps_available() -> bool:
    """Whether torch can compute on an Apple-silicon GPU here (Metal Performance Shaders)."""
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def _mps_missing() -> str:
    backend = getattr(torch.backends, "mps", None)
    if backend is None or not backend.is_built():
        return "this torch was built without MPS support (Apple-silicon GPUs need torch for macOS on arm64)"
    return "no Apple-silicon GPU is available (MPS needs macOS 12.3 or newer on an M-series Mac)"


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """"auto" -> this process's CUDA GPU when there is one, else the Apple-silicon GPU (mps)
    when there is one, else the CPU; an explicit name is checked.

    Raises DinoError for a name torch does not know or a GPU that is not there.
    """
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{local_rank}")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError) as exc:
        raise DinoError(f"device {preference!r} is not a device name ({DEVICE_HELP})") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DinoError(f"device {preference}: no CUDA device is available")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    elif device.type == "mps":
        if not mps_available():
            raise DinoError(f"device {preference}: {_mps_missing()}")
        device = torch.device("mps")
    return device


def make_current(device: torch.device) -> torch.device:
    """Make a CUDA ``device`` this process's current device, so that work without an explicit
    index (kernels, the caching allocator, NCCL, ``torch.cuda`` queries) lands on it rather than
    on GPU 0; other devices are returned as they are."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
