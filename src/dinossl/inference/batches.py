"""How images flow through a frozen backbone: datasets of (image, label, index) items with
unreadable images dropped, the DataLoader over them, and the pass that runs a computation on
every batch (eval mode, no gradient, the backbone's device and precision)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Iterable, Iterator, Optional, Sequence, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dinossl.data.images import ImageSource, UnreadableImage, read_image_file
from dinossl.runtime.cores import cap_workers

log = logging.getLogger("dinossl")

T = TypeVar("T")
IndexedItem = Optional[tuple[torch.Tensor, int, int]]


class TransformedImages(Dataset):
    """(transformed image, label, index) for each readable image of a source; None otherwise."""

    def __init__(self, source: ImageSource, transform: Callable) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> IndexedItem:
        try:
            image, label = self.source.load(index)
        except UnreadableImage as exc:
            log.warning("skipping unreadable image %s", exc)
            return None
        return self.transform(image), label, index


class ImageFiles(Dataset):
    """(transformed image, 0, index) for each readable file of a list of paths; None otherwise
    (a warning names the file). Pictures are RGB by the package's one colour rule."""

    def __init__(self, paths: Sequence[str | Path], transform: Callable) -> None:
        self.paths, self.transform = [Path(p) for p in paths], transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> IndexedItem:
        try:
            image = read_image_file(self.paths[index])
        except UnreadableImage as exc:
            log.warning("skipping unreadable image %s", exc)
            return None
        return self.transform(image), 0, index


def collate_indexed(items: list) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Drop unreadable (None) items: images (B, 3, H, W), labels (B,), indices (B,); None if empty."""
    good = [item for item in items if item is not None]
    if not good:
        return None
    images = torch.stack([g[0] for g in good])
    labels = torch.tensor([g[1] for g in good], dtype=torch.long)
    indices = torch.tensor([g[2] for g in good], dtype=torch.long)
    return images, labels, indices


def image_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, device: torch.device | str = "cpu",
                 collate: Optional[Callable] = collate_indexed) -> DataLoader:
    """In-order batches of ``dataset`` (workers capped at the available cores; pinned memory
    for a CUDA device)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=cap_workers(num_workers),
                      collate_fn=collate, pin_memory=torch.device(device).type == "cuda")


@dataclass
class ComputedBatch(Generic[T]):
    """What a computation gave for one batch, with the batch's labels (B,) and dataset indices (B,)."""

    indices: torch.Tensor
    labels: torch.Tensor
    values: T


def log_every(batches: int) -> int:
    """Batches between progress lines in the log (every tenth of a pass of >= 50 batches; 0: none)."""
    return max(batches // 10, 1) if batches >= 50 else 0


def indexed_batches(loader: Iterable, progress: bool = False, label: str = "images",
                    total: Optional[int] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The readable batches (images, labels, indices) of a loader built with
    :func:`collate_indexed`, with a progress bar (``progress``) or a log line every tenth."""
    total = total if total is not None else (len(loader) if hasattr(loader, "__len__") else None)
    every = log_every(total or 0)
    for step, batch in enumerate(tqdm(loader, total=total, disable=not progress, desc=label, unit="batch",
                                      leave=False), start=1):
        if every and not progress and step % every == 0:
            log.info("%s: batch %d/%d", label, step, total)
        if batch is not None:
            yield batch
