"""Feature extraction: feature specs, order, unreadable images, the on-disk cache, and two
gloo processes gathering exactly the single-process features in dataset order."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinossl.data.augment import evaluation_transform
from dinossl.data.images import ArrayImages, UnreadableImage
from dinossl.errors import DataError, DinoError
from dinossl.eval.baselines import RawPixels, random_init_like
from dinossl.eval.feature_cache import FeatureCache, load_features
from dinossl.eval.features import FeatureSpec, extract_features, feature_dim, gather_rows, shard_indices
from dinossl.models import build_vit

TRANSFORM = evaluation_transform(resize=32, crop=32)




class FlakyImages(ArrayImages):
    """Random 32x32 images; the listed indices cannot be decoded."""

    def __init__(self, count: int, bad: tuple[int, ...] = (), seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        super().__init__(rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
                         np.arange(count) % 3, ["a", "b", "c"])
        self.bad = set(bad)

    def load(self, index: int):
        if index in self.bad:
            raise UnreadableImage(f"image {index}")
        return super().load(index)


def tiny_vit(seed: int = 0):
    torch.manual_seed(seed)
    return build_vit("vit_tiny", patch_size=8, img_size=32, depth=3).eval()


def test_feature_specs_pick_the_documented_tokens():
    vit = tiny_vit()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        layers = vit.intermediate_layers(images, 2)
        torch.testing.assert_close(FeatureSpec()(vit, images), vit(images))
        torch.testing.assert_close(FeatureSpec(2)(vit, images), torch.cat([layers[0][:, 0], layers[1][:, 0]], 1))
        pooled = FeatureSpec(1, avgpool=True)(vit, images)
        torch.testing.assert_close(pooled, torch.cat([layers[1][:, 0], layers[1][:, 1:].mean(1)], 1))
    assert feature_dim(vit, FeatureSpec(3, avgpool=True), 32) == 4 * 192
    with pytest.raises(DinoError, match="3 blocks"):
        FeatureSpec(4).check(vit)
    with pytest.raises(DinoError, match="no transformer blocks"):
        FeatureSpec(1, avgpool=True).check(RawPixels())


def test_extraction_keeps_source_order_and_skips_unreadable_images():
    vit, source = tiny_vit(), FlakyImages(7, bad=(2, 5))
    features, labels = extract_features(vit, source, TRANSFORM, batch_size=3)
    readable = [i for i in range(7) if i not in source.bad]
    with torch.no_grad():
        expected = vit(torch.stack([TRANSFORM(source.load(i)[0]) for i in readable]))
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    assert labels.tolist() == [i % 3 for i in readable]
    other, _ = extract_features(vit, source, TRANSFORM, batch_size=1)
    torch.testing.assert_close(other, features, rtol=1e-4, atol=1e-5)
    with pytest.raises(DinoError, match="no readable images"):
        extract_features(vit, FlakyImages(2, bad=(0, 1)), TRANSFORM)


def test_random_init_is_a_fresh_network_of_the_same_shape():
    trained = tiny_vit(seed=3)
    with torch.no_grad():
        trained.norm.weight.fill_(2.0)  # not touched by timm's init_weights: must still be rebuilt
    fresh = random_init_like(trained, seed=0)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in trained.state_dict().items()}
    assert not torch.equal(fresh.blocks[0].attn.qkv.weight, trained.blocks[0].attn.qkv.weight)
    assert torch.equal(fresh.norm.weight, torch.ones(192))
    torch.testing.assert_close(random_init_like(trained, seed=0).state_dict(), fresh.state_dict())
    with pytest.raises(TypeError):
        random_init_like(RawPixels())


def test_feature_cache_reuses_entries_and_separates_settings(tmp_path):
    cache = FeatureCache(tmp_path / "cache", {"weights": "w.pth"})
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 0])

    first = cache.get_or_compute("train", {"crop": 32}, compute)
    again = cache.get_or_compute("train", {"crop": 32}, compute)
    assert len(calls) == 1
    torch.testing.assert_close(again[0], first[0])
    assert again[1].tolist() == [0, 1, 0]
    cache.get_or_compute("train", {"crop": 64}, compute)
    assert len(calls) == 2 and len(list((tmp_path / "cache").iterdir())) == 2
    path = cache.path("train", {"backbone": {"weights": "w.pth"}, "crop": 32})
    assert load_features(path)[2] == {"backbone": {"weights": "w.pth"}, "crop": 32}
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError):
        cache.get_or_compute("train", {"crop": 32}, compute)


def test_shards_are_contiguous_and_cover_everything():
    parts = [shard_indices(7, rank, 3).tolist() for rank in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]


def _write_splits(root: Path) -> Path:
    """train/<c> with 5 images and val/<c> with 3 images for 3 classes (random colours)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("val", 3)):
        for cls in ("a", "b", "c"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _worker(rank: int, world_size: int, port: int, out: str, data: str, weights: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from dinossl.eval.classification.knn import KnnSettings
    from dinossl.eval.classification.protocols import EvalTarget, ImageSettings, run_knn
    from dinossl.runtime.distributed import init_distributed, shutdown_distributed

    ctx = init_distributed("cpu", timeout_s=60)
    vit = tiny_vit()
    found = {}
    for name, source, spec in (("odd", FlakyImages(7, bad=(5,)), FeatureSpec()),
                               ("blocks", FlakyImages(7, bad=(5,)), FeatureSpec(2, avgpool=True)),
                               ("one_rank_empty", FlakyImages(3, bad=(2,)), FeatureSpec())):
        found[name] = extract_features(vit, source, TRANSFORM, batch_size=2, spec=spec, ctx=ctx)
    uneven = torch.arange(3 * rank * 2, dtype=torch.float32).reshape(-1, 2)  # rank 0: 0 rows, rank 1: 3 rows
    found["gather"] = gather_rows(uneven, ctx, block_rows=2)
    target = EvalTarget(weights=Path(weights), data=Path(data), device="cpu", output=Path(out) / "knn")
    run_knn(target, ImageSettings(resize=32, crop=32, batch_size=4, num_workers=0), KnnSettings(ks=(1, 3, 20)))
    torch.save(found, Path(out) / f"rank{rank}.pt")
    shutdown_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_gather_the_single_process_features_in_order(tmp_path):
    from dinossl.eval.classification.knn import KnnSettings
    from dinossl.eval.classification.protocols import EvalTarget, ImageSettings, run_knn

    data = _write_splits(tmp_path / "data")
    weights = tmp_path / "backbone.pth"
    torch.save(tiny_vit().state_dict(), weights)
    out = tmp_path / "out"
    out.mkdir()
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(out), str(data), str(weights)), nprocs=2, join=True)

    vit = tiny_vit()
    expected = {
        "odd": extract_features(vit, FlakyImages(7, bad=(5,)), TRANSFORM, batch_size=3),
        "blocks": extract_features(vit, FlakyImages(7, bad=(5,)), TRANSFORM, spec=FeatureSpec(2, avgpool=True)),
        "one_rank_empty": extract_features(vit, FlakyImages(3, bad=(2,)), TRANSFORM),
    }
    for rank in range(2):
        found = torch.load(out / f"rank{rank}.pt")
        for name, (features, labels) in expected.items():
            torch.testing.assert_close(found[name][0], features, rtol=1e-4, atol=1e-5)
            assert found[name][1].tolist() == labels.tolist(), name
        assert found["gather"].tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]

    single = run_knn(EvalTarget(weights=weights, data=data, device="cpu", output=out / "knn_single"),
                     ImageSettings(resize=32, crop=32, batch_size=4, num_workers=0), KnnSettings(ks=(1, 3, 20)))
    distributed = json.loads((out / "knn" / "results.json").read_text())
    assert distributed["processes"] == 2
    assert distributed["results"] == single["results"]
