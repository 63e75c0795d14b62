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
