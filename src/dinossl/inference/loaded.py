"""A backbone ready to compute: the module in eval mode on its device, with the precision it
computes in, and the passes that run it over image batches."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable, Iterator, Optional, TypeVar

import torch
from torch import nn

from dinossl.inference.batches import ComputedBatch, indexed_batches
from dinossl.inference.outputs import BackboneOutputs, forward_outputs

T = TypeVar("T")
Compute = Callable[[nn.Module, torch.Tensor], T]


def backbone_output(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, D) float32: the backbone's own output (ViT [CLS]; ResNet pooled)."""
    return backbone(images).float()


@dataclass(frozen=True)
class LoadedBackbone:
    """``module`` (eval mode) on ``device``; ``dtype``: the autocast dtype of its forward
    passes (None: float32)."""

    module: nn.Module
    device: torch.device
    dtype: Optional[torch.dtype] = None

    @property
    def patch_size(self) -> Optional[int]:
        """The ViT patch size, None for a backbone without patches (ResNet)."""
        patch = getattr(self.module, "patch_size", None)
        return int(patch) if isinstance(patch, int) else None

    def autocast(self) -> ContextManager:
        """The precision context of a forward pass (a no-op for float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def apply(self, compute: Compute[T], images: torch.Tensor) -> T:
        """``compute(module, images)`` with the images on the device, in the backbone's
        precision, without gradients."""
        with self.autocast():
            return compute(self.module, images.to(self.device, non_blocking=True))

    def cls(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) float32 global descriptors on the device."""
        return self.apply(backbone_output, images)

    def outputs(self, images: torch.Tensor, patch_tokens: bool = False, attention: bool = False) -> BackboneOutputs:
        """(B, 3, H, W) -> :class:`BackboneOutputs` (CLS, and the patch tokens / attention asked for)."""
        return self.apply(lambda module, x: forward_outputs(module, x, patch_tokens, attention), images)

    def over(self, loader: Iterable, compute: Compute[T] = backbone_output, progress: bool = False,
             label: str = "images") -> Iterator[ComputedBatch[T]]:
        """Run ``compute`` on every readable batch of a loader of (images, labels, indices)
        (:func:`~dinossl.inference.batches.image_loader`), in order; the module stays in eval
        mode for the pass and gets its former mode back afterwards."""
        was_training = self.module.training
        self.module.eval()
        try:
            for images, labels, indices in indexed_batches(loader, progress, label):
                yield ComputedBatch(indices, labels, self.apply(compute, images))
        finally:
            self.module.train(was_training)

    def collect(self, loader: Iterable, compute: Compute[torch.Tensor] = backbone_output, progress: bool = False,
                label: str = "images") -> ComputedBatch[torch.Tensor]:
        """Every readable image's (n, ...) ``compute`` result, concatenated on the CPU in loader
        order, with labels (n,) and dataset indices (n,); n = 0 when nothing was readable."""
        parts = list(self.over(loader, lambda m, x: compute(m, x).float().cpu(), progress, label))
        if not parts:
            empty = torch.empty(0, dtype=torch.long)
            return ComputedBatch(empty, empty, torch.empty(0))
        return ComputedBatch(torch.cat([p.indices for p in parts]), torch.cat([p.labels for p in parts]),
                             torch.cat([p.values for p in parts]))
