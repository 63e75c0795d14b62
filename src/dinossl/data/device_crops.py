"""``data.geometric=device``: JPEG files decoded and cropped on the training device.

On a GPU the loader's JPEG decoding is the first wall (a PIL pipeline decodes tens of
ImageNet-sized images per second per process). Here the loader workers only read each
file's bytes and its size from the header, and draw the image's crop boxes, flips and
photometric parameters; the training process then decodes the whole batch at once on the
device (torchvision's ``decode_jpeg``: nvJPEG on a GPU, libjpeg-turbo on a CPU) and cuts all
its crops in a few batched calls (:func:`~dinossl.data.box_resampling.cut_boxes`: each box
resized with PIL's antialiased bicubic filter, as the per-image path's RandomResizedCrop does,
flipped where drawn; very large photos pre-shrunk first; one pair of matrix products per crop
size, so the number of calls does not grow with the batch). The crops leave as the same
:class:`~dinossl.data.photometric_params.RawCrops` the other paths yield, so the device-side
photometric step (batched, per-sample parameters) is shared. Images may have any sizes.

On a CUDA device each batch is decoded and cut on a side stream, ordered against the decoder
and the training stream as :mod:`~dinossl.data.device_streams` explains (torchvision's CUDA
decoder can otherwise overwrite memory that queued kernels still read); the next batch is
prepared there while the current training step runs.

Files that are not JPEG are decoded by PIL in the worker and travel as pixels. A file whose
header or data cannot be read is skipped and counted, as on the other paths.

Random draws: each image's boxes, flips and parameters come from a generator seeded by
(seed, epoch, index), so they do not depend on the number of processes or workers, nor on the
batch; they are drawn with the rules of the batched path (RandomResizedCrop's box rule,
p = 0.5 flip, the recipe's per-view probabilities), not with the per-image path's calls.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from dinossl.config import CropConfig
from dinossl.data.batched_crops import draw_params_batch, random_resized_boxes
from dinossl.data.box_resampling import cut_boxes
from dinossl.data.crop_recipe import FLIP_P, CropRecipe, crop_recipe
from dinossl.data.device_streams import SideStreamBatches
from dinossl.data.images import ArrayImages, ImageFolder, UnreadableImage, to_rgb, upright
from dinossl.data.loader import ShardedEpochSampler, sample_seed
from dinossl.data.photometric_params import NUM_PARAMS, RawCrops
from dinossl.runtime.cores import cap_workers

log = logging.getLogger("dinossl")

JPEG_MAGIC = b"\xff\xd8\xff"


class EncodedImage(NamedTuple):
    """One image as the worker leaves it: ``data`` is the file's bytes (uint8 (N,), a JPEG to
    decode on the device) or its pixels (uint8 (3, H, W), another format decoded by PIL);
    boxes (V, 4) as (top, left, height, width), flips (V,) bool and photometric parameters
    (V, NUM_PARAMS) for the recipe's V views; the label."""

    data: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    params: torch.Tensor
    label: int


class EncodedBatch(NamedTuple):
    """A batch of EncodedImage, view-wise: data (B items), boxes (B, V, 4), flips (B, V),
    params (B, V, NUM_PARAMS), labels (B,), and the number of unreadable images skipped."""

    data: list[torch.Tensor]
    boxes: torch.Tensor
    flips: torch.Tensor
    params: torch.Tensor
    labels: torch.Tensor
    skipped: int


def draw_views(recipe: CropRecipe, height: int, width: int, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's boxes (V, 4), flips (V,) and parameters (V, NUM_PARAMS) for the recipe's views.
    Views with the same scale range and photometry (DINO's local views) are drawn together, in
    one call per kind: the worker's cost per image is that of 3 draws, not 2 + N."""
    kinds: dict[tuple, list[int]] = {}
    for v, view in enumerate(recipe.views):
        kinds.setdefault((tuple(view.scale), view.photometry), []).append(v)
    boxes = torch.empty(recipe.num_views, 4)
    flips = torch.empty(recipe.num_views, dtype=torch.bool)
    params = torch.empty(recipe.num_views, NUM_PARAMS)
    for (scale, photometry), members in kinds.items():
        rows = torch.tensor(members)
        boxes[rows] = random_resized_boxes(len(members), height, width, scale, generator)
        flips[rows] = torch.rand(len(members), generator=generator) < FLIP_P
        params[rows] = draw_params_batch(photometry, len(members), generator)
    return boxes, flips, params


class EncodedImageDataset(Dataset):
    """Indexed by (index, epoch), like :class:`~dinossl.data.loader.MultiCropDataset`; returns
    an :class:`EncodedImage`, or None for an unreadable file. Images held in memory (the
    built-in sample) travel as pixels."""

    def __init__(self, source: ImageFolder | ArrayImages, crops: CropConfig | CropRecipe, seed: int) -> None:
        self.source, self.recipe, self.seed = source, crop_recipe(crops), seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> Optional[EncodedImage]:
        index, epoch = key
        if isinstance(self.source, ArrayImages):
            data = torch.from_numpy(self.source.pixels[index]).permute(2, 0, 1).contiguous()
            height, width = data.shape[1:]
        else:
            loaded = self._read(self.source.files[index])
            if loaded is None:
                return None
            data, height, width = loaded
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        boxes, flips, params = draw_views(self.recipe, height, width, generator)
        return EncodedImage(data, boxes, flips, params, int(self.source.labels[index]))

    @staticmethod
    def _read(path: Path) -> Optional[tuple[torch.Tensor, int, int]]:
        """A JPEG's bytes (other formats: pixels decoded by PIL) and the image's height and width."""
        try:
            raw = path.read_bytes()
            with Image.open(io.BytesIO(raw)) as image:
                width, height = image.size  # the header only
                if raw.startswith(JPEG_MAGIC) and image.mode in ("RGB", "L") and upright(image) is image:
                    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
                else:  # PNG, CMYK or EXIF-rotated JPEG, ...: decoded here by the package's colour rule
                    picture = to_rgb(image)
                    width, height = picture.size
                    data = torch.from_numpy(np.array(picture)).permute(2, 0, 1).contiguous()
        except (UnidentifiedImageError, UnreadableImage, OSError, ValueError, SyntaxError) as exc:
            log.debug("skipping unreadable image %s: %s", path, exc)
            return None
        return data, height, width


def collate_encoded(items: list[Optional[EncodedImage]]) -> EncodedBatch:
    good = [item for item in items if item is not None]
    skipped = len(items) - len(good)
    if not good:
        empty = torch.empty(0)
        return EncodedBatch([], empty, empty, empty, torch.empty(0, dtype=torch.long), skipped)
    return EncodedBatch([item.data for item in good], torch.stack([item.boxes for item in good]),
                        torch.stack([item.flips for item in good]), torch.stack([item.params for item in good]),
                        torch.tensor([item.label for item in good], dtype=torch.long), skipped)


def decode_batch(data: list[torch.Tensor], device: torch.device) -> list[Optional[torch.Tensor]]:
    """Bytes or pixels -> uint8 (3, H, W) images on ``device`` (None where a JPEG fails to
    decode); the JPEGs of the batch are decoded in one call on the device."""
    images: list[Optional[torch.Tensor]] = [None] * len(data)
    jpegs = [i for i, d in enumerate(data) if d.ndim == 1]
    for i, d in enumerate(data):
        if d.ndim == 3:
            images[i] = d.to(device, non_blocking=True)
    if not jpegs:
        return images
    with warnings.catch_warnings():  # torchvision >= 0.29 points to TorchCodec; its decoders still work
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            decoded = decode_jpeg([data[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
            for i, image in zip(jpegs, decoded):
                images[i] = image
        except RuntimeError:  # one bad file fails the batched call: decode one by one
            for i in jpegs:
                try:
                    images[i] = decode_jpeg(data[i], mode=ImageReadMode.RGB, device=device)
                except RuntimeError as exc:
                    log.debug("skipping an image that does not decode: %s", exc)
    return images


def cut_views(images: list[torch.Tensor], boxes: torch.Tensor, flips: torch.Tensor, params: torch.Tensor,
              recipe: CropRecipe) -> list[RawCrops]:
    """Decoded images (B of uint8 (3, H_i, W_i) on the device), boxes (B, V, 4), flips (B, V),
    params (B, V, NUM_PARAMS), all on the host -> one RawCrops per view: uint8 (B, 3, S_v, S_v)
    on the device and the view's (B, NUM_PARAMS) parameters (left on the host for the
    photometric step). One batched resampling per distinct view size."""
    pixels = cut_boxes(images, boxes, flips, [view.size for view in recipe.views])
    return [RawCrops(view_pixels, params[:, v]) for v, view_pixels in enumerate(pixels)]


class DeviceCropLoader:
    """Iterates this process's batches of an epoch as (views, labels (B,), skipped images):
    worker processes read the files (:class:`EncodedImageDataset`), this process decodes and
    crops on ``device``; each view is a RawCrops whose pixels are already on ``device``."""

    def __init__(self, source: ImageFolder | ArrayImages, sampler: ShardedEpochSampler, batch_size: int,
                 crops: CropConfig | CropRecipe, seed: int, num_workers: int, device: torch.device) -> None:
        self.recipe, self.device, self.sampler = crop_recipe(crops), device, sampler
        self.sizes = [view.size for view in self.recipe.views]
        self.streams = SideStreamBatches(device) if device.type == "cuda" else None
        num_workers = cap_workers(num_workers, "data.num_workers")
        self.loader = DataLoader(
            EncodedImageDataset(source, self.recipe, seed), batch_size=batch_size, sampler=sampler, drop_last=True,
            collate_fn=collate_encoded, num_workers=num_workers, persistent_workers=num_workers > 0,
            pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers > 0 else None,
        )

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch

    def __iter__(self) -> Iterator[tuple[list[RawCrops], torch.Tensor, int]]:
        """Each batch is decoded and cut when the trainer asks for it, i.e. after the previous
        training step was queued: on a GPU that work overlaps the step."""
        for batch in self.loader:
            yield self._prepare(batch)

    def _prepare(self, batch: EncodedBatch) -> tuple[list[RawCrops], torch.Tensor, int]:
        kept: list[int] = []

        def decode() -> list[torch.Tensor]:
            images = decode_batch(batch.data, self.device)
            kept.extend(i for i, image in enumerate(images) if image is not None)
            return [images[i] for i in kept]

        def cut(images: list[torch.Tensor]) -> list[torch.Tensor]:
            if not images:
                return []
            index = torch.tensor(kept)
            return cut_boxes(images, batch.boxes[index], batch.flips[index], self.sizes)

        pixels = self.streams.prepare(decode, cut) if self.streams is not None else cut(decode())
        skipped = batch.skipped + len(batch.data) - len(kept)
        index = torch.tensor(kept, dtype=torch.long)
        views = [RawCrops(view_pixels, batch.params[index, v]) for v, view_pixels in enumerate(pixels)]
        return views, batch.labels[index], skipped
