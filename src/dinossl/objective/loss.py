"""The DINO objective: cross-entropy between a centred, sharpened teacher and the student, and
the paper's ablations of it (Sinkhorn-Knopp or no centering, an MSE criterion)."""

from __future__ import annotations

import torch
from torch import nn
from torch import distributed as dist
from torch.nn import functional as F

from dinossl.config import CENTERINGS, LOSS_CRITERIA
from dinossl.objective.centering import teacher_log_probs


class DINOLoss(nn.Module):
    """H(P_t(i), P_s(v)) averaged over the teacher's views i (the recipe's global views, 2 in
    DINO) and the student's views v != i.

    P_s = softmax(student / student_temp); P_t = softmax((teacher - center) / teacher_temp).
    The center (1, K) is an EMA of the teacher's batch mean (all-reduced across processes
    when distributed), updated after the loss is computed.

    Ablations (:mod:`dinossl.objective.centering`): ``centering="sinkhorn"`` makes P_t the
    Sinkhorn-Knopp normalisation of exp(teacher / teacher_temp) and ``"none"`` its softmax (the
    center then stays zero); ``criterion="mse"`` replaces H(P_t(i), P_s(v)) by
    ||P_s(v)/||P_s(v)|| - P_t(i)/||P_t(i)|| ||^2 over the same pairs.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 num_teacher_views: int = 2, centering: str = "ema", criterion: str = "cross_entropy",
                 sinkhorn_iterations: int = 3) -> None:
        super().__init__()
        if criterion not in LOSS_CRITERIA or centering not in CENTERINGS:
            raise ValueError(f"unknown criterion {criterion!r} or centering {centering!r}")
        self.num_teacher_views = num_teacher_views
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering, self.criterion, self.sinkhorn_iterations = centering, criterion, sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        teacher_temp: float,
        update_center: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss for one batch.

        Args:
            student_logits: (V * B, K), views in the recipe's order (global views first).
            teacher_logits: (G * B, K), the G global views.
            teacher_temp: the teacher temperature of the current epoch.
            update_center: apply the center EMA after computing the loss.

        Returns:
            The scalar loss and detached diagnostics: ``teacher_entropy`` (mean H(P_t)) and
            ``kl`` (mean KL(P_t || P_s) over the same pairs as the loss).
        """
        num_teacher_views = self.num_teacher_views
        batch = teacher_logits.shape[0] // num_teacher_views
        num_views = student_logits.shape[0] // batch
        if num_views < num_teacher_views or num_views * batch != student_logits.shape[0]:
            raise ValueError(
                f"student logits {tuple(student_logits.shape)} do not hold whole views of batch {batch}"
            )
        with torch.no_grad():
            log_p_teacher = teacher_log_probs(teacher_logits, teacher_temp, self.centering, self.center,
                                              self.sinkhorn_iterations).view(num_teacher_views, batch, -1)
            p_teacher = log_p_teacher.exp()

        num_pairs = num_teacher_views * (num_views - 1)
        if self.criterion == "cross_entropy":
            loss = _PairwiseCrossEntropy.apply(student_logits.float(), p_teacher, self.student_temp)
            cross_entropy = loss.detach()
        else:
            log_p_student = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
            log_p_student = log_p_student.view(num_views, batch, -1)
            loss = _normalised_squared_error(log_p_student.exp(), p_teacher) / num_pairs
            with torch.no_grad():
                cross_entropy = _cross_entropy(log_p_student, p_teacher) / num_pairs

        with torch.no_grad():
            entropy = -(p_teacher * log_p_teacher).sum(dim=-1).mean()
            # Every teacher view meets the same number of student views, so the mean KL over
            # pairs is the mean cross-entropy minus the mean teacher entropy.
            stats = {"teacher_entropy": entropy, "kl": cross_entropy - entropy}
            if update_center and self.centering == "ema":
                self.update_center(teacher_logits)
        return loss, stats

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean of the teacher logits over the global batch."""
        batch_sum = teacher_logits.float().sum(dim=0, keepdim=True)
        count = teacher_logits.shape[0]  # the same on every process (whole batches only)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(batch_sum)
            count *= dist.get_world_size()
        batch_mean = batch_sum / count
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)


class _PairwiseCrossEntropy(torch.autograd.Function):
    """The DINO cross-entropy over pairs with a hand-written backward: the mean over teacher
    views i and student views v != i of the batch-mean H(P_t(i), P_s(v)), P_s(v) =
    softmax(z_v / student_temp).

    Autograd through log-softmax, the per-view selection and the sums allocates several
    (V, B, K) tensors (a zero-filled one per teacher view among them); the gradient in closed
    form needs one: with n pairs and m_ib = sum_k P_t(i)_bk (1 up to rounding),
    dL/dz_vb = (P_s(v)_b sum_{i != v} m_ib - sum_{i != v} P_t(i)_b) / (n B student_temp).
    """

    @staticmethod
    def forward(ctx, student_logits: torch.Tensor, p_teacher: torch.Tensor, student_temp: float) -> torch.Tensor:
        """student_logits (V * B, K) float32, p_teacher (G, B, K) -> the scalar loss."""
        num_teacher_views, batch = p_teacher.shape[:2]
        log_p_student = F.log_softmax(student_logits / student_temp, dim=-1).view(-1, batch, p_teacher.shape[2])
        num_pairs = num_teacher_views * (log_p_student.shape[0] - 1)
        ctx.student_temp, ctx.num_pairs = student_temp, num_pairs
        ctx.save_for_backward(log_p_student, p_teacher)
        return _cross_entropy(log_p_student, p_teacher) / num_pairs

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        log_p_student, p_teacher = ctx.saved_tensors
        num_teacher_views, batch = p_teacher.shape[:2]
        mass = p_teacher.sum(dim=-1, keepdim=True)  # (G, B, 1): m_ib
        weights = mass.sum(dim=0).expand(log_p_student.shape[0], -1, -1).clone()  # (V, B, 1)
        weights[:num_teacher_views] -= mass  # a teacher view is not paired with itself
        grad = log_p_student.exp().mul_(weights)
        grad.sub_(p_teacher.sum(dim=0))
        grad[:num_teacher_views].add_(p_teacher)
        grad.mul_(grad_loss / (ctx.num_pairs * batch * ctx.student_temp))
        return grad.view(-1, grad.shape[2]), None, None


def _cross_entropy(log_p_student: torch.Tensor, p_teacher: torch.Tensor) -> torch.Tensor:
    """Sum over teacher views i and student views v != i of the batch-mean H(P_t(i), P_s(v));
    log_p_student (V, B, K), p_teacher (G, B, K)."""
    # sum over v != i of log P_s(v) = (sum over all v) - log P_s(i): one pass per view.
    sum_log_p_student = log_p_student.sum(dim=0)
    total = log_p_student.new_zeros(())
    for i in range(p_teacher.shape[0]):
        others = sum_log_p_student - log_p_student[i]
        total = total - (p_teacher[i] * others).sum(dim=-1).mean()
    return total


def _normalised_squared_error(p_student: torch.Tensor, p_teacher: torch.Tensor) -> torch.Tensor:
    """Sum over teacher views i and student views v != i of the batch-mean squared distance
    between the L2-normalised P_s(v) and P_t(i); p_student (V, B, K), p_teacher (G, B, K)."""
    student_dirs, teacher_dirs = F.normalize(p_student, dim=-1), F.normalize(p_teacher, dim=-1)
    total = p_student.new_zeros(())
    for i in range(p_teacher.shape[0]):
        distances = (student_dirs - teacher_dirs[i]).pow(2).sum(dim=-1)  # (V, B)
        total = total + (distances.sum(dim=0) - distances[i]).mean()
    return total
