"""Checks of a :class:`~dinossl.config.schema.Config`: the first impossible value raises one
ConfigError naming its field."""

from __future__ import annotations

import math

import torch

from dinossl.config.schema import (
    ARCHS,
    CENTERINGS,
    GEOMETRIC_MODES,
    HOST_ALLOCATORS,
    LOGGERS,
    LOSS_CRITERIA,
    OPTIMIZER_IMPLEMENTATIONS,
    OPTIMIZERS,
    PHOTOMETRIC_PLACES,
    PRECISIONS,
    TEACHER_UPDATES,
    VIT_ARCHS,
    Config,
)
from dinossl.errors import ConfigError

MAX_EPOCHS = 100_000  # the reference trains 800 at most; a larger value is a typo
DEVICE_NAMES = "auto, cpu, cuda, cuda:N"


def is_device_name(name: str) -> bool:
    """Whether torch parses ``name`` as a device ("auto" included); availability is checked later."""
    if name == "auto":
        return True
    try:
        torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def validate(c: Config) -> None:
    """Raise ConfigError naming the first field whose value is impossible."""

    def need(ok: bool, name: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{name}: {why}")

    m, d, cr, lo, o, t = c.model, c.data, c.data.crops, c.loss, c.optim, c.train
    need(m.arch in ARCHS, "model.arch", f"unknown architecture {m.arch!r}; choose from {', '.join(ARCHS)}")
    need(m.patch_size > 0, "model.patch_size", f"must be positive, got {m.patch_size}")
    need(m.img_size > 0, "model.img_size", f"must be positive, got {m.img_size}")
    need(m.depth is None or m.depth > 0, "model.depth", f"must be positive, got {m.depth}")
    need(0.0 <= m.drop_path < 1.0, "model.drop_path", f"must be in [0, 1), got {m.drop_path}")
    need(m.out_dim > 0, "model.out_dim", f"must be positive, got {m.out_dim}")
    need(m.head_hidden_dim > 0, "model.head_hidden_dim", f"must be positive, got {m.head_hidden_dim}")
    need(m.head_bottleneck_dim > 0, "model.head_bottleneck_dim", f"must be positive, got {m.head_bottleneck_dim}")
    need(cr.global_size > 0, "data.crops.global_size", f"must be positive, got {cr.global_size}")
    need(cr.local_size > 0, "data.crops.local_size", f"must be positive, got {cr.local_size}")
    need(cr.num_local >= 0, "data.crops.num_local", f"must be >= 0, got {cr.num_local}")
    need(0.0 <= cr.blur_radius[0] <= cr.blur_radius[1], "data.crops.blur_radius",
         f"must satisfy 0 <= min <= max, got {list(cr.blur_radius)}")
    need(all(v >= 0 for v in cr.color_jitter) and cr.color_jitter[3] <= 0.5, "data.crops.color_jitter",
         f"needs brightness, contrast, saturation >= 0 and 0 <= hue <= 0.5, got {list(cr.color_jitter)}")
    for name in ("color_jitter_p", "grayscale_p"):
        need(0.0 <= getattr(cr, name) <= 1.0, f"data.crops.{name}", f"must be in [0, 1], got {getattr(cr, name)}")
    for name, (lo_s, hi_s) in (("data.crops.global_scale", cr.global_scale), ("data.crops.local_scale", cr.local_scale)):
        need(0.0 < lo_s <= hi_s <= 1.0, name, f"must satisfy 0 < min <= max <= 1, got {[lo_s, hi_s]}")
    if m.arch in VIT_ARCHS:
        need(m.img_size % m.patch_size == 0, "model.img_size",
             f"{m.img_size} is not divisible by model.patch_size={m.patch_size}")
        need(cr.global_size % m.patch_size == 0, "data.crops.global_size",
             f"{cr.global_size} is not divisible by model.patch_size={m.patch_size}")
        if cr.num_local > 0:
            need(cr.local_size % m.patch_size == 0, "data.crops.local_size",
                 f"{cr.local_size} is not divisible by model.patch_size={m.patch_size}")
    need(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    need(d.photometric in PHOTOMETRIC_PLACES, "data.photometric",
         f"unknown place {d.photometric!r}; choose from {', '.join(PHOTOMETRIC_PLACES)}")
    need(d.geometric in GEOMETRIC_MODES, "data.geometric",
         f"unknown mode {d.geometric!r}; choose from {', '.join(GEOMETRIC_MODES)}")
    need(d.geometric == "per_image" or d.photometric == "device", "data.geometric",
         f"{d.geometric} crops need data.photometric=device")
    need(lo.student_temp > 0, "loss.student_temp", f"must be positive, got {lo.student_temp}")
    need(lo.teacher_temp > 0, "loss.teacher_temp", f"must be positive, got {lo.teacher_temp}")
    need(lo.warmup_teacher_temp > 0, "loss.warmup_teacher_temp", f"must be positive, got {lo.warmup_teacher_temp}")
    need(lo.warmup_teacher_temp_epochs >= 0, "loss.warmup_teacher_temp_epochs",
         f"must be >= 0, got {lo.warmup_teacher_temp_epochs}")
    need(0.0 <= lo.center_momentum < 1.0, "loss.center_momentum", f"must be in [0, 1), got {lo.center_momentum}")
    for name in ("base_lr", "min_lr", "weight_decay", "weight_decay_end", "clip_grad"):
        value = getattr(o, name)
        need(math.isfinite(value) and value >= 0, f"optim.{name}", f"must be >= 0, got {value}")
    need(o.base_lr > 0, "optim.base_lr", f"must be positive, got {o.base_lr}")
    need(o.warmup_epochs >= 0, "optim.warmup_epochs", f"must be >= 0, got {o.warmup_epochs}")
    need(o.freeze_last_layer >= 0, "optim.freeze_last_layer", f"must be >= 0, got {o.freeze_last_layer}")
    need(o.optimizer in OPTIMIZERS, "optim.optimizer", f"unknown optimizer {o.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    need(o.implementation in OPTIMIZER_IMPLEMENTATIONS, "optim.implementation",
         f"unknown implementation {o.implementation!r}; choose from {', '.join(OPTIMIZER_IMPLEMENTATIONS)}")
    need(0.0 <= o.momentum_teacher <= 1.0, "optim.momentum_teacher", f"must be in [0, 1], got {o.momentum_teacher}")
    need(t.epochs > 0, "train.epochs", f"must be positive, got {t.epochs}")
    need(t.epochs <= MAX_EPOCHS, "train.epochs", f"must be at most {MAX_EPOCHS:,}, got {t.epochs}")
    need(isinstance(t.device, str) and is_device_name(t.device), "train.device",
         f"{t.device!r} is not a device name ({DEVICE_NAMES})")
    need(t.batch_size_per_process > 0, "train.batch_size_per_process",
         f"must be positive, got {t.batch_size_per_process}")
    need(t.precision in PRECISIONS, "train.precision", f"unknown precision {t.precision!r}; choose from {', '.join(PRECISIONS)}")
    need(t.log_every > 0, "train.log_every", f"must be positive, got {t.log_every}")
    need(t.dist_timeout_s > 0, "train.dist_timeout_s", f"must be positive, got {t.dist_timeout_s}")
    need(t.threads >= 0, "train.threads", f"must be >= 0, got {t.threads}")
    need(t.knn_every >= 0, "train.knn_every", f"must be >= 0, got {t.knn_every}")
    need(isinstance(t.tf32, bool), "train.tf32", f"must be true or false, got {t.tf32!r}")
    need(t.host_allocator in HOST_ALLOCATORS, "train.host_allocator",
         f"unknown host allocator {t.host_allocator!r}; choose from {', '.join(HOST_ALLOCATORS)}")
    need(t.checkpoint_every_steps >= 0, "train.checkpoint_every_steps",
         f"must be >= 0, got {t.checkpoint_every_steps}")
    need(t.keep_every >= 0, "train.keep_every", f"must be >= 0, got {t.keep_every}")
    need(t.attention_every >= 0, "train.attention_every", f"must be >= 0, got {t.attention_every}")
    need(t.attention_every == 0 or m.arch in VIT_ARCHS, "train.attention_every",
         f"attention maps need a ViT, not model.arch={m.arch}")
    need(t.logger in LOGGERS, "train.logger", f"unknown logger {t.logger!r}; choose from {', '.join(LOGGERS)}")
    need(t.val_data is None or t.knn_every > 0 or t.knn_at_end, "train.val_data",
         "set train.knn_every (epochs between k-NN checks) or train.knn_at_end to use it")
    # ablations
    need(o.teacher_update in TEACHER_UPDATES, "optim.teacher_update",
         f"unknown teacher update {o.teacher_update!r}; choose from {', '.join(TEACHER_UPDATES)}")
    need(lo.centering in CENTERINGS, "loss.centering",
         f"unknown centering {lo.centering!r}; choose from {', '.join(CENTERINGS)}")
    need(lo.sinkhorn_iterations >= 1, "loss.sinkhorn_iterations", f"must be >= 1, got {lo.sinkhorn_iterations}")
    need(lo.criterion in LOSS_CRITERIA, "loss.criterion",
         f"unknown loss criterion {lo.criterion!r}; choose from {', '.join(LOSS_CRITERIA)}")
    for name in ("pack_crops", "activation_checkpointing"):
        need(not getattr(t, name) or m.arch in VIT_ARCHS, f"train.{name}", f"needs a ViT (model.arch={m.arch})")
