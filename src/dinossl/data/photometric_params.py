"""The photometric parameters of one crop: their layout, the per-view settings, how they are drawn.

With ``data.photometric=device`` the loader only crops and flips; for each crop it draws the
colour jitter, grayscale, blur and solarisation decisions and packs them in a float tensor of
shape (NUM_PARAMS,) that travels with the uint8 crop (a :class:`RawCrops`) to the training
device, where :func:`dinossl.data.photometric.apply_photometric` carries them out batched.

The draws use torch's global generator in exactly the order and with exactly the calls of the
loader-side pipeline (:class:`~dinossl.data.augment.MultiCropAugmentation`: torchvision v2's
RandomApply(ColorJitter), RandomGrayscale, the PIL blur, RandomSolarize), so a seeded sample
makes the same random decisions in both modes; only the pixel arithmetic differs.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from dinossl.data.crop_recipe import ViewPhotometry

# Layout of the parameter vector.
JITTER = 0  # 1.0 when colour jitter applies to this crop
BRIGHTNESS, CONTRAST, SATURATION, HUE = 1, 2, 3, 4  # factors (1, 1, 1 and a shift of 0: no change)
ORDER = slice(5, 9)  # the jitter op (0 brightness, 1 contrast, 2 saturation, 3 hue) at each of 4 positions
GRAYSCALE = 9  # 1.0: convert to 3-channel luma
BLUR_SIGMA = 10  # Gaussian blur standard deviation in pixels; 0: no blur
SOLARIZE = 11  # 1.0: invert pixels >= 128/255
NUM_PARAMS = 12

JITTER_FACTORS = (BRIGHTNESS, CONTRAST, SATURATION, HUE)  # indexed by jitter op id
IDENTITY_FACTORS = (1.0, 1.0, 1.0, 0.0)

class RawCrops(NamedTuple):
    """One view of one image (pixels (3, S, S), params (NUM_PARAMS,)) or of a batch
    (pixels (B, 3, S, S), params (B, NUM_PARAMS)): uint8 pixels, float32 parameters."""

    pixels: torch.Tensor
    params: torch.Tensor


def _factor_range(strength: float, is_hue: bool) -> Optional[tuple[float, float]]:
    """torchvision ColorJitter's range for one strength; None when it leaves the image unchanged."""
    if strength == 0:
        return None
    return (-strength, strength) if is_hue else (max(0.0, 1.0 - strength), 1.0 + strength)


def _identity_list() -> list[float]:
    values = [0.0] * NUM_PARAMS
    for index, value in zip(JITTER_FACTORS, IDENTITY_FACTORS):
        values[index] = value
    values[ORDER] = [0.0, 1.0, 2.0, 3.0]
    return values


def identity_params() -> torch.Tensor:
    """(NUM_PARAMS,) parameters that leave a crop unchanged (apart from normalisation)."""
    return torch.tensor(_identity_list())


def draw_params(view: ViewPhotometry) -> torch.Tensor:
    """Draw one crop's (NUM_PARAMS,) parameters from torch's global generator, in the loader
    pipeline's order: jitter gate, [op order, factors], grayscale, [blur gate, sigma], solarise."""
    values = _identity_list()
    if bool(torch.rand(1) < view.color_jitter_p):  # RandomApply skips when rand >= p (float32 compare)
        values[JITTER] = 1.0
        values[ORDER] = [float(op) for op in torch.randperm(4).tolist()]
        for op, strength in enumerate(view.color_jitter):
            bounds = _factor_range(strength, is_hue=op == 3)
            if bounds is not None:
                values[JITTER_FACTORS[op]] = torch.empty(1).uniform_(*bounds).item()
    if bool(torch.rand(1) < view.grayscale_p):
        values[GRAYSCALE] = 1.0
    if view.blur_p > 0 and torch.rand(()).item() < view.blur_p:  # the PIL blur compares as a float
        low, high = view.blur_radius
        values[BLUR_SIGMA] = low + (high - low) * torch.rand(()).item()
    if view.solarize_p > 0 and bool(torch.rand(1) < view.solarize_p):  # no draw where the loader has no op
        values[SOLARIZE] = 1.0
    return torch.tensor(values)
