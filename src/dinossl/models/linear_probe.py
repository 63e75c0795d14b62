"""A frozen backbone with a linear classifier on its features: the model of DINO's linear
evaluation, as the released ``*_linearweights.pth`` files and ``dino eval linear`` use it.

Features (one order everywhere in this package): the [CLS] tokens of the last
``n_last_blocks`` blocks (each through the final norm), concatenated, then with ``avgpool`` the
mean of the last block's patch tokens; with ``n_last_blocks=1`` and no ``avgpool``, the
backbone's own output (ViT: [CLS]; ResNet: pooled features).
"""

from __future__ import annotations

import torch
from torch import nn

from dinossl.models.pretrained_cfg import evaluation_cfg


def probe_features(backbone: nn.Module, images: torch.Tensor, n_last_blocks: int = 1,
                   avgpool: bool = False) -> torch.Tensor:
    """(B, 3, H, W) images -> (B, D) features; D = d * (n_last_blocks + avgpool) for a ViT."""
    if n_last_blocks == 1 and not avgpool:
        return backbone(images)
    layers = backbone.intermediate_layers(images, n_last_blocks)
    parts = [tokens[:, 0] for tokens in layers]
    if avgpool:
        parts.append(layers[-1][:, 1:].mean(dim=1))
    return torch.cat(parts, dim=-1)


class LinearProbe(nn.Module):
    """(B, 3, H, W) images -> (B, num_classes) logits of a linear layer on the frozen backbone's
    :func:`probe_features` (``feature_dim`` of them). Its ``pretrained_cfg`` is the backbone's."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, n_last_blocks: int = 1,
                 avgpool: bool = False) -> None:
        super().__init__()
        self.backbone, self.n_last_blocks, self.avgpool = backbone, n_last_blocks, avgpool
        self.linear = nn.Linear(feature_dim, num_classes)
        cfg = getattr(backbone, "pretrained_cfg", None) or evaluation_cfg()
        self.pretrained_cfg = {**cfg, "num_classes": num_classes, "classifier": "linear"}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = probe_features(self.backbone, images, self.n_last_blocks, self.avgpool)
        return self.linear(features.flatten(1))
