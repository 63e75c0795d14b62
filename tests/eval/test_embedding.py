"""``dino embed``: the descriptors the k-NN evaluation computes, a resumed run identical to an
uninterrupted one, unreadable files listed, the folder's readers, and processes under torchrun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from dinossl.cli import main
from dinossl.data.augment import evaluation_transform
from dinossl.data.images import ImageFolder
from dinossl.eval.embedding import EmbedSettings, embed
from dinossl.eval.features import extract_features
from dinossl.inference.feature_shards import ShardWriter, load_features
from dinossl.models import build_vit
from dinossl.weights import load_backbone, write_backbone
from tests.process_ranks import start_ranks, wait_all

SMALL = ["--resize", "40", "--crop", "32", "--device", "cpu", "--no-progress", "--num-workers", "0"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vit.pth"
    write_backbone(build_vit("vit_tiny", patch_size=8, img_size=32, depth=2).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory, cifar10_fixture):
    """3 classes x 6 CIFAR-10 images in class folders."""
    root = tmp_path_factory.mktemp("images") / "data"
    for name in ("airplane", "cat", "ship"):
        (root / name).mkdir(parents=True)
        for path in sorted((cifar10_fixture / "train" / name).glob("*.jpg"))[:6]:
            shutil.copy(path, root / name / path.name)
    return root


def _embed(weights, data, out, *extra):
    return main(["embed", str(weights), "--data", str(data), "--output", str(out), *SMALL, *extra])


def test_cls_descriptors_equal_the_knn_features(weights, images, tmp_path):
    assert _embed(weights, images, tmp_path / "out", "--images-per-shard", "7") == 0
    folder = load_features(tmp_path / "out")
    source = ImageFolder(images)
    expected, _ = extract_features(load_backbone(weights), source, evaluation_transform(40, 32), batch_size=5)
    expected = torch.nn.functional.normalize(expected, dim=1)
    assert folder.paths == [p.relative_to(images).as_posix() for p in source.files]
    assert isinstance(folder.descriptors, np.memmap) and folder.descriptors.shape == (18, 192)
    cosine = (torch.from_numpy(np.array(folder.descriptors)) * expected).sum(dim=1)
    assert cosine.min() >= 0.9999
    manifest = folder.manifest
    assert manifest["count"] == 18 and manifest["dimension"] == 192 and manifest["shards"] == 3
    assert manifest["weights"]["sha256"] and manifest["architecture"]["embed_dim"] == 192
    labels, classes = folder.labels_by_folder()
    assert classes == source.classes and np.array_equal(labels, source.labels)


def test_the_python_api_returns_the_same_arrays(weights, images, tmp_path):
    assert _embed(weights, images, tmp_path / "out") == 0
    result = embed(weights, images, EmbedSettings(resize=40, crop=32), device="cpu", batch_size=4)
    assert result.paths == load_features(tmp_path / "out").paths
    assert np.array_equal(result.descriptors, np.array(load_features(tmp_path / "out").descriptors))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(weights, images, tmp_path, monkeypatch):
    extra = ("--images-per-shard", "5", "--patch-tokens", "2", "--dtype", "float16")
    assert _embed(weights, images, tmp_path / "whole", *extra) == 0
    written = []
    original = ShardWriter.write

    def interrupted(self, shard, rows):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(shard)
        original(self, shard, rows)

    monkeypatch.setattr(ShardWriter, "write", interrupted)
    assert _embed(weights, images, tmp_path / "resumed", *extra) == 130
    assert written == [0, 1] and not (tmp_path / "resumed" / "manifest.json").exists()
    monkeypatch.setattr(ShardWriter, "write", original)
    calls = []
    monkeypatch.setattr(ShardWriter, "write", lambda self, shard, rows: (calls.append(shard), original(self, shard, rows)))
    assert _embed(weights, images, tmp_path / "resumed", *extra) == 0
    assert calls == [2, 3]  # continued at the first unfinished shard
    assert _files(tmp_path / "whole") == _files(tmp_path / "resumed")
    shard = load_file(str(tmp_path / "whole" / "features-00000.safetensors"))
    assert shard["descriptors"].dtype == np.float16 and shard["patch_tokens"].shape == (5, 4, 192)


def test_unreadable_files_are_skipped_and_listed(weights, images, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(images / "cat", data)
    good = sorted(data.iterdir())[0].read_bytes()
    (data / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (data / "notes.jpg").write_text("not an image")
    capsys.readouterr()
    assert _embed(weights, data, tmp_path / "out", "--format", "npy") == 0
    assert "2 unreadable skipped" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["count"] == 6 and manifest["skipped_count"] == 2
    assert sorted(entry["path"] for entry in manifest["skipped"]) == ["notes.jpg", "truncated.jpg"]
    assert all(entry["reason"] for entry in manifest["skipped"])
    assert np.load(tmp_path / "out" / "descriptors-00000.npy").shape == (6, 192)


def test_patch_tokens_full_grid_at_the_images_aspect_ratio(weights, tmp_path, horses_dir):
    paths = sorted((horses_dir / "images").glob("*.jpg"))[:2]
    result = embed(weights, paths, EmbedSettings(crop=32, keep_aspect=True, patch_tokens="full", pool="cls+avg"),
                   device="cpu")
    assert result.descriptors.shape == (2, 384)
    grids = result.patch_grids
    assert result.patch_tokens.shape == (int((grids[:, 0] * grids[:, 1]).sum()), 192)
    for path, (rows, cols) in zip(paths, grids):
        from PIL import Image

        width, height = Image.open(path).size
        assert min(rows, cols) == 4 and max(rows, cols) == (round(max(width, height) * 32 / min(width, height))) // 8


def test_multiscale_is_the_retrieval_recipe(weights, images):
    from dinossl.eval.retrieval.descriptors import MULTISCALE, DescriptorSpec, describe_batch

    settings = EmbedSettings(resize=40, crop=32, multiscale=True)
    result = embed(weights, images, settings, device="cpu")
    backbone = load_backbone(weights)
    first = evaluation_transform(40, 32)(ImageFolder(images).load(0)[0])[None]
    expected = torch.nn.functional.normalize(describe_batch(backbone, first, DescriptorSpec("cls", MULTISCALE)), dim=1)
    assert torch.allclose(torch.from_numpy(result.descriptors[:1]), expected, atol=1e-6)


def test_a_folder_of_other_features_is_refused(weights, images, tmp_path, capsys):
    assert _embed(weights, images, tmp_path / "out") == 0
    capsys.readouterr()
    assert _embed(weights, images, tmp_path / "out", "--pool", "avg") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other weights, data or settings" in err[0]


WORKER = """
import sys
from dinossl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_processes_under_torchrun_write_disjoint_shards_and_one_index(weights, images, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    argv = ["embed", str(weights), "--data", str(images), "--output", str(tmp_path / "two"), *SMALL,
            "--images-per-shard", "4"]
    results = wait_all(start_ranks(worker, argv, 2), timeout=240, what="dino embed on 2 ranks")
    assert all(status == 0 for status, _ in results), results
    assert _embed(weights, images, tmp_path / "one", "--images-per-shard", "4") == 0
    one, two = load_features(tmp_path / "one"), load_features(tmp_path / "two")
    assert one.paths == two.paths and two.manifest["processes"] == 2
    assert np.allclose(np.array(one.descriptors), np.array(two.descriptors), atol=1e-6)


@pytest.fixture(scope="module")
def splits(tmp_path_factory, cifar10_fixture):
    """train/ (4 classes x 8) and val/ (4 classes x 4) CIFAR-10 images."""
    root = tmp_path_factory.mktemp("splits")
    for split, source, count in (("train", "train", 8), ("val", "test", 4)):
        for name in ("airplane", "cat", "frog", "ship"):
            (root / split / name).mkdir(parents=True)
            for path in sorted((cifar10_fixture / source / name).glob("*.jpg"))[:count]:
                shutil.copy(path, root / split / name / path.name)
    return root


def test_knn_on_embed_folders_equals_knn_on_images(weights, splits, tmp_path):
    common = ["--resize", "40", "--crop", "32", "--device", "cpu", "--num-workers", "0", "--k", "1", "3", "10"]
    assert main(["eval", "knn", str(weights), "--data", str(splits), "--output", str(tmp_path / "direct"),
                 *common]) == 0
    for split in ("train", "val"):
        assert _embed(weights, splits / split, tmp_path / f"embed-{split}", "--images-per-shard", "10") == 0
    assert main(["eval", "knn", str(weights), "--embedded", str(tmp_path / "embed-train"), str(tmp_path / "embed-val"),
                 "--output", str(tmp_path / "embedded"), *common]) == 0
    direct = json.loads((tmp_path / "direct" / "results.json").read_text())["results"]
    embedded = json.loads((tmp_path / "embedded" / "results.json").read_text())["results"]
    assert embedded == direct
    assert len({round(v["top1"], 6) for v in direct["knn"].values()}) > 1  # the ks differ: not a constant


def test_knn_refuses_embed_folders_of_other_settings(weights, splits, tmp_path, capsys):
    for split in ("train", "val"):
        assert _embed(weights, splits / split, tmp_path / split, "--pool", "avg") == 0
    capsys.readouterr()
    status = main(["eval", "knn", str(weights), "--embedded", str(tmp_path / "train"), str(tmp_path / "val"),
                   "--resize", "40", "--crop", "32", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "'pool': 'avg'" in err[0]
    assert not (tmp_path / "out").exists()


def test_dedupe_on_an_embed_folder_equals_dedupe_on_images(weights, images, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(images / "cat", data)
    first = sorted(data.iterdir())[0]
    shutil.copy(first, data / "copy.jpg")
    from PIL import Image

    Image.open(first).resize((40, 40)).save(data / "larger.png")
    common = ["--device", "cpu", "--num-workers", "0", "--no-progress", "--descriptor", "cls", "--imsize", "32",
              "--threshold", "0.995"]
    assert main(["dedupe", str(weights), str(data), "--output", str(tmp_path / "direct"), *common]) == 0
    assert _embed(weights, data, tmp_path / "embed", "--square", "--crop", "32") == 0
    assert main(["dedupe", str(weights), str(data), "--embedded", str(tmp_path / "embed"),
                 "--output", str(tmp_path / "embedded"), *common]) == 0
    pairs = [[line.split(",") for line in (tmp_path / name / "pairs.csv").read_text().splitlines()[1:]]
             for name in ("direct", "embedded")]
    # the same pairs; similarities equal to float rounding (batches of other sizes: 0.999904 vs 0.999905)
    assert [p[:2] for p in pairs[0]] == [p[:2] for p in pairs[1]]
    assert all(abs(float(a[2]) - float(b[2])) < 1e-5 for a, b in zip(*pairs))
    assert any("copy.jpg" in p for p in pairs[0]) and 0 < len(pairs[0]) < 28  # some pairs of the 8 images, not all
    groups = [json.loads((tmp_path / name / "groups.json").read_text())["groups"] for name in ("direct", "embedded")]
    assert [g["images"] for g in groups[0]] == [g["images"] for g in groups[1]]
