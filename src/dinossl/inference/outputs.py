"""What one forward pass of a frozen backbone gives for a batch of images: the global
descriptor ([CLS]; a ResNet's pooled output), optionally the last block's patch tokens and the
[CLS] -> patch attention of the last block, per head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from dinossl.errors import CheckpointError
from dinossl.inference.identity import require_vit


@dataclass
class BackboneOutputs:
    """One batch's outputs, float32, on the backbone's device.

    ``cls``: (B, D). ``patch_tokens``: (B, h * w, D), row-major over the (h, w) ``grid``.
    ``attention``: (B, heads, h, w) softmaxed [CLS] attention over the patch keys (the [CLS]
    key and other prefix tokens left out, so a map sums to < 1)."""

    cls: torch.Tensor
    patch_tokens: Optional[torch.Tensor] = None
    attention: Optional[torch.Tensor] = None
    grid: Optional[tuple[int, int]] = None


def patch_grid(backbone: nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """(rows, columns) of a ViT's patch grid for (B, 3, H, W) images; H and W must be multiples
    of the patch size."""
    patch = require_vit(backbone)
    height, width = images.shape[-2:]
    if height % patch or width % patch:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {patch}")
    return height // patch, width // patch


def last_tokens(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, prefix + h * w, D) tokens of the last block after the final norm."""
    if not hasattr(backbone, "intermediate_layers"):
        raise CheckpointError(f"a {type(backbone).__name__} backbone has no patch tokens; patch features need a ViT")
    return backbone.intermediate_layers(images, 1)[0]


def patch_tokens(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, h * w, D) last-block patch tokens (prefix tokens dropped), row-major."""
    rows, cols = patch_grid(backbone, images)
    tokens = last_tokens(backbone, images)[:, int(getattr(backbone, "num_prefix_tokens", 1)):]
    if tokens.shape[1] != rows * cols:
        raise RuntimeError(f"expected {rows * cols} patch tokens, the backbone gave {tokens.shape[1]}")
    return tokens


def cls_attention(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, heads, h, w) [CLS] attention of the last block over the patch keys."""
    rows, cols = patch_grid(backbone, images)
    try:
        attention = backbone.last_selfattention(images, cls_only=True)
    except TypeError as exc:
        raise CheckpointError(str(exc)) from exc
    maps = attention[:, :, 0, int(getattr(backbone, "num_prefix_tokens", 1)):]
    if maps.shape[-1] != rows * cols:
        raise RuntimeError(f"expected {rows * cols} patch tokens, the backbone gave {maps.shape[-1]}")
    return maps.reshape(images.shape[0], -1, rows, cols)


def forward_outputs(backbone: nn.Module, images: torch.Tensor, with_patch_tokens: bool = False,
                    with_attention: bool = False) -> BackboneOutputs:
    """The outputs asked for, float32. Without patch tokens, ``cls`` is the backbone's own
    output; with them, one pass gives both (``cls`` = the [CLS] token of that pass)."""
    grid = None
    if with_patch_tokens:
        grid = patch_grid(backbone, images)
        tokens = last_tokens(backbone, images).float()
        prefix = int(getattr(backbone, "num_prefix_tokens", 1))
        cls, patches = tokens[:, 0], tokens[:, prefix:]
    else:
        cls, patches = backbone(images).float(), None
    attention = None
    if with_attention:
        grid = patch_grid(backbone, images)
        attention = cls_attention(backbone, images).float()
    return BackboneOutputs(cls, patches, attention, grid)
