"""``data.geometric=batched``: multi-crop views of in-memory images, cut a whole batch at a time.

The per-image pipeline (:class:`~dinossl.data.geometric_crops.GeometricMultiCrop` in loader
workers) crops each image with PIL; on a 2-core CPU the worker competes with the training
step for the cores. Here the images already sit in one uint8 array (the built-in sample, or
a folder of equally sized images loaded once), so each view of a batch is cut in one call:
boxes drawn with RandomResizedCrop's rule (scale, aspect ratio 3/4-4/3, 10 tries, whole
image as fallback), bicubic resampling with ``grid_sample``, horizontal flip with p = 0.5,
and the photometric parameters drawn batched with the per-view probabilities of
:mod:`~dinossl.data.crop_recipe`. The result is the same
:class:`~dinossl.data.photometric_params.RawCrops` the per-image path yields, so the
device-side photometric step is shared.

Differences from the per-image path: no antialiasing when a box is shrunk (crops of 32-px
images are mostly enlarged), and the random draws come from one generator per (seed, epoch,
step) made for the whole global batch, so an image's crops depend on the global batch size
(not on how it is split over processes).

Where the work happens: the random draws (boxes, flips, photometric parameters) are made on the
host, where they are cheap and reproducible; on a CUDA training device the batch's uint8 images
are copied there (pinned, asynchronously) and cut and resampled there, so the GPU does not wait
for the CPU to resize crops. On the CPU nothing changes: the same calls on the same tensors.
"""

from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dinossl.config import CropConfig
from dinossl.data.crop_recipe import FLIP_P, CropRecipe, ViewPhotometry, crop_recipe
from dinossl.data.images import ArrayImages, ImageFolder, UnreadableImage
from dinossl.data.photometric_params import (
    BLUR_SIGMA,
    GRAYSCALE,
    JITTER,
    JITTER_FACTORS,
    NUM_PARAMS,
    ORDER,
    SOLARIZE,
    RawCrops,
    identity_params,
)
from dinossl.errors import DataError

log = logging.getLogger("dinossl")

ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
TRIES = 10


def images_in_memory(source: ArrayImages | ImageFolder) -> tuple[ArrayImages, int]:
    """The source as one uint8 array, and the number of unreadable files skipped; a folder is
    decoded once and must hold images of a single size."""
    if isinstance(source, ArrayImages):
        return source, 0
    pixels, labels, skipped, shape = [], [], 0, None
    for index in range(len(source)):
        try:
            image, label = source.load(index)
        except UnreadableImage as exc:
            log.debug("skipping unreadable image %s", exc)
            skipped += 1
            continue
        array = np.asarray(image)
        if shape is None:
            shape = array.shape
        elif array.shape != shape:
            raise DataError(
                f"data.geometric=batched needs images of one size; {source.files[index]} is "
                f"{array.shape[1]}x{array.shape[0]}, the first was {shape[1]}x{shape[0]} (use data.geometric=per_image)"
            )
        pixels.append(array)
        labels.append(label)
    if not pixels:
        raise DataError(f"no readable image in {source.root}")
    return ArrayImages(np.stack(pixels), np.asarray(labels), getattr(source, "classes", [])), skipped


def random_resized_boxes(
    count: int, height: int, width: int, scale: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """(count, 4) boxes (top, left, box_height, box_width) in pixels, drawn as torchvision's
    RandomResizedCrop does: area fraction ~ U(scale), log aspect ratio ~ U(log 3/4, log 4/3),
    the first of 10 tries that fits; the whole image (ratio clamped) when none fits."""
    area = height * width
    target_area = area * torch.empty(count, TRIES).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(count, TRIES).uniform_(math.log(ASPECT_RATIO[0]), math.log(ASPECT_RATIO[1]),
                                                   generator=generator)
    ratio = log_ratio.exp()
    box_w = (target_area * ratio).sqrt().round()
    box_h = (target_area / ratio).sqrt().round()
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((count,), -1))

    fallback_h, fallback_w = float(height), float(width)  # whole image, or its centre at the nearest ratio
    if width / height < ASPECT_RATIO[0]:
        fallback_h = float(round(width / ASPECT_RATIO[0]))
    elif width / height > ASPECT_RATIO[1]:
        fallback_w = float(round(height * ASPECT_RATIO[1]))
    rows = torch.arange(count)
    chosen = first.clamp(min=0)
    box_h = torch.where(first >= 0, box_h[rows, chosen], torch.tensor(fallback_h))
    box_w = torch.where(first >= 0, box_w[rows, chosen], torch.tensor(fallback_w))
    top_fraction, left_fraction = torch.rand(count, 2, generator=generator).unbind(1)
    top = torch.where(first >= 0, (top_fraction * (height - box_h + 1)).floor(), ((height - box_h) / 2).floor())
    left = torch.where(first >= 0, (left_fraction * (width - box_w + 1)).floor(), ((width - box_w) / 2).floor())
    return torch.stack([top, left, box_h, box_w], dim=1)


def resample_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, 3, H, W) on any device, boxes (B, 4) as (top, left, h, w) and flip (B,)
    bool (e.g. on the host) -> uint8 (B, 3, size, size) on the images' device: each box resized
    bicubically, flipped left-right where asked."""
    batch, _, height, width = images.shape
    device = images.device
    top, left, box_h, box_w = boxes.to(device, non_blocking=True).unbind(1)
    flip = flip.to(device, non_blocking=True)
    centres = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size  # pixel centres in [0, 1]
    # grid_sample's normalised x (align_corners=False): 2 * (pixel coordinate) / W - 1, edges at +-1.
    xs = (2 * (left[:, None] + centres[None] * box_w[:, None]) / width) - 1  # (B, size)
    ys = (2 * (top[:, None] + centres[None] * box_h[:, None]) / height) - 1
    xs = torch.where(flip[:, None], xs.flip(1), xs)
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)  # (B, size, size, 2)
    resized = F.grid_sample(images.float(), grid, mode="bicubic", padding_mode="border", align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def draw_params_batch(view: ViewPhotometry, count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, NUM_PARAMS) photometric parameters for ``count`` crops of one view, with the
    probabilities and ranges of :func:`~dinossl.data.photometric_params.draw_params`."""
    params = identity_params().repeat(count, 1)
    jitter = torch.rand(count, generator=generator) < view.color_jitter_p
    params[:, JITTER] = jitter.float()
    order = torch.rand(count, 4, generator=generator).argsort(dim=1).float()  # a random permutation per row
    params[:, ORDER] = torch.where(jitter[:, None], order, params[:, ORDER])
    for op, strength in enumerate(view.color_jitter):
        if strength == 0:
            continue
        low, high = (-strength, strength) if op == 3 else (max(0.0, 1.0 - strength), 1.0 + strength)
        factors = torch.empty(count).uniform_(low, high, generator=generator)
        params[:, JITTER_FACTORS[op]] = torch.where(jitter, factors, params[:, JITTER_FACTORS[op]])
    params[:, GRAYSCALE] = (torch.rand(count, generator=generator) < view.grayscale_p).float()
    blur = torch.rand(count, generator=generator) < view.blur_p
    low, high = view.blur_radius
    sigma = low + (high - low) * torch.rand(count, generator=generator)
    params[:, BLUR_SIGMA] = torch.where(blur, sigma, torch.zeros(count))
    params[:, SOLARIZE] = (torch.rand(count, generator=generator) < view.solarize_p).float()
    assert params.shape == (count, NUM_PARAMS)
    return params


def batch_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The generator for the global batch at one step of one epoch (the same on every process)."""
    state = np.random.SeedSequence([seed, epoch, step, 0xBA7C]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state.view(np.uint64)[0] >> 1))


class BatchedMultiCrops:
    """uint8 images (B, 3, H, W) -> one RawCrops per view of the crop recipe (global views
    first), one batched crop/resize per view."""

    def __init__(self, crops: CropConfig | CropRecipe) -> None:
        self.recipe = crop_recipe(crops)

    def __call__(self, images: torch.Tensor, generator: torch.Generator, rank: int = 0,
                 world_size: int = 1) -> list[RawCrops]:
        """``images`` are this process's rows ``rank::world_size`` of a global batch; the draws
        are made for the whole global batch, so an image's crops do not depend on how the
        global batch is split over processes."""
        batch, _, height, width = images.shape
        rows = torch.arange(rank, batch * world_size, world_size)
        views = []
        for view in self.recipe.views:
            boxes = random_resized_boxes(batch * world_size, height, width, view.scale, generator)[rows]
            flip = (torch.rand(batch * world_size, generator=generator) < FLIP_P)[rows]
            params = draw_params_batch(view.photometry, batch * world_size, generator)[rows]
            views.append(RawCrops(resample_boxes(images, boxes, view.size, flip), params))
        return views


class BatchedCropLoader:
    """Iterates this process's batches of an epoch as (views, labels (B,), 0 skipped images),
    views being RawCrops like the per-image loader's; the sampler decides which images.

    ``device``: where the crops are cut (the training device); the views' pixels are on it,
    their photometric parameters and the labels stay on the host.
    """

    def __init__(self, source: ArrayImages, sampler, batch_size: int, crops: CropConfig | CropRecipe, seed: int,
                 device: torch.device | str = "cpu") -> None:
        self.pixels = torch.from_numpy(source.pixels).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8 view
        self.labels = torch.from_numpy(source.labels)
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed
        self.multicrop = BatchedMultiCrops(crops)
        self.device = torch.device(device)

    def _on_device(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) host images -> on the cutting device (asynchronous copy from pinned memory)."""
        if self.device.type == "cpu":
            return images
        return images.pin_memory().to(self.device, non_blocking=True)

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch - self.sampler.start_step

    def __iter__(self) -> Iterator[tuple[list[RawCrops], torch.Tensor, int]]:
        """From the sampler's ``start_step``: a resumed epoch's batches equal the uninterrupted
        epoch's (each step's draws come from (seed, epoch, step))."""
        keys = list(iter(self.sampler))
        first = self.sampler.start_step
        for position in range(len(self)):
            step = first + position
            chunk = keys[position * self.batch_size:(position + 1) * self.batch_size]
            indices = torch.tensor([index for index, _ in chunk])
            epoch = chunk[0][1]
            generator = batch_generator(self.seed, epoch, step)
            images = self._on_device(self.pixels.index_select(0, indices).contiguous())
            yield self.multicrop(images, generator, self.sampler.rank, self.sampler.world_size), self.labels[indices], 0
