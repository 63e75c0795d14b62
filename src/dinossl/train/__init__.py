"""Training: the loop, teacher EMA, optimiser, checkpoints, distributed setup, run log.

``train``, ``build_run``, ``train_one_epoch``, ``training_step`` and ``TrainResult`` come from
:mod:`dinossl.train.trainer`, imported on first use so that the small modules of this package
(checkpoint, distributed) stay cheap to import.
"""

from __future__ import annotations

from typing import Any

from dinossl.train.step_stats import NonFiniteLoss

_TRAINER_NAMES = ("TrainResult", "build_run", "train", "train_one_epoch", "training_step")
__all__ = ["NonFiniteLoss", *_TRAINER_NAMES]


def __getattr__(name: str) -> Any:
    if name in _TRAINER_NAMES:
        from dinossl.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'dinossl.train' has no attribute {name!r}")
