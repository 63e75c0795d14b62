"""One colour rule: the same odd image files give the same RGB pixels on the training path
(ImageFolder), the evaluation path (eval.image_input) and the device crop path (bytes or
pixels decoded for the training device)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dinossl.data.device_crops import EncodedImageDataset, decode_batch
from dinossl.data.images import ORIENTATION_TAG, ImageFolder, UnreadableImage, to_rgb
from dinossl.eval.image_input import read_rgb


def _photo(height: int = 24, width: int = 40) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    photo = _photo()
    rgba = photo.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[:, :10] = 0  # a transparent left strip whose hidden colours must not show
    alpha[:, 10:20] = 128
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(root / "rgba.png")
    palette = photo.convert("P")
    palette.save(root / "palette_transparent.png", transparency=0)
    photo.convert("P").save(root / "palette.png")
    photo.convert("LA").save(root / "gray_alpha.png")
    photo.convert("CMYK").save(root / "cmyk.jpg")
    sixteen = (np.arange(24 * 40).reshape(24, 40) * 60).astype(np.uint16)
    Image.fromarray(sixteen).save(root / "gray16.png")
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6  # rotate 90 degrees clockwise to display
    photo.save(root / "rotated.jpg", exif=exif.tobytes(), quality=95)
    photo.save(root / "rotated.png", exif=exif.tobytes())
    photo.convert("L").save(root / "gray.png")
    return root


NAMES = ("rgba.png", "palette_transparent.png", "palette.png", "gray_alpha.png", "cmyk.jpg", "gray16.png",
         "rotated.jpg", "rotated.png", "gray.png")


def _device_path(path) -> np.ndarray:
    data, height, width = EncodedImageDataset._read(path)
    image = decode_batch([data], torch.device("cpu"))[0]
    assert tuple(image.shape) == (3, height, width)
    return image.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("name", NAMES)
def test_training_evaluation_and_device_paths_give_the_same_pixels(odd_folder, name):
    folder = ImageFolder(odd_folder)
    training = np.asarray(folder.load([p.name for p in folder.files].index(name))[0])
    evaluation = np.asarray(read_rgb(odd_folder / name))
    device = _device_path(odd_folder / name)
    assert training.dtype == np.uint8 and training.ndim == 3 and training.shape[2] == 3
    np.testing.assert_array_equal(evaluation, training)
    np.testing.assert_array_equal(device, training)


def test_the_rule_itself(odd_folder):
    rgba = np.asarray(read_rgb(odd_folder / "rgba.png"))
    assert (rgba[:, :10] == 255).all()  # fully transparent: white, not the hidden colours
    photo = np.asarray(_photo(), dtype=np.float64)
    half = np.asarray(rgba[:, 10:20], dtype=np.float64)
    np.testing.assert_allclose(half, photo[:, 10:20] * 128 / 255 + 255 * 127 / 255, atol=1.01)
    assert Image.open(odd_folder / "rotated.png").size == (40, 24)
    rotated = np.asarray(read_rgb(odd_folder / "rotated.png"))
    assert rotated.shape == (40, 24, 3)  # upright: the EXIF orientation applied
    np.testing.assert_array_equal(rotated, np.rot90(np.asarray(_photo()), k=-1))
    gray16 = np.asarray(read_rgb(odd_folder / "gray16.png"))
    assert gray16[..., 0].max() == round(959 * 60 * 255 / 65535)  # scaled, not clipped to white
    with pytest.raises(UnreadableImage):
        to_rgb(Image.fromarray(np.zeros((4, 4), np.float32), "F"))
