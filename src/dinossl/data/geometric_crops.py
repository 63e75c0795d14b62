"""The loader half of ``data.photometric=device``: crop, flip and draw the photometric parameters.

Per view, exactly the geometric transforms of
:class:`~dinossl.data.augment.MultiCropAugmentation` (bicubic RandomResizedCrop, horizontal
flip) run on the PIL image; the photometric parameters are then drawn with the same calls, so
a seeded sample makes the same decisions in both modes. Pixels stay uint8 and the photometric
ops run later, batched, on the training device (:mod:`dinossl.data.photometric`).
"""

from __future__ import annotations

from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from dinossl.config import CropConfig
from dinossl.data.photometric_params import RawCrops, ViewPhotometry, draw_params, view_photometry


class _GeometricView:
    """PIL image -> RawCrops(uint8 (3, S, S), params (NUM_PARAMS,)) for one view."""

    def __init__(self, size: int, scale: tuple[float, float], photometry: ViewPhotometry) -> None:
        self.geometry = v2.Compose([
            v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(p=0.5),
        ])
        self.photometry = photometry

    def __call__(self, image: Image.Image) -> RawCrops:
        crop = self.geometry(image)
        params = draw_params(self.photometry)
        return RawCrops(TF.pil_to_tensor(crop), params)


class GeometricMultiCrop:
    """PIL image -> [global 1, global 2, local 1..N], each a :class:`RawCrops` with uint8
    pixels (3, S, S) and its drawn (NUM_PARAMS,) photometric parameters (DINO's per-view
    probabilities: blur 1.0 on global 1; blur 0.1 and solarise 0.2 on global 2; blur 0.5 on locals)."""

    def __init__(self, crops: CropConfig) -> None:
        global_1, global_2, local = view_photometry(crops)
        self.global_1 = _GeometricView(crops.global_size, crops.global_scale, global_1)
        self.global_2 = _GeometricView(crops.global_size, crops.global_scale, global_2)
        self.local = _GeometricView(crops.local_size, crops.local_scale, local)
        self.num_local = crops.num_local

    def __call__(self, image: Image.Image) -> list[RawCrops]:
        return [self.global_1(image), self.global_2(image)] + [self.local(image) for _ in range(self.num_local)]
