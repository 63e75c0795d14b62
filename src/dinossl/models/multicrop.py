"""Backbone + head applied to a list of crops: one backbone pass per crop resolution, or one
pass for all of them (``pack_views``, ViTs)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def group_by_resolution(crops: list[torch.Tensor]) -> list[tuple[int, int]]:
    """[(start, end)) ranges of consecutive crops sharing a spatial size."""
    groups: list[tuple[int, int]] = []
    start = 0
    for index in range(1, len(crops) + 1):
        if index == len(crops) or crops[index].shape[-2:] != crops[start].shape[-2:]:
            groups.append((start, index))
            start = index
    return groups


class MultiCropNetwork(nn.Module):
    """Student or teacher network of DINO: ``head(backbone(crop))`` for every crop.

    Crops of equal resolution are concatenated and run through the backbone together; the
    head then runs once on all features. With ``pack_views`` (a backbone with
    ``forward_packed``: the ViT), the resolutions share one backbone pass as well: their token
    sequences are packed into one batch (same result, up to float rounding and the order of
    drop-path's random draws). A student may carry a ``predictor`` applied to the head's output
    (an ablation; its keys are ``predictor.*``, after the backbone's and head's).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, predictor: Optional[nn.Module] = None,
                 pack_views: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.predictor = predictor
        self.pack_views = pack_views

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """V crops of (B, 3, H_v, W_v) -> (V * B, K) logits, view-major."""
        batches = [torch.cat(crops[a:b]) for a, b in group_by_resolution(crops)]
        if self.pack_views and len(batches) > 1 and hasattr(self.backbone, "forward_packed"):
            logits = self.head(self.backbone.forward_packed(batches))
        else:
            logits = self.head(torch.cat([self.backbone(batch) for batch in batches]))
        return logits if self.predictor is None else self.predictor(logits)
