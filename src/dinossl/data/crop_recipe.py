"""DINO's multi-crop recipe: the views cut from each image, in order, each with its size, scale
range and photometric probabilities.

It is the one place that says how many global views there are (the teacher's views, always
first) and which view is blurred or solarised how often; every crop path (per-image in the
loader, device-side photometric step, batched crops), the loss and the trainer read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dinossl.config import CropConfig

NUM_GLOBAL_VIEWS = 2
# The reference's per-view probabilities: blur always on global view 1, rarely on global view 2,
# half the time on local views; solarisation on global view 2 only.
GLOBAL_BLUR_P = (1.0, 0.1)
GLOBAL_SOLARIZE_P = (0.0, 0.2)
LOCAL_BLUR_P = 0.5
LOCAL_SOLARIZE_P = 0.0
FLIP_P = 0.5


@dataclass(frozen=True)
class ViewPhotometry:
    """Probabilities and ranges of one view's photometric augmentation."""

    color_jitter: tuple[float, float, float, float]  # brightness, contrast, saturation, hue strengths
    color_jitter_p: float
    grayscale_p: float
    blur_p: float
    blur_radius: tuple[float, float]  # sigma ~ U[min, max]
    solarize_p: float


@dataclass(frozen=True)
class ViewSpec:
    """One view: a bicubic random-resized crop to ``size`` x ``size`` with area fraction in
    ``scale``, a horizontal flip with p = FLIP_P, then ``photometry``."""

    size: int
    scale: tuple[float, float]
    photometry: ViewPhotometry
    is_global: bool  # the teacher sees the global views


@dataclass(frozen=True)
class CropRecipe:
    """The views of one image, global views first."""

    views: tuple[ViewSpec, ...]

    def __post_init__(self) -> None:
        flags = [view.is_global for view in self.views]
        if not flags or not flags[0] or flags != sorted(flags, reverse=True):
            raise ValueError("a crop recipe lists its global views first, and has at least one")

    @property
    def num_views(self) -> int:
        return len(self.views)

    @property
    def num_global(self) -> int:
        return sum(view.is_global for view in self.views)

    @classmethod
    def from_config(cls, crops: CropConfig) -> "CropRecipe":
        """DINO's recipe: NUM_GLOBAL_VIEWS global views and ``crops.num_local`` local views."""

        def photometry(blur_p: float, solarize_p: float) -> ViewPhotometry:
            return ViewPhotometry(tuple(crops.color_jitter), crops.color_jitter_p, crops.grayscale_p, blur_p,
                                  tuple(crops.blur_radius), solarize_p)

        global_views = tuple(
            ViewSpec(crops.global_size, tuple(crops.global_scale), photometry(blur_p, solarize_p), True)
            for blur_p, solarize_p in zip(GLOBAL_BLUR_P, GLOBAL_SOLARIZE_P)
        )
        local = ViewSpec(crops.local_size, tuple(crops.local_scale), photometry(LOCAL_BLUR_P, LOCAL_SOLARIZE_P), False)
        return cls(global_views + (local,) * crops.num_local)


def crop_recipe(crops: CropConfig | CropRecipe) -> CropRecipe:
    """``crops`` as a recipe (a CropConfig is read with :meth:`CropRecipe.from_config`)."""
    return crops if isinstance(crops, CropRecipe) else CropRecipe.from_config(crops)
