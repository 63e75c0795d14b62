"""data.geometric=device: files read by the loader, decoded and cropped where the model runs.

On real photos of unequal sizes (Weizmann horses): the decoded pixels are PIL's, each crop is
torchvision's tensor ``resized_crop`` (+ ``hflip``) of the box drawn for it, the boxes follow
RandomResizedCrop's rule, draws depend on (seed, epoch, index) only, unreadable files are
skipped and counted, and a training run goes through the path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from dinossl.config import CropConfig, load_config
from dinossl.data.crop_recipe import CropRecipe
from dinossl.data.device_crops import (
    DeviceCropLoader,
    EncodedImageDataset,
    decode_batch,
    draw_views,
    resized_crop,
)
from dinossl.data.images import ImageFolder
from dinossl.data.loader import ShardedEpochSampler, sample_seed
from dinossl.data.sample import load_sample

RECIPE = CropRecipe.from_config(CropConfig(global_size=64, local_size=32, num_local=2))


@pytest.fixture(scope="module")
def photo_folder(horses_dir, tmp_path_factory) -> Path:
    """12 horse photos of different sizes in two classes, one PNG among them, and one broken JPEG."""
    root = tmp_path_factory.mktemp("device_crops") / "images"
    files = sorted((horses_dir / "images").glob("*.jpg"))[:12]
    for i, path in enumerate(files):
        (root / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        if i == 5:
            Image.open(path).save(root / f"class{i % 2}" / f"{path.stem}.png")
        else:
            shutil.copy(path, root / f"class{i % 2}" / path.name)
    (root / "class0" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _pil(path: Path) -> torch.Tensor:
    return TF.pil_to_tensor(Image.open(path).convert("RGB"))


def test_the_images_differ_in_size(photo_folder):
    sizes = {Image.open(p).size for p in photo_folder.rglob("*") if p.suffix in (".jpg", ".png") and "broken" not in p.name}
    assert len(sizes) > 5


def test_decoded_pixels_are_pils(photo_folder):
    source = ImageFolder(photo_folder)
    dataset = EncodedImageDataset(source, RECIPE, seed=0)
    indices = [i for i, f in enumerate(source.files) if "broken" not in f.name]
    items = [dataset[(i, 0)] for i in indices]
    assert sum(item.data.ndim == 1 for item in items) == len(items) - 1  # JPEG bytes; the PNG as pixels
    decoded = decode_batch([item.data for item in items], torch.device("cpu"))
    for i, image in zip(indices, decoded):
        expected = _pil(source.files[i])
        assert image.shape == expected.shape and image.dtype == torch.uint8
        assert (image.int() - expected.int()).abs().max() <= 2  # both libjpeg: equal up to the IDCT's rounding


def test_a_crop_is_torchvisions_resized_crop_of_its_box(horses_dir):
    image = _pil(sorted((horses_dir / "images").glob("*.jpg"))[3])
    for box, size, flip in [((10, 20, 150, 120), 96, True), ((0, 0, image.shape[1], image.shape[2]), 224, False),
                            ((5, 7, 20, 30), 96, False)]:  # shrink, whole image, enlarge
        def torchvision(pixels):
            out = TF.resized_crop(pixels, *box, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
            return TF.hflip(out) if flip else out

        got = resized_crop(image, box, size, flip)
        assert got.shape == (3, size, size) and got.dtype == torch.uint8
        assert torch.equal(got, torchvision(image.float()).round().clamp(0, 255).to(torch.uint8))
        # torchvision's uint8 kernel computes in fixed point: a few grey levels off here and there
        assert (got.float() - torchvision(image).float()).abs().mean() < 0.5


def test_boxes_follow_random_resized_crop(photo_folder):
    generator = torch.Generator().manual_seed(0)
    height, width = 300, 500
    fractions = []
    for _ in range(200):
        boxes, flips, params = draw_views(RECIPE, height, width, generator)
        assert boxes.shape == (4, 4) and flips.shape == (4,) and params.shape[0] == 4
        top, left, box_h, box_w = boxes.unbind(1)
        assert (top >= 0).all() and (left >= 0).all() and (top + box_h <= height).all() and (left + box_w <= width).all()
        fractions.append(box_h * box_w / (height * width))
    fractions = torch.stack(fractions)  # (200, V): rounding of the box sides moves the area a little
    assert fractions[:, :2].min() > 0.38 and fractions[:, :2].max() <= 1.0  # global scale (0.4, 1)
    assert fractions[:, 2:].min() > 0.045 and fractions[:, 2:].max() < 0.42  # local scale (0.05, 0.4)


def test_loader_yields_the_crops_drawn_for_each_image(photo_folder):
    source = ImageFolder(photo_folder)
    sampler = ShardedEpochSampler(len(source), batch_size=4, seed=3)
    loader = DeviceCropLoader(source, sampler, 4, RECIPE, seed=5, num_workers=0, device=torch.device("cpu"))
    order = [index for index, _ in sampler]
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert sum(skipped for _, _, skipped in batches) == 1  # the broken file, wherever it fell
    readable = [i for i in order if "broken" not in source.files[i].name]
    for (views, labels, _), indices in zip(batches, [readable[0:4], readable[4:8], readable[8:11]]):
        if len(labels) != len(indices):  # the batch that held the broken file
            indices = indices[:len(labels)]
        assert [v.pixels.shape[-1] for v in views] == [64, 64, 32, 32]
        assert all(v.pixels.dtype == torch.uint8 and v.params.shape == (len(labels), 12) for v in views)
        assert labels.tolist() == [int(source.labels[i]) for i in indices]
        for row, index in enumerate(indices):
            generator = torch.Generator().manual_seed(sample_seed(5, 0, index))
            image = _pil(source.files[index])
            boxes, flips, params = draw_views(RECIPE, image.shape[1], image.shape[2], generator)
            for v, view in enumerate(RECIPE.views):
                expected = resized_crop(image, tuple(boxes[v].long().tolist()), view.size, bool(flips[v]))
                assert (views[v].pixels[row].int() - expected.int()).abs().max() <= 2
                assert torch.equal(views[v].params[row], params[v])


def test_draws_depend_on_seed_epoch_and_index_only(photo_folder):
    source = ImageFolder(photo_folder)
    dataset = EncodedImageDataset(source, RECIPE, seed=1)
    a, b = dataset[(0, 0)], dataset[(0, 0)]
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.params, b.params)
    assert not torch.equal(dataset[(0, 1)].boxes, a.boxes)  # another epoch
    assert not torch.equal(EncodedImageDataset(source, RECIPE, seed=2)[(0, 0)].boxes, a.boxes)


def test_in_memory_images_travel_as_pixels():
    sample = load_sample("heldout")
    item = EncodedImageDataset(sample, RECIPE, seed=0)[(7, 0)]
    assert torch.equal(item.data, torch.from_numpy(np.array(sample.load(7)[0])).permute(2, 0, 1))


@pytest.mark.slow
def test_a_run_trains_on_device_crops_of_unequal_images(photo_folder, tmp_path):
    from dinossl.train import train
    from tests.conftest import TINY_OVERRIDES

    config = load_config("vit-tiny-cifar", overrides=[
        *TINY_OVERRIDES, f"data.path={photo_folder}", "data.geometric=device", "data.photometric=device",
        "train.batch_size_per_process=4", "train.progress_bar=false", "train.knn_at_end=false"])
    result = train(config, tmp_path / "run")
    assert result.epochs_done == 1 and np.isfinite(result.last_epoch["loss"])
    assert result.last_epoch["skipped_images"] == 1


@pytest.mark.gpu
def test_decoding_on_the_gpu_matches_the_cpu(photo_folder):
    source = ImageFolder(photo_folder)
    dataset = EncodedImageDataset(source, RECIPE, seed=0)
    items = [dataset[(i, 0)] for i, f in enumerate(source.files) if "broken" not in f.name]
    on_cpu = decode_batch([item.data for item in items], torch.device("cpu"))
    on_gpu = decode_batch([item.data for item in items], torch.device("cuda"))
    for a, b in zip(on_cpu, on_gpu):
        assert b.device.type == "cuda" and a.shape == b.shape
        assert (a.int() - b.cpu().int()).abs().float().mean() < 1.0  # nvJPEG's IDCT differs by a grey level at most here and there
    sampler = ShardedEpochSampler(len(source), batch_size=4, seed=0)
    views, labels, _ = next(iter(DeviceCropLoader(source, sampler, 4, RECIPE, 0, 0, torch.device("cuda"))))
    assert all(v.pixels.device.type == "cuda" for v in views)
