"""Peak memory of a variant's training, per epoch, as trainer monitors.

On a GPU it is the peak of memory allocated by tensors on the training device
(``torch.cuda.max_memory_allocated``, what the paper's Table 8 reports per GPU); on a CPU it is
the peak resident set size of the process (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``), which also counts the Python process, the loaded images and the
libraries. Elsewhere nothing is reported.

The k-NN checks that run after an epoch are not training: :meth:`PeakMemory.monitors` gives
a monitor that reads the peak before them and one that resets it after them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from dinossl.train import Distiller, MonitorReport

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _rss_peak_bytes() -> Optional[int]:
    try:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _reset_rss_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set size
    except OSError:
        return False
    return True


class PeakMemory:
    """The training device's peak memory since the last reset."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.measurable = device.type == "cuda" or (_rss_peak_bytes() is not None and _reset_rss_peak())
        self.reset()

    @property
    def what(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "process_peak_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.measurable:
            _reset_rss_peak()

    def read(self) -> Optional[int]:
        """Peak bytes since the last reset (None where it cannot be measured)."""
        if not self.measurable:
            return None
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return _rss_peak_bytes()

    def monitors(self) -> tuple["_ReadPeak", "_ResetPeak"]:
        """(read, reset): put the first before and the second after the other monitors."""
        return _ReadPeak(self), _ResetPeak(self)


class _ReadPeak:
    """Logs ``{"kind": "memory", "epoch", "peak_bytes", "measure"}`` after each epoch."""

    def __init__(self, memory: PeakMemory) -> None:
        self.memory = memory

    def after_epoch(self, epoch: int, distiller: Distiller) -> Optional[MonitorReport]:
        peak = self.memory.read()
        if peak is None:
            return None
        return MonitorReport({"kind": "memory", "epoch": epoch, "peak_bytes": peak, "measure": self.memory.what})

    def after_training(self, distiller: Distiller) -> Optional[MonitorReport]:
        return None


class _ResetPeak:
    """Resets the peak after the other monitors of an epoch ran."""

    def __init__(self, memory: PeakMemory) -> None:
        self.memory = memory

    def after_epoch(self, epoch: int, distiller: Distiller) -> Optional[MonitorReport]:
        self.memory.reset()
        return None

    def after_training(self, distiller: Distiller) -> Optional[MonitorReport]:
        return None
