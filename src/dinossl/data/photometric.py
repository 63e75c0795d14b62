"""The device-side photometric step: uint8 crops + drawn parameters -> normalised float crops.

With ``data.photometric=device`` each view of a batch arrives as a :class:`RawCrops`
(uint8 pixels (B, 3, S, S), parameters (B, NUM_PARAMS) drawn by
:func:`~dinossl.data.photometric_params.draw_params`). :func:`apply_photometric` performs,
per sample and batched on the pixels' device: the colour jitter ops in the drawn order,
grayscale, Gaussian blur, solarisation, each clamped to [0, 1], then ImageNet normalisation.

Which samples each op touches is worked out on the host from the parameters (which the
loader produced on the CPU), so the step never waits for the device; each op then runs once
on the gathered samples that need it. The Python loops run over the 4 jitter positions and
the 7 ops, never over samples.
"""

from __future__ import annotations

from typing import Callable, Union

import torch

from dinossl.data import color_ops
from dinossl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dinossl.data.gaussian_blur import gaussian_blur, kernel_radius
from dinossl.data.photometric_params import (
    BLUR_SIGMA,
    GRAYSCALE,
    IDENTITY_FACTORS,
    JITTER,
    JITTER_FACTORS,
    ORDER,
    SOLARIZE,
    RawCrops,
)

Op = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images (N, 3, H, W), factors (N,)) -> images

# Jitter op id -> its batched op.
JITTER_OPS: tuple[Op, ...] = (
    color_ops.adjust_brightness,
    color_ops.adjust_contrast,
    color_ops.adjust_saturation,
    color_ops.adjust_hue,
)


def _indices(mask: torch.Tensor) -> torch.Tensor:
    """Host (B,) bool -> host (N,) int64 indices of the True entries."""
    return mask.nonzero().reshape(-1)


def _apply_rows(images: torch.Tensor, factors: torch.Tensor, rows: torch.Tensor, op: Op, column: int) -> torch.Tensor:
    """Apply ``op(samples, factors[:, column])`` to the samples ``rows`` (host int64 (N,)) of
    images (B, 3, H, W), clamped to [0, 1]; the others are returned unchanged."""
    if rows.numel() == 0:
        return images
    if rows.numel() == images.shape[0]:  # every sample: no gather/scatter
        return op(images, factors[:, column]).clamp_(0.0, 1.0)
    device_rows = rows.to(images.device, non_blocking=True)
    changed = op(images.index_select(0, device_rows), factors.index_select(0, device_rows)[:, column])
    return images.index_copy_(0, device_rows, changed.clamp_(0.0, 1.0))


@torch.no_grad()
def apply_photometric(pixels: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) crops on any device + (B, NUM_PARAMS) parameters (best left on the
    CPU) -> float32 (B, 3, S, S) augmented and normalised crops on the pixels' device."""
    host = params.detach().float().cpu()
    factors = params.to(pixels.device, dtype=torch.float32, non_blocking=True)
    images = pixels.float().mul_(1.0 / 255)

    jittered = host[:, JITTER] > 0
    order = host[:, ORDER].long()  # (B, 4): op id at each position
    for position in range(4):
        for op_id, op in enumerate(JITTER_OPS):
            column = JITTER_FACTORS[op_id]
            rows = _indices(jittered & (order[:, position] == op_id) & (host[:, column] != IDENTITY_FACTORS[op_id]))
            images = _apply_rows(images, factors, rows, op, column)
    images = _apply_rows(images, factors, _indices(host[:, GRAYSCALE] > 0),
                         lambda x, _: color_ops.to_grayscale(x), GRAYSCALE)
    blurred = host[:, BLUR_SIGMA] > 0
    if blurred.any():
        radius = kernel_radius(float(host[blurred, BLUR_SIGMA].max()), min(pixels.shape[-2:]))
        images = _apply_rows(images, factors, _indices(blurred),
                             lambda x, sigma: gaussian_blur(x, sigma, radius), BLUR_SIGMA)
    images = _apply_rows(images, factors, _indices(host[:, SOLARIZE] > 0),
                         lambda x, _: color_ops.solarize(x), SOLARIZE)
    return normalize(images)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> ImageNet-normalised, in place."""
    return images.sub_(color_ops.channel_constants(IMAGENET_MEAN, images)).div_(
        color_ops.channel_constants(IMAGENET_STD, images))


def to_model_input(view: Union[torch.Tensor, RawCrops], device: torch.device) -> torch.Tensor:
    """One batched view from the loader -> the float (B, 3, S, S) crops the networks take, on
    ``device``: a ready tensor is moved; a :class:`RawCrops` is moved and augmented there."""
    if isinstance(view, RawCrops):
        return apply_photometric(view.pixels.to(device, non_blocking=True), view.params)
    return view.to(device, non_blocking=True)
