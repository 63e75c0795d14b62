"""Descriptors against direct computations with the backbone: sizes, [CLS], GeM, multiscale,
mirror; batching by input size; unreadable images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from dinossl.errors import DataError, DinoError
from dinossl.eval.image_input import to_input
from dinossl.eval.retrieval.descriptors import (
    MULTISCALE,
    DescriptorSpec,
    ImageRequest,
    Resize,
    describe_batch,
    describe_images,
    iter_descriptors,
    load_input,
)
from dinossl.weights import load_backbone


@pytest.fixture(scope="module")
def vit(vit_weights):
    return load_backbone(vit_weights).eval()


def _photo(path, size=(300, 200), seed=0, mode="RGB"):
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def test_resize_policies(tmp_path):
    image = Image.open(_photo(tmp_path / "a.png"))
    assert Resize("longest", 224).apply(image).size == (224, 149)  # longer side 224, aspect kept
    assert Resize("longest", 512).apply(image).size == (300, 200)  # never enlarged
    assert Resize("square", 320).apply(image).size == (320, 320)
    with pytest.raises(DinoError):
        Resize("fit", 224)


def test_inputs_keep_their_size_and_boxes_are_applied(tmp_path):
    path = _photo(tmp_path / "a.png")
    pixels, note = load_input(ImageRequest(path), Resize("longest", 224), patch=16)
    assert pixels.shape == (3, 149, 224) and note is None  # each view is cropped to the patch grid later
    image = Image.open(path).convert("RGB")
    boxed, _ = load_input(ImageRequest(path, (9.6, 20.4, 110.2, 179.5)), Resize("longest", 1000), patch=16)
    expected = to_input(image.crop((10, 20, 110, 180)))[0]
    assert torch.equal(boxed, expected)
    with pytest.raises(DataError, match="smaller than one"):
        load_input(ImageRequest(_photo(tmp_path / "tiny.png", size=(40, 12))), Resize("longest", 224), patch=16)
    with pytest.raises(DataError, match="outside"):
        load_input(ImageRequest(path, (400.0, 0.0, 500.0, 10.0)), Resize("longest", 224), patch=16)
    gray, note = load_input(ImageRequest(_photo(tmp_path / "g.png", mode="L")), Resize("square", 32), patch=16)
    assert gray.shape == (3, 32, 32) and note == "grayscale"


def test_cls_and_gem_descriptors_equal_their_definitions(vit):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        tokens = vit.intermediate_layers(x, 1)[0]
        cls = describe_batch(vit, x, DescriptorSpec("cls"))
        both = describe_batch(vit, x, DescriptorSpec("cls+gem"))
        torch.testing.assert_close(cls, vit(x))
    patches = tokens[:, 1:]  # 4 x 6 patch tokens after the class token
    assert patches.shape[1] == 24
    gem = (patches.clamp(min=1e-6) ** 4).mean(dim=1) ** 0.25
    assert both.shape == (2, 2 * vit.embed_dim)
    torch.testing.assert_close(both, torch.cat([tokens[:, 0], gem], dim=1))


def test_multiscale_and_mirror_average_their_views(vit):
    x = torch.randn(1, 3, 117, 171)  # not patch multiples: every scale is taken from the whole input
    assert MULTISCALE == (1.0, 1 / math.sqrt(2), 0.5)
    with torch.no_grad():
        views = [vit(x[..., :112, :160])]
        for scale in MULTISCALE[1:]:
            scaled = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            height, width = scaled.shape[-2:]
            views.append(vit(scaled[..., : height - height % 16, : width - width % 16]))
        torch.testing.assert_close(describe_batch(vit, x, DescriptorSpec("cls", MULTISCALE)), sum(views) / 3)
        x = x[..., :112, :160]
        mirrored = (vit(x) + vit(x.flip(-1))) / 2
        torch.testing.assert_close(describe_batch(vit, x, DescriptorSpec("cls", mirror=True)), mirrored)
        # A left-right flipped image gets the same mirror-averaged descriptor.
        torch.testing.assert_close(describe_batch(vit, x.flip(-1), DescriptorSpec("cls", mirror=True)), mirrored)


def test_batches_group_equal_sizes_in_order_and_report_unreadable_files(vit, tmp_path):
    sizes = [(64, 48), (64, 48), (48, 64), (64, 48), (64, 48), (64, 48)]
    paths = [_photo(tmp_path / f"{i}.png", size, seed=i) for i, size in enumerate(sizes)]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    requests = [ImageRequest(p) for p in paths[:4]] + [ImageRequest(tmp_path / "bad.jpg")] + \
        [ImageRequest(p) for p in paths[4:]]
    batches = list(iter_descriptors(vit, requests, Resize("longest", 64), DescriptorSpec("cls"), batch_size=2))
    assert [b.indices for b in batches] == [[0, 1], [2], [3, 5], [6]]
    assert [[i for i, _ in b.unreadable] for b in batches] == [[], [], [4], []]
    assert [b.seen for b in batches] == [2, 3, 6, 7]
    with torch.no_grad():
        direct = vit(torch.stack([load_input(ImageRequest(paths[2]), Resize("longest", 64), 16)[0]]))
    torch.testing.assert_close(batches[1].descriptors, direct)

    described = describe_images(vit, requests, Resize("longest", 64), DescriptorSpec("cls"), batch_size=3,
                                skip_unreadable=True)
    assert described.kept.tolist() == [0, 1, 2, 3, 5, 6] and [i for i, _ in described.unreadable] == [4]
    torch.testing.assert_close(described.descriptors[2:3], direct)
    with pytest.raises(DataError, match="bad.jpg"):
        describe_images(vit, requests, Resize("longest", 64), DescriptorSpec("cls"))
    with pytest.raises(DataError, match="none of the 1"):
        describe_images(vit, requests[4:5], Resize("longest", 64), DescriptorSpec("cls"), skip_unreadable=True)


def test_gem_needs_patch_tokens():
    class Pooled(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    with pytest.raises(DinoError, match="patch tokens"):
        DescriptorSpec("cls+gem").check(Pooled())
    DescriptorSpec("cls").check(Pooled())
