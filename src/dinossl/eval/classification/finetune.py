"""Fine-tuning: the whole backbone plus a linear classifier, DeiT-style recipe.

Recipe (DeiT, Touvron et al. 2021, as used for DINO's Table 6; every item a setting):
AdamW (betas 0.9/0.999), lr = base_lr * batch / 512 with base_lr 5e-4, linear warm-up over
5 epochs then cosine to 1e-6 per iteration, weight decay 0.05 (none on biases, norms,
cls_token, pos_embed), label smoothing 0.1, stochastic depth 0.1 (linear over blocks),
RandomResizedCrop + flip + RandAugment(2 ops, magnitude 9) + random erasing 0.25, Mixup 0.8 /
CutMix 1.0 (one of the two per batch). Optional layer-wise lr decay (BEiT): block i of L gets
lr * decay^(L + 1 - (i + 1)); patch/position embeddings decay^(L + 1); the final norm and the
classifier the full lr.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from timm.layers import DropPath
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode, v2

from dinossl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dinossl.errors import DinoError
from dinossl.eval.classification.supervised import accuracy, set_loader_epoch
from dinossl.eval.validation import require_non_negative, require_positive
from dinossl.objective.schedules import cosine_schedule, scaled_lr
from dinossl.runtime.distributed import DistContext
from dinossl.runtime.precision import PRECISIONS, resolve_precision

log = logging.getLogger("dinossl")

_EMBEDDING_NAMES = ("cls_token", "pos_embed", "reg_token")


@dataclass(frozen=True)
class FinetuneSettings:
    """DeiT-style fine-tuning hyper-parameters (see the module docstring)."""

    epochs: int = 100
    base_lr: float = 5e-4  # lr = base_lr * batch_size / 512
    min_lr: float = 1e-6
    batch_size: int = 256  # global, over all processes
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    layer_decay: float = 1.0  # 1 = off; e.g. 0.65 for ViT-B, 0.75 for ViT-S
    drop_path: float = 0.1
    randaugment: bool = True
    random_erasing: float = 0.25
    mixup: float = 0.8  # Beta(alpha, alpha); 0 = off
    cutmix: float = 1.0  # Beta(alpha, alpha); 0 = off
    clip_grad: float = 0.0  # max global gradient norm; 0 = off
    eval_every: int = 1
    seed: int = 0
    # numeric precision (the rule of dino train)
    precision: str = "auto"  # auto: bf16 on GPUs with native bf16 (sm80+), fp16 + scaler on older GPUs, fp32 on CPU

    def __post_init__(self) -> None:
        require_positive(self, "epochs", "base_lr", "batch_size", "eval_every")
        require_non_negative(self, "min_lr", "weight_decay", "warmup_epochs", "label_smoothing", "drop_path",
                             "random_erasing", "mixup", "cutmix", "clip_grad")
        if not 0 < self.layer_decay <= 1:
            raise DinoError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.label_smoothing >= 1 or self.drop_path >= 1 or self.random_erasing > 1:
            raise DinoError("label_smoothing and drop_path must be < 1, random_erasing <= 1")
        if self.precision not in PRECISIONS:
            raise DinoError(f"finetune.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def lr(self) -> float:
        return scaled_lr(self.base_lr, self.batch_size, 512)


class FinetuneModel(nn.Module):
    """Backbone (B, 3, H, W) -> (B, d) then a linear classifier -> (B, C) logits."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def finetune_train_transform(crop: int, randaugment: bool = True, random_erasing: float = 0.25) -> v2.Compose:
    """RandomResizedCrop (bicubic) + flip [+ RandAugment(2, 9)] + normalisation [+ random erasing]."""
    steps: list = [v2.RandomResizedCrop(crop, interpolation=InterpolationMode.BICUBIC), v2.RandomHorizontalFlip()]
    if randaugment:
        steps.append(v2.RandAugment(num_ops=2, magnitude=9, interpolation=InterpolationMode.BICUBIC))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(steps)


def batch_mixer(num_classes: int, mixup: float, cutmix: float) -> Optional[v2.Transform]:
    """(images, labels) -> (mixed images, soft targets (B, C)); one of Mixup/CutMix per batch."""
    choices = []
    if mixup > 0:
        choices.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        choices.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


def set_drop_path(backbone: nn.Module, rate: float) -> None:
    """Stochastic depth on a ViT's residual branches, 0 at the first block to ``rate`` at the last."""
    blocks = getattr(backbone, "blocks", None)
    if blocks is None:
        if rate > 0:
            log.warning("finetune: drop path applies to ViT blocks only; ignored for %s", type(backbone).__name__)
        return
    for index, block in enumerate(blocks):
        block_rate = rate * index / max(len(blocks) - 1, 1)
        for name in ("drop_path1", "drop_path2"):
            setattr(block, name, DropPath(block_rate) if block_rate > 0 else nn.Identity())


def layer_index(name: str, depth: int) -> int:
    """0 for patch/position embeddings, i + 1 for block i, depth + 1 for the rest (norm, head)."""
    if name.startswith("backbone."):
        name = name[len("backbone."):]
        if name in _EMBEDDING_NAMES or name.startswith("patch_embed."):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
    return depth + 1


def parameter_groups(model: FinetuneModel, weight_decay: float, layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on 1-D tensors, biases, cls_token and pos_embed; an
    ``lr_scale`` per layer when ``layer_decay`` < 1 (ViT backbones only)."""
    blocks = getattr(model.backbone, "blocks", None)
    if layer_decay != 1.0 and blocks is None:
        raise DinoError(f"layer-wise lr decay needs a ViT backbone, not {type(model.backbone).__name__}")
    depth = len(blocks) if blocks is not None else 0
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in _EMBEDDING_NAMES
        layer = layer_index(name, depth) if layer_decay != 1.0 else depth + 1
        group = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (depth + 1 - layer),
        })
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def finetune(
    model: FinetuneModel,
    train_loader: DataLoader,
    val_loader: DataLoader,
    num_classes: int,
    settings: FinetuneSettings,
    device: torch.device | str = "cpu",
    ctx: Optional[DistContext] = None,
) -> list[dict[str, Any]]:
    """Train ``model`` (already on ``device``) in place; one record per epoch (epoch,
    train_loss, lr, and top1/top5 in percent on ``val_loader`` for evaluated epochs).

    Loaders yield (images, labels, ...) batches (None for an all-unreadable batch); under
    torchrun each process's loaders hold its share and gradients are averaged (DDP).
    """
    device = torch.device(device)
    distributed = ctx is not None and ctx.distributed
    torch.manual_seed(settings.seed + (ctx.rank if ctx is not None else 0))
    set_drop_path(model.backbone, settings.drop_path)
    network: nn.Module = DistributedDataParallel(model) if distributed else model
    optimizer = torch.optim.AdamW(parameter_groups(model, settings.weight_decay, settings.layer_decay),
                                  lr=settings.lr, betas=(0.9, 0.999))
    steps_per_epoch = max(len(train_loader), 1)
    schedule = cosine_schedule(settings.lr, settings.min_lr, settings.epochs, steps_per_epoch,
                               warmup_epochs=settings.warmup_epochs)
    mixer = batch_mixer(num_classes, settings.mixup, settings.cutmix)
    amp_dtype = resolve_precision(settings.precision, device, "finetune.precision")
    autocast_dtype, use_amp = amp_dtype or torch.float32, amp_dtype is not None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    history: list[dict[str, Any]] = []
    step = 0
    for epoch in range(settings.epochs):
        model.train()
        set_loader_epoch(train_loader, epoch)
        loss_sum, batches = torch.zeros((), device=device), 0
        lr = float(schedule[min(step, len(schedule) - 1)])
        for batch in train_loader:
            if batch is None:
                continue
            images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            if mixer is not None:
                images, targets = mixer(images, targets)
            lr = float(schedule[min(step, len(schedule) - 1)])
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=use_amp):
                logits = network(images)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if settings.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach()
            batches, step = batches + 1, step + 1
        entry: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum.item() / max(batches, 1), "lr": lr}
        if not math.isfinite(entry["train_loss"]):
            raise DinoError(f"fine-tuning diverged at epoch {epoch + 1} (loss {entry['train_loss']}); lower --lr")
        if (epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs:
            model.eval()
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=use_amp):
                entry.update(accuracy(lambda x: model(x).float(), val_loader, device, ctx))
            log.info("finetune epoch %d/%d: loss %.4f, top-1 %.2f%%, top-5 %.2f%%", epoch + 1, settings.epochs,
                     entry["train_loss"], entry["top1"], entry["top5"])
        history.append(entry)
    return history
