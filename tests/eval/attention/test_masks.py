"""The Jaccard protocol of attention masks against foreground masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dinossl.errors import DataError
from dinossl.eval.attention.masks import evaluate_masks, jaccard, pair_images_with_masks
from dinossl.eval.attention.masks_figure import write_mask_report


def test_jaccard_hand_made():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[:2, 1:3] = True  # 4 pixels, 2 shared
    assert jaccard(a, b) == pytest.approx(2 / 6)
    assert jaccard(a, a) == 1.0 and jaccard(a, ~a) == 0.0
    assert jaccard(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    with pytest.raises(ValueError):
        jaccard(a, b[:2])


def _pair(folder, name, image, mask):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    Image.fromarray(image).save(folder / "images" / f"{name}.png")
    Image.fromarray(mask).save(folder / "masks" / f"{name}.png")


def _bright_square(height, width, top, left, size):
    """An image with a white patch-aligned square on black and its 0/255 mask."""
    image = np.zeros((height, width, 3), np.uint8)
    image[top:top + size, left:left + size] = 255
    return image, image[..., 0].copy()


def test_known_answers_with_an_attention_that_follows_the_foreground(tmp_path, brightness_backbone):
    # Attention is uniform over the 4 x 4 = 16 foreground patches: keeping all of the mass gives
    # the foreground exactly (J = 1); keeping 60% needs ceil(0.6 * 16) = 10 of them (J = 10/16).
    image, mask = _bright_square(48, 64, 8, 16, 32)
    _pair(tmp_path, "a", image, mask)
    pairs = pair_images_with_masks(tmp_path / "images", tmp_path / "masks")
    full, _ = evaluate_masks(brightness_backbone(heads=2), pairs, short_side=None, fraction=1.0, progress=False)
    assert full["summary"]["best_head_jaccard"] == full["summary"]["mean_head_jaccard"] == 1.0
    part, kept = evaluate_masks(brightness_backbone(heads=2), pairs, short_side=None, progress=False, keep=1)
    assert part["images"][0]["per_head"] == [10 / 16, 10 / 16]
    assert part["summary"]["mean_map_jaccard"] == 10 / 16
    assert part["settings"] == {"short_side": None, "mass_fraction": 0.6, "mask_threshold": 127,
                                "patch_size": 8, "heads": 2}
    written = write_mask_report(part, kept, tmp_path / "report", title="stub")
    assert json.loads(written[0].read_text())["summary"]["images"] == 1
    assert Image.open(written[1]).size[0] > 100


def test_ground_truth_is_resized_and_cropped_like_the_image(tmp_path, brightness_backbone):
    # A 30 x 20 image scaled to short side 40 (60 x 40), cropped to 56 x 40: the square scales
    # with it and still matches the attention (fraction 1) almost exactly.
    image, mask = _bright_square(20, 30, 4, 8, 12)
    _pair(tmp_path, "b", image, mask)
    pairs = pair_images_with_masks(tmp_path / "images", tmp_path / "masks")
    report, _ = evaluate_masks(brightness_backbone(heads=1), pairs, short_side=40, fraction=1.0, progress=False)
    assert report["images"][0]["best"] > 0.75


def test_a_mask_at_another_scale_is_rescaled(tmp_path, brightness_backbone, dinossl_log):
    image, _ = _bright_square(32, 48, 8, 16, 16)
    _, small_mask = _bright_square(16, 24, 4, 8, 8)  # the same mask at half the size
    _pair(tmp_path, "c", image, small_mask)
    pairs = pair_images_with_masks(tmp_path / "images", tmp_path / "masks")
    report, _ = evaluate_masks(brightness_backbone(), pairs, short_side=None, fraction=1.0, progress=False)
    assert report["images"][0]["best"] == 1.0 and report["summary"]["rescaled_masks"] == 1
    assert "1 of 1 masks differ in size" in dinossl_log.text


def test_palette_masks_count_every_object_index_as_foreground(tmp_path, brightness_backbone):
    image, mask = _bright_square(32, 32, 8, 8, 16)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "p.png")
    palette_mask = Image.fromarray((mask > 0).astype(np.uint8), mode="P")  # index 1 = dark red, gray 38
    palette_mask.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    palette_mask.save(tmp_path / "masks" / "p.png")
    pairs = pair_images_with_masks(tmp_path / "images", tmp_path / "masks")
    report, _ = evaluate_masks(brightness_backbone(), pairs, short_side=None, fraction=1.0, progress=False)
    assert report["images"][0]["best"] == 1.0


def test_bad_pairs(tmp_path, brightness_backbone):
    image, mask = _bright_square(16, 16, 0, 0, 8)
    _pair(tmp_path, "ok", image, mask)
    Image.fromarray(image).save(tmp_path / "images" / "lonely.png")
    with pytest.raises(DataError, match="no mask .* for lonely.png"):
        pair_images_with_masks(tmp_path / "images", tmp_path / "masks")
    (tmp_path / "images" / "lonely.png").unlink()
    Image.fromarray(mask[:8]).save(tmp_path / "masks" / "ok.png")
    pairs = pair_images_with_masks(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(DataError, match="ok.png is 16x8, its image is 16x16: the aspect ratios differ"):
        evaluate_masks(brightness_backbone(), pairs, short_side=None, progress=False)


def test_horses_with_a_trained_checkpoint(tmp_path, tiny_run, horses_dir):
    from dinossl.weights import load_backbone

    pairs = pair_images_with_masks(horses_dir / "images", horses_dir / "masks")
    assert len(pairs) == 61  # tests/fixtures/weizmann-horses: horse001-horse061
    backbone = load_backbone(tiny_run / "teacher_backbone.pth")
    report, kept = evaluate_masks(backbone, pairs[:3], short_side=64, progress=False, keep=2)
    summary = report["summary"]
    assert summary["images"] == 3 and len(summary["per_head_jaccard"]) == 3  # ViT-tiny: 3 heads
    for image in report["images"]:
        assert 0.0 <= min(image["per_head"]) <= image["mean"] <= image["best"] == max(image["per_head"]) <= 1.0
    assert summary["best_head_jaccard"] >= summary["mean_head_jaccard"]
    truth = kept[0][1]
    assert truth.shape == (64, kept[0][0].picture.size[0]) and 0.05 < truth.mean() < 0.95  # a horse, not all or nothing
