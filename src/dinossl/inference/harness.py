"""The one backbone harness: what backbone a command uses (weights, teacher or student), on
which device, in which precision, and how its images are batched; loading it after the
command's input checks; and what identifies it in results files and feature caches.

Every evaluation, ``dino attention``, ``dino dedupe`` and the feature commands go through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dinossl.errors import DinoError
from dinossl.inference.batches import collate_indexed, image_loader
from dinossl.inference.identity import describe_backbone, local_weights, weights_identity, weights_sha256
from dinossl.inference.loaded import LoadedBackbone
from dinossl.runtime.cores import cap_workers
from dinossl.runtime.cuda_settings import configure_cuda
from dinossl.runtime.device import resolve_device
from dinossl.runtime.precision import resolve_precision
from dinossl.weights import load_backbone

NETWORKS = ("teacher", "student")
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class BackboneHarness:
    """A frozen backbone and how it runs over images (settings only; :meth:`load` builds it)."""

    weights: str | Path  # training checkpoint, backbone file, released name, URL or hf-hub:ORG/NAME
    which: str = "teacher"  # network of a training checkpoint
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    precision: str = "fp32"  # forward passes: fp32, bf16 (autocast) or auto (bf16 where native)
    tf32: bool = True  # on CUDA, fp32 matmuls and convolutions in TF32 (False: IEEE fp32)
    batch_size: int = 16  # images per forward pass
    num_workers: int = 4  # image-decoding processes (capped at the available cores)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.which not in NETWORKS:
            raise DinoError(f"which must be teacher or student, got {self.which!r}")
        if self.precision not in PRECISIONS:
            raise DinoError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.batch_size < 1:
            raise DinoError(f"batch size must be positive, got {self.batch_size}")
        if self.num_workers < 0:
            raise DinoError(f"num_workers must be >= 0, got {self.num_workers}")

    @property
    def workers(self) -> int:
        """Loader worker processes: ``num_workers`` capped at the available cores."""
        return cap_workers(self.num_workers)

    def resolve_device(self) -> torch.device:
        """The device (a DinoError for a bad name or a missing GPU; nothing is downloaded)."""
        return resolve_device(self.device)

    def load(self, device: Optional[torch.device] = None) -> LoadedBackbone:
        """The backbone in eval mode on ``device`` (default: the harness's device; under torchrun
        pass the process's device). Call it after the command's input checks: it may download
        released weights."""
        device = device if device is not None else self.resolve_device()
        return self.place(self.load_module(), device)

    def load_module(self) -> nn.Module:
        """The backbone module (eval mode, on the CPU) before a device is chosen, e.g. to check
        it fits the settings before joining a process group."""
        return load_backbone(self.weights, which=self.which)

    def place(self, module: nn.Module, device: torch.device) -> LoadedBackbone:
        """``module`` in eval mode on ``device`` with the harness's precision and CUDA switches."""
        dtype = resolve_precision(self.precision, device, "precision")
        configure_cuda(device, self.tf32)
        return LoadedBackbone(module.to(device).eval(), device, dtype)

    def loader(self, dataset: Dataset, device: torch.device | str = "cpu", collate=collate_indexed) -> DataLoader:
        """In-order batches of ``dataset`` with the harness's batch size and workers."""
        return image_loader(dataset, self.batch_size, self.num_workers, device, collate)

    def identity(self) -> dict[str, Any]:
        """What identifies the weights cheaply (file path, size, modification time; or the
        name/URL) and the network: feature-cache and index keys."""
        return weights_identity(self.weights, self.which)

    def describe(self, backbone: LoadedBackbone | nn.Module) -> dict[str, Any]:
        """The ``weights`` record of a results file: identity, the file's SHA-256, the
        architecture and the precision."""
        module = backbone.module if isinstance(backbone, LoadedBackbone) else backbone
        record = {**self.identity(), "backbone": describe_backbone(module)}
        if local_weights(self.weights) is not None:
            record["sha256"] = weights_sha256(self.weights)
        if self.precision != "fp32":
            record["precision"] = self.precision
        return record
