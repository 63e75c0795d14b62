"""Label propagation and DAVIS-style video segmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from dinossl.errors import ConfigError, DataError
from dinossl.eval.video.davis import read_annotation, write_annotation
from dinossl.eval.video.propagation import propagate_labels
from dinossl.eval.frames import list_frames
from dinossl.eval.image_input import as_rgb, open_image, plan_geometry, to_input
from dinossl.eval.video.davis import object_ids
from dinossl.eval.video.segmentation import (
    PropagationSettings,
    evaluate_davis,
    labels_from_soft,
    one_hot_grid,
    patch_features,
    segment_frames,
)
from dinossl.models import build_vit


def _dense_reference(target, sources, labels, radius, topk, temperature):
    """Full (N x n*N) affinity as in the reference evaluation: exp(cos / T) masked to the
    neighbourhood, all but the top k per target zeroed, normalised, labels averaged."""
    n, d, h, w = sources.shape
    queries = target.reshape(d, -1).T
    keys = sources.permute(0, 2, 3, 1).reshape(n, h * w, d)
    affinity = torch.exp(torch.einsum("qd,nkd->nqk", queries, keys) / temperature)
    if radius is not None:
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        near = ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)
        affinity = affinity * near
    affinity = affinity.permute(1, 0, 2).reshape(h * w, n * h * w)
    kth = affinity.topk(topk, dim=1).values[:, -1:]
    affinity = torch.where(affinity >= kth, affinity, torch.zeros_like(affinity))
    affinity = affinity / affinity.sum(dim=1, keepdim=True)
    flat_labels = labels.permute(0, 2, 3, 1).reshape(n * h * w, -1)
    return (affinity @ flat_labels).T.reshape(-1, h, w)


@pytest.mark.parametrize("radius,tile", [(2, 3), (1, 4), (None, 2), (3, 100)])
def test_tiled_propagation_matches_the_dense_computation(radius, tile):
    generator = torch.Generator().manual_seed(1)
    n, d, h, w, classes = 3, 6, 5, 7, 3
    sources = F.normalize(torch.randn(n, d, h, w, generator=generator, dtype=torch.float64), dim=1)
    target = F.normalize(torch.randn(d, h, w, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.softmax(torch.randn(n, classes, h, w, generator=generator, dtype=torch.float64), dim=1)
    got = propagate_labels(target, sources, labels, radius=radius, topk=5, temperature=0.1, tile=tile)
    expected = _dense_reference(target, sources, labels, radius, 5, 0.1)
    torch.testing.assert_close(got, expected)


def test_identical_frames_propagate_labels_unchanged():
    h, w = 4, 6
    features = torch.eye(h * w).reshape(h * w, h, w)  # every patch orthogonal to the others
    labels = torch.softmax(torch.randn(3, h, w), dim=0)
    one = propagate_labels(features, features[None], labels[None])
    torch.testing.assert_close(one, labels, atol=1e-3, rtol=0)  # 4 other neighbours weigh exp(0)/exp(10)
    many = propagate_labels(features, features[None].repeat(8, 1, 1, 1), labels[None].repeat(8, 1, 1, 1))
    torch.testing.assert_close(many, labels)  # 8 exact matches: the top 5 are copies of itself


def test_sources_outside_the_neighbourhood_are_ignored():
    h, w = 1, 10
    features = torch.eye(h * w).reshape(h * w, h, w)
    source = features.clone()
    source[:, 0, 9] = features[:, 0, 0]  # patch 9 of the source looks exactly like target patch 0
    labels = torch.zeros(1, 2, h, w)
    labels[0, 0] = 1.0
    labels[0, :, 0, 9] = torch.tensor([0.0, 1.0])
    near = propagate_labels(features, source[None], labels, radius=2)
    assert near[1, 0, 0] < 1e-3  # patch 9 is 9 patches away
    far = propagate_labels(features, source[None], labels, radius=None)
    assert far[1, 0, 0] > 0.4  # without the restriction it wins half the weight


def test_one_hot_grid_and_labels_from_soft():
    labels = np.zeros((16, 16), np.uint8)
    labels[:8, :8], labels[8:, 8:], labels[0, 15] = 5, 2, 255
    ids = [0, 2, 5]
    grid = one_hot_grid(labels, ids, (2, 2))
    assert grid.shape == (3, 2, 2)
    torch.testing.assert_close(grid[:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(grid[:, 1, 1], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(grid.sum(dim=0), torch.ones(2, 2))  # void counts as background
    back = labels_from_soft(grid, (16, 16), ids)
    assert back.dtype == np.uint8
    assert back[3, 3] == 5 and back[12, 12] == 2 and back[3, 12] == 0 and back[12, 3] == 0


def _sequence(root, name, frames, first, truths=None):
    """A DAVIS-layout sequence from RGB arrays and a first annotation."""
    images = root / "JPEGImages" / "480p" / name
    notes = root / "Annotations" / "480p" / name
    images.mkdir(parents=True)
    notes.mkdir(parents=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(images / f"{index:05d}.png")
        truth = first if truths is None else truths[index]
        write_annotation(notes / f"{index:05d}.png", truth)
    return images


def _block_annotation():
    """Objects 1 and 3 as full-width bands on patch rows: bilinear upsampling of their patch
    grid followed by arg-max gives them back pixel for pixel (no corners to round off)."""
    labels = np.zeros((32, 48), np.uint8)
    labels[8:16], labels[24:32] = 1, 3
    return labels


def test_a_mask_propagates_unchanged_through_identical_frames(tmp_path, position_backbone):
    frame = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    folder = _sequence(tmp_path, "still", [frame] * 5, _block_annotation())
    frames = sorted(folder.iterdir())
    settings = PropagationSettings(short_side=32)
    predictions = list(segment_frames(position_backbone, frames, _block_annotation(), settings))
    assert len(predictions) == 5
    for prediction in predictions:
        assert np.array_equal(prediction, _block_annotation())
    report = evaluate_davis(position_backbone, tmp_path, tmp_path / "out", settings=settings, progress=False)
    assert report["overall"] == {"J": 1.0, "F": 1.0, "J&F": 1.0}
    assert report["sequences"]["still"]["objects"].keys() == {"1", "3"}
    assert np.array_equal(read_annotation(tmp_path / "out" / "still" / "00004.png"), _block_annotation())
    assert json.loads((tmp_path / "out" / "results.json").read_text())["settings"]["radius"] == 12


def test_bad_sequences_are_refused(tmp_path, position_backbone):
    frame = np.zeros((32, 48, 3), np.uint8)
    small = np.zeros((16, 16), np.uint8)
    _sequence(tmp_path / "a", "sizes", [frame] * 3, _block_annotation(), [_block_annotation()] * 2 + [small])
    with pytest.raises(DataError, match="annotation 00002.png is 16x16"):
        evaluate_davis(position_backbone, tmp_path / "a", tmp_path / "out_a", progress=False)
    folder = _sequence(tmp_path / "b", "gap", [frame] * 3, _block_annotation())
    (folder / "00001.png").unlink()
    with pytest.raises(DataError, match="gap"):
        evaluate_davis(position_backbone, tmp_path / "b", tmp_path / "out_b", progress=False)
    with pytest.raises(DataError, match="the first annotation is 16x16"):
        list(segment_frames(position_backbone, sorted(folder.iterdir()), small))
    with pytest.raises(ConfigError, match="top-k 0"):
        PropagationSettings(topk=0)


def test_davis_sequence_with_a_trained_checkpoint(tmp_path, tiny_run, davis_dir):
    from dinossl.weights import load_backbone

    backbone = load_backbone(tiny_run / "teacher_backbone.pth")
    settings = PropagationSettings(short_side=64)
    report = evaluate_davis(backbone, davis_dir, tmp_path / "out", ["car-shadow"], settings=settings,
                            progress=False, max_frames=4)
    written = sorted((tmp_path / "out" / "car-shadow").glob("*.png"))
    assert [p.name for p in written] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    with Image.open(written[1]) as image:
        assert image.mode == "P" and image.size == (854, 480)
    scores = report["sequences"]["car-shadow"]
    assert scores["objects"]["1"]["frames"] == 2
    # The scores are those of the masks written, against the annotations, frames 1 and 2 (J by hand).
    notes = davis_dir / "Annotations" / "480p" / "car-shadow"
    masks = [read_annotation(path) == 1 for path in written[1:3]]
    truths = [read_annotation(notes / path.name) == 1 for path in written[1:3]]
    j = np.mean([(m & t).sum() / (m | t).sum() for m, t in zip(masks, truths)])
    assert scores["J"] == pytest.approx(j, abs=1e-12) and 0.0 < j < 1.0
    assert report["overall"]["J&F"] == pytest.approx((scores["J"] + scores["F"]) / 2)


def _host_pipeline(backbone, frames, first_labels, settings):
    """The segmentation as it ran before it kept its work on the device: features copied to the
    host after each forward, one-hot grid, propagation, upsampling and arg-max on the CPU."""
    first = as_rgb(open_image(frames[0]), "first")
    geometry = plan_geometry(first.size, backbone.patch_size, settings.short_side, fit="resize", name="first")
    ids = [0] + object_ids(first_labels)
    height, width = first_labels.shape
    first_features = patch_features(backbone, to_input(geometry.apply(first))).cpu()
    first_soft = one_hot_grid(first_labels, ids, geometry.grid(backbone.patch_size))
    recent, out = [], [first_labels.astype(np.uint8)]
    for path in frames[1:]:
        target = patch_features(backbone, to_input(geometry.apply(as_rgb(open_image(path), "f")))).cpu()
        sources = torch.stack([first_features] + [f for f, _ in recent[-settings.context:]])
        labels = torch.stack([first_soft] + [s for _, s in recent[-settings.context:]])
        soft = propagate_labels(target, sources, labels, settings.radius, settings.topk, settings.temperature)
        recent.append((target, soft))
        out.append(labels_from_soft(soft, (height, width), ids))
    return out


def _davis_frames(davis_dir, count):
    frames = list_frames(davis_dir / "JPEGImages" / "480p" / "car-shadow")[:count]
    first = read_annotation(davis_dir / "Annotations" / "480p" / "car-shadow" / f"{frames[0].stem}.png")
    return frames, first


def _random_vit():
    torch.manual_seed(0)
    return build_vit("vit_tiny", patch_size=8, img_size=64, depth=2).eval()


def test_segmentation_on_the_cpu_is_unchanged_by_keeping_work_on_the_device(davis_dir):
    """Bit-identical object ids to the former host pipeline on a real DAVIS sequence."""
    frames, first = _davis_frames(davis_dir, 6)
    settings = PropagationSettings(short_side=64, context=2)
    backbone = _random_vit()
    got = list(segment_frames(backbone, frames, first, settings, device="cpu"))
    expected = _host_pipeline(backbone, frames, first, settings)
    assert len(got) == len(expected) == 6
    assert any(len(np.unique(labels)) > 1 for labels in got[1:])  # something was propagated
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype == np.uint8 and np.array_equal(a, b)


@pytest.mark.gpu
def test_segmentation_on_cuda_agrees_with_the_cpu(davis_dir):
    """The device path gives the CPU's object ids up to float rounding at a few boundary pixels."""
    torch.set_float32_matmul_precision("highest")  # conftest sets it back after the test
    frames, first = _davis_frames(davis_dir, 6)
    settings = PropagationSettings(short_side=64, context=2)
    backbone = _random_vit()
    on_cpu = list(segment_frames(backbone, frames, first, settings, device="cpu"))
    on_gpu = list(segment_frames(backbone.cuda(), frames, first, settings, device="cuda"))
    for a, b in zip(on_cpu, on_gpu):
        assert (a == b).mean() > 0.999
