"""Momentum teacher: an exponential moving average of the student's parameters."""

from __future__ import annotations

import torch
from torch import nn


def init_teacher(teacher: nn.Module, student: nn.Module) -> None:
    """Copy the student's parameters and buffers into the teacher and freeze it."""
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta_t <- momentum * theta_t + (1 - momentum) * theta_s for every parameter.

    Buffers (BatchNorm statistics) are not averaged: the teacher keeps its own.
    """
    teacher_params = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)
