"""What the retrieval, copy-detection and dedupe commands share around their protocols: the
backbone to load (only after every input has been checked), its device, and how the weights are
identified in results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dinossl.errors import DinoError
from dinossl.eval.feature_cache import file_identity
from dinossl.eval.backbones import describe_backbone
from dinossl.runtime.cuda_settings import configure_cuda
from dinossl.runtime.device import resolve_device
from dinossl.weights import load_backbone

@dataclass(frozen=True)
class BackboneRun:
    """The backbone a command uses and how it runs over images."""

    weights: str
    which: str = "teacher"
    device: str = "auto"
    batch_size: int = 16
    num_workers: int = 4
    progress: bool = True
    tf32: bool = True  # on CUDA, fp32 matmuls and convolutions in TF32 (False: IEEE fp32)

    def __post_init__(self) -> None:
        if self.which not in ("teacher", "student"):
            raise DinoError(f"which must be teacher or student, got {self.which!r}")
        if self.batch_size < 1:
            raise DinoError(f"batch size must be positive, got {self.batch_size}")
        if self.num_workers < 0:
            raise DinoError(f"num_workers must be >= 0, got {self.num_workers}")

    def load(self) -> tuple[nn.Module, torch.device]:
        """(backbone in eval mode on its device, device). Call it after the input checks: it
        may download released weights."""
        device = resolve_device(self.device)
        configure_cuda(device, self.tf32)
        backbone = load_backbone(self.weights, which=self.which)
        return backbone.to(device).eval(), device

    def identity(self) -> dict[str, Any]:
        """What identifies the weights: the file (path, size, modification time) or the name/URL."""
        path = Path(self.weights)
        source = file_identity(path) if path.is_file() else {"source": str(self.weights)}
        return {**source, "which": self.which}

    def describe(self, backbone: nn.Module) -> dict[str, Any]:
        return {**self.identity(), "backbone": describe_backbone(backbone)}
