"""The CIFAR-10 sample shipped inside the package (one compressed file of JPEG bytes).

``cifar10_sample.npz`` holds ``jpeg`` (all JPEG files concatenated, uint8), ``offsets``
(N + 1 int64 byte offsets), ``labels`` (N int64), ``split`` (N uint8: 0 train, 1 held-out)
and ``classes`` (unicode names). It is built by ``scripts/make_sample.py`` from the
CIFAR-10 JPEG export (Krizhevsky 2009). :func:`open_images` falls back to it when a run names
no image folder.
"""

from __future__ import annotations

import io
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from dinossl.data.images import ArrayImages, ImageFolder

SAMPLE_FILE = "cifar10_sample.npz"
SPLITS = {"train": 0, "heldout": 1}


@lru_cache(maxsize=1)
def _decoded() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    with resources.files("dinossl.data").joinpath("sample").joinpath(SAMPLE_FILE).open("rb") as handle:
        archive = np.load(handle, allow_pickle=False)
        jpeg, offsets = archive["jpeg"], archive["offsets"]
        labels, split, classes = archive["labels"], archive["split"], [str(c) for c in archive["classes"]]
    pixels = np.stack(
        [np.asarray(Image.open(io.BytesIO(jpeg[a:b].tobytes())).convert("RGB")) for a, b in zip(offsets[:-1], offsets[1:])]
    )
    return pixels, labels, split, classes


def load_sample(split: str = "train") -> ArrayImages:
    """The sample's ``train`` part (for pretraining and as k-NN bank) or ``heldout`` part."""
    if split not in SPLITS:
        raise ValueError(f"unknown sample split {split!r}; choose from {', '.join(SPLITS)}")
    pixels, labels, splits, classes = _decoded()
    keep = splits == SPLITS[split]
    return ArrayImages(pixels[keep], labels[keep], classes)


def open_images(path: str | Path | None, split: str = "train") -> ImageFolder | ArrayImages:
    """A folder of images, or the built-in sample's ``split`` when ``path`` is None."""
    if path is None:
        return load_sample(split)
    return ImageFolder(path)
