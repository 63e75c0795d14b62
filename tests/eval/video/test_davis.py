"""DAVIS annotation I/O and the J / F scores on hand-made masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from dinossl.errors import DataError
from dinossl.eval.video.davis import DavisLayout, palette, read_annotation, score_sequence, summarise, write_annotation
from dinossl.eval.mask_metrics import boundary, contour_accuracy, dilate, region_similarity, tolerance_pixels


def _square(shape, top, left, height, width):
    mask = np.zeros(shape, bool)
    mask[top:top + height, left:left + width] = True
    return mask


# ---- annotation files -----------------------------------------------------------------------

def test_palette_colours():
    colours = np.asarray(palette()).reshape(256, 3)
    assert colours[0].tolist() == [0, 0, 0]
    assert colours[1].tolist() == [128, 0, 0] and colours[2].tolist() == [0, 128, 0]
    assert colours[3].tolist() == [128, 128, 0] and colours[4].tolist() == [0, 0, 128]
    assert len({tuple(c) for c in colours}) == 256


def test_palette_png_round_trip(tmp_path):
    labels = np.zeros((6, 9), np.uint8)
    labels[1:3, 2:5], labels[4, 7], labels[0, 8] = 1, 3, 255
    write_annotation(tmp_path / "00000.png", labels)
    with Image.open(tmp_path / "00000.png") as image:
        assert image.mode == "P" and image.getpalette()[3:6] == [128, 0, 0]
    assert np.array_equal(read_annotation(tmp_path / "00000.png"), labels)


def test_grayscale_annotations(tmp_path):
    binary = np.zeros((4, 4), np.uint8)
    binary[1:3, 1:3] = 255  # DAVIS-2016: 0/255
    Image.fromarray(binary).save(tmp_path / "binary.png")
    assert np.array_equal(read_annotation(tmp_path / "binary.png"), (binary > 0).astype(np.uint8))
    ids = np.array([[0, 1], [2, 2]], np.uint8)  # small gray values are ids
    Image.fromarray(ids).save(tmp_path / "ids.png")
    assert np.array_equal(read_annotation(tmp_path / "ids.png"), ids)
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="palette PNG"):
        read_annotation(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="does not exist"):
        read_annotation(tmp_path / "none.png")


def test_layout_requires_frames_and_annotations(tmp_path):
    (tmp_path / "JPEGImages" / "480p" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="Annotations"):
        DavisLayout(tmp_path).sequences()
    (tmp_path / "Annotations" / "480p" / "a").mkdir(parents=True)
    (tmp_path / "JPEGImages" / "480p" / "b").mkdir()
    assert DavisLayout(tmp_path).sequences() == ["a"]
    with pytest.raises(DataError, match="'b'"):
        DavisLayout(tmp_path).sequences(["b"])


# ---- J --------------------------------------------------------------------------------------

def test_region_similarity_hand_made():
    truth = _square((20, 20), 0, 0, 10, 10)
    pred = _square((20, 20), 0, 5, 10, 10)  # overlap 50, union 150
    assert region_similarity(pred, truth) == pytest.approx(1 / 3)
    assert region_similarity(truth, truth) == 1.0
    assert region_similarity(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert region_similarity(truth, np.zeros((20, 20))) == 0.0
    void = _square((20, 20), 0, 10, 10, 10)  # the part of pred outside truth is void
    assert region_similarity(pred, truth, void) == pytest.approx(0.5)


# ---- F --------------------------------------------------------------------------------------

def test_boundary_of_a_small_square():
    mask = _square((5, 5), 1, 1, 2, 2)
    expected = np.array([
        [1, 1, 1, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ], bool)
    assert np.array_equal(boundary(mask), expected)


def test_dilate_is_a_disk():
    point = np.zeros((9, 9), bool)
    point[4, 4] = True
    grown = dilate(point, 2)
    yy, xx = np.mgrid[:9, :9]
    assert np.array_equal(grown, (yy - 4) ** 2 + (xx - 4) ** 2 <= 4)


def _f_by_distances(pred, truth, radius):
    """Independent F: a boundary pixel matches if one of the other boundary lies within radius."""
    p, t = np.argwhere(boundary(pred)), np.argwhere(boundary(truth))
    near = np.sqrt(((p[:, None, :] - t[None, :, :]) ** 2).sum(-1)) <= radius
    precision, recall = near.any(1).mean(), near.any(0).mean()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_contour_accuracy_hand_made():
    truth = _square((40, 60), 10, 10, 15, 20)
    assert contour_accuracy(truth, truth) == 1.0
    shifted = _square((40, 60), 11, 10, 15, 20)  # one pixel lower: inside DAVIS's tolerance
    assert tolerance_pixels((40, 60)) == math.ceil(0.008 * math.hypot(40, 60)) == 1
    assert contour_accuracy(shifted, truth) == 1.0
    far = _square((40, 60), 10, 40, 15, 15)
    assert contour_accuracy(far, truth) == 0.0
    wide = _square((40, 60), 10, 10, 15, 40)  # shares the left half of truth's boundary
    expected = _f_by_distances(wide, truth, 1)
    assert 0.3 < expected < 0.9
    assert contour_accuracy(wide, truth) == pytest.approx(expected)
    assert contour_accuracy(wide, truth, tolerance=3) == pytest.approx(_f_by_distances(wide, truth, 3))
    empty = np.zeros((40, 60), bool)
    assert contour_accuracy(empty, empty) == 1.0 and contour_accuracy(empty, truth) == 0.0


# ---- sequence scores ------------------------------------------------------------------------

def test_score_sequence_skips_first_and_last_frames_and_averages_objects():
    truth = np.zeros((20, 20), np.uint8)
    truth[:10, :10], truth[12:, 12:] = 1, 2
    wrong = np.zeros_like(truth)  # object 1 missed, object 2 right
    wrong[12:, 12:] = 2
    predictions = [wrong, truth, wrong, wrong]  # frames 1 and 2 are scored
    scores = score_sequence(predictions, [truth] * 4, [1, 2])
    assert scores[1] == {"J": 0.5, "F": 0.5, "frames": 2}
    assert scores[2]["J"] == scores[2]["F"] == 1.0
    report = summarise({"seq": scores, "other": {1: {"J": 0.0, "F": 0.0, "frames": 1}}})
    assert report["sequences"]["seq"]["J"] == pytest.approx(0.75)
    assert report["overall"]["J"] == pytest.approx(0.5)  # mean over 3 objects: (0.5 + 1 + 0) / 3
    assert report["overall"]["J&F"] == pytest.approx(0.5) and report["objects"] == 3
    with pytest.raises(DataError, match="nothing to score"):
        score_sequence([truth, truth], [truth, truth], [1])
