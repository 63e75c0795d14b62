"""Per-iteration and per-epoch schedules: lr (and its scaling rule), weight decay, teacher momentum
and temperature, the last layer's freeze."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dinossl.config import LossConfig, OptimConfig


def cosine_schedule(
    base_value: float,
    final_value: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: int = 0,
    warmup_start_value: float = 0.0,
) -> np.ndarray:
    """Values (float64) for each of ``epochs * iters_per_epoch`` iterations, DINO's schedule.

    Warm-up: ``W = warmup_epochs * iters_per_epoch`` points evenly spaced from
    ``warmup_start_value`` to ``base_value``, both included (iteration ``W - 1`` is at
    ``base_value``). Then, for the ``n`` remaining iterations ``i = 0 .. n - 1``,
    ``final + 0.5 * (base - final) * (1 + cos(pi * i / n))``: it starts at ``base_value`` again
    and approaches ``final_value`` without reaching it.

    A warm-up longer than training keeps its slope and is cut at the last iteration: the
    values are the first ``epochs * iters_per_epoch`` of the warm-up ramp, so ``base_value``
    is never reached (the reference implementation refuses such a schedule).
    """
    total = epochs * iters_per_epoch
    warmup_iters = warmup_epochs * iters_per_epoch
    warmup = np.linspace(warmup_start_value, base_value, warmup_iters)[:total]
    iters = np.arange(max(total - warmup_iters, 0))
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    schedule = np.concatenate([warmup, cosine])
    assert len(schedule) == total
    return schedule


def teacher_temperature_schedule(
    warmup_temp: float, final_temp: float, warmup_epochs: int, epochs: int
) -> np.ndarray:
    """Teacher temperature per epoch: linear from ``warmup_temp`` to ``final_temp`` over
    ``warmup_epochs`` epochs (the first epoch at ``warmup_temp``, epoch ``warmup_epochs - 1`` at
    ``final_temp``), then constant."""
    warmup = np.linspace(warmup_temp, final_temp, warmup_epochs)
    constant = np.full(max(epochs - warmup_epochs, 0), final_temp)
    return np.concatenate([warmup, constant])[:epochs]


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 256) -> float:
    """The linear scaling rule: ``base_lr * global_batch / reference_batch`` (DINO and the linear
    probe use 256, the DeiT fine-tuning recipe 512)."""
    return base_lr * global_batch / float(reference_batch)


@dataclass(frozen=True)
class StepValues:
    """What the schedules prescribe for one iteration."""

    lr: float
    weight_decay: float
    momentum: float  # teacher EMA momentum
    teacher_temp: float
    freeze_last_layer: bool  # the head's last layer gets no update


@dataclass(frozen=True)
class TrainingSchedules:
    """Per-iteration lr, weight decay and teacher momentum, per-epoch teacher temperature, and
    the epochs during which the head's last layer is frozen."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    freeze_last_layer_epochs: int
    steps_per_epoch: int

    def at(self, step: int) -> StepValues:
        """The values of (0-based) iteration ``step``."""
        epoch = step // self.steps_per_epoch
        return StepValues(float(self.lr[step]), float(self.weight_decay[step]), float(self.momentum[step]),
                          float(self.teacher_temp[epoch]), epoch < self.freeze_last_layer_epochs)


def build_schedules(optim: OptimConfig, loss: LossConfig, epochs: int, steps_per_epoch: int,
                    global_batch: int) -> TrainingSchedules:
    """DINO's schedules for a run: lr warmed up to the scaled base lr then cosine to ``min_lr``,
    weight decay and teacher momentum cosine to their final values, teacher temperature warmed
    up per epoch (or, with ``loss.sharpening`` off, the student's temperature throughout)."""
    peak_lr = scaled_lr(optim.base_lr, global_batch)
    return TrainingSchedules(
        lr=cosine_schedule(peak_lr, optim.min_lr, epochs, steps_per_epoch, optim.warmup_epochs),
        weight_decay=cosine_schedule(optim.weight_decay, optim.weight_decay_end, epochs, steps_per_epoch),
        momentum=cosine_schedule(optim.momentum_teacher, 1.0, epochs, steps_per_epoch),
        teacher_temp=(teacher_temperature_schedule(loss.warmup_teacher_temp, loss.teacher_temp,
                                                   loss.warmup_teacher_temp_epochs, epochs)
                      if loss.sharpening else np.full(epochs, loss.student_temp)),
        freeze_last_layer_epochs=optim.freeze_last_layer,
        steps_per_epoch=steps_per_epoch,
    )
