"""Position embeddings of a ViT for any patch grid, resampled as the reference DINO code does."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

# Added to the target grid before computing the scale factors, as in the reference
# implementation: it keeps floor(g * scale) at the target size despite floating-point error.
GRID_OFFSET = 0.1


def resample_position_embeddings(pos_embed: torch.Tensor, rows: int, cols: int, square_image: bool) -> torch.Tensor:
    """(1, 1 + g*g, d) table laid out for a g x g grid -> (1, 1 + rows*cols, d) for a rows x cols grid.

    The table is returned unchanged when ``rows * cols == g * g`` and the image is square.
    Otherwise the g x g patch part is resampled bicubically (align_corners False, no
    antialiasing) with the scale factors ((rows + 0.1) / g, (cols + 0.1) / g); the [CLS] entry
    is kept. The scale factors, not the output size, set where each output samples the grid,
    so a row count equal to g is still resampled when the columns differ.
    """
    stored = pos_embed.shape[1] - 1
    if rows * cols == stored and square_image:
        return pos_embed
    grid = int(math.sqrt(stored))
    if grid * grid != stored:
        raise ValueError(f"position embeddings of {stored} patches are not a square grid")
    dim = pos_embed.shape[-1]
    patches = pos_embed[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    patches = F.interpolate(
        patches,
        scale_factor=((rows + GRID_OFFSET) / grid, (cols + GRID_OFFSET) / grid),
        mode="bicubic",
        align_corners=False,
    )
    if patches.shape[-2:] != (rows, cols):
        raise RuntimeError(f"resampled position grid is {tuple(patches.shape[-2:])}, expected {(rows, cols)}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat([pos_embed[:, :1], patches], dim=1)
