"""The DINO objective: loss with centering, schedules, collapse diagnostics."""

from dinossl.objective.collapse import CollapseMonitor
from dinossl.objective.loss import DINOLoss
from dinossl.objective.schedules import cosine_schedule, teacher_temperature_schedule

__all__ = ["CollapseMonitor", "DINOLoss", "cosine_schedule", "teacher_temperature_schedule"]
