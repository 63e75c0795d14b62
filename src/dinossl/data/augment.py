"""DINO's multi-crop augmentation and the deterministic evaluation transform.

All randomness comes from torch's global generator, which :class:`MultiCropDataset`
seeds per (run seed, epoch, image index), so crops do not depend on worker layout.
"""

from __future__ import annotations

from typing import Callable

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from dinossl.config import CropConfig
from dinossl.data.crop_recipe import FLIP_P, CropRecipe, ViewSpec, crop_recipe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomGaussianBlur:
    """PIL Gaussian blur with radius ~ U[radius_min, radius_max], applied with probability p."""

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.p <= 0 or torch.rand(()).item() >= self.p:
            return image
        radius = self.radius_min + (self.radius_max - self.radius_min) * torch.rand(()).item()
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


def _to_normalized_tensor() -> list[Callable]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def _photometric(view: ViewSpec) -> list[Callable]:
    """Flip, colour jitter, grayscale, blur and (only where its probability is not 0, as in the
    reference, so that no random number is drawn for it) solarisation."""
    photometry = view.photometry
    brightness, contrast, saturation, hue = photometry.color_jitter
    ops: list[Callable] = [
        v2.RandomHorizontalFlip(p=FLIP_P),
        v2.RandomApply([v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)],
                       p=photometry.color_jitter_p),
        v2.RandomGrayscale(p=photometry.grayscale_p),
        RandomGaussianBlur(photometry.blur_p, *photometry.blur_radius),
    ]
    if photometry.solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=photometry.solarize_p))
    return ops


def view_transform(view: ViewSpec) -> v2.Compose:
    """PIL image -> one normalised (3, S, S) crop of ``view``."""
    resize = v2.RandomResizedCrop(view.size, scale=tuple(view.scale), interpolation=InterpolationMode.BICUBIC)
    return v2.Compose([resize, *_photometric(view), *_to_normalized_tensor()])


class MultiCropAugmentation:
    """PIL image -> one normalised (3, S, S) tensor per view of the crop recipe, global views first
    (with DINO's recipe: global view 1 always blurred, global view 2 blurred with p=0.1 and
    solarised with p=0.2, local views blurred with p=0.5)."""

    def __init__(self, crops: CropConfig | CropRecipe) -> None:
        self.recipe = crop_recipe(crops)
        self.views = [view_transform(view) for view in self.recipe.views]

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [view(image) for view in self.views]


def evaluation_transform(resize: int = 256, crop: int = 224) -> v2.Compose:
    """Deterministic: bicubic resize of the short side to ``resize``, center crop ``crop``."""
    return v2.Compose(
        [v2.Resize(resize, interpolation=InterpolationMode.BICUBIC), v2.CenterCrop(crop), *_to_normalized_tensor()]
    )
