"""Reference feature extractors that trained features are compared against: the same
architecture at random initialisation, and raw pixels."""

from __future__ import annotations

import torch
from torch import nn

from dinossl.data import IMAGENET_MEAN, IMAGENET_STD
from dinossl.models import build_backbone, spec_of


class RawPixels(nn.Module):
    """(B, 3, H, W) normalised images -> (B, 3*H*W) flattened pixels."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


class UnitRangePixels(nn.Module):
    """(B, 3, H, W) ImageNet-normalised images -> (B, 3*H*W) pixels back in [0, 1] (the
    normalisation undone); with ``mean_subtracted``, each image's mean over its 3*H*W values is
    subtracted, so that a cosine k-NN compares patterns rather than overall brightness.

    The baselines ``dino train`` prints beside the trained teacher: on the built-in sample's
    k-NN (k = 20, T = 0.07, cosine) pixels as they are score well below pixels with their mean
    subtracted (docs/training.md#the-default-run).
    """

    def __init__(self, mean_subtracted: bool = False) -> None:
        super().__init__()
        self.mean_subtracted = mean_subtracted
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images * self.std + self.mean).flatten(1)
        if self.mean_subtracted:
            pixels = pixels - pixels.mean(dim=1, keepdim=True)
        return pixels


def random_init_like(backbone: nn.Module, seed: int = 0) -> nn.Module:
    """A freshly initialised backbone of the same architecture (eval mode), seeded; the global
    random state is left untouched."""
    spec = spec_of(backbone)
    if spec is None:
        raise TypeError(f"no random initialisation known for {type(backbone).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_backbone(spec)
    return fresh.eval()
