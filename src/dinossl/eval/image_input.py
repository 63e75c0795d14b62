"""Image files -> RGB pictures -> normalised model inputs whose sides are multiples of the patch size.

Colours follow the package's one rule (:func:`dinossl.data.images.to_rgb`: EXIF orientation,
grayscale replicated, 16-bit scaled, alpha composited over white, floating point refused); here
each conversion that changes what the picture means (grayscale, 16-bit, transparency) is also
named in a warning with the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dinossl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dinossl.data.images import UnreadableImage, colour_note, to_rgb, upright
from dinossl.errors import DataError

log = logging.getLogger("dinossl")

Size = tuple[int, int]  # (width, height), PIL's order


def open_image(path: str | Path) -> Image.Image:
    """The decoded image file (any colour mode), turned upright as its EXIF orientation says;
    DataError when missing or undecodable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return upright(image).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def as_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """RGB version of ``image`` by the package's colour rule, with a warning naming ``name`` for
    grayscale, 16-bit and transparent pictures; DataError for images the rule refuses."""
    if image.mode == "RGB":
        return image
    note = colour_note(image)
    try:
        rgb = to_rgb(image)
    except UnreadableImage as exc:
        raise DataError(f"{name}: {image.mode} images are not supported ({exc}); save it as 8-bit RGB or "
                        "grayscale") from exc
    if note == "grayscale":
        log.warning("%s: grayscale image; its one channel is used for R, G and B", name)
    elif note == "16-bit":
        log.warning("%s: 16-bit grayscale image; scaled to 8 bits and used for R, G and B", name)
    elif note == "alpha":
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        transparent = float((alpha < 255).mean())
        if transparent > 0:
            log.warning("%s: %.1f%% of the pixels are (partly) transparent; composited over white",
                        name, 100 * transparent)
        else:
            log.warning("%s: alpha channel ignored (the image is fully opaque)", name)
    return rgb


def read_rgb(path: str | Path) -> Image.Image:
    """An image file as an RGB picture (see the module's colour-mode policy)."""
    return as_rgb(open_image(path), name=str(path))


@dataclass(frozen=True)
class Geometry:
    """How a picture of size ``source`` becomes a model input: resize to ``resized``, then keep
    the top-left ``cropped`` box. Sizes are (width, height); ``cropped`` sides are multiples
    of the patch size."""

    source: Size
    resized: Size
    cropped: Size

    def apply(self, image: Image.Image, resample: int = Image.BICUBIC) -> Image.Image:
        """Resize then crop ``image`` (which must have the ``source`` size)."""
        if image.size != self.source:
            raise DataError(f"size {image.size[0]}x{image.size[1]} differs from {self.source[0]}x{self.source[1]}")
        if self.resized != self.source:
            image = image.resize(self.resized, resample=resample)
        if self.cropped != self.resized:
            image = image.crop((0, 0, *self.cropped))
        return image

    def grid(self, patch_size: int) -> tuple[int, int]:
        """(rows, columns) of the patch grid."""
        return self.cropped[1] // patch_size, self.cropped[0] // patch_size


def plan_geometry(size: Size, patch_size: int, short_side: int | None = 480, fit: str = "crop",
                  name: str = "image") -> Geometry:
    """Scale so the short side is ``short_side`` (None: keep the size), then make both sides
    multiples of ``patch_size``: ``fit="crop"`` drops the right/bottom remainder, ``fit="resize"``
    rounds each side to the nearest multiple and resizes (a slight stretch, nothing dropped).

    An image smaller than one patch is refused, whatever the scaling would make of it.
    """
    width, height = size
    if width < patch_size or height < patch_size:
        raise DataError(f"{name} is {width}x{height} pixels, smaller than one {patch_size}x{patch_size} patch")
    if short_side is not None and short_side < patch_size:
        raise DataError(f"short side {short_side} is smaller than the patch size {patch_size}")
    if short_side is None:
        resized = (width, height)
    elif width <= height:
        resized = (short_side, max(1, round(height * short_side / width)))
    else:
        resized = (max(1, round(width * short_side / height)), short_side)
    if fit == "crop":
        cropped = (resized[0] - resized[0] % patch_size, resized[1] - resized[1] % patch_size)
        return Geometry(size, resized, cropped)
    if fit == "resize":
        snapped = tuple(max(patch_size, round(side / patch_size) * patch_size) for side in resized)
        return Geometry(size, snapped, snapped)
    raise ValueError(f"fit must be 'crop' or 'resize', got {fit!r}")


def to_input(image: Image.Image) -> torch.Tensor:
    """RGB picture -> (1, 3, H, W) float32 tensor normalised with the ImageNet mean and std."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy())
    pixels = pixels.permute(2, 0, 1) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((pixels - mean) / std).unsqueeze(0)
