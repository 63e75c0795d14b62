"""How the C library's allocator hands large host buffers to torch (CPU tensors).

glibc serves every allocation above 32 MiB (its largest ``mmap`` threshold) with a fresh
``mmap`` and returns it to the system on free; the next tensor of that size then touches new
pages, one page fault per 4 KiB. A CPU training step of DINO allocates and frees several such
tensors (the (V * B, K) logits, their gradient, the (K, d) gradient of the prototypes), so a
step spends a noticeable part of its time in page faults rather than in arithmetic.

``retain`` tells glibc to serve all allocations from its heap and to keep freed heap memory
for reuse (``mallopt``: no mmap, no trimming), as a caching allocator does: the process's
resident memory then stays at its peak instead of shrinking between steps. ``system`` keeps
the C library's defaults. Elsewhere than glibc (macOS, musl) both mean the defaults.
"""

from __future__ import annotations

import ctypes
import logging
import platform

import torch

from dinossl.config import HOST_ALLOCATORS

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: trim only when 2 GiB lie free at the heap's top

log = logging.getLogger("dinossl")


def uses_glibc() -> bool:
    """Whether this process runs on GNU libc (the only C library whose allocator is tuned here)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def retain_freed_memory() -> bool:
    """Serve all of this process's allocations from glibc's heap and keep freed memory for
    reuse; True if applied, False where the C library is not glibc or refused a setting.
    Affects allocations from now on (and processes forked later, e.g. data-loader workers)."""
    if not uses_glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))


def configure_host_allocator(setting: str, device: torch.device) -> bool:
    """Apply ``train.host_allocator``: ``retain`` (:func:`retain_freed_memory`), ``system``
    (nothing), ``auto`` (retain when the run computes on the CPU). Returns whether memory is
    now retained."""
    if setting not in HOST_ALLOCATORS:
        raise ValueError(f"unknown host allocator {setting!r}; choose from {', '.join(HOST_ALLOCATORS)}")
    wanted = setting == "retain" or (setting == "auto" and device.type == "cpu")
    if not wanted:
        return False
    applied = retain_freed_memory()
    if not applied and setting == "retain":
        log.warning("train.host_allocator=retain has no effect here: the C library is not glibc")
    return applied
