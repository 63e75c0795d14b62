"""The backbone harness: loading after checks, identity, precision, and the passes over images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinossl.data.augment import evaluation_transform
from dinossl.errors import DinoError
from dinossl.inference import BackboneHarness, ImageFiles, LoadedBackbone
from dinossl.models.vit import build_vit
from dinossl.safe_files import file_sha256
from dinossl.weights import write_backbone

TRANSFORM = evaluation_transform(40, 32)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_vit("vit_tiny", patch_size=16, depth=2)
    return write_backbone(model.state_dict(), tmp_path_factory.mktemp("weights") / "vit.pth")


def _images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (36 + i, 44, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_settings_are_checked_before_anything_is_loaded():
    for bad in ({"which": "both"}, {"precision": "fp8"}, {"batch_size": 0}, {"num_workers": -1}):
        with pytest.raises(DinoError):
            BackboneHarness("missing.pth", **bad)
    with pytest.raises(DinoError):
        BackboneHarness("missing.pth", device="nodevice").resolve_device()


def test_workers_are_capped_at_the_available_cores():
    import os
    cores = len(os.sched_getaffinity(0))
    assert BackboneHarness("w", num_workers=cores + 5).workers == cores
    assert BackboneHarness("w", num_workers=0).workers == 0


def test_load_identity_and_description(weights):
    harness = BackboneHarness(weights, device="cpu")
    loaded = harness.load()
    assert isinstance(loaded, LoadedBackbone) and not loaded.module.training
    assert loaded.device == torch.device("cpu") and loaded.dtype is None and loaded.patch_size == 16
    identity = harness.identity()
    assert identity["path"] == str(weights.resolve()) and identity["bytes"] == weights.stat().st_size
    record = harness.describe(loaded)
    assert record["sha256"] == file_sha256(weights)
    assert record["backbone"]["embed_dim"] == 192 and record["backbone"]["depth"] == 2
    assert BackboneHarness("dino_vits16").identity() == {"source": "dino_vits16", "which": "teacher"}


def test_collect_gives_the_backbone_output_of_every_readable_image_in_order(weights, tmp_path):
    paths = _images(tmp_path, 5)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    paths.insert(2, tmp_path / "broken.jpg")
    harness = BackboneHarness(weights, device="cpu", batch_size=2, num_workers=0, progress=False)
    loaded = harness.load()
    found = loaded.collect(harness.loader(ImageFiles(paths, TRANSFORM)))
    assert found.indices.tolist() == [0, 1, 3, 4, 5]
    direct = torch.stack([TRANSFORM(Image.open(paths[i]).convert("RGB")) for i in (0, 1, 3, 4, 5)])
    with torch.no_grad():
        expected = loaded.module(direct)
    assert found.values.shape == (5, 192)
    torch.testing.assert_close(found.values, expected, rtol=1e-5, atol=1e-5)


def test_outputs_give_cls_patch_tokens_and_attention_of_one_pass(weights):
    loaded = BackboneHarness(weights, device="cpu").load()
    images = torch.randn(2, 3, 32, 48)
    out = loaded.outputs(images, patch_tokens=True, attention=True)
    assert out.grid == (2, 3) and out.patch_tokens.shape == (2, 6, 192) and out.attention.shape == (2, 3, 2, 3)
    torch.testing.assert_close(out.cls, loaded.cls(images), rtol=1e-4, atol=1e-4)
    sums = out.attention.sum(dim=(2, 3))
    assert bool(((sums > 0) & (sums < 1)).all())  # the [CLS] key's share is left out
    assert loaded.outputs(images).patch_tokens is None


def test_bf16_precision_runs_the_forward_pass_under_autocast(weights):
    loaded = BackboneHarness(weights, device="cpu", precision="bf16").load()
    assert loaded.dtype == torch.bfloat16
    seen = []
    loaded.apply(lambda module, x: seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                                               else None), torch.zeros(1, 3, 32, 32))
    assert seen == [torch.bfloat16]
    fp32 = BackboneHarness(weights, device="cpu").load()
    assert fp32.dtype is None



@pytest.mark.gpu
def test_on_a_gpu_the_pass_matches_the_cpu_and_bf16_stays_close(weights, tmp_path):
    paths = _images(tmp_path, 6)
    cpu = BackboneHarness(weights, device="cpu", batch_size=4, num_workers=0)
    gpu = BackboneHarness(weights, device="cuda", batch_size=4, num_workers=2, tf32=False)
    expected = cpu.load().collect(cpu.loader(ImageFiles(paths, TRANSFORM))).values
    loaded = gpu.load()
    assert loaded.device.type == "cuda" and next(loaded.module.parameters()).is_cuda
    found = loaded.collect(gpu.loader(ImageFiles(paths, TRANSFORM), loaded.device))
    torch.testing.assert_close(found.values, expected, rtol=1e-4, atol=1e-4)  # IEEE fp32 on both
    half = BackboneHarness(weights, device="cuda", precision="bf16", batch_size=4, num_workers=0).load()
    assert half.dtype == torch.bfloat16
    low = half.collect(gpu.loader(ImageFiles(paths, TRANSFORM), half.device)).values
    assert low.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(low, expected)
    assert bool((cosine > 0.99).all())
