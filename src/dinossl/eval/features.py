"""Frozen-backbone feature extraction for the evaluations."""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dinossl.data.images import ImageSource, UnreadableImage

log = logging.getLogger("dinossl")


class TransformedImages(Dataset):
    """(transformed image, label, index) for each readable image of a source; None otherwise."""

    def __init__(self, source: ImageSource, transform: Callable) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            image, label = self.source.load(index)
        except UnreadableImage as exc:
            log.warning("skipping unreadable image %s", exc)
            return None
        return self.transform(image), label, index


def _collate(items: list):
    good = [item for item in items if item is not None]
    if not good:
        return None
    images = torch.stack([g[0] for g in good])
    labels = torch.tensor([g[1] for g in good], dtype=torch.long)
    indices = torch.tensor([g[2] for g in good], dtype=torch.long)
    return images, labels, indices


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    source: ImageSource,
    transform: Callable,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone outputs for every readable image: features (N, d) float32 and labels (N,) on CPU."""
    loader = DataLoader(
        TransformedImages(source, transform), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=_collate,
    )
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    try:
        for batch in loader:
            if batch is None:
                continue
            images, batch_labels, _ = batch
            features.append(backbone(images.to(device, non_blocking=True)).float().cpu())
            labels.append(batch_labels)
    finally:
        backbone.train(was_training)
    if not features:
        raise ValueError("no readable images to extract features from")
    return torch.cat(features), torch.cat(labels)
