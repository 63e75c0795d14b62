"""Position embeddings of a ViT for any patch grid, resampled as the reference DINO code does."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

# torch's bicubic kernel (Keys' cubic convolution with a = -0.75, as in upsample_bicubic2d).
CUBIC_A = -0.75

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
    if torch.compiler.is_exporting():
        return _resample_in_graph(pos_embed, rows, cols, square_image)
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


def _cubic_weights(offset: torch.Tensor) -> torch.Tensor:
    """(n,) fractional positions t in [0, 1) -> (n, 4) weights of the samples at -1, 0, 1, 2."""
    a = CUBIC_A
    near = torch.stack([offset, 1 - offset], -1)  # distances to samples 0 and 1
    far = torch.stack([offset + 1, 2 - offset], -1)  # distances to samples -1 and 2
    near_w = ((a + 2) * near - (a + 3)) * near * near + 1
    far_w = ((a * far - 5 * a) * far + 8 * a) * far - 4 * a
    return torch.stack([far_w[:, 0], near_w[:, 0], near_w[:, 1], far_w[:, 1]], -1)


def _axis_matrix(size, grid: int, keep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(size, grid) matrix of the bicubic resampling of one axis with the scale factor
    (size + 0.1) / grid (torch's source index rule: (i + 0.5) / scale - 0.5, the four
    neighbours clamped to the grid); where ``keep`` (a bool tensor) holds, the identity rows."""
    index = torch.arange(size, device=like.device).to(like.dtype)
    source = (index + 0.5) * (grid / (index.new_ones(()) * size + GRID_OFFSET)) - 0.5
    floor = source.floor()
    weights = _cubic_weights(source - floor)  # (size, 4)
    taps = (floor[:, None] + torch.arange(-1, 3, device=like.device).to(like.dtype)).clamp(0, grid - 1)
    columns = torch.arange(grid, device=like.device).to(like.dtype)
    bicubic = ((taps[:, :, None] == columns).to(like.dtype) * weights[:, :, None]).sum(1)
    identity = (index[:, None].clamp(max=grid - 1) == columns).to(like.dtype)
    return torch.where(keep, identity, bicubic)


def _resample_in_graph(pos_embed: torch.Tensor, rows, cols, square_image) -> torch.Tensor:
    """The rule of :func:`resample_position_embeddings` as tensor operations on symbolic
    ``rows``/``cols`` (for ``torch.export`` and ONNX: the image size stays a graph input).
    Bicubic resampling is separable, so it is two (size, g) matrices applied to the table; the
    table is kept as is when the image is square and the grid is g x g."""
    stored = pos_embed.shape[1] - 1
    grid = int(math.sqrt(stored))
    dim = pos_embed.shape[-1]
    table = pos_embed[0, 1:].reshape(grid, grid, dim)
    square = torch.scalar_tensor(torch.sym_ite(square_image, 1, 0), device=pos_embed.device)
    keep = (square > 0) & (torch.scalar_tensor(rows, device=pos_embed.device) == grid)
    row_matrix = _axis_matrix(rows, grid, keep, pos_embed)
    col_matrix = _axis_matrix(cols, grid, keep, pos_embed)
    patches = torch.einsum("ia,abd,jb->ijd", row_matrix, table, col_matrix).reshape(1, rows * cols, dim)
    return torch.cat([pos_embed[:, :1], patches], dim=1)
