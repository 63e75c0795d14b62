"""What a results file records about where it was computed: the machine and the versions of
the software that computed it."""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from dinossl import __version__
from dinossl.runtime.cores import available_cores


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def machine_record() -> dict[str, Any]:
    """Operating system, architecture, processor, usable cores and the CUDA GPUs (names)."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"system": platform.system(), "architecture": platform.machine(), "processor": cpu_model(),
            "cores": available_cores(), "gpus": gpus}


def versions_record() -> dict[str, str]:
    """Versions of dinossl, Python, torch, torchvision (when installed) and numpy."""
    return {"dinossl": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__}
