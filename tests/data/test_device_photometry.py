"""The device path's photometric augmentation against the per-image (PIL) path: its per-image
random parameters follow the reference recipe's distributions, and each batched tensor op gives
PIL's result for the same parameters, to the rounding of PIL's 8-bit arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image, ImageFilter
from torchvision.transforms.v2 import functional as TF

from dinossl.config import CropConfig
from dinossl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dinossl.data.crop_recipe import CropRecipe, GLOBAL_BLUR_P, GLOBAL_SOLARIZE_P, LOCAL_BLUR_P
from dinossl.data.device_crops import draw_views
from dinossl.data.photometric import apply_photometric
from dinossl.data.photometric_params import (
    BLUR_SIGMA,
    BRIGHTNESS,
    CONTRAST,
    GRAYSCALE,
    HUE,
    JITTER,
    ORDER,
    SATURATION,
    SOLARIZE,
    draw_params,
    identity_params,
)

RECIPE = CropRecipe.from_config(CropConfig())  # DINO's: 2 x 224 + 8 x 96, the reference's probabilities
DRAWS = 800


def _device_draws() -> torch.Tensor:
    """(DRAWS, V, NUM_PARAMS) as the device path draws them (one generator per image)."""
    return torch.stack([draw_views(RECIPE, 400, 500, torch.Generator().manual_seed(i))[2] for i in range(DRAWS)])


def _per_image_draws() -> torch.Tensor:
    """(DRAWS, V, NUM_PARAMS) as the per-image path draws them (torch's global generator)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.stack([torch.stack([draw_params(view.photometry) for view in RECIPE.views])
                            for _ in range(DRAWS)])


@pytest.fixture(scope="module")
def draws() -> dict[str, torch.Tensor]:
    return {"device": _device_draws(), "per_image": _per_image_draws()}


def _close(frequency: float, p: float) -> bool:
    """Within 4.5 binomial standard deviations of p over DRAWS draws."""
    return abs(frequency - p) <= 4.5 * math.sqrt(max(p * (1 - p), 1e-12) / DRAWS) + 1e-9


def test_gate_frequencies_are_the_reference_recipes_on_both_paths(draws):
    blur_p = (*GLOBAL_BLUR_P, *[LOCAL_BLUR_P] * (RECIPE.num_views - 2))
    solarize_p = (*GLOBAL_SOLARIZE_P, *[0.0] * (RECIPE.num_views - 2))
    for path, params in draws.items():
        for v in range(RECIPE.num_views):
            view = params[:, v]
            assert _close(view[:, JITTER].mean().item(), 0.8), (path, v)
            assert _close(view[:, GRAYSCALE].mean().item(), 0.2), (path, v)
            assert _close((view[:, BLUR_SIGMA] > 0).float().mean().item(), blur_p[v]), (path, v)
            assert _close(view[:, SOLARIZE].mean().item(), solarize_p[v]), (path, v)


def test_factor_sigma_and_order_distributions_agree_between_the_paths(draws):
    """Jittered factors uniform on the reference's ranges (brightness/contrast 0.6-1.4,
    saturation 0.8-1.2, hue -0.1-0.1), blur sigma uniform on 0.1-2.0, the op order a uniform
    permutation: equal means, spreads and ranges on both paths."""
    ranges = {BRIGHTNESS: (0.6, 1.4), CONTRAST: (0.6, 1.4), SATURATION: (0.8, 1.2), HUE: (-0.1, 0.1)}
    summaries = {}
    for path, params in draws.items():
        flat = params.reshape(-1, params.shape[-1])
        jittered = flat[flat[:, JITTER] > 0]
        sigma = flat[flat[:, BLUR_SIGMA] > 0, BLUR_SIGMA]
        first_op = jittered[:, ORDER][:, 0].long()
        for column, (low, high) in ranges.items():
            values = jittered[:, column]
            assert values.min() >= low and values.max() <= high
            uniform_sd = (high - low) / math.sqrt(12)
            assert abs(values.mean() - (low + high) / 2) < 4.5 * uniform_sd / math.sqrt(len(values))
            assert abs(values.std() - uniform_sd) < 0.03 * uniform_sd
        assert sigma.min() >= 0.1 and sigma.max() <= 2.0
        assert abs(sigma.mean() - 1.05) < 4.5 * (1.9 / math.sqrt(12)) / math.sqrt(len(sigma))
        counts = torch.bincount(first_op, minlength=4).float() / len(first_op)
        assert all(_close(c, 0.25) for c in counts.tolist()), path
        summaries[path] = (jittered[:, BRIGHTNESS].mean(), sigma.mean())
    # and no path-specific bias: the two means agree to sampling noise
    for a, b in zip(summaries["device"], summaries["per_image"]):
        assert abs(a - b) < 0.03


@pytest.fixture(scope="module")
def photo_crop(horses_dir) -> Image.Image:
    return Image.open(sorted((horses_dir / "images").glob("*.jpg"))[7]).convert("RGB").resize((96, 96), Image.BICUBIC)


def _only(column: int, value: float) -> torch.Tensor:
    params = identity_params()
    params[column] = value
    if column in (BRIGHTNESS, CONTRAST, SATURATION, HUE):
        params[JITTER] = 1.0
    return params


def _device_op(image: Image.Image, params: torch.Tensor) -> torch.Tensor:
    """The device path's batched op on one uint8 crop, back in grey levels (float (3, S, S))."""
    out = apply_photometric(TF.pil_to_tensor(image)[None], params[None])[0]
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (out * std + mean) * 255


@pytest.mark.parametrize("column, value, pil_op, mean_bound", [
    (BRIGHTNESS, 1.3, lambda im: TF.adjust_brightness(im, 1.3), 0.6),
    (BRIGHTNESS, 0.7, lambda im: TF.adjust_brightness(im, 0.7), 0.6),
    (CONTRAST, 1.35, lambda im: TF.adjust_contrast(im, 1.35), 0.8),
    (CONTRAST, 0.65, lambda im: TF.adjust_contrast(im, 0.65), 0.8),
    (SATURATION, 1.2, lambda im: TF.adjust_saturation(im, 1.2), 0.8),
    (SATURATION, 0.8, lambda im: TF.adjust_saturation(im, 0.8), 0.8),
    (HUE, 0.08, lambda im: TF.adjust_hue(im, 0.08), 2.0),  # PIL rotates hue in 8-bit HSV
    (HUE, -0.08, lambda im: TF.adjust_hue(im, -0.08), 2.0),
    (GRAYSCALE, 1.0, lambda im: im.convert("L").convert("RGB"), 0.6),
    (SOLARIZE, 1.0, lambda im: TF.solarize(im, 128), 0.01),
    (BLUR_SIGMA, 0.6, lambda im: im.filter(ImageFilter.GaussianBlur(radius=0.6)), 1.5),  # PIL: 3 box blurs
    (BLUR_SIGMA, 1.8, lambda im: im.filter(ImageFilter.GaussianBlur(radius=1.8)), 1.5),
])
def test_each_batched_op_gives_pils_result_for_the_same_parameter(photo_crop, column, value, pil_op, mean_bound):
    expected = TF.pil_to_tensor(pil_op(photo_crop)).float()
    got = _device_op(photo_crop, _only(column, value))
    difference = (got - expected).abs()
    assert difference.mean() < mean_bound, difference.mean()
    assert torch.quantile(difference.flatten(), 0.99) <= 3 * max(mean_bound, 1.0), torch.quantile(difference.flatten(), 0.99)


def test_the_flip_is_pils_mirror(horses_dir):
    """The device path flips inside the crop's resampling (reversed column weights)."""
    from dinossl.data.device_crops import cut_views

    image = Image.open(sorted((horses_dir / "images").glob("*.jpg"))[7]).convert("RGB")
    pixels = TF.pil_to_tensor(image)
    recipe = CropRecipe.from_config(CropConfig(global_size=96, local_size=96, num_local=0))
    box = [10.0, 20.0, 150.0, 170.0]
    views = cut_views([pixels], torch.tensor([[box, box]]), torch.tensor([[False, True]]), torch.zeros(1, 2, 12), recipe)
    assert torch.equal(views[1].pixels[0], views[0].pixels[0].flip(-1))
