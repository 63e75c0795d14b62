"""Reference feature extractors that trained features are compared against: the same
architecture at random initialisation, and raw pixels."""

from __future__ import annotations

import torch
from torch import nn

from dinossl.models.resnet import ResNetBackbone
from dinossl.models.vit import ViTBackbone


class RawPixels(nn.Module):
    """(B, 3, H, W) normalised images -> (B, 3*H*W) flattened pixels."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


def random_init_like(backbone: nn.Module, seed: int = 0) -> nn.Module:
    """A freshly initialised backbone of the same architecture (eval mode), seeded; the global
    random state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(backbone, ViTBackbone):
            fresh: nn.Module = ViTBackbone(
                embed_dim=backbone.embed_dim, depth=len(backbone.blocks), num_heads=backbone.blocks[0].attn.num_heads,
                patch_size=backbone.patch_size, img_size=backbone.patch_embed.img_size[0],
            )
        elif isinstance(backbone, ResNetBackbone):
            fresh = ResNetBackbone()
        else:
            raise TypeError(f"no random initialisation known for {type(backbone).__name__}")
    return fresh.eval()
