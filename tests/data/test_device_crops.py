"""data.geometric=device: files read by the loader, decoded and cropped where the model runs.

On real photos of unequal sizes (Weizmann horses): the decoded pixels are PIL's, each crop is
PIL's bicubic resize of the box drawn for it (+ flip) to rounding, the boxes follow
RandomResizedCrop's rule, draws depend on (seed, epoch, index) only, unreadable files are
skipped and counted, the number of decode/resize calls does not grow with the batch, a
12-megapixel photo works, the CUDA work is ordered against the decoder's stream race, and a
training run goes through the path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from dinossl.config import CropConfig, load_config
from dinossl.data.crop_recipe import CropRecipe
from dinossl.data.device_crops import (
    DeviceCropLoader,
    EncodedImageDataset,
    cut_views,
    decode_batch,
    draw_views,
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


def _pil_crop(image: Image.Image, box: tuple[int, int, int, int], size: int, flip: bool) -> torch.Tensor:
    """The per-image path's crop: PIL crop + bicubic resize (RandomResizedCrop on a PIL image), then the flip."""
    top, left, height, width = box
    crop = image.crop((left, top, left + width, top + height)).resize((size, size), Image.BICUBIC)
    return TF.pil_to_tensor(crop.transpose(Image.FLIP_LEFT_RIGHT) if flip else crop)


def _one_crop(image: torch.Tensor, box: tuple[int, int, int, int], size: int, flip: bool) -> torch.Tensor:
    recipe = CropRecipe.from_config(CropConfig(global_size=size, local_size=size, num_local=0))
    boxes = torch.tensor([[box, box]], dtype=torch.float32)
    flips = torch.tensor([[flip, flip]])
    return cut_views([image], boxes, flips, torch.zeros(1, 2, 12), recipe)[0].pixels[0]


def test_a_crop_is_pils_bicubic_resize_of_its_box(horses_dir):
    """PIL's antialiased bicubic (a = -0.5) of the box, to PIL's own rounding: it keeps an 8-bit
    intermediate between its two passes (and Pillow 13 runs the vertical pass first for some
    shapes), which moves a grey level here and there, a few more where a sharp edge overshoots."""
    path = sorted((horses_dir / "images").glob("*.jpg"))[3]
    image = Image.open(path).convert("RGB")
    pixels = TF.pil_to_tensor(image)
    for box, size, flip in [((10, 20, 150, 120), 96, True), ((0, 0, pixels.shape[1], pixels.shape[2]), 224, False),
                            ((5, 7, 20, 30), 96, False), ((30, 40, 300, 250), 224, True)]:  # shrink, whole, enlarge
        got = _one_crop(pixels, box, size, flip)
        expected = _pil_crop(image, box, size, flip)
        assert got.shape == (3, size, size) and got.dtype == torch.uint8
        difference = (got.int() - expected.int()).abs()
        assert difference.float().mean() < 0.35 and (difference > 1).float().mean() < 0.02, box


def test_a_twelve_megapixel_photo_cut_to_96_pixels_is_pils_crop(horses_dir):
    """A 6000 x 4000 photo (a horse photo enlarged, plus grain) to 96-px local crops and a 224-px
    global crop: pre-shrunk by area averaging, then the bicubic filter; against PIL's direct
    resize of the same boxes."""
    photo = Image.open(sorted((horses_dir / "images").glob("*.jpg"))[0]).convert("RGB").resize((6000, 4000),
                                                                                               Image.BICUBIC)
    grain = np.random.default_rng(0).integers(-20, 21, size=(4000, 6000, 3))
    photo = Image.fromarray(np.clip(np.asarray(photo).astype(int) + grain, 0, 255).astype(np.uint8))
    pixels = TF.pil_to_tensor(photo)
    recipe = CropRecipe.from_config(CropConfig(global_size=224, local_size=96, num_local=2))
    boxes = torch.tensor([[[0, 0, 4000, 6000], [500, 900, 3100, 3300], [1000, 2000, 900, 1100], [3000, 5000, 1000, 1000]]],
                         dtype=torch.float32)
    flips = torch.tensor([[False, True, False, True]])
    views = cut_views([pixels], boxes, flips, torch.zeros(1, 4, 12), recipe)
    for v, view in enumerate(recipe.views):
        box = tuple(int(x) for x in boxes[0, v].tolist())
        expected = _pil_crop(photo, box, view.size, bool(flips[0, v]))
        difference = (views[v].pixels[0].int() - expected.int()).abs()
        assert difference.float().mean() < 0.3 and difference.max() <= 2, box  # measured: mean 0.09-0.14, max 1


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
            expected = cut_views([image], boxes[None], flips[None], params[None], RECIPE)  # this image alone
            for v in range(RECIPE.num_views):
                assert (views[v].pixels[row].int() - expected[v].pixels[0].int()).abs().max() <= 2  # libjpeg vs PIL
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


@pytest.fixture(scope="module")
def jpeg_folder(horses_dir, tmp_path_factory) -> Path:
    """12 horse JPEGs of different sizes plus 4 copies of a 2400 x 1800 photo (pre-shrunk for
    the 32-px crops of RECIPE)."""
    root = tmp_path_factory.mktemp("device_crops_jpegs") / "images" / "horses"
    root.mkdir(parents=True)
    files = sorted((horses_dir / "images").glob("*.jpg"))
    for path in files[:12]:
        shutil.copy(path, root / path.name)
    large = Image.open(files[20]).convert("RGB").resize((2400, 1800), Image.BICUBIC)
    for i in range(4):
        large.save(root / f"large{i}.jpg", quality=90)
    return root.parent


def _count_calls(monkeypatch, module, name: str, counts: dict[str, int]) -> None:
    original = getattr(module, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


@pytest.mark.parametrize("batch_size", [2, 8])
def test_decode_and_resize_calls_per_batch_do_not_grow_with_the_batch(jpeg_folder, monkeypatch, batch_size):
    """One decode call per batch, one resampling per distinct crop size (RECIPE: 64 and 32 px),
    at most one pre-shrink per distinct large-photo size (here one), whatever the batch size."""
    from dinossl.data import box_resampling, device_crops

    counts: dict[str, int] = {}
    _count_calls(monkeypatch, device_crops, "decode_jpeg", counts)
    _count_calls(monkeypatch, box_resampling, "resample_boxes", counts)
    _count_calls(monkeypatch, torch.nn.functional, "interpolate", counts)
    source = ImageFolder(jpeg_folder)
    sampler = ShardedEpochSampler(len(source), batch_size=batch_size, seed=1)
    loader = DeviceCropLoader(source, sampler, batch_size, RECIPE, seed=0, num_workers=0, device=torch.device("cpu"))
    per_batch = []
    for views, labels, skipped in loader:
        assert len(labels) == batch_size and skipped == 0
        per_batch.append(dict(counts))
        counts.clear()
    assert len(per_batch) == 16 // batch_size
    for calls in per_batch:
        assert calls["decode_jpeg"] == 1 and calls["resample_boxes"] == 2
        assert calls.get("interpolate", 0) <= 1
    assert any(calls.get("interpolate", 0) == 1 for calls in per_batch)  # the large photos were pre-shrunk


def test_a_cpu_device_uses_no_streams(jpeg_folder):
    source = ImageFolder(jpeg_folder)
    loader = DeviceCropLoader(source, ShardedEpochSampler(len(source), 4), 4, RECIPE, 0, 0, torch.device("cpu"))
    assert loader.streams is None


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


@pytest.mark.gpu
def test_gpu_crops_equal_the_cpu_crops_of_the_same_boxes_with_batches_in_flight(jpeg_folder):
    """The decoder's stream race, under load: while the training stream is kept busy (long
    matmuls queued, never waited for) and the allocator churns, three epochs of GPU batches are
    decoded and cut on the side stream and used on the training stream; every crop equals the
    CPU cut of the same nvJPEG-decoded pixels and boxes to rounding (a race shows as whole
    blocks of wrong pixels, not as stray grey levels)."""
    source = ImageFolder(jpeg_folder)
    sampler = ShardedEpochSampler(len(source), batch_size=4, seed=2)
    cuda = torch.device("cuda", torch.cuda.current_device())
    loader = DeviceCropLoader(source, sampler, 4, RECIPE, seed=0, num_workers=0, device=cuda)
    expected = []
    for epoch in range(3):  # reference: decoded on the GPU (synchronously), cut on the CPU
        sampler.set_epoch(epoch)
        for batch in loader.loader:
            images = [image.cpu() for image in decode_batch(batch.data, cuda)]
            torch.cuda.synchronize()
            expected.append([v.pixels for v in cut_views(images, batch.boxes, batch.flips, batch.params, RECIPE)])
    busy = torch.randn(4096, 4096, device=cuda)
    got = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for views, _, _ in loader:
            for _ in range(8):  # queue ~ milliseconds of work ahead of the crops' use
                busy = torch.tanh(busy @ busy * (1 / 64))
            got.append([(v.pixels.float() + busy[0, 0] * 0).round().to(torch.uint8) for v in views])  # read on the training stream
            del views
            _ = [torch.empty(1 << 20, device=cuda) for _ in range(8)]  # churn the allocator
    torch.cuda.synchronize()
    assert len(got) == len(expected) == 12
    for batch_got, batch_expected in zip(got, expected):
        for a, b in zip(batch_got, batch_expected):
            difference = (a.cpu().int() - b.int()).abs()
            # float sums in another order: a pixel of the 8-bit intermediate may round the other way
            assert difference.max() <= 2 and difference.float().mean() < 0.01
