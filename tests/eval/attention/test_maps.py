"""Attention maps, mass masks, image input policy, frame folders and overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dinossl.errors import CheckpointError, ConfigError, DataError, DinoError
from dinossl.eval.attention.maps import cls_attention, mass_mask, upsample
from dinossl.inference import require_vit
from dinossl.eval.attention.report import attend, attention_video, save_image_attention
from dinossl.eval.frames import common_size, list_frames, read_video, write_video
from dinossl.eval.image_input import as_rgb, plan_geometry, read_rgb, to_input
from dinossl.eval.attention.overlay import heatmap_overlay, mask_overlay
from dinossl.models import build_vit


# ---- mass masks ---------------------------------------------------------------------------

def test_mass_mask_keeps_exactly_the_known_60_percent_set():
    # 0.3 + 0.2 + 0.1 = 0.6 exactly: those three patches and nothing else, despite float32 rounding.
    attention = torch.full((4, 4), 0.4 / 13)
    attention[1, 2], attention[3, 0], attention[0, 0] = 0.3, 0.2, 0.1
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 2] = expected[3, 0] = expected[0, 0] = True
    assert torch.equal(mass_mask(attention, 0.6), expected)
    # The same map scaled (maps need not sum to 1): same set.
    assert torch.equal(mass_mask(attention * 0.37, 0.6), expected)
    # Just above 0.6 needs one more patch.
    assert mass_mask(attention, 0.61).sum() == 4


def test_mass_mask_is_the_smallest_set_holding_the_fraction():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 3, 5, 7, generator=generator) ** 3
    masks = mass_mask(maps, 0.6)
    for attention, mask in zip(maps.reshape(-1, 35), masks.reshape(-1, 35)):
        share = attention / attention.sum()
        kept = share[mask]
        assert kept.sum() >= 0.6 - 1e-6  # holds the fraction
        assert kept.sum() - kept.min() < 0.6  # minimal: dropping its weakest patch loses it
        assert kept.min() >= share[~mask].max()  # the strongest patches


def test_mass_mask_ties_zeros_and_bad_input():
    assert mass_mask(torch.ones(2, 5), 0.6).sum() == 6  # 10 equal patches -> 6 of them
    assert not mass_mask(torch.zeros(3, 3)).any()
    one_hot = torch.zeros(3, 3)
    one_hot[2, 1] = 1.0
    assert mass_mask(one_hot, 1.0).sum() == 1  # zero-attention patches are never needed
    with pytest.raises(ConfigError):
        mass_mask(one_hot, 0.0)
    with pytest.raises(ValueError):
        mass_mask(-one_hot)


def test_upsample_nearest_repeats_patches():
    mask = torch.tensor([[True, False], [False, False]])
    big = upsample(mask, 4)
    assert big.dtype == torch.bool and big.shape == (8, 8)
    assert big[:4, :4].all() and big.sum() == 16


# ---- [CLS] attention ------------------------------------------------------------------------

def test_cls_attention_reads_the_cls_row_in_row_major_order(brightness_backbone):
    backbone = brightness_backbone(heads=3)
    image = torch.full((1, 3, 24, 40), -1.0)  # 3 x 5 patches, one bright patch at row 2, col 4
    image[:, :, 16:24, 32:40] = 1.0
    maps = cls_attention(backbone, image)
    assert maps.shape == (1, 3, 3, 5)
    assert torch.all(maps[0, :, 2, 4] == 1.0) and maps.sum() == 3.0


def test_cls_attention_of_a_real_vit_at_any_patch_multiple_size():
    torch.manual_seed(0)
    vit = build_vit("vit_tiny", patch_size=8, depth=2).eval()
    images = torch.randn(1, 3, 40, 64)
    maps = cls_attention(vit, images)
    assert maps.shape == (1, 3, 5, 8)
    full = vit.last_selfattention(images)
    torch.testing.assert_close(maps.flatten(2), full[:, :, 0, 1:])
    assert torch.all(maps > 0) and torch.all(maps.sum(dim=(2, 3)) < 1)
    with pytest.raises(ValueError, match="multiple"):
        cls_attention(vit, torch.randn(1, 3, 40, 60))


def test_resnet_backbone_is_refused():
    from dinossl.models.resnet import ResNetBackbone

    resnet = ResNetBackbone.__new__(ResNetBackbone)  # no weights needed to check the type
    with pytest.raises(CheckpointError, match="ViT"):
        require_vit(resnet)


def test_attend_and_save(tmp_path, brightness_backbone):
    backbone = brightness_backbone(heads=2)
    pixels = np.zeros((30, 45, 3), np.uint8)
    pixels[8:16, 16:24] = 255
    result = attend(backbone, Image.fromarray(pixels), short_side=None)
    assert result.picture.size == (40, 24)  # cropped to multiples of 8
    assert result.maps.shape == (2, 3, 5) and result.masks.shape == (3, 3, 5)
    assert result.masks[:, 1, 2].all() and result.masks.sum() == 3
    written = save_image_attention(result, tmp_path / "out")
    names = {p.name for p in written}
    assert {"attn-head0.png", "attn-head1.png", "attn-mean.png", "mask-head1.png", "mask-mean.png"} <= names
    assert Image.open(tmp_path / "out" / "attn-mean.png").size == (40, 24)
    assert np.load(tmp_path / "out" / "attention.npy").shape == (2, 3, 5)


def test_attention_video_gif(tmp_path, brightness_backbone):
    frames = []
    for step in range(3):
        pixels = np.zeros((16, 32, 3), np.uint8)
        pixels[:8, 8 * step:8 * step + 8] = 255
        frames.append(Image.fromarray(pixels))
    path = attention_video(brightness_backbone(), frames, tmp_path, short_side=None, progress=False)
    assert path.name == "attention.gif" and len(read_video(path)) == 3
    assert len(list((tmp_path / "frames").glob("*.png"))) == 3


# ---- image input policy ---------------------------------------------------------------------

def test_plan_geometry():
    crop = plan_geometry((500, 375), 16, 480)
    assert crop.resized == (640, 480) and crop.cropped == (640, 480)
    crop = plan_geometry((854, 480), 16, 480)
    assert crop.cropped == (848, 480) and crop.grid(16) == (30, 53)
    resize = plan_geometry((854, 480), 16, 480, fit="resize")
    assert resize.resized == resize.cropped == (848, 480)
    assert plan_geometry((30, 45), 8, None).cropped == (24, 40)


def test_image_smaller_than_a_patch_is_refused():
    with pytest.raises(DataError, match="smaller than one 16x16 patch"):
        plan_geometry((12, 300), 16, 480)


def test_grayscale_and_rgba_are_converted_with_a_warning(tmp_path, dinossl_log):
    caplog = dinossl_log
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(gray)
    rgb = read_rgb(gray)
    assert rgb.mode == "RGB" and np.all(np.asarray(rgb) == 77)
    assert "grayscale" in caplog.text
    caplog.clear()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, ..., 3] = 255  # top half opaque red, bottom half fully transparent
    rgb = np.asarray(as_rgb(Image.fromarray(rgba, "RGBA"), "rgba.png"))
    assert "transparent" in caplog.text
    assert tuple(rgb[0, 0]) == (200, 0, 0) and tuple(rgb[3, 3]) == (255, 255, 255)


def test_floating_point_images_are_refused_and_16_bit_scaled(dinossl_log):
    with pytest.raises(DataError, match="not supported"):
        as_rgb(Image.fromarray(np.zeros((8, 8), np.float32), "F"), "deep.tif")
    sixteen = as_rgb(Image.fromarray(np.full((8, 8), 65535, np.int32), "I"), "deep.png")
    assert np.all(np.asarray(sixteen) == 255) and "16-bit" in dinossl_log.text


def test_to_input_normalises():
    x = to_input(Image.new("RGB", (16, 8), (124, 116, 104)))
    assert x.shape == (1, 3, 8, 16) and x.abs().max() < 0.01


# ---- frame folders and videos ---------------------------------------------------------------

def _frames(folder, names, sizes=None):
    folder.mkdir()
    for index, name in enumerate(names):
        size = sizes[index] if sizes else (16, 16)
        Image.new("RGB", size).save(folder / name)
    return folder


def test_frame_folder_order_gaps_and_sizes(tmp_path):
    ok = _frames(tmp_path / "ok", ["f10.png", "f9.png", "f11.png"])
    assert [p.name for p in list_frames(ok)] == ["f9.png", "f10.png", "f11.png"]
    with pytest.raises(DataError, match="gap: frame number\\(s\\) 2-3 missing before 00004.png"):
        list_frames(_frames(tmp_path / "gap", ["00000.png", "00001.png", "00004.png"]))
    with pytest.raises(DataError, match="no frame number"):
        list_frames(_frames(tmp_path / "named", ["a.png", "b.png"]))
    mixed = _frames(tmp_path / "mixed", ["0.png", "1.png"], sizes=[(16, 16), (16, 24)])
    with pytest.raises(DataError, match="differ in size"):
        common_size(list_frames(mixed))


def test_write_video_refuses_unknown_formats(tmp_path):
    with pytest.raises(DataError, match=".gif or .mp4"):
        write_video([Image.new("RGB", (8, 8))], tmp_path / "x.avi")


# ---- overlays -------------------------------------------------------------------------------

def test_overlays():
    picture = Image.new("RGB", (8, 4), (0, 0, 0))
    heat = torch.zeros(4, 8)
    heat[0, 0] = 1.0
    out = np.asarray(heatmap_overlay(picture, heat, alpha=1.0))
    assert out[0, 0].sum() > out[3, 7].sum()
    mask = np.zeros((4, 8), bool)
    mask[1:3, 2:6] = True
    tinted = np.asarray(mask_overlay(picture, mask))
    assert tinted[~mask].sum() == 0 and np.all(tinted[mask].sum(axis=1) > 0)
    with pytest.raises(ValueError):
        mask_overlay(picture, mask.T)


def test_mp4_round_trip_with_pyav(tmp_path):
    pytest.importorskip("av", reason="MP4 needs the optional PyAV package")
    frames = [Image.fromarray(np.full((33, 47, 3), 40 * i, np.uint8)) for i in range(4)]
    path = write_video(frames, tmp_path / "clip.mp4", fps=5)
    back = read_video(path)
    assert len(back) == 4 and back[0].size == (46, 32)  # H.264 needs even sides
    assert abs(int(np.asarray(back[3]).mean()) - 120) < 4


def test_mp4_without_pyav_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # import av now fails
    with pytest.raises(DinoError, match=r"pip install .dinossl\[video\]."):
        write_video([Image.new("RGB", (8, 8))], tmp_path / "clip.mp4")
    with pytest.raises(DinoError, match=r"pip install .dinossl\[video\]."):
        read_video(tmp_path / "clip.mp4")
