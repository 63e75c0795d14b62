"""ResNet-50 backbone from torchvision with the classifier removed."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet


class ResNetBackbone(ResNet):
    """torchvision ResNet-50 returning globally average-pooled features (B, 2048).

    ``fc`` is an Identity, so the state dict is torchvision's ``resnet50`` without ``fc``,
    the layout of the released DINO ResNet-50 weights.
    """

    def __init__(self) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3])
        self.embed_dim = self.fc.in_features
        self.fc = nn.Identity()

    def intermediate_layers(self, images: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Only the pooled output exists for a ResNet: [(B, 1, 2048)] for n = 1."""
        if n != 1:
            raise ValueError("a ResNet backbone gives only its pooled output (n = 1)")
        return [self(images).unsqueeze(1)]

    def last_selfattention(self, images: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        raise TypeError("a ResNet backbone has no self-attention; use a ViT checkpoint")


def build_resnet50() -> ResNetBackbone:
    """Randomly initialised ResNet-50 trunk."""
    return ResNetBackbone()
