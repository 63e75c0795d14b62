import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import InterpolationMode

from dinossl.config import CropConfig, load_config
from dinossl.data import MultiCropAugmentation, MultiCropDataset, evaluation_transform
from dinossl.data.images import ArrayImages
import numpy as np


def _image(size=(40, 30)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_crop_count_sizes_and_order():
    aug = MultiCropAugmentation(CropConfig(global_size=32, local_size=16, num_local=5))
    crops = aug(_image())
    assert len(crops) == 7
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 5
    assert all(c.dtype == torch.float32 for c in crops)


def test_no_local_crops():
    crops = MultiCropAugmentation(CropConfig(global_size=24, num_local=0))(_image())
    assert [tuple(c.shape) for c in crops] == [(3, 24, 24)] * 2


def test_crops_seeded_per_image_and_epoch():
    pixels = np.random.default_rng(1).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    source = ArrayImages(pixels, np.zeros(4, dtype=np.int64), ["x"])
    ds = MultiCropDataset(source, MultiCropAugmentation(CropConfig(global_size=32, local_size=16, num_local=2)), 7)
    a, b = ds[(1, 0)][0], ds[(1, 0)][0]
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # reproducible
    c = ds[(1, 1)][0]  # next epoch: new crops
    assert not torch.equal(a[0], c[0])
    state = torch.get_rng_state()
    ds[(2, 0)]
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched


def _p(view, kind):
    return next(t.p for t in view.transforms if isinstance(t, kind))


def test_global_view_one_always_blurred_view_two_sometimes_solarised():
    from torchvision.transforms import v2

    from dinossl.data.augment import RandomGaussianBlur

    aug = MultiCropAugmentation(CropConfig(global_size=32, num_local=1))
    global_1, global_2, local = aug.views
    assert _p(global_1, RandomGaussianBlur) == 1.0 and _p(global_2, RandomGaussianBlur) == 0.1
    assert _p(local, RandomGaussianBlur) == 0.5
    assert _p(global_2, v2.RandomSolarize) == 0.2
    assert not any(isinstance(t, v2.RandomSolarize) for t in global_1.transforms + local.transforms)
    assert _p(global_1, v2.RandomGrayscale) == 0.2 and _p(global_1, v2.RandomHorizontalFlip) == 0.5
    assert _p(global_1, v2.RandomApply) == 0.8


IMAGENET_PRESETS = ["vit-small-imagenet", "vit-base-imagenet", "resnet50-imagenet"]


@pytest.mark.parametrize("preset", IMAGENET_PRESETS)
def test_imagenet_presets_have_the_reference_views(preset):
    """Per view, the operations, order, probabilities and ranges of the reference's DataAugmentationDINO."""
    from torchvision.transforms import v2

    from dinossl.data.augment import RandomGaussianBlur

    crops = load_config(preset).data.crops
    scales = {"resnet50-imagenet": ((0.14, 1.0), (0.05, 0.14))}.get(preset, ((0.4, 1.0), (0.05, 0.4)))
    aug = MultiCropAugmentation(crops)
    views = [(aug.views[0], 224, scales[0], 1.0, None), (aug.views[1], 224, scales[0], 0.1, 0.2),
             (aug.views[2], 96, scales[1], 0.5, None)]
    assert aug.recipe.num_views - aug.recipe.num_global == (6 if preset == "resnet50-imagenet" else 8)
    for view, size, scale, blur_p, solarize_p in views:
        kinds = [type(t) for t in view.transforms]
        expected = [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.RandomApply, v2.RandomGrayscale, RandomGaussianBlur]
        expected += [v2.RandomSolarize] if solarize_p else []
        assert kinds == expected + [v2.ToImage, v2.ToDtype, v2.Normalize]
        crop, flip, jitter, gray, blur = view.transforms[:5]
        assert crop.size == (size, size) and crop.scale == scale and crop.interpolation == InterpolationMode.BICUBIC
        assert crop.ratio == (3 / 4, 4 / 3) and crop.antialias
        assert flip.p == 0.5 and jitter.p == 0.8 and gray.p == 0.2
        (color,) = jitter.transforms
        assert (color.brightness, color.contrast, color.saturation, color.hue) == ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2),
                                                                                  (-0.1, 0.1))
        assert (blur.p, blur.radius_min, blur.radius_max) == (blur_p, 0.1, 2.0)
        if solarize_p:
            assert view.transforms[5].p == solarize_p and view.transforms[5].threshold == 128
        normalize = view.transforms[-1]
        assert tuple(normalize.mean) == (0.485, 0.456, 0.406) and tuple(normalize.std) == (0.229, 0.224, 0.225)


class _TorchDrawnRandom:
    """Stands in for Python's ``random`` in the restated reference: draws from torch's generator,
    where the package draws its blur and solarisation decisions."""

    def random(self) -> float:
        return torch.rand(()).item()

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()


class _ReferenceBlur:
    """The reference's utils.GaussianBlur: blur with radius U[0.1, 2] if random() <= p."""

    def __init__(self, p, rng, counts):
        self.p, self.rng, self.counts = p, rng, counts

    def __call__(self, img):
        if not self.rng.random() <= self.p:
            return img
        self.counts["blur"] += 1
        return img.filter(ImageFilter.GaussianBlur(radius=self.rng.uniform(0.1, 2.0)))


class _ReferenceSolarization:
    """The reference's utils.Solarization: ImageOps.solarize if random() < p."""

    def __init__(self, p, rng, counts):
        self.p, self.rng, self.counts = p, rng, counts

    def __call__(self, img):
        if self.rng.random() < self.p:
            self.counts["solarize"] += 1
            return ImageOps.solarize(img)
        return img


def _reference_views(global_scale, local_scale, local_number, rng, counts):
    """The reference's DataAugmentationDINO, restated with torchvision's v1 transforms."""
    from torchvision import transforms

    flip_and_color_jitter = transforms.Compose([
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomApply([transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
    ])
    normalize = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    bicubic = InterpolationMode.BICUBIC
    global_1 = transforms.Compose([transforms.RandomResizedCrop(224, scale=global_scale, interpolation=bicubic),
                                   flip_and_color_jitter, _ReferenceBlur(1.0, rng, counts), normalize])
    global_2 = transforms.Compose([transforms.RandomResizedCrop(224, scale=global_scale, interpolation=bicubic),
                                   flip_and_color_jitter, _ReferenceBlur(0.1, rng, counts),
                                   _ReferenceSolarization(0.2, rng, counts), normalize])
    local = transforms.Compose([transforms.RandomResizedCrop(96, scale=local_scale, interpolation=bicubic),
                                flip_and_color_jitter, _ReferenceBlur(0.5, rng, counts), normalize])
    return lambda image: [global_1(image), global_2(image)] + [local(image) for _ in range(local_number)]


@pytest.mark.parametrize("preset", ["vit-small-imagenet", "resnet50-imagenet"])
def test_seeded_views_equal_the_reference_pipeline_on_real_images(preset, horses_dir):
    """Same torch seed, same image: the package's views equal the reference's, pixel for pixel.

    The reference draws crops, flips, jitter and grayscale from torch's generator, but its blur
    and solarisation from Python's ``random``; the package draws everything from torch's
    generator (seeded per run seed, epoch and image). For a like-for-like comparison the restated
    reference's ``random`` is replaced by draws from torch's generator at the same points, so both
    make the same decisions; what remains to compare is every operation, its order and its
    parameters. (Distributions of the decisions: tests/data/test_photometric.py.)
    """
    crops = load_config(preset).data.crops
    counts = {"blur": 0, "solarize": 0}
    reference = _reference_views(tuple(crops.global_scale), tuple(crops.local_scale), crops.num_local,
                                 _TorchDrawnRandom(), counts)
    ours = MultiCropAugmentation(crops)
    files = sorted((horses_dir / "images").glob("*.jpg"))[:16]
    worst = 0.0
    for index, path in enumerate(files):
        image = Image.open(path).convert("RGB")
        torch.manual_seed(index)
        theirs = reference(image)
        after_reference = torch.get_rng_state()
        torch.manual_seed(index)
        mine = ours(image)
        assert torch.equal(torch.get_rng_state(), after_reference)  # the same number of draws
        for a, b in zip(mine, theirs):
            assert a.shape == b.shape
            worst = max(worst, (a - b).abs().max().item())
    assert worst < 1e-5  # ToTensor's division vs ToDtype's scaling: float32 rounding only
    assert counts["blur"] > len(files) and counts["solarize"] > 0  # the random ops did act


def test_evaluation_transform_is_deterministic():
    t = evaluation_transform(resize=36, crop=32)
    image = _image((50, 40))
    x, y = t(image), t(image)
    assert x.shape == (3, 32, 32) and torch.equal(x, y)
