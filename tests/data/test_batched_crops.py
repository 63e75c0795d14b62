"""data.geometric=batched: box sampling, resampling, parameter draws and the batch loader."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from dinossl.config import CropConfig, load_config
from dinossl.data.batched_crops import (
    BatchedCropLoader,
    batch_generator,
    draw_params_batch,
    images_in_memory,
    random_resized_boxes,
    resample_boxes,
)
from dinossl.data.images import ArrayImages, ImageFolder
from dinossl.data.loader import ShardedEpochSampler
from dinossl.data.photometric_params import (
    BLUR_SIGMA,
    GRAYSCALE,
    JITTER,
    ORDER,
    SOLARIZE,
    identity_params,
)
from dinossl.data.crop_recipe import ViewPhotometry
from dinossl.errors import ConfigError, DataError


def test_boxes_lie_inside_the_image_with_drawn_area_and_ratio():
    generator = torch.Generator().manual_seed(0)
    boxes = random_resized_boxes(5000, 32, 48, (0.2, 0.6), generator)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 48).all()
    area = h * w / (32 * 48)
    assert area.min() > 0.2 - 0.05 and area.max() < 0.6 + 0.05  # rounding of the side lengths
    ratio = w / h
    assert ratio.min() > 0.75 * 0.85 and ratio.max() < 4 / 3 / 0.85


def test_box_statistics_match_torchvision_random_resized_crop():
    torch.manual_seed(0)
    reference = torch.tensor(
        [v2.RandomResizedCrop.get_params(torch.zeros(3, 32, 32), [0.1, 0.4], [3 / 4, 4 / 3]) for _ in range(4000)],
        dtype=torch.float32,
    )  # (top, left, h, w)
    ours = random_resized_boxes(4000, 32, 32, (0.1, 0.4), torch.Generator().manual_seed(1))
    for column in range(4):
        assert abs(ours[:, column].mean() - reference[:, column].mean()) < 0.35, column
        assert abs(ours[:, column].std() - reference[:, column].std()) < 0.35, column


def test_boxes_fall_back_to_the_centre_when_no_try_fits():
    # A scale of 1 on a 4:1 image cannot fit at ratios 3/4..4/3: the centre 4/3-ratio crop is used.
    boxes = random_resized_boxes(10, 8, 32, (1.0, 1.0), torch.Generator().manual_seed(0))
    expected = v2.RandomResizedCrop.get_params(torch.zeros(3, 8, 32), [1.0, 1.0], [3 / 4, 4 / 3])
    assert expected == (0, 10, 8, 11)
    torch.testing.assert_close(boxes, torch.tensor([expected], dtype=torch.float32).repeat(10, 1))


def _quadrant_image() -> torch.Tensor:
    image = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    image[:, :, :16, :16] = 10
    image[:, :, :16, 16:] = 60
    image[:, :, 16:, :16] = 110
    image[:, :, 16:, 16:] = 160
    return image


def test_resampling_the_whole_image_at_its_size_is_exact_and_flip_mirrors():
    image = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole = torch.tensor([[0.0, 0.0, 32.0, 32.0]]).repeat(2, 1)
    out = resample_boxes(image, whole, 32, torch.tensor([False, True]))
    torch.testing.assert_close(out[0], image[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1], image[1].flip(-1), rtol=0, atol=0)


def test_resampling_takes_the_box_region():
    image = _quadrant_image()
    top_right = torch.tensor([[0.0, 16.0, 16.0, 16.0]])
    out = resample_boxes(image, top_right, 8, torch.tensor([False]))
    assert out.shape == (1, 3, 8, 8) and out.dtype == torch.uint8
    assert (out[:, :, 1:-1, 1:-1] == 60).all()  # away from the box edge no other quadrant leaks in
    bottom_left_enlarged = resample_boxes(image, torch.tensor([[16.0, 0.0, 16.0, 16.0]]), 32, torch.tensor([False]))
    assert (bottom_left_enlarged[:, :, 4:-4, 4:-4] == 110).all()  # bicubic support: 2 source px


def test_parameter_draws_follow_the_view_probabilities():
    generator = torch.Generator().manual_seed(0)
    view = ViewPhotometry((0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 0.5, (0.1, 0.3), 0.2)
    params = draw_params_batch(view, 20000, generator)
    assert abs(params[:, JITTER].mean() - 0.8) < 0.02
    assert abs(params[:, GRAYSCALE].mean() - 0.2) < 0.02
    assert abs((params[:, BLUR_SIGMA] > 0).float().mean() - 0.5) < 0.02
    assert abs(params[:, SOLARIZE].mean() - 0.2) < 0.02
    sigma = params[:, BLUR_SIGMA][params[:, BLUR_SIGMA] > 0]
    assert sigma.min() >= 0.1 and sigma.max() <= 0.3
    jittered = params[params[:, JITTER] > 0]
    assert (jittered[:, ORDER].sort(dim=1).values == torch.arange(4.0)).all()  # each order is a permutation
    assert jittered[:, 1].min() >= 0.6 and jittered[:, 1].max() <= 1.4  # brightness factor
    assert jittered[:, 4].min() >= -0.1 and jittered[:, 4].max() <= 0.1  # hue shift
    untouched = params[params[:, JITTER] == 0]
    torch.testing.assert_close(untouched[:, :9], identity_params()[:9].expand(len(untouched), 9))


def test_parameter_draws_with_zero_probabilities_are_identity():
    view = ViewPhotometry((0.4, 0.4, 0.2, 0.1), 0.0, 0.0, 0.0, (0.1, 0.3), 0.0)
    params = draw_params_batch(view, 100, torch.Generator().manual_seed(0))
    torch.testing.assert_close(params, identity_params().expand(100, -1))


def _array_source(count: int = 40) -> ArrayImages:
    rng = np.random.default_rng(0)
    return ArrayImages(rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), np.arange(count) % 10,
                       [str(c) for c in range(10)])


def _loader(source, epoch: int = 0, seed: int = 0) -> BatchedCropLoader:
    crops = CropConfig(global_size=32, local_size=16, num_local=3, local_scale=(0.1, 0.4))
    sampler = ShardedEpochSampler(len(source), batch_size=8, seed=seed)
    sampler.set_epoch(epoch)
    return BatchedCropLoader(source, sampler, 8, crops, seed)


def test_loader_yields_the_sampler_batches_as_raw_views():
    source = _array_source()
    loader = _loader(source)
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    order = [index for index, _ in loader.sampler]
    for step, (views, labels, skipped) in enumerate(batches):
        assert skipped == 0 and len(views) == 2 + 3
        assert [tuple(v.pixels.shape) for v in views] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 3
        assert all(v.pixels.dtype == torch.uint8 and v.params.shape[0] == 8 for v in views)
        torch.testing.assert_close(labels, torch.from_numpy(source.labels[order[step * 8:(step + 1) * 8]]))


def test_loader_crops_repeat_for_the_same_epoch_and_differ_between_epochs():
    source = _array_source()
    first = [v.pixels for v in next(iter(_loader(source, epoch=1)))[0]]
    again = [v.pixels for v in next(iter(_loader(source, epoch=1)))[0]]
    other = [v.pixels for v in next(iter(_loader(source, epoch=2)))[0]]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_folder_of_equal_images_loads_into_memory_and_skips_unreadable(tmp_path):
    for index in range(3):
        Image.new("RGB", (24, 20), (index * 40, 0, 0)).save(tmp_path / f"{index}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    array, skipped = images_in_memory(ImageFolder(tmp_path))
    assert array.pixels.shape == (3, 20, 24, 3) and (array.labels == -1).all() and skipped == 1


def test_folder_of_mixed_sizes_is_refused_naming_the_file(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 32)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"b\.png is 40x32.*data.geometric=per_image"):
        images_in_memory(ImageFolder(tmp_path))


@pytest.mark.parametrize("overrides, message", [
    (["data.geometric=batched", "data.photometric=loader"], "data.geometric: batched crops need data.photometric=device"),
    (["data.geometric=gpu"], "data.geometric: unknown mode 'gpu'"),
])
def test_config_rejects_impossible_geometric_modes(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("vit-tiny-cifar", overrides=overrides)


def test_crops_are_not_blank_and_keep_image_content():
    source = _array_source(16)
    views, _, _ = next(iter(_loader(source)))
    assert all(v.pixels.float().std() > 20 for v in views)  # random pixels stay random, not a flat fill


def test_crops_do_not_depend_on_how_the_global_batch_is_split_over_processes():
    source = _array_source(32)
    crops = CropConfig(global_size=32, local_size=16, num_local=2, local_scale=(0.1, 0.4))
    single = BatchedCropLoader(source, ShardedEpochSampler(32, 8, seed=0), 8, crops, seed=0)
    shards = [BatchedCropLoader(source, ShardedEpochSampler(32, 4, rank=r, world_size=2, seed=0), 4, crops, seed=0)
              for r in range(2)]
    whole_views, whole_labels, _ = next(iter(single))
    parts = [next(iter(shard)) for shard in shards]
    for view in range(4):
        merged = torch.empty_like(whole_views[view].pixels)
        merged[0::2], merged[1::2] = parts[0][0][view].pixels, parts[1][0][view].pixels
        assert torch.equal(merged, whole_views[view].pixels)
        params = torch.empty_like(whole_views[view].params)
        params[0::2], params[1::2] = parts[0][0][view].params, parts[1][0][view].params
        assert torch.equal(params, whole_views[view].params)


def test_same_boxes_as_the_per_image_crop_on_cifar10(cifar10_small):
    """Real CIFAR-10 images, the vit-tiny-cifar views (32 px global, 16 px local): fed the same
    boxes and flips, the batched resampling stays close to the per-image path's PIL crop (the
    resized_crop that RandomResizedCrop applies, then the flip).

    Not identical, by design of the batched path: grid_sample's bicubic kernel (a = -0.75) instead
    of PIL's (a = -0.5), no antialiasing when a box is shrunk (some 16-px local crops), pixels just
    outside the box reach the kernel where PIL stops at the box edge, no 8-bit rounding between
    the two passes. Measured on these images (grey levels of 255): mean 1.2 (global) and 1.5
    (local), at most 2.7 for one crop, 99th percentile 8.
    """
    files = sorted((cifar10_small / "train").glob("*/*.jpg"))[::8][:64]
    images = torch.stack([v2.functional.pil_to_tensor(Image.open(f).convert("RGB")) for f in files])
    generator = torch.Generator().manual_seed(0)
    for size, scale in ((32, (0.4, 1.0)), (16, (0.1, 0.4))):
        boxes = random_resized_boxes(len(images), 32, 32, scale, generator)
        flip = torch.rand(len(images), generator=generator) < 0.5
        batched = resample_boxes(images, boxes, size, flip).float()
        per_image = []
        for image, (top, left, height, width), flipped in zip(images, boxes.long().tolist(), flip.tolist()):
            crop = v2.functional.resized_crop(v2.functional.to_pil_image(image), top, left, height, width,
                                              [size, size], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
            per_image.append(v2.functional.pil_to_tensor(v2.functional.horizontal_flip(crop) if flipped else crop))
        difference = (batched - torch.stack(per_image).float()).abs()
        assert difference.mean() < 2.0 and difference.flatten(1).mean(1).max() < 5.0
        assert torch.quantile(difference.flatten(), 0.99) <= 12
        shifted = (batched - torch.stack(per_image).float().roll(1, dims=0)).abs()  # another image's crop
        assert shifted.mean() > 10 * difference.mean()


def _former_resample(images, boxes, size, flip):
    """resample_boxes as it was before it followed the images' device (host tensors only)."""
    _, _, height, width = images.shape
    top, left, box_h, box_w = boxes.unbind(1)
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    xs = (2 * (left[:, None] + centres[None] * box_w[:, None]) / width) - 1
    ys = (2 * (top[:, None] + centres[None] * box_h[:, None]) / height) - 1
    xs = torch.where(flip[:, None], xs.flip(1), xs)
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)
    resized = torch.nn.functional.grid_sample(images.float(), grid, mode="bicubic", padding_mode="border",
                                              align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _former_batches(source, loader):
    """The loader's batches restated on the host: per step the global batch's generator, then per
    view boxes, flips and parameters drawn in that order and the former resampling."""
    pixels = torch.from_numpy(source.pixels).permute(0, 3, 1, 2)
    keys = list(iter(loader.sampler))
    for step in range(len(loader)):
        chunk = keys[step * loader.batch_size:(step + 1) * loader.batch_size]
        indices = torch.tensor([index for index, _ in chunk])
        generator = batch_generator(loader.seed, chunk[0][1], step)
        images = pixels.index_select(0, indices).contiguous()
        views = []
        for view in loader.multicrop.recipe.views:
            boxes = random_resized_boxes(len(indices), 32, 32, view.scale, generator)
            flip = torch.rand(len(indices), generator=generator) < 0.5
            params = draw_params_batch(view.photometry, len(indices), generator)
            views.append((_former_resample(images, boxes, view.size, flip), params))
        yield views, torch.from_numpy(source.labels)[indices]


def test_loader_on_the_cpu_cuts_bit_identical_crops_to_the_former_host_path():
    source = _array_source()
    loader = _loader(source, epoch=3, seed=5)
    got = list(loader)
    expected = list(_former_batches(source, loader))
    assert len(got) == len(expected) == 5
    for (views, labels, _), (former_views, former_labels) in zip(got, expected):
        assert torch.equal(labels, former_labels)
        for view, (pixels, params) in zip(views, former_views):
            assert view.pixels.device.type == "cpu"
            assert torch.equal(view.pixels, pixels) and torch.equal(view.params, params)


@pytest.mark.gpu
def test_loader_on_cuda_cuts_there_and_agrees_with_the_cpu():
    """Pixels on the GPU, parameters and labels on the host; the GPU's bicubic resampling may
    round a few pixels the other way."""
    source = _array_source()
    on_cpu = list(_loader(source, epoch=1))
    crops = CropConfig(global_size=32, local_size=16, num_local=3, local_scale=(0.1, 0.4))
    sampler = ShardedEpochSampler(len(source), batch_size=8, seed=0)
    sampler.set_epoch(1)
    on_gpu = list(BatchedCropLoader(source, sampler, 8, crops, 0, device="cuda"))
    for (cpu_views, cpu_labels, _), (gpu_views, gpu_labels, _) in zip(on_cpu, on_gpu):
        assert gpu_labels.device.type == "cpu" and torch.equal(cpu_labels, gpu_labels)
        for a, b in zip(cpu_views, gpu_views):
            assert b.pixels.device.type == "cuda" and b.params.device.type == "cpu"
            assert torch.equal(a.params, b.params)
            difference = (a.pixels.int() - b.pixels.cpu().int()).abs()
            assert difference.max() <= 1 and (difference == 0).float().mean() > 0.99
def test_an_epoch_resumed_at_a_step_yields_the_same_batches():
    source = _array_source()
    whole = list(_loader(source, epoch=2))
    resumed = _loader(source, epoch=2)
    resumed.sampler.set_epoch(2, start_step=3)
    rest = list(resumed)
    assert len(rest) == len(resumed) == 2
    for (views_a, labels_a, _), (views_b, labels_b, _) in zip(whole[3:], rest):
        assert torch.equal(labels_a, labels_b)
        for a, b in zip(views_a, views_b):
            assert torch.equal(a.pixels, b.pixels) and torch.equal(a.params, b.params)
