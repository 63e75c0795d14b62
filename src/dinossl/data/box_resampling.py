"""Crop boxes of a batch of images of any sizes, resized bicubically with antialiasing, in a few
batched calls.

Resizing the box (top, left, h, w) of an image to S x S pixels with an antialiased filter is a
linear map applied along each axis: output row j is a weighted sum of the image's rows, with
weights W_y[j, :] (S x H), and likewise for columns (W_x, S x W). The crop is W_y I W_x^T per
channel. Here the weights are those of PIL's antialiased bicubic resize of the cropped box
(cubic kernel a = -0.5, stretched by the downscale factor, cut at the box's borders,
normalised) — what torchvision's ``RandomResizedCrop`` does to a PIL image — so the crops
equal the per-image path's to rounding (PIL keeps an 8-bit intermediate between its two passes
and fixed-point weights: a grey level here and there). A horizontal flip reverses the rows of
W_x.

All the images of a batch are laid on one zero-padded canvas, and all the crops of one output
size are two batched matrix products over it (:func:`resample_boxes`), whatever the number of
images, so the number of calls does not grow with the batch. Any downscale works (the kernel
simply gets wider; nothing like CUDA's antialiased ``interpolate``, which fails beyond about a
47x reduction). Very large photos are first pre-shrunk by an integer factor with area
averaging (:func:`preshrink`), one call per distinct image size, so that the
canvas stays small: the factor leaves every crop of the image still reduced 4-8x by the
bicubic filter (``MIN_RESIDUAL_DOWNSCALE``), whose support then spans 16 or more pre-shrunk
pixels, so the area pre-filter changes the result by at most a grey level (a 6000 x 4000 photo
to 96 px: within 1 of PIL's direct resize, ``tests/data/test_device_crops.py``). Ordinary
photos (a 500 x 375 ImageNet image) are never pre-shrunk.

The cost is that of the products: per crop about 3 S H W multiply-adds over the padded canvas
(the first pass runs over the whole canvas, not just the box): for 2 x 224 + 10 x 96 crops of
an 854 x 480 frame about 1.7 G multiply-adds per image: at 1,500 images/s, roughly a tenth of an
H100's float32 (non-tensor-core) rate; on a CPU, several times PIL's per-image work
(``benchmarks/loader_throughput.py``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from dinossl.runtime.cuda_settings import ieee_float32_matmuls

CUBIC_A = -0.5  # PIL's bicubic kernel (torch's interpolate uses -0.75)
CUBIC_SUPPORT = 2.0
MIN_RESIDUAL_DOWNSCALE = 4.0  # pre-shrink leaves each crop at least this much to the bicubic filter
PRESHRINK_CHUNK = 16  # images per pre-shrink call: 16 float 12-megapixel photos are 4.6 GB


def cubic(t: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (PIL's), elementwise; zero beyond |t| >= 2."""
    x = t.abs()
    near = ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * CUBIC_A
    return torch.where(x < 1.0, near, torch.where(x < CUBIC_SUPPORT, far, torch.zeros_like(x)))


def box_weights(start: torch.Tensor, length: torch.Tensor, size: int, extent: int) -> torch.Tensor:
    """(N,) box starts and lengths along one axis (pixels, may be fractional) -> (N, size, extent)
    float32 weights: row j holds PIL's antialiased bicubic weights of output pixel j over the
    input pixels 0 .. extent - 1, zero outside the box, summing to 1."""
    device = start.device
    scale = length / size  # input pixels per output pixel
    stretch = scale.clamp(min=1.0)  # the kernel widens when shrinking (antialiasing)
    outputs = torch.arange(size, dtype=torch.float32, device=device) + 0.5
    centres = start[:, None] + outputs[None] * scale[:, None]  # (N, size), input coordinates
    pixels = torch.arange(extent, dtype=torch.float32, device=device) + 0.5  # input pixel centres
    weights = cubic((pixels[None, None] - centres[:, :, None]) / stretch[:, None, None])
    inside = (pixels[None] >= start[:, None]) & (pixels[None] < start[:, None] + length[:, None])
    weights = weights * inside[:, None, :]
    return weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-12)


def resample_boxes(canvas: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Canvas (B, 3, H, W) float (image i in its top-left corner), boxes (B, V, 4) float (top,
    left, h, w) in canvas pixels, flips (B, V) bool, all on the canvas's device -> uint8
    (B, V, 3, size, size): every box resized to size x size, flipped left-right where asked.

    As PIL: the horizontal pass first, rounded and clipped to [0, 255] (PIL's 8-bit
    intermediate, which matters where the cubic overshoots at sharp edges), then the vertical
    pass. Two batched matrix products, in IEEE float32."""
    batch, channels, height, width = canvas.shape
    views = boxes.shape[1]
    flat = boxes.reshape(-1, 4).float()
    rows = box_weights(flat[:, 0], flat[:, 2], size, height)  # (B V, S, H)
    cols = box_weights(flat[:, 1], flat[:, 3], size, width)  # (B V, S, W)
    cols = torch.where(flips.reshape(-1, 1, 1), cols.flip(1), cols)
    cols = cols.reshape(batch, views * size, width).transpose(1, 2)  # (B, W, V S)
    with ieee_float32_matmuls():
        wide = torch.bmm(canvas.reshape(batch, channels * height, width), cols)  # (B, 3 H, V S)
        wide = wide.round_().clamp_(0, 255).reshape(batch, channels, height, views, size)
        wide = wide.permute(0, 3, 2, 1, 4).reshape(batch * views, height, channels * size)  # (B V, H, 3 S)
        crops = torch.bmm(rows, wide)  # (B V, S, 3 S)
    crops = crops.reshape(batch, views, size, channels, size).permute(0, 1, 3, 2, 4)
    return crops.round_().clamp_(0, 255).to(torch.uint8)


def preshrink_factors(boxes: torch.Tensor, sizes: Sequence[int]) -> list[int]:
    """Boxes (B, V, 4) on the host and each view's output size -> each image's integer
    pre-shrink factor k >= 1: the smallest downscale among its crops, divided by
    MIN_RESIDUAL_DOWNSCALE, rounded down."""
    sides = torch.minimum(boxes[..., 2], boxes[..., 3]).float()  # (B, V)
    ratios = (sides / torch.tensor(sizes, dtype=torch.float32)[None]).amin(dim=1)
    return [max(1, math.floor(r / MIN_RESIDUAL_DOWNSCALE)) for r in ratios.tolist()]


def preshrink(images: list[torch.Tensor], factors: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """uint8 (3, H_i, W_i) images and their largest allowed factors -> the images (pre-shrunk
    ones as float (3, ceil(H_i / k), ceil(W_i / k)), area-averaged; others unchanged) and (B, 2)
    float per-axis scales (new size / old size) to apply to their boxes. Images of one size
    share one factor (the smallest of theirs), so there is one ``interpolate`` call per distinct
    image size that is shrunk (per PRESHRINK_CHUNK images of that size: the float copy of a
    stack of photos is what bounds it)."""
    out: list[torch.Tensor] = list(images)
    scales = torch.ones(len(images), 2)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault((image.shape[1], image.shape[2]), []).append(i)
    for (height, width), members in groups.items():
        k = min(factors[i] for i in members)
        if k == 1:
            continue
        target = (math.ceil(height / k), math.ceil(width / k))
        for start in range(0, len(members), PRESHRINK_CHUNK):
            chunk = members[start:start + PRESHRINK_CHUNK]
            shrunk = F.interpolate(torch.stack([images[i] for i in chunk]).float(), size=target, mode="area")
            for row, i in enumerate(chunk):
                out[i] = shrunk[row]
                scales[i] = torch.tensor([target[0] / height, target[1] / width])
    return out, scales


def canvas_of(images: list[torch.Tensor]) -> torch.Tensor:
    """(3, H_i, W_i) images (uint8 or float) on one device -> float32 canvas (B, 3, max H, max W),
    each image in its top-left corner, zeros elsewhere."""
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    canvas = torch.zeros(len(images), 3, height, width, device=images[0].device)
    for i, image in enumerate(images):
        canvas[i, :, :image.shape[1], :image.shape[2]].copy_(image)
    return canvas


def cut_boxes(images: list[torch.Tensor], boxes: torch.Tensor, flips: torch.Tensor,
              sizes: Sequence[int]) -> list[torch.Tensor]:
    """uint8 (3, H_i, W_i) images (B of them, any sizes, on one device), host boxes (B, V, 4) as
    (top, left, h, w) pixels, host flips (B, V) bool, each view's output size -> one uint8
    (B, 3, S_v, S_v) tensor per view on the images' device. Large photos are pre-shrunk; views
    of equal size are cut together (:func:`resample_boxes`)."""
    device = images[0].device
    shrunk, scales = preshrink(images, preshrink_factors(boxes, sizes))
    scaled = boxes.float() * scales.repeat(1, 2)[:, None, :]  # (top, left, h, w) * (sy, sx, sy, sx)
    canvas = canvas_of(shrunk)
    views: list[torch.Tensor] = [torch.empty(0)] * len(sizes)
    for size in sorted(set(sizes), reverse=True):
        group = [v for v, s in enumerate(sizes) if s == size]
        crops = resample_boxes(canvas, scaled[:, group].to(device, non_blocking=True),
                               flips[:, group].to(device, non_blocking=True), size)
        for j, v in enumerate(group):
            views[v] = crops[:, j]
    return views
