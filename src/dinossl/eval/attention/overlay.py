"""Draw maps and masks over pictures: heat-map overlays, tinted masks with outlines, tiled sheets."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from dinossl.optional import require

MASK_COLOUR = (255, 64, 32)


def _array(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def heatmap_overlay(image: Image.Image, heat: torch.Tensor | np.ndarray, alpha: float = 0.6,
                    cmap: str = "inferno") -> Image.Image:
    """Picture with a (H, W) map of its size blended on top, the map min-max scaled to [0, 1]."""
    colormaps = require("matplotlib", "attention heat maps").colormaps
    heat = _array(heat).astype(np.float64)
    if heat.shape != (image.size[1], image.size[0]):
        raise ValueError(f"map {heat.shape} does not match the picture {image.size[1]}x{image.size[0]}")
    span = heat.max() - heat.min()
    scaled = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    colours = (colormaps[cmap](scaled)[..., :3] * 255).astype(np.float32)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray(((1 - alpha) * base + alpha * colours).round().astype(np.uint8))


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def mask_overlay(image: Image.Image, mask: torch.Tensor | np.ndarray, colour: tuple[int, int, int] = MASK_COLOUR,
                 alpha: float = 0.5) -> Image.Image:
    """Picture with a (H, W) boolean mask tinted in ``colour`` and outlined."""
    mask = _array(mask).astype(bool)
    if mask.shape != (image.size[1], image.size[0]):
        raise ValueError(f"mask {mask.shape} does not match the picture {image.size[1]}x{image.size[0]}")
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    tint = np.asarray(colour, dtype=np.float32)
    pixels[mask] = (1 - alpha) * pixels[mask] + alpha * tint
    pixels[_outline(mask)] = tint
    return Image.fromarray(pixels.round().astype(np.uint8))


def labelled(image: Image.Image, text: str) -> Image.Image:
    """Copy of the picture with ``text`` in a small box at its top-left corner."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    box = draw.textbbox((2, 2), text)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((2, 2), text, fill=(255, 255, 255))
    return out


def tile(pictures: Sequence[Image.Image], columns: int) -> Image.Image:
    """Pictures of one size laid out in rows of ``columns``."""
    if not pictures:
        raise ValueError("no pictures to tile")
    width, height = pictures[0].size
    rows = -(-len(pictures) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height), (255, 255, 255))
    for index, picture in enumerate(pictures):
        sheet.paste(picture.convert("RGB"), ((index % columns) * width, (index // columns) * height))
    return sheet
