"""Patch-feature pictures: the first component's foreground against the Weizmann horse masks,
one joint fit for a set, and ``dino features`` on images, folders and frame folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dinossl.cli import main
from dinossl.eval.attention.feature_pca import fit_pca, patch_features, upsample_grid
from dinossl.eval.attention.masks import jaccard, mask_on_input, open_mask, pair_images_with_masks
from dinossl.eval.image_input import read_rgb
from dinossl.inference import LoadedBackbone
from dinossl.models import build_vit
from dinossl.weights import write_backbone

SHORT_SIDE = 112


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_vit("vit_tiny", patch_size=8, depth=2).eval()


def test_first_component_finds_the_horses_above_chance(horses_dir):
    """Random-init ViT-tiny/8 (2 blocks), 30 horses fitted jointly at 112 px: mean Jaccard 0.36
    against 0.20 for a random mask of the same size per image and 0.27 for the whole picture
    (measured on the fixture horses)."""
    pairs = pair_images_with_masks(horses_dir / "images", horses_dir / "masks")[:30]
    loaded = LoadedBackbone(_vit(), torch.device("cpu"))
    features = [patch_features(loaded, read_rgb(image), SHORT_SIDE) for image, _ in pairs]
    fit = fit_pca(features)
    found, chance, whole = [], [], []
    for (_, mask), f, foreground in zip(pairs, features, fit.foreground):
        truth, _ = mask_on_input(open_mask(mask), f.geometry, 127, str(mask))
        predicted = upsample_grid(foreground, 8)
        assert predicted.shape == truth.shape
        found.append(jaccard(predicted, truth))
        q, t = predicted.mean(), truth.mean()
        chance.append(q * t / (q + t - q * t))  # expected Jaccard of a random mask of share q
        whole.append(t)
    print(f"mean Jaccard {np.mean(found):.3f}, random mask {np.mean(chance):.3f}, whole picture {np.mean(whole):.3f}")
    assert np.mean(found) > np.mean(chance) + 0.1
    assert np.mean(found) > np.mean(whole) + 0.05


def test_a_joint_fit_colours_the_same_picture_the_same(horses_dir):
    loaded = LoadedBackbone(_vit(), torch.device("cpu"))
    images = sorted((horses_dir / "images").glob("*.jpg"))[:3]
    features = [patch_features(loaded, read_rgb(path), 64) for path in [*images, images[0]]]
    fit = fit_pca(features)
    assert np.array_equal(fit.colours[0], fit.colours[3]) and np.array_equal(fit.foreground[0], fit.foreground[3])
    assert not np.array_equal(fit.colours[0], fit.colours[1])
    assert all(c.min() >= 0 and c.max() <= 1 for c in fit.colours)
    assert all((c[~m] == 0).all() for c, m in zip(fit.colours, fit.foreground))  # background is black


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "vit.pth"
    write_backbone(_vit().state_dict(), path)
    return path


def test_features_command_writes_pictures_at_each_aspect_ratio(vit_weights, horses_dir, tmp_path):
    folder = tmp_path / "horses"
    folder.mkdir()
    for path in sorted((horses_dir / "images").glob("*.jpg"))[:3]:
        shutil.copy(path, folder / path.name)
    out = tmp_path / "out"
    assert main(["features", str(vit_weights), str(folder), "--output", str(out), "--short-side", "64",
                 "--no-progress", "--device", "cpu"]) == 0
    summary = json.loads((out / "pca.json").read_text())
    assert summary["pictures"] == 3
    for path in sorted(folder.iterdir()):
        width, height = Image.open(path).size
        picture = Image.open(out / f"{path.stem}.png")
        expected = (64, round(height * 64 / width)) if width <= height else (round(width * 64 / height), 64)
        assert picture.size == (expected[0] - expected[0] % 8, expected[1] - expected[1] % 8)
        assert Image.open(out / f"{path.stem}-foreground.png").size == picture.size


def test_features_of_a_frame_folder_make_a_video(vit_weights, davis_dir, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for path in sorted((davis_dir / "JPEGImages" / "480p" / "car-shadow").glob("*.jpg"))[:4]:
        shutil.copy(path, frames / path.name)
    out = tmp_path / "out"
    assert main(["features", str(vit_weights), str(frames), "--video", "--output", str(out), "--short-side", "48",
                 "--no-progress", "--device", "cpu"]) == 0
    with Image.open(out / "pca.gif") as video:
        assert video.n_frames == 4
    assert len(list((out / "frames").glob("*-foreground.png"))) == 4


def test_a_resnet_is_one_error_line(tmp_path, capsys, horses_dir):
    from dinossl.models import build_resnet50

    write_backbone(build_resnet50().state_dict(), tmp_path / "r50.pth")
    image = sorted((horses_dir / "images").glob("*.jpg"))[0]
    status = main(["features", str(tmp_path / "r50.pth"), str(image), "--output", str(tmp_path / "out"),
                   "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "ViT" in err[0]
