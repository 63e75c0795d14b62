"""How the teacher's output becomes its target distribution P_t: DINO's EMA centering, the
Sinkhorn-Knopp normalisation of SwAV, or no centering (paper, Table 7 rows 3 and 9, Fig. 7).

All three divide by the teacher temperature; they differ in what is done to the logits:

* ``ema``: P_t = softmax((g_t - c) / tau_t), c an EMA of the teacher's batch means (kept by
  :class:`~dinossl.objective.loss.DINOLoss`);
* ``sinkhorn``: P_t = Sinkhorn-Knopp(exp(g_t / tau_t)) over the global batch: rows (samples)
  sum to one and every prototype receives the same total mass N / K;
* ``none``: P_t = softmax(g_t / tau_t).
"""

from __future__ import annotations

import torch
from torch import distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _global_logsumexp_over_samples(log_q: torch.Tensor) -> torch.Tensor:
    """(N, K) -> (1, K): log of the column sums of exp(log_q) over the samples of every process."""
    peak = log_q.amax(dim=0, keepdim=True)
    if _distributed():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    sums = (log_q - peak).exp().sum(dim=0, keepdim=True)
    if _distributed():
        dist.all_reduce(sums)
    return sums.log() + peak


@torch.no_grad()
def sinkhorn_knopp_log(scores: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """log Q for Q = Sinkhorn-Knopp(exp(scores)), computed in the log domain.

    Args:
        scores: (N, K) teacher logits divided by the temperature; N counts this process's
            samples (the normalisation runs over the samples of all processes).
        iterations: alternations of "every prototype gets the same mass" (columns) then "every
            sample is a distribution" (rows), SwAV's 3 by default.

    Returns:
        (N, K) float32 log-probabilities: each row sums to one exactly (the last step), each
        column sums (over the global batch) to N_global / K up to the convergence of
        ``iterations`` alternations.
    """
    log_q = scores.float()
    for _ in range(iterations):
        log_q = log_q - _global_logsumexp_over_samples(log_q)  # columns: mass 1 each (then 1/K after rows)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)  # rows: probability distributions
    return log_q


@torch.no_grad()
def teacher_log_probs(teacher_logits: torch.Tensor, teacher_temp: float, centering: str,
                      center: torch.Tensor, sinkhorn_iterations: int = 3) -> torch.Tensor:
    """(N, K) teacher logits -> (N, K) log P_t under ``centering`` (ema | sinkhorn | none);
    ``center`` (1, K) is used by ``ema`` only."""
    if centering == "ema":
        return torch.log_softmax((teacher_logits.float() - center) / teacher_temp, dim=-1)
    if centering == "sinkhorn":
        return sinkhorn_knopp_log(teacher_logits.float() / teacher_temp, sinkhorn_iterations)
    if centering == "none":
        return torch.log_softmax(teacher_logits.float() / teacher_temp, dim=-1)
    raise ValueError(f"unknown centering {centering!r}")
