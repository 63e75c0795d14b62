"""ONNX export: the graph run by onnxruntime gives PyTorch's outputs for other batch sizes and
image sizes than the one it was traced with (ViT: position embeddings resampled in the graph)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinossl.cli import main
from dinossl.inference.onnx_export import export_onnx, onnx_session
from dinossl.models import build_resnet50, build_vit
from dinossl.weights import write_backbone

pytest.importorskip("onnxruntime", reason="needs the optional onnx extra: pip install 'dinossl[onnx]'")
pytest.importorskip("onnxscript", reason="needs the optional onnx extra: pip install 'dinossl[onnx]'")

TOLERANCE = 1e-4  # max abs difference; measured 2.4e-6 (ViT-tiny descriptor), 3.1e-6 (its patch tokens), 1.3e-6 (ResNet-50)


@pytest.fixture(scope="module")
def vit_export(tmp_path_factory):
    """A random-init ViT-tiny/8 (2 blocks, 4 x 4 position table) exported by ``dino export``."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    vit = build_vit("vit_tiny", patch_size=8, img_size=32, depth=2).eval()
    write_backbone(vit.state_dict(), folder / "vit.pth")
    target = folder / "vit.onnx"
    assert main(["export", str(folder / "vit.pth"), "--output", str(target), "--patch-tokens"]) == 0
    return vit, target


def _calibrated_resnet() -> torch.nn.Module:
    """A random-init ResNet-50 whose BatchNorm means were measured on random images and whose
    variances were measured and floored at 1: its features are of order one (random-init's
    reach ~100). Without the floor, channels of tiny variance amplify float32 rounding through
    the 53 layers: PyTorch's own float32 output then lies 2e-4 from float64's, which would
    measure that, not the exporter (with the floor: 8e-7)."""
    torch.manual_seed(0)
    resnet = build_resnet50()
    for module in resnet.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average
    resnet.train()
    with torch.no_grad():
        for _ in range(3):
            resnet(torch.randn(8, 3, 64, 64))
    for module in resnet.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.clamp_(min=1.0)
    return resnet.eval()


# ViT: 32 x 32 keeps the table as is; 48 x 48 and 40 x 64 resample it (square and not).
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(32, 32), (48, 48), (40, 64)])
def test_vit_graph_equals_pytorch(vit_export, batch, size):
    vit, path = vit_export
    images = torch.randn(batch, 3, *size)
    descriptor, tokens = onnx_session(path).run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected_tokens = vit.intermediate_layers(images, 1)[0][:, 1:]
        expected = vit(images)
    assert descriptor.shape == tuple(expected.shape)
    assert tokens.shape == (batch, size[0] // 8 * size[1] // 8, 192)
    assert np.abs(descriptor - expected.numpy()).max() <= TOLERANCE
    assert np.abs(tokens - expected_tokens.numpy()).max() <= TOLERANCE


def test_resnet_graph_equals_pytorch(tmp_path):
    resnet = _calibrated_resnet()
    session = onnx_session(export_onnx(resnet, tmp_path / "resnet.onnx"))
    for batch, size in [(1, (64, 64)), (3, (64, 64)), (1, (96, 80)), (3, (96, 80))]:
        images = torch.randn(batch, 3, *size)
        (descriptor,) = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            expected = resnet(images).numpy()
        assert descriptor.shape == (batch, 2048)
        assert np.abs(descriptor - expected).max() <= TOLERANCE


def test_patch_tokens_of_a_resnet_is_one_error_line(tmp_path, capsys):
    write_backbone(build_resnet50().state_dict(), tmp_path / "r50.pth")
    status = main(["export", str(tmp_path / "r50.pth"), "--format", "onnx", "--patch-tokens"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "no patch tokens" in err[0]
    assert not list(tmp_path.glob("*.onnx"))
