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
from dinossl.data.crop_recipe import FLIP_P, CropRecipe, ViewSpec, crop_recipe
from dinossl.data.photometric_params import RawCrops, draw_params


class _GeometricView:
    """PIL image -> RawCrops(uint8 (3, S, S), params (NUM_PARAMS,)) for one view."""

    def __init__(self, view: ViewSpec) -> None:
        self.geometry = v2.Compose([
            v2.RandomResizedCrop(view.size, scale=tuple(view.scale), interpolation=InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(p=FLIP_P),
        ])
        self.photometry = view.photometry

    def __call__(self, image: Image.Image) -> RawCrops:
        crop = self.geometry(image)
        params = draw_params(self.photometry)
        return RawCrops(TF.pil_to_tensor(crop), params)


class GeometricMultiCrop:
    """PIL image -> one :class:`RawCrops` per view of the crop recipe (global views first), with
    uint8 pixels (3, S, S) and its drawn (NUM_PARAMS,) photometric parameters."""

    def __init__(self, crops: CropConfig | CropRecipe) -> None:
        self.recipe = crop_recipe(crops)
        self.views = [_GeometricView(view) for view in self.recipe.views]

    def __call__(self, image: Image.Image) -> list[RawCrops]:
        return [view(image) for view in self.views]
