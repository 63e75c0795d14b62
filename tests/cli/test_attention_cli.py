"""``dino attention``, ``dino eval masks`` and ``dino eval video`` end to end on a tiny checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from dinossl.cli import main


@pytest.fixture(scope="module")
def weights(tiny_run):
    return str(tiny_run / "teacher_backbone.pth")


def _image(path, size=(72, 56), mode="RGB", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def test_attention_on_one_image(tmp_path, weights, capsys):
    image = _image(tmp_path / "photo.png")
    out = tmp_path / "out"
    assert main(["attention", weights, str(image), "--output", str(out), "--short-side", "64"]) == 0
    assert (out / "attn-head2.png").is_file() and (out / "mask-mean.png").is_file()
    assert Image.open(out / "attn-mean.png").size == (80, 64)  # 82 x 64 cropped to multiples of 8
    assert json.loads((out / "attention.json").read_text())["grid"] == [8, 10]
    assert "wrote" in capsys.readouterr().out
    # The folder now holds results: refused without --force, accepted with it.
    assert main(["attention", weights, str(image), "--output", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["attention", weights, str(image), "--output", str(out), "--short-side", "64",
                 "--overwrite", "--fraction", "0.3"]) == 0
    assert json.loads((out / "attention.json").read_text())["mass_fraction"] == 0.3


def test_attention_on_a_folder_with_grayscale_and_rgba(tmp_path, weights):
    folder = tmp_path / "images"
    folder.mkdir()
    _image(folder / "a.png")
    _image(folder / "b.png", mode="L")
    _image(folder / "c.png", mode="RGBA")
    out = tmp_path / "out"
    assert main(["attention", weights, str(folder), "--output", str(out), "--native-size",
                 "--no-progress"]) == 0
    for name in "abc":
        assert Image.open(out / name / "attn-head0.png").size == (72, 56)


def test_attention_video_from_frames(tmp_path, weights):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        _image(frames / f"{index:05d}.jpg", seed=index)
    out = tmp_path / "out"
    assert main(["attention", weights, str(frames), "--video", "--output", str(out),
                 "--short-side", "64", "--head", "1", "--no-progress"]) == 0
    with Image.open(out / "attention.gif") as gif:
        assert gif.n_frames == 3
    assert len(list((out / "frames").glob("*.png"))) == 3


def test_attention_bad_input(tmp_path, weights, capsys):
    tiny = _image(tmp_path / "tiny.png", size=(5, 40))
    assert main(["attention", weights, str(tiny), "--output", str(tmp_path / "o1")]) == 2
    assert "smaller than one 8x8 patch" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists()  # refused before writing anything
    frames = tmp_path / "frames"
    frames.mkdir()
    _image(frames / "0.png")
    _image(frames / "1.png", size=(64, 64))
    assert main(["attention", weights, str(frames), "--video", "--output", str(tmp_path / "o2")]) == 2
    assert "differ in size" in capsys.readouterr().err
    assert main(["attention", weights, str(tiny), "--output", str(tmp_path / "o3"),
                 "--fraction", "1.5"]) == 2
    assert "fraction" in capsys.readouterr().err


def test_resnet_checkpoint_is_refused(tmp_path, capsys):
    import torch

    from dinossl.models import build_resnet50

    path = tmp_path / "resnet.pth"
    torch.save(build_resnet50().state_dict(), path)
    image = _image(tmp_path / "photo.png")
    assert main(["attention", str(path), str(image), "--output", str(tmp_path / "out")]) == 2
    assert "ViT checkpoint" in capsys.readouterr().err


def _reference_mass_mask(attention: np.ndarray, fraction: float = 0.6) -> np.ndarray:
    """(h, w) -> (h, w) bool: the reference's rule, the patches that hold ``fraction`` of the mass
    (sorted ascending, kept where the cumulative share exceeds 1 - fraction)."""
    flat = attention.ravel().astype(np.float64)
    order = np.argsort(flat, kind="stable")
    share = np.cumsum(flat[order]) / flat.sum()
    keep = np.zeros(flat.size, dtype=bool)
    keep[order] = share > 1 - fraction
    return keep.reshape(attention.shape)


def test_eval_masks_on_horses_scores_the_jaccard_of_each_heads_mass_mask(tmp_path, weights, horses_dir, capsys):
    """``dino eval masks`` against a direct computation: each head's 60 %-mass mask of the maps
    ``dino attention`` writes, nearest-upsampled, against the thresholded horse mask on the same
    input: Jaccard = |A and B| / |A or B|, within the bound its areas allow. Measured with the
    tiny one-epoch checkpoint (2-core x86 CPU): mean-head Jaccard 0.128, best head 0.201."""
    from dinossl.eval.image_input import plan_geometry

    names = [f"horse{i:03d}.jpg" for i in (1, 2, 3, 4)]
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in names:
        shutil.copy(horses_dir / "images" / name, images / name)
        shutil.copy(horses_dir / "masks" / name, masks / name)
    out = tmp_path / "out"
    assert main(["eval", "masks", weights, "--images", str(images), "--masks", str(masks),
                 "--output", str(out), "--short-side", "64", "--no-progress"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["summary"]["images"] == 4 and report["settings"]["weights"] == weights
    assert (out / "jaccard.png").is_file()
    assert "best head" in capsys.readouterr().out
    for name, scored in zip(names, report["images"]):
        maps_folder = tmp_path / "maps" / name
        assert main(["attention", weights, str(images / name), "--output", str(maps_folder), "--short-side", "64",
                     "--no-progress"]) == 0
        maps = np.load(maps_folder / "attention.npy")  # (heads, h, w)
        with Image.open(images / name) as image:
            geometry = plan_geometry(image.size, 8, 64)
        with Image.open(masks / name) as mask:
            truth = np.asarray(mask.convert("L").resize(geometry.resized, Image.BILINEAR)) > 127  # JPEG masks
        truth = truth[:geometry.cropped[1], :geometry.cropped[0]]
        expected = []
        for head in maps:
            mask = np.kron(_reference_mass_mask(head), np.ones((8, 8))).astype(bool)
            assert mask.shape == truth.shape
            expected.append((mask & truth).sum() / (mask | truth).sum())
            area, true_area = mask.sum(), truth.sum()
            assert expected[-1] <= min(area, true_area) / max(area, true_area)  # equal areas at best
        assert scored["name"] == name
        np.testing.assert_allclose(scored["per_head"], expected, rtol=0, atol=1e-9)
        assert scored["best"] == max(scored["per_head"]) and scored["mean"] == pytest.approx(np.mean(expected))
    assert report["summary"]["best_head_jaccard"] == pytest.approx(np.mean([i["best"] for i in report["images"]]))


def test_eval_masks_refuses_a_misshaped_mask(tmp_path, weights, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    _image(images / "x.png", size=(64, 64))
    Image.new("L", (64, 32)).save(masks / "x.png")
    assert main(["eval", "masks", weights, "--images", str(images), "--masks", str(masks),
                 "--output", str(tmp_path / "out")]) == 2
    assert "aspect ratios differ" in capsys.readouterr().err


def test_eval_video_on_davis(tmp_path, weights, davis_dir, capsys):
    out = tmp_path / "out"
    assert main(["eval", "video", weights, "--davis", str(davis_dir), "--sequences", "car-shadow",
                 "--output", str(out), "--short-side", "64", "--max-frames", "3", "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "car-shadow").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    report = json.loads((out / "results.json").read_text())
    assert set(report["overall"]) == {"J", "F", "J&F"} and report["settings"]["topk"] == 5
    assert "car-shadow" in capsys.readouterr().out
    assert main(["eval", "video", weights, "--davis", str(davis_dir), "--sequences", "nope",
                 "--output", str(tmp_path / "out2")]) == 2
    assert "'nope'" in capsys.readouterr().err


def test_a_missing_input_is_refused_before_any_download(tmp_path, capsys, monkeypatch):
    import urllib.request

    def no_download(*args, **kwargs):
        raise AssertionError("weights were fetched before the input was checked")

    monkeypatch.setattr(urllib.request, "urlopen", no_download)
    monkeypatch.chdir(tmp_path)
    assert main(["attention", "dino_vits16", str(tmp_path / "nonexistent.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and not list(tmp_path.iterdir())
