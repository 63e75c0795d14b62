"""What the evaluations need to know of a frozen backbone: its kind and a description for results files."""

from __future__ import annotations

from typing import Any

from torch import nn

from dinossl.errors import CheckpointError


def require_vit(backbone: nn.Module) -> int:
    """The patch size of a ViT backbone; CheckpointError for a backbone without attention (ResNet)."""
    patch_size = getattr(backbone, "patch_size", None)
    if not hasattr(backbone, "last_selfattention") or not isinstance(patch_size, int):
        raise CheckpointError(f"a {type(backbone).__name__} backbone has no self-attention or patch tokens; "
                              "attention maps and video segmentation need a ViT checkpoint")
    return patch_size


def describe_backbone(backbone: nn.Module) -> dict[str, Any]:
    """Architecture facts for the results file."""
    info: dict[str, Any] = {"class": type(backbone).__name__,
                            "parameters": sum(p.numel() for p in backbone.parameters())}
    for attr in ("embed_dim", "patch_size"):
        if hasattr(backbone, attr):
            info[attr] = int(getattr(backbone, attr))
    if hasattr(backbone, "blocks"):
        info["depth"] = len(backbone.blocks)
    return info
