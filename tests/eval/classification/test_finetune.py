"""Fine-tuning: parameter groups (weight decay, layer-wise lr decay), stochastic depth, and a
small ViT that learns a toy task end to end (with and without Mixup/CutMix)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.layers import DropPath
from torch import nn

from dinossl.data.augment import evaluation_transform
from dinossl.data.images import ArrayImages
from dinossl.errors import DinoError
from dinossl.eval.baselines import RawPixels
from dinossl.eval.features import TransformedImages
from dinossl.eval.classification.finetune import (
    FinetuneModel, FinetuneSettings, finetune, finetune_train_transform, layer_index, parameter_groups, set_drop_path,
)
from dinossl.eval.classification.supervised import evaluation_loader, training_loader
from dinossl.models import build_vit
from dinossl.runtime.distributed import DistContext

CPU = DistContext(0, 1, 0, torch.device("cpu"))




def small_model(depth: int = 2) -> FinetuneModel:
    torch.manual_seed(0)
    return FinetuneModel(build_vit("vit_tiny", patch_size=8, img_size=16, depth=depth), 192, 3)


def test_layer_wise_lr_decay_and_weight_decay_groups():
    model = small_model(depth=2)
    groups = parameter_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    expected_scale = {
        "backbone.patch_embed.proj.weight": 0.125, "backbone.cls_token": 0.125, "backbone.pos_embed": 0.125,
        "backbone.blocks.0.attn.qkv.weight": 0.25, "backbone.blocks.1.mlp.fc2.bias": 0.5,
        "backbone.norm.weight": 1.0, "head.weight": 1.0,
    }
    for name, value in expected_scale.items():
        assert scale[id(params[name])] == value, name
    for name in ("backbone.cls_token", "backbone.pos_embed", "backbone.blocks.0.norm1.weight", "head.bias",
                 "backbone.blocks.1.attn.qkv.bias"):
        assert decay[id(params[name])] == 0.0, name
    for name in ("backbone.patch_embed.proj.weight", "backbone.blocks.0.attn.qkv.weight", "head.weight"):
        assert decay[id(params[name])] == 0.05, name
    assert sum(len(g["params"]) for g in groups) == len(params)
    assert {g["lr_scale"] for g in parameter_groups(model, 0.05)} == {1.0}
    assert layer_index("head.weight", 12) == 13
    with pytest.raises(DinoError, match="ViT"):
        parameter_groups(FinetuneModel(RawPixels(), 12, 3), 0.05, layer_decay=0.75)


def test_drop_path_grows_linearly_over_blocks():
    backbone = build_vit("vit_tiny", patch_size=8, img_size=16, depth=3)
    set_drop_path(backbone, 0.2)
    assert isinstance(backbone.blocks[0].drop_path1, nn.Identity)
    rates = [block.drop_path2.drop_prob for block in backbone.blocks[1:]]
    assert rates == pytest.approx([0.1, 0.2]) and isinstance(backbone.blocks[2].drop_path1, DropPath)
    set_drop_path(backbone, 0.0)
    assert all(isinstance(block.drop_path1, nn.Identity) for block in backbone.blocks)


def _colour_images(per_class: int, seed: int) -> ArrayImages:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), per_class)
    pixels = rng.integers(0, 60, (len(labels), 16, 16, 3)).astype(np.uint8)
    pixels[np.arange(len(labels)), :, :, labels] += 180
    return ArrayImages(pixels, labels, ["red", "green", "blue"])


@pytest.mark.parametrize("mix", [False, True])
def test_finetuning_learns_a_toy_task(mix):
    model = small_model(depth=1)
    settings = FinetuneSettings(epochs=4, base_lr=4e-3, batch_size=16, warmup_epochs=1, randaugment=mix,
                                mixup=0.8 if mix else 0.0, cutmix=1.0 if mix else 0.0, random_erasing=0.0,
                                layer_decay=0.75, clip_grad=1.0)
    train_set = TransformedImages(_colour_images(16, 0), finetune_train_transform(16, settings.randaugment, 0.0))
    val_set = TransformedImages(_colour_images(8, 1), evaluation_transform(16, 16))
    history = finetune(model, training_loader(train_set, 16, CPU, seed=0), evaluation_loader(val_set, 32, CPU), 3,
                       settings)
    assert len(history) == 4 and all("top1" in entry for entry in history)
    # warm-up over epoch 1 ends on the base lr at its last step (DINO's schedule), then the cosine decays
    assert history[0]["lr"] == pytest.approx(settings.lr) and history[1]["lr"] < history[0]["lr"]
    if not mix:
        assert history[-1]["top1"] == 100.0
        assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(np.isfinite(entry["train_loss"]) for entry in history)


def test_settings_are_checked_and_lr_scales_with_batch():
    assert FinetuneSettings(batch_size=1024).lr == pytest.approx(1e-3)
    for bad in ({"layer_decay": 0.0}, {"layer_decay": 1.5}, {"epochs": 0}, {"label_smoothing": 1.0}, {"mixup": -1.0}):
        with pytest.raises(DinoError):
            FinetuneSettings(**bad)


class _AutocastSpy(nn.Module):
    """Records, at each forward, whether autocast is on for the input's device and its dtype."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        kind = x.device.type
        self.seen.append(torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32)
        return self.model(x)


@pytest.mark.parametrize("precision, expected", [("auto", torch.float32), ("fp32", torch.float32),
                                                 ("bf16", torch.bfloat16)])
def test_finetuning_precision_follows_the_training_rule(precision, expected):
    """``finetune.precision`` resolves like ``train.precision`` (auto: fp32 on the CPU; bf16 on
    GPUs of compute capability 8.0 and later, fp16 with a gradient scaler before: see
    tests/runtime/test_precision.py), in training and evaluation forwards alike."""
    model = small_model(depth=1)
    spy = _AutocastSpy(model.backbone)
    model.backbone = spy
    settings = FinetuneSettings(epochs=1, batch_size=8, warmup_epochs=0, randaugment=False, mixup=0.0, cutmix=0.0,
                                random_erasing=0.0, precision=precision)
    train_set = TransformedImages(_colour_images(4, 0), finetune_train_transform(16, False, 0.0))
    val_set = TransformedImages(_colour_images(2, 1), evaluation_transform(16, 16))
    history = finetune(model, training_loader(train_set, 8, CPU, seed=0), evaluation_loader(val_set, 8, CPU), 3,
                       settings)
    assert np.isfinite(history[-1]["train_loss"])
    assert spy.seen and set(spy.seen) == {expected}


def test_finetuning_precision_is_checked():
    with pytest.raises(DinoError, match="finetune.precision must be one of"):
        FinetuneSettings(precision="half")
    settings = FinetuneSettings(epochs=1, precision="fp16")
    with pytest.raises(DinoError, match="finetune.precision=fp16 needs a CUDA device"):
        finetune(small_model(depth=1), [], [], 3, settings)


@pytest.mark.gpu
def test_finetuning_on_cuda_autocasts_by_compute_capability():
    device = torch.device("cuda")
    model = small_model(depth=1).to(device)
    spy = _AutocastSpy(model.backbone)
    model.backbone = spy
    settings = FinetuneSettings(epochs=1, batch_size=8, warmup_epochs=0, randaugment=False, mixup=0.0, cutmix=0.0,
                                random_erasing=0.0, clip_grad=1.0)
    train_set = TransformedImages(_colour_images(4, 0), finetune_train_transform(16, False, 0.0))
    val_set = TransformedImages(_colour_images(2, 1), evaluation_transform(16, 16))
    cuda = DistContext(0, 1, 0, device)
    history = finetune(model, training_loader(train_set, 8, cuda, seed=0), evaluation_loader(val_set, 8, cuda), 3,
                       settings, device=device)
    expected = torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16
    assert np.isfinite(history[-1]["train_loss"]) and set(spy.seen) == {expected}
