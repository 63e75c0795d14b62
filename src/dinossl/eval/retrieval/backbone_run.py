"""What the retrieval, copy-detection and dedupe commands share around their protocols: the
backbone to load (only after every input has been checked), its device, how the weights are
identified in results, and the default output folder name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dinossl.errors import DinoError
from dinossl.eval.feature_cache import file_identity
from dinossl.eval.inputs import describe_backbone
from dinossl.weights import load_backbone

_GENERIC_STEMS = ("checkpoint", "teacher_backbone", "student_backbone", "backbone", "model", "weights")


def resolve_device(preference: str) -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU; DinoError for an unavailable GPU."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as exc:
        raise DinoError(f"unknown device {preference!r} (auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DinoError(f"device {preference}: no CUDA device is available")
    return device


def weights_label(weights: str | Path, which: str = "teacher") -> str:
    """A short name for the weights in folder names: the file stem (with its folder's name when
    the stem is generic, e.g. run-checkpoint), a URL's file stem, or a released name."""
    text = str(weights)
    path = Path(text.rstrip("/").split("?")[0])
    label = path.stem if path.suffix else path.name
    if path.is_file() and label in _GENERIC_STEMS and path.resolve().parent.name:
        label = f"{path.resolve().parent.name}-{label}"
    if which == "student":
        label += "-student"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label) or "weights"


def default_output(command: str, data_label: str, weights: str | Path, which: str = "teacher") -> Path:
    """``<command>-<data>-<weights>`` in the current folder, so runs on other data or weights do
    not collide."""
    data = re.sub(r"[^A-Za-z0-9._-]+", "_", data_label) or "data"
    return Path(f"{command}-{data}-{weights_label(weights, which)}")


def data_label(path: str | Path) -> str:
    """The name of a data folder (its resolved name for '.' and the like)."""
    path = Path(path)
    return path.name or path.resolve().name


@dataclass(frozen=True)
class BackboneRun:
    """The backbone a command uses and how it runs over images."""

    weights: str
    which: str = "teacher"
    device: str = "auto"
    batch_size: int = 16
    num_workers: int = 4
    progress: bool = True

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
        backbone = load_backbone(self.weights, which=self.which)
        return backbone.to(device).eval(), device

    def identity(self) -> dict[str, Any]:
        """What identifies the weights: the file (path, size, modification time) or the name/URL."""
        path = Path(self.weights)
        source = file_identity(path) if path.is_file() else {"source": str(self.weights)}
        return {**source, "which": self.which}

    def describe(self, backbone: nn.Module) -> dict[str, Any]:
        return {**self.identity(), "backbone": describe_backbone(backbone)}
