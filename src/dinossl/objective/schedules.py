"""Per-iteration and per-epoch schedules: lr, weight decay, teacher momentum and temperature."""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base_value: float,
    final_value: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: int = 0,
    warmup_start_value: float = 0.0,
) -> np.ndarray:
    """Values for each of ``epochs * iters_per_epoch`` iterations.

    Linear warm-up from ``warmup_start_value`` to ``base_value`` over ``warmup_epochs``
    epochs (excluding the end point), then a half cosine from ``base_value`` down (or up) to
    ``final_value``, which the last iteration reaches exactly.
    """
    total = epochs * iters_per_epoch
    warmup_iters = min(warmup_epochs * iters_per_epoch, total)
    warmup = np.linspace(warmup_start_value, base_value, warmup_iters, endpoint=False)
    remaining = total - warmup_iters
    if remaining == 1:
        cosine = np.array([final_value], dtype=np.float64)
    else:
        progress = np.arange(remaining) / max(remaining - 1, 1)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * progress))
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
