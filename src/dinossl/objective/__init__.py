"""The DINO objective: loss with centering, schedules, collapse diagnostics."""

from dinossl.objective.collapse import CollapseMonitor
from dinossl.objective.loss import DINOLoss
from dinossl.objective.schedules import (
    StepValues,
    TrainingSchedules,
    build_schedules,
    cosine_schedule,
    scaled_lr,
    teacher_temperature_schedule,
)

__all__ = [
    "CollapseMonitor",
    "DINOLoss",
    "StepValues",
    "TrainingSchedules",
    "build_schedules",
    "cosine_schedule",
    "scaled_lr",
    "teacher_temperature_schedule",
]
