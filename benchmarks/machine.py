"""What a benchmark records about the machine it ran on, and how it reads time and memory: CPU
model, threads, load, GPU name and properties, torch version; waiting for a device's queued
work; peak memory of this process (CUDA allocations on a GPU, resident set size on the CPU).
Every script in benchmarks/ takes these from here."""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (empty where the OS has none): a timing taken while
    they exceed ~0.5 on an otherwise idle machine is not one to report."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return []


def describe(device: torch.device) -> dict[str, Any]:
    """The machine, for a benchmark's JSON (with the GPU's capability, memory and CUDA/cuDNN
    versions when ``device`` is one)."""
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "load_average": load_average(),
    }
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        info.update(capability=f"{major}.{minor}",
                    memory_gb=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def resident_mb() -> float:
    """This process's current resident set size in MiB (Linux), else its peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_resident_mb()


def peak_resident_mb() -> float:
    """This process's peak resident set size in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a CUDA ``device`` (nothing to wait for elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> float:
    """Start measuring a peak: on a GPU, finish the queued work, reset CUDA's peak counters and
    return the MiB allocated now; on the CPU (whose process peak cannot be reset) return the
    resident set size now."""
    if device.type != "cuda":
        return resident_mb()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device) / 2**20


def peak_memory(device: torch.device) -> dict[str, Any]:
    """The peak since :func:`reset_peak_memory` on a GPU (``torch.cuda.max_memory_allocated``,
    and the allocator's reserved peak), the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
                "memory_kind": "cuda_max_allocated"}
    return {"peak_memory_mb": peak_resident_mb(), "memory_kind": "process_peak_rss"}
