"""ResNet-50 backbone from torchvision with the classifier removed."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from dinossl.models.pretrained_cfg import evaluation_cfg


class ResNetBackbone(ResNet):
    """torchvision ResNet-50 returning globally average-pooled features (B, 2048).

    ``fc`` is an Identity, so the state dict is torchvision's ``resnet50`` without ``fc``,
    the layout of the released DINO ResNet-50 weights. ``options`` go to torchvision's
    ``ResNet`` (e.g. ``zero_init_residual``); ``pretrained_cfg`` holds DINO's evaluation
    transform for ``timm.data.resolve_data_config``.
    """

    def __init__(self, **options: Any) -> None:
        options.pop("num_classes", None)  # the classifier is removed; see reset_classifier
        super().__init__(Bottleneck, [3, 4, 6, 3], **options)
        self.embed_dim = self.fc.in_features
        self.fc = nn.Identity()
        self.pretrained_cfg = evaluation_cfg(classifier="fc", first_conv="conv1", fixed_input_size=False)

    def reset_classifier(self, num_classes: int) -> None:
        """A new linear classifier (B, 2048) -> (B, num_classes) as ``fc`` (0: none, features out)."""
        self.fc = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def intermediate_layers(self, images: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Only the pooled output exists for a ResNet: [(B, 1, 2048)] for n = 1."""
        if n != 1:
            raise ValueError("a ResNet backbone gives only its pooled output (n = 1)")
        return [self(images).unsqueeze(1)]

    def last_selfattention(self, images: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        raise TypeError("a ResNet backbone has no self-attention; use a ViT checkpoint")


def build_resnet50(**options: Any) -> ResNetBackbone:
    """Randomly initialised ResNet-50 trunk; ``options`` go to torchvision's ``ResNet``."""
    return ResNetBackbone(**options)
