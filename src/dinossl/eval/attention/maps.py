"""The last block's [CLS] -> patch self-attention of a ViT, per head, and its mass masks.

A mass mask keeps the smallest set of patches holding a given fraction (DINO: 60%) of a
head's attention mass: patches are ranked by attention and kept until the running sum
reaches the fraction.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dinossl.errors import ConfigError
from dinossl.inference import cls_attention as attention_maps

DEFAULT_FRACTION = 0.6


def check_fraction(fraction: float) -> float:
    """``fraction`` if it is a valid mass fraction in (0, 1]; ConfigError otherwise."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"the mass fraction must be in (0, 1], got {fraction}")
    return fraction


@torch.no_grad()
def cls_attention(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images, H and W multiples of the patch size -> (B, heads, H/p, W/p) float32
    maps of the last block's [CLS] attention over the patch keys (the harness's attention output,
    :func:`dinossl.inference.cls_attention`; a map sums to < 1)."""
    return attention_maps(backbone, images).float()


def mass_mask(maps: torch.Tensor, fraction: float = DEFAULT_FRACTION) -> torch.Tensor:
    """(..., h, w) non-negative maps -> (..., h, w) bool masks keeping the smallest set of
    patches whose attention sums to at least ``fraction`` of the map's total.

    A patch is kept when the mass of the patches ranked strictly above it is still below the
    fraction (ties broken by position). Sums run in float64 with a 1e-9 tolerance, so a set
    holding exactly the fraction is not extended by rounding error. An all-zero map keeps nothing.
    """
    check_fraction(fraction)
    if (maps < 0).any():
        raise ValueError("attention maps must be non-negative")
    flat = maps.reshape(*maps.shape[:-2], -1).double()
    total = flat.sum(dim=-1, keepdim=True)
    values, order = flat.sort(dim=-1, descending=True, stable=True)
    mass_before = (values.cumsum(dim=-1) - values) / total.clamp_min(torch.finfo(torch.float64).tiny)
    keep_sorted = (mass_before < fraction - 1e-9) & (total > 0)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return keep.reshape(maps.shape)


def upsample(maps: torch.Tensor, factor: int, mode: str = "nearest") -> torch.Tensor:
    """(..., h, w) patch-level maps -> (..., h*factor, w*factor); ``mode`` nearest or bilinear.
    Boolean masks stay boolean (nearest only)."""
    is_bool = maps.dtype == torch.bool
    if is_bool and mode != "nearest":
        raise ValueError("boolean masks are upsampled with mode='nearest'")
    lead = maps.shape[:-2]
    x = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    x = F.interpolate(x, scale_factor=factor, mode=mode, **kwargs)
    x = x.reshape(*lead, *x.shape[-2:])
    return x > 0.5 if is_bool else x
