"""Training statistics kept on the device and read back only at log intervals.

Each step adds [loss, teacher entropy, KL, 1, non-finite flag] to two running sums (the log
interval's and the epoch's) and remembers the first step whose loss was not finite, all
without a host sync. :meth:`StepStats.read` averages over steps and processes and raises
:class:`NonFiniteLoss` on every rank when any rank saw a NaN or infinite loss. A mid-epoch
checkpoint stores the sums (:meth:`StepStats.state_dict`), so that a resumed epoch logs what
the uninterrupted one logs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import distributed as dist

from dinossl.errors import DinoError
from dinossl.runtime.distributed import all_reduce


class NonFiniteLoss(DinoError):
    """The loss became NaN or infinite on some process (every rank stops with this error)."""

    same_on_all_ranks = True


class StepStats:
    """Running sums for one epoch: ``interval`` (reset at every read) and ``epoch``."""

    def __init__(self, device: torch.device) -> None:
        self.interval = torch.zeros(5, device=device)  # loss, entropy, kl, count, nonfinite
        self.epoch = torch.zeros(5, device=device)
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, step: int, loss: torch.Tensor, stats: dict[str, torch.Tensor]) -> None:
        """Record one step (0-based ``step``); no host sync."""
        finite = torch.isfinite(loss)
        self.first_bad_step = torch.where((self.first_bad_step < 0) & ~finite, step, self.first_bad_step)
        record = torch.stack([
            torch.where(finite, loss, 0.0), stats["teacher_entropy"], stats["kl"],
            torch.ones_like(loss), (~finite).float(),
        ])
        self.interval += record
        self.epoch += record

    def state_dict(self) -> dict[str, Any]:
        """This process's sums and first bad step, as CPU tensors."""
        return {"interval": self.interval.cpu().clone(), "epoch": self.epoch.cpu().clone(),
                "first_bad_step": self.first_bad_step.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.interval.device
        self.interval = state["interval"].to(device, self.interval.dtype).clone()
        self.epoch = state["epoch"].to(device, self.epoch.dtype).clone()
        self.first_bad_step = state["first_bad_step"].to(device, self.first_bad_step.dtype).clone()

    def check_finite(self, steps_per_epoch: int, where: str) -> None:
        """Raise NonFiniteLoss (on every rank) if any process saw a non-finite loss this epoch;
        a collective, called before a checkpoint that no log interval preceded."""
        if all_reduce(self.epoch[4:5].clone(), "sum").item() > 0:
            self._raise(steps_per_epoch, where)

    def read(self, which: str, steps_per_epoch: int, where: str) -> dict[str, float]:
        """Means of the ``interval`` (then reset) or ``epoch`` sums over steps and processes.

        Raises NonFiniteLoss naming the first bad step (1-based) when any process saw one;
        ``where`` (what became of the run's checkpoint) ends the message.
        """
        sums = self.interval if which == "interval" else self.epoch
        values = all_reduce(sums.clone(), "sum").tolist()
        if which == "interval":
            self.interval.zero_()
        if values[4] > 0:
            self._raise(steps_per_epoch, where)
        count = max(values[3], 1.0)
        return {"loss": values[0] / count, "teacher_entropy": values[1] / count, "kl": values[2] / count}

    def _raise(self, steps_per_epoch: int, where: str) -> None:
        step = self._first_bad_step_across_ranks()
        raise NonFiniteLoss(
            f"the loss became non-finite (NaN or inf) at step {step + 1} (epoch {step // steps_per_epoch + 1}); "
            f"training stopped, {where} "
            "(try a lower lr, train.precision=fp32 or bf16, or optim.clip_grad)"
        )

    def _first_bad_step_across_ranks(self) -> int:
        value = torch.where(self.first_bad_step < 0, torch.full_like(self.first_bad_step, 2**62), self.first_bad_step)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return int(value.item())
