"""Training: the distiller (student, teacher, loss, optimiser, EMA), the loop, checkpoints and
the run folder, the run log and step statistics."""

from dinossl.train.distiller import Distiller, build_distiller
from dinossl.train.step_stats import NonFiniteLoss
from dinossl.train.trainer import MonitorReport, RunMonitor, TrainingRun, TrainResult, build_run, train, train_one_epoch

__all__ = [
    "Distiller",
    "MonitorReport",
    "NonFiniteLoss",
    "RunMonitor",
    "TrainResult",
    "TrainingRun",
    "build_distiller",
    "build_run",
    "train",
    "train_one_epoch",
]
