"""Linear probe on frozen features (DINO's linear protocol).

A single linear layer on frozen backbone features, trained with SGD (momentum 0.9, no
weight decay by default) at lr = base_lr * batch / 256, decayed per iteration by a cosine to
0. Training images get RandomResizedCrop + horizontal flip; evaluation uses the
deterministic center crop, whose features are extracted once (the backbone is frozen).
The ``cached`` variant trains on center-crop features extracted once, without augmentation:
much faster, and usually a little lower.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode, v2

from dinossl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dinossl.eval.features import FeatureSpec
from dinossl.eval.classification.supervised import accuracy, seed_epoch, set_loader_epoch
from dinossl.eval.validation import require_non_negative, require_positive
from dinossl.objective.schedules import cosine_schedule, scaled_lr
from dinossl.runtime.distributed import DistContext

log = logging.getLogger("dinossl")

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LinearSettings:
    """The linear protocol's hyper-parameters (reference defaults)."""

    epochs: int = 100
    base_lr: float = 0.001  # lr = base_lr * batch_size / 256
    batch_size: int = 256  # global, over all processes
    momentum: float = 0.9
    weight_decay: float = 0.0
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    cached: bool = False  # train on center-crop features, no augmentation
    seed: int = 0
    n_last_blocks: Optional[int] = None  # CLS of this many last blocks; None: 4 (1 with avgpool)
    avgpool: bool = False  # append the mean patch token of the last block (the ViT-B setting)

    def __post_init__(self) -> None:
        require_positive(self, "epochs", "base_lr", "batch_size", "eval_every")
        require_non_negative(self, "momentum", "weight_decay")

    @property
    def lr(self) -> float:
        return scaled_lr(self.base_lr, self.batch_size, 256)


class LinearClassifier(nn.Module):
    """(B, D) features -> (B, C) logits; weights N(0, 0.01), bias 0."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.flatten(1))


def linear_train_transform(crop: int = 224) -> v2.Compose:
    """RandomResizedCrop (bicubic, scale 0.08-1) + horizontal flip + ImageNet normalisation."""
    return v2.Compose([
        v2.RandomResizedCrop(crop, interpolation=InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def frozen_feature_batches(
    backbone: nn.Module, spec: FeatureSpec, loader: DataLoader, device: torch.device
) -> Callable[[int], Iterator[Batch]]:
    """epoch -> iterator of (features (B, D), labels (B,)) on ``device``, computed by the frozen
    backbone (eval mode, no gradient) from the loader's (images, labels, ...) batches."""
    backbone.eval()

    def batches(epoch: int) -> Iterator[Batch]:
        set_loader_epoch(loader, epoch)
        for batch in loader:
            if batch is None:
                continue
            with torch.no_grad():
                features = spec(backbone, batch[0].to(device, non_blocking=True)).float()
            yield features, batch[1].to(device, non_blocking=True)

    return batches


def loader_batches(loader: DataLoader, device: torch.device) -> Callable[[int], Iterator[Batch]]:
    """epoch -> iterator of a (features, labels) loader's batches, moved to ``device``."""

    def batches(epoch: int) -> Iterator[Batch]:
        set_loader_epoch(loader, epoch)
        for features, labels in loader:
            yield features.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    return batches


def tensor_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterator[Batch]:
    """In-order (features, labels) slices."""
    for start in range(0, features.shape[0], batch_size):
        yield features[start:start + batch_size], labels[start:start + batch_size]


@dataclass
class EpochEnd:
    """What a probe hands its ``on_epoch`` callback after each epoch: the state to resume from
    (``state``) and, when this epoch is the best so far, the best network's state dict."""

    epoch: int
    state: dict[str, Any]
    best: Optional[dict[str, torch.Tensor]] = None


def train_linear_classifier(
    train_batches: Callable[[int], Iterable[Batch]],
    steps_per_epoch: int,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    num_classes: int,
    settings: LinearSettings,
    device: torch.device | str = "cpu",
    ctx: Optional[DistContext] = None,
    resume: Optional[dict[str, Any]] = None,
    on_epoch: Optional[Callable[[EpochEnd], None]] = None,
) -> tuple[LinearClassifier, list[dict[str, Any]]]:
    """Train a linear classifier; evaluate it on the (M, D) val features.

    Args:
        train_batches: epoch -> (features (B, D), labels (B,)) batches on ``device`` (this
            process's share under torchrun: gradients are averaged over processes).
        steps_per_epoch: batches per epoch, for the cosine schedule.
        val_features, val_labels: (M, D) and (M,), evaluated whole on every process.
        resume: an :class:`EpochEnd` ``state`` saved before: training goes on after its epoch,
            drawing what an uninterrupted run draws (every epoch is seeded by :func:`seed_epoch`).
        on_epoch: called after every epoch (to save the state and the best classifier).

    Returns:
        the classifier and one record per epoch (epoch, train_loss, lr, and top1/top5 in
        percent for evaluated epochs).
    """
    device = torch.device(device)
    distributed = ctx is not None and ctx.distributed
    torch.manual_seed(settings.seed)
    classifier = LinearClassifier(val_features.shape[1], num_classes).to(device)
    model: nn.Module = DistributedDataParallel(classifier) if distributed else classifier
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    schedule = cosine_schedule(settings.lr, 0.0, settings.epochs, max(steps_per_epoch, 1))
    val_features, val_labels = val_features.to(device), val_labels.to(device)
    history: list[dict[str, Any]] = []
    step, start, best_top1 = 0, 0, -1.0
    if resume is not None:
        classifier.load_state_dict(resume["network"])
        optimizer.load_state_dict(resume["optimizer"])
        start, step, history = int(resume["epoch"]), int(resume["step"]), list(resume["history"])
        best_top1 = float(resume["best_top1"])
    for epoch in range(start, settings.epochs):
        seed_epoch(settings.seed, epoch, ctx.rank if ctx is not None else 0)
        classifier.train()
        loss_sum, batches = torch.zeros((), device=device), 0
        lr = float(schedule[min(step, len(schedule) - 1)])
        for features, labels in train_batches(epoch):
            lr = float(schedule[min(step, len(schedule) - 1)])
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(model(features), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            batches, step = batches + 1, step + 1
        entry: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum.item() / max(batches, 1), "lr": lr}
        improved = False
        if (epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs:
            classifier.eval()
            entry.update(accuracy(classifier, tensor_batches(val_features, val_labels, 4096), device))
            log.info("linear epoch %d/%d: loss %.4f, top-1 %.2f%%, top-5 %.2f%%", epoch + 1, settings.epochs,
                     entry["train_loss"], entry["top1"], entry["top5"])
            improved = entry["top1"] > best_top1  # strictly: the earliest best epoch is kept
            best_top1 = max(best_top1, entry["top1"])
        history.append(entry)
        if on_epoch is not None:
            network = {k: v.detach().cpu().clone() for k, v in classifier.state_dict().items()}
            state = {"network": network, "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step,
                     "history": history, "best_top1": best_top1}
            on_epoch(EpochEnd(epoch + 1, state, network if improved else None))
    return classifier.eval(), history
