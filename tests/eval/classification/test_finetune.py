"""Fine-tuning: timm's parameter groups (weight decay, layer-wise lr decay by the BEiT rule),
stochastic depth, the DeiT transform and Mixup/CutMix, a small ViT that learns a toy task end
to end (with and without Mixup/CutMix), and learning on real images (CIFAR-10)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from timm.layers import DropPath
from torch import nn

from dinossl.data.augment import evaluation_transform
from dinossl.data.images import ArrayImages
from dinossl.errors import DinoError
from dinossl.eval.baselines import RawPixels
from dinossl.inference import TransformedImages
from dinossl.eval.classification.finetune import (
    FinetuneModel, FinetuneSettings, batch_mixer, finetune, finetune_optimizer, finetune_train_transform, set_drop_path,
)
from dinossl.eval.classification.supervised import evaluation_loader, training_loader
from dinossl.models import build_vit
from dinossl.runtime.distributed import DistContext
from dinossl.runtime.precision import has_native_bf16

CPU = DistContext(0, 1, 0, torch.device("cpu"))




def small_model(depth: int = 2) -> FinetuneModel:
    torch.manual_seed(0)
    return FinetuneModel(build_vit("vit_tiny", patch_size=8, img_size=16, depth=depth), 192, 3)


def test_layer_wise_lr_decay_and_weight_decay_groups():
    """timm's ViT grouping restated: with L blocks, embeddings get decay^(L+1), block i decay^(L-i),
    the final norm the last block's, the classifier the full lr; no weight decay on 1-D tensors,
    cls_token, pos_embed."""
    model = small_model(depth=2)
    groups = finetune_optimizer(model, FinetuneSettings(weight_decay=0.05, layer_decay=0.5)).param_groups
    scale = {id(p): g.get("lr_scale", 1.0) for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    expected_scale = {
        "backbone.patch_embed.proj.weight": 0.125, "backbone.cls_token": 0.125, "backbone.pos_embed": 0.125,
        "backbone.blocks.0.attn.qkv.weight": 0.25, "backbone.blocks.1.mlp.fc2.bias": 0.5,
        "backbone.norm.weight": 0.5, "head.weight": 1.0,
    }
    for name, value in expected_scale.items():
        assert scale[id(params[name])] == value, name
    for name in ("backbone.cls_token", "backbone.pos_embed", "backbone.blocks.0.norm1.weight", "head.bias",
                 "backbone.blocks.1.attn.qkv.bias"):
        assert decay[id(params[name])] == 0.0, name
    for name in ("backbone.patch_embed.proj.weight", "backbone.blocks.0.attn.qkv.weight", "head.weight"):
        assert decay[id(params[name])] == 0.05, name
    assert sum(len(g["params"]) for g in groups) == len(params)
    no_layer_decay = finetune_optimizer(model, FinetuneSettings(weight_decay=0.05)).param_groups
    assert {g.get("lr_scale", 1.0) for g in no_layer_decay} == {1.0}
    assert {id(p) for g in no_layer_decay if g["weight_decay"] == 0 for p in g["params"]} == {
        id(p) for n, p in params.items() if p.ndim <= 1 or n in ("backbone.cls_token", "backbone.pos_embed")}
    with pytest.raises(DinoError, match="ViT"):
        finetune_optimizer(FinetuneModel(RawPixels(), 12, 3), FinetuneSettings(layer_decay=0.75))


def test_deit_transform_and_mixer_follow_the_settings():
    settings = FinetuneSettings()
    steps = [type(t).__name__ for t in finetune_train_transform(32, settings).transforms]
    assert steps[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment"]
    assert steps[-1] == "RandomErasing"
    plain = [type(t).__name__ for t in finetune_train_transform(32, FinetuneSettings(randaugment=False,
                                                                                      random_erasing=0.0)).transforms]
    assert "RandAugment" not in plain and "ColorJitter" in plain and "RandomErasing" not in plain
    mixer = batch_mixer(4, settings)
    torch.manual_seed(0)
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, targets = mixer(images.clone(), labels)
    assert mixed.shape == images.shape and targets.shape == (6, 4)
    assert torch.allclose(targets.sum(dim=1), torch.ones(6))  # soft targets, label smoothing 0.1 included
    assert targets.min() >= 0.1 / 4 - 1e-6
    assert batch_mixer(4, FinetuneSettings(mixup=0.0, cutmix=0.0)) is None


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
                                layer_decay=0.75, clip_grad=1.0, model_ema=mix)
    train_set = TransformedImages(_colour_images(16, 0), finetune_train_transform(16, settings))
    val_set = TransformedImages(_colour_images(8, 1), evaluation_transform(16, 16))
    history = finetune(model, training_loader(train_set, 16, CPU, seed=0), evaluation_loader(val_set, 32, CPU), 3,
                       settings)
    assert len(history) == 4 and all("top1" in entry for entry in history)
    assert all(("ema_top1" in entry) == mix for entry in history)
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


CPU_AUTO = torch.bfloat16 if has_native_bf16(CPU.device) else torch.float32


@pytest.mark.parametrize("precision, expected", [("auto", CPU_AUTO), ("fp32", torch.float32),
                                                 ("bf16", torch.bfloat16)])
def test_finetuning_precision_follows_the_training_rule(precision, expected):
    """``finetune.precision`` resolves like ``train.precision`` (auto: bf16 on CPUs with native
    bf16, else fp32 on the CPU; bf16 on GPUs of compute capability 8.0 and later, fp16 with a
    gradient scaler before: see tests/runtime/), in training and evaluation forwards alike."""
    model = small_model(depth=1)
    spy = _AutocastSpy(model.backbone)
    model.backbone = spy
    settings = FinetuneSettings(epochs=1, batch_size=8, warmup_epochs=0, randaugment=False, mixup=0.0, cutmix=0.0,
                                random_erasing=0.0, precision=precision)
    train_set = TransformedImages(_colour_images(4, 0), finetune_train_transform(16, settings))
    val_set = TransformedImages(_colour_images(2, 1), evaluation_transform(16, 16))
    history = finetune(model, training_loader(train_set, 8, CPU, seed=0), evaluation_loader(val_set, 8, CPU), 3,
                       settings)
    assert np.isfinite(history[-1]["train_loss"])
    assert spy.seen and set(spy.seen) == {expected}


def test_finetuning_precision_is_checked():
    with pytest.raises(DinoError, match="finetune.precision must be one of"):
        FinetuneSettings(precision="half")
    settings = FinetuneSettings(epochs=1, precision="fp16")
    with pytest.raises(DinoError, match="finetune.precision=fp16 needs a CUDA or Apple-silicon"):
        finetune(small_model(depth=1), [], [], 3, settings)


@pytest.mark.gpu
def test_finetuning_on_cuda_autocasts_by_compute_capability():
    device = torch.device("cuda")
    model = small_model(depth=1).to(device)
    spy = _AutocastSpy(model.backbone)
    model.backbone = spy
    settings = FinetuneSettings(epochs=1, batch_size=8, warmup_epochs=0, randaugment=False, mixup=0.0, cutmix=0.0,
                                random_erasing=0.0, clip_grad=1.0)
    train_set = TransformedImages(_colour_images(4, 0), finetune_train_transform(16, settings))
    val_set = TransformedImages(_colour_images(2, 1), evaluation_transform(16, 16))
    cuda = DistContext(0, 1, 0, device)
    history = finetune(model, training_loader(train_set, 8, cuda, seed=0), evaluation_loader(val_set, 8, cuda), 3,
                       settings, device=device)
    expected = torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16
    assert np.isfinite(history[-1]["train_loss"]) and set(spy.seen) == {expected}
def _chance_threshold(n: int, p: float, alpha: float = 1e-3) -> int:
    """Smallest k with P(Binomial(n, p) >= k) < alpha: more hits than guessing gives but rarely."""
    tail = 1.0
    for k in range(n + 1):
        if tail < alpha:
            return k
        tail -= math.comb(n, k) * p**k * (1 - p) ** (n - k)
    return n + 1


@pytest.fixture(scope="module")
def cifar10_500_val(tmp_path_factory, cifar10_small, cifar10_fixture):
    """cifar10_small's 500 train images with 500 val images (50 per class of CIFAR-10's test split)."""
    root = tmp_path_factory.mktemp("cifar10_500_val") / "cifar10"
    root.mkdir()
    (root / "val").symlink_to(cifar10_fixture / "test", target_is_directory=True)
    (root / "train").symlink_to(cifar10_small / "train", target_is_directory=True)
    return root


@pytest.mark.slow
def test_finetuning_with_the_default_recipe_learns_cifar10(cifar10_500_val):
    """The DeiT recipe (RandAugment, random erasing, Mixup/CutMix, label smoothing, EMA, drop path)
    on real photos: a small ViT from random initialisation ends far above chance on 500 held-out
    images after 10 epochs on 500 training images."""
    from dinossl.eval.classification.labelled_splits import open_splits
    from dinossl.eval.classification.protocols import ImageSettings, finetune_protocol

    torch.manual_seed(0)
    backbone = build_vit("vit_tiny", patch_size=8, img_size=32, depth=1)
    settings = FinetuneSettings(epochs=10, base_lr=5e-3, batch_size=50, warmup_epochs=1, model_ema_decay=0.99)
    defaults = FinetuneSettings()
    assert (settings.randaugment, settings.random_erasing, settings.mixup, settings.cutmix, settings.label_smoothing,
            settings.model_ema, settings.drop_path) == (defaults.randaugment, defaults.random_erasing, defaults.mixup,
                                                        defaults.cutmix, defaults.label_smoothing, defaults.model_ema,
                                                        defaults.drop_path)
    results = finetune_protocol(backbone, open_splits(cifar10_500_val), ImageSettings(32, 32, 250, 0), settings, CPU)
    history = results["history"]
    threshold = _chance_threshold(500, 0.1)  # 10 classes, 500 val images
    assert 100.0 * threshold / 500 < 15.0
    assert results["best"]["top1"] >= 100.0 * threshold / 500, history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
