import torch
from PIL import Image

from dinossl.config import CropConfig
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
    assert _p(global_2, v2.RandomSolarize) == 0.2 and _p(global_1, v2.RandomSolarize) == 0.0
    assert _p(local, v2.RandomSolarize) == 0.0
    assert _p(global_1, v2.RandomGrayscale) == 0.2 and _p(global_1, v2.RandomHorizontalFlip) == 0.5
    assert _p(global_1, v2.RandomApply) == 0.8


def test_evaluation_transform_is_deterministic():
    t = evaluation_transform(resize=36, crop=32)
    image = _image((50, 40))
    x, y = t(image), t(image)
    assert x.shape == (3, 32, 32) and torch.equal(x, y)
