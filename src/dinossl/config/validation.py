"""Checks of a :class:`~dinossl.config.schema.Config`, one function per section: the first
impossible value raises one ConfigError naming its field."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from dinossl.config import schema
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


def validate(c: schema.Config) -> None:
    """Raise ConfigError naming the first field whose value is impossible."""
    _check_model(c.model)
    _check_crops(c.data.crops, c.model)
    _check_data(c.data)
    _check_loss(c.loss)
    _check_optim(c.optim)
    _check_train(c.train, c.model)


def _need(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {why}")


def _positive(value: Any, name: str) -> None:
    _need(value > 0, name, f"must be positive, got {value}")


def _not_negative(value: Any, name: str) -> None:
    _need(value >= 0, name, f"must be >= 0, got {value}")


def _one_of(value: Any, choices: Sequence[str], name: str, what: str) -> None:
    _need(value in choices, name, f"unknown {what} {value!r}; choose from {', '.join(choices)}")


def _check_model(m: schema.ModelConfig) -> None:
    _one_of(m.arch, schema.ARCHS, "model.arch", "architecture")
    _positive(m.patch_size, "model.patch_size")
    _positive(m.img_size, "model.img_size")
    _need(m.depth is None or m.depth > 0, "model.depth", f"must be positive, got {m.depth}")
    _need(0.0 <= m.drop_path < 1.0, "model.drop_path", f"must be in [0, 1), got {m.drop_path}")
    _positive(m.out_dim, "model.out_dim")
    _positive(m.head_hidden_dim, "model.head_hidden_dim")
    _positive(m.head_bottleneck_dim, "model.head_bottleneck_dim")
    if m.arch in schema.VIT_ARCHS:
        _need(m.img_size % m.patch_size == 0, "model.img_size",
              f"{m.img_size} is not divisible by model.patch_size={m.patch_size}")


def _check_crops(cr: schema.CropConfig, m: schema.ModelConfig) -> None:
    _positive(cr.global_size, "data.crops.global_size")
    _positive(cr.local_size, "data.crops.local_size")
    _not_negative(cr.num_local, "data.crops.num_local")
    _need(0.0 <= cr.blur_radius[0] <= cr.blur_radius[1], "data.crops.blur_radius",
          f"must satisfy 0 <= min <= max, got {list(cr.blur_radius)}")
    _need(all(v >= 0 for v in cr.color_jitter) and cr.color_jitter[3] <= 0.5, "data.crops.color_jitter",
          f"needs brightness, contrast, saturation >= 0 and 0 <= hue <= 0.5, got {list(cr.color_jitter)}")
    for name in ("color_jitter_p", "grayscale_p"):
        _need(0.0 <= getattr(cr, name) <= 1.0, f"data.crops.{name}", f"must be in [0, 1], got {getattr(cr, name)}")
    for name, (low, high) in (("data.crops.global_scale", cr.global_scale), ("data.crops.local_scale", cr.local_scale)):
        _need(0.0 < low <= high <= 1.0, name, f"must satisfy 0 < min <= max <= 1, got {[low, high]}")
    if m.arch in schema.VIT_ARCHS:  # crops the ViT cuts into whole patches
        _need(cr.global_size % m.patch_size == 0, "data.crops.global_size",
              f"{cr.global_size} is not divisible by model.patch_size={m.patch_size}")
        if cr.num_local > 0:
            _need(cr.local_size % m.patch_size == 0, "data.crops.local_size",
                  f"{cr.local_size} is not divisible by model.patch_size={m.patch_size}")


def _check_data(d: schema.DataConfig) -> None:
    _not_negative(d.num_workers, "data.num_workers")
    _one_of(d.photometric, schema.PHOTOMETRIC_PLACES, "data.photometric", "place")
    _one_of(d.geometric, schema.GEOMETRIC_MODES, "data.geometric", "mode")
    _need(d.geometric == "per_image" or d.photometric == "device", "data.geometric",
          f"{d.geometric} crops need data.photometric=device")


def _check_loss(lo: schema.LossConfig) -> None:
    _positive(lo.student_temp, "loss.student_temp")
    _positive(lo.teacher_temp, "loss.teacher_temp")
    _positive(lo.warmup_teacher_temp, "loss.warmup_teacher_temp")
    _not_negative(lo.warmup_teacher_temp_epochs, "loss.warmup_teacher_temp_epochs")
    _need(0.0 <= lo.center_momentum < 1.0, "loss.center_momentum", f"must be in [0, 1), got {lo.center_momentum}")
    _one_of(lo.centering, schema.CENTERINGS, "loss.centering", "centering")
    _need(lo.sinkhorn_iterations >= 1, "loss.sinkhorn_iterations", f"must be >= 1, got {lo.sinkhorn_iterations}")
    _one_of(lo.criterion, schema.LOSS_CRITERIA, "loss.criterion", "loss criterion")


def _check_optim(o: schema.OptimConfig) -> None:
    for name in ("base_lr", "min_lr", "weight_decay", "weight_decay_end", "clip_grad"):
        value = getattr(o, name)
        _need(math.isfinite(value) and value >= 0, f"optim.{name}", f"must be >= 0, got {value}")
    _positive(o.base_lr, "optim.base_lr")
    _not_negative(o.warmup_epochs, "optim.warmup_epochs")
    _not_negative(o.freeze_last_layer, "optim.freeze_last_layer")
    _one_of(o.optimizer, schema.OPTIMIZERS, "optim.optimizer", "optimizer")
    _one_of(o.implementation, schema.OPTIMIZER_IMPLEMENTATIONS, "optim.implementation", "implementation")
    _need(0.0 <= o.momentum_teacher <= 1.0, "optim.momentum_teacher", f"must be in [0, 1], got {o.momentum_teacher}")
    _one_of(o.teacher_update, schema.TEACHER_UPDATES, "optim.teacher_update", "teacher update")


def _check_train(t: schema.TrainConfig, m: schema.ModelConfig) -> None:
    _positive(t.epochs, "train.epochs")
    _need(t.epochs <= MAX_EPOCHS, "train.epochs", f"must be at most {MAX_EPOCHS:,}, got {t.epochs}")
    _need(isinstance(t.device, str) and is_device_name(t.device), "train.device",
          f"{t.device!r} is not a device name ({DEVICE_NAMES})")
    _positive(t.batch_size_per_process, "train.batch_size_per_process")
    _one_of(t.precision, schema.PRECISIONS, "train.precision", "precision")
    _positive(t.log_every, "train.log_every")
    _positive(t.dist_timeout_s, "train.dist_timeout_s")
    for name in ("threads", "knn_every", "checkpoint_every_steps", "keep_every", "attention_every"):
        _not_negative(getattr(t, name), f"train.{name}")
    _need(isinstance(t.tf32, bool), "train.tf32", f"must be true or false, got {t.tf32!r}")
    _one_of(t.host_allocator, schema.HOST_ALLOCATORS, "train.host_allocator", "host allocator")
    _one_of(t.logger, schema.LOGGERS, "train.logger", "logger")
    _need(t.val_data is None or t.knn_every > 0 or t.knn_at_end, "train.val_data",
          "set train.knn_every (epochs between k-NN checks) or train.knn_at_end to use it")
    _need(t.attention_every == 0 or m.arch in schema.VIT_ARCHS, "train.attention_every",
          f"attention maps need a ViT, not model.arch={m.arch}")
    for name in ("pack_crops", "activation_checkpointing"):
        _need(not getattr(t, name) or m.arch in schema.VIT_ARCHS, f"train.{name}", f"needs a ViT (model.arch={m.arch})")
