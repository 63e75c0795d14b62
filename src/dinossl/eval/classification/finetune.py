"""Fine-tuning: the whole backbone plus a linear classifier, on timm's DeiT pieces.

Recipe (DeiT, Touvron et al. 2021, the fine-tuning recipe of DINO's Table 6; every item a
setting): timm's ``create_transform`` for training (RandomResizedCrop bicubic, flip,
RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25 in pixel mode), timm's ``Mixup``
(Mixup 0.8 / CutMix 1.0, one of the two per batch, label smoothing 0.1 folded into the soft
targets), AdamW from timm's ``create_optimizer_v2`` (betas 0.9/0.999, weight decay 0.05, none on
biases, norms, ``cls_token`` and ``pos_embed``; optional layer-wise lr decay grouped as timm
groups its ViT: block i of L gets lr * decay^(L - i), embeddings decay^(L + 1), the final norm
the last block's, the classifier the full lr), lr = base_lr * batch / 512 with base_lr 5e-4, linear warm-up over 5 epochs then
cosine to 1e-5 per iteration, stochastic depth 0.1, and a model EMA (timm's ``ModelEmaV3``,
decay 0.99996) evaluated beside the model.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from PIL import Image, ImageOps
from timm.data import Mixup, create_transform
from timm.layers import DropPath
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from dinossl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dinossl.errors import DinoError
from dinossl.eval.classification.linear import EpochEnd
from dinossl.eval.classification.supervised import accuracy, seed_epoch, set_loader_epoch
from dinossl.eval.validation import require_non_negative, require_positive
from dinossl.objective.schedules import cosine_schedule, scaled_lr
from dinossl.runtime.distributed import DistContext
from dinossl.runtime.precision import PRECISIONS, resolve_precision

log = logging.getLogger("dinossl")

_NO_DECAY = ("cls_token", "pos_embed", "reg_token")


@dataclass(frozen=True)
class FinetuneSettings:
    """DeiT fine-tuning hyper-parameters (see the module docstring)."""

    epochs: int = 100
    base_lr: float = 5e-4  # lr = base_lr * batch_size / 512
    min_lr: float = 1e-5
    batch_size: int = 256  # global, over all processes
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    layer_decay: float = 1.0  # 1 = off; e.g. 0.65 for ViT-B, 0.75 for ViT-S
    drop_path: float = 0.1
    randaugment: bool = True  # the auto_augment policy below; off: colour jitter 0.3 instead
    random_erasing: float = 0.25
    mixup: float = 0.8  # Beta(alpha, alpha); 0 = off
    cutmix: float = 1.0  # Beta(alpha, alpha); 0 = off
    clip_grad: float = 0.0  # max global gradient norm; 0 = off
    eval_every: int = 1
    seed: int = 0
    # numeric precision (the rule of dino train)
    precision: str = "auto"  # auto: as train.precision (bf16 where the GPU or CPU has it natively)
    # timm's DeiT pieces
    auto_augment: str = "rand-m9-mstd0.5-inc1"  # timm RandAugment policy
    mixup_switch_prob: float = 0.5  # chance of CutMix rather than Mixup when both are on
    model_ema: bool = True
    model_ema_decay: float = 0.99996

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
        if not 0 <= self.mixup_switch_prob <= 1 or not 0 <= self.model_ema_decay < 1:
            raise DinoError("mixup_switch_prob must be in [0, 1] and model_ema_decay in [0, 1)")
        if self.randaugment and not self.auto_augment.startswith("rand-"):
            raise DinoError(f"auto_augment must be a timm RandAugment policy (rand-m9-...), got {self.auto_augment!r}")

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

    def no_weight_decay(self) -> set[str]:
        """timm's hook: parameters without weight decay besides 1-D ones."""
        return {f"backbone.{name}" for name, _ in self.backbone.named_parameters() if name in _NO_DECAY}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's hook for layer-wise lr decay, timm's ViT grouping: embeddings, each ViT block, the
        final norm with the last block ((99999,) = timm's "previous group"); the classifier,
        matched by nothing, gets the full lr."""
        if getattr(self.backbone, "blocks", None) is None:
            raise DinoError(f"layer-wise lr decay needs a ViT backbone, not {type(self.backbone).__name__}")
        return {"stem": r"^backbone\.(?:cls_token|reg_token|pos_embed|patch_embed)",
                "blocks": [(r"^backbone\.blocks\.(\d+)", None), (r"^backbone\.norm", (99999,))]}


def posterize(image: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's Posterize op, with 0 bits kept giving the black image older Pillow gave (Pillow 11+
    refuses 0 bits, which RandAugment's ``inc1`` posterize reaches at magnitude 10)."""
    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits_to_keep)


def finetune_train_transform(crop: int, settings: FinetuneSettings) -> Callable:
    """timm's DeiT training transform: RandomResizedCrop (bicubic) + flip + RandAugment (or colour
    jitter 0.3) + normalisation + random erasing (pixel mode)."""
    transform = create_transform(
        input_size=crop, is_training=True, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
        auto_augment=settings.auto_augment if settings.randaugment else None, color_jitter=0.3,
        re_prob=settings.random_erasing, re_mode="pixel", re_count=1,
    )
    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):
            if getattr(op, "name", "").startswith("Posterize"):
                op.aug_fn = posterize
    return transform


def batch_mixer(num_classes: int, settings: FinetuneSettings) -> Optional[Mixup]:
    """timm's Mixup/CutMix: (images (B, ...), labels (B,)) -> (mixed images, soft targets (B, C))
    with label smoothing; None when both are off. B must be even."""
    if settings.mixup <= 0 and settings.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=settings.mixup, cutmix_alpha=settings.cutmix, prob=1.0,
                 switch_prob=settings.mixup_switch_prob, mode="batch", label_smoothing=settings.label_smoothing,
                 num_classes=num_classes)


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


def finetune_optimizer(model: FinetuneModel, settings: FinetuneSettings) -> torch.optim.Optimizer:
    """AdamW over timm's parameter groups (weight decay, and ``lr_scale`` per layer when
    ``layer_decay`` < 1)."""
    layer_decay = settings.layer_decay if settings.layer_decay < 1 else None
    if layer_decay is not None:
        model.group_matcher()  # a clear error for a backbone without blocks
    return create_optimizer_v2(model, "adamw", lr=settings.lr, weight_decay=settings.weight_decay,
                               layer_decay=layer_decay, betas=(0.9, 0.999))


def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device, ctx: Optional[DistContext],
              amp_dtype: Optional[torch.dtype]) -> dict[str, float]:
    model.eval()
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        return accuracy(lambda x: model(x).float(), loader, device, ctx)


def finetune(
    model: FinetuneModel,
    train_loader: DataLoader,
    val_loader: DataLoader,
    num_classes: int,
    settings: FinetuneSettings,
    device: torch.device | str = "cpu",
    ctx: Optional[DistContext] = None,
    resume: Optional[dict[str, Any]] = None,
    on_epoch: Optional[Callable[[EpochEnd], None]] = None,
) -> list[dict[str, Any]]:
    """Train ``model`` (already on ``device``) in place; one record per epoch (epoch,
    train_loss, lr, and top1/top5 in percent on ``val_loader`` for evaluated epochs, with the
    EMA's as ema_top1/ema_top5).

    Loaders yield (images, labels, ...) batches (None for an all-unreadable batch); under
    torchrun each process's loaders hold its share and gradients are averaged (DDP). ``resume``
    and ``on_epoch`` as in :func:`~dinossl.eval.classification.linear.train_linear_classifier`;
    the best network handed to ``on_epoch`` is the model's or the EMA's, whichever scored best.
    """
    device = torch.device(device)
    distributed = ctx is not None and ctx.distributed
    rank = ctx.rank if ctx is not None else 0
    set_drop_path(model.backbone, settings.drop_path)
    optimizer = finetune_optimizer(model, settings)
    ema = ModelEmaV3(model, decay=settings.model_ema_decay) if settings.model_ema else None
    network: nn.Module = DistributedDataParallel(model) if distributed else model
    steps_per_epoch = max(len(train_loader), 1)
    schedule = cosine_schedule(settings.lr, settings.min_lr, settings.epochs, steps_per_epoch,
                               warmup_epochs=settings.warmup_epochs)
    mixer = batch_mixer(num_classes, settings)
    soft_loss = SoftTargetCrossEntropy()
    amp_dtype = resolve_precision(settings.precision, device, "finetune.precision")
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    history: list[dict[str, Any]] = []
    step, start, best_top1 = 0, 0, -1.0
    if resume is not None:
        model.load_state_dict(resume["network"])
        optimizer.load_state_dict(resume["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(resume["ema"])
        start, step, history = int(resume["epoch"]), int(resume["step"]), list(resume["history"])
        best_top1 = float(resume["best_top1"])
    for epoch in range(start, settings.epochs):
        seed_epoch(settings.seed, epoch, rank)
        model.train()
        set_loader_epoch(train_loader, epoch)
        loss_sum, batches = torch.zeros((), device=device), 0
        lr = float(schedule[min(step, len(schedule) - 1)])
        for batch in train_loader:
            if batch is None:
                continue
            images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            if mixer is not None and images.shape[0] % 2:  # timm mixes pairs within a batch
                images, labels = images[:-1], labels[:-1]
            if images.shape[0] == 0:
                continue
            lr = float(schedule[min(step, len(schedule) - 1)])
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                if mixer is not None:
                    images, targets = mixer(images, labels)
                logits = network(images)
            if mixer is not None:
                loss = soft_loss(logits.float(), targets)
            else:
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if settings.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model, step=step)
            loss_sum += loss.detach()
            batches, step = batches + 1, step + 1
        entry: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum.item() / max(batches, 1), "lr": lr}
        if not math.isfinite(entry["train_loss"]):
            raise DinoError(f"fine-tuning diverged at epoch {epoch + 1} (loss {entry['train_loss']}); lower --lr")
        best: Optional[dict[str, torch.Tensor]] = None
        if (epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs:
            entry.update(_evaluate(model, val_loader, device, ctx, amp_dtype))
            candidates = [("model", entry["top1"], model)]
            if ema is not None:
                scores = _evaluate(ema.module, val_loader, device, ctx, amp_dtype)
                entry.update({"ema_top1": scores["top1"], "ema_top5": scores["top5"]})
                candidates.append(("ema", scores["top1"], ema.module))
            which, top1, winner = max(candidates, key=lambda c: c[1])  # the model on ties
            if top1 > best_top1:
                best_top1, entry["saved"] = top1, which
                best = {k: v.detach().cpu().clone() for k, v in winner.state_dict().items()}
            log.info("finetune epoch %d/%d: loss %.4f, top-1 %.2f%%, top-5 %.2f%%%s", epoch + 1, settings.epochs,
                     entry["train_loss"], entry["top1"], entry["top5"],
                     f" (EMA {entry['ema_top1']:.2f}%)" if ema is not None else "")
        history.append(entry)
        if on_epoch is not None:
            state = {"network": copy.deepcopy(model.state_dict()), "optimizer": optimizer.state_dict(),
                     "epoch": epoch + 1, "step": step, "history": history, "best_top1": best_top1}
            if ema is not None:
                state["ema"] = ema.module.state_dict()
            on_epoch(EpochEnd(epoch + 1, state, best))
    return history
