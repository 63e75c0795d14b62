"""Backbone + head applied to a list of crops, one backbone pass per crop resolution."""

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
    head then runs once on all features. A student may carry a ``predictor`` applied to the
    head's output (an ablation; its keys are ``predictor.*``, after the backbone's and head's).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, predictor: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.predictor = predictor

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """V crops of (B, 3, H_v, W_v) -> (V * B, K) logits, view-major."""
        features = [self.backbone(torch.cat(crops[a:b])) for a, b in group_by_resolution(crops)]
        logits = self.head(torch.cat(features))
        return logits if self.predictor is None else self.predictor(logits)
