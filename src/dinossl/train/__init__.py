"""Training: the loop, teacher EMA, optimiser, checkpoints, distributed setup, run log."""

from dinossl.train.trainer import NonFiniteLoss, TrainResult, build_run, train, train_one_epoch

__all__ = ["NonFiniteLoss", "TrainResult", "build_run", "train", "train_one_epoch"]
