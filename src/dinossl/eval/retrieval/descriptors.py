"""One global descriptor per image from a frozen backbone, for nearest-neighbour search.

Images become inputs by a :class:`Resize` policy:

* ``longest``: shrunk (never enlarged) so the longer side is at most ``size``, aspect ratio
  kept, Lanczos filter (PIL ``thumbnail``, as the reference's retrieval evaluation);
* ``square``: resized to ``size`` x ``size``, bicubic (the reference's copy detection);

An optional box (x1, y1, x2, y2) crops the image first (the benchmark's query regions).
Each view the backbone sees (the image at one scale, maybe mirrored) is cropped at the right
and bottom to multiples of the ViT patch size (what the patch embedding's stride does to the
remainder anyway); the smaller scales are interpolated from the whole input, not from its
patch-aligned part, as the reference's ``multi_scale`` does.

The descriptor (:class:`DescriptorSpec`) is the [CLS] output (``cls``; a ResNet's pooled
output) or [CLS] concatenated with the GeM pooling (exponent ``gem_p``, default 4) of the
last layer's patch tokens (``cls+gem``: 2 x d values; ViT only). With several ``scales``
(multiscale: 1, 1/sqrt 2, 1/2 by bilinear interpolation of the input, no antialiasing,
align_corners false, the scale factor itself used for the sampling positions) and/or
``mirror`` (the image and its left-right mirror), the descriptors of all these views are
averaged. The
returned descriptors are not normalised; the protocols L2-normalise them per image (or
whiten them first).

Colour: the package's one rule (:func:`dinossl.data.images.to_rgb`: EXIF orientation,
grayscale replicated, 16-bit scaled, alpha composited over white); grayscale, 16-bit and
transparent images are counted; floating-point images are unreadable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dinossl.errors import DataError, DinoError
from dinossl.data.images import UnreadableImage, colour_note, to_rgb
from dinossl.eval.image_input import open_image, to_input
from dinossl.inference import LoadedBackbone

RESIZE_MODES = ("longest", "square")
POOLINGS = ("cls", "cls+gem")
MULTISCALE = (1.0, 1 / math.sqrt(2), 0.5)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Resize:
    """How an image is sized before the backbone (see the module docstring)."""

    mode: str = "square"
    size: int = 224

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise DinoError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {self.mode!r}")
        if self.size < 1:
            raise DinoError(f"image size must be positive, got {self.size}")

    def apply(self, image: Image.Image) -> Image.Image:
        if self.mode == "longest":
            image = image.copy()
            image.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
            return image
        return image.resize((self.size, self.size), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class DescriptorSpec:
    """Which backbone outputs form the descriptor and over which views they are averaged."""

    pooling: str = "cls"
    scales: tuple[float, ...] = (1.0,)
    mirror: bool = False
    gem_p: float = 4.0

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise DinoError(f"descriptor must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not self.scales or min(self.scales) <= 0:
            raise DinoError(f"scales must be positive, got {list(self.scales)}")
        if self.gem_p <= 0:
            raise DinoError(f"GeM exponent must be positive, got {self.gem_p}")

    def check(self, backbone: nn.Module) -> None:
        """DinoError when the backbone cannot give this descriptor."""
        if self.pooling == "cls+gem" and not hasattr(backbone, "intermediate_layers"):
            raise DinoError(f"the cls+gem descriptor needs a ViT's patch tokens; {type(backbone).__name__} has none "
                            "(use the cls descriptor)")

    def describe(self) -> dict:
        return {"pooling": self.pooling, "scales": list(self.scales), "mirror": self.mirror,
                **({"gem_p": self.gem_p} if self.pooling == "cls+gem" else {})}


@dataclass(frozen=True)
class ImageRequest:
    """An image file, and optionally the region (x1, y1, x2, y2) to describe."""

    path: Path
    box: Optional[Box] = None


def patch_size_of(backbone: nn.Module) -> int:
    """The ViT patch size (1 for backbones without one)."""
    return int(getattr(backbone, "patch_size", 1) or 1)


def fit_to_patches(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(..., H, W) -> (..., H - H % patch, W - W % patch): crop the right/bottom remainder."""
    height, width = pixels.shape[-2:]
    if height < patch or width < patch:
        raise DataError(f"a {width}x{height} input is smaller than one {patch}x{patch} patch")
    return pixels[..., : height - height % patch, : width - width % patch]


def _rgb(image: Image.Image, name: str) -> tuple[Image.Image, Optional[str]]:
    """RGB picture by the package's colour rule and a note of the conversion ('grayscale',
    '16-bit', 'alpha' or None); DataError for a picture the rule refuses."""
    if image.mode == "RGB":
        return image, None
    try:
        return to_rgb(image), colour_note(image)
    except UnreadableImage as exc:
        raise DataError(f"{name}: {exc}") from exc


def _crop_box(image: Image.Image, box: Box, name: str) -> Image.Image:
    width, height = image.size
    x1, y1, x2, y2 = (round(v) for v in box)  # as PIL's crop rounds a float box (the benchmark's own code)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{name}: region {list(box)} lies outside the {width}x{height} image")
    return image.crop((x1, y1, x2, y2))


def load_input(request: ImageRequest, resize: Resize, patch: int) -> tuple[torch.Tensor, Optional[str]]:
    """(3, H, W) normalised input of one image request (not yet cropped to the patch grid: each
    view is, in :func:`describe_batch`), and its colour-conversion note."""
    name = str(request.path)
    image, note = _rgb(open_image(request.path), name)
    if request.box is not None:
        image = _crop_box(image, request.box, name)
    pixels = to_input(resize.apply(image))[0]
    try:
        fit_to_patches(pixels, patch)  # refuse an input smaller than one patch here, naming the file
    except DataError as exc:
        raise DataError(f"{name}: {exc}") from exc
    return pixels, note


class _Inputs(Dataset):
    """(index, input or None, error or None, note) for each request."""

    def __init__(self, requests: Sequence[ImageRequest], resize: Resize, patch: int) -> None:
        self.requests, self.resize, self.patch = list(requests), resize, patch

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, index: int):
        try:
            pixels, note = load_input(self.requests[index], self.resize, self.patch)
            return index, pixels, None, note
        except DataError as exc:
            return index, None, str(exc), None


@torch.no_grad()
def describe_batch(backbone: nn.Module, images: torch.Tensor, spec: DescriptorSpec) -> torch.Tensor:
    """(B, 3, H, W) inputs -> (B, D) descriptors, averaged over the spec's views; each view is
    interpolated from the whole input, then cropped to the patch grid."""
    patch = patch_size_of(backbone)
    total, views = None, 0
    for mirrored in ((False, True) if spec.mirror else (False,)):
        base = images.flip(-1) if mirrored else images
        for scale in spec.scales:
            view = base if scale == 1 else F.interpolate(base, scale_factor=scale, mode="bilinear",
                                                         align_corners=False)
            pooled = _pool(backbone, fit_to_patches(view, patch), spec)
            total = pooled if total is None else total + pooled
            views += 1
    return total / views


def _pool(backbone: nn.Module, images: torch.Tensor, spec: DescriptorSpec) -> torch.Tensor:
    if spec.pooling == "cls":
        return backbone(images).float()
    tokens = backbone.intermediate_layers(images, 1)[0].float()
    patches = tokens[:, int(getattr(backbone, "num_prefix_tokens", 1)):]
    gem = patches.clamp(min=1e-6).pow(spec.gem_p).mean(dim=1).pow(1.0 / spec.gem_p)
    return torch.cat([tokens[:, 0], gem], dim=1)


@dataclass
class DescriptorBatch:
    """Descriptors (b, D) float32 on the CPU of the requests ``indices``; the unreadable requests
    met since the previous batch; ``seen``: every request before this index has been handled."""

    indices: list[int]
    descriptors: torch.Tensor
    unreadable: list[tuple[int, str]]
    seen: int
    notes: dict[str, int] = field(default_factory=dict)


@torch.no_grad()
def iter_descriptors(
    backbone: nn.Module | LoadedBackbone, requests: Sequence[ImageRequest], resize: Resize, spec: DescriptorSpec,
    device: torch.device | str = "cpu", batch_size: int = 16, num_workers: int = 0, progress: bool = False,
    label: str = "images",
) -> Iterator[DescriptorBatch]:
    """Describe ``requests`` in order, in batches of up to ``batch_size`` consecutive images of
    the same input size. Unreadable images are reported, not raised. ``backbone``: a module on
    ``device``, or a :class:`~dinossl.inference.LoadedBackbone` (its device and precision)."""
    if batch_size < 1:
        raise DinoError(f"batch size must be positive, got {batch_size}")
    loaded = backbone if isinstance(backbone, LoadedBackbone) else LoadedBackbone(backbone, torch.device(device))
    spec.check(loaded.module)
    loaded.module.eval()
    loader = DataLoader(_Inputs(requests, resize, patch_size_of(loaded.module)), batch_size=None, shuffle=False,
                        num_workers=num_workers)
    indices: list[int] = []
    inputs: list[torch.Tensor] = []
    unreadable: list[tuple[int, str]] = []
    notes: dict[str, int] = {}
    seen = 0

    def flush() -> DescriptorBatch:
        nonlocal indices, inputs, unreadable, notes
        if inputs:
            described = loaded.apply(lambda module, x: describe_batch(module, x, spec), torch.stack(inputs)).cpu()
        else:
            described = torch.empty(0, 0)
        batch = DescriptorBatch(indices, described, unreadable, seen, notes)
        indices, inputs, unreadable, notes = [], [], [], {}
        return batch

    for index, pixels, error, note in tqdm(loader, total=len(requests), disable=not progress, desc=label,
                                           unit="img", leave=False):
        if pixels is None:
            unreadable.append((int(index), error))
        else:
            if inputs and (inputs[0].shape != pixels.shape or len(inputs) == batch_size):
                yield flush()
            indices.append(int(index))
            inputs.append(pixels)
            if note:
                notes[note] = notes.get(note, 0) + 1
        seen = int(index) + 1
    if inputs or unreadable:
        yield flush()


@dataclass
class Described:
    """Descriptors (n, D) of the readable requests ``kept`` (indices into the requests), and
    the unreadable ones (index, reason)."""

    descriptors: torch.Tensor
    kept: np.ndarray
    unreadable: list[tuple[int, str]]
    notes: dict[str, int]


def describe_images(
    backbone: nn.Module | LoadedBackbone, requests: Sequence[ImageRequest], resize: Resize, spec: DescriptorSpec,
    device: torch.device | str = "cpu", batch_size: int = 16, num_workers: int = 0, progress: bool = False,
    label: str = "images", skip_unreadable: bool = False,
) -> Described:
    """Every request's descriptor, in order. An unreadable image raises DataError unless
    ``skip_unreadable`` (then it is left out and listed); none readable always raises."""
    parts: list[torch.Tensor] = []
    kept: list[int] = []
    unreadable: list[tuple[int, str]] = []
    notes: dict[str, int] = {}
    for batch in iter_descriptors(backbone, requests, resize, spec, device, batch_size, num_workers, progress, label):
        if batch.unreadable and not skip_unreadable:
            raise DataError(batch.unreadable[0][1])
        unreadable += batch.unreadable
        if batch.indices:
            parts.append(batch.descriptors)
            kept += batch.indices
        for key, count in batch.notes.items():
            notes[key] = notes.get(key, 0) + count
    if not parts:
        raise DataError(f"none of the {len(requests)} {label} could be read")
    return Described(torch.cat(parts), np.asarray(kept, dtype=np.int64), unreadable, notes)
