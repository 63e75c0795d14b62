"""Reference feature extractors that trained features are compared against: the same
architecture at random initialisation, and raw pixels."""

from __future__ import annotations

import torch
from torch import nn

from dinossl.models import build_backbone, spec_of


class RawPixels(nn.Module):
    """(B, 3, H, W) normalised images -> (B, 3*H*W) flattened pixels."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


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
