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


def _photometric(crops: CropConfig, blur_p: float, solarize_p: float) -> list[Callable]:
    """Flip, colour jitter, grayscale, blur and (only where its probability is not 0, as in the
    reference, so that no random number is drawn for it) solarisation."""
    brightness, contrast, saturation, hue = crops.color_jitter
    ops: list[Callable] = [
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)],
                       p=crops.color_jitter_p),
        v2.RandomGrayscale(p=crops.grayscale_p),
        RandomGaussianBlur(blur_p, *crops.blur_radius),
    ]
    if solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=solarize_p))
    return ops


class MultiCropAugmentation:
    """PIL image -> [global 1, global 2, local 1..N], each a normalised (3, S, S) tensor.

    Global view 1 is always blurred, global view 2 is blurred with p=0.1 and solarised with
    p=0.2, local views are blurred with p=0.5 (DINO's reference recipe).
    """

    def __init__(self, crops: CropConfig) -> None:
        bicubic = InterpolationMode.BICUBIC

        def view(size: int, scale: tuple[float, float], blur_p: float, solarize_p: float) -> v2.Compose:
            resize = v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=bicubic)
            return v2.Compose([resize, *_photometric(crops, blur_p, solarize_p), *_to_normalized_tensor()])

        self.global_1 = view(crops.global_size, crops.global_scale, 1.0, 0.0)
        self.global_2 = view(crops.global_size, crops.global_scale, 0.1, 0.2)
        self.local = view(crops.local_size, crops.local_scale, 0.5, 0.0)
        self.num_local = crops.num_local

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [self.global_1(image), self.global_2(image)] + [self.local(image) for _ in range(self.num_local)]


def evaluation_transform(resize: int = 256, crop: int = 224) -> v2.Compose:
    """Deterministic: bicubic resize of the short side to ``resize``, center crop ``crop``."""
    return v2.Compose(
        [v2.Resize(resize, interpolation=InterpolationMode.BICUBIC), v2.CenterCrop(crop), *_to_normalized_tensor()]
    )
