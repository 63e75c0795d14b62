"""How well attention masks match foreground masks: the Jaccard protocol of DINO's Figure 4.

For each image, every head's 60%-mass mask (patch level, nearest-upsampled to the model
input) is compared with the ground-truth foreground (resized and cropped like the image,
thresholded; a mask stored at another scale than its image but with the same aspect ratio is
rescaled, one of another aspect ratio is refused): Jaccard index per head, the best head and
the mean over heads; the set's figures are the averages over images. The mask of the
head-averaged map and the best fixed head over the set are reported too.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from tqdm import tqdm

from dinossl.errors import DataError
from dinossl.eval.attention.maps import DEFAULT_FRACTION, check_fraction, upsample
from dinossl.eval.attention.report import ImageAttention, attend
from dinossl.eval.frames import image_files
from dinossl.eval.image_input import Geometry, open_image, plan_geometry
from dinossl.eval.mask_metrics import region_similarity
from dinossl.inference import describe_backbone

log = logging.getLogger("dinossl")

MASK_THRESHOLD = 127


jaccard = region_similarity  # the Jaccard index of two (H, W) boolean masks is DAVIS's J


def pair_images_with_masks(images: str | Path, masks: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) files matched by file stem; DataError naming images without a mask."""
    image_paths = image_files(images)
    mask_paths = {p.stem: p for p in image_files(masks)}
    missing = [p.name for p in image_paths if p.stem not in mask_paths]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise DataError(f"no mask in {masks} for {shown}")
    return [(p, mask_paths[p.stem]) for p in image_paths]


def open_mask(path: str | Path) -> Image.Image:
    """A foreground mask file as a gray (mode L) picture: gray and colour masks by their gray
    level; palette masks (VOC/DAVIS style) by index, every index but 0 and 255 (void) being
    foreground (255 in the result); 16-bit and float masks are refused."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask {path} does not exist")
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode == "P":
                index = np.asarray(mask)
                return Image.fromarray(np.where((index != 0) & (index != 255), 255, 0).astype(np.uint8))
            if mask.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise DataError(f"mask {path}: {mask.mode} masks are not supported; save it as 8-bit gray")
            return mask.convert("L")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"mask {path}: not a readable image ({exc})") from exc


def mask_on_input(mask: Image.Image, geometry: Geometry, threshold: int, name: str) -> tuple[np.ndarray, bool]:
    """The gray ``mask`` (see :func:`open_mask`) on the model input: (H, W) bool, and whether the mask had to be
    rescaled (same aspect ratio as its image to within one pixel, other size)."""
    image_w, image_h = geometry.source
    mask_w, mask_h = mask.size
    rescaled = mask.size != geometry.source
    if rescaled:
        gap = abs(mask_w / mask_h - image_w / image_h) / (image_w / image_h)
        if gap > 1 / min(mask_w, mask_h) + 1 / min(image_w, image_h):
            raise DataError(f"mask {name} is {mask_w}x{mask_h}, its image is {image_w}x{image_h}: the aspect "
                            f"ratios differ ({mask_w / mask_h:.3f} vs {image_w / image_h:.3f}), so the mask "
                            "cannot be aligned with the image")
    gray = mask.resize(geometry.resized, resample=Image.BILINEAR)
    return np.asarray(gray.crop((0, 0, *geometry.cropped))) > threshold, rescaled


@dataclass
class ImageJaccard:
    """Scores of one image: Jaccard per head, best head, mean over heads, mean-map mask."""

    name: str
    per_head: list[float]
    best_head: int
    best: float
    mean: float
    mean_map: float


def score_image(result: ImageAttention, truth: np.ndarray, name: str) -> ImageJaccard:
    """Jaccard of each of ``result``'s masks against the (H, W) boolean ground truth on its input."""
    masks = upsample(result.masks, result.patch_size).numpy()
    scores = [jaccard(mask, truth) for mask in masks]
    per_head = scores[:-1]
    best_head = int(np.argmax(per_head))
    return ImageJaccard(name, per_head, best_head, per_head[best_head], float(np.mean(per_head)), scores[-1])


@dataclass(frozen=True)
class MaskSettings:
    """``dino eval masks``: image size, mass fraction, ground-truth threshold, figure examples."""

    short_side: Optional[int] = 480  # None: the image's own size
    fraction: float = DEFAULT_FRACTION
    mask_threshold: int = MASK_THRESHOLD  # ground-truth pixels above this gray level are foreground
    examples: int = 4  # example images in the figure

    def __post_init__(self) -> None:
        check_fraction(self.fraction)
        if self.short_side is not None and self.short_side < 1:
            raise DataError(f"short_side must be positive, got {self.short_side}")
        if not 0 <= self.mask_threshold < 255 or self.examples < 0:
            raise DataError("mask_threshold must be in [0, 255) and examples >= 0")


def evaluate_masks(backbone: nn.Module, pairs: Sequence[tuple[Path, Path]], short_side: Optional[int] = 480,
                   fraction: float = DEFAULT_FRACTION, threshold: int = MASK_THRESHOLD,
                   device: str | torch.device = "cpu", progress: bool = True,
                   keep: int = 0) -> tuple[dict, list[tuple[ImageAttention, np.ndarray]]]:
    """Score every (image, mask) pair; returns the JSON-ready report and, for the first ``keep``
    images, (attention result, ground truth on its input) for figures."""
    check_fraction(fraction)
    if not pairs:
        raise DataError("no image/mask pairs")
    images, kept, patch_size, rescaled = [], [], None, 0
    for image_path, mask_path in tqdm(pairs, desc="attention masks", unit="image", disable=not progress):
        image = open_image(image_path)
        mask = open_mask(mask_path)
        result = attend(backbone, image, short_side, fraction, device, name=str(image_path))
        patch_size = result.patch_size
        geometry = plan_geometry(image.size, result.patch_size, short_side, fit="crop", name=str(image_path))
        truth, was_rescaled = mask_on_input(mask, geometry, threshold, str(mask_path))
        rescaled += was_rescaled
        images.append(score_image(result, truth, image_path.name))
        if len(kept) < keep:
            kept.append((result, truth))
    if rescaled:
        log.warning("%d of %d masks differ in size from their images (same aspect ratio): rescaled to them",
                    rescaled, len(pairs))
    heads = len(images[0].per_head)
    per_head = np.mean([s.per_head for s in images], axis=0)
    report = {
        "weights": {"backbone": describe_backbone(backbone)},
        "settings": {"short_side": short_side, "mass_fraction": fraction, "mask_threshold": threshold,
                     "patch_size": patch_size, "heads": heads},
        "summary": {
            "images": len(images),
            "rescaled_masks": rescaled,
            "best_head_jaccard": float(np.mean([s.best for s in images])),
            "mean_head_jaccard": float(np.mean([s.mean for s in images])),
            "mean_map_jaccard": float(np.mean([s.mean_map for s in images])),
            "per_head_jaccard": [float(v) for v in per_head],
            "best_fixed_head": int(np.argmax(per_head)),
        },
        "images": [asdict(s) for s in images],
    }
    return report, kept
