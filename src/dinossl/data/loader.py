"""Multi-crop dataset, epoch-sharded sampler and the training DataLoader.

Each sample's augmentation is seeded from (seed, epoch, index), so crops are the same
whatever the number of processes or workers, differ between images and epochs, and a
resumed run sees the crops an uninterrupted run would have seen. The sampler can start an
epoch at any step (a mid-epoch resume), and the DataLoader draws its workers' base seed from
a generator of its own, never from the global RNG that the training step uses.
"""

from __future__ import annotations

import logging
import signal
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dinossl.config import DataConfig
from dinossl.data.augment import MultiCropAugmentation
from dinossl.data.crop_recipe import CropRecipe
from dinossl.data.geometric_crops import GeometricMultiCrop
from dinossl.data.images import ImageSource, UnreadableImage
from dinossl.data.photometric_params import RawCrops
from dinossl.runtime.cores import cap_workers

log = logging.getLogger("dinossl")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed unique to one image in one epoch of one run."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def build_multicrop_transform(data: DataConfig, recipe: Optional[CropRecipe] = None) -> Callable:
    """The per-image transform for ``data.photometric``: "loader" -> normalised float crops
    (:class:`MultiCropAugmentation`); "device" -> uint8 crops with their photometric parameters
    (:class:`GeometricMultiCrop`), augmented later on the training device. ``recipe`` defaults
    to the one ``data.crops`` describes."""
    recipe = recipe or CropRecipe.from_config(data.crops)
    if data.photometric == "device":
        return GeometricMultiCrop(recipe)
    return MultiCropAugmentation(recipe)


class MultiCropDataset(Dataset):
    """Indexed by (index, epoch); returns (the transform's list of crops, label) or None if unreadable."""

    def __init__(self, source: ImageSource, transform: Callable, seed: int) -> None:
        self.source, self.transform, self.seed = source, transform, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        try:
            image, label = self.source.load(index)
        except UnreadableImage as exc:
            log.debug("skipping unreadable image %s", exc)
            return None
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(sample_seed(self.seed, epoch, index))  # CPU only
            crops = self.transform(image)
        return crops, label


class ShardedEpochSampler(Sampler):
    """Yields (index, epoch) for this process's share of each epoch's global batches.

    The epoch's permutation (seeded by seed + epoch) is cut into global batches of
    ``batch_size * world_size`` images, the incomplete last one dropped; process ``rank``
    takes every ``world_size``-th image of each global batch. With one process this is the
    plain shuffled order, and the union over processes of step s is the same global batch.
    ``set_epoch(epoch, start_step)`` skips the epoch's first ``start_step`` steps (a run resumed
    inside an epoch).
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.epoch = 0
        self.start_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is outside an epoch of {self.steps_per_epoch} steps")
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.num_samples)
        global_batch = self.batch_size * self.world_size
        for step in range(self.start_step, self.steps_per_epoch):
            chunk = order[step * global_batch:(step + 1) * global_batch]
            for index in chunk[self.rank::self.world_size].tolist():
                yield index, self.epoch


def _stack_view(crops: list) -> torch.Tensor | RawCrops:
    """One view of B images -> (B, 3, S, S), or RawCrops of (B, 3, S, S) pixels and (B, P) params."""
    if isinstance(crops[0], RawCrops):
        return RawCrops(torch.stack([c.pixels for c in crops]), torch.stack([c.params for c in crops]))
    return torch.stack(crops)


def collate_crops(items: list) -> tuple[list[torch.Tensor | RawCrops], torch.Tensor, int]:
    """Stack view-wise: ([V x (B, 3, S_v, S_v)], labels (B,), number of skipped images); with
    ``data.photometric=device`` each view is a RawCrops (uint8 pixels, parameters)."""
    good = [item for item in items if item is not None]
    skipped = len(items) - len(good)
    if not good:
        return [], torch.empty(0, dtype=torch.long), skipped
    num_views = len(good[0][0])
    crops = [_stack_view([item[0][v] for item in good]) for v in range(num_views)]
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    return crops, labels, skipped


def _seed_worker(worker_id: int) -> None:
    # Crops are seeded per sample; this only keeps other libraries' RNGs distinct per worker.
    info = torch.utils.data.get_worker_info()
    np.random.seed(info.seed % 2**32)
    # A scheduler's SIGTERM / SIGUSR1 reaches every process of the job: the training process
    # finishes its step, checkpoints and shuts the workers down; a worker must not die first.
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


def loader_generator(seed: int) -> torch.Generator:
    """The DataLoader's own generator (its workers' base seed): without one, the DataLoader
    draws the base seed from the global RNG, shifting the training step's random draws by one
    draw in some epochs only (those in which worker processes start)."""
    state = np.random.SeedSequence([seed, 0x10AD]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state.view(np.uint64)[0] >> 1))


def build_train_loader(dataset: MultiCropDataset, sampler: ShardedEpochSampler, batch_size: int,
                       num_workers: int, pin_memory: bool, generator: Optional[torch.Generator] = None) -> DataLoader:
    """DataLoader over the sampler's share, with persistent, pinned workers when asked (at most
    one per available core); its generator defaults to :func:`loader_generator` of the dataset's seed."""
    num_workers = cap_workers(num_workers, "data.num_workers")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate_crops,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=generator if generator is not None else loader_generator(dataset.seed),
        prefetch_factor=4 if num_workers > 0 else None,
    )
