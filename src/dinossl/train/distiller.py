"""The Distiller: student, momentum teacher, DINO loss with its center, optimiser and gradient
scaler, and the one iteration that ties them together.

:meth:`Distiller.step` is DINO's iteration on device-resident crops: teacher forward on the
global views, student forward on all views, loss, backward, per-tensor clipping, the
last-layer freeze, the optimiser step and the teacher's EMA, with this iteration's scheduled
values handed in. It changes only the distiller's own state and never syncs with the host.
:meth:`Distiller.end_epoch` is called after an epoch's last step (the previous-epoch teacher
of the ablations is replaced there).

With ``train.compile`` the student, the teacher and the loss run through ``torch.compile``
(:meth:`Distiller.compile`); the modules themselves, their state dicts and checkpoints are
unchanged.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dinossl.config import Config
from dinossl.models import MultiCropNetwork, build_network
from dinossl.objective import DINOLoss, StepValues
from dinossl.runtime.distributed import DistContext, synchronize_batchnorm
from dinossl.runtime.precision import resolve_precision
from dinossl.train.optim import (
    build_optimizer,
    clip_gradients_per_tensor,
    drop_last_layer_gradients,
    set_lr_and_weight_decay,
)
from dinossl.train.optimizer_state import fit_optimizer_state
from dinossl.train.teacher import TeacherUpdate, init_teacher
from dinossl.weights import load_backbone_into

log = logging.getLogger("dinossl")


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class Distiller:
    """Everything DINO learns with and its update rule.

    Args:
        student, teacher: networks of the same architecture (the teacher frozen, in train mode
            so that BatchNorm uses batch statistics, as in the reference).
        loss_fn: the DINO loss; its ``num_teacher_views`` global views go to the teacher.
        optimizer, scaler: over the student's trainable parameters (the scaler is enabled for fp16).
        amp_dtype: autocast dtype, None for fp32.
        clip_grad: per-tensor gradient norm bound, 0 for none.
        student_forward: the student as called in the step (its DDP wrapper when distributed).
        teacher_update: how the teacher follows the student (DINO's EMA by default).
    """

    def __init__(self, student: MultiCropNetwork, teacher: MultiCropNetwork, loss_fn: DINOLoss,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, amp_dtype: Optional[torch.dtype],
                 clip_grad: float, student_forward: Optional[nn.Module] = None,
                 teacher_update: Optional[TeacherUpdate] = None) -> None:
        self.student, self.teacher, self.loss_fn = student, teacher, loss_fn
        self.optimizer, self.scaler, self.amp_dtype, self.clip_grad = optimizer, scaler, amp_dtype, clip_grad
        self.student_forward: Callable[..., Any] = student_forward if student_forward is not None else student
        self.teacher_forward: Callable[..., Any] = teacher
        self.loss_forward: Callable[..., Any] = loss_fn
        self.compiled = False
        self.teacher_update = teacher_update if teacher_update is not None else TeacherUpdate("ema")

    def compile(self) -> None:
        """Run the student (or its DDP wrapper), the teacher and the loss through
        ``torch.compile`` from the next step on: the first step (and each new crop shape)
        pays the compilation."""
        if not self.compiled:
            self.student_forward = torch.compile(self.student_forward)
            self.teacher_forward = torch.compile(self.teacher)
            self.loss_forward = torch.compile(self.loss_fn)
            self.compiled = True

    @cached_property
    def trainable_params(self) -> list[torch.Tensor]:
        return [p for p in self.student.parameters() if p.requires_grad]

    @property
    def num_teacher_views(self) -> int:
        return self.loss_fn.num_teacher_views

    def step(self, crops: list[torch.Tensor], values: StepValues) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One iteration on the views of a batch (V x (B, 3, S_v, S_v), global views first);
        returns the detached loss and the loss's diagnostics (teacher entropy, KL)."""
        set_lr_and_weight_decay(self.optimizer, values.lr, values.weight_decay)
        device_type = crops[0].device.type
        with torch.autocast(device_type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            with torch.no_grad():
                teacher_logits = self.teacher_forward(crops[:self.num_teacher_views])
            student_logits = self.student_forward(crops)
        # As a tensor (filled on the device, no host copy), a compiled loss takes each epoch's
        # temperature without recompiling.
        teacher_temp = (torch.full((), values.teacher_temp, device=self.loss_fn.center.device) if self.compiled
                        else values.teacher_temp)
        loss, stats = self.loss_forward(student_logits, teacher_logits, teacher_temp)

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            clip_gradients_per_tensor(self.trainable_params, self.clip_grad)
        if values.freeze_last_layer:
            drop_last_layer_gradients(self.student)
        self.teacher_update.before_optimizer_step(self.teacher, self.student)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.teacher_update.after_optimizer_step(self.teacher, self.student, values.momentum)
        return loss.detach(), stats

    def end_epoch(self) -> None:
        """After an epoch's last step (before its checkpoint is written)."""
        self.teacher_update.after_epoch(self.teacher, self.student)

    def state_dict(self) -> dict[str, Any]:
        """The reference checkpoint's entries: student, teacher, optimizer, dino_loss, fp16_scaler."""
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "dino_loss": {"center": self.loss_fn.center.detach().cpu()},
            "fp16_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Restore what :meth:`state_dict` wrote (KeyError, RuntimeError or ValueError if it does
        not fit; CheckpointError naming ``source`` for an optimiser state of another model)."""
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(
            fit_optimizer_state(state["optimizer"], self.optimizer, self.student, list(state["student"]), source))
        self.loss_fn.center.copy_(state["dino_loss"]["center"].to(self.loss_fn.center.device))
        if state.get("fp16_scaler"):
            self.scaler.load_state_dict(state["fp16_scaler"])


def build_distiller(config: Config, ctx: DistContext, num_teacher_views: int,
                    init_from: Optional[str] = None) -> Distiller:
    """Networks seeded from ``train.seed`` (identical on every rank), the student's backbone
    optionally initialised from released weights, SyncBatchNorm and DDP when distributed, the
    loss, AdamW/SGD, the precision ``train.precision`` resolves to on ``ctx.device``, the
    teacher update ``optim.teacher_update`` names and the speed settings ``train.pack_crops``,
    ``train.activation_checkpointing``, ``train.compile``."""
    torch.manual_seed(config.train.seed)  # identical initial weights on every rank
    student = build_network(config.model, student=True)
    teacher = build_network(config.model, student=False)
    student.pack_views = teacher.pack_views = config.train.pack_crops
    if config.train.activation_checkpointing:
        student.backbone.set_grad_checkpointing(True)  # the teacher keeps no activations anyway
    if init_from is not None:
        load_backbone_into(student.backbone, init_from)
        log.info("student backbone initialised from %s (fresh head)", init_from)
    if ctx.distributed and has_batchnorm(student):  # ResNet, or a head with BatchNorm
        student = synchronize_batchnorm(student, ctx.device)
        teacher = synchronize_batchnorm(teacher, ctx.device)
        if ctx.device.type != "cuda" and ctx.is_main:
            log.warning("BatchNorm statistics stay per process: SyncBatchNorm needs CUDA devices")
    init_teacher(teacher, student)
    student.to(ctx.device)
    teacher.to(ctx.device)
    teacher.train()  # BatchNorm (ResNet, BN head) normalises with batch statistics, as in the reference
    student_forward: nn.Module = student
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        student_forward = DistributedDataParallel(student, device_ids=device_ids)
    lo = config.loss
    loss_fn = DINOLoss(config.model.out_dim, lo.student_temp, lo.center_momentum, num_teacher_views,
                       centering=lo.centering, criterion=lo.criterion,
                       sinkhorn_iterations=lo.sinkhorn_iterations).to(ctx.device)
    optimizer = build_optimizer(student, config.optim)
    amp_dtype = resolve_precision(config.train.precision, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16)
    distiller = Distiller(student, teacher, loss_fn, optimizer, scaler, amp_dtype, config.optim.clip_grad,
                          student_forward, TeacherUpdate(config.optim.teacher_update))
    if config.train.compile:
        distiller.compile()
    return distiller
