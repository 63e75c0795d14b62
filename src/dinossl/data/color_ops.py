"""Colour operations on a batch of float images, each sample with its own factor.

The arithmetic of torchvision's tensor kernels (``adjust_brightness``, ``adjust_contrast``,
``adjust_saturation``, ``adjust_hue``, ``rgb_to_grayscale``, ``solarize`` in
``torchvision.transforms.v2.functional``) for float images in [0, 1], vectorised over the
batch. Images are (B, 3, H, W) float; factors are (B,) on the images' device. Every op
returns a new tensor clamped to [0, 1].
"""

from __future__ import annotations

import torch

LUMA_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2, as torchvision and PIL
SOLARIZE_THRESHOLD = 128 / 255  # uint8 128 on the [0, 1] scale


def _column(factor: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting against images."""
    return factor.reshape(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """ratio * images + (1 - ratio) * other, clamped; other broadcasts against (B, 3, H, W)."""
    return torch.lerp(other.expand_as(images), images, _column(ratio)).clamp_(0.0, 1.0)


def channel_constants(values: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    """(1, 3, 1, 1) tensor of per-channel ``values`` on ``like``'s device and dtype (an
    asynchronous copy: creating it directly on a GPU would make the host wait for the GPU)."""
    return torch.tensor(values).reshape(1, 3, 1, 1).to(like.device, like.dtype, non_blocking=True)


def luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) ITU-R 601-2 luma."""
    return (images * channel_constants(LUMA_WEIGHTS, images)).sum(dim=1, keepdim=True)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: images * factor."""
    return (images * _column(factor)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with each sample's mean luma."""
    mean = luma(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with each sample's luma image."""
    return _blend(images, luma(images), factor)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma repeated on the 3 channels: (B, 3, H, W)."""
    return luma(images).expand_as(images).clone()


def solarize(images: torch.Tensor) -> torch.Tensor:
    """Invert (1 - x) the pixels >= 128/255."""
    return torch.where(images >= SOLARIZE_THRESHOLD, 1.0 - images, images)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``shift`` turns (in [-0.5, 0.5]), keeping saturation and value.

    The RGB -> HSV -> RGB round trip of torchvision's ``adjust_hue``, without materialising
    HSV: value V = max channel and chroma C = max - min are unchanged by a hue rotation, so
    each output channel is V - C * clamp(min(k, 4 - k), 0, 1) with k = (n + 6 * hue) mod 6
    and n = 5, 3, 1 for red, green, blue (the closed form of the sector table).
    """
    r, g, b = images.unbind(dim=1)
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    safe_chroma = torch.where(chroma > 0, chroma, 1.0)  # grey pixels: any hue, C = 0 keeps them grey
    # Hue in sixths of a turn, from the channel holding the maximum (red wins ties, then green).
    sixths = torch.where(value == r, (g - b) / safe_chroma,
                         torch.where(value == g, (b - r) / safe_chroma + 2.0, (r - g) / safe_chroma + 4.0))
    hue = (sixths / 6.0).remainder(1.0)
    hue = (hue + shift.reshape(-1, 1, 1)).remainder(1.0) * 6.0
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = (hue + offset).remainder(6.0)
        channels.append(value - chroma * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=1).clamp_(0.0, 1.0)
