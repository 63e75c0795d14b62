"""data.photometric=device: loader-side crops + parameters, device-side batched photometric ops."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torchvision.transforms.v2 import functional as TF

from dinossl.config import CropConfig, load_config
from dinossl.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GeometricMultiCrop,
    MultiCropAugmentation,
    MultiCropDataset,
    RawCrops,
    ShardedEpochSampler,
    apply_photometric,
    build_multicrop_transform,
    build_train_loader,
    collate_crops,
)
from dinossl.data import color_ops
from dinossl.data.gaussian_blur import gaussian_blur, kernel_radius
from dinossl.data.images import ArrayImages
from dinossl.data.photometric_params import (
    BLUR_SIGMA,
    BRIGHTNESS,
    CONTRAST,
    GRAYSCALE,
    HUE,
    JITTER,
    NUM_PARAMS,
    ORDER,
    SATURATION,
    SOLARIZE,
    draw_params,
    identity_params,
)
from dinossl.data.crop_recipe import CropRecipe
from dinossl.errors import ConfigError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SMALL = CropConfig(global_size=32, local_size=16, num_local=2, local_scale=(0.1, 0.4))


def _float_images(n=4, size=(3, 13, 11), seed=0):
    """Random float images in [0, 1] with grey pixels and channel ties (hue edge cases)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *size, generator=g)
    x[:, :, 0, :] = x[:, :1, 0, :]  # grey row: r = g = b
    x[:, 1, 1, :] = x[:, 0, 1, :]  # r = g
    x[:, 2, 2, :] = x[:, 1, 2, :]  # g = b
    x[:, :, 3, :4] = 0.0  # black
    x[:, :, 4, :4] = 1.0  # white
    return x


def _uint8_images(n=4, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, low, high, atol", [
    ("brightness", 0.0, 2.0, 1e-6),
    ("contrast", 0.0, 2.0, 1e-6),
    ("saturation", 0.0, 2.0, 1e-6),
    ("hue", -0.5, 0.5, 1e-5),
])
def test_jitter_ops_match_torchvision_per_sample(device, name, low, high, atol):
    images = _float_images().to(device)
    factors = torch.linspace(low, high, images.shape[0], device=device)
    ours = getattr(color_ops, f"adjust_{name}")(images, factors)
    reference = torch.stack([getattr(TF, f"adjust_{name}")(img, float(f)) for img, f in zip(images, factors)])
    torch.testing.assert_close(ours, reference, rtol=0, atol=atol)
    assert not torch.allclose(ours[0], ours[-1])  # the factors do act, per sample


@pytest.mark.parametrize("device", DEVICES)
def test_grayscale_and_solarize_match_torchvision(device):
    images = _float_images().to(device)
    torch.testing.assert_close(color_ops.to_grayscale(images), TF.rgb_to_grayscale(images, 3), rtol=0, atol=1e-6)
    on_grid = _uint8_images().float().div(255).to(device)  # includes exactly 127/255 and 128/255
    torch.testing.assert_close(color_ops.solarize(on_grid), TF.solarize(on_grid, 128 / 255), rtol=0, atol=0)
    edge = torch.tensor([127, 128]).float().div(255)
    assert torch.equal(color_ops.solarize(edge), torch.stack([edge[0], 1 - edge[1]]))  # 128 inverts, 127 not


def _reference_blur(image, sigma):
    """One (3, H, W) image, its own truncated kernel, replicate padding: a direct conv."""
    radius = kernel_radius(sigma, min(image.shape[-2:]))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).float()
    x = F.pad(image[:, None], (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.reshape(1, 1, 1, -1))
    return F.conv2d(x, kernel.reshape(1, 1, -1, 1))[:, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_batched_blur_equals_a_per_sample_convolution(device):
    images = _float_images(n=5, size=(3, 16, 20)).to(device)
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0, 9.0])  # 9.0: kernel capped at the crop size
    radius = kernel_radius(float(sigma.max()), 16)
    assert radius == 15
    ours = gaussian_blur(images, sigma.to(device), radius)
    reference = torch.stack([_reference_blur(img.cpu(), float(s)) for img, s in zip(images, sigma)])
    torch.testing.assert_close(ours.cpu(), reference, rtol=0, atol=2e-6)


def test_blur_is_close_to_pil_gaussian_blur():
    from dinossl.data.sample import load_sample

    image = load_sample("train").load(3)[0].resize((64, 64), Image.BICUBIC)
    x = TF.pil_to_tensor(image).float().div(255)[None]
    for sigma in (0.5, 1.0, 2.0):
        pil = TF.pil_to_tensor(image.filter(ImageFilter.GaussianBlur(sigma))).float().div(255)[None]
        ours = gaussian_blur(x, torch.tensor([sigma]), kernel_radius(sigma, 64))
        blur_effect = (pil - x).abs().mean()
        assert (ours - pil).abs().mean() < 0.004  # about one grey level on average
        assert (ours - pil).abs().mean() < 0.5 * blur_effect


def _params(**values):
    params = identity_params()
    for key, value in values.items():
        index = {"jitter": JITTER, "brightness": BRIGHTNESS, "contrast": CONTRAST, "saturation": SATURATION,
                 "hue": HUE, "gray": GRAYSCALE, "sigma": BLUR_SIGMA, "solarize": SOLARIZE}[key]
        params[index] = value
    return params


def _torchvision_pipeline(pixels, params):
    """What apply_photometric should compute for one uint8 (3, S, S) image, with torchvision ops."""
    x = pixels.float() / 255
    if params[JITTER] > 0:
        ops = [(TF.adjust_brightness, BRIGHTNESS), (TF.adjust_contrast, CONTRAST),
               (TF.adjust_saturation, SATURATION), (TF.adjust_hue, HUE)]
        for op_id in params[ORDER].long().tolist():
            op, column = ops[op_id]
            x = op(x, float(params[column]))
    if params[GRAYSCALE] > 0:
        x = TF.rgb_to_grayscale(x, 3)
    if params[BLUR_SIGMA] > 0:
        x = _reference_blur(x, float(params[BLUR_SIGMA])).clamp(0, 1)
    if params[SOLARIZE] > 0:
        x = TF.solarize(x, 128 / 255)
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("device", DEVICES)
def test_ops_run_in_the_drawn_order_per_sample(device):
    pixels = _uint8_images(n=1, size=20).expand(6, -1, -1, -1).contiguous()
    orders = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2], [0, 2, 1, 3], [3, 0, 1, 2]]
    params = []
    for i, order in enumerate(orders):
        p = _params(jitter=1, brightness=1.7, contrast=0.3, saturation=1.9, hue=0.31,
                    gray=float(i == 4), sigma=1.2 * (i % 2), solarize=float(i >= 3))
        p[ORDER] = torch.tensor(order, dtype=torch.float32)
        params.append(p)
    params = torch.stack(params)
    ours = apply_photometric(pixels.to(device), params).cpu()
    assert ours.dtype == torch.float32 and ours.shape == (6, 3, 20, 20)
    reference = torch.stack([_torchvision_pipeline(x, p) for x, p in zip(pixels, params)])
    torch.testing.assert_close(ours, reference, rtol=0, atol=2e-4)
    assert (ours[0] - ours[1]).abs().max() > 0.1  # the order matters for these factors, and is honoured


def test_identity_params_only_normalise_and_non_jittered_samples_ignore_factors():
    pixels = _uint8_images(n=2)
    params = torch.stack([identity_params(), _params(jitter=0, brightness=1.9, hue=0.4)])
    expected = TF.normalize(pixels.float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(apply_photometric(pixels, params), expected, rtol=0, atol=1e-6)


def _three_views(crops):
    """Photometry of global view 1, global view 2 and a local view of DINO's recipe."""
    views = CropRecipe.from_config(crops).views
    return views[0].photometry, views[1].photometry, views[2].photometry


def _draws(view, n=2000, seed=0):
    torch.manual_seed(seed)
    return torch.stack([draw_params(view) for _ in range(n)])


def test_per_view_probabilities_and_ranges():
    global_1, global_2, local = (_draws(view, seed=i) for i, view in enumerate(_three_views(CropConfig())))

    def rate(draws, column):
        return (draws[:, column] > 0).float().mean().item()

    band = 3.5 * math.sqrt(0.25 / 2000)  # 3.5 binomial standard deviations at worst (p = 0.5)
    assert rate(global_1, BLUR_SIGMA) == 1.0
    assert abs(rate(global_2, BLUR_SIGMA) - 0.1) < band and abs(rate(local, BLUR_SIGMA) - 0.5) < band
    assert abs(rate(global_2, SOLARIZE) - 0.2) < band
    assert rate(global_1, SOLARIZE) == 0.0 and rate(local, SOLARIZE) == 0.0
    for draws in (global_1, global_2, local):
        assert abs(rate(draws, JITTER) - 0.8) < band and abs(rate(draws, GRAYSCALE) - 0.2) < band
    sigma = global_1[:, BLUR_SIGMA]
    assert 0.1 <= sigma.min() and sigma.max() <= 2.0 and abs(sigma.mean().item() - 1.05) < 0.05
    jittered = global_1[global_1[:, JITTER] > 0]
    for column, (low, high) in ((BRIGHTNESS, (0.6, 1.4)), (CONTRAST, (0.6, 1.4)), (SATURATION, (0.8, 1.2)),
                                (HUE, (-0.1, 0.1))):
        values = jittered[:, column]
        assert low <= values.min() and values.max() <= high
        assert values.min() < low + 0.02 and values.max() > high - 0.02  # the whole range is used
    assert torch.equal(jittered[:, ORDER].sort(dim=1).values, torch.arange(4.0).expand(len(jittered), 4))
    assert len({tuple(o) for o in jittered[:, ORDER].tolist()}) == 24  # every order occurs
    plain = global_1[global_1[:, JITTER] == 0]
    identity = torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(len(plain), 4)
    assert torch.equal(plain[:, [BRIGHTNESS, CONTRAST, SATURATION, HUE]], identity)


def test_view_settings_are_those_of_the_loader_pipeline():
    from torchvision.transforms import v2

    from dinossl.data.augment import RandomGaussianBlur

    loader = MultiCropAugmentation(CropConfig())

    def p(view, kind):
        return next((t.p for t in view.transforms if isinstance(t, kind)), 0.0)  # no op: probability 0

    for ours, theirs in zip(_three_views(CropConfig()), loader.views[:3]):
        assert ours.blur_p == p(theirs, RandomGaussianBlur)
        assert ours.solarize_p == p(theirs, v2.RandomSolarize)
        assert ours.grayscale_p == p(theirs, v2.RandomGrayscale) and ours.color_jitter_p == p(theirs, v2.RandomApply)


def _array_source(n=12, size=40, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    return ArrayImages(pixels, np.arange(n) % 3, ["a", "b", "c"])


def test_same_random_decisions_as_the_loader_pipeline():
    """Same seed: the device path crops like the loader path and draws the same jitter/blur/solarise
    decisions, so the two outputs differ only by PIL-vs-tensor rounding."""
    from dinossl.data.sample import load_sample

    source = load_sample("train")
    loader_mode = MultiCropDataset(source, MultiCropAugmentation(SMALL), seed=5)
    device_mode = MultiCropDataset(source, GeometricMultiCrop(SMALL), seed=5)
    same, other = [], []
    for index in range(12):
        reference = loader_mode[(index, 0)][0]
        batch = collate_crops([device_mode[(index, 0)], device_mode[(index + 1, 0)]])[0]
        for view, raw in enumerate(batch):
            ours = apply_photometric(raw.pixels, raw.params)
            same.append((ours[0] - reference[view]).abs().mean().item())
            other.append((ours[1] - reference[view]).abs().mean().item())
    assert max(same) < 0.12 and float(np.median(same)) < 0.05  # normalised units (~4.4 per unit of intensity)
    assert float(np.median(other)) > 0.5


def test_same_parameters_as_the_loader_pipeline_on_imagenet_sized_views(horses_dir):
    """vit-small-imagenet views (2 x 224 + 8 x 96 px) of real photographs: with the same seed the
    device path cuts the same crops and draws the same parameters as the per-image pipeline (the
    same torch draws, in the same order), then runs the photometric ops batched in float32.

    The pixels are not identical, and the bounds say by how much (grey levels of 255, measured on
    these 16 images: mean per view at most 2.3, 99th percentile per view at most 13.3): the PIL
    pipeline rounds to 8 bits after every operation and rotates hue in 8-bit HSV; PIL's Gaussian
    blur approximates the Gaussian by repeated box blurs, where the device path convolves with the
    truncated Gaussian itself (largest differences at sharp edges). Without jitter and blur (the
    flip, grayscale and solarisation alone) the paths agree to within one grey level.
    """
    crops = load_config("vit-small-imagenet").data.crops
    loader_views, device_views = MultiCropAugmentation(crops), GeometricMultiCrop(crops)
    grey_levels = torch.tensor(IMAGENET_STD).reshape(3, 1, 1) * 255  # normalised units -> grey levels
    means, tails, plain, other = [], [], [], []
    files = sorted((horses_dir / "images").glob("*.jpg"))[:16]
    previous = None
    for index, path in enumerate(files):
        image = Image.open(path).convert("RGB")
        torch.manual_seed(index)
        expected = loader_views(image)
        after_loader = torch.get_rng_state()
        torch.manual_seed(index)
        raw = device_views(image)
        assert torch.equal(torch.get_rng_state(), after_loader)  # the same draws, in the same order
        for view, (reference, crop) in enumerate(zip(expected, raw)):
            difference = ((apply_photometric(crop.pixels[None], crop.params[None])[0] - reference) * grey_levels).abs()
            means.append(difference.mean().item())
            tails.append(torch.quantile(difference.flatten(), 0.99).item())
            if crop.params[JITTER] == 0 and crop.params[BLUR_SIGMA] == 0:
                plain.append(difference.max().item())
            if previous is not None:  # the same view of the previous image: what "different" looks like
                other.append(((previous[view] - reference) * grey_levels).abs().mean().item())
        previous = expected
    assert max(means) < 3.0 and max(tails) < 20.0
    assert plain and max(plain) <= 1.0
    assert min(other) > 5 * max(means)


def test_geometric_crops_shapes_dtypes_and_collate():
    transform = build_multicrop_transform(load_config("vit-tiny-cifar", overrides=["data.photometric=device"]).data)
    assert isinstance(transform, GeometricMultiCrop)
    source = _array_source(n=3)
    dataset = MultiCropDataset(source, GeometricMultiCrop(SMALL), seed=1)
    item = dataset[(0, 0)][0]
    assert [tuple(c.pixels.shape) for c in item] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    assert all(c.pixels.dtype == torch.uint8 and c.params.shape == (NUM_PARAMS,) for c in item)
    crops, labels, skipped = collate_crops([dataset[(i, 0)] for i in range(3)] + [None])
    assert skipped == 1 and labels.tolist() == [0, 1, 2]
    assert all(isinstance(v, RawCrops) for v in crops)
    assert [tuple(v.pixels.shape) for v in crops] == [(3, 3, 32, 32)] * 2 + [(3, 3, 16, 16)] * 2
    assert all(v.params.shape == (3, NUM_PARAMS) and v.params.dtype == torch.float32 for v in crops)


def test_crops_and_params_do_not_depend_on_worker_count():
    dataset = MultiCropDataset(_array_source(), GeometricMultiCrop(SMALL), seed=3)
    results = []
    for workers in (0, 2):
        sampler = ShardedEpochSampler(12, 4, seed=0)
        results.append([batch[0] for batch in build_train_loader(dataset, sampler, 4, workers, pin_memory=False)])
    for a, b in zip(*results):
        for x, y in zip(a, b):
            assert torch.equal(x.pixels, y.pixels) and torch.equal(x.params, y.params)
    again = dataset[(5, 0)][0]
    assert all(torch.equal(x.params, y.params) for x, y in zip(again, dataset[(5, 0)][0]))
    assert not torch.equal(again[0].params, dataset[(5, 1)][0][0].params)  # a new epoch draws anew


def test_config_validates_the_place():
    assert load_config(overrides=[]).data.photometric == "loader"
    assert load_config("vit-tiny-cifar").data.photometric == "device"
    assert load_config(overrides=["data.photometric=device"]).data.photometric == "device"
    with pytest.raises(ConfigError, match="data.photometric"):
        load_config(overrides=["data.photometric=gpu"])


@pytest.mark.parametrize("place, geometric", [("device", "per_image"), ("device", "batched"), ("loader", "per_image")])
def test_training_runs_with_either_photometric_place(tmp_path, tiny_image_folder, monkeypatch, place, geometric):
    import json

    from dinossl.data import photometric
    from dinossl.train import train
    from tests.conftest import TINY_OVERRIDES

    calls = []
    original = photometric.apply_photometric

    def counting(pixels, params):
        calls.append(tuple(pixels.shape))
        return original(pixels, params)

    monkeypatch.setattr(photometric, "apply_photometric", counting)
    config = load_config("vit-tiny-cifar", overrides=TINY_OVERRIDES + [f"data.path={tiny_image_folder}",
                                                                       f"data.photometric={place}",
                                                                       f"data.geometric={geometric}"])
    train(config, tmp_path / "run")
    steps = 64 // 16
    if place == "device":
        assert calls.count((16, 3, 32, 32)) == 2 * steps and calls.count((16, 3, 16, 16)) == 2 * steps
    else:
        assert calls == []
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epoch = next(r for r in records if r["kind"] == "epoch")
    assert math.isfinite(epoch["loss"])
