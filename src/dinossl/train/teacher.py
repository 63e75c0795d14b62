"""The teacher and how it follows the student: DINO's momentum teacher (an exponential moving
average of the student's parameters) and the paper's other teachers (Fig. 6, Table 7 row 2).

Only parameters move from student to teacher: in every variant the teacher keeps its own
buffers (BatchNorm statistics, gathered from its own forward passes). A student's
``predictor`` has no counterpart in the teacher and is left out.
"""

from __future__ import annotations

import torch
from torch import nn

from dinossl.config import TEACHER_UPDATES


def init_teacher(teacher: nn.Module, student: nn.Module) -> None:
    """Copy the student's parameters and buffers (those the teacher has) into the teacher and
    freeze it."""
    teacher_keys = teacher.state_dict().keys()
    teacher.load_state_dict({k: v for k, v in student.state_dict().items() if k in teacher_keys})
    teacher.requires_grad_(False)


def paired_parameters(teacher: nn.Module, student: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The teacher's parameters and the student's parameters of the same names, in the
    teacher's order (student tensors detached)."""
    student_params = dict(student.named_parameters())
    names = [name for name, _ in teacher.named_parameters()]
    missing = [name for name in names if name not in student_params]
    if missing:
        raise ValueError(f"the student has no parameter {missing[0]} of the teacher")
    return list(teacher.parameters()), [student_params[name].detach() for name in names]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta_t <- momentum * theta_t + (1 - momentum) * theta_s for every teacher parameter.

    Buffers (BatchNorm statistics) are not averaged: the teacher keeps its own.
    """
    teacher_params, student_params = paired_parameters(teacher, student)
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)


@torch.no_grad()
def copy_parameters(teacher: nn.Module, student: nn.Module) -> None:
    """theta_t <- theta_s for every teacher parameter (buffers untouched)."""
    teacher_params, student_params = paired_parameters(teacher, student)
    torch._foreach_copy_(teacher_params, student_params)


class TeacherUpdate:
    """When and how the teacher takes the student's weights (``optim.teacher_update``).

    * ``ema``: after each optimiser step, theta_t <- m theta_t + (1 - m) theta_s (m scheduled);
    * ``student``: after each optimiser step, theta_t <- theta_s (the current student);
    * ``previous_iteration``: before each optimiser step, theta_t <- theta_s, so the next
      iteration's teacher is the student as it was one iteration earlier;
    * ``previous_epoch``: at the end of each epoch, theta_t <- theta_s; the teacher stays frozen
      in between (epoch 1's teacher is the initialisation).
    """

    def __init__(self, kind: str = "ema") -> None:
        if kind not in TEACHER_UPDATES:
            raise ValueError(f"unknown teacher update {kind!r}; choose from {', '.join(TEACHER_UPDATES)}")
        self.kind = kind

    def before_optimizer_step(self, teacher: nn.Module, student: nn.Module) -> None:
        if self.kind == "previous_iteration":
            copy_parameters(teacher, student)

    def after_optimizer_step(self, teacher: nn.Module, student: nn.Module, momentum: float) -> None:
        if self.kind == "ema":
            ema_update(teacher, student, momentum)
        elif self.kind == "student":
            copy_parameters(teacher, student)

    def after_epoch(self, teacher: nn.Module, student: nn.Module) -> None:
        if self.kind == "previous_epoch":
            copy_parameters(teacher, student)
