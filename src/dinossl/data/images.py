"""Image sources (folders with or without class subfolders, and in-memory arrays) and the
package's one colour rule.

An image source gives ``len(source)`` and ``source.load(i) -> (PIL RGB image, label)``;
unlabeled images carry label -1. Files that cannot be decoded raise
:class:`UnreadableImage`, which the loaders skip and count: truncated or empty files, other
files named like images, images over PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``)
and floating-point images.

Colour rule (:func:`to_rgb`; training, evaluation and the device crop path all use it): the
picture is first turned upright as its EXIF orientation says; grayscale is replicated to R, G
and B; 16-bit grayscale is scaled to 8 bits (65535 -> 255); palette, CMYK, YCbCr and other
8-bit modes are converted by PIL; an alpha channel (also a palette's transparency) is removed
by compositing the picture over white; floating-point and 32-bit integer images beyond 16 bits
are refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dinossl.errors import DataError

ORIENTATION_TAG = 0x0112  # EXIF orientation
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


class UnreadableImage(Exception):
    """An image file that exists but cannot be decoded."""


class ImageSource(Protocol):
    classes: list[str]

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[Image.Image, int]: ...


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


class ImageFolder:
    """Images under ``root``: ``root/<class>/**/img`` are labelled by class (sorted names),
    images directly in ``root`` are unlabeled (-1). Other files are ignored."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise DataError(f"data folder {self.root} does not exist")
        if not self.root.is_dir():
            raise DataError(f"data path {self.root} is a file, not a folder of images")
        entries = sorted(self.root.iterdir())
        class_dirs = [d for d in entries if d.is_dir() and not d.name.startswith(".")]
        self.classes: list[str] = []
        files: list[Path] = []
        labels: list[int] = []
        for path in entries:
            if _is_image(path):
                files.append(path)
                labels.append(-1)
        for class_dir in class_dirs:
            found = sorted(p for p in class_dir.rglob("*") if _is_image(p))
            if not found:
                continue
            label = len(self.classes)
            self.classes.append(class_dir.name)
            files.extend(found)
            labels.extend([label] * len(found))
        if not files:
            if not entries:
                raise DataError(f"data folder {self.root} is empty")
            raise DataError(
                f"no images found in {self.root} (looked for {', '.join(IMAGE_EXTENSIONS)} files "
                "directly inside it or in class subfolders)"
            )
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self._check_some_readable()

    def _check_some_readable(self, count: int = 16) -> None:
        indices = np.linspace(0, len(self.files) - 1, num=min(count, len(self.files))).astype(int)
        for index in indices:
            try:
                self.load(int(index))
                return
            except UnreadableImage:
                continue
        raise DataError(f"none of {len(indices)} images checked in {self.root} could be decoded")

    @property
    def labeled(self) -> bool:
        return bool((self.labels >= 0).all())

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[Image.Image, int]:
        return read_image_file(self.files[index]), int(self.labels[index])


def read_image_file(path: str | Path) -> Image.Image:
    """An image file as an 8-bit RGB picture (:func:`to_rgb`); UnreadableImage when it cannot be
    decoded (including images over PIL's decompression-bomb limit)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"{path}: larger than {Image.MAX_IMAGE_PIXELS} pixels, refused as a possible "
                              f"decompression bomb ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UnreadableImage(f"{path}: {exc}") from exc


def _name(image: Image.Image) -> str:
    return str(getattr(image, "filename", "") or "image")


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
GRAY_MODES = ("1", "L", "LA", "La") + SIXTEEN_BIT_MODES


def has_alpha(image: Image.Image) -> bool:
    """Whether the picture carries transparency: an alpha channel or a palette's transparent index."""
    return image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def colour_note(image: Image.Image) -> Optional[str]:
    """What :func:`to_rgb` does to the picture's colours: "alpha", "grayscale", "16-bit" or None
    (RGB, palette without transparency, CMYK, ...: an ordinary conversion)."""
    if has_alpha(image):
        return "alpha"
    if image.mode in SIXTEEN_BIT_MODES:
        return "16-bit"
    return "grayscale" if image.mode in GRAY_MODES else None


def upright(image: Image.Image) -> Image.Image:
    """The picture turned as its EXIF orientation tag says (the picture itself when it has none)."""
    orientation = image.getexif().get(ORIENTATION_TAG, 1)
    return ImageOps.exif_transpose(image) if orientation not in (None, 1) else image


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of an open image, by the module's colour rule; UnreadableImage for
    floating-point images and 32-bit integer values outside 0-65535."""
    name = _name(image)
    image = upright(image)
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.int64)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise UnreadableImage(f"{name}: {mode} values outside 0-65535 are not supported")
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        raise UnreadableImage(f"{name}: floating-point images are not supported")
    if has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if mode != "RGB" else image.copy()


class ArrayImages:
    """Images held in a uint8 array (N, H, W, 3) with integer labels (N,)."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> None:
        if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"expected uint8 pixels (N, H, W, 3), got {pixels.dtype} {pixels.shape}")
        if len(labels) != len(pixels):
            raise ValueError("pixels and labels differ in length")
        self.pixels = pixels
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)

    @property
    def labeled(self) -> bool:
        return bool((self.labels >= 0).all())

    def __len__(self) -> int:
        return len(self.pixels)

    def load(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.pixels[index]), int(self.labels[index])
