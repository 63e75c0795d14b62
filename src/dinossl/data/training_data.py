"""What a training run iterates over: the image source, the epoch-sharded sampler and the crop
loader that ``data.geometric`` / ``data.photometric`` choose."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Union

import torch

from dinossl.config import DataConfig
from dinossl.data.batched_crops import BatchedCropLoader, images_in_memory
from dinossl.data.crop_recipe import CropRecipe
from dinossl.data.device_crops import DeviceCropLoader
from dinossl.data.images import ArrayImages, ImageFolder
from dinossl.data.sample import open_images
from dinossl.data.loader import MultiCropDataset, ShardedEpochSampler, build_multicrop_transform, build_train_loader
from dinossl.data.photometric_params import RawCrops
from dinossl.errors import DataError

# One batch: the views ([V x (B, 3, S, S)] float crops, or RawCrops to augment on the device),
# labels (B,) and the number of unreadable images skipped.
Batch = tuple[list[Union[torch.Tensor, RawCrops]], torch.Tensor, int]


@dataclass
class TrainingData:
    """The crop loader of one process and what the trainer needs to know about it."""

    loader: Iterable[Batch]
    sampler: ShardedEpochSampler
    num_images: int
    skipped_at_load: int  # unreadable files dropped while loading images into memory
    listing: ImageFolder | ArrayImages  # the images as listed, before any decode (the data's fingerprint)

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def set_position(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch ``epoch`` from step ``start_step`` (0-based) on the next pass."""
        self.sampler.set_epoch(epoch, start_step)


def build_training_data(data: DataConfig, recipe: CropRecipe, batch_size: int, rank: int, world_size: int,
                        seed: int, device: torch.device | str = "cpu") -> TrainingData:
    """Open ``data.path`` (None: the built-in sample) and choose the crop loader: batched crops of
    in-memory images cut on the training ``device`` (``data.geometric=batched``), images decoded
    and cropped on ``device`` (``data.geometric=device``) or per-image crops in loader workers
    (pinned batches when ``device`` is a GPU)."""
    device = torch.device(device)
    source = listing = open_images(data.path, "train")
    skipped = 0
    if data.geometric == "batched":  # decode once; unreadable files are dropped here
        source, skipped = images_in_memory(source)
    sampler = ShardedEpochSampler(len(source), batch_size, rank, world_size, seed)
    if sampler.steps_per_epoch == 0:
        raise DataError(f"{len(source)} images are fewer than one global batch of {batch_size * world_size}; "
                        "lower train.batch_size_per_process")
    if data.geometric == "batched":
        loader: Iterable[Batch] = BatchedCropLoader(source, sampler, batch_size, recipe, seed, device)
    elif data.geometric == "device":
        loader = DeviceCropLoader(source, sampler, batch_size, recipe, seed, data.num_workers, device)
    else:
        dataset = MultiCropDataset(source, build_multicrop_transform(data, recipe), seed)
        loader = build_train_loader(dataset, sampler, batch_size, data.num_workers, pin_memory=device.type == "cuda")
    return TrainingData(loader, sampler, len(source), skipped, listing)
